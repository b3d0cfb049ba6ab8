"""Build the COSMOS source library (HDF5) from a GalSim galaxy catalogue.

Python API: :func:`draw_catalog` (galaxies in memory) and :func:`build_library` (writes the file);
the command line is ``dhs cosmos build`` (:mod:`dhs_spark.sims.cosmos_cli`).

Each galaxy is drawn on a fixed S x S stamp at ``pixel_scale_arcsec`` (0.03"), its centre on the
stamp's true centre ((S - 1) / 2 in 0-based pixels), normalised to unit total flux in the stamp.

Cleaning (real galaxies, :func:`clean_hst_stamp`, before either PSF treatment): the HST postage
stamps carry a residual sky pedestal (-23% to +43% of a stamp's sum here; AEGIS 14886: +16%) that
lensing would turn into a disc, zero-mean sky noise over the whole stamp (4-20% of a faint
galaxy's flux in the stamp's sum) and the odd neighbour. The pedestal (sigma-clipped level of the
stamp's outer frame, less the detected sources) is subtracted, and only the galaxy's footprint
(its isophote grown by 0.18") is kept, neighbours and sky set to 0. Recorded per galaxy:
``pedestal_per_pixel`` and its 1-sigma ``pedestal_sigma_per_pixel`` (catalogue units per HST
pixel), ``pedestal_flux_fraction`` and ``masked_flux_fraction`` (of the raw stamp's sum); ``flux``
is the cleaned galaxy's. Then :class:`LibraryCuts` (SNR, half-light radius, fraction of the galaxy
in the library stamp, galaxy running off its HST stamp) choose which galaxies enter the library;
the rejected ones are listed in the file attribute ``rejected``. Tested on synthetic truth and on
every real galaxy in ``tests/sims/test_cosmos_clean.py``.

File format :data:`dhs_spark.sims.cosmos.LIBRARY_FORMAT_VERSION` (2): contiguous float32 images,
memory-mapped by the loader; libraries of format 1 (``cosmos-build-2``, uncleaned) are refused.

HST PSF treatment (``psf_treatment``), recorded per galaxy in ``psf_fwhm_arcsec``:

- ``'deconvolve'``: ``galsim.RealGalaxy`` deconvolves the galaxy's own HST PSF (and original
  pixel) and we reconvolve with a round Gaussian of ``target_psf_fwhm_arcsec`` (0.1"), drawn
  with the new 0.03" pixel. Needs the catalogue's PSF file (the AEGIS files have it). The
  deconvolution correlates the pixel noise; its per-pixel variance comes from GalSim's
  propagated noise model. ``whiten=True`` adds noise to whiten it (GalSim ``whitenNoise``),
  which raises the variance (roughly doubles it here): off by default.
- ``'hst_native'``: the HST image is used as it is (integer-pixel crop or zero padding about its
  centre, no interpolation), its own PSF left in: ACS/WFC F814W, whose effective PSF measured on
  the AEGIS PSF images is 0.113" FWHM (:data:`HST_F814W_PSF_FWHM_ARCSEC`), close to the 0.1"
  Gaussian of the deconvolve path; the difference is the PSF's shape (ACS wings). For the
  COSMOS F814W files that ship without their PSF file this is the only real option. Its effect
  on a lensed DR10 stamp is bounded by ``tests/sims/test_cosmos_lensing.py``
  (native vs deconvolved on the AEGIS galaxies, after a 1" survey PSF), and
  :func:`hst_psf_arc_broadening` measures how much either PSF widens the lensed arc under a 1.2"
  DR10 PSF: median 0.24% across the arc, 0.18% along it, over the 15 real galaxies at theta_E
  1.2-1.5".
- ``'auto'``: deconvolve when the PSF file exists, else hst_native.

``gal_type='parametric'`` draws GalSim ``COSMOSCatalog`` Sersic / bulge+disc fits of the real
galaxies (PSF-free, noise-free: ``snr = inf``) convolved with the same ``target_psf_fwhm_arcsec``
Gaussian as the deconvolve path and integrated over the 0.03" pixel: the same 0.1" resolution as
the real galaxies, and drawing a bare n = 4 cusp would need FFTs of 10^4 x 10^4 and more.

Determinism: the galaxies are chosen by ``seed`` (a permutation, then sorted by catalogue
order), every HDF5 object is written with ``track_times=False``, the source catalogue is
recorded by file name and SHA-256 (not by its absolute path), so the same inputs give a
byte-identical file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Optional

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

BUILDER_VERSION = "cosmos-build-3"

#: Effective (pixel-convolved) FWHM of the ACS/WFC F814W PSF at 0.03"/pix, arcsec: median of
#: ``galsim.Image.calculateFWHM`` over the five AEGIS F814W PSF images (0.112-0.118").
HST_F814W_PSF_FWHM_ARCSEC = 0.113

GAL_TYPES = ("real", "parametric")
PSF_TREATMENTS = ("auto", "deconvolve", "hst_native")

HLR_DEFINITION = "radius of the circle about the light centroid holding half the stamp flux (cosmos.half_light_radius_arcsec)"
CLUMPINESS_DEFINITION = (
    "S = sum(max(I - I_s, 0)) / sum(I) within 2 r_hl, I_s = I smoothed by a Gaussian of sigma max(0.25 r_hl, 1 pix) (cosmos.clumpiness)"
)
SNR_DEFINITION = "flux within 2 r_hl / (noise_sigma * sqrt(pixels within 2 r_hl)) (cosmos.aperture_snr)"


@dataclasses.dataclass
class DrawnLibrary:
    """Galaxies drawn in memory: ``images`` (N, S, S) float32 each summing to 1, ``meta`` columns
    (:data:`~dhs_spark.sims.cosmos.LIBRARY_COLUMNS`), and the file attributes ``attrs``."""

    images: np.ndarray
    meta: dict
    pixscale_arcsec: float
    attrs: dict


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve_catalog(catalog: str, galsim_dir: Optional[str]) -> tuple[str, str]:
    """(catalogue file path, image directory); the catalogue may be given relative to ``galsim_dir``."""
    path = catalog if galsim_dir is None or os.path.isabs(catalog) else os.path.join(galsim_dir, catalog)
    if not os.path.isfile(path):
        raise InputDataError(f"COSMOS catalogue not found: {path}")
    return path, galsim_dir if galsim_dir is not None else os.path.dirname(os.path.abspath(path))


def _choose(n_total: int, n_sources: Optional[int], seed: int) -> np.ndarray:
    if n_sources is None or n_sources >= n_total:
        return np.arange(n_total)
    if n_sources < 1:
        raise ConfigError("n_sources", "must be >= 1", n_sources)
    rng = rng_from_seed(stable_hash64("cosmos-build-choose", int(seed)))
    return np.sort(rng.permutation(n_total)[:n_sources])


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad ``image`` to size x size about its centre, by whole pixels (no interpolation).

    When the parities differ the galaxy lands half a pixel (0.015") off the stamp centre.
    """
    out = np.zeros((size, size), dtype=np.float64)
    h, w = image.shape
    r0, c0 = (size - h) // 2, (size - w) // 2  # where image row/col 0 goes in the stamp
    src_r = slice(max(0, -r0), min(h, size - r0))
    src_c = slice(max(0, -c0), min(w, size - c0))
    dst_r = slice(max(0, r0), max(0, r0) + (src_r.stop - src_r.start))
    dst_c = slice(max(0, c0), max(0, c0) + (src_c.stop - src_c.start))
    out[dst_r, dst_c] = image[src_r, src_c]
    return out


