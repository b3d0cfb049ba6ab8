"""Expected arc SNR of a lens configuration on a brick, before any pixel is cut (phase 4a).

Used to select *detectable* lenses, the population a DR10 search can find (Collett 2015, ApJ
811, 20, §2.4, calls a lens detectable when the lensed source's SNR is >= 20 and its images are
resolved; the six real DR10 candidates shipped in tests/data/cutouts_dr10 have arc visibilities
of 3-25, median 19.7). The estimate is the matched-filter SNR the truth record calls
``arc_snr_sum``:

    SNR^2 = sum_b ivar_pix_b sum_pixels arc_b^2,

with arc_b the lensed, PSF-convolved source in band b (a Sersic stand-in of the source's
half-light radius for COSMOS galaxies), a Gaussian PSF of the brick's FWHM, and the per-pixel
inverse variance from the brick's point-source depth: for a Gaussian PSF the optimal
point-source inverse variance is ivar_pix / NEA with NEA = 4 pi sigma_psf^2 (pixels), so
ivar_pix = psfdepth_invvar x 4 pi sigma_psf_pix^2 (the relation the mock survey's noise is
built from). Real coadds have correlated noise and varying depth, so this is an estimate: the
stamp's own ``arc_snr_sum`` (measured on its invvar) is the truth.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.psf import FWHM_PER_SIGMA, convolve_separable_same, gaussian_kernel_1d_cached
from dhs_spark.sims.render import unit_lensed_image
from dhs_spark.sims.sersic import SersicSource

#: Sub-pixels per axis of the estimate's render: the SNR sum is insensitive to the sub-pixel
#: flux errors (a few per cent) that oversample 2 leaves on small sources.
ESTIMATE_OVERSAMPLE = 2


def pixel_invvar_from_psfdepth(psfdepth_invvar_nmgy2: float, psf_fwhm_arcsec: float, pixscale_arcsec: float) -> float:
    """Per-pixel inverse variance (1/nmgy^2) of a sky-limited image whose Gaussian-PSF
    point-source depth is ``psfdepth_invvar_nmgy2``: ivar_pix = psfdepth x 4 pi sigma_pix^2."""
    sigma_pix = psf_fwhm_arcsec / FWHM_PER_SIGMA / pixscale_arcsec
    return float(psfdepth_invvar_nmgy2) * 4.0 * math.pi * sigma_pix**2


def expected_arc_snr(lens: SIEShear, source: SersicSource, flux_nmgy: Sequence[float], psf_fwhm_arcsec: Sequence[float],
                     psfdepth_invvar_nmgy2: Sequence[float], stamp_size: int, pixscale_arcsec: float) -> tuple[float, float]:
    """(expected ``arc_snr_sum``, magnification) of ``source`` (unlensed band fluxes
    ``flux_nmgy``, nanomaggies, after extinction) behind ``lens`` on a brick with per-band
    Gaussian PSF FWHM (arcsec) and point-source depth (1/nmgy^2)."""
    unit = unit_lensed_image(int(stamp_size), float(pixscale_arcsec), ESTIMATE_OVERSAMPLE, lens, source, "fast")
    snr2 = 0.0
    for flux, fwhm, depth in zip(flux_nmgy, psf_fwhm_arcsec, psfdepth_invvar_nmgy2):
        if not (flux > 0 and depth > 0 and fwhm > 0):
            continue
        arc = convolve_separable_same(unit, gaussian_kernel_1d_cached(float(fwhm), float(pixscale_arcsec)))
        snr2 += pixel_invvar_from_psfdepth(depth, fwhm, pixscale_arcsec) * float(flux) ** 2 * float(np.sum(arc * arc))
    return math.sqrt(snr2), float(unit.sum())


def arc_sector_snr(arc_chw: np.ndarray, invvar_chw: np.ndarray, theta_e_arcsec: float, pixscale_arcsec: float) -> float:
    """Visibility of an arc by itself (truth): :func:`dhs_spark.anchors.arc_visibility_snr`'s
    statistic (inverse-variance band stack, annulus theta_E +- 0.8", largest of 8 sector SNRs)
    applied to the added arc over the cutout's invvar, with no host to subtract. What the
    estimator would measure on the stamp if its host model were perfect and the noise zero, so
    the stamp's own measurement scatters about it by ~N(0, 1) per sector."""
    from dhs_spark.anchors import ANNULUS_HALF_WIDTH_ARCSEC, DEFAULT_ANNULUS_ARCSEC, N_SECTORS, ring_sectors

    if not (theta_e_arcsec > 0):
        return 0.0
    r_in = max(DEFAULT_ANNULUS_ARCSEC[0], theta_e_arcsec - ANNULUS_HALF_WIDTH_ARCSEC)
    r_out = max(r_in + 0.5, theta_e_arcsec + ANNULUS_HALF_WIDTH_ARCSEC)
    r_pix, sector = ring_sectors(arc_chw.shape[1:])
    # only the square around the annulus is read: the same pixels, in the same order, as the whole stamp
    h, w = arc_chw.shape[1:]
    cy, cx = h // 2, w // 2
    half = int(math.ceil(r_out / pixscale_arcsec)) + 1
    rows, cols = slice(max(cy - half, 0), min(cy + half + 1, h)), slice(max(cx - half, 0), min(cx + half + 1, w))
    inv = invvar_chw[:, rows, cols]
    ivar = np.where(np.isfinite(inv) & (inv > 0), inv, 0.0).astype(np.float64)
    wsum = ivar.sum(axis=0)
    snr_map = np.where(wsum > 0, (arc_chw[:, rows, cols] * ivar).sum(axis=0) / np.sqrt(np.where(wsum > 0, wsum, 1.0)), 0.0)
    r_pix, sector = r_pix[rows, cols], sector[rows, cols]
    r_arcsec = r_pix * pixscale_arcsec
    valid = (r_arcsec >= r_in) & (r_arcsec <= r_out) & (wsum > 0)
    sums = np.bincount(sector[valid], weights=snr_map[valid], minlength=N_SECTORS)
    counts = np.bincount(sector[valid], minlength=N_SECTORS)
    filled = counts > 0
    return float(max(0.0, (sums[filled] / np.sqrt(counts[filled])).max())) if filled.any() else 0.0
