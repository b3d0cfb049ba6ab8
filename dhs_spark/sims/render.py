"""Render lensed sources onto a survey stamp: ray trace once, evaluate, bin down, PSF per band.

Geometry (DESIGN.md §2): pixel (i, j) of a ``size`` x ``size`` stamp is centred at
x = (j - size//2) * pixscale, y = (i - size//2) * pixscale (arcsec; x along numpy axis 1, y
along axis 0), so the lens-plane origin sits on the centre pixel (size 64 -> (32, 32)). Each
pixel is split into ``oversample`` x ``oversample`` sub-pixels whose centres are at offsets
((s + 0.5) / oversample - 0.5) * pixscale; the pixel value is the mean surface brightness of
its sub-pixels times the pixel area (flux per pixel), times the band flux in nanomaggies.
Lensing conserves surface brightness, so the rendered flux is magnification x source flux;
nothing is renormalised.

Two paths, which agree to relative L1 < 1e-3 (tested):

- exact (:func:`render_lensed_source`, and ``method='exact'``): the full sub-grid, float64 numpy,
  for any object following the source protocol (``dhs_spark.sims.sersic``);
- fast (``method='fast'``, the default for Sersic sources): one fused numba kernel ray traces the
  (size+1)^2 pixel corners and evaluates the source there; a pixel is fully sub-sampled only if
  its 4 corner values (flux per pixel, unit source flux) differ by more than
  ``_FAST_VAR_TOL / size^2`` (light varies across it), or its source-plane footprint comes within
  ``r_cut`` of the source centre (r_cut holds 70% of the flux: a safety net for sources smaller
  than a pixel's footprint, which corners could miss), or it lies within 2 pixels of the lens
  centre (where the deflection turns within a pixel). Other pixels take their 4-corner mean.
  Over 150 prior draws (theta_E 0.5-3") about 600 of 4096 pixels are sub-sampled and the worst
  relative L1 to the exact path is 1.5e-4.

numba caches compiled kernels on disk. Spark executors need a writable cache directory: if
``NUMBA_CACHE_DIR`` is unset when this module is imported, it is set to
``$TMPDIR/dhs_spark_numba_cache`` (``tempfile.gettempdir()``) before numba is imported.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Optional, Sequence

import numpy as np

from dhs_spark.sims.lensing import LensLike, as_lens, ray_trace
from dhs_spark.sims.psf import check_kernel, convolve_same, convolve_separable_same, gaussian_kernel_1d, psf_kernel
from dhs_spark.sims.sersic import SersicSource, as_source

if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "dhs_spark_numba_cache")

import numba  # noqa: E402  (NUMBA_CACHE_DIR must be set first)

# Fast path (tuned on 150 prior draws: worst relative L1 1.5e-4 vs exact; 1.0 would give 5.6e-4,
# 3.0 gives 1.6e-3): pixels whose 4 corner values differ by more than _FAST_VAR_TOL / size^2 are
# sub-sampled, and so are those whose footprint reaches r_cut, holding 1 - _FAST_TAIL_FRACTION of the flux.
_FAST_TAIL_FRACTION = 0.3
_FAST_VAR_TOL = 0.3
# Pixels within this many pixels of the lens centre are always fully sub-sampled.
_FAST_CENTRE_RADIUS_PIX = 2.0

PSF_MODELS = ("gaussian", "moffat", "pixel")


def subpixel_offsets(oversample: int) -> np.ndarray:
    """Sub-pixel centre offsets in pixels from the pixel centre, e.g. 4 -> [-0.375, -0.125, 0.125, 0.375]."""
    return (np.arange(oversample) + 0.5) / oversample - 0.5


def subgrid(size: int, pixscale_arcsec: float, oversample: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in arcsec of the (size*oversample)^2 sub-pixel centres, float64, 2-D arrays (axis 0 = y)."""
    pix = np.arange(size) - size // 2
    axis = ((pix[:, None] + subpixel_offsets(oversample)[None, :]) * pixscale_arcsec).ravel()
    return np.meshgrid(axis, axis, indexing="xy")


def _check_geometry(size: int, pixscale_arcsec: float, oversample: int) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"stamp size must be a positive integer (got {size!r})")
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be a positive integer (got {oversample!r})")
    if not (np.isfinite(pixscale_arcsec) and pixscale_arcsec > 0):
        raise ValueError(f"pixscale must be > 0 arcsec (got {pixscale_arcsec!r})")


