"""Real HST galaxy sources (COSMOS / AEGIS through GalSim) for lensing at native resolution.

Three pieces:

- :class:`COSMOSImageSource`: one galaxy stamp (0.03"/pix, unit total flux) seen as a continuous
  surface brightness, so that the physics core's generic ``render_lensed_source`` and
  ``inject_arc`` lens it exactly like a Sersic source: the oversampled image-plane grid is
  ray-traced and the source's surface brightness is interpolated at the traced positions, at
  the source's native 0.03" resolution. Never resample a source to the survey's 0.262" before
  lensing: lensing magnifies the small scales (see ``tests/sims/test_cosmos_lensing.py``).
- :class:`COSMOSLoaderV2`: picks a galaxy deterministically from a 64-bit seed (or by ident) out
  of an HDF5 library built by :mod:`dhs_spark.sims.cosmos_build` (``mode='hdf5'``, memory-mapped
  once per Python worker, each galaxy's source built once per worker), a GalSim catalogue drawn
  on the fly (``mode='galsim'``) or clumpy synthetic galaxies (``mode='synthetic'``, only when
  asked for, and logged). Cuts on half-light radius and SNR; train/test split by galaxy ident;
  :meth:`COSMOSLoaderV2.metadata_frame` gives the library's columns and split without images.
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

import collections
import dataclasses
import logging
import math
import os
import threading
from typing import Optional

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import ConfigError, InputDataError
from dhs_spark.sims.lensing import LensLike, as_lens
from dhs_spark.sims.render import (  # also sets a writable NUMBA_CACHE_DIR before numba loads
    fast_lens_params,
    pixel_corners_f32,
    sie_shear_point_f32,
    subpixel_centres_f32,
)

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

_F32_0 = np.float32(0.0)
#: Pixels within this many pixels of the lens centre are always traced at every sub-sample by the fast path.
_FAST_CENTRE_RADIUS_PIX = 2.0
#: Largest source-plane position error (in source pixels) the fast path's biquadratic interpolation may make.
_FAST_POSITION_TOL_PIX = 0.01


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


@numba.njit(cache=True, inline="always", error_model="numpy")
def _bilinear_cell_f32(u, v, wp, hp, inv_pixscale, col_c, row_c):  # pragma: no cover - compiled
    """(cell, wc, wr) of stamp-frame point (u, v) arcsec: the padded array's cell (row-major index of
    its top-left pixel) and the weights of its right and lower pixels, branch-free (vectorises).

    Positions are clamped into the padded (hp x wp) array: anything outside lands on its zero ring
    with weight 1, giving the same zero as :func:`_sb_at`'s tests.
    """
    fc = min(max(u * inv_pixscale + col_c, _F32_0), np.float32(wp - 1))
    fr = min(max(v * inv_pixscale + row_c, _F32_0), np.float32(hp - 1))
    j = min(np.int32(fc), np.int32(wp - 2))
    i = min(np.int32(fr), np.int32(hp - 2))
    return i * np.int32(wp) + j, fc - np.float32(j), fr - np.float32(i)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _bilinear_quad_f32(quad, cell, wc, wr):  # pragma: no cover - compiled
    """Bilinear interpolant in a cell: quad[cell] holds its 4 corner values (top-left, top-right, bottom-left, bottom-right)."""
    top = quad[cell, 0] + wc * (quad[cell, 1] - quad[cell, 0])
    bottom = quad[cell, 2] + wc * (quad[cell, 3] - quad[cell, 2])
    return top + wr * (bottom - top)


def _quad_cells(sb_padded: np.ndarray) -> np.ndarray:
    """(hp * wp, 4) float32: each padded-array cell's 4 corner values, so that one lookup reads 16 contiguous bytes."""
    hp, wp = sb_padded.shape
    quad = np.zeros((hp, wp, 4), dtype=np.float32)
    quad[:-1, :-1, 0] = sb_padded[:-1, :-1]
    quad[:-1, :-1, 1] = sb_padded[:-1, 1:]
    quad[:-1, :-1, 2] = sb_padded[1:, :-1]
    quad[:-1, :-1, 3] = sb_padded[1:, 1:]
    return quad.reshape(hp * wp, 4)


@numba.njit(cache=True, error_model="numpy")
def _trace_to_stamp_frame_f32(xs, ys, lens_p, frame_p, us, vs):  # pragma: no cover - compiled
    """Ray trace image points (xs, ys) into the stamp's frame (us, vs), float32 arcsec, one vectorised loop.

    frame_p = (x0, y0, cos rot, sin rot): the stamp's source-plane origin and rotation. The
    outputs must not overlap the inputs (LLVM would fall back to scalar code).
    """
    x0, y0, c, s = frame_p[0], frame_p[1], frame_p[2], frame_p[3]
    for m in range(xs.size):
        bx, by = sie_shear_point_f32(xs[m], ys[m], lens_p)
        dx = bx - x0
        dy = by - y0
        us[m] = c * dx + s * dy
        vs[m] = -s * dx + c * dy