def _zphot_by_ident(catalog_path: str) -> dict:
    """zphot per ident from the catalogue's ``*_fits.fits`` companion, when it exists."""
    from astropy.io import fits

    companion = catalog_path[: -len(".fits")] + "_fits.fits" if catalog_path.endswith(".fits") else None
    if companion is None or not os.path.isfile(companion):
        return {}
    with fits.open(companion) as hdul:
        data = hdul[1].data
        if "zphot" not in data.columns.names:
            return {}
        return {str(i): float(z) for i, z in zip(data["IDENT"], data["zphot"])}


# --------------------------------------------------------------------------------------------
# Cleaning the HST postage stamps: sky pedestal, neighbours, footprint.


@dataclasses.dataclass(frozen=True)
class StampCleaning:
    """Settings of :func:`clean_hst_stamp` (pixel counts are native HST pixels, 0.03").

    ``border_fraction``, ``min_border_pix``: the sky frame is the stamp's outer ring,
    max(``min_border_pix``, round(``border_fraction`` x the shorter side)) pixels wide.
    ``smooth_sigma_pix``: Gaussian detection filter, sigma 1.5 pix = FWHM 0.106", matched to the
    ACS F814W PSF (0.113", :data:`HST_F814W_PSF_FWHM_ARCSEC`), as SExtractor filters with a kernel
    about the PSF (Bertin & Arnouts 1996, A&AS 117, 393, sect. 7).
    ``detect_nsigma``, ``min_area_pix``: a source is a connected region (8-connectivity) of the
    filtered image above ``detect_nsigma`` times the filtered sky noise, at least ``min_area_pix``
    pixels; all of them (grown by ``neighbour_grow_pix``) are kept out of the sky frame.
    ``footprint_nsigma``, ``footprint_grow_pix``: the galaxy's footprint is the region above
    ``footprint_nsigma`` connected to its detection, grown by ``footprint_grow_pix`` (6 pix =
    0.18", 1.6 PSF FWHM) to take in the wings below the isophote. Measured on GalSim profiles in
    COSMOS correlated noise (2.6e-3 per pixel) with a 5e-4 pedestal, stamps >= 10 hlr wide: an
    exponential disc keeps 98-100% of its in-stamp flux in the median at 20-80 counts/s (mag
    21.2-22.7; 0.75-1.0 at 3 counts/s, where the isophote of a 0.4" disc is small), a de
    Vaucouleurs (n = 4) profile 89-96% at 80 counts/s (its wings reach the sky frame and sink
    below the isophote; any sky estimate from a finite stamp absorbs part of them).
    ``neighbour_nsigma``: a detection other than the galaxy is masked as a neighbour only if it
    peaks above this (the noise bumps in the galaxy's own wings pass ``detect_nsigma`` in places:
    14 false neighbours in 27 synthetic stamps at 3 sigma, none at 5).
    ``deblend_contrast``, ``deblend_levels``: multi-threshold split of a neighbour blended into the
    galaxy's detection (:func:`_deblend`).
    ``neighbour_grow_pix``: the neighbours' isophotes are grown by this much and zeroed.
    ``acf_lag_pix``: the noise autocorrelation is summed over lags up to this (the drizzled ACS
    noise is correlated over ~2-3 pixels) to give the pedestal's uncertainty.
    ``centre_radius_fraction``: when no source covers the centre pixel, the nearest source with
    a pixel within this fraction of the shorter side of the centre is taken as the galaxy.
    ``min_sky_pix``: fewer sky pixels than this in the frame and the stamp is refused.
    """

    border_fraction: float = 0.08
    min_border_pix: int = 3
    smooth_sigma_pix: float = 1.5
    detect_nsigma: float = 3.0
    min_area_pix: int = 10
    footprint_nsigma: float = 1.5
    footprint_grow_pix: int = 6
    neighbour_nsigma: float = 5.0
    deblend_contrast: float = 0.1
    deblend_levels: int = 32
    neighbour_grow_pix: int = 4
    acf_lag_pix: int = 4
    centre_radius_fraction: float = 0.1
    min_sky_pix: int = 100