def unit_lensed_image_exact(size: int, pixscale_arcsec: float, oversample: int, lens: LensLike, source) -> np.ndarray:
    """Lensed image of a unit-flux ``source`` (any source-protocol object): flux per pixel, float64 (size, size)."""
    _check_geometry(size, pixscale_arcsec, oversample)
    x, y = subgrid(size, pixscale_arcsec, oversample)
    beta_x, beta_y = ray_trace(x, y, as_lens(lens))
    sb = np.asarray(source.surface_brightness(beta_x, beta_y), dtype=np.float64)
    if sb.shape != x.shape:
        raise ValueError(f"source.surface_brightness returned shape {sb.shape}, expected {x.shape}")
    binned = sb.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return binned * pixscale_arcsec**2


@numba.njit(cache=True)
def _sersic_fast_kernel(size, pixscale, k, lens_p, src_p, r_cut, centre_r2_pix, var_tol, out):  # pragma: no cover - compiled
    """Fused ray trace + Sersic + adaptive binning; writes flux per pixel (unit source flux) into ``out``.

    Returns the number of pixels that were fully sub-sampled. Each point is ray traced and
    evaluated in float32 (positions within a few arcsec: ~1e-6" error, far below a sub-pixel);
    coordinates, sums and the output are float64.

    lens_p (float32[10]) = (b = theta_e sqrt(q), q, cos phi, sin phi, gamma1, gamma2, cx, cy, e, series flag)
    src_p (float32[9]) = (sx, sy, cos phi_s, sin phi_s, sqrt(q_s), i_e e^b_n, b_n, 1/(2n), 1/r_eff^2)
    """
    half = size // 2
    nc = size + 1
    cu = np.empty((nc, nc), dtype=np.float32)
    cv = np.empty((nc, nc), dtype=np.float32)
    csb = np.empty((nc, nc))
    area = pixscale * pixscale

    for a in range(nc):
        yy = np.float32((a - half - 0.5) * pixscale)
        for c in range(nc):
            xx = np.float32((c - half - 0.5) * pixscale)
            u, v = _to_source_frame(xx, yy, lens_p, src_p)
            cu[a, c] = u
            cv[a, c] = v
            csb[a, c] = _sersic_sb(u, v, src_p) * area

    inv_k = 1.0 / k
    norm = area * inv_k * inv_k
    n_sub = 0
    cx = lens_p[6]
    cy = lens_p[7]
    for i in range(size):
        for j in range(size):
            c00, c01, c10, c11 = csb[i, j], csb[i, j + 1], csb[i + 1, j], csb[i + 1, j + 1]
            if max(c00, c01, c10, c11) - min(c00, c01, c10, c11) < var_tol:
                px = (j - half) * pixscale - cx
                py = (i - half) * pixscale - cy
                if px * px + py * py > centre_r2_pix * area:
                    u0 = min(cu[i, j], cu[i, j + 1], cu[i + 1, j], cu[i + 1, j + 1])
                    u1 = max(cu[i, j], cu[i, j + 1], cu[i + 1, j], cu[i + 1, j + 1])
                    v0 = min(cv[i, j], cv[i, j + 1], cv[i + 1, j], cv[i + 1, j + 1])
                    v1 = max(cv[i, j], cv[i, j + 1], cv[i + 1, j], cv[i + 1, j + 1])
                    du = max(u0, 0.0, -u1)
                    dv = max(v0, 0.0, -v1)
                    if du * du + dv * dv > r_cut * r_cut:
                        out[i, j] = 0.25 * (c00 + c01 + c10 + c11)
                        continue
            n_sub += 1
            acc = 0.0
            for s in range(k):
                yy = np.float32((i - half + (s + 0.5) * inv_k - 0.5) * pixscale)
                for t in range(k):
                    xx = np.float32((j - half + (t + 0.5) * inv_k - 0.5) * pixscale)
                    u, v = _to_source_frame(xx, yy, lens_p, src_p)
                    acc += _sersic_sb(u, v, src_p)
            out[i, j] = acc * norm
    return n_sub


