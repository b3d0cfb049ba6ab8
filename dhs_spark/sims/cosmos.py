"""Real HST galaxy sources (COSMOS / AEGIS through GalSim) for lensing at native resolution.

Three pieces:

- :class:`COSMOSImageSource`: one galaxy stamp (0.03"/pix, unit total flux) seen as a continuous
  surface brightness, so that the physics core's generic ``render_lensed_source`` and
  ``inject_arc`` lens it exactly like a Sersic source: the oversampled image-plane grid is
  ray-traced and the source's surface brightness is interpolated at the traced positions, at
  the source's native 0.03" resolution. Never resample a source to the survey's 0.262" before
  lensing: lensing magnifies the small scales (see ``tests/sims/test_cosmos_lensing.py``).
- :class:`COSMOSLoaderV2`: picks a galaxy deterministically from a 64-bit seed out of an HDF5
  library built by :mod:`dhs_spark.sims.cosmos_build` (``mode='hdf5'``), a GalSim catalogue drawn
  on the fly (``mode='galsim'``) or clumpy synthetic galaxies (``mode='synthetic'``, only when
  asked for, and logged). Cuts on half-light radius and SNR; train/test split by galaxy ident.
- :func:`resample_to_pixscale`: flux-conserving rebinning, for display and non-lensed use only.

Conventions (DESIGN.md §2): angles in arcsec, x along numpy axis 1 (to the right), y along
axis 0, rotation angles in radians counter-clockwise from +x. A stamp's origin (x = y = 0) is
its true centre, pixel coordinate ((W - 1) / 2, (H - 1) / 2) in 0-based numpy indexing, as in
GalSim's ``drawImage`` and lenstronomy's INTERPOL light model.

Interpolation and its flux error: the surface brightness is the bilinear interpolant of the
pixel values / pixscale^2 placed at pixel centres, padded with one ring of zeros (so it falls
linearly to zero within one pixel outside the stamp and is exactly zero beyond). Each pixel's
bilinear "tent" integrates to one pixel area, so the continuous surface brightness integrates
to the pixel sum (= 1) exactly; the only flux error left is that of sampling it on the
image-plane grid, which the renderer's oversampling controls (:data:`COSMOS_OVERSAMPLE`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from typing import Optional

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import ConfigError, InputDataError
from dhs_spark.sims import render  # noqa: F401  (sets a writable NUMBA_CACHE_DIR for Spark executors before numba loads)
from dhs_spark.sims.lensing import LensLike, as_lens, ray_trace

log = logging.getLogger(__name__)

import numba  # noqa: E402  (after render has set NUMBA_CACHE_DIR)

#: Pixel scale of the COSMOS / AEGIS HST stamps, arcsec per pixel.
COSMOS_PIXSCALE_ARCSEC = 0.03

#: Image-plane oversampling per axis for COSMOS sources at 0.262"/pix: 0.262 / 8 = 0.033"
#: sub-pixels, close to the 0.03" source pixels. Measured on the 15 real galaxies (64 x 64 stamps,
#: SIE theta_E 1.2" and no lens, against oversample 24): oversample 4 leaves flux errors up to
#: 1.5% without a lens and relative L1 up to 9% before the PSF; 8 keeps flux within 0.3% and L1
#: within 2.3% before the PSF (0.8% lensed) and 0.4% after a 1.2" PSF.
COSMOS_OVERSAMPLE = 8

#: Fraction of the source's positive flux allowed outside the fast path's sub-sampled region.
_FAST_TAIL_FRACTION = 0.01


@numba.njit(cache=True, inline="always")
def _sb_at(u, v, sb_padded, inv_pixscale, col_c, row_c):  # pragma: no cover - compiled
    """Bilinear interpolant of ``sb_padded`` at stamp-frame point (u, v) arcsec from the stamp origin.

    ``sb_padded`` is the surface brightness with one ring of zeros around it; (col_c, row_c) is
    the padded array's pixel coordinate of the stamp origin. Zero outside the padded array.
    """
    fc = u * inv_pixscale + col_c
    fr = v * inv_pixscale + row_c
    if fc < 0.0 or fr < 0.0:
        return 0.0
    i = int(fr)
    j = int(fc)
    if i >= sb_padded.shape[0] - 1 or j >= sb_padded.shape[1] - 1:
        return 0.0
    wr = fr - i
    wc = fc - j
    return (sb_padded[i, j] * (1.0 - wc) + sb_padded[i, j + 1] * wc) * (1.0 - wr) + (
        sb_padded[i + 1, j] * (1.0 - wc) + sb_padded[i + 1, j + 1] * wc
    ) * wr


@numba.njit(cache=True, nogil=True)
def _bilinear_sb_kernel(x, y, sb_padded, x0, y0, cos_r, sin_r, inv_pixscale, col_c, row_c, out):  # pragma: no cover - compiled
    """out[k] = surface brightness at source-plane point (x[k], y[k]) for a stamp at (x0, y0) rotated by (cos_r, sin_r)."""
    for k in range(x.size):
        dx = x[k] - x0
        dy = y[k] - y0
        # rotate the point by -rotation into the stamp's frame
        out[k] = _sb_at(cos_r * dx + sin_r * dy, -sin_r * dx + cos_r * dy, sb_padded, inv_pixscale, col_c, row_c)


@numba.njit(cache=True, nogil=True)
def _biquadratic_pixels_kernel(gu, gv, k, sb_padded, inv_pixscale, col_c, row_c, out):  # pragma: no cover - compiled
    """out[p] = mean surface brightness over the k x k sub-samples of pixel p.

    gu, gv: (N, 3, 3) stamp-frame source-plane positions (arcsec) of each pixel's traced
    half-pixel grid (rows = y offsets -1/2, 0, +1/2 pixel; columns = x offsets). Each sub-sample's
    position is the biquadratic (Lagrange) interpolant of that grid at its offset.
    """
    # quadratic Lagrange weights of the nodes 0, 1/2, 1 (pixel units) at sub-sample centre f
    wq = np.empty((k, 3))
    for t in range(k):
        f = (t + 0.5) / k
        wq[t, 0] = 2.0 * (f - 0.5) * (f - 1.0)
        wq[t, 1] = -4.0 * f * (f - 1.0)
        wq[t, 2] = 2.0 * f * (f - 0.5)
    hu = np.empty((k, 3))
    hv = np.empty((k, 3))
    for p in range(gu.shape[0]):
        for t in range(k):  # along x first
            for a in range(3):
                hu[t, a] = wq[t, 0] * gu[p, a, 0] + wq[t, 1] * gu[p, a, 1] + wq[t, 2] * gu[p, a, 2]
                hv[t, a] = wq[t, 0] * gv[p, a, 0] + wq[t, 1] * gv[p, a, 1] + wq[t, 2] * gv[p, a, 2]
        acc = 0.0
        for s in range(k):  # then along y
            for t in range(k):
                u = wq[s, 0] * hu[t, 0] + wq[s, 1] * hu[t, 1] + wq[s, 2] * hu[t, 2]
                v = wq[s, 0] * hv[t, 0] + wq[s, 1] * hv[t, 1] + wq[s, 2] * hv[t, 2]
                acc += _sb_at(u, v, sb_padded, inv_pixscale, col_c, row_c)
        out[p] = acc / (k * k)


@dataclasses.dataclass(frozen=True, eq=False)
class COSMOSImageSource:
    """A pixelised galaxy as a continuous surface brightness (source protocol of the physics core).

    ``image``: (H, W) flux per pixel, normalised to total flux 1 (checked to 1e-4).
    ``pixscale_arcsec``: its pixel scale (0.03 for COSMOS). ``x_arcsec``, ``y_arcsec``: where
    the stamp's origin sits in the source plane (arcsec, as SersicSource's centre). ``phi_rad``:
    the stamp is rotated counter-clockwise by this angle (radians). ``ident``: catalogue identifier;
    ``clumpiness`` and ``half_light_radius_arcsec`` as measured by :func:`clumpiness` and
    :func:`half_light_radius_arcsec`. ``kind`` is ``'cosmos'``.

    :meth:`surface_brightness` returns flux per arcsec^2 of the unit-flux source; scale by the
    band's flux in nanomaggies to get nanomaggies per arcsec^2.
    """

    image: np.ndarray
    pixscale_arcsec: float
    ident: str
    x_arcsec: float = 0.0
    y_arcsec: float = 0.0
    phi_rad: float = 0.0
    clumpiness: float = float("nan")
    half_light_radius_arcsec: float = float("nan")

    kind = "cosmos"

    def __post_init__(self):
        image = np.asarray(self.image)
        if image.ndim != 2 or min(image.shape) < 2:
            raise InputDataError(f"COSMOS source {self.ident}: image must be 2-D and at least 2x2, got shape {image.shape}")
        if not np.all(np.isfinite(image)):
            raise InputDataError(f"COSMOS source {self.ident}: image has {int(np.sum(~np.isfinite(image)))} non-finite pixels")
        total = float(image.sum(dtype=np.float64))
        if abs(total - 1.0) > 1e-4:
            raise InputDataError(f"COSMOS source {self.ident}: image must have unit total flux, sums to {total:.6g}")
        if not (self.pixscale_arcsec > 0 and math.isfinite(self.pixscale_arcsec)):
            raise InputDataError(f"COSMOS source {self.ident}: pixscale_arcsec must be > 0, got {self.pixscale_arcsec!r}")
        sb = np.zeros((image.shape[0] + 2, image.shape[1] + 2), dtype=np.float64)
        sb[1:-1, 1:-1] = image / self.pixscale_arcsec**2
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "_sb_padded", sb)
        object.__setattr__(self, "_light_radius_arcsec", _light_radius_arcsec(image, self.pixscale_arcsec))

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_sb_padded")
        state.pop("_light_radius_arcsec")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()

    def __repr__(self):
        return (
            f"COSMOSImageSource(ident={self.ident!r}, shape={self.image.shape}, pixscale_arcsec={self.pixscale_arcsec}, "
            f"center=({self.x_arcsec}, {self.y_arcsec}), phi_rad={self.phi_rad})"
        )

    @property
    def r_eff_arcsec(self) -> float:
        """The measured circular half-light radius (arcsec), recorded as the source size in injection truth."""
        return self.half_light_radius_arcsec

    def at(self, x_arcsec: float, y_arcsec: float, phi_rad: Optional[float] = None) -> COSMOSImageSource:
        """The same galaxy placed at another source-plane position (and optionally rotation)."""
        rot = self.phi_rad if phi_rad is None else float(phi_rad)
        return dataclasses.replace(self, x_arcsec=float(x_arcsec), y_arcsec=float(y_arcsec), phi_rad=rot)

    def surface_brightness(self, x_arcsec, y_arcsec) -> np.ndarray:
        """Surface brightness (flux per arcsec^2, total flux 1) at source-plane points (arcsec).

        Any shape; float32 inputs give float32 output, anything else float64.
        """
        x = np.asarray(x_arcsec)
        y = np.asarray(y_arcsec)
        if x.shape != y.shape:
            raise ValueError(f"x_arcsec and y_arcsec shapes differ: {x.shape} vs {y.shape}")
        dtype = np.float32 if x.dtype == np.float32 and y.dtype == np.float32 else np.float64
        xf = np.ascontiguousarray(x, dtype=dtype).reshape(-1)
        yf = np.ascontiguousarray(y, dtype=dtype).reshape(-1)
        out = np.empty(xf.size, dtype=dtype)
        h, w = self.image.shape
        _bilinear_sb_kernel(
            xf,
            yf,
            self._sb_padded,
            float(self.x_arcsec),
            float(self.y_arcsec),
            math.cos(self.phi_rad),
            math.sin(self.phi_rad),
            1.0 / self.pixscale_arcsec,
            (w - 1) / 2.0 + 1.0,  # +1: the zero-padding ring
            (h - 1) / 2.0 + 1.0,
            out,
        )
        return out.reshape(x.shape)


    def _stamp_frame(self, beta_x, beta_y):
        """Source-plane positions (arcsec) -> the stamp's frame (origin at its centre, unrotated)."""
        dx = beta_x - self.x_arcsec
        dy = beta_y - self.y_arcsec
        c, s = math.cos(self.phi_rad), math.sin(self.phi_rad)
        return c * dx + s * dy, -s * dx + c * dy

    def _sb_stamp_frame(self, u, v) -> np.ndarray:
        h, w = self.image.shape
        uf = np.ascontiguousarray(u, dtype=np.float64).reshape(-1)
        vf = np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
        out = np.empty(uf.size)
        _bilinear_sb_kernel(uf, vf, self._sb_padded, 0.0, 0.0, 1.0, 0.0, 1.0 / self.pixscale_arcsec, (w - 1) / 2.0 + 1.0, (h - 1) / 2.0 + 1.0, out)
        return out.reshape(np.shape(u))

    def unit_lensed_image_fast(self, size: int, pixscale_arcsec: float, oversample: int, lens: LensLike) -> np.ndarray:
        """Lensed image of this unit-flux source, flux per pixel, float64 (size, size): the fast path.

        Same geometry as ``render.unit_lensed_image_exact`` (pixel (i, j) centred at
        ((j - size//2), (i - size//2)) x pixscale, ``oversample``^2 sub-samples per pixel), within
        relative L1 1e-2 of it before the PSF (tested). Only public lens code is used
        (:func:`dhs_spark.sims.lensing.ray_trace`); the work is cut three ways:

        - every pixel corner is traced; pixels whose corners' source-plane box stays farther than
          the source's light radius (all but 1% of its positive flux) from the stamp centre
          take the mean surface brightness of their 4 corners;
        - pixels in the light region trace their 3 x 3 half-pixel grid (5 new points) and
          interpolate it biquadratically to the sub-samples (the lens map is smooth there), where
          the source is looked up at its native resolution;
        - pixels within max(2 pixels, theta_E / 2) of the lens centre, where the deflection turns
          within a pixel, trace every sub-sample.
        """
        if int(size) != size or size < 1 or int(oversample) != oversample or oversample < 1 or not pixscale_arcsec > 0:
            raise ValueError(f"need integer size >= 1, integer oversample >= 1 and pixscale > 0 (got {size!r}, {oversample!r}, {pixscale_arcsec!r})")
        lens = as_lens(lens)
        k = int(oversample)
        half = size // 2
        area = pixscale_arcsec**2
        edges = (np.arange(size + 1) - half - 0.5) * pixscale_arcsec
        cx, cy = np.meshgrid(edges, edges)
        cu, cv = self._stamp_frame(*ray_trace(cx, cy, lens))
        corners_u = np.stack([cu[:-1, :-1], cu[:-1, 1:], cu[1:, :-1], cu[1:, 1:]])
        corners_v = np.stack([cv[:-1, :-1], cv[:-1, 1:], cv[1:, :-1], cv[1:, 1:]])
        du = np.maximum(np.maximum(corners_u.min(axis=0), 0.0), -corners_u.max(axis=0))
        dv = np.maximum(np.maximum(corners_v.min(axis=0), 0.0), -corners_v.max(axis=0))
        far = du * du + dv * dv > self._light_radius_arcsec**2
        centres = (np.arange(size) - half) * pixscale_arcsec
        exact_r = max(2.0 * pixscale_arcsec, 0.5 * lens.theta_e_arcsec)
        near = np.hypot(centres[None, :] - lens.center_x_arcsec, centres[:, None] - lens.center_y_arcsec) <= exact_r

        out = np.zeros((size, size))
        tail = far & ~near
        if tail.any():
            corner_sb = self._sb_stamp_frame(cu, cv)
            mean4 = 0.25 * (corner_sb[:-1, :-1] + corner_sb[:-1, 1:] + corner_sb[1:, :-1] + corner_sb[1:, 1:])
            out[tail] = mean4[tail] * area

        li, lj = np.nonzero(~far & ~near)
        if li.size:
            half_offsets = np.array([-0.5, 0.0, 0.5])
            gx = np.broadcast_to(((lj - half)[:, None, None] + half_offsets[None, None, :]) * pixscale_arcsec, (li.size, 3, 3))
            gy = np.broadcast_to(((li - half)[:, None, None] + half_offsets[None, :, None]) * pixscale_arcsec, (li.size, 3, 3))
            gu = np.empty((li.size, 3, 3))
            gv = np.empty((li.size, 3, 3))
            for a in (0, 1):  # the 4 corners are traced already
                for c in (0, 1):
                    gu[:, 2 * a, 2 * c] = cu[li + a, lj + c]
                    gv[:, 2 * a, 2 * c] = cv[li + a, lj + c]
            new = np.array([[False, True, False], [True, True, True], [False, True, False]])
            gu[:, new], gv[:, new] = self._stamp_frame(*ray_trace(gx[:, new], gy[:, new], lens))
            h, w = self.image.shape
            values = np.empty(li.size)
            _biquadratic_pixels_kernel(gu, gv, k, self._sb_padded, 1.0 / self.pixscale_arcsec, (w - 1) / 2.0 + 1.0, (h - 1) / 2.0 + 1.0, values)
            out[li, lj] = values * area

        ni, nj = np.nonzero(near)
        if ni.size:
            sub = (np.arange(k) + 0.5) / k - 0.5
            sx = ((nj - half)[:, None, None] + sub[None, None, :]) * pixscale_arcsec + np.zeros((1, k, 1))
            sy = ((ni - half)[:, None, None] + sub[None, :, None]) * pixscale_arcsec + np.zeros((1, 1, k))
            out[ni, nj] = self.surface_brightness(*ray_trace(sx, sy, lens)).mean(axis=(1, 2)) * area
        return out