@numba.njit(cache=True, error_model="numpy")
def _sum_f32(a):  # pragma: no cover - compiled
    """Sum of a float32 array through 8 interleaved float32 partial sums, in a fixed order.

    No serial chain of dependent adds (it pipelines and vectorises), and, unlike a reassociating
    (fastmath) sum, the same bits whatever the CPU's vector width: same seed, same stamp.
    """
    n8 = a.size - a.size % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for m in range(0, n8, 8):
        s0 += a[m]
        s1 += a[m + 1]
        s2 += a[m + 2]
        s3 += a[m + 3]
        s4 += a[m + 4]
        s5 += a[m + 5]
        s6 += a[m + 6]
        s7 += a[m + 7]
    for m in range(n8, a.size):
        s0 += a[m]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(cache=True, inline="always", error_model="numpy")
def _quadratic_weights(f):  # pragma: no cover - compiled
    """Lagrange weights of the nodes 0, 1/2, 1 at f (pixel units)."""
    return 2.0 * (f - 0.5) * (f - 1.0), -4.0 * f * (f - 1.0), 2.0 * f * (f - 0.5)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _fill_grid(g, p, corner, n00, n10, traced, o):  # pragma: no cover - compiled
    """g[p] = a pixel's 3 x 3 half-pixel grid (one coordinate): its 4 traced corners (corner[n00],
    corner[n00 + 1], corner[n10], corner[n10 + 1]) and 5 new points traced[o: o + 5] (top, left, centre, right, bottom)."""
    g[p, 0, 0] = corner[n00]
    g[p, 0, 1] = traced[o]
    g[p, 0, 2] = corner[n00 + 1]
    g[p, 1, 0] = traced[o + 1]
    g[p, 1, 1] = traced[o + 2]
    g[p, 1, 2] = traced[o + 3]
    g[p, 2, 0] = corner[n10]
    g[p, 2, 1] = traced[o + 4]
    g[p, 2, 2] = corner[n10 + 1]


@numba.njit(cache=True, inline="always", error_model="numpy")
def _biquadratic_at(g, p, wx0, wx1, wx2, wy0, wy1, wy2):  # pragma: no cover - compiled
    """The biquadratic interpolant of grid g[p] (rows along y) with x weights wx and y weights wy."""
    return (
        wy0 * (wx0 * g[p, 0, 0] + wx1 * g[p, 0, 1] + wx2 * g[p, 0, 2])
        + wy1 * (wx0 * g[p, 1, 0] + wx1 * g[p, 1, 1] + wx2 * g[p, 1, 2])
        + wy2 * (wx0 * g[p, 2, 0] + wx1 * g[p, 2, 1] + wx2 * g[p, 2, 2])
    )