@numba.njit(cache=True, inline="always")
def _to_source_frame(xx, yy, lens_p, src_p):  # pragma: no cover - compiled
    """Ray trace one image point (float32); source-plane coords in the source frame scaled so that R = hypot(u, v)."""
    b, q, cph, sph, g1, g2, cx, cy, e, series = (
        lens_p[0],
        lens_p[1],
        lens_p[2],
        lens_p[3],
        lens_p[4],
        lens_p[5],
        lens_p[6],
        lens_p[7],
        lens_p[8],
        lens_p[9],
    )
    zero = np.float32(0.0)
    one = np.float32(1.0)
    third = np.float32(1.0 / 3.0)
    fifth = np.float32(0.2)
    dx = xx - cx
    dy = yy - cy
    xp = cph * dx + sph * dy
    yp = -sph * dx + cph * dy
    psi = math.sqrt(q * q * xp * xp + yp * yp)
    if psi > zero:
        uu = xp / psi
        vv = yp / psi
        if series != zero:
            z2 = (e * uu) * (e * uu)
            axp = b * uu * (one - z2 * third + z2 * z2 * fifth)
            z2 = (e * vv) * (e * vv)
            ayp = b * vv * (one + z2 * third + z2 * z2 * fifth)
        else:
            axp = b * math.atan(e * uu) / e
            ayp = b * math.atanh(e * vv) / e
    else:
        axp = zero
        ayp = zero
    ddx = xx - (cph * axp - sph * ayp + g1 * dx + g2 * dy) - src_p[0]
    ddy = yy - (sph * axp + cph * ayp + g2 * dx - g1 * dy) - src_p[1]
    return (src_p[2] * ddx + src_p[3] * ddy) * src_p[4], (-src_p[3] * ddx + src_p[2] * ddy) / src_p[4]


@numba.njit(cache=True, inline="always")
def _sersic_sb(u, v, src_p):  # pragma: no cover - compiled
    """i_e exp(-b_n [(R/r_eff)^(1/n) - 1]) as (i_e e^b_n) exp(-b_n exp(log(R^2/r_eff^2) / (2n))), float32."""
    r2 = (u * u + v * v) * src_p[8]
    if r2 <= np.float32(0.0):
        return src_p[5]
    return src_p[5] * math.exp(-src_p[6] * math.exp(src_p[7] * math.log(r2)))


def _sersic_r_cut(source: SersicSource) -> float:
    """Elliptical radius (arcsec) holding all but _FAST_TAIL_FRACTION of a Sersic's flux."""
    from scipy.special import gammaincinv

    x = float(gammaincinv(2.0 * source.n, 1.0 - _FAST_TAIL_FRACTION))
    return source.r_eff_arcsec * (x / source.b_n) ** source.n


def unit_lensed_sersic_fast(
    size: int, pixscale_arcsec: float, oversample: int, lens: LensLike, source: SersicSource, return_n_subsampled: bool = False
):
    """Fast path of :func:`unit_lensed_image_exact` for a :class:`SersicSource` (see the module docstring).

    With ``return_n_subsampled`` also returns how many pixels were fully sub-sampled (for benchmarks).
    """
    from dhs_spark.sims.lensing import _SERIES_E

    _check_geometry(size, pixscale_arcsec, oversample)
    lens = as_lens(lens)
    e = math.sqrt(max(1.0 - lens.q * lens.q, 0.0))
    b = lens.theta_e_arcsec * math.sqrt(lens.q)
    lens_p = np.array(
        [b, lens.q, math.cos(lens.phi_rad), math.sin(lens.phi_rad), lens.gamma1, lens.gamma2,
         lens.center_x_arcsec, lens.center_y_arcsec, e, float(e < _SERIES_E)], dtype=np.float32,
    )  # fmt: skip
    src_p = np.array(
        [source.x_arcsec, source.y_arcsec, math.cos(source.phi_rad), math.sin(source.phi_rad), math.sqrt(source.q),
         source.i_e * math.exp(source.b_n), source.b_n, 0.5 / source.n, 1.0 / source.r_eff_arcsec**2], dtype=np.float32,
    )  # fmt: skip
    out = np.empty((size, size))
    n_sub = _sersic_fast_kernel(
        int(size),
        float(pixscale_arcsec),
        int(oversample),
        lens_p,
        src_p,
        _sersic_r_cut(source),
        _FAST_CENTRE_RADIUS_PIX**2,
        _FAST_VAR_TOL / (size * size),
        out,
    )
    return (out, int(n_sub)) if return_n_subsampled else out


def band_psf_kernels(
    n_bands: int,
    pixscale_arcsec: float,
    psf_fwhm_arcsec: Optional[Sequence[float]] = None,
    psf_model: str = "gaussian",
    moffat_beta: Optional[float] = None,
    psf_kernels: Optional[Sequence[np.ndarray]] = None,
) -> Optional[list]:
    """Per-band PSF as a list of ('1d', kernel) for separable Gaussians or ('2d', kernel); None = no PSF.

    ``psf_model='pixel'`` takes ``psf_kernels`` (one odd-size 2-D kernel per band, already on the
    stamp pixel grid); otherwise kernels come from ``psf_fwhm_arcsec`` (one FWHM per band).
    """
    if psf_model not in PSF_MODELS:
        raise ValueError(f"psf_model must be one of {PSF_MODELS} (got {psf_model!r})")
    if psf_model == "pixel" or psf_kernels is not None:
        if psf_kernels is None or len(psf_kernels) != n_bands:
            raise ValueError(f"psf_model='pixel' needs psf_kernels with one kernel per band ({n_bands})")
        return [("2d", check_kernel(k, f"psf_kernels[{b}]")) for b, k in enumerate(psf_kernels)]
    if psf_fwhm_arcsec is None:
        return None
    if len(psf_fwhm_arcsec) != n_bands:
        raise ValueError(f"psf_fwhm needs one FWHM per band ({n_bands}), got {len(psf_fwhm_arcsec)}")
    if psf_model == "gaussian":
        return [("1d", gaussian_kernel_1d(float(f), pixscale_arcsec)) for f in psf_fwhm_arcsec]
    return [("2d", psf_kernel("moffat", float(f), pixscale_arcsec, beta=moffat_beta)) for f in psf_fwhm_arcsec]