def _light_radius_arcsec(image: np.ndarray, pixscale_arcsec: float) -> float:
    """Radius about the stamp origin holding all but _FAST_TAIL_FRACTION of the positive flux, plus one pixel (the tent)."""
    h, w = image.shape
    r = _radius_grid(image.shape, (w - 1) / 2.0, (h - 1) / 2.0).ravel()
    pos = np.clip(image, 0.0, None).ravel()
    order = np.argsort(r, kind="stable")
    cumulative = np.cumsum(pos[order])
    k = min(int(np.searchsorted(cumulative, (1.0 - _FAST_TAIL_FRACTION) * cumulative[-1])), r.size - 1)
    return float((r[order[k]] + 1.5) * pixscale_arcsec)


# --------------------------------------------------------------------------------------------
# Morphology measurements shared by the library builder and the loader's on-the-fly modes.


def _radius_grid(shape, center_col: float, center_row: float) -> np.ndarray:
    rows, cols = np.indices(shape, dtype=np.float64)
    return np.hypot(cols - center_col, rows - center_row)


def _light_centroid(image: np.ndarray) -> tuple[float, float]:
    """(col, row) centroid of the positive pixels; the stamp centre when there are none."""
    pos = np.clip(image, 0.0, None)
    total = pos.sum()
    if total <= 0:
        return (image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0
    rows, cols = np.indices(image.shape, dtype=np.float64)
    return float((cols * pos).sum() / total), float((rows * pos).sum() / total)


def half_light_radius_arcsec(image: np.ndarray, pixscale_arcsec: float) -> float:
    """Radius (arcsec) of the circle about the light centroid holding half of ``image.sum()``.

    Pixels are counted whole at their centre's radius; the result is linearly interpolated in the
    cumulative flux, so it is good to about a quarter of a pixel.
    """
    image = np.asarray(image, dtype=np.float64)
    col_c, row_c = _light_centroid(image)
    r = _radius_grid(image.shape, col_c, row_c).ravel()
    order = np.argsort(r, kind="stable")
    cumulative = np.cumsum(image.ravel()[order])
    half = 0.5 * image.sum()
    k = int(np.searchsorted(cumulative, half))
    if k == 0:
        return float(r[order[0]] * pixscale_arcsec)
    k = min(k, r.size - 1)
    r0, r1 = r[order[k - 1]], r[order[k]]
    c0, c1 = cumulative[k - 1], cumulative[k]
    frac = 0.0 if c1 == c0 else (half - c0) / (c1 - c0)
    return float((r0 + frac * (r1 - r0)) * pixscale_arcsec)


def clumpiness(image: np.ndarray, pixscale_arcsec: float, half_light_radius: float) -> float:
    """Clumpiness S (Conselice 2003 style): high-frequency light fraction inside 2 r_hl.

    S = sum(max(I - I_s, 0)) / sum(I) over pixels within 2 half-light radii of the centroid, with
    I_s the image smoothed by a Gaussian of sigma = max(0.25 r_hl, 1 pixel). 0 for a smooth
    profile, larger for knots and spiral arms; pixel noise adds a positive bias, so compare
    clumpiness between galaxies of similar SNR.
    """
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float64)
    sigma_pix = max(0.25 * half_light_radius / pixscale_arcsec, 1.0)
    smooth = gaussian_filter(image, sigma_pix, mode="constant")
    col_c, row_c = _light_centroid(image)
    inside = _radius_grid(image.shape, col_c, row_c) <= 2.0 * half_light_radius / pixscale_arcsec
    total = image[inside].sum()
    if total <= 0:
        return float("nan")
    return float(np.clip(image - smooth, 0.0, None)[inside].sum() / total)


