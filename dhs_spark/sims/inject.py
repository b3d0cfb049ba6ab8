"""Inject a lensed, PSF-convolved arc into a real grz cutout, with its truth record.

The arc follows the data model of a Legacy Surveys coadd: the source's light is lensed, dimmed by
Milky Way dust, convolved with the PSF with the pixel response applied once, and (optionally) given
its own photon noise with the coadd's pixel-to-pixel noise correlation.

Fluxes: the unlensed source has r-band AB magnitude ``source_r_mag`` and observed colours
g-r, r-z, so g = r + (g-r), z = r - (r-z) and flux_nmgy = 10^((22.5 - m_AB) / 2.5) (the source's
intrinsic flux, above the Milky Way), times ``source_flux_scale`` (1; 0 gives a NULL injection,
below). Band order g, r, z (``dhs_spark.config.BANDS``). The arc is rendered by
:mod:`dhs_spark.sims.render` with the lens centre on the stamp's centre pixel (H//2, W//2), where
the cutout puts the host.

Milky Way extinction: A_b = R_b E(B-V) with ``ebv`` = the SFD98 E(B-V) (the bricks table's
``ebv``) and the DECam coefficients of the DR9/DR10 catalogues, R = 3.214 (g), 2.165 (r),
1.211 (z) (E. Schlafly's values for a 7000 K spectrum at airmass 1.3, following the appendix of
Schlafly & Finkbeiner 2011, ApJ 737, 103; https://www.legacysurvey.org/dr10/catalogs/#galactic-extinction-coefficients).
The arc is dimmed by the transmission T_b = 10^(-0.4 A_b), the catalogues' ``mw_transmission_<b>``.

Truth: ``magnification`` = lensed / unlensed flux before the PSF (the flux that lands inside the
stamp; never renormalised); ``unlensed_flux_<b>_nmgy`` = the intrinsic (pre-extinction) source
flux; ``lensed_flux_<b>_nmgy`` = magnification x unlensed flux (pre-extinction);
``lensed_flux_observed_<b>_nmgy`` = lensed flux x ``extinction_transmission_<b>`` (what reaches
the image, before PSF and edge losses); ``ebv``, ``extinction_<b>_mag`` = A_b;
``arc_flux_in_stamp_<b>_nmgy`` = the sum of the arc actually added (after extinction, PSF, edge
losses and noise); ``arc_snr_sum`` = sqrt(sum over bands and pixels of arc^2 invvar) and
``arc_snr_peak`` = max arc sqrt(invvar), both from the noiseless arc; per-band ``arc_snr_sum_<b>``
too.

Noise of the arc (``add_poisson=True``): the cutout already holds the sky noise, so only the arc's
own shot noise is added, with a per-band effective gain g_b (counts per nanomaggy) derived from
the invvar: in a sky-limited coadd the per-pixel variance is sigma^2 = S_b / g_b, with S_b the sky
flux per pixel, so g_b = S_b x median(invvar_b over pixels with invvar > 0). S_b comes from the sky
surface brightness (``sky_mag_per_arcsec2``, default the DECam nominal dark sky g 22.04, r 20.91,
z 18.46 AB mag/arcsec^2 of the DECaLS observing scripts) times the pixel area. Pixels without arc
flux get no noise of their own (no clamp that puts noise everywhere). Two models
(``noise_model``):

- 'white' (default, as before): Poisson(arc g_b) / g_b per pixel, independent pixels.
- 'correlated': the noise a coadd would hold. Legacypipe resamples every exposure onto the brick
  grid (Lanczos-3) and its invvar is the sum of the exposures' per-pixel inverse variances before
  resampling (``coadds.make_coadds``: ``cow += iv``), so coadd noise is correlated between pixels
  and its per-pixel variance is r_b / invvar with r_b <= 1 (the resampling's smoothing). Photon noise of an arc would go through the same resampling, so the
  arc gets Gaussian noise (a coadd pixel sums many exposure pixels) with the cutout's own noise
  autocorrelation, estimated from its sky pixels (:mod:`dhs_spark.sims.noise`), and the per-pixel
  variance r_b arc / g_b, where r_b = (measured sky variance) x median(invvar), capped at 1
  (resampling cannot raise the variance; a larger value means unmasked light in the sky
  estimate). A cutout with too few sky pixels for the estimate gets uncorrelated Gaussian noise
  with r_b = 1, and ``noise_model`` says 'correlated_fallback_white'.

Truth of the noise: ``add_poisson``, ``noise_model`` ('none' without noise, 'white',
'correlated' or 'correlated_fallback_white'), ``poisson_gain_<b>``; for the correlated model also
``noise_sky_pixels``, ``noise_corr_lag1_x_<b>``, ``noise_corr_lag1_y_<b>`` (correlation of
horizontally / vertically adjacent pixels) and ``noise_var_ratio_<b>`` (r_b before the cap).

NULL injections: ``source_flux_scale=0`` multiplies every band's flux by 0, so the stamp is the
cutout itself, bit for bit, while everything else runs as for a real arc: the render (so
``magnification`` is that of the would-be arc), the reject rules (evaluated on the would-be arc,
so a NULL stamp is rejected exactly when its real injection would be), the noise estimate; all
truth values stay finite (fluxes and SNRs 0).

Rejects (:class:`~dhs_spark.errors.RejectError`, never a NaN stamp): ``nan_in_cutout`` (any
non-finite cutout pixel), ``nan_in_invvar`` (any non-finite invvar), ``invvar_nonpositive_under_arc``
(invvar <= 0 on a pixel of the arc footprint, :func:`arc_footprint_mask`: arc >=
``ARC_FOOTPRINT_FRACTION`` of that band's arc peak; :func:`check_invvar_under_arc` applies the
rule, also to a control with a would-be arc), ``nan_in_arc`` (the render produced a non-finite value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from dhs_spark.errors import RejectError
from dhs_spark.sims.lensing import LensLike, as_lens
from dhs_spark.sims.noise import NoiseCorrelation, correlated_noise, estimate_noise_correlation
from dhs_spark.sims.psf import measure_fwhm
from dhs_spark.sims.render import apply_bands, band_psf_kernels, unit_lensed_image
from dhs_spark.sims.sersic import as_source

BANDS = ("g", "r", "z")
DECAM_SKY_MAG_PER_ARCSEC2 = (22.04, 20.91, 18.46)
# A_b / E(B-V) for DECam g, r, z in the DR9/DR10 catalogues (module docstring for the source).
DECAM_EXTINCTION_COEFFS = (3.214, 2.165, 1.211)
ARC_FOOTPRINT_FRACTION = 0.01
NOISE_MODELS = ("white", "correlated")


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


def extinction_mag(ebv: float, coeffs: Sequence[float] = DECAM_EXTINCTION_COEFFS) -> np.ndarray:
    """Milky Way extinction A_b = R_b E(B-V) per band (mag), from the SFD98 ``ebv`` (mag, finite, >= 0)."""
    if not (math.isfinite(ebv) and ebv >= 0):
        raise ValueError(f"ebv must be a finite E(B-V) >= 0 mag (got {ebv!r})")
    return np.asarray(coeffs, dtype=np.float64) * float(ebv)


def _median_positive_invvar(invvar: np.ndarray) -> np.ndarray:
    """Per-band median of the invvar > 0 pixels; RejectError when a band has none."""
    positive = invvar > 0
    if positive.all():
        # the median by one partition (np.median's own method, without its checks and copies)
        flat = invvar.reshape(invvar.shape[0], -1)
        k = flat.shape[1] // 2
        if flat.shape[1] % 2:
            return np.partition(flat, k, axis=1)[:, k].astype(np.float64)
        part = np.partition(flat, (k - 1, k), axis=1)
        return 0.5 * (part[:, k - 1].astype(np.float64) + part[:, k].astype(np.float64))
    med = np.empty(invvar.shape[0])
    for b in range(invvar.shape[0]):
        good = invvar[b][positive[b]]
        if good.size == 0:
            raise RejectError("invvar_nonpositive_under_arc", f"band {BANDS[b]}: no pixel with invvar > 0")
        med[b] = float(np.median(good))
    return med


def poisson_gains(invvar: np.ndarray, pixscale: float, sky_mag_per_arcsec2: Sequence[float] = DECAM_SKY_MAG_PER_ARCSEC2) -> np.ndarray:
    """Per-band effective gain (counts per nanomaggy) = sky flux per pixel x median positive invvar."""
    return _gains_from_median(_median_positive_invvar(invvar), pixscale, sky_mag_per_arcsec2)


def _gains_from_median(median_invvar: np.ndarray, pixscale: float, sky_mag_per_arcsec2: Sequence[float]) -> np.ndarray:
    return np.array([mag_to_nmgy(sky_mag_per_arcsec2[b]) * pixscale**2 * median_invvar[b] for b in range(median_invvar.size)])


def arc_footprint_mask(arc: np.ndarray, fraction: float = ARC_FOOTPRINT_FRACTION) -> np.ndarray:
    """(C, H, W) bool: the pixels where a (C, H, W) arc is >= ``fraction`` of its band's peak
    (none in a band whose peak is <= 0). The footprint of the ``invvar_nonpositive_under_arc`` rule;
    pass a would-be arc to evaluate the rule for a control or a NULL injection."""
    a = np.asarray(arc)
    if a.ndim != 3:
        raise ValueError(f"arc must be (C, H, W) (got shape {a.shape})")
    peak = a.reshape(a.shape[0], -1).max(axis=1)[:, None, None]
    return (a >= fraction * peak) & (peak > 0)


def check_invvar_under_arc(arc: np.ndarray, invvar: np.ndarray) -> None:
    """Raise RejectError('invvar_nonpositive_under_arc') if invvar <= 0 on any pixel of the arc's
    footprint (:func:`arc_footprint_mask`); ``arc`` and ``invvar`` are (C, H, W)."""
    if (np.asarray(invvar) > 0).all():  # the usual case: no footprint to build
        return
    under = arc_footprint_mask(arc) & (np.asarray(invvar) <= 0)
    if under.any():
        bands = [BANDS[b] for b in np.unique(np.nonzero(under)[0])]
        raise RejectError("invvar_nonpositive_under_arc", f"{int(under.sum())} arc pixels with invvar <= 0, bands {bands}")


def _source_params(source) -> dict:
    names = {"x_arcsec": "source_x_arcsec", "y_arcsec": "source_y_arcsec", "r_eff_arcsec": "source_r_eff_arcsec",
             "n": "source_sersic_n", "q": "source_q", "phi_rad": "source_phi_rad"}  # fmt: skip
    return {col: float(getattr(source, attr)) for attr, col in names.items() if getattr(source, attr, None) is not None}


def _noisy_arc(arc64, ivar, cutout, pixscale, sky_mag_per_arcsec2, noise_model, noise_correlation, rng):
    """The arc with its own noise, (C, H, W) float64, and the noise's truth fields (module docstring)."""
    median_invvar = _median_positive_invvar(ivar)
    gains = _gains_from_median(median_invvar, pixscale, sky_mag_per_arcsec2)
    truth = {f"poisson_gain_{band}": float(gains[b]) for b, band in enumerate(BANDS)}
    if noise_model == "white":
        lam = np.clip(arc64, 0.0, None) * gains[:, None, None]
        return rng.poisson(lam) / gains[:, None, None], {"noise_model": "white", **truth}
    corr = noise_correlation if noise_correlation is not None else estimate_noise_correlation(cutout, ivar)
    if corr.rho.shape[0] != len(BANDS):
        raise ValueError(f"noise_correlation must have {len(BANDS)} bands (got {corr.rho.shape[0]})")
    ratio = corr.variance_nmgy2 * median_invvar if corr.estimated else np.ones(len(BANDS))
    # variance per pixel = arc counts / gain^2 = arc_nmgy / gain (x the coadd's variance ratio), in float32:
    # a standard deviation needs no more
    std = np.sqrt(np.clip(arc64, 0.0, None).astype(np.float32) * (np.minimum(ratio, 1.0) / gains).astype(np.float32)[:, None, None])
    truth.update(noise_model="correlated" if corr.estimated else "correlated_fallback_white", noise_sky_pixels=int(corr.n_sky_pixels))
    for b, band in enumerate(BANDS):
        truth[f"noise_corr_lag1_x_{band}"] = float(corr.lag1_x[b])
        truth[f"noise_corr_lag1_y_{band}"] = float(corr.lag1_y[b])
        truth[f"noise_var_ratio_{band}"] = float(ratio[b])
    # arc noise below 1% of the sky's standard deviation (1e-4 of its variance) is left out, which
    # confines the synthesis to the arc's neighbourhood (noise.correlated_noise)
    negligible = 1e-2 / np.sqrt(median_invvar)
    return arc64 + correlated_noise(std, corr, rng, negligible), truth


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
    ebv: float = 0.0,
    noise_model: str = "white",
    noise_correlation: Optional[NoiseCorrelation] = None,
    source_flux_scale: float = 1.0,
) -> InjectionResult:
    """Add the lensed arc of ``source`` behind ``lens`` to a (3, H, W) g, r, z cutout in nanomaggies.

    Args:
        cutout_nmgy, invvar: (3, H, W) image (nanomaggies/pixel) and inverse variance (1/nmgy^2), H = W.
        lens: SIEShear or the Reference-API dict; its centre is relative to pixel (H//2, W//2).
        source: a source-protocol object (SersicSource, COSMOS source) or a Sersic dict.
        source_r_mag, color_g_r, color_r_z: unlensed source r AB magnitude and observed colours,
            intrinsic (above the Milky Way).
        psf_fwhm_arcsec: per-band FWHM (arcsec) for 'gaussian'/'moffat'; recorded for 'pixel' if given.
        psf_model: 'gaussian', 'moffat' (needs ``moffat_beta``) or 'pixel' (needs ``psf_kernels``,
            one odd 2-D effective PSF image per band on the stamp grid; the pixel response in them
            is taken out, :func:`dhs_spark.sims.render.band_psf_kernels`).
        oversample: sub-pixels per axis for the render; method: 'fast' or 'exact' (Sersic only).
        add_poisson, rng: add the arc's shot noise (module docstring); ``rng`` is required then.
        ebv: SFD98 E(B-V) (mag) of the brick: Milky Way extinction of the arc (module docstring).
        noise_model: 'white' (Poisson, independent pixels) or 'correlated' (the coadd's correlation).
        noise_correlation: for 'correlated', a :class:`~dhs_spark.sims.noise.NoiseCorrelation` to use
            instead of estimating it from this cutout (e.g. one estimate per brick).
        source_flux_scale: multiplies the source flux in every band, >= 0; 0 = NULL injection.

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
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise_model must be one of {NOISE_MODELS} (got {noise_model!r})")
    if not (math.isfinite(source_flux_scale) and source_flux_scale >= 0):
        raise ValueError(f"source_flux_scale must be finite and >= 0 (got {source_flux_scale!r})")
    a_mag = extinction_mag(ebv)
    if not np.isfinite(cutout).all():
        bad = ~np.isfinite(cutout)
        raise RejectError("nan_in_cutout", f"{int(bad.sum())} non-finite pixels, bands {[BANDS[b] for b in np.unique(np.nonzero(bad)[0])]}")
    if not np.isfinite(ivar).all():
        raise RejectError("nan_in_invvar", f"{int((~np.isfinite(ivar)).sum())} non-finite invvar pixels")

    lens = as_lens(lens)
    source = as_source(source)
    size = cutout.shape[1]
    intrinsic = band_fluxes_nmgy(source_r_mag, color_g_r, color_r_z)
    transmission = 10.0 ** (-0.4 * a_mag)
    unit = unit_lensed_image(size, pixscale, oversample, lens, source, method)
    magnification = float(unit.sum())
    kernels = band_psf_kernels(len(BANDS), pixscale, psf_fwhm_arcsec, psf_model, moffat_beta, psf_kernels)
    # the arc at the nominal flux decides the reject rule, so a NULL injection (scale 0) is rejected as its real one would be
    arc = apply_bands(unit, intrinsic * transmission, kernels)
    if not np.all(np.isfinite(arc)):
        raise RejectError("nan_in_arc", "the rendered arc has non-finite pixels")
    check_invvar_under_arc(arc, ivar)
    if source_flux_scale != 1.0:
        arc *= np.float32(source_flux_scale)
    unlensed = intrinsic * source_flux_scale

    ivar_pos = (ivar if (ivar > 0).all() else np.where(ivar > 0, ivar, 0.0)).astype(np.float64)
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
        "source_flux_scale": float(source_flux_scale),
        "source_mode": source.kind,
        "cosmos_ident": source.ident,
        "psf_model": psf_model,
        "moffat_beta": moffat_beta,
        "pixscale_arcsec": float(pixscale),
        "oversample": int(oversample),
        "render_method": method,
        "add_poisson": bool(add_poisson),
        "noise_model": "none",
        "ebv": float(ebv),
        "magnification": magnification,
        "arc_snr_sum": float(math.sqrt(float((snr_band**2).sum()))),
        "arc_snr_peak": float((arc64 * np.sqrt(ivar_pos)).max()),
    }
    for b, band in enumerate(BANDS):
        truth[f"unlensed_flux_{band}_nmgy"] = float(unlensed[b])
        truth[f"lensed_flux_{band}_nmgy"] = float(unlensed[b] * magnification)
        truth[f"extinction_{band}_mag"] = float(a_mag[b])
        truth[f"extinction_transmission_{band}"] = float(transmission[b])
        truth[f"lensed_flux_observed_{band}_nmgy"] = float(unlensed[b] * magnification * transmission[b])
        truth[f"arc_snr_sum_{band}"] = float(snr_band[b])
        if psf_fwhm_arcsec is not None:
            truth[f"psf_fwhm_used_{band}_arcsec"] = float(psf_fwhm_arcsec[b])
        elif kernels is not None:
            truth[f"psf_fwhm_used_{band}_arcsec"] = measure_fwhm(kernels[b][1], pixscale, pixel_integrated=False)
        else:
            truth[f"psf_fwhm_used_{band}_arcsec"] = float("nan")

    if add_poisson:
        noisy, noise_truth = _noisy_arc(arc64, ivar, cutout, pixscale, sky_mag_per_arcsec2, noise_model, noise_correlation, rng)
        truth.update(noise_truth)
        arc = noisy.astype(np.float32)
    for b, band in enumerate(BANDS):
        truth[f"arc_flux_in_stamp_{band}_nmgy"] = float(arc[b].sum(dtype=np.float64))

    stamp = (cutout.astype(np.float64) + arc).astype(np.float32)
    return InjectionResult(stamp=stamp, arc=arc, truth=truth)
