"""Survey PSF images: legacypipe PsfEx models, resampling, the documented DR9/DR10 outer wings,
size measurements, and the :class:`PsfSpec` that names a stamp's PSF in its truth record.

Conventions (DESIGN.md §2):

- A PSF image is a 2-D float64 array of odd size whose centre pixel ``(n // 2, n // 2)`` is the
  point-source position; x runs along numpy axis 1, y along axis 0. "Centred" means its flux
  centroid (first moment over the whole array) lies on that pixel, so that convolving an arc with
  it does not move the arc's light. Images sum to 1.
- The real DECam PsfEx models have their core (r < 1") centred to ~0.03 px, but an asymmetric
  halo beyond 2" that pulls the whole-array centroid 0.1-0.2 px off; centring the whole-array
  centroid moves the core by that much (< 0.05"), which keeps an injected arc's light centroid
  where the lens model put it.
- PSF images are *effective* PSFs: the optical PSF already convolved with the detector pixel,
  sampled at pixel centres (what PsfEx fits and what the coadd-PSF service returns). Resampling
  therefore interpolates; it never integrates over the new pixels again.
- Angles in arcsec; pixel positions 0-based.

The PsfEx reader reads the legacypipe per-CCD files (``calib/psfex-single/...-psfex.fits``:
one table row holding the basis images ``psf_mask`` (n_terms, ny, nx) and the polynomial keywords
as columns) and plain PsfEx output (keywords in the table header). The PSF at CCD pixel (x, y) is
``sum_k basis_k * dx^i dy^j`` with ``dx = (X - POLZERO1) / POLSCAL1``, ``dy = (Y - POLZERO2) /
POLSCAL2`` where X, Y are PsfEx's 1-based ``X_IMAGE``, ``Y_IMAGE`` (so X = x + 1), and the terms
in PsfEx order, x powers running fastest: 1, dx, dx^2, dy, dx dy, dy^2 for degree 2 (PsfEx
manual; GalSim's ``des_psfex``).

Wings: the PsfEx image is only ~8" in radius and noisy outside the core. The Legacy Surveys
(https://www.legacysurvey.org/dr10/psf, DR9 onwards) extend it with a symmetric model: an inner
Moffat fitted to the PsfEx image between 1.8" and 5", and a fixed outer profile, a power law
``A r^-2`` per arcsec^2 in g (A = 4.5e-4) and r (3.3e-4), a Moffat (alpha 17.65", beta 1.7,
weight 0.0145) in z; PsfEx -> inner Moffat between R1 and R2, inner Moffat -> outer profile
between R3 and R4 (5, 6, 7, 8"). :func:`extend_with_wings` builds that profile on a larger grid.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dhs_spark.config.experiment import BANDS, PsfWingsConfig
from dhs_spark.errors import InputDataError
from dhs_spark.sims.psf import FWHM_PER_SIGMA

log = logging.getLogger(__name__)

DR10_PIXSCALE_ARCSEC = 0.262  # DECam pixel, the DR10 coadd and stamp grid
_CENTROID_TOL_PIX = 1e-4  # recentring stops when the flux centroid is this close to the centre


# --------------------------------------------------------------------------------------------
# image helpers


def centroid_offset(image: np.ndarray) -> tuple[float, float]:
    """Flux centroid of ``image`` minus its centre pixel, (dx, dy) in pixels (x = axis 1)."""
    ny, nx = image.shape
    total = image.sum()
    dx = float((image.sum(axis=0) * (np.arange(nx) - nx // 2)).sum() / total)
    dy = float((image.sum(axis=1) * (np.arange(ny) - ny // 2)).sum() / total)
    return dx, dy


def normalise_and_centre(image: np.ndarray, max_iter: int = 10) -> np.ndarray:
    """``image`` made odd-sized and square, summing to 1, its flux centroid on the centre pixel.

    An even axis gets one zero row/column appended, which keeps PsfEx's centre pixel ``n // 2``;
    a non-square image is zero-padded symmetrically to a square.
    The centroid is moved by cubic-spline sub-pixel shifts, repeated until it is within 1e-4 px
    (a spline shift moves the centroid by the requested amount to ~1e-3 px, so two or three
    passes suffice). Raises ``ValueError`` for an image without positive flux or with non-finite
    pixels.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"a PSF image must be 2-D, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("PSF image has non-finite pixels")
    pad = [(0, 1 - n % 2) for n in img.shape]
    if any(p[1] for p in pad):
        img = np.pad(img, pad)
    if img.shape[0] != img.shape[1]:  # square it, centre pixel kept
        d = (max(img.shape) - np.array(img.shape)) // 2
        img = np.pad(img, [(d[0], d[0]), (d[1], d[1])])
    total = img.sum()
    if not total > 0:
        raise ValueError(f"PSF image has no positive flux (sum {total!r})")
    img = img / total
    for _ in range(max_iter):
        dx, dy = centroid_offset(img)
        if max(abs(dx), abs(dy)) < _CENTROID_TOL_PIX:
            break
        img = ndimage.shift(img, (-dy, -dx), order=3, mode="grid-constant", cval=0.0)
        img /= img.sum()
    return img