def aperture_snr(image: np.ndarray, pixscale_arcsec: float, half_light_radius: float, noise_sigma: float) -> float:
    """SNR of the flux inside 2 half-light radii for white pixel noise of ``noise_sigma`` (image units).

    SNR = F(< 2 r_hl) / (noise_sigma * sqrt(N_pix(< 2 r_hl))); infinite for a noise-free image.
    """
    image = np.asarray(image, dtype=np.float64)
    col_c, row_c = _light_centroid(image)
    inside = _radius_grid(image.shape, col_c, row_c) <= max(2.0 * half_light_radius / pixscale_arcsec, 1.0)
    if noise_sigma <= 0:
        return float("inf")
    return float(image[inside].sum() / (noise_sigma * math.sqrt(inside.sum())))


# --------------------------------------------------------------------------------------------
# Display / non-lensed resampling.


def _overlap_matrix(n_in: int, pix_in: float, n_out: int, pix_out: float) -> np.ndarray:
    """M[o, i] = fraction of input pixel i's length inside output pixel o (grids share their centre)."""
    edges_in = (np.arange(n_in + 1) - n_in / 2.0) * pix_in
    edges_out = (np.arange(n_out + 1) - n_out / 2.0) * pix_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0.0, None) / pix_in


def resample_to_pixscale(image: np.ndarray, pixscale_arcsec: float, target_pixscale_arcsec: float) -> np.ndarray:
    """Rebin ``image`` (flux per pixel) onto a coarser or finer grid with the same centre, conserving flux.

    Each output pixel receives the flux of each input pixel in proportion to their overlap area
    (exact area weighting, no interpolation). The output is just large enough to cover the input,
    so ``out.sum() == image.sum()`` to rounding. For display and non-lensed use only: never
    lens a source resampled to the survey's pixel scale (that erases the small scales that
    lensing magnifies).
    """
    image = np.asarray(image, dtype=np.float64)
    if not (pixscale_arcsec > 0 and target_pixscale_arcsec > 0):
        raise ValueError(f"pixel scales must be > 0, got {pixscale_arcsec!r} -> {target_pixscale_arcsec!r}")
    h, w = image.shape
    ratio = pixscale_arcsec / target_pixscale_arcsec
    n_rows = int(math.ceil(h * ratio - 1e-9))
    n_cols = int(math.ceil(w * ratio - 1e-9))
    # keep the parity of the input so that the two grids share their centre point exactly
    n_rows += (n_rows - h) % 2
    n_cols += (n_cols - w) % 2
    m_rows = _overlap_matrix(h, pixscale_arcsec, n_rows, target_pixscale_arcsec)
    m_cols = _overlap_matrix(w, pixscale_arcsec, n_cols, target_pixscale_arcsec)
    return m_rows @ image @ m_cols.T


