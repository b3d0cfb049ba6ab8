"""Client of the Legacy Survey viewer's ``fits-cutout`` endpoint (layer ls-dr10).

Request: ``GET {base_url}/fits-cutout?ra=..&dec=..&size=N&layer=ls-dr10&pixscale=0.262&bands=grz``
plus ``&invvar`` for the inverse-variance maps. Response: a FITS file whose HDU 0 is the image
cube (C, N, N) float32 nanomaggies with a ``BANDS`` header keyword (e.g. ``'grz'``) and, with
``invvar``, HDU 1 the invvar cube (C, N, N) in 1/nanomaggy^2. The six real cutouts in
``shared/data/cutouts_dr10`` are this HDU 0, transposed to (N, N, C).

Centring: the service centres an odd-sized cutout on pixel (N//2, N//2) (CRPIX = (N+1)/2). For an
even N the client asks for N+1 pixels and drops the last row and column, so the object is on
pixel (N//2, N//2) for every N, as for coadd cutouts. The service resamples to put (ra, dec) on
that pixel centre, so the sub-pixel offset is 0.

Failures: a body that is not a FITS file, is truncated, or lacks a requested band or the invvar
HDU becomes :class:`~dhs_spark.errors.RejectError` with reason ``corrupt_fits``,
``missing_band`` or ``missing_invvar``; a request that still fails after the retries becomes
``download_failed``. Zero-coverage pixels (invvar 0) are counted in ``bad_pixel_frac``;
NaN pixels give ``nonfinite_pixels``.
"""

from __future__ import annotations

import io

import numpy as np

from dhs_spark.errors import RejectError
from dhs_spark.survey.coadds import Cutout, bad_pixel_fraction
from dhs_spark.survey.http import CachedHttpClient, HttpRequestError

DEFAULT_BASE_URL = "https://www.legacysurvey.org/viewer"
DEFAULT_LAYER = "ls-dr10"
DEFAULT_PIXSCALE_ARCSEC = 0.262


class CorruptFitsError(ValueError):
    """The body is not a usable cutout FITS; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def parse_cutout_fits(body: bytes, bands: str, size: int, with_invvar: bool) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(image (C,N,N) float32, invvar or None, header dict) of a fits-cutout body, in ``bands`` order.

    Raises :class:`CorruptFitsError` for a truncated/corrupt file, a wrong shape, a missing band
    or a missing invvar HDU.
    """
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(body), memmap=False) as hdul:
            hdul.verify("exception")
            if hdul[0].data is None:
                raise CorruptFitsError("corrupt_fits", "HDU 0 holds no image")
            image = np.asarray(hdul[0].data, dtype=np.float32)
            header = dict(hdul[0].header)
            invvar = None
            if with_invvar:
                if len(hdul) < 2 or hdul[1].data is None:
                    raise CorruptFitsError("missing_invvar", "no invvar cube in HDU 1")
                invvar = np.asarray(hdul[1].data, dtype=np.float32)
    except CorruptFitsError:
        raise
    except Exception as exc:  # astropy: OSError/ValueError/VerifyError/TypeError on truncated or garbled files
        raise CorruptFitsError("corrupt_fits", f"{type(exc).__name__}: {exc}") from exc
    if image.ndim == 2:
        image = image[None]
    got_bands = str(header.get("BANDS", "")).strip()
    if len(got_bands) != image.shape[0]:
        raise CorruptFitsError("corrupt_fits", f"BANDS header {got_bands!r} does not match {image.shape[0]} image planes")
    if image.shape[1:] != (size, size):
        raise CorruptFitsError("corrupt_fits", f"image planes are {image.shape[1:]}, expected ({size}, {size})")
    if invvar is not None:
        invvar = invvar[None] if invvar.ndim == 2 else invvar
        if invvar.shape != image.shape:
            raise CorruptFitsError("corrupt_fits", f"invvar shape {invvar.shape} differs from image shape {image.shape}")
    missing = [b for b in bands if b not in got_bands]
    if missing:
        raise CorruptFitsError("missing_band", f"band(s) {','.join(missing)} not in BANDS={got_bands!r}")
    order = [got_bands.index(b) for b in bands]
    image = np.ascontiguousarray(image[order])
    invvar = None if invvar is None else np.ascontiguousarray(invvar[order])
    return image, invvar, header


