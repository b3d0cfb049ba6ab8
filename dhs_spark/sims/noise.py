"""Correlated noise of a coadd: measure it on a cutout's own sky pixels, synthesise noise that has it.

Why. A Legacy Surveys coadd is an inverse-variance weighted sum of exposures, each resampled onto
the brick's pixel grid with a Lanczos-3 kernel (legacypipe ``coadds.make_coadds``, ``lanczos=True``).
Resampling spreads every exposure pixel's noise over neighbouring coadd pixels, so the coadd's
noise is correlated over a few pixels: on the six real DR10 cutouts in ``tests/data/cutouts_dr10``
(101 x 101, every band) this estimator gives lag-1 correlations of 0.10-0.28 along x and
0.17-0.31 along y (dithers and resampling differ by axis), 0.02-0.09 on the diagonals, a negative
lag 2 (-0.06 to -0.20, the kernel's negative lobe) and a positive lag 3 (0.01-0.08). An injected arc's photon noise, had it been on the sky, would have gone
through the same resampling, so it gets the same correlation here.

Conventions. Images are (C, H, W) nanomaggies per pixel, bands along axis 0, y along axis 1
(DESIGN.md §2). A correlation ``rho[b, L + dy, L + dx]`` is corr(pixel (y, x), pixel (y + dy,
x + dx)) in band b for lags |dy|, |dx| <= L (``max_lag``); ``rho[b, L, L] = 1`` and rho is
symmetric, rho(d) = rho(-d).

Estimation (:func:`estimate_noise_correlation`):

1. sky pixels: finite, invvar > 0 in every band (when invvar is given), at least
   ``centre_radius_pix`` from the centre pixel (the host galaxy sits there);
2. sources masked: each band is box-smoothed over 3 x 3 pixels and pixels more than
   ``clip_sigma`` (4) robust standard deviations (:func:`sky_mask`) from the median are flagged
   in any band, then the flags are grown by ``grow_pix`` (2) pixels. Thresholding the
   smoothed image finds extended sources at a lower surface brightness than single pixels would,
   while pure noise crosses 4 sigma in ~2e-4 of the pixels (three bands), so the mask does not
   select noise peaks (which would bias the correlation low);
3. the masked autocorrelation: z = (image - background) on sky pixels, 0 elsewhere, where the
   background is a least-squares fit of 1, r, r^2, x, y (r from the centre) to the sky pixels
   (the host's outer halo and any gradient, which would add a constant to every lag),
   C(d) = sum_i z_i z_{i+d} / sum_i m_i m_{i+d} (m the sky mask), both sums by zero-padded FFTs;
   rho = C / C(0) and the per-pixel sky variance is C(0).

The statistical error of a rho(d) from N sky pixels is about sqrt(sum_l rho(l)^2 / N)
(Bartlett's formula, sum over all lags), ~0.02 for the ~3,000 sky pixels of a 64 x 64 stamp.
Fewer than ``min_sky_pixels`` (400, error ~0.06) sky pixels, or no sky variance, gives no
estimate: the result is the white (delta) correlation with ``estimated=False``, which the caller
records. Systematics, measured on 80 synthetic 64 x 64 cutouts of resampled noise with a de
Vaucouleurs host (r_e 1.5") and stars (``tests/sims/test_noise.py``): -0.002 on average over the
lags (the background fit's ~5 sum(rho) / N), at most ~0.007 at one lag, a third of one
estimate's statistical error.

Synthesis (:func:`correlated_noise`): white Gaussian deviates times a per-pixel standard
deviation map, convolved with the zero-phase filter whose transfer function is the square root
of the power spectrum of rho (the noise model of GalSim's ``CorrelatedNoise``; Rowe et al. 2015,
Astronomy and Computing 10, 121). The power spectrum is that of rho truncated to |d| <= L, clipped at 0 where
the truncation makes it negative, and renormalised so that the filter keeps the variance
(sum h^2 = 1): the output has the per-pixel variance of the map (where the map varies slowly on
the filter's scale) and the autocorrelation rho at lags <= L, 0 beyond.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import fft as sfft

DEFAULT_MAX_LAG = 3
DEFAULT_CLIP_SIGMA = 4.0
DEFAULT_GROW_PIX = 2
MIN_SKY_PIXELS = 400
# Zero padding of the synthesis FFT, pixels: the filter (the inverse transform of sqrt(PSD)) holds
# <= 3e-4 of its power beyond 8 px for the six DR10 cutouts' correlations, so wrap-around is negligible.
_SYNTH_PAD_PIX = 8
# How far the synthesis box reaches beyond the pixels whose noise is not negligible, pixels: the
# noise leaking further comes from edge pixels at the negligible level through the filter's tail,
# which holds <= 2.1% of its power beyond 3 px (the same six cutouts), so <= 15% of a level that
# is itself negligible (inject: 1% of the sky's standard deviation).
_LEAK_PAD_PIX = 3


@dataclass(frozen=True)
class NoiseCorrelation:
    """Normalised noise autocorrelation of a (C, H, W) image, per band.

    rho: (C, 2L+1, 2L+1) float64, ``rho[b, L + dy, L + dx]`` (module docstring); variance_nmgy2:
    (C,) per-pixel sky variance (nanomaggies^2, 0 when not estimated); n_sky_pixels: sky pixels
    used; estimated: False when there were too few (rho is then the white delta).
    """

    rho: np.ndarray
    variance_nmgy2: np.ndarray
    n_sky_pixels: int
    estimated: bool

    def __post_init__(self):
        rho = np.asarray(self.rho, dtype=np.float64)
        if rho.ndim != 3 or rho.shape[1] != rho.shape[2] or rho.shape[1] % 2 == 0:
            raise ValueError(f"NoiseCorrelation.rho must be (C, 2L+1, 2L+1) (got shape {rho.shape})")
        if not np.all(np.isfinite(rho)):
            raise ValueError("NoiseCorrelation.rho must be finite")
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "variance_nmgy2", np.asarray(self.variance_nmgy2, dtype=np.float64).reshape(rho.shape[0]))

    @property
    def max_lag(self) -> int:
        return self.rho.shape[1] // 2

    @property
    def lag1_x(self) -> np.ndarray:
        """(C,) correlation of horizontally adjacent pixels, rho(dy=0, dx=1)."""
        return self.rho[:, self.max_lag, self.max_lag + 1].copy()

    @property
    def lag1_y(self) -> np.ndarray:
        """(C,) correlation of vertically adjacent pixels, rho(dy=1, dx=0)."""
        return self.rho[:, self.max_lag + 1, self.max_lag].copy()

    @classmethod
    def white(cls, n_bands: int, max_lag: int = DEFAULT_MAX_LAG, n_sky_pixels: int = 0) -> NoiseCorrelation:
        """Uncorrelated noise (rho = delta), ``estimated=False``."""
        rho = np.zeros((n_bands, 2 * max_lag + 1, 2 * max_lag + 1))
        rho[:, max_lag, max_lag] = 1.0
        return cls(rho, np.zeros(n_bands), n_sky_pixels, False)


def _box3(image: np.ndarray) -> np.ndarray:
    """3 x 3 box sum over the last two axes (edge rows and columns summed over what exists)."""
    rows = image.copy()
    rows[..., 1:-1, :] += image[..., :-2, :] + image[..., 2:, :]
    out = rows.copy()
    out[..., 1:-1] += rows[..., :-2] + rows[..., 2:]
    return out


def _grow(mask: np.ndarray, pix: int) -> np.ndarray:
    """``mask`` dilated by a (2 pix + 1)^2 square: pix rounds of 3 x 3 dilation."""
    out = mask.copy()
    for _ in range(pix):
        g = out.copy()
        g[1:] |= out[:-1]
        g[:-1] |= out[1:]
        out = g.copy()
        out[:, 1:] |= g[:, :-1]
        out[:, :-1] |= g[:, 1:]
    return out


@functools.lru_cache(maxsize=16)
def _outside_radius(h: int, w: int, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    out = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 >= radius * radius
    out.setflags(write=False)
    return out


def sky_mask(
    image: np.ndarray,
    invvar: Optional[np.ndarray] = None,
    centre_radius_pix: Optional[float] = None,
    clip_sigma: float = DEFAULT_CLIP_SIGMA,
    grow_pix: int = DEFAULT_GROW_PIX,
) -> np.ndarray:
    """(H, W) bool: the sky pixels of a (C, H, W) image (module docstring, steps 1-2).

    ``centre_radius_pix``: pixels closer than this to the centre pixel (H//2, W//2) are not sky;
    default H // 4 (16 px = 4.2" for a 64-pixel stamp). The median and standard deviation of the
    smoothed image come from every other sky pixel in x and y (a quarter: ~800 in a 64-pixel
    stamp, 2.5% error on sigma; smoothed neighbours are correlated anyway) and the standard
    deviation is median - 15.87th percentile (1 sigma for a Gaussian), which sources, all
    positive, barely move.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W) (got shape {img.shape})")
    _, h, w = img.shape
    radius = h // 4 if centre_radius_pix is None else float(centre_radius_pix)
    if not (clip_sigma > 0 and int(grow_pix) == grow_pix and grow_pix >= 0 and radius >= 0):
        raise ValueError(
            f"sky_mask: need clip_sigma > 0, integer grow_pix >= 0, centre_radius_pix >= 0 (got {clip_sigma}, {grow_pix}, {radius})"
        )
    if invvar is not None:
        iv = np.asarray(invvar)
        if iv.shape != img.shape:
            raise ValueError(f"invvar shape {iv.shape} differs from the image's {img.shape}")
        valid = np.all(iv > 0, axis=0)  # False for NaN too
    else:
        valid = np.ones((h, w), dtype=bool)
    valid &= np.all(np.isfinite(img), axis=0)
    region = valid & _outside_radius(h, w, radius)
    stats_region = region[::2, ::2]
    if not stats_region.any():
        return np.zeros((h, w), dtype=bool)
    smooth = _box3(img if valid.all() else np.where(valid, img, np.float32(0)))
    values = smooth[:, ::2, ::2][:, stats_region]
    k50, k16 = values.shape[1] // 2, int(0.1587 * values.shape[1])
    part = np.partition(values, (k16, k50), axis=1)
    med, sigma = part[:, k50], part[:, k50] - part[:, k16]
    flagged = np.any(np.abs(smooth - med[:, None, None]) > clip_sigma * sigma[:, None, None], axis=0)
    return region & ~_grow(flagged | ~valid, int(grow_pix))