# --------------------------------------------------------------------------------------------
# The loader.

#: Per-process cache of open HDF5 libraries, keyed by (absolute path, pid): one open file and
#: one metadata read per Python worker, shared by all the tasks (and loader copies) it runs.
_LIBRARY_CACHE: dict = {}
_LIBRARY_LOCK = threading.Lock()

#: Metadata columns of an HDF5 library (one value per galaxy); see cosmos_build.
LIBRARY_COLUMNS = (
    "ident",
    "mag",
    "zphot",
    "half_light_radius_arcsec",
    "clumpiness",
    "flux",
    "flux_fraction_in_stamp",
    "noise_sigma",
    "snr",
    "psf_fwhm_arcsec",
    "pixel_scale_arcsec",
)

_MODES = ("hdf5", "galsim", "synthetic")
_SPLITS = (None, "train", "test")


class _Library:
    """Images and metadata of one library, held by one process."""

    def __init__(self, path: str, images, meta: dict, pixscale_arcsec: float, handle=None):
        self.path = path
        self.images = images  # h5py dataset (read per galaxy) or an in-memory (N, S, S) array
        self.meta = meta
        self.pixscale_arcsec = pixscale_arcsec
        self.handle = handle

    def image(self, index: int) -> np.ndarray:
        return np.asarray(self.images[index], dtype=np.float64)