class CutoutServiceClient:
    """Fetch (C, N, N) grz cutouts (and invvar) from the Legacy Survey viewer; see the module docstring.

    ``cache_dir``: on-disk cache of raw FITS bodies (None: no cache). The other arguments are
    those of :class:`~dhs_spark.survey.http.CachedHttpClient`; the defaults are polite for the
    public service (two requests per second at most).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        cache_dir=None,
        layer: str = DEFAULT_LAYER,
        pixscale_arcsec: float = DEFAULT_PIXSCALE_ARCSEC,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        min_interval_s: float = 0.5,
        http: CachedHttpClient | None = None,
    ):
        self.layer = layer
        self.pixscale_arcsec = float(pixscale_arcsec)
        self.http = http or CachedHttpClient(base_url, cache_dir, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s, min_interval_s=min_interval_s)

    def request_params(self, ra: float, dec: float, size: int, bands: str, with_invvar: bool) -> dict:
        """Query parameters of one cutout request (``size`` already odd)."""
        params = {"ra": f"{float(ra):.7f}", "dec": f"{float(dec):.7f}", "size": int(size), "layer": self.layer, "pixscale": f"{self.pixscale_arcsec:g}", "bands": bands}
        if with_invvar:
            params["invvar"] = ""  # the viewer checks the key's presence
        return params

    def fetch(self, ra: float, dec: float, size: int = 101, bands: str = "grz", with_invvar: bool = True, brickname: str = "") -> Cutout:
        """The cutout centred on (ra, dec) degrees as a :class:`~dhs_spark.survey.coadds.Cutout`."""
        size = int(size)
        if size < 1:
            raise ValueError(f"cutout size must be >= 1 (got {size})")
        bands = "".join(bands)
        req_size = size if size % 2 else size + 1
        params = self.request_params(ra, dec, req_size, bands, with_invvar)
        parsed = {}

        def validate(body: bytes) -> None:
            parsed["value"] = parse_cutout_fits(body, bands, req_size, with_invvar)

        try:
            self.http.get_bytes("fits-cutout", params, validate=validate)
        except CorruptFitsError as exc:
            raise RejectError(exc.reason, f"cutout ({ra:.6f}, {dec:.6f}) from {self.http.url('fits-cutout', params)}: {exc.detail}") from exc
        except HttpRequestError as exc:
            raise RejectError("download_failed", str(exc)) from exc
        image, invvar, header = parsed["value"]
        image, invvar = image[:, :size, :size], None if invvar is None else invvar[:, :size, :size]
        if not np.isfinite(image).all():
            raise RejectError("nonfinite_pixels", f"cutout ({ra:.6f}, {dec:.6f}): {int((~np.isfinite(image)).sum())} non-finite pixels")
        return Cutout(
            image=np.ascontiguousarray(image),
            invvar=None if invvar is None else np.ascontiguousarray(invvar),
            maskbits=None,
            bands=tuple(bands),
            ra=float(ra),
            dec=float(dec),
            brickname=brickname,
            x_pix=float(size // 2),
            y_pix=float(size // 2),
            offset_x_pix=0.0,
            offset_y_pix=0.0,
            bad_pixel_frac=bad_pixel_fraction(image, invvar),
            maskbits_or=0,
            maskbits_center=0,
            pixscale_arcsec=self.pixscale_arcsec,
            source="cutout_service",
            meta={"url": self.http.url("fits-cutout", params), "layer": self.layer},
        )
