"""Stamps cut from DR10 coadd bricks.

Layout (as on NERSC / the Legacy Survey portal / S3 mirrors)::

    <root>/coadd/<bri>/<brick>/legacysurvey-<brick>-image-<band>.fits.fz
    <root>/coadd/<bri>/<brick>/legacysurvey-<brick>-invvar-<band>.fits.fz
    <root>/coadd/<bri>/<brick>/legacysurvey-<brick>-maskbits.fits.fz

where ``<bri>`` is the first three characters of the brickname. ``.fits.fz`` files are
tile-compressed: the image is in HDU 1 (HDU 0 is an empty primary); plain ``.fits`` files
(HDU 0) are read too. Images are nanomaggies per pixel, invvar 1/nanomaggy^2, with a TAN WCS.

Centring: the object's pixel position (x, y) (0-based, from the brick WCS) is rounded to the
nearest pixel (ix, iy) and the stamp is ``image[iy - N//2 : iy - N//2 + N, ix - N//2 : ...]``,
so the object lies on stamp pixel (N//2, N//2) (numpy [row=y, col=x]) with the sub-pixel
remainder (x - ix, y - iy) in [-0.5, 0.5] recorded as ``offset_x_pix`` / ``offset_y_pix``; the
lens centre of an injection goes at (N//2 + offset_x, N//2 + offset_y). Axis 1 (x) runs west
(RA decreasing: DR10 coadds have CD1_1 < 0) and axis 0 (y) north.

Edges: a stamp that would reach outside the brick image is rejected with reason ``'edge'``,
not stitched from the neighbouring brick. DR10 coadds are 3600 px = 0.262 deg for 0.25 deg
bricks, so an object inside its own brick has >= ~80 px of image around it and a 101-px stamp
always fits; an 'edge' reject means a larger stamp or an object assigned to the wrong brick.

Errors (all :class:`~dhs_spark.errors.RejectError`, raised by :meth:`CoaddBrick.cutout` so that
the caller writes one reject row per object): ``missing_band`` (no image file for a band),
``missing_invvar``, ``corrupt_brick`` (a file cannot be read or decompressed; the detail names
it), ``edge``, ``off_brick`` (the WCS puts the object outside the image), ``nonfinite_pixels``.
A brick's files are read once, on the first cutout; a failure is remembered, so a bad brick
costs one read per partition, not one per object.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dhs_spark.errors import InputDataError, RejectError

log = logging.getLogger(__name__)

BANDS = ("g", "r", "z")

# DR10 maskbits (legacysurvey.org/dr10/bitmasks): bit number -> name.
MASKBITS = {
    "NPRIMARY": 0, "BRIGHT": 1, "SATUR_G": 2, "SATUR_R": 3, "SATUR_Z": 4, "ALLMASK_G": 5, "ALLMASK_R": 6,
    "ALLMASK_Z": 7, "WISEM1": 8, "WISEM2": 9, "BAILOUT": 10, "MEDIUM": 11, "GALAXY": 12, "CLUSTER": 13,
    "SATUR_I": 14, "ALLMASK_I": 15,
}  # fmt: skip


@dataclass
class Cutout:
    """One (C, N, N) stamp and its metadata.

    image: float32 nanomaggies per pixel, bands in ``bands`` order (g, r, z by default).
    invvar: float32 1/nanomaggy^2 per pixel, same shape, or None when not requested.
    maskbits: int32 (N, N) DR10 maskbits, or None where the source has none (the cutout service).
    The object lies on pixel (N//2, N//2) plus (offset_y_pix, offset_x_pix) (module docstring).
    bad_pixel_frac: fraction of the C*N*N pixels with invvar <= 0 (no data), or with a
    non-finite image value. maskbits_or: bitwise OR of maskbits over the stamp (0 if None);
    maskbits_center: maskbits at the centre pixel.
    """

    image: np.ndarray
    invvar: np.ndarray | None
    maskbits: np.ndarray | None
    bands: tuple[str, ...]
    ra: float
    dec: float
    brickname: str
    x_pix: float  # object position in the source image (0-based pixel coordinates)
    y_pix: float
    offset_x_pix: float
    offset_y_pix: float
    bad_pixel_frac: float
    maskbits_or: int
    maskbits_center: int
    pixscale_arcsec: float = 0.262
    source: str = "coadd"
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])


def bad_pixel_fraction(image: np.ndarray, invvar: np.ndarray | None) -> float:
    """Fraction of pixels with a non-finite image value or invvar <= 0 (no data)."""
    bad = ~np.isfinite(image)
    if invvar is not None:
        bad |= ~(invvar > 0)
    return float(bad.mean())


def coadd_brick_dir(root, brickname: str) -> str:
    """``<root>/coadd/<bri>/<brick>`` (root: local path or ``s3://bucket/prefix``)."""
    return f"{str(root).rstrip('/')}/coadd/{brickname[:3]}/{brickname}"


def coadd_file_name(brickname: str, kind: str, band: str | None = None) -> str:
    """``legacysurvey-<brick>-<kind>[-<band>].fits.fz`` (kind: image, invvar, maskbits)."""
    return f"legacysurvey-{brickname}-{kind}-{band}.fits.fz" if band else f"legacysurvey-{brickname}-{kind}.fits.fz"


def _fetch_s3(uri: str, local_dir: Path) -> Path | None:
    """Download one s3:// object into ``local_dir``; None when it does not exist."""
    import boto3  # heavy import kept inside: this runs on executors
    from botocore.exceptions import ClientError

    bucket, _, key = uri[len("s3://") :].partition("/")
    target = local_dir / key.rsplit("/", 1)[-1]
    if target.exists():
        return target
    try:
        boto3.client("s3").download_file(bucket, key, str(target) + ".part")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    os.replace(str(target) + ".part", target)
    return target


def _read_image_hdu(path: Path):
    """(data, header) of the image HDU: HDU 1 for tile-compressed files, else the first with data."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.data is not None and hdu.header.get("NAXIS", 0) >= 2:
                return np.asarray(hdu.data), hdu.header.copy()
    raise OSError("no image HDU")


class CoaddBrick:
    """The image, invvar and maskbits files of one DR10 coadd brick, read once, cut many times.

    ``brick_dir_or_uri``: the survey root (holding ``coadd/``), or the brick directory itself
    (its last component equal to ``brickname``); local path or ``s3://`` URI (files are then
    downloaded once into ``cache_dir``, which the caller owns and keeps; by default into a
    temporary directory of this brick's own, removed as soon as the brick is read, whether the
    read succeeds or not: the arrays live in memory, so an executor's disk holds at most the
    brick being read).
    """

    def __init__(self, brick_dir_or_uri, brickname: str, bands=BANDS, cache_dir=None):
        self.brickname = str(brickname)
        self.bands = tuple(bands)
        root = str(brick_dir_or_uri).rstrip("/")
        self.brick_dir = root if root.rsplit("/", 1)[-1] == self.brickname else coadd_brick_dir(root, self.brickname)
        self._cache_dir = cache_dir
        self._owns_cache_dir = False
        self._loaded = False
        self._error: RejectError | None = None
        self.image: np.ndarray | None = None
        self.invvar: np.ndarray | None = None
        self.maskbits: np.ndarray | None = None
        self.wcs = None
        self.missing_bands: tuple[str, ...] = ()

    # -- reading -----------------------------------------------------------------------------
    def _locate(self, name: str) -> Path | None:
        if self.brick_dir.startswith("s3://"):
            if self._cache_dir is None:
                import tempfile

                self._cache_dir = tempfile.mkdtemp(prefix=f"dhs-coadd-{self.brickname}-")
                self._owns_cache_dir = True
            local = Path(self._cache_dir)
            local.mkdir(parents=True, exist_ok=True)
            return _fetch_s3(f"{self.brick_dir}/{name}", local)
        for candidate in (name, name[: -len(".fz")]):  # also accept uncompressed .fits
            path = Path(self.brick_dir) / candidate
            if path.exists():
                return path
        return None

    def _read(self, path: Path, what: str):
        try:
            return _read_image_hdu(path)
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError, zlib errors... on corrupt files
            raise RejectError("corrupt_brick", f"{path} ({what}): {type(exc).__name__}: {exc}") from exc

    def load(self) -> None:
        """Read every file of the brick (called by the first :meth:`cutout`); errors are remembered."""
        if self._loaded:
            if self._error is not None:
                raise self._error
            return
        self._loaded = True
        try:
            self._load()
        except RejectError as exc:
            self._error = exc
            log.warning("brick %s unusable: %s", self.brickname, exc)
            raise
        finally:
            self._remove_downloads()

    def _remove_downloads(self) -> None:
        """Delete the temporary directory this brick downloaded into (never a caller's cache_dir)."""
        if self._owns_cache_dir and self._cache_dir is not None:
            import shutil

            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir, self._owns_cache_dir = None, False

    def _load(self) -> None:
        from astropy.wcs import WCS

        images, invvars, missing, shape, header = [], [], [], None, None
        for band in self.bands:
            img_path = self._locate(coadd_file_name(self.brickname, "image", band))
            if img_path is None:
                missing.append(band)
                continue
            img, hdr = self._read(img_path, f"image {band}")
            iv_path = self._locate(coadd_file_name(self.brickname, "invvar", band))
            if iv_path is None:
                raise RejectError("missing_invvar", f"brick {self.brickname} band {band}: no invvar file in {self.brick_dir}")
            iv, _ = self._read(iv_path, f"invvar {band}")
            if shape is None:
                shape, header = img.shape, hdr
            if img.shape != shape or iv.shape != shape:
                raise RejectError("corrupt_brick", f"{img_path}: image/invvar shapes {img.shape}/{iv.shape} differ from {shape}")
            images.append(img.astype(np.float32, copy=False))
            invvars.append(iv.astype(np.float32, copy=False))
        self.missing_bands = tuple(missing)
        if header is None:
            raise RejectError("missing_band", f"brick {self.brickname}: no image file for any of {self.bands} in {self.brick_dir}")
        try:
            self.wcs = WCS(header)
        except Exception as exc:
            raise RejectError("corrupt_brick", f"brick {self.brickname}: bad WCS in image header ({exc})") from exc
        self.image = np.stack(images) if not missing else None
        self.invvar = np.stack(invvars) if not missing else None
        mb_path = self._locate(coadd_file_name(self.brickname, "maskbits"))
        if mb_path is not None:
            mb, _ = self._read(mb_path, "maskbits")
            if mb.shape != shape:
                raise RejectError("corrupt_brick", f"{mb_path}: maskbits shape {mb.shape} differs from image {shape}")
            self.maskbits = mb.astype(np.int32, copy=False)
        self.shape = shape

    # -- cutting -----------------------------------------------------------------------------
    def pixel_of(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel coordinates (x, y) of sky positions (degrees) in this brick's image."""
        self.load()
        x, y = self.wcs.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
        return x, y

    def cutout(self, ra: float, dec: float, size: int = 101) -> Cutout:
        """The (C, size, size) stamp centred on (ra, dec) degrees; RejectError as in the module docstring."""
        size = int(size)
        if size < 1:
            raise InputDataError(f"cutout size must be >= 1 (got {size})")
        self.load()
        if self.missing_bands:
            raise RejectError("missing_band", f"brick {self.brickname}: no image file for band(s) {','.join(self.missing_bands)} in {self.brick_dir}")
        xs, ys = self.pixel_of(ra, dec)
        x, y = float(xs[0]), float(ys[0])
        ny, nx = self.shape
        if not (np.isfinite(x) and np.isfinite(y)) or not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
            raise RejectError("off_brick", f"({ra:.6f}, {dec:.6f}) falls at pixel ({x:.1f}, {y:.1f}), outside brick {self.brickname} ({nx}x{ny})")
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        x0, y0 = ix - size // 2, iy - size // 2
        if x0 < 0 or y0 < 0 or x0 + size > nx or y0 + size > ny:
            raise RejectError("edge", f"({ra:.6f}, {dec:.6f}) at pixel ({ix}, {iy}) is within {size // 2} px of the edge of brick {self.brickname} ({nx}x{ny})")
        sl = (slice(y0, y0 + size), slice(x0, x0 + size))
        image = np.ascontiguousarray(self.image[(slice(None),) + sl])
        invvar = np.ascontiguousarray(self.invvar[(slice(None),) + sl])
        if not np.isfinite(image).all():
            raise RejectError("nonfinite_pixels", f"brick {self.brickname} ({ra:.6f}, {dec:.6f}): {int((~np.isfinite(image)).sum())} non-finite pixels")
        maskbits = None if self.maskbits is None else np.ascontiguousarray(self.maskbits[sl])
        return Cutout(
            image=image,
            invvar=invvar,
            maskbits=maskbits,
            bands=self.bands,
            ra=float(ra),
            dec=float(dec),
            brickname=self.brickname,
            x_pix=x,
            y_pix=y,
            offset_x_pix=x - ix,
            offset_y_pix=y - iy,
            bad_pixel_frac=bad_pixel_fraction(image, invvar),
            maskbits_or=0 if maskbits is None else int(np.bitwise_or.reduce(maskbits, axis=None)),
            maskbits_center=0 if maskbits is None else int(maskbits[size // 2, size // 2]),
            source="coadd",
        )