@numba.njit(cache=True, error_model="numpy")
def _cosmos_fast_kernel(size, pixscale, k, lens_p, frame_p, quad, wp, hp, inv_pix, col_c, row_c, support, centre_r2, margin_c, tol_arcsec, out):  # pragma: no cover - compiled
    """Fast lensed COSMOS image (see ``COSMOSImageSource.unit_lensed_image_fast``), flux per pixel into ``out``.

    float32 points and per-pixel sums (k^2 terms), float64 output. lens_p from
    :func:`dhs_spark.sims.render.fast_lens_params`; frame_p = (x0, y0, cos rot, sin rot) of the
    stamp; quad from :func:`_quad_cells` (hp x wp padded cells), (col_c, row_c) the padded
    array's pixel coordinate of the stamp origin, inv_pix its 1 / pixscale. support = (u_lo,
    u_hi, v_lo, v_hi): stamp-frame box outside which the surface brightness is exactly zero.
    Pixels within sqrt(centre_r2) arcsec of the lens centre trace every sub-sample; margin_c / r^2
    (arcsec) widens the corner box of a pixel at distance r from the lens centre; tol_arcsec is
    the biquadratic check's tolerance. Returns (pixels interpolated biquadratically, pixels
    fully traced).
    """
    half = size // 2
    nc = size + 1
    # 1. the (size+1)^2 pixel corners
    cxs, cys = pixel_corners_f32(size, pixscale)
    cu = np.empty(nc * nc, dtype=np.float32)
    cv = np.empty(nc * nc, dtype=np.float32)
    _trace_to_stamp_frame_f32(cxs, cys, lens_p, frame_p, cu, cv)

    # 2. classify pixels
    lcx = lens_p[6]
    lcy = lens_p[7]
    u_lo, u_hi, v_lo, v_hi = support[0], support[1], support[2], support[3]
    bq = np.empty(size * size, dtype=np.int64)
    full = np.empty(size * size, dtype=np.int64)
    n_bq = 0
    n_full = 0
    for i in range(size):
        for j in range(size):
            px = (j - half) * pixscale - lcx
            py = (i - half) * pixscale - lcy
            r2 = px * px + py * py
            if r2 <= centre_r2:
                full[n_full] = i * size + j
                n_full += 1
                continue
            n00 = i * nc + j
            n10 = n00 + nc
            m = margin_c / r2
            u0 = min(cu[n00], cu[n00 + 1], cu[n10], cu[n10 + 1]) - m
            u1 = max(cu[n00], cu[n00 + 1], cu[n10], cu[n10 + 1]) + m
            v0 = min(cv[n00], cv[n00 + 1], cv[n10], cv[n10 + 1]) - m
            v1 = max(cv[n00], cv[n00 + 1], cv[n10], cv[n10 + 1]) + m
            if u1 <= u_lo or u0 >= u_hi or v1 <= v_lo or v0 >= v_hi:
                out[i, j] = 0.0
                continue
            bq[n_bq] = i * size + j
            n_bq += 1

    gu, gv, n_bq, n_full = _biquadratic_grids(size, pixscale, lens_p, frame_p, cu, cv, bq, n_bq, full, n_full, tol_arcsec)
    _pixel_means(size, pixscale, k, lens_p, frame_p, quad, wp, hp, inv_pix, col_c, row_c, bq, n_bq, full, n_full, gu, gv, out)
    return n_bq, n_full


@numba.njit(cache=True, error_model="numpy")
def _biquadratic_grids(size, pixscale, lens_p, frame_p, cu, cv, bq, n_bq, full, n_full, tol_arcsec):  # pragma: no cover - compiled
    """Stage 3 of :func:`_cosmos_fast_kernel`: the 3 x 3 half-pixel grids (gu, gv) of the biquadratic pixels.

    Traces the 5 new points of each candidate's grid (its corners are cu, cv) and 2 check points
    where the quadratic's cubic error term peaks (offsets 0.211 and 0.789 of the pixel side: the
    error terms along x and y add at one and subtract at the other); a candidate whose
    biquadratic positions miss a check point by more than tol_arcsec moves from ``bq`` to
    ``full``. Returns (gu, gv, n_bq, n_full).
    """
    half = size // 2
    nc = size + 1
    fa = np.float32(0.5 - 0.5 / math.sqrt(3.0))
    fb = np.float32(0.5 + 0.5 / math.sqrt(3.0))
    npt = 7
    xs = np.empty(n_bq * npt, dtype=np.float32)
    ys = np.empty(n_bq * npt, dtype=np.float32)
    for p in range(n_bq):
        i = bq[p] // size
        j = bq[p] - i * size
        xl = np.float32((j - half - 0.5) * pixscale)
        yl = np.float32((i - half - 0.5) * pixscale)
        h = np.float32(pixscale)
        hh = np.float32(0.5 * pixscale)
        o = npt * p
        xs[o], ys[o] = xl + hh, yl
        xs[o + 1], ys[o + 1] = xl, yl + hh
        xs[o + 2], ys[o + 2] = xl + hh, yl + hh
        xs[o + 3], ys[o + 3] = xl + h, yl + hh
        xs[o + 4], ys[o + 4] = xl + hh, yl + h
        xs[o + 5], ys[o + 5] = xl + fa * h, yl + fa * h
        xs[o + 6], ys[o + 6] = xl + fb * h, yl + fa * h
    tu = np.empty(n_bq * npt, dtype=np.float32)
    tv = np.empty(n_bq * npt, dtype=np.float32)
    _trace_to_stamp_frame_f32(xs, ys, lens_p, frame_p, tu, tv)
    gu = np.empty((n_bq, 3, 3), dtype=np.float32)
    gv = np.empty((n_bq, 3, 3), dtype=np.float32)
    wa0, wa1, wa2 = _quadratic_weights(fa)
    wb0, wb1, wb2 = _quadratic_weights(fb)
    n_keep = 0
    for p in range(n_bq):
        i = bq[p] // size
        j = bq[p] - i * size
        n00 = i * nc + j
        n10 = n00 + nc
        o = npt * p
        _fill_grid(gu, n_keep, cu, n00, n10, tu, o)
        _fill_grid(gv, n_keep, cv, n00, n10, tv, o)
        err = max(
            abs(_biquadratic_at(gu, n_keep, wa0, wa1, wa2, wa0, wa1, wa2) - tu[o + 5]),
            abs(_biquadratic_at(gv, n_keep, wa0, wa1, wa2, wa0, wa1, wa2) - tv[o + 5]),
            abs(_biquadratic_at(gu, n_keep, wb0, wb1, wb2, wa0, wa1, wa2) - tu[o + 6]),
            abs(_biquadratic_at(gv, n_keep, wb0, wb1, wb2, wa0, wa1, wa2) - tv[o + 6]),
        )
        if err > tol_arcsec:
            full[n_full] = bq[p]
            n_full += 1
        else:
            bq[n_keep] = bq[p]
            n_keep += 1
    return gu, gv, n_keep, n_full