@dataclasses.dataclass
class CleanedStamp:
    """One cleaned HST postage stamp (native pixels, catalogue image units).

    ``image``: (raw - pedestal) inside the galaxy's footprint, 0 elsewhere (neighbours, sky).
    ``pedestal_per_pixel`` and its 1-sigma ``pedestal_sigma_per_pixel`` (correlated noise
    included); ``raw_flux``: the raw stamp's sum; ``flux``: ``image.sum()``;
    ``pedestal_flux_fraction`` = pedestal x pixels / raw_flux; ``masked_flux_fraction`` = the
    pedestal-subtracted flux zeroed on neighbours / raw_flux; ``edge_fraction``: fraction of the
    stamp's outermost pixel ring inside the galaxy's isophote (the galaxy runs off its stamp);
    ``footprint``, ``neighbours``, ``sky``: boolean masks; ``n_neighbours``.
    """

    image: np.ndarray
    pedestal_per_pixel: float
    pedestal_sigma_per_pixel: float
    raw_flux: float
    flux: float
    pedestal_flux_fraction: float
    masked_flux_fraction: float
    edge_fraction: float
    footprint: np.ndarray
    neighbours: np.ndarray
    sky: np.ndarray
    n_neighbours: int


def _frame(shape: tuple, width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[:width] = mask[-width:] = True
    mask[:, :width] = mask[:, -width:] = True
    return mask


def _clipped(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) after iterative 3-sigma clipping (astropy ``sigma_clipped_stats``, median centre)."""
    from astropy.stats import sigma_clipped_stats

    mean, _, std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    return float(mean), float(std)


def _sources(filtered: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Labels (0 = none) of the 8-connected regions of ``filtered > threshold`` with at least ``min_area`` pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(filtered > threshold, structure=np.ones((3, 3), dtype=bool))
    if n:
        small = np.bincount(labels.ravel(), minlength=n + 1) < min_area
        small[0] = False
        labels[small[labels]] = 0
    return labels


def noise_correlation_sum(image: np.ndarray, mask: np.ndarray, max_lag_pix: int) -> float:
    """Sum of the normalised noise autocorrelation rho(dx, dy) over |dx|, |dy| <= ``max_lag_pix``.

    Measured on the pixels of ``mask`` (sky) about their mean. The variance of the mean of N
    such pixels is sigma^2 k / N with k this sum (1 for white noise, 3-7 for the drizzled ACS
    stamps here). Never below 1.
    """
    vals = np.where(mask, image - image[mask].mean(), 0.0)
    m = mask.astype(np.float64)
    var = float((vals[mask] ** 2).mean())
    if not var > 0:
        return 1.0
    h, w = image.shape
    total = 0.0
    for dy in range(-max_lag_pix, max_lag_pix + 1):
        for dx in range(-max_lag_pix, max_lag_pix + 1):
            a = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
            b = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
            pairs = (m[a] * m[b]).sum()
            if pairs > 0:
                total += float((vals[a] * vals[b]).sum() / pairs / var)
    return max(total, 1.0)


def _deblend(filtered: np.ndarray, labels: np.ndarray, central: int, threshold: float, contrast: float, levels: int, centre: tuple) -> np.ndarray:
    """Split the central detection where a blended neighbour sits in it (multi-threshold, after SExtractor).

    Thresholds rise geometrically from ``threshold`` to the detection's peak; at the first one
    where the detection breaks into two or more branches that each hold at least ``contrast`` of
    its filtered flux, every branch but the one nearest ``centre`` becomes a separate detection
    (new labels) and the rest of the detection stays with the galaxy. One split, no recursion.
    Bertin & Arnouts 1996 (A&AS 117, 393, sect. 6.2) use 32 levels and a contrast of 0.005; 0.1
    here keeps the galaxy's own star-forming knots (each a few per cent of its light) as galaxy.
    """
    from scipy import ndimage

    segment = labels == central
    peak = float(filtered[segment].max())
    total = float(filtered[segment].sum())
    if not peak > threshold:
        return labels
    for level in np.geomspace(threshold, peak, levels + 2)[1:-1]:
        branches, n = ndimage.label(segment & (filtered > level), structure=np.ones((3, 3), dtype=bool))
        if n < 2:
            continue
        fluxes = ndimage.sum(filtered, branches, index=np.arange(1, n + 1))
        big = np.flatnonzero(fluxes >= contrast * total) + 1
        if big.size < 2:
            continue
        rows, cols = np.indices(filtered.shape)
        dist = [np.min(np.hypot(rows[branches == b] - centre[0], cols[branches == b] - centre[1])) for b in big]
        out = labels.copy()
        next_label = int(labels.max()) + 1
        for b, d in zip(big, dist):
            if d != min(dist):
                out[branches == b] = next_label
                next_label += 1
        return out
    return labels


def clean_hst_stamp(raw: np.ndarray, cleaning: StampCleaning = StampCleaning(), ident: str = "?") -> CleanedStamp:
    """Remove the sky pedestal and the neighbours of an HST postage stamp; keep the central galaxy.

    1. Pedestal: the 3-sigma-clipped mean of the sky frame (the stamp's outer ring, less the
       detected sources grown by ``neighbour_grow_pix``), iterated three times with detection.
       A uniform pedestal is assumed (the stamps are 1-7" across). Its uncertainty is
       sigma_sky sqrt(k / N_sky) with k from :func:`noise_correlation_sum`.
    2. Detection on the pedestal-subtracted image filtered by a Gaussian (see
       :class:`StampCleaning`); the galaxy is the source covering the centre pixel (else the
       nearest one within ``centre_radius_fraction``), every other source is a neighbour.
    3. The returned image is (raw - pedestal) inside the galaxy's footprint and 0 elsewhere:
       neighbours, and the sky whose zero-mean noise would otherwise add sigma sqrt(k N)
       to the stamp's sum (4-20% of a mag 24.7 galaxy's flux over a whole stamp) and come out of
       the lens as a disc.

    Raises :class:`InputDataError` naming ``ident`` when the frame has fewer than
    ``min_sky_pix`` sky pixels, no source is found at the centre, or the cleaned flux is not
    positive.
    """
    from scipy import ndimage

    raw = np.asarray(raw, dtype=np.float64)
    h, w = raw.shape
    c = cleaning
    width = max(c.min_border_pix, int(round(c.border_fraction * min(h, w))))
    if 2 * width >= min(h, w):
        raise InputDataError(f"COSMOS galaxy {ident}: stamp {raw.shape} too small for a {width}-pixel sky frame")
    frame = _frame(raw.shape, width)
    grow = np.ones((3, 3), dtype=bool)
    sky = frame
    pedestal, _ = _clipped(raw[sky])
    for _ in range(3):
        filtered = ndimage.gaussian_filter(raw - pedestal, c.smooth_sigma_pix, mode="nearest")
        _, sigma_filtered = _clipped(filtered[sky])
        labels = _sources(filtered, c.detect_nsigma * sigma_filtered, c.min_area_pix)
        sources = ndimage.binary_dilation(labels > 0, structure=grow, iterations=c.neighbour_grow_pix)
        sky = frame & ~sources
        if sky.sum() < c.min_sky_pix:
            raise InputDataError(
                f"COSMOS galaxy {ident}: only {int(sky.sum())} sky pixels left in the {width}-pixel frame of its {raw.shape} stamp "
                f"(< {c.min_sky_pix}): no sky to measure the pedestal on"
            )
        pedestal, _ = _clipped(raw[sky])
    sub = raw - pedestal
    filtered = ndimage.gaussian_filter(sub, c.smooth_sigma_pix, mode="nearest")
    labels = _sources(filtered, c.detect_nsigma * sigma_filtered, c.min_area_pix)

    cy, cx = (h - 1) // 2, (w - 1) // 2
    central = int(labels[cy, cx])
    if central == 0:
        rows, cols = np.nonzero(labels)
        dist = np.hypot(rows - cy, cols - cx)
        if dist.size == 0 or dist.min() > c.centre_radius_fraction * min(h, w):
            raise InputDataError(f"COSMOS galaxy {ident}: no source detected within {c.centre_radius_fraction * min(h, w):.0f} pixels of the stamp centre")
        central = int(labels[rows[np.argmin(dist)], cols[np.argmin(dist)]])
    labels = _deblend(filtered, labels, central, c.detect_nsigma * sigma_filtered, c.deblend_contrast, c.deblend_levels, (cy, cx))
    central = int(labels[cy, cx]) or central
    galaxy = labels == central
    # a neighbour is another detection that peaks above neighbour_nsigma: the noise bumps of the
    # galaxy's own wings cross detect_nsigma in places but rarely neighbour_nsigma
    peaks = ndimage.maximum(filtered, labels, index=np.arange(labels.max() + 1)) if labels.max() else np.zeros(1)
    others = (labels > 0) & ~galaxy & (peaks[labels] >= c.neighbour_nsigma * sigma_filtered)
    # isophotes: the region above footprint_nsigma connected to a detection, each pixel given to
    # the nearest kept detection (galaxy or neighbour), a geometric deblend of touching isophotes
    kept = np.where(galaxy | others, labels, 0)
    nearest = kept[tuple(ndimage.distance_transform_edt(kept == 0, return_distances=False, return_indices=True))]
    low, _ = ndimage.label(filtered > c.footprint_nsigma * sigma_filtered, structure=grow)
    isophote = (np.isin(low, np.unique(low[galaxy])) & (low > 0) & (nearest == central)) | galaxy
    neighbour_isophote = (np.isin(low, np.unique(low[others])) & (low > 0) & (nearest != central)) | others
    neighbours = ndimage.binary_dilation(neighbour_isophote, structure=grow, iterations=c.neighbour_grow_pix) & ~galaxy
    footprint = ndimage.binary_dilation(isophote, structure=grow, iterations=c.footprint_grow_pix) & ~neighbours
    image = np.where(footprint, sub, 0.0)

    flux = float(image.sum())
    if not flux > 0:
        raise InputDataError(f"COSMOS galaxy {ident}: cleaned flux {flux!r} is not positive")
    raw_flux = float(raw.sum())
    sky_all = ~ndimage.binary_dilation(labels > 0, structure=grow, iterations=c.neighbour_grow_pix) & ~footprint
    k = noise_correlation_sum(raw, sky_all, c.acf_lag_pix)
    _, sigma_sky = _clipped(raw[sky])
    edge = _frame(raw.shape, 1)
    return CleanedStamp(
        image=image,
        pedestal_per_pixel=float(pedestal),
        pedestal_sigma_per_pixel=float(sigma_sky * math.sqrt(k / sky.sum())),
        raw_flux=raw_flux,
        flux=flux,
        pedestal_flux_fraction=float(pedestal * raw.size / raw_flux),
        masked_flux_fraction=float(sub[neighbours].sum() / raw_flux),
        edge_fraction=float((isophote & edge).sum() / edge.sum()),
        footprint=footprint,
        neighbours=neighbours,
        sky=sky,
        n_neighbours=int(len(np.unique(labels[others]))),
    )


@dataclasses.dataclass(frozen=True)
class LibraryCuts:
    """Which drawn galaxies go into the library (each rejected one is logged and listed in the
    file attribute ``rejected``).

    ``min_snr``: aperture SNR (:data:`SNR_DEFINITION`) of the cleaned stamp; 10 keeps the
    galaxy's structure above its own pixel noise (the 15 real test galaxies: 25-330).
    ``hlr_range_arcsec``: measured half-light radius; 0.05" (below that, about half the ACS PSF
    FWHM, the galaxy is a point source with no morphology to lend) to 1.0" (2 r_hl still
    inside a 128 x 0.03" stamp; real lensed sources have r_hl ~0.1-0.5", Newton et al. 2011,
    ApJ 734, 104).
    ``min_flux_fraction_in_stamp``: the library stamp holds at least this fraction of the
    cleaned galaxy (the rest is cut by the stamp edge or spread by the deconvolution's PSF).
    ``max_edge_fraction``: the galaxy's isophote covers at most this fraction of its HST
    postage stamp's outermost ring; beyond it, the galaxy runs off its stamp, its wings sit in
    the sky frame and the pedestal cannot be told from them.
    """

    min_snr: float = 10.0
    hlr_range_arcsec: tuple = (0.05, 1.0)
    min_flux_fraction_in_stamp: float = 0.97
    max_edge_fraction: float = 0.05

    def reason(self, snr: float, hlr: float, frac_in_stamp: float, edge_fraction: float) -> Optional[str]:
        """Why a galaxy fails the cuts (None when it passes)."""
        if not snr >= self.min_snr:
            return f"snr {snr:.1f} < min_snr {self.min_snr}"
        lo, hi = self.hlr_range_arcsec
        if not lo <= hlr <= hi:
            return f"half_light_radius_arcsec {hlr:.3f} outside [{lo}, {hi}]"
        if not frac_in_stamp >= self.min_flux_fraction_in_stamp:
            return f"flux_fraction_in_stamp {frac_in_stamp:.3f} < {self.min_flux_fraction_in_stamp}"
        if not edge_fraction <= self.max_edge_fraction:
            return f"galaxy runs off its HST stamp: isophote covers {edge_fraction:.2f} of the stamp edge > {self.max_edge_fraction}"
        return None


@dataclasses.dataclass
class _Drawn:
    """One drawn galaxy before normalisation: ``image`` in catalogue units, ``flux`` = the cleaned galaxy's flux."""

    ident: str
    mag: float
    zphot: float
    image: np.ndarray
    flux: float
    variance: float
    psf_fwhm: float
    pedestal: float = 0.0
    pedestal_sigma: float = 0.0
    pedestal_fraction: float = 0.0
    masked_fraction: float = 0.0
    edge_fraction: float = 0.0
    n_neighbours: int = 0


def _draw_real(rgc, index: int, ident: str, size: int, pixscale: float, treatment: str, target_fwhm: float, whiten: bool, seed: int,
               cleaning: StampCleaning) -> _Drawn:  # fmt: skip
    """One RealGalaxyCatalog entry, cleaned (:func:`clean_hst_stamp`) then drawn with the PSF treatment."""
    import galsim

    gal_file = rgc.cat["GAL_FILENAME"][index]
    gal_path = os.path.join(rgc.image_dir, gal_file)
    if not os.path.isfile(gal_path):
        raise InputDataError(f"COSMOS galaxy {ident}: image file not found: {gal_path}")
    psf_path = os.path.join(rgc.image_dir, rgc.cat["PSF_FILENAME"][index])
    if treatment == "auto":
        treatment = "deconvolve" if os.path.isfile(psf_path) else "hst_native"
    if treatment not in ("deconvolve", "hst_native"):
        raise ConfigError("psf_treatment", f"must be one of {PSF_TREATMENTS}", treatment)
    if treatment == "deconvolve" and not os.path.isfile(psf_path):
        raise InputDataError(f"COSMOS galaxy {ident}: PSF file not found (needed by psf_treatment='deconvolve'): {psf_path}")
    native_scale = float(rgc.cat["PIXEL_SCALE"][index])
    if treatment == "hst_native" and not math.isclose(native_scale, pixscale, rel_tol=1e-6):
        raise InputDataError(
            f"COSMOS galaxy {ident}: catalogue pixel scale {native_scale} differs from the requested {pixscale} "
            "and psf_treatment='hst_native' does not resample"
        )
    raw = rgc.getGalImage(index).array.astype(np.float64)
    if not np.all(np.isfinite(raw)):
        raise InputDataError(f"COSMOS galaxy {ident}: non-finite pixels in {gal_path}")
    cleaned = clean_hst_stamp(raw, cleaning, ident)
    common = dict(
        ident=ident,
        mag=float(rgc.cat["MAG"][index]),
        zphot=math.nan,
        flux=cleaned.flux,
        pedestal=cleaned.pedestal_per_pixel,
        pedestal_sigma=cleaned.pedestal_sigma_per_pixel,
        pedestal_fraction=cleaned.pedestal_flux_fraction,
        masked_fraction=cleaned.masked_flux_fraction,
        edge_fraction=cleaned.edge_fraction,
        n_neighbours=cleaned.n_neighbours,
    )
    if treatment == "hst_native":
        return _Drawn(image=_center_crop(cleaned.image, size), variance=float(rgc.cat["NOISE_VARIANCE"][index]), psf_fwhm=HST_F814W_PSF_FWHM_ARCSEC, **common)
    # deconvolve: GalSim's RealGalaxy built from the cleaned image (its tuple form: image, PSF
    # image, noise image, pixel scale, noise variance), the catalogue's own PSF and noise model
    rng = galsim.BaseDeviate(stable_hash64("cosmos-build-noise", int(seed), ident) & 0x7FFFFFFF)
    noise_image, noise_scale, noise_var = rgc.getNoiseProperties(index)
    gal_image = galsim.Image(np.ascontiguousarray(cleaned.image), scale=native_scale)
    real = galsim.RealGalaxy((gal_image, rgc.getPSFImage(index), noise_image, noise_scale, noise_var), rng=rng)
    final = galsim.Convolve(real, galsim.Gaussian(fwhm=target_fwhm))
    drawn = final.drawImage(nx=size, ny=size, scale=pixscale)
    variance = float(final.noise.getVariance())
    if whiten:
        variance = float(drawn.whitenNoise(final.noise))
    return _Drawn(image=drawn.array.astype(np.float64), variance=variance, psf_fwhm=float(target_fwhm), **common)


def draw_catalog(
    catalog: str,
    galsim_dir: Optional[str] = None,
    gal_type: str = "real",
    n_sources: Optional[int] = None,
    stamp_size: int = 128,
    pixel_scale_arcsec: float = 0.03,
    seed: int = 42,
    psf_treatment: str = "auto",
    target_psf_fwhm_arcsec: float = 0.1,
    whiten: bool = False,
    exclusion_level: str = "marginal",
    cleaning: StampCleaning = StampCleaning(),
    cuts: LibraryCuts = LibraryCuts(),
) -> DrawnLibrary:
    """Draw the galaxies of a GalSim catalogue onto unit-flux stamps (see the module doc).

    ``catalog``: a RealGalaxyCatalog FITS file (absolute, or relative to ``galsim_dir``, where its
    images and PSFs live). ``gal_type``: 'real' (the HST images, cleaned by
    :func:`clean_hst_stamp` with ``cleaning``) or 'parametric' (COSMOSCatalog fits, noise- and
    sky-free; ``exclusion_level`` as in GalSim). ``n_sources``: how many are drawn (chosen by
    ``seed``), all when None; ``cuts`` then decide which enter the library. Raises
    :class:`InputDataError` when none passes.
    """
    import galsim

    from dhs_spark.sims.cosmos import LIBRARY_COLUMNS, aperture_snr, clumpiness, half_light_radius_arcsec

    if gal_type not in GAL_TYPES:
        raise ConfigError("gal_type", f"must be one of {GAL_TYPES}", gal_type)
    if psf_treatment not in PSF_TREATMENTS:
        raise ConfigError("psf_treatment", f"must be one of {PSF_TREATMENTS}", psf_treatment)
    if stamp_size < 8:
        raise ConfigError("stamp_size", "must be >= 8 pixels", stamp_size)
    if not pixel_scale_arcsec > 0:
        raise ConfigError("pixel_scale_arcsec", "must be > 0", pixel_scale_arcsec)
    lo, hi = (float(v) for v in cuts.hlr_range_arcsec)
    if not 0.0 <= lo < hi:
        raise ConfigError("cuts.hlr_range_arcsec", "must be (lo, hi) with 0 <= lo < hi", cuts.hlr_range_arcsec)
    path, image_dir = _resolve_catalog(catalog, galsim_dir)
    zphot = _zphot_by_ident(path)

    rows: list[_Drawn] = []
    if gal_type == "real":
        try:
            rgc = galsim.RealGalaxyCatalog(os.path.basename(path), dir=os.path.dirname(os.path.abspath(path)))
        except Exception as exc:  # GalSim raises OSError/KeyError/GalSimError for a bad file
            raise InputDataError(f"COSMOS catalogue {path} could not be read as a GalSim RealGalaxyCatalog: {exc}") from exc
        rgc.image_dir = image_dir
        chosen = _choose(rgc.nobjects, n_sources, seed)
        for index in chosen:
            ident = str(rgc.ident[index])
            drawn = _draw_real(rgc, int(index), ident, stamp_size, pixel_scale_arcsec, psf_treatment, target_psf_fwhm_arcsec, whiten, seed, cleaning)
            drawn.zphot = zphot.get(ident, math.nan)
            rows.append(drawn)
            log.info("drew COSMOS galaxy %s: pedestal %.3g per pixel (%.1f%% of the raw stamp), %d neighbours masked",
                     ident, drawn.pedestal, 100 * drawn.pedestal_fraction, drawn.n_neighbours)  # fmt: skip
    else:
        try:
            cc = galsim.COSMOSCatalog(file_name=os.path.basename(path), dir=os.path.dirname(os.path.abspath(path)), exclusion_level=exclusion_level)
        except Exception as exc:
            raise InputDataError(f"COSMOS catalogue {path} could not be read as a GalSim COSMOSCatalog: {exc}") from exc
        chosen = _choose(cc.nobjects, n_sources, seed)
        target_psf = galsim.Gaussian(fwhm=target_psf_fwhm_arcsec)
        for index in chosen:
            record = cc.getParametricRecord(int(index))
            ident = str(int(record["IDENT"]))
            gal = cc.makeGalaxy(int(index), gal_type="parametric")
            drawn = galsim.Convolve(gal, target_psf).drawImage(nx=stamp_size, ny=stamp_size, scale=pixel_scale_arcsec)
            z = float(record["zphot"]) if "zphot" in record else zphot.get(ident, math.nan)
            rows.append(_Drawn(ident, float(record["mag_auto"]), z, drawn.array.astype(np.float64), float(gal.flux), 0.0, float(target_psf_fwhm_arcsec)))

    images, metas, rejected = [], [], []
    for d in rows:
        stamp_flux = d.image.sum()
        if not np.all(np.isfinite(d.image)) or not stamp_flux > 0:
            raise InputDataError(f"COSMOS galaxy {d.ident} from {path}: drawn stamp is non-finite or has non-positive flux {stamp_flux!r}")
        unit = d.image / stamp_flux
        hlr = half_light_radius_arcsec(unit, pixel_scale_arcsec)
        noise_sigma = math.sqrt(d.variance) / stamp_flux
        snr = aperture_snr(unit, pixel_scale_arcsec, hlr, noise_sigma)
        reason = cuts.reason(snr, hlr, stamp_flux / d.flux, d.edge_fraction)
        if reason is not None:
            log.info("COSMOS galaxy %s rejected: %s", d.ident, reason)
            rejected.append({"ident": d.ident, "reason": reason})
            continue
        images.append(unit.astype(np.float32))
        metas.append({
            "ident": d.ident, "mag": d.mag, "zphot": d.zphot, "half_light_radius_arcsec": hlr,
            "clumpiness": clumpiness(unit, pixel_scale_arcsec, hlr), "flux": d.flux, "flux_fraction_in_stamp": stamp_flux / d.flux,
            "noise_sigma": noise_sigma, "snr": snr, "psf_fwhm_arcsec": d.psf_fwhm, "pixel_scale_arcsec": pixel_scale_arcsec,
            "pedestal_per_pixel": d.pedestal, "pedestal_sigma_per_pixel": d.pedestal_sigma,
            "pedestal_flux_fraction": d.pedestal_fraction, "masked_flux_fraction": d.masked_fraction,
        })  # fmt: skip
    if not images:
        raise InputDataError(f"COSMOS catalogue {path}: all {len(rows)} drawn galaxies fail the library cuts {cuts}: {rejected}")
    meta = {name: np.array([m[name] for m in metas], dtype=None if name == "ident" else np.float64) for name in LIBRARY_COLUMNS}
    attrs = {
        "pixel_scale_arcsec": float(pixel_scale_arcsec),
        "stamp_size": int(stamp_size),
        "n_sources": len(images),
        "n_drawn": len(rows),
        "rejected": json.dumps(rejected),
        "builder_version": BUILDER_VERSION,
        "galsim_version": galsim.__version__,
        "source_catalog": os.path.basename(path),
        "source_catalog_sha256": _sha256(path),
        "gal_type": gal_type,
        "psf_treatment": psf_treatment if gal_type == "real" else "parametric fits convolved with the target Gaussian",
        "target_psf_fwhm_arcsec": float(target_psf_fwhm_arcsec),
        "whiten": bool(whiten),
        "seed": int(seed),
        "cleaning": json.dumps(dataclasses.asdict(cleaning)) if gal_type == "real" else "none (parametric fits have no sky and no neighbours)",
        "cuts": json.dumps(dataclasses.asdict(cuts)),
        "flux_units": "flux: the cleaned galaxy's flux (pedestal removed, neighbours and sky zeroed) in catalogue image units (HST counts/s); "
        "images: stamp normalised to sum 1",
        "pedestal_units": "pedestal_per_pixel, pedestal_sigma_per_pixel: catalogue image units per native HST pixel; fractions: of the raw HST stamp's sum",
        "noise_sigma_units": "per-pixel noise sigma of the unit-flux stamp (inside the galaxy's footprint; 0 outside)",
        "half_light_radius_definition": HLR_DEFINITION,
        "clumpiness_definition": CLUMPINESS_DEFINITION,
        "snr_definition": SNR_DEFINITION,
    }
    return DrawnLibrary(images=np.stack(images), meta=meta, pixscale_arcsec=float(pixel_scale_arcsec), attrs=attrs)


def write_library(drawn: DrawnLibrary, output_path: str) -> None:
    """Write ``drawn`` as an HDF5 library (format :data:`dhs_spark.sims.cosmos.LIBRARY_FORMAT_VERSION`).

    ``images``: (N, S, S) float32 little-endian, contiguous and uncompressed, so that each
    Python worker memory-maps it (one copy in the page cache per node, no decompression per
    stamp; N S^2 4 bytes: 65 kB a galaxy at S = 128); one 1-D dataset per metadata column; file
    attributes. Written to a temporary name then renamed.
    """
    import h5py

    from dhs_spark.sims.cosmos import LIBRARY_COLUMNS, LIBRARY_FORMAT_VERSION

    tmp = f"{output_path}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.create_dataset("images", data=np.ascontiguousarray(drawn.images, dtype="<f4"), track_times=False)
        for name in LIBRARY_COLUMNS:
            values = drawn.meta[name]
            if name == "ident":
                width = max(1, max((len(v) for v in values), default=1))
                values = np.array([v.encode() for v in values], dtype=f"S{width}")
            else:
                values = np.asarray(values, dtype=np.float64)
            f.create_dataset(name, data=values, track_times=False)
        for key, value in drawn.attrs.items():
            f.attrs[key] = value
        f.attrs["library_format_version"] = LIBRARY_FORMAT_VERSION
    os.replace(tmp, output_path)


def build_library(output_path: str, catalog: str, galsim_dir: Optional[str] = None, **options) -> DrawnLibrary:
    """Draw a catalogue (``options`` as in :func:`draw_catalog`) and write it to ``output_path``."""
    drawn = draw_catalog(catalog, galsim_dir=galsim_dir, **options)
    write_library(drawn, output_path)
    log.info("wrote %d COSMOS sources to %s (%d rejected by the cuts)", drawn.images.shape[0], output_path, int(drawn.attrs.get("n_drawn", 0)) - drawn.images.shape[0])
    return drawn


# --------------------------------------------------------------------------------------------
# The HST PSF left in the sources, after lensing and the survey PSF.


def arc_widths_arcsec(image: np.ndarray, pixscale_arcsec: float, centre_arcsec: tuple = (0.0, 0.0)) -> tuple[float, float]:
    """(radial, tangential) flux-weighted second-moment widths (arcsec) of an arc about the lens centre.

    ``image``: (S, S) flux per pixel, pixel (i, j) centred at ((j - S//2), (i - S//2)) x pixscale
    (the renderer's grid); ``centre_arcsec``: the lens centre (x, y). Radial: the standard
    deviation of r, the distance from the centre (across the arc). Tangential: the mean radius
    times the standard deviation of the position angle about the flux-weighted mean direction
    (along the arc; meaningful for an arc, saturating for a full ring). Signed flux weights.
    """
    image = np.asarray(image, dtype=np.float64)
    n = image.shape[0]
    coords = (np.arange(n) - n // 2) * pixscale_arcsec
    x = coords[None, :] - centre_arcsec[0]
    y = coords[:, None] - centre_arcsec[1]
    r = np.hypot(x, y)
    total = image.sum()
    r_mean = float((image * r).sum() / total)
    radial = math.sqrt(max(float((image * (r - r_mean) ** 2).sum() / total), 0.0))
    direction = np.angle((image * np.exp(1j * np.arctan2(y, x))).sum())
    dphi = np.angle(np.exp(1j * (np.arctan2(y, x) - direction)))
    tangential = r_mean * math.sqrt(max(float((image * dphi**2).sum() / total), 0.0))
    return radial, tangential


def blur_source(source, fwhm_arcsec: float):
    """``source`` (a unit-flux :class:`~dhs_spark.sims.cosmos.COSMOSImageSource`) convolved with a
    round Gaussian of ``fwhm_arcsec`` in the source plane, same position and rotation (zero-padded
    by 4 sigma, so no flux leaves the stamp)."""
    from scipy.ndimage import gaussian_filter

    from dhs_spark.sims.cosmos import COSMOSImageSource

    sigma_pix = fwhm_arcsec / (2.0 * math.sqrt(2.0 * math.log(2.0))) / source.pixscale_arcsec
    pad = int(math.ceil(4.0 * sigma_pix))
    blurred = gaussian_filter(np.pad(source.image, pad), sigma_pix, mode="constant")
    return COSMOSImageSource(blurred / blurred.sum(), source.pixscale_arcsec, source.ident).at(source.x_arcsec, source.y_arcsec, source.phi_rad)


def hst_psf_arc_broadening(source, lens, source_psf_fwhm_arcsec: float, survey_psf_fwhm_arcsec: float = 1.2, size: int = 64,
                           pixscale_arcsec: float = 0.262, oversample: Optional[int] = None) -> dict:  # fmt: skip
    """How much the HST PSF left in a source widens its lensed arc as the survey sees it.

    The arc is rendered (fast path, ``oversample`` default
    :data:`~dhs_spark.sims.cosmos.COSMOS_OVERSAMPLE`) from ``source`` (placed, HST PSF of FWHM
    ``source_psf_fwhm_arcsec`` in it) and from the same source blurred by one more Gaussian of
    that FWHM, each convolved with a Gaussian survey PSF of ``survey_psf_fwhm_arcsec``, and its
    widths measured by :func:`arc_widths_arcsec`. Convolution adds second moments, and a lens
    maps a small source-plane blur linearly (its local Jacobian), so the squared width the PSF
    already in the source adds is close to what the second blur adds, Delta = w_blurred^2 - w^2,
    and the broadening against a PSF-free source is w / sqrt(w^2 - Delta) - 1 (checked against
    noise-free GalSim sources drawn with and without the PSF in ``tests/sims/test_cosmos_lensing.py``).

    Returns radial (across the arc) and tangential (along it) widths in arcsec and the
    fractional broadenings ``radial_broadening``, ``tangential_broadening``.
    """
    from dhs_spark.sims.cosmos import COSMOS_OVERSAMPLE
    from dhs_spark.sims.lensing import as_lens
    from dhs_spark.sims.psf import convolve_separable_same, gaussian_kernel_1d

    k = COSMOS_OVERSAMPLE if oversample is None else int(oversample)
    # optical kernel: the renderer has already averaged each pixel (see dhs_spark.sims.psf)
    kernel = gaussian_kernel_1d(survey_psf_fwhm_arcsec, pixscale_arcsec, integrate_pixel=False)
    lens = as_lens(lens)
    centre = (lens.center_x_arcsec, lens.center_y_arcsec)
    widths = []
    for src in (source, blur_source(source, source_psf_fwhm_arcsec)):
        image = convolve_separable_same(src.unit_lensed_image_fast(size, pixscale_arcsec, k, lens), kernel)
        widths.append(arc_widths_arcsec(image, pixscale_arcsec, centre))
    (wr, wt), (br, bt) = widths

    def broadening(w, w_blurred):
        delta = w_blurred**2 - w**2
        return w / math.sqrt(w**2 - delta) - 1.0 if w**2 > delta else math.inf

    return {
        "radial_width_arcsec": wr,
        "tangential_width_arcsec": wt,
        "radial_broadening": broadening(wr, br),
        "tangential_broadening": broadening(wt, bt),
    }