def resample_psf(image: np.ndarray, from_pixscale: float, to_pixscale: float, size: Optional[int] = None) -> np.ndarray:
    """Resample a centred PSF image from pixels of ``from_pixscale`` to pixels of ``to_pixscale``.

    Both scales in the same unit (arcsec, or image pixels for PsfEx's ``PSF_SAMP``). The image is
    an effective PSF sampled at pixel centres; a cubic spline through it is evaluated at the new
    pixel centres, the input centre pixel mapping onto the output centre pixel. ``size`` (odd)
    defaults to the largest odd grid inside the input's extent. Returns the image normalised and
    centred (:func:`normalise_and_centre`). With equal scales there is no interpolation.
    """
    from scipy import ndimage

    if not (from_pixscale > 0 and to_pixscale > 0):
        raise ValueError(f"pixel scales must be positive, got {from_pixscale!r} -> {to_pixscale!r}")
    img = normalise_and_centre(image)
    if math.isclose(from_pixscale, to_pixscale, rel_tol=1e-9):
        return img if size is None else normalise_and_centre(crop_or_pad(img, size))
    n_in = img.shape[0]
    ratio = to_pixscale / from_pixscale  # input pixels per output pixel
    if size is None:
        size = 2 * int(math.floor((n_in // 2) / ratio)) + 1
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be odd and positive, got {size}")
    offs = (np.arange(size) - size // 2) * ratio
    yy, xx = np.meshgrid(offs + img.shape[0] // 2, offs + img.shape[1] // 2, indexing="ij")
    out = ndimage.map_coordinates(img, [yy, xx], order=3, mode="grid-constant", cval=0.0)
    return normalise_and_centre(out)


def crop_or_pad(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` (odd) of an odd square image, zero-padded when larger.
    Cropping drops flux: callers renormalise when they need sum 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be odd and positive, got {size}")
    n = image.shape[0]
    if size <= n:
        lo = n // 2 - size // 2
        return image[lo : lo + size, lo : lo + size].copy()
    p = (size - n) // 2
    return np.pad(image, p)


def radius_grid_pix(size: int) -> np.ndarray:
    """Distance in pixels of each pixel centre of a size x size grid from its centre pixel."""
    off = np.arange(size) - size // 2
    return np.hypot(off[None, :], off[:, None])


# --------------------------------------------------------------------------------------------
# sizes


def gaussian_fwhm_arcsec(image: np.ndarray, pixscale_arcsec: float) -> float:
    """FWHM (arcsec) of the circular Gaussian that best fits ``image`` (least squares over all
    pixels, free amplitude, centre and sigma).

    This is the survey's own seeing convention: legacypipe's zeropoint code fits stars with a
    single circular Gaussian, and ``survey-ccds`` ``fwhm`` and the bricks' ``psfsize_*`` derive
    from it, so a PSF image and a Gaussian of this FWHM have the same "psfsize". For a Gaussian
    image it is its FWHM exactly; for a Moffat it exceeds the half-maximum width by a few percent.
    """
    from scipy import optimize

    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    c = nx // 2, ny // 2
    fwhm0_pix = 2.0 * math.sqrt(max(int((img > img.max() / 2).sum()), 1) / math.pi)  # from the half-max area
    sigma0 = max(0.5, fwhm0_pix / FWHM_PER_SIGMA)

    def resid(p):
        amp, sig, x0, y0 = p
        return (amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sig * sig)) - img).ravel()

    fit = optimize.least_squares(resid, [img.max(), sigma0, c[0], c[1]], x_scale="jac")
    return float(FWHM_PER_SIGMA * abs(fit.x[1]) * pixscale_arcsec)


def moffat_fwhm(alpha: float, beta: float) -> float:
    """FWHM of a Moffat profile (same unit as ``alpha``): 2 alpha sqrt(2^(1/beta) - 1)."""
    return 2.0 * alpha * math.sqrt(2.0 ** (1.0 / beta) - 1.0)


def moffat_sb(r: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Unit-flux Moffat surface brightness (beta - 1) / (pi alpha^2) (1 + r^2/alpha^2)^-beta,
    per unit area of ``r``'s unit squared (beta > 1)."""
    return (beta - 1.0) / (math.pi * alpha * alpha) * (1.0 + (np.asarray(r) / alpha) ** 2) ** (-beta)


@dataclass(frozen=True)
class MoffatFit:
    """A unit-flux Moffat fitted to a PSF image. ``alpha_arcsec`` the core width, ``beta`` the
    wing slope (surface brightness ~ r^(-2 beta) far out)."""

    alpha_arcsec: float
    beta: float

    @property
    def fwhm_arcsec(self) -> float:
        return moffat_fwhm(self.alpha_arcsec, self.beta)


def fit_moffat(image: np.ndarray, pixscale_arcsec: float, r_min_arcsec: float = 0.0, r_max_arcsec: float = 5.0) -> MoffatFit:
    """Fit a unit-flux Moffat (alpha, beta), centred on the centre pixel, to the pixels of a
    normalised, centred PSF image lying between ``r_min_arcsec`` and ``r_max_arcsec``.

    The model's amplitude is fixed by unit total flux, as in the Legacy Surveys' inner-PSF fit
    (which uses 1.8-5"); the model is evaluated at pixel centres times the pixel area, consistent
    with an effective PSF. Least squares on linear pixel values; beta bounded to (1.01, 20).
    """
    from scipy import optimize

    img = np.asarray(image, dtype=np.float64)
    r = radius_grid_pix(img.shape[0]) * pixscale_arcsec
    sel = (r >= r_min_arcsec) & (r <= r_max_arcsec)
    if sel.sum() < 3:
        raise ValueError(f"fewer than 3 pixels between {r_min_arcsec} and {r_max_arcsec} arcsec")
    r_sel, data = r[sel], img[sel]
    area = pixscale_arcsec**2
    fwhm0 = gaussian_fwhm_arcsec(img, pixscale_arcsec)
    beta0 = 3.0

    def resid(p):
        alpha, beta = p
        return moffat_sb(r_sel, alpha, beta) * area - data

    alpha0 = fwhm0 / moffat_fwhm(1.0, beta0)
    fit = optimize.least_squares(resid, [alpha0, beta0], bounds=([1e-3, 1.01], [100.0, 20.0]), x_scale="jac")
    return MoffatFit(alpha_arcsec=float(fit.x[0]), beta=float(fit.x[1]))


# --------------------------------------------------------------------------------------------
# PsfEx


def _psfex_param(header, row, names: Sequence[str], key: str, path: str):
    """A PsfEx keyword from the table header (plain PsfEx) or a column (legacypipe merged files)."""
    if key in header:
        return header[key]
    if key.lower() in names:
        value = row[key.lower()]
        return value.strip() if isinstance(value, str) else value
    raise InputDataError(f"{path}: PsfEx model lacks {key} (neither a header keyword nor a column)")


@dataclass(frozen=True, eq=False)
class PsfExModel:
    """A PsfEx PSF model varying as a polynomial over one CCD.

    ``bases`` (n_terms, ny, nx) are the basis images in PsfEx term order; ``x_zero``,
    ``x_scale``, ``y_zero``, ``y_scale`` the polynomial's normalisation in PsfEx's 1-based image
    coordinates; ``sampling`` (``PSF_SAMP``) the size of a basis pixel in image pixels.
    """

    bases: np.ndarray
    degree: int
    x_zero: float
    x_scale: float
    y_zero: float
    y_scale: float
    sampling: float
    path: str = ""
    ccdname: str = ""
    expnum: int = -1

    @classmethod
    def from_fits(cls, path: str | Path) -> PsfExModel:
        """Read a legacypipe (keywords as columns) or plain (keywords in the header) PsfEx file."""
        from astropy.io import fits

        path = str(path)
        try:
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul[1:] if isinstance(h, fits.BinTableHDU) and "psf_mask" in [n.lower() for n in h.columns.names]), None)
                if hdu is None:
                    raise InputDataError(f"{path}: no binary table with a PSF_MASK column (not a PsfEx model)")
                header = hdu.header
                names = [n.lower() for n in hdu.columns.names]
                row = hdu.data[0]
                mask_col = hdu.columns.names[names.index("psf_mask")]
                bases = np.array(row[mask_col], dtype=np.float64)
                rowd = {n: row[orig] for n, orig in zip(names, hdu.columns.names)}
        except InputDataError:
            raise
        except (OSError, ValueError, IndexError, TypeError) as exc:
            raise InputDataError(f"{path}: cannot read PsfEx model: {exc}") from None

        def param(key):
            return _psfex_param(header, rowd, names, key, path)

        polnaxis = int(param("POLNAXIS"))
        if bases.ndim == 2:
            bases = bases[None]
        if bases.ndim != 3:
            raise InputDataError(f"{path}: PSF_MASK has shape {bases.shape}, expected (n_terms, ny, nx)")
        if polnaxis == 0:  # a constant PSF
            return cls(bases[:1], 0, 0.0, 1.0, 0.0, 1.0, float(param("PSF_SAMP")), path, str(rowd.get("ccdname", "")).strip(), int(rowd.get("expnum", -1)))
        if polnaxis != 2 or int(param("POLNGRP")) != 1:
            raise InputDataError(f"{path}: only a single polynomial group in (X_IMAGE, Y_IMAGE) is supported (POLNAXIS={polnaxis})")
        for k, axis in (("POLNAME1", "X"), ("POLNAME2", "Y")):
            name = str(param(k)).strip().upper()
            if not (name.startswith(axis) and name.endswith("IMAGE")):  # X_IMAGE, XWIN_IMAGE, ...
                raise InputDataError(f"{path}: {k} is {name!r}; the PSF must vary with image position (X_IMAGE, Y_IMAGE)")
        degree = int(param("POLDEG1"))
        n_terms = (degree + 1) * (degree + 2) // 2
        if bases.shape[0] != n_terms:
            raise InputDataError(f"{path}: PSF_MASK has {bases.shape[0]} basis images; degree {degree} needs {n_terms}")
        if not np.all(np.isfinite(bases)):
            raise InputDataError(f"{path}: PSF_MASK has non-finite values")
        x_scale, y_scale = float(param("POLSCAL1")), float(param("POLSCAL2"))
        if x_scale == 0 or y_scale == 0:
            raise InputDataError(f"{path}: POLSCAL1/2 must be non-zero (got {x_scale}, {y_scale})")
        sampling = float(param("PSF_SAMP"))
        if not sampling > 0:
            raise InputDataError(f"{path}: PSF_SAMP must be positive (got {sampling})")
        return cls(
            bases=bases,
            degree=degree,
            x_zero=float(param("POLZERO1")),
            x_scale=x_scale,
            y_zero=float(param("POLZERO2")),
            y_scale=y_scale,
            sampling=sampling,
            path=path,
            ccdname=str(rowd.get("ccdname", "")).strip(),
            expnum=int(rowd.get("expnum", -1)),
        )

    @property
    def centre_xy(self) -> tuple[float, float]:
        """0-based pixel (x, y) at the polynomial's origin: the centre of the fitted CCD area."""
        return self.x_zero - 1.0, self.y_zero - 1.0

    def polynomial_terms(self, x: float, y: float) -> np.ndarray:
        """The weights of the basis images at 0-based CCD pixel (x, y), in PsfEx order."""
        dx = (x + 1.0 - self.x_zero) / self.x_scale
        dy = (y + 1.0 - self.y_zero) / self.y_scale
        return np.array([dx**i * dy**j for j in range(self.degree + 1) for i in range(self.degree + 1 - j)])

    def raw_image(self, x: float, y: float) -> np.ndarray:
        """The polynomial sum at 0-based CCD pixel (x, y) on the basis grid, unnormalised."""
        return np.tensordot(self.polynomial_terms(x, y), self.bases, axes=1)

    def image(self, x: float, y: float) -> np.ndarray:
        """The PSF at 0-based CCD pixel (x, y) on the CCD pixel grid: odd size, sum 1, centred."""
        raw = self.raw_image(x, y)
        if math.isclose(self.sampling, 1.0, rel_tol=1e-9):
            return normalise_and_centre(raw)
        return resample_psf(raw, self.sampling, 1.0)


@functools.lru_cache(maxsize=64)
def load_psfex(path: str) -> PsfExModel:
    """:meth:`PsfExModel.from_fits`, cached per path and process (a Spark worker reads a CCD's
    model once however many stamps use it)."""
    return PsfExModel.from_fits(path)


def psfex_image(path: str | Path, x: float, y: float) -> np.ndarray:
    """The PSF of the legacypipe PsfEx model file ``path`` at 0-based CCD pixel (x, y).

    A 2-D float64 array of odd size on the survey (CCD) pixel grid, summing to 1, whose flux
    centroid lies on the central pixel (see the module docstring for the conventions).
    """
    return load_psfex(str(path)).image(float(x), float(y))


# --------------------------------------------------------------------------------------------
# wings


def outer_wing_sb(r_arcsec: np.ndarray, band: str, wings: PsfWingsConfig) -> np.ndarray:
    """The documented outer PSF profile of a unit-flux star in ``band``, per arcsec^2.

    g, r: ``A r^-2`` (A from the config); z: ``weight * Moffat(alpha, beta)`` (unit-flux Moffat).
    """
    r = np.asarray(r_arcsec, dtype=np.float64)
    if band == "z":
        return wings.z_moffat_weight * moffat_sb(r, wings.z_moffat_alpha_arcsec, wings.z_moffat_beta)
    amp = {"g": wings.power_law_amplitude_g, "r": wings.power_law_amplitude_r}.get(band)
    if amp is None:
        raise ValueError(f"no documented PSF wings for band {band!r} (bands: {', '.join(BANDS)})")
    with np.errstate(divide="ignore"):
        return amp / np.maximum(r, 1e-12) ** 2


def extend_with_wings(core: np.ndarray, band: str, pixscale_arcsec: float, size: int, wings: PsfWingsConfig) -> np.ndarray:
    """Extend a centred PSF core image with the documented outer wings on a ``size`` grid.

    Radii ``R1..R4 = wings.blend_radii_arcsec``: the core inside R1, blended linearly into the
    inner Moffat (fitted to the core between ``wings.inner_fit_range_arcsec``) from R1 to R2,
    the inner Moffat alone from R2 to R3, blended linearly into :func:`outer_wing_sb` from R3 to
    R4 and the outer profile beyond. The analytic parts are evaluated at pixel centres times the
    pixel area. The result is renormalised to sum 1 over the grid (a truncated r^-2 wing holds
    a few tenths of a percent of the light per octave of radius, so the sum depends on ``size``)
    and re-centred. Needs a core reaching R2 (raises ``ValueError`` otherwise).
    """
    if size % 2 == 0 or size < 1:
        raise ValueError(f"size must be odd and positive, got {size}")
    r1, r2, r3, r4 = wings.blend_radii_arcsec
    core = normalise_and_centre(core)
    core_radius_arcsec = (core.shape[0] // 2) * pixscale_arcsec
    if core_radius_arcsec < r2:
        raise ValueError(f"PSF core radius {core_radius_arcsec:.2f}\" is smaller than the blend radius R2 = {r2}\"")
    lo, hi = wings.inner_fit_range_arcsec
    inner = fit_moffat(core, pixscale_arcsec, lo, hi)
    r = radius_grid_pix(size) * pixscale_arcsec
    area = pixscale_arcsec**2
    inner_img = moffat_sb(r, inner.alpha_arcsec, inner.beta) * area
    outer_img = outer_wing_sb(r, band, wings) * area
    w_core = np.clip((r2 - r) / (r2 - r1), 0.0, 1.0)
    w_outer = np.clip((r - r3) / (r4 - r3), 0.0, 1.0)
    model = w_core * crop_or_pad(core, size) + (1.0 - w_core) * ((1.0 - w_outer) * inner_img + w_outer * outer_img)
    return normalise_and_centre(model)


# --------------------------------------------------------------------------------------------
# truth record


@dataclass(frozen=True, eq=False)
class PsfSpec:
    """The PSF used for one stamp (or one brick), as the renderer and the truth record need it.

    ``model``: 'gaussian', 'moffat' or 'pixel'. ``source`` names where it came from, e.g.
    ``"coadd-psf:ls-dr10:brick=2447p120"``, ``"psfex:<file>:x=..:y=.."`` or
    ``"analytic:brick-psfsize"``. ``fwhm_arcsec`` per band in ``bands`` order: the requested FWHM
    for analytic models, the measured Gaussian-fit FWHM (:func:`gaussian_fwhm_arcsec`) for pixel
    PSFs. ``kernels`` per band (odd, sum 1, centred, on the stamp grid) for 'pixel'.
    ``fallback_bands`` lists bands whose survey PSF failed, so that the analytic model was used
    instead, with ``fallback_reason``: empty means no fallback.
    """

    model: str
    source: str
    bands: tuple[str, ...]
    fwhm_arcsec: tuple[float, ...]
    kernels: Optional[tuple[np.ndarray, ...]] = None
    moffat_beta: Optional[float] = None
    fallback_bands: tuple[str, ...] = ()
    fallback_reason: str = ""

    def __post_init__(self):
        if self.model not in ("gaussian", "moffat", "pixel"):
            raise ValueError(f"PsfSpec.model must be 'gaussian', 'moffat' or 'pixel', got {self.model!r}")
        if len(self.fwhm_arcsec) != len(self.bands):
            raise ValueError(f"PsfSpec.fwhm_arcsec has {len(self.fwhm_arcsec)} values for bands {self.bands}")
        if self.model == "pixel":
            if self.kernels is None or len(self.kernels) != len(self.bands):
                raise ValueError(f"PsfSpec with model 'pixel' needs one kernel per band {self.bands}")
            for b, k in zip(self.bands, self.kernels):
                if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
                    raise ValueError(f"PsfSpec kernel for band {b} must be square and odd, got shape {k.shape}")
        if self.model == "moffat" and self.moffat_beta is None:
            raise ValueError("PsfSpec with model 'moffat' needs moffat_beta")

    @property
    def is_fallback(self) -> bool:
        return bool(self.fallback_bands)

    def inject_kwargs(self) -> dict:
        """PSF keyword arguments of :func:`dhs_spark.sims.inject.inject_arc`: psf_model,
        psf_fwhm_arcsec (recorded in its truth as ``psf_fwhm_used_<band>_arcsec``), moffat_beta,
        and psf_kernels for 'pixel'."""
        kw = {"psf_model": self.model, "psf_fwhm_arcsec": list(self.fwhm_arcsec), "moffat_beta": self.moffat_beta}
        if self.model == "pixel":
            kw["psf_kernels"] = [np.asarray(k) for k in self.kernels]
        return kw

    def truth_fields(self) -> dict:
        """The truth-record columns of :mod:`dhs_spark.schema` this spec fills: psf_model,
        psf_source, psf_fwhm_used_<band>_arcsec, psf_fallback_analytic, psf_fallback_reason
        (which names the failed bands)."""
        out = {"psf_model": self.model, "psf_source": self.source}
        for b, f in zip(self.bands, self.fwhm_arcsec):
            out[f"psf_fwhm_used_{b}_arcsec"] = float(f)
        out["psf_fallback_analytic"] = self.is_fallback
        out["psf_fallback_reason"] = self.fallback_reason
        return out


def pixel_psf_spec(
    images: dict[str, np.ndarray],
    source: str,
    bands: Sequence[str],
    image_pixscale_arcsec: float,
    stamp_pixscale_arcsec: float = DR10_PIXSCALE_ARCSEC,
    kernel_size: Optional[int] = None,
    wings: Optional[PsfWingsConfig] = None,
) -> PsfSpec:
    """A 'pixel' :class:`PsfSpec` from per-band PSF images (any odd or even size).

    Each image is resampled to the stamp grid when its pixel scale differs, extended with the
    documented wings when ``wings`` is given and enabled (to ``kernel_size``, required then),
    otherwise cropped/padded to ``kernel_size`` when given, and normalised and centred. The
    recorded FWHM is the Gaussian-fit FWHM of the final kernel.
    """
    kernels, fwhms = [], []
    for b in bands:
        if b not in images:
            raise InputDataError(f"{source}: no PSF image for band {b}")
        k = resample_psf(images[b], image_pixscale_arcsec, stamp_pixscale_arcsec)
        if wings is not None and wings.enabled:
            if kernel_size is None:
                raise ValueError("kernel_size is required to extend a PSF with wings")
            k = extend_with_wings(k, b, stamp_pixscale_arcsec, kernel_size, wings)
        elif kernel_size is not None:
            k = normalise_and_centre(crop_or_pad(k, kernel_size))
        kernels.append(k)
        fwhms.append(gaussian_fwhm_arcsec(k, stamp_pixscale_arcsec))
    return PsfSpec(model="pixel", source=source, bands=tuple(bands), fwhm_arcsec=tuple(fwhms), kernels=tuple(kernels))


def psfex_psf_spec(
    ccds: dict[str, tuple[str, float, float]],
    bands: Sequence[str],
    kernel_size: Optional[int] = None,
    wings: Optional[PsfWingsConfig] = None,
    stamp_pixscale_arcsec: float = DR10_PIXSCALE_ARCSEC,
    ccd_pixscale_arcsec: float = DR10_PIXSCALE_ARCSEC,
) -> PsfSpec:
    """A 'pixel' :class:`PsfSpec` from legacypipe PsfEx models: ``ccds[band] = (path, x, y)``, the
    model file and the 0-based CCD pixel of the stamp centre. The source names each band's file
    and position, e.g. ``psfex:g=c4d_..._g_ls9-N11-psfex.fits@20,25;r=...``."""
    images = {b: psfex_image(ccds[b][0], ccds[b][1], ccds[b][2]) for b in bands if b in ccds}
    source = "psfex:" + ";".join(f"{b}={Path(ccds[b][0]).name}@{ccds[b][1]:.0f},{ccds[b][2]:.0f}" for b in bands if b in ccds)
    return pixel_psf_spec(images, source, bands, ccd_pixscale_arcsec, stamp_pixscale_arcsec, kernel_size, wings)


def analytic_psf_spec(
    model: str,
    fwhm_arcsec: Sequence[float],
    bands: Sequence[str],
    source: str,
    moffat_beta: Optional[float] = None,
    fallback_bands: Sequence[str] = (),
    fallback_reason: str = "",
) -> PsfSpec:
    """An analytic ('gaussian' or 'moffat') :class:`PsfSpec`; with ``fallback_bands`` it records
    that a survey PSF failed and this one replaced it (logged as a warning, never silent)."""
    if fallback_bands:
        log.warning("PSF fallback to analytic %s for %s (bands %s): %s", model, source, ",".join(fallback_bands), fallback_reason)
    return PsfSpec(
        model=model,
        source=source,
        bands=tuple(bands),
        fwhm_arcsec=tuple(float(f) for f in fwhm_arcsec),
        moffat_beta=moffat_beta,
        fallback_bands=tuple(fallback_bands),
        fallback_reason=fallback_reason,
    )