@numba.njit(cache=True, error_model="numpy")
def _pixel_means(size, pixscale, k, lens_p, frame_p, quad, wp, hp, inv_pix, col_c, row_c, bq, n_bq, full, n_full, gu, gv, out):  # pragma: no cover - compiled
    """Stages 4-5 of :func:`_cosmos_fast_kernel`: the mean surface brightness of every sub-sampled pixel into ``out``."""
    area = pixscale * pixscale
    # 4. fully traced pixels: every sub-sample, traced in one batch
    kk = k * k
    fx, fy = subpixel_centres_f32(full, n_full, size, k, pixscale)
    fu = np.empty(n_full * kk, dtype=np.float32)
    fv = np.empty(n_full * kk, dtype=np.float32)
    _trace_to_stamp_frame_f32(fx, fy, lens_p, frame_p, fu, fv)

    # 5. per pixel: sub-sample positions (biquadratic: w2[3 a + c, k s + t] = wq(s, a) wq(t, c) times the
    # 3 x 3 grid), their cells and weights (vectorised), then the scalar reads of the source
    w2 = np.empty((9, kk), dtype=np.float32)
    for s in range(k):
        ws = _quadratic_weights(np.float32((s + 0.5) / k))
        for t in range(k):
            wt = _quadratic_weights(np.float32((t + 0.5) / k))
            for a in range(3):
                for c in range(3):
                    w2[3 * a + c, s * k + t] = ws[a] * wt[c]
    pu = np.empty(kk, dtype=np.float32)
    pv = np.empty(kk, dtype=np.float32)
    cells = np.empty(kk, dtype=np.int32)
    norm = area / kk
    for p in range(n_bq + n_full):
        if p < n_bq:
            pix = bq[p]
            gu0, gu1, gu2, gu3, gu4, gu5, gu6, gu7, gu8 = gu[p, 0, 0], gu[p, 0, 1], gu[p, 0, 2], gu[p, 1, 0], gu[p, 1, 1], gu[p, 1, 2], gu[p, 2, 0], gu[p, 2, 1], gu[p, 2, 2]
            gv0, gv1, gv2, gv3, gv4, gv5, gv6, gv7, gv8 = gv[p, 0, 0], gv[p, 0, 1], gv[p, 0, 2], gv[p, 1, 0], gv[p, 1, 1], gv[p, 1, 2], gv[p, 2, 0], gv[p, 2, 1], gv[p, 2, 2]
            for m in range(kk):
                pu[m] = (gu0 * w2[0, m] + gu1 * w2[1, m] + gu2 * w2[2, m] + gu3 * w2[3, m] + gu4 * w2[4, m]
                         + gu5 * w2[5, m] + gu6 * w2[6, m] + gu7 * w2[7, m] + gu8 * w2[8, m])  # fmt: skip
                pv[m] = (gv0 * w2[0, m] + gv1 * w2[1, m] + gv2 * w2[2, m] + gv3 * w2[3, m] + gv4 * w2[4, m]
                         + gv5 * w2[5, m] + gv6 * w2[6, m] + gv7 * w2[7, m] + gv8 * w2[8, m])  # fmt: skip
        else:
            pix = full[p - n_bq]
            o = (p - n_bq) * kk
            for m in range(kk):
                pu[m] = fu[o + m]
                pv[m] = fv[o + m]
        for m in range(kk):
            cell, wc, wr = _bilinear_cell_f32(pu[m], pv[m], wp, hp, inv_pix, col_c, row_c)
            cells[m] = cell
            pu[m] = wc
            pv[m] = wr
        for m in range(kk):
            pu[m] = _bilinear_quad_f32(quad, cells[m], pu[m], pv[m])
        out[pix // size, pix % size] = _sum_f32(pu) * norm


#: Attributes COSMOSImageSource.__post_init__ derives from the image (not pickled, shared by ``at``).
_DERIVED = ("_sb_padded", "_quad_f32", "_support_arcsec")


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
        # fast path: float32 cell corners, and the stamp-frame box (arcsec) outside which the interpolant is 0
        object.__setattr__(self, "_quad_f32", _quad_cells(sb))
        object.__setattr__(self, "_support_arcsec", _support_arcsec(image, self.pixscale_arcsec))

    def __getstate__(self):
        state = dict(self.__dict__)
        for derived in _DERIVED:
            state.pop(derived)
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
        if not all(math.isfinite(v) for v in (x_arcsec, y_arcsec, rot)):
            raise ValueError(f"COSMOS source {self.ident}: position and rotation must be finite (got {x_arcsec!r}, {y_arcsec!r}, {rot!r})")
        # a copy sharing the image and what __post_init__ derived from it (that depends on neither position nor rotation)
        placed = object.__new__(COSMOSImageSource)
        placed.__dict__.update(self.__dict__)
        object.__setattr__(placed, "x_arcsec", float(x_arcsec))
        object.__setattr__(placed, "y_arcsec", float(y_arcsec))
        object.__setattr__(placed, "phi_rad", rot)
        return placed

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

    def unit_lensed_image_fast(self, size: int, pixscale_arcsec: float, oversample: int, lens: LensLike) -> np.ndarray:
        """Lensed image of this unit-flux source, flux per pixel, float64 (size, size): the fast path.

        Same geometry and sub-samples as ``render.unit_lensed_image_exact`` (pixel (i, j) centred at
        ((j - size//2), (i - size//2)) x pixscale, ``oversample``^2 sub-samples per pixel, the
        source's bilinear surface brightness looked up at each at its native resolution), within
        relative L1 1e-2 and flux 2e-3 of it before the PSF (tested; measured on the 15 real
        galaxies over 300 random lenses, theta_E 0.3-5", q 0.2-1: L1 <= 7e-4, flux <= 6e-4).
        One numba kernel with float32 points, traced by the Sersic fast path's vectorised SIE +
        shear tracer (:func:`dhs_spark.sims.render.sie_shear_point_f32`); the work is cut three ways:

        - every pixel corner is traced. A pixel's corners bound its source-plane footprint once
          widened by the bow of its edges between them (theta_E h^2 / (2 q^2 r^2) for a pixel of
          side h at distance r from the lens centre: 4 x an SIS's sagitta, 1/q^2 for the ellipse).
          A pixel whose widened box misses the box of the source's non-zero pixels (plus the
          one-pixel bilinear tent) is 0, exactly as on the exact path: for a 0.03" x 128 stamp
          (3.84") that is most of a 64 x 0.262" image;
        - the others trace their 3 x 3 half-pixel grid (5 new points) and interpolate it
          biquadratically to the sub-samples (the lens map is smooth there), after checking the
          interpolation at 2 more traced points: a pixel where it misses by more than
          ``_FAST_POSITION_TOL_PIX`` source pixels (near the lens centre and the critical curves
          of small Einstein radii) traces every sub-sample instead;
        - pixels within ``_FAST_CENTRE_RADIUS_PIX`` pixels of the lens centre, where the
          deflection turns within a pixel and corners bound nothing, trace every sub-sample.

        Source lookups are the remaining cost: about 0.55k pixels x 64 per stamp for theta_E 0.5-3".
        """
        if int(size) != size or size < 1 or int(oversample) != oversample or oversample < 1 or not pixscale_arcsec > 0:
            raise ValueError(f"need integer size >= 1, integer oversample >= 1 and pixscale > 0 (got {size!r}, {oversample!r}, {pixscale_arcsec!r})")
        lens = as_lens(lens)
        h, w = self._sb_padded.shape
        frame_p = np.array([self.x_arcsec, self.y_arcsec, math.cos(self.phi_rad), math.sin(self.phi_rad)], dtype=np.float32)
        out = np.empty((size, size))
        _cosmos_fast_kernel(
            int(size),
            float(pixscale_arcsec),
            int(oversample),
            fast_lens_params(lens),
            frame_p,
            self._quad_f32,
            w,
            h,
            np.float32(1.0 / self.pixscale_arcsec),
            np.float32((w - 1) / 2.0),
            np.float32((h - 1) / 2.0),
            self._support_arcsec,
            (_FAST_CENTRE_RADIUS_PIX * pixscale_arcsec) ** 2,
            lens.theta_e_arcsec * pixscale_arcsec**2 / (2.0 * lens.q**2),
            _FAST_POSITION_TOL_PIX * self.pixscale_arcsec,
            out,
        )
        return out


def _support_arcsec(image: np.ndarray, pixscale_arcsec: float) -> np.ndarray:
    """(u_lo, u_hi, v_lo, v_hi) arcsec about the stamp origin: the bilinear surface brightness is 0 outside (float32).

    The box of the non-zero pixels widened by one pixel (each pixel's bilinear tent); the image
    has unit flux, so it has non-zero pixels.
    """
    h, w = image.shape
    cols = np.flatnonzero(np.any(image != 0, axis=0))
    rows = np.flatnonzero(np.any(image != 0, axis=1))
    box = [cols[0] - 1 - (w - 1) / 2.0, cols[-1] + 1 - (w - 1) / 2.0, rows[0] - 1 - (h - 1) / 2.0, rows[-1] + 1 - (h - 1) / 2.0]
    return np.array(box, dtype=np.float32) * np.float32(pixscale_arcsec)


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

#: Per-process cache of open libraries, keyed by (mode, path, options, pid): one metadata read and
#: one memory map (or in-memory array) per Python worker, shared by all the tasks (and loader
#: copies) it runs.
_LIBRARY_CACHE: dict = {}
_LIBRARY_LOCK = threading.Lock()

#: HDF5 library format this code reads and :mod:`dhs_spark.sims.cosmos_build` writes (file
#: attribute ``library_format_version``). 1 (no attribute; builder ``cosmos-build-2``): stamps
#: not cleaned of the sky pedestal, gzip-chunked images. 2: cleaned stamps (pedestal removed,
#: neighbours and sky zeroed), the pedestal columns, contiguous uncompressed images (memory-mapped).
LIBRARY_FORMAT_VERSION = 2

#: Metadata columns of an HDF5 library (one value per galaxy); see cosmos_build for their
#: definitions (``flux`` and the pedestal in catalogue image units, the fractions of the raw HST stamp's sum).
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
    "pedestal_per_pixel",
    "pedestal_sigma_per_pixel",
    "pedestal_flux_fraction",
    "masked_flux_fraction",
)