@functools.lru_cache(maxsize=16)
def _dft_tables(shape: tuple[int, int], max_lag: int) -> tuple[np.ndarray, ...]:
    """cos and sin of 2 pi k d / n for the lags d = -L..L: (rows (n0, 2L+1), columns (n1//2 + 1, 2L+1)),
    and the weight of each rfft2 column in a full-grid sum (2 for the columns held once for two)."""
    d = np.arange(-max_lag, max_lag + 1)
    ay = 2.0 * np.pi * np.outer(np.arange(shape[0]), d) / shape[0]
    ax = 2.0 * np.pi * np.outer(np.arange(shape[1] // 2 + 1), d) / shape[1]
    weight = np.full(shape[1] // 2 + 1, 2.0)
    weight[0] = 1.0
    if shape[1] % 2 == 0:
        weight[-1] = 1.0
    tables = (np.cos(ay), np.sin(ay), np.cos(ax), np.sin(ax), weight)
    for t in tables:
        t.setflags(write=False)
    return tables


def _lag_dft(power: np.ndarray, shape: tuple[int, int], max_lag: int) -> np.ndarray:
    """The inverse DFT of a real, even ``power`` (rfft2 layout, (..., shape[0], shape[1]//2 + 1)) at
    lags -L..L only: (..., 2L+1, 2L+1); the same numbers as irfft2 at those lags, far fewer operations.
    Re[e^{i(a + b)}] = cos a cos b - sin a sin b, so two real matrix chains."""
    cy, sy, cx, sx, weight = _dft_tables(shape, max_lag)
    pw = power * weight
    return (cy.T @ pw @ cx - sy.T @ pw @ sx) / (shape[0] * shape[1])


@functools.lru_cache(maxsize=16)
def _background_basis(h: int, w: int) -> np.ndarray:
    """(5, H*W) float32: 1, r, r^2, x, y in pixels from the centre pixel, scaled to O(1), read-only."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    yy -= h // 2
    xx -= w // 2
    r = np.hypot(xx, yy)
    basis = (np.stack([np.ones_like(r), r, r * r, xx, yy]) / np.array([1.0, h, h * h, h, h])[:, None, None]).reshape(5, -1)
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


def _background(img: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """(C, H, W) least-squares fit of 1, r, r^2, x, y (pixels from the centre) to each band's sky pixels.

    The host's outer halo (radial, centred) and a sky or neighbour gradient (planar) would otherwise
    add a positive constant to the autocorrelation at every lag; five fitted parameters remove
    ~5 / N of the noise's own variance, negligible. Normal equations (5 x 5, well conditioned with
    the scaled basis; float32 sums, ample for a background)."""
    n_bands, h, w = img.shape
    basis = _background_basis(h, w)
    weighted = basis * sky.reshape(1, -1)
    gram = (weighted @ basis.T).astype(np.float64)
    coef = np.linalg.solve(gram, (weighted @ img.reshape(n_bands, -1).T).astype(np.float64)).astype(np.float32)  # (5, C)
    return (coef.T @ basis).reshape(n_bands, h, w)


def estimate_noise_correlation(
    image: np.ndarray,
    invvar: Optional[np.ndarray] = None,
    max_lag: int = DEFAULT_MAX_LAG,
    centre_radius_pix: Optional[float] = None,
    clip_sigma: float = DEFAULT_CLIP_SIGMA,
    grow_pix: int = DEFAULT_GROW_PIX,
    min_sky_pixels: int = MIN_SKY_PIXELS,
) -> NoiseCorrelation:
    """The normalised noise autocorrelation of a (C, H, W) cutout from its sky pixels (module docstring).

    ``image`` in nanomaggies per pixel; ``invvar`` (optional, same shape) excludes pixels with
    invvar <= 0. Returns the white correlation with ``estimated=False`` when fewer than
    ``min_sky_pixels`` sky pixels remain or a band has no sky variance. float32 transforms: the
    correlations are good to ~1e-6, far below their statistical error.
    """
    if int(max_lag) != max_lag or max_lag < 1:
        raise ValueError(f"max_lag must be a positive integer (got {max_lag!r})")
    img = np.asarray(image, dtype=np.float32)
    sky = sky_mask(img, invvar, centre_radius_pix, clip_sigma, grow_pix)
    n_bands, h, w = img.shape
    n_sky = int(np.count_nonzero(sky))
    if n_sky < min_sky_pixels:
        return NoiseCorrelation.white(n_bands, max_lag, n_sky)
    weight = sky.astype(np.float32)
    planes = np.empty((n_bands + 1, h, w), dtype=np.float32)  # the bands' z and the mask: one transform call
    planes[:n_bands] = (img - _background(img, sky)) * weight
    planes[n_bands] = weight
    shape = (sfft.next_fast_len(h + max_lag, real=True), sfft.next_fast_len(w + max_lag, real=True))
    spec = sfft.rfft2(planes, shape)
    lagged = _lag_dft(spec.real.astype(np.float64) ** 2 + spec.imag.astype(np.float64) ** 2, shape, max_lag)
    pairs = np.rint(lagged[n_bands])  # integer pair counts per lag
    if np.any(pairs < 1):
        return NoiseCorrelation.white(n_bands, max_lag, n_sky)
    cov = lagged[:n_bands] / pairs
    var = cov[:, max_lag, max_lag].copy()
    if not np.all(var > 0):
        return NoiseCorrelation.white(n_bands, max_lag, n_sky)
    rho = cov / var[:, None, None]
    rho = 0.5 * (rho + rho[:, ::-1, ::-1])  # exact in exact arithmetic; removes round-off asymmetry
    rho[:, max_lag, max_lag] = 1.0
    return NoiseCorrelation(rho, var, n_sky, True)


def filter_transfer(rho: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, shape[0], shape[1]//2 + 1) real transfer function (rfft2 layout) of the zero-phase filter
    whose output autocorrelation is ``rho`` (module docstring, Synthesis), sum h^2 = 1. Read-only:
    the same (rho, shape) returns the same cached array (one rho per brick, a few box shapes)."""
    rho = np.ascontiguousarray(rho, dtype=np.float64)
    return _filter_transfer_cached(rho.tobytes(), rho.shape, tuple(int(v) for v in shape))


@functools.lru_cache(maxsize=64)
def _filter_transfer_cached(rho_bytes: bytes, rho_shape: tuple[int, ...], shape: tuple[int, int]) -> np.ndarray:
    out = _filter_transfer(np.frombuffer(rho_bytes, dtype=np.float64).reshape(rho_shape), shape)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _filter_transfer_float32(rho_bytes: bytes, rho_shape: tuple[int, ...], shape: tuple[int, int]) -> np.ndarray:
    """:func:`filter_transfer` as float32, the precision the synthesis multiplies in (cached: once per brick and box shape)."""
    out = _filter_transfer_cached(rho_bytes, rho_shape, shape).astype(np.float32)
    out.setflags(write=False)
    return out


def _filter_transfer(rho: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    cy, sy, cx, sx, weight = _dft_tables(tuple(shape), rho.shape[-1] // 2)
    # the DFT of the symmetric rho is real: sum rho(d) cos(a_y d_y + a_x d_x)
    psd = cy @ rho @ cx.T - sy @ rho @ sx.T
    np.maximum(psd, 0.0, out=psd)
    # the mean of |H|^2 over the full grid is sum h^2 (exactly rho(0) = 1 unless negative values were clipped)
    norm = (psd @ weight).sum(axis=-1) / (shape[0] * shape[1])
    return np.sqrt(psd / norm[:, None, None])


def synthesis_shape(box_h: int, box_w: int) -> tuple[int, int]:
    """The square FFT grid the noise of a (box_h, box_w) box is synthesised on: the box plus
    ``_SYNTH_PAD_PIX`` of zero padding, rounded up to a multiple of 16 (32, 48, 64, 80, ...: all
    fast FFT lengths). Few sizes, so the filter's transfer function (cached per correlation and
    grid) is computed a handful of times per brick, not once per arc."""
    n = max(int(box_h), int(box_w)) + _SYNTH_PAD_PIX
    n = -(-n // 16) * 16
    return n, n


def correlated_noise(
    std_nmgy: np.ndarray, corr: NoiseCorrelation, rng: np.random.Generator, negligible_std_nmgy: Optional[np.ndarray] = None
) -> np.ndarray:
    """Gaussian noise, (C, H, W) float32 nanomaggies, with per-pixel standard deviation ``std_nmgy``
    (C, H, W) and the autocorrelation ``corr.rho`` (module docstring, Synthesis).

    The noise is made on the bounding box of the pixels whose standard deviation reaches
    ``negligible_std_nmgy`` (per band, (C,); default 0: every pixel with std > 0) in some band,
    grown by the filter's reach (``_LEAK_PAD_PIX``), and is 0 outside. Noise leaks up to the
    filter's size (~L pixels) beyond where ``std_nmgy`` > 0, as photon noise resampled into a
    coadd does. Draws (C, box) float32 standard normals from ``rng`` in one call, so a seeded rng
    gives the same noise.
    """
    std = np.asarray(std_nmgy, dtype=np.float32)
    if std.ndim != 3 or std.shape[0] != corr.rho.shape[0]:
        raise ValueError(f"std_nmgy must be (C, H, W) with C = {corr.rho.shape[0]} bands (got shape {std.shape})")
    if std.size and not (math.isfinite(float(std.max())) and std.min() >= 0):
        raise ValueError("std_nmgy must be finite and >= 0")
    out = np.zeros(std.shape, dtype=np.float32)
    # std >= floor with a floor > 0 also says std > 0: one comparison per pixel
    floor = np.zeros(std.shape[0], dtype=np.float32) if negligible_std_nmgy is None else np.asarray(negligible_std_nmgy, dtype=np.float32).reshape(-1)
    floor = np.maximum(floor, np.finfo(np.float32).tiny).reshape(-1, 1, 1)
    support = np.any(std >= floor, axis=0)
    rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
    if not rows.size:
        return out
    pad = _LEAK_PAD_PIX if corr.estimated else 0
    _, h, w = std.shape
    y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, h)
    x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, w)
    box = std[:, y0:y1, x0:x1]
    white = rng.standard_normal(box.shape, dtype=np.float32)
    white *= box
    if corr.estimated:
        shape = synthesis_shape(y1 - y0, x1 - x0)
        spec = sfft.rfft2(white, shape)
        rho = np.ascontiguousarray(corr.rho, dtype=np.float64)
        spec *= _filter_transfer_float32(rho.tobytes(), rho.shape, tuple(int(v) for v in shape))
        white = sfft.irfft2(spec, shape)[:, : y1 - y0, : x1 - x0]
    out[:, y0:y1, x0:x1] = white
    return out