def apply_bands(unit_image: np.ndarray, flux_nmgy_per_band: Sequence[float], kernels: Optional[list]) -> np.ndarray:
    """flux_b x unit_image, PSF-convolved per band (kernels from :func:`band_psf_kernels`); float32 (C, H, W)."""
    flux = np.asarray(flux_nmgy_per_band, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(flux)):
        raise ValueError(f"band fluxes must be finite (got {flux.tolist()})")
    out = np.empty((flux.size,) + unit_image.shape, dtype=np.float32)
    for b, f in enumerate(flux):
        img = unit_image * f
        if kernels is not None:
            kind, k = kernels[b]
            img = convolve_separable_same(img, k) if kind == "1d" else convolve_same(img, k)
        out[b] = img
    return out


def render_lensed_source(
    size: int,
    pixscale_arcsec: float,
    oversample: int,
    lens: LensLike,
    source,
    flux_nmgy_per_band: Sequence[float],
    psf_kernels: Optional[Sequence[np.ndarray]] = None,
) -> np.ndarray:
    """Lensed image of any source-protocol object, float32 (C, size, size), nanomaggies per pixel.

    Exact path (full float64 sub-grid); ``psf_kernels``: None or one odd 2-D kernel per band on the
    stamp pixel grid, convolved centre-preserving (:func:`dhs_spark.sims.psf.convolve_same`).
    """
    unit = unit_lensed_image_exact(size, pixscale_arcsec, oversample, lens, as_source(source))
    n_bands = len(flux_nmgy_per_band)
    kernels = band_psf_kernels(n_bands, pixscale_arcsec, psf_model="pixel", psf_kernels=psf_kernels) if psf_kernels is not None else None
    return apply_bands(unit, flux_nmgy_per_band, kernels)


def unit_lensed_image(size: int, pixscale_arcsec: float, oversample: int, lens: LensLike, source, method: str = "fast") -> np.ndarray:
    """Unit-flux lensed image, float64 (size, size): the fast path for Sersic sources unless ``method='exact'``."""
    if method not in ("fast", "exact"):
        raise ValueError(f"method must be 'fast' or 'exact' (got {method!r})")
    source = as_source(source)
    if method == "fast" and isinstance(source, SersicSource):
        return unit_lensed_sersic_fast(size, pixscale_arcsec, oversample, lens, source)
    return unit_lensed_image_exact(size, pixscale_arcsec, oversample, lens, source)


def render_lensed_sersic(
    size: int,
    pixscale: float,
    oversample: int,
    lens: LensLike,
    source,
    flux: Sequence[float],
    psf_fwhm: Optional[Sequence[float]] = None,
    psf_model: str = "gaussian",
    moffat_beta: Optional[float] = None,
    method: str = "fast",
) -> np.ndarray:
    """Lensed Sersic source, float32 (len(flux), size, size), nanomaggies per pixel.

    Args:
        size: stamp side in pixels; the lens-plane origin is on pixel (size//2, size//2).
        pixscale: arcsec per pixel (0.262 for DR10).
        oversample: sub-pixels per pixel per axis (>= 4 recommended at 0.262").
        lens: ``dict(theta_e, q, phi, gamma1, gamma2, center_x, center_y)`` or an SIEShear.
        source: ``dict(x, y, r_eff, n, q, phi)`` (r_eff the exact half-light radius) or a SersicSource.
        flux: unlensed source flux per band, nanomaggies.
        psf_fwhm: per-band PSF FWHM in arcsec, or None for no PSF.
        psf_model: 'gaussian' or 'moffat' (then ``moffat_beta`` is required).
        method: 'fast' (adaptive fused kernel, default) or 'exact' (full float64 sub-grid).
    """
    unit = unit_lensed_image(size, pixscale, oversample, lens, source, method)
    kernels = band_psf_kernels(len(flux), pixscale, psf_fwhm, psf_model, moffat_beta)
    return apply_bands(unit, flux, kernels)