def _open_hdf5_library(path: str, expected_pixscale_arcsec: Optional[float]) -> _Library:
    import h5py

    if not os.path.isfile(path):
        raise InputDataError(f"COSMOS library not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(f"COSMOS library {path} is not a readable HDF5 file: {exc}") from exc
    try:
        missing = [name for name in ("images", *LIBRARY_COLUMNS) if name not in handle]
        if missing:
            raise InputDataError(f"COSMOS library {path}: missing datasets {missing}")
        if "pixel_scale_arcsec" not in handle.attrs:
            raise InputDataError(f"COSMOS library {path}: missing file attribute 'pixel_scale_arcsec'")
        pixscale = float(handle.attrs["pixel_scale_arcsec"])
        meta = {name: handle[name][()] for name in LIBRARY_COLUMNS}
        meta["ident"] = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in meta["ident"]])
        n, s1, s2 = handle["images"].shape
        if not (pixscale > 0 and math.isfinite(pixscale)):
            raise InputDataError(f"COSMOS library {path}: pixel_scale_arcsec attribute must be > 0, got {pixscale!r}")
        if expected_pixscale_arcsec is not None and not math.isclose(pixscale, expected_pixscale_arcsec, rel_tol=1e-6):
            raise InputDataError(
                f"COSMOS library {path}: pixel_scale_arcsec attribute is {pixscale!r}, expected {expected_pixscale_arcsec!r}"
            )
        bad = ~np.isclose(meta["pixel_scale_arcsec"], pixscale, rtol=1e-6)
        if bad.any():
            raise InputDataError(
                f"COSMOS library {path}: galaxy {meta['ident'][np.argmax(bad)]} has pixel_scale_arcsec "
                f"{meta['pixel_scale_arcsec'][np.argmax(bad)]!r}, file attribute says {pixscale!r}"
            )
        for name in LIBRARY_COLUMNS:
            if len(meta[name]) != n:
                raise InputDataError(f"COSMOS library {path}: dataset {name!r} has {len(meta[name])} rows, images has {n}")
    except Exception:
        handle.close()
        raise
    return _Library(path, handle["images"], meta, pixscale, handle)


