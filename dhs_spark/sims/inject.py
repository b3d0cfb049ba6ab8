"""Inject a lensed, PSF-convolved arc into a real grz cutout, with its truth record.

Fluxes: the unlensed source has r-band AB magnitude ``source_r_mag`` and observed colours
g-r, r-z, so g = r + (g-r), z = r - (r-z) and flux_nmgy = 10^((22.5 - m_AB) / 2.5). Band order
g, r, z (``dhs_spark.config.BANDS``). The arc is rendered by :mod:`dhs_spark.sims.render` with
the lens centre on the stamp's centre pixel (H//2, W//2), where the cutout puts the host.

Truth: ``magnification`` = lensed / unlensed flux before the PSF (the flux that lands inside
the stamp; never renormalised); ``lensed_flux_<b>_nmgy`` = magnification x unlensed flux;
``arc_flux_in_stamp_<b>_nmgy`` = the sum of the arc actually added (after PSF, edge losses and
noise); ``arc_snr_sum`` = sqrt(sum over bands and pixels of arc^2 invvar) and ``arc_snr_peak``
= max arc sqrt(invvar), both from the noiseless arc; per-band ``arc_snr_sum_<b>`` too.

Poisson noise of the arc (``add_poisson=True``): the cutout already holds the sky noise, so only
the arc's own shot noise is added, with a per-band effective gain g_b (counts per nanomaggy)
derived from the invvar: in a sky-limited coadd the per-pixel variance is sigma^2 = S_b / g_b,
with S_b the sky flux per pixel, so g_b = S_b x median(invvar_b over pixels with invvar > 0).
S_b comes from the sky surface brightness (``sky_mag_per_arcsec2``, default the DECam nominal
dark sky g 22.04, r 20.91, z 18.46 AB mag/arcsec^2 of the DECaLS observing scripts) times the
pixel area. The noisy arc is Poisson(arc g_b) / g_b: pixels without arc flux get no noise (no
clamp that puts noise everywhere); the gains used are in the truth (``poisson_gain_<b>``).

Rejects (:class:`~dhs_spark.errors.RejectError`, never a NaN stamp): ``nan_in_cutout`` (any
non-finite cutout pixel), ``nan_in_invvar`` (any non-finite invvar), ``invvar_nonpositive_under_arc``
(invvar <= 0 on a pixel of the arc footprint: arc >= ``ARC_FOOTPRINT_FRACTION`` of that band's
arc peak), ``nan_in_arc`` (the render produced a non-finite value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from dhs_spark.errors import RejectError
from dhs_spark.sims.lensing import LensLike, as_lens
from dhs_spark.sims.psf import measure_fwhm
from dhs_spark.sims.render import apply_bands, band_psf_kernels, unit_lensed_image
from dhs_spark.sims.sersic import as_source

BANDS = ("g", "r", "z")
DECAM_SKY_MAG_PER_ARCSEC2 = (22.04, 20.91, 18.46)
ARC_FOOTPRINT_FRACTION = 0.01


@dataclass(frozen=True)
class InjectionResult:
    """stamp = cutout + arc, arc alone, both float32 (C, H, W) nanomaggies; truth = the record (see module doc)."""

    stamp: np.ndarray
    arc: np.ndarray
    truth: dict


def mag_to_nmgy(mag_ab: float) -> float:
    """Flux in nanomaggies of an AB magnitude: 10^((22.5 - m) / 2.5)."""
    return 10.0 ** ((22.5 - mag_ab) / 2.5)


def band_fluxes_nmgy(source_r_mag: float, color_g_r: float, color_r_z: float) -> np.ndarray:
    """Unlensed source flux in g, r, z (nanomaggies) from r and the colours g-r, r-z."""
    for name, value in (("source_r_mag", source_r_mag), ("color_g_r", color_g_r), ("color_r_z", color_r_z)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite (got {value!r})")
    return np.array([mag_to_nmgy(source_r_mag + color_g_r), mag_to_nmgy(source_r_mag), mag_to_nmgy(source_r_mag - color_r_z)])


def poisson_gains(invvar: np.ndarray, pixscale: float, sky_mag_per_arcsec2: Sequence[float] = DECAM_SKY_MAG_PER_ARCSEC2) -> np.ndarray:
    """Per-band effective gain (counts per nanomaggy) = sky flux per pixel x median positive invvar."""
    gains = np.empty(invvar.shape[0])
    for b in range(invvar.shape[0]):
        good = invvar[b][invvar[b] > 0]
        if good.size == 0:
            raise RejectError("invvar_nonpositive_under_arc", f"band {BANDS[b]}: no pixel with invvar > 0")
        gains[b] = mag_to_nmgy(sky_mag_per_arcsec2[b]) * pixscale**2 * float(np.median(good))
    return gains


def _source_params(source) -> dict:
    names = {"x_arcsec": "source_x_arcsec", "y_arcsec": "source_y_arcsec", "r_eff_arcsec": "source_r_eff_arcsec",
             "n": "source_sersic_n", "q": "source_q", "phi_rad": "source_phi_rad"}  # fmt: skip
    return {col: float(getattr(source, attr)) for attr, col in names.items() if getattr(source, attr, None) is not None}


def inject_arc(
    cutout_nmgy: np.ndarray,
    invvar: np.ndarray,
    lens: LensLike,
    source,
    source_r_mag: float,
    color_g_r: float,
    color_r_z: float,
    psf_fwhm_arcsec: Optional[Sequence[float]],
    psf_model: str = "gaussian",
    moffat_beta: Optional[float] = None,
    psf_kernels: Optional[Sequence[np.ndarray]] = None,
    pixscale: float = 0.262,
    oversample: int = 4,
    add_poisson: bool = False,
    rng: Optional[np.random.Generator] = None,
    sky_mag_per_arcsec2: Sequence[float] = DECAM_SKY_MAG_PER_ARCSEC2,
    method: str = "fast",
) -> InjectionResult:
    """Add the lensed arc of ``source`` behind ``lens`` to a (3, H, W) g, r, z cutout in nanomaggies.

    Args:
        cutout_nmgy, invvar: (3, H, W) image (nanomaggies/pixel) and inverse variance (1/nmgy^2), H = W.
        lens: SIEShear or the Reference-API dict; its centre is relative to pixel (H//2, W//2).
        source: a source-protocol object (SersicSource, COSMOS source) or a Sersic dict.
        source_r_mag, color_g_r, color_r_z: unlensed source r AB magnitude and observed colours.
        psf_fwhm_arcsec: per-band FWHM (arcsec) for 'gaussian'/'moffat'; recorded for 'pixel' if given.
        psf_model: 'gaussian', 'moffat' (needs ``moffat_beta``) or 'pixel' (needs ``psf_kernels``,
            one odd 2-D kernel per band on the stamp grid).
        oversample: sub-pixels per axis for the render; method: 'fast' or 'exact' (Sersic only).
        add_poisson, rng: add the arc's shot noise (see the module docstring); ``rng`` is required then.

    Raises:
        RejectError: reasons listed in the module docstring.
    """
    cutout = np.asarray(cutout_nmgy)
    ivar = np.asarray(invvar)
    if cutout.ndim != 3 or cutout.shape[0] != len(BANDS) or cutout.shape[1] != cutout.shape[2]:
        raise ValueError(f"cutout must be (3, H, H) in band order g, r, z (got shape {cutout.shape})")
    if ivar.shape != cutout.shape:
        raise ValueError(f"invvar shape {ivar.shape} differs from the cutout's {cutout.shape}")
    if add_poisson and rng is None:
        raise ValueError("add_poisson=True needs an explicit rng (seeded from the task seed)")
    bad = ~np.isfinite(cutout)
    if bad.any():
        raise RejectError("nan_in_cutout", f"{int(bad.sum())} non-finite pixels, bands {[BANDS[b] for b in np.unique(np.nonzero(bad)[0])]}")
    bad = ~np.isfinite(ivar)
    if bad.any():
        raise RejectError("nan_in_invvar", f"{int(bad.sum())} non-finite invvar pixels")

    lens = as_lens(lens)
    source = as_source(source)
    size = cutout.shape[1]
    unlensed = band_fluxes_nmgy(source_r_mag, color_g_r, color_r_z)
    unit = unit_lensed_image(size, pixscale, oversample, lens, source, method)
    magnification = float(unit.sum())
    kernels = band_psf_kernels(len(BANDS), pixscale, psf_fwhm_arcsec, psf_model, moffat_beta, psf_kernels)
    arc = apply_bands(unit, unlensed, kernels)
    if not np.all(np.isfinite(arc)):
        raise RejectError("nan_in_arc", "the rendered arc has non-finite pixels")

    peak = arc.reshape(len(BANDS), -1).max(axis=1)
    footprint = arc >= ARC_FOOTPRINT_FRACTION * peak[:, None, None]
    footprint &= peak[:, None, None] > 0
    under = footprint & (ivar <= 0)
    if under.any():
        bands = [BANDS[b] for b in np.unique(np.nonzero(under)[0])]
        raise RejectError("invvar_nonpositive_under_arc", f"{int(under.sum())} arc pixels with invvar <= 0, bands {bands}")

    ivar_pos = np.where(ivar > 0, ivar, 0.0).astype(np.float64)
    arc64 = arc.astype(np.float64)
    snr_band = np.sqrt((arc64**2 * ivar_pos).reshape(len(BANDS), -1).sum(axis=1))
    truth = {
        "theta_e_arcsec": lens.theta_e_arcsec,
        "lens_q": lens.q,
        "lens_phi_rad": lens.phi_rad,
        "shear_gamma1": lens.gamma1,
        "shear_gamma2": lens.gamma2,
        "lens_center_x_arcsec": lens.center_x_arcsec,
        "lens_center_y_arcsec": lens.center_y_arcsec,
        **_source_params(source),
        "source_r_mag": float(source_r_mag),
        "source_color_g_r": float(color_g_r),
        "source_color_r_z": float(color_r_z),
        "source_mode": source.kind,
        "cosmos_ident": source.ident,
        "psf_model": psf_model,
        "moffat_beta": moffat_beta,
        "pixscale_arcsec": float(pixscale),
        "oversample": int(oversample),
        "render_method": method,
        "add_poisson": bool(add_poisson),
        "magnification": magnification,
        "arc_snr_sum": float(math.sqrt(float((snr_band**2).sum()))),
        "arc_snr_peak": float((arc64 * np.sqrt(ivar_pos)).max()),
    }
    for b, band in enumerate(BANDS):
        truth[f"unlensed_flux_{band}_nmgy"] = float(unlensed[b])
        truth[f"lensed_flux_{band}_nmgy"] = float(unlensed[b] * magnification)
        truth[f"arc_snr_sum_{band}"] = float(snr_band[b])
        if psf_fwhm_arcsec is not None:
            truth[f"psf_fwhm_used_{band}_arcsec"] = float(psf_fwhm_arcsec[b])
        elif kernels is not None:
            truth[f"psf_fwhm_used_{band}_arcsec"] = measure_fwhm(kernels[b][1], pixscale, pixel_integrated=False)
        else:
            truth[f"psf_fwhm_used_{band}_arcsec"] = float("nan")

    if add_poisson:
        gains = poisson_gains(ivar, pixscale, sky_mag_per_arcsec2)
        lam = np.clip(arc64, 0.0, None) * gains[:, None, None]
        arc = (rng.poisson(lam) / gains[:, None, None]).astype(np.float32)
        for b, band in enumerate(BANDS):
            truth[f"poisson_gain_{band}"] = float(gains[b])
    for b, band in enumerate(BANDS):
        truth[f"arc_flux_in_stamp_{band}_nmgy"] = float(arc[b].sum(dtype=np.float64))

    stamp = (cutout.astype(np.float64) + arc).astype(np.float32)
    return InjectionResult(stamp=stamp, arc=arc, truth=truth)