#: Bytes of built sources (:class:`COSMOSImageSource`: float64 image, padded surface brightness,
#: float32 cell corners; ~0.5 MB for a 128 x 128 stamp, less once cropped) each Python worker
#: keeps per library, least recently used first out: a library of <= ~500 galaxies is built once
#: per worker, a larger one pays the build (~0.1-0.3 ms) on a miss.
SOURCE_CACHE_BYTES = 256 * 2**20

_MODES = ("hdf5", "galsim", "synthetic")
_SPLITS = (None, "train", "test")


def _crop_zero_margins(image: np.ndarray) -> np.ndarray:
    """The centred crop of ``image`` that drops all-zero margins symmetrically (same count each side).

    The stamp's origin (its true centre) stays the crop's true centre, and the bilinear surface
    brightness (zero-padded) is the same function: only zero pixels are dropped. Cleaned stamps
    are zero outside the galaxy's footprint, so the source's set-up work shrinks with it.
    Non-finite pixels count as non-zero (kept, then refused).
    """
    h, w = image.shape
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    if rows.size == 0:
        return image
    mr = min(int(rows[0]), h - 1 - int(rows[-1]), (h - 2) // 2)
    mc = min(int(cols[0]), w - 1 - int(cols[-1]), (w - 2) // 2)
    return image[mr : h - mr, mc : w - mc]


class _Library:
    """Images and metadata of one library, held once by one process.

    ``images``: (N, S, S) float32, a read-only memory map of the HDF5 file's contiguous dataset
    (or an in-memory array); ``meta``: the :data:`LIBRARY_COLUMNS`; ``row_by_ident``. Built
    sources are kept in an LRU cache of at most ``source_cache_bytes``.
    """

    def __init__(self, path: str, images: np.ndarray, meta: dict, pixscale_arcsec: float, source_cache_bytes: int = SOURCE_CACHE_BYTES):
        self.path = path
        self.images = images
        self.meta = meta
        self.pixscale_arcsec = pixscale_arcsec
        self.row_by_ident = {}
        for row, ident in enumerate(meta["ident"]):
            if ident in self.row_by_ident:
                raise InputDataError(f"COSMOS library {path}: ident {ident} appears in rows {self.row_by_ident[ident]} and {row}")
            self.row_by_ident[ident] = row
        self.source_cache_bytes = int(source_cache_bytes)
        self._sources: collections.OrderedDict = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def image(self, index: int) -> np.ndarray:
        """Library row ``index`` as stored: float64 (S, S)."""
        return np.asarray(self.images[index], dtype=np.float64)

    def source(self, row: int) -> COSMOSImageSource:
        """The galaxy in ``row`` at the source-plane origin, unrotated, built once (LRU cache)."""
        with self._lock:
            src = self._sources.get(row)
            if src is not None:
                self._sources.move_to_end(row)
                return src
        src = self._build(row)
        size = src.image.nbytes + src._sb_padded.nbytes + src._quad_f32.nbytes
        with self._lock:
            if row not in self._sources and size <= self.source_cache_bytes:
                self._sources[row] = src
                self._cached_bytes += size
                while self._cached_bytes > self.source_cache_bytes:
                    _, old = self._sources.popitem(last=False)
                    self._cached_bytes -= old.image.nbytes + old._sb_padded.nbytes + old._quad_f32.nbytes
        return src

    def _build(self, row: int) -> COSMOSImageSource:
        ident = str(self.meta["ident"][row])
        image = np.array(_crop_zero_margins(self.images[row]), dtype=np.float64)  # float32 memory map -> float64 copy
        total = image.sum()
        if math.isfinite(total):  # non-finite pixels: left to COSMOSImageSource's check, which counts them
            if not total > 0:
                raise InputDataError(f"COSMOS library {self.path}: galaxy {ident} (row {row}) has non-positive total flux {total!r}")
            image /= total  # stored normalised; re-normalise the float32 rounding away
        image.flags.writeable = False  # shared by every user of the cached source
        try:
            return COSMOSImageSource(
                image=image,
                pixscale_arcsec=self.pixscale_arcsec,
                ident=ident,
                clumpiness=float(self.meta["clumpiness"][row]),
                half_light_radius_arcsec=float(self.meta["half_light_radius_arcsec"][row]),
            )
        except InputDataError as exc:  # non-finite pixels or a sum away from 1: name the file and row
            raise InputDataError(f"COSMOS library {self.path}: galaxy {ident} (row {row}): {exc}") from exc


def _memory_map_images(path: str, dataset) -> np.ndarray:
    """The ``images`` dataset as a read-only memory map (contiguous, uncompressed float32), else read whole."""
    offset = dataset.id.get_offset() if dataset.chunks is None and dataset.compression is None else None
    if offset is None or dataset.dtype != np.dtype("<f4"):
        return np.asarray(dataset[()], dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=dataset.shape)


def _open_hdf5_library(path: str, expected_pixscale_arcsec: Optional[float]) -> _Library:
    import h5py

    if not os.path.isfile(path):
        raise InputDataError(f"COSMOS library not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(f"COSMOS library {path} is not a readable HDF5 file: {exc}") from exc
    with handle:
        version = int(handle.attrs.get("library_format_version", 1))
        if version != LIBRARY_FORMAT_VERSION:
            builder = handle.attrs.get("builder_version", "unknown")
            why = (
                "its stamps were not cleaned of the sky pedestal and neighbours (6-30% of a stamp's sum is a uniform sheet)"
                if version < LIBRARY_FORMAT_VERSION
                else "it is newer than this code"
            )
            raise InputDataError(
                f"COSMOS library {path}: format {version} (builder {builder}); this code reads format {LIBRARY_FORMAT_VERSION}: "
                f"{why}. Rebuild it with `dhs cosmos build`"
            )
        missing = [name for name in ("images", *LIBRARY_COLUMNS) if name not in handle]
        if missing:
            raise InputDataError(f"COSMOS library {path}: missing datasets {missing}")
        if "pixel_scale_arcsec" not in handle.attrs:
            raise InputDataError(f"COSMOS library {path}: missing file attribute 'pixel_scale_arcsec'")
        pixscale = float(handle.attrs["pixel_scale_arcsec"])
        meta = {name: handle[name][()] for name in LIBRARY_COLUMNS}
        meta["ident"] = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in meta["ident"]])
        n = handle["images"].shape[0]
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
        images = _memory_map_images(path, handle["images"])
    return _Library(path, images, meta, pixscale)


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

    The library lives in a module-level cache, one per process and path: its images are
    memory-mapped (the HDF5 file's contiguous dataset; the page cache holds one copy per node)
    and each galaxy's source is built once per process (LRU, :data:`SOURCE_CACHE_BYTES`), so a
    stamp reads no file. The loader itself holds only its settings and pickles cheaply.
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
        _check_test_fraction(test_fraction)
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
        self._selected_set: Optional[frozenset] = None
        if mode == "synthetic":
            log.warning("COSMOSLoaderV2: mode='synthetic' chosen explicitly: %d synthetic clumpy galaxies, not real HST sources", n_synthetic)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_selected"] = None  # recomputed (cheaply, from the per-process cache) after unpickling
        state["_selected_set"] = None
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

    def _is_test(self, ident: str, test_fraction: float) -> bool:
        return stable_hash64(self.split_salt, str(ident)) / 2.0**64 < test_fraction

    def in_split(self, ident: str) -> bool:
        """Whether galaxy ``ident`` belongs to this loader's split (always True for ``split=None``)."""
        if self.split is None:
            return True
        return self._is_test(ident, self.test_fraction) == (self.split == "test")

    def _passes_cuts(self, meta: dict) -> np.ndarray:
        hlr = meta["half_light_radius_arcsec"]
        return (hlr >= self.hlr_range_arcsec[0]) & (hlr <= self.hlr_range_arcsec[1]) & (meta["snr"] >= self.min_snr)

    def selected_indices(self) -> np.ndarray:
        """Library rows that pass the split and the cuts, in library order."""
        if self._selected is None:
            lib = self.library()
            keep = self._passes_cuts(lib.meta) & np.array([self.in_split(i) for i in lib.meta["ident"]], dtype=bool)
            selected = np.flatnonzero(keep)
            if selected.size == 0:
                raise InputDataError(
                    f"COSMOS library {lib.path}: no galaxy left after cuts (split={self.split!r}, test_fraction={self.test_fraction}, "
                    f"hlr_range_arcsec={self.hlr_range_arcsec}, min_snr={self.min_snr}; {keep.size} galaxies before cuts)"
                )
            self._selected = selected
        return self._selected

    def __len__(self) -> int:
        return int(self.selected_indices().size)

    def idents(self) -> list[str]:
        """Idents of the selected galaxies, in library order."""
        return [str(i) for i in self.library().meta["ident"][self.selected_indices()]]

    def metadata_frame(self, test_fraction: Optional[float] = None):
        """Every library row's :data:`LIBRARY_COLUMNS` (no images) as a pandas DataFrame.

        Added columns: ``library_row`` (the row's index in the library), ``split`` ('train' or
        'test' by this loader's ident hash with ``test_fraction``, default the loader's; the same
        rule as :meth:`in_split`) and ``passes_cuts`` (this loader's half-light radius and SNR cuts).
        """
        import pandas as pd

        fraction = self.test_fraction if test_fraction is None else float(_check_test_fraction(test_fraction))
        meta = self.library().meta
        frame = pd.DataFrame({name: meta[name] for name in LIBRARY_COLUMNS})
        frame.insert(0, "library_row", np.arange(len(frame), dtype=np.int64))
        frame["split"] = ["test" if self._is_test(i, fraction) else "train" for i in meta["ident"]]
        frame["passes_cuts"] = self._passes_cuts(meta)
        return frame

    def source_by_index(self, row: int) -> COSMOSImageSource:
        """The galaxy in library row ``row`` at the source-plane origin, unrotated (built once per process)."""
        return self.library().source(int(row))

    def source_by_ident(self, ident: str) -> COSMOSImageSource:
        """The galaxy ``ident`` at the source-plane origin, unrotated; it must be in this loader's split and cuts.

        A dict lookup plus the per-process source cache: the call 4c makes for a galaxy chosen in 4a.
        """
        lib = self.library()
        row = lib.row_by_ident.get(str(ident))
        if row is None:
            raise InputDataError(f"COSMOS library {lib.path}: no galaxy with ident {ident!r}")
        if self._selected_set is None:
            self._selected_set = frozenset(int(r) for r in self.selected_indices())
        if row not in self._selected_set:
            raise InputDataError(
                f"COSMOS library {lib.path}: galaxy {ident} (row {row}) is outside this loader's selection "
                f"(split={self.split!r}, test_fraction={self.test_fraction}, hlr_range_arcsec={self.hlr_range_arcsec}, min_snr={self.min_snr})"
            )
        return lib.source(row)

    def get_source(self, seed: int, x_arcsec: float = 0.0, y_arcsec: float = 0.0) -> COSMOSImageSource:
        """The galaxy chosen by the 64-bit ``seed`` (same seed -> same galaxy), placed at (x, y) arcsec.

        The selected row is ``stable_hash64('cosmos-select', seed) mod N`` (bias < N / 2^64); with
        ``random_rotation`` the stamp is also rotated by 2 pi ``stable_hash64('cosmos-rotate', seed)`` / 2^64.
        """
        selected = self.selected_indices()
        row = int(selected[stable_hash64("cosmos-select", int(seed)) % selected.size])
        rotation = 2.0 * math.pi * (stable_hash64("cosmos-rotate", int(seed)) / 2.0**64) if self.random_rotation else 0.0
        return self.source_by_index(row).at(x_arcsec, y_arcsec, rotation)


def _check_test_fraction(test_fraction: float) -> float:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("cosmos.test_fraction", "must be in (0, 1)", test_fraction)
    return test_fraction


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
    for name in ("pedestal_per_pixel", "pedestal_sigma_per_pixel", "pedestal_flux_fraction", "masked_flux_fraction"):
        meta[name][:] = 0.0  # drawn on a zero sky with no neighbours
    return images, meta