class COSMOSLoaderV2:
    """Deterministic access to real (or explicitly synthetic) galaxy sources; picklable for Spark.

    Parameters
    ----------
    cosmos_path:
        ``mode='hdf5'``: the library built by ``dhs cosmos build``. ``mode='galsim'``: a GalSim
        RealGalaxyCatalog FITS file (its images beside it), drawn on the fly with the builder's
        defaults (``galsim_options`` are passed to :func:`~dhs_spark.sims.cosmos_build.draw_catalog`).
        Unused by ``mode='synthetic'``.
    mode:
        ``'hdf5'`` | ``'galsim'`` | ``'synthetic'``. Synthetic clumpy galaxies are only ever used
        when asked for here; they are logged at WARNING level, never a fallback.
    split, test_fraction, split_salt:
        ``'train'`` or ``'test'`` keeps the galaxies whose hash of (salt, ident) puts them on that
        side of ``test_fraction``; ``None`` keeps all. The two splits are disjoint by construction.
    hlr_range_arcsec, min_snr:
        cuts on the measured half-light radius (arcsec) and the aperture SNR; an empty library
        after cuts raises :class:`InputDataError`.
    expected_pixscale_arcsec:
        the pixel scale the HDF5 attribute must have (``None`` accepts any).

    The open file lives in a module-level cache, one per process and path, so the loader itself
    holds only its settings and pickles cheaply; any number of tasks in one Python worker share
    one open file.
    """

    def __init__(
        self,
        cosmos_path: Optional[str] = None,
        mode: str = "hdf5",
        split: Optional[str] = None,
        test_fraction: float = 0.2,
        split_salt: str = "cosmos-split-v1",
        hlr_range_arcsec: tuple[float, float] = (0.0, math.inf),
        min_snr: float = 0.0,
        expected_pixscale_arcsec: Optional[float] = COSMOS_PIXSCALE_ARCSEC,
        random_rotation: bool = False,
        n_synthetic: int = 64,
        synthetic_stamp_size: int = 96,
        galsim_options: Optional[dict] = None,
    ):
        if mode not in _MODES:
            raise ConfigError("cosmos_loader_mode", f"must be one of {_MODES}", mode)
        if split not in _SPLITS:
            raise ConfigError("cosmos.split", f"must be one of {_SPLITS}", split)
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError("cosmos.test_fraction", "must be in (0, 1)", test_fraction)
        lo, hi = (float(v) for v in hlr_range_arcsec)
        if not 0.0 <= lo < hi:
            raise ConfigError("cosmos.hlr_range_arcsec", "must be (lo, hi) with 0 <= lo < hi", hlr_range_arcsec)
        if mode != "synthetic" and not cosmos_path:
            raise ConfigError("cosmos_library_path", f"is required for mode {mode!r}", cosmos_path)
        self.cosmos_path = os.path.abspath(cosmos_path) if cosmos_path else None
        self.mode = mode
        self.split = split
        self.test_fraction = float(test_fraction)
        self.split_salt = str(split_salt)
        self.hlr_range_arcsec = (lo, hi)
        self.min_snr = float(min_snr)
        self.expected_pixscale_arcsec = expected_pixscale_arcsec
        self.random_rotation = bool(random_rotation)
        self.n_synthetic = int(n_synthetic)
        self.synthetic_stamp_size = int(synthetic_stamp_size)
        self.galsim_options = dict(galsim_options or {})
        self._selected: Optional[np.ndarray] = None
        if mode == "synthetic":
            log.warning("COSMOSLoaderV2: mode='synthetic' chosen explicitly: %d synthetic clumpy galaxies, not real HST sources", n_synthetic)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_selected"] = None  # recomputed (cheaply, from the per-process cache) after unpickling
        return state

    def __repr__(self):
        return f"COSMOSLoaderV2(cosmos_path={self.cosmos_path!r}, mode={self.mode!r}, split={self.split!r})"

    # -- library access --------------------------------------------------------------------

    def _cache_key(self):
        if self.mode == "hdf5":
            return ("hdf5", self.cosmos_path, self.expected_pixscale_arcsec, os.getpid())
        if self.mode == "galsim":
            return ("galsim", self.cosmos_path, tuple(sorted(self.galsim_options.items())), os.getpid())
        return ("synthetic", self.n_synthetic, self.synthetic_stamp_size, os.getpid())

    def library(self) -> _Library:
        """The process-wide library this loader reads (opened or built on first use)."""
        key = self._cache_key()
        lib = _LIBRARY_CACHE.get(key)
        if lib is not None:
            return lib
        with _LIBRARY_LOCK:
            lib = _LIBRARY_CACHE.get(key)
            if lib is None:
                lib = self._open()
                _LIBRARY_CACHE[key] = lib
        return lib

    def _open(self) -> _Library:
        if self.mode == "hdf5":
            return _open_hdf5_library(self.cosmos_path, self.expected_pixscale_arcsec)
        if self.mode == "galsim":
            from dhs_spark.sims.cosmos_build import draw_catalog

            drawn = draw_catalog(self.cosmos_path, **self.galsim_options)
            return _Library(self.cosmos_path, drawn.images, drawn.meta, drawn.pixscale_arcsec)
        images, meta = make_synthetic_library(self.n_synthetic, self.synthetic_stamp_size)
        return _Library("<synthetic>", images, meta, COSMOS_PIXSCALE_ARCSEC)

    def in_split(self, ident: str) -> bool:
        """Whether galaxy ``ident`` belongs to this loader's split (always True for ``split=None``)."""
        if self.split is None:
            return True
        is_test = stable_hash64(self.split_salt, str(ident)) / 2.0**64 < self.test_fraction
        return is_test == (self.split == "test")

    def selected_indices(self) -> np.ndarray:
        """Library rows that pass the split and the cuts, in library order."""
        if self._selected is None:
            lib = self.library()
            meta = lib.meta
            hlr = meta["half_light_radius_arcsec"]
            keep = (hlr >= self.hlr_range_arcsec[0]) & (hlr <= self.hlr_range_arcsec[1]) & (meta["snr"] >= self.min_snr)
            keep &= np.array([self.in_split(i) for i in meta["ident"]], dtype=bool)
            selected = np.flatnonzero(keep)
            if selected.size == 0:
                raise InputDataError(
                    f"COSMOS library {lib.path}: no galaxy left after cuts (split={self.split!r}, test_fraction={self.test_fraction}, "
                    f"hlr_range_arcsec={self.hlr_range_arcsec}, min_snr={self.min_snr}; {len(hlr)} galaxies before cuts)"
                )
            self._selected = selected
        return self._selected

    def __len__(self) -> int:
        return int(self.selected_indices().size)

    def idents(self) -> list[str]:
        """Idents of the selected galaxies, in library order."""
        return [str(i) for i in self.library().meta["ident"][self.selected_indices()]]

    def source_by_index(self, row: int) -> COSMOSImageSource:
        """The galaxy in library row ``row`` at the source-plane origin, unrotated."""
        lib = self.library()
        ident = str(lib.meta["ident"][row])
        image = lib.image(row)
        if not np.all(np.isfinite(image)):
            raise InputDataError(f"COSMOS library {lib.path}: galaxy {ident} (row {row}) has {int(np.sum(~np.isfinite(image)))} non-finite pixels")
        total = image.sum()
        if not total > 0:
            raise InputDataError(f"COSMOS library {lib.path}: galaxy {ident} (row {row}) has non-positive total flux {total!r}")
        return COSMOSImageSource(
            image=image / total,  # stored normalised; re-normalise the float32 rounding away
            pixscale_arcsec=lib.pixscale_arcsec,
            ident=ident,
            clumpiness=float(lib.meta["clumpiness"][row]),
            half_light_radius_arcsec=float(lib.meta["half_light_radius_arcsec"][row]),
        )

    def get_source(self, seed: int, x_arcsec: float = 0.0, y_arcsec: float = 0.0) -> COSMOSImageSource:
        """The galaxy chosen by the 64-bit ``seed`` (same seed -> same galaxy), placed at (x, y) arcsec.

        With ``random_rotation`` the stamp is also rotated by an angle drawn from the same seed.
        """
        selected = self.selected_indices()
        rng = rng_from_seed(stable_hash64("cosmos-select", int(seed)))
        row = int(selected[rng.integers(selected.size)])
        rotation = float(rng.uniform(0.0, 2.0 * math.pi)) if self.random_rotation else 0.0
        return self.source_by_index(row).at(x_arcsec, y_arcsec, rotation)


# --------------------------------------------------------------------------------------------
# Synthetic clumpy galaxies (tests and demos only; chosen explicitly).


def make_synthetic_library(n: int, stamp_size: int, seed: int = 20240601) -> tuple[np.ndarray, dict]:
    """``n`` clumpy synthetic galaxies at 0.03"/pix: an exponential disc plus 3-8 Gaussian knots.

    Returns (images (n, S, S) float32 each summing to 1, metadata dict with the library columns).
    Deterministic in ``seed``. Noise-free, so ``snr`` is infinite.
    """
    pix = COSMOS_PIXSCALE_ARCSEC
    coords = (np.arange(stamp_size) - (stamp_size - 1) / 2.0) * pix
    xx, yy = np.meshgrid(coords, coords)
    images = np.empty((n, stamp_size, stamp_size), dtype=np.float32)
    meta = {name: np.empty(n) for name in LIBRARY_COLUMNS}
    meta["ident"] = np.array([f"synthetic-{k}" for k in range(n)])
    for k in range(n):
        rng = rng_from_seed(stable_hash64("cosmos-synthetic", seed, k))
        r_d = rng.uniform(0.08, 0.25)  # disc scale length, arcsec
        q = rng.uniform(0.4, 1.0)
        pa = rng.uniform(0, math.pi)
        xr = xx * math.cos(pa) + yy * math.sin(pa)
        yr = -xx * math.sin(pa) + yy * math.cos(pa)
        img = np.exp(-np.hypot(xr, yr / q) / r_d)
        img /= img.sum()
        n_knots = int(rng.integers(3, 9))
        for _ in range(n_knots):
            rad = r_d * rng.uniform(0.3, 2.5)
            ang = rng.uniform(0, 2 * math.pi)
            sig = rng.uniform(0.03, 0.08)
            knot = np.exp(-0.5 * ((xx - rad * math.cos(ang)) ** 2 + (yy - rad * math.sin(ang)) ** 2) / sig**2)
            img += rng.uniform(0.05, 0.2) * knot / knot.sum()
        img /= img.sum()
        images[k] = img
        hlr = half_light_radius_arcsec(img, pix)
        meta["half_light_radius_arcsec"][k] = hlr
        meta["clumpiness"][k] = clumpiness(img, pix, hlr)
    meta["mag"][:] = np.nan
    meta["zphot"][:] = np.nan
    meta["flux"][:] = 1.0
    meta["flux_fraction_in_stamp"][:] = 1.0
    meta["noise_sigma"][:] = 0.0
    meta["snr"][:] = np.inf
    meta["psf_fwhm_arcsec"][:] = 0.0
    meta["pixel_scale_arcsec"][:] = pix
    return images, meta
