"""Coadd PSFs from the Legacy Survey viewer's ``coadd-psf/`` endpoint, one request per brick.

``GET {base_url}coadd-psf/?ra=..&dec=..&layer=ls-dr10`` returns a FITS file with one image HDU per
band; each header carries ``BAND`` and the data is the coadd's PSF core at that position on the
coadd pixel grid (0.262"/pixel unless the header's ``CD1_1``/``CDELT1`` says otherwise).

The HTTP side (timeouts, retries with backoff on 5xx and timeouts, polite rate limit, on-disk
cache keyed by request) is :class:`dhs_spark.survey.http.CachedHttpClient`, shared with the
cutout-service client. :class:`BrickPsfCache` asks once per brick, at the brick centre, and
remembers the answer (or the failure) for the life of the process, so a Spark partition makes
one request per brick whatever its number of stamps; the client's disk cache serves later
partitions on the same node.

A malformed file, or one without a requested band, raises :class:`CoaddPsfError` (an
:class:`~dhs_spark.errors.InputDataError`) naming the band and the position. :func:`brick_psf_spec` turns that into the configured analytic
PSF for the brick, flagged in the truth record (``psf_fallback_analytic``, ``psf_fallback_reason``) and
logged; never silent.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from dhs_spark.config.experiment import BANDS, PsfWingsConfig
from dhs_spark.errors import DHSError, InputDataError
from dhs_spark.survey.psf import DR10_PIXSCALE_ARCSEC, PsfSpec, analytic_psf_spec, pixel_psf_spec

log = logging.getLogger(__name__)

COADD_PSF_PATH = "coadd-psf/"
DEFAULT_LAYER = "ls-dr10"


class CoaddPsfError(InputDataError):
    """A coadd PSF that cannot be used; ``bands`` are the bands at fault (all requested bands
    when the whole file or request failed). The message names the position and the bands."""

    def __init__(self, message: str, bands: Sequence[str] = ()):
        self.bands = tuple(bands)
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.bands))


@dataclass(frozen=True, eq=False)
class CoaddPsf:
    """Per-band coadd PSF images at (ra_deg, dec_deg); ``pixscale_arcsec`` their pixel size."""

    ra_deg: float
    dec_deg: float
    layer: str
    images: dict
    pixscale_arcsec: float


def _where(ra_deg: float, dec_deg: float, layer: str) -> str:
    return f"coadd-psf {layer} at ra={ra_deg:.6f}, dec={dec_deg:.6f}"


def _pixscale_arcsec(header, default: float) -> float:
    for key in ("CD1_1", "CDELT1"):
        if key in header and header[key]:
            return abs(float(header[key])) * 3600.0
    return default


def parse_coadd_psf_fits(
    data: bytes, ra_deg: float, dec_deg: float, bands: Sequence[str] = BANDS, layer: str = DEFAULT_LAYER,
    default_pixscale_arcsec: float = DR10_PIXSCALE_ARCSEC, require_bands: bool = True,
) -> CoaddPsf:
    """Parse a coadd-psf FITS body into per-band images (float64, as served).

    Raises :class:`CoaddPsfError` naming the position (and the band where one is at fault) when
    the body is not FITS (or is truncated), a band HDU is not a finite 2-D image with positive
    flux, the HDUs disagree on pixel scale, or (with ``require_bands``) a requested band is missing.
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    where = _where(ra_deg, dec_deg, layer)
    bands = tuple(bands)  # "grz" -> ("g", "r", "z"): membership tests below are per band
    images: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    try:
        with warnings.catch_warnings():
            # astropy only warns about a truncated file (and drops the damaged HDU): make it an error
            warnings.simplefilter("error", AstropyWarning)
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                hdul.readall()
                hdul.verify("exception")
                for hdu in hdul:
                    band = str(hdu.header.get("BAND", "")).strip().lower()
                    if band not in bands:
                        continue
                    arr = hdu.data
                    if arr is None or np.ndim(arr) != 2:
                        raise CoaddPsfError(f"{where}: band {band}: HDU data is not a 2-D image (shape {np.shape(arr)})", [band])
                    arr = np.array(arr, dtype=np.float64)
                    if not np.all(np.isfinite(arr)) or not arr.sum() > 0:
                        raise CoaddPsfError(f"{where}: band {band}: PSF image has non-finite pixels or no positive flux", [band])
                    images[band] = arr
                    scales[band] = _pixscale_arcsec(hdu.header, default_pixscale_arcsec)
    except CoaddPsfError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, VerifyError, TypeError, ... on bad bytes
        raise CoaddPsfError(f"{where}: malformed FITS ({type(exc).__name__}: {exc}); bands {','.join(bands)} unavailable", bands) from None
    missing = [b for b in bands if b not in images]
    if missing and require_bands:
        found = ",".join(sorted(images)) or "none"
        raise CoaddPsfError(f"{where}: band {','.join(missing)} missing from the coadd-psf file (bands found: {found})", missing)
    if len(set(round(s, 6) for s in scales.values())) > 1:
        raise CoaddPsfError(f"{where}: bands disagree on pixel scale {scales}", bands)
    return CoaddPsf(ra_deg, dec_deg, layer, images, next(iter(scales.values()), default_pixscale_arcsec))


class CoaddPsfClient:
    """Fetch coadd PSFs through a :class:`~dhs_spark.survey.http.CachedHttpClient`.

    ``http``: the shared client (its base URL is the viewer root, e.g.
    ``https://www.legacysurvey.org/viewer/``); ``layer``: the survey layer (``ls-dr10``).
    """

    def __init__(self, http, layer: str = DEFAULT_LAYER, default_pixscale_arcsec: float = DR10_PIXSCALE_ARCSEC):
        self.http = http
        self.layer = layer
        self.default_pixscale_arcsec = default_pixscale_arcsec

    def fetch(self, ra_deg: float, dec_deg: float, bands: Sequence[str] = BANDS) -> CoaddPsf:
        """The coadd PSFs at (ra_deg, dec_deg); raises :class:`CoaddPsfError` naming the position
        when the request fails after the client's retries or the answer is unusable."""
        bands = tuple(bands)
        params = {"ra": f"{ra_deg:.6f}", "dec": f"{dec_deg:.6f}", "layer": self.layer}

        def usable(body: bytes) -> None:
            # a body that is not FITS, truncated, or with unusable band data is retried and never
            # cached; a valid file that lacks a band is the server's answer: cached, not retried
            parse_coadd_psf_fits(body, ra_deg, dec_deg, bands, self.layer, self.default_pixscale_arcsec, require_bands=False)

        try:
            body = self.http.get_bytes(COADD_PSF_PATH, params, validate=usable)
        except CoaddPsfError:
            raise
        except (DHSError, OSError) as exc:
            raise CoaddPsfError(f"{_where(ra_deg, dec_deg, self.layer)}: request failed, bands {','.join(bands)} unavailable: {exc}", bands) from None
        return parse_coadd_psf_fits(body, ra_deg, dec_deg, bands, self.layer, self.default_pixscale_arcsec)


class BrickPsfCache:
    """Coadd PSFs per brick, fetched once at the brick centre and remembered (failures too).

    Holds at most ``max_bricks`` bricks (least recently used dropped first). ``requests`` counts
    the fetches made, for tests and logs.
    """

    def __init__(self, client: CoaddPsfClient, max_bricks: int = 512):
        self.client = client
        self.max_bricks = max_bricks
        self.requests = 0
        self._memo: dict = {}

    def get(self, brickname: str, ra_deg: float, dec_deg: float, bands: Sequence[str] = BANDS) -> CoaddPsf:
        """The brick's coadd PSFs (``ra_deg``, ``dec_deg``: the brick centre); raises the
        brick's :class:`CoaddPsfError` again on every call after a failed fetch."""
        key = (brickname, tuple(bands))
        if key in self._memo:
            value = self._memo.pop(key)
            self._memo[key] = value  # most recently used last
        else:
            self.requests += 1
            try:
                value = self.client.fetch(ra_deg, dec_deg, bands)
            except CoaddPsfError as exc:
                value = CoaddPsfError(f"brick {brickname}: {exc}", exc.bands)
            self._memo[key] = value
            while len(self._memo) > self.max_bricks:
                self._memo.pop(next(iter(self._memo)))
        if isinstance(value, CoaddPsfError):
            raise value
        return value


def brick_psf_spec(
    cache: BrickPsfCache,
    brickname: str,
    ra_deg: float,
    dec_deg: float,
    bands: Sequence[str],
    fallback_fwhm_arcsec: Sequence[float],
    fallback_model: str = "gaussian",
    moffat_beta: Optional[float] = None,
    kernel_size: int = 63,
    wings: Optional[PsfWingsConfig] = None,
    stamp_pixscale_arcsec: float = DR10_PIXSCALE_ARCSEC,
) -> PsfSpec:
    """The PSF of one brick for injection: its coadd PSF as a 'pixel' :class:`PsfSpec`
    (resampled to the stamp grid, extended with ``wings`` when given and enabled, ``kernel_size``
    odd), or, when the coadd PSF fails, the analytic ``fallback_model`` with
    ``fallback_fwhm_arcsec`` (the brick's psfsize per band) flagged as a fallback with the reason.
    """
    bands = tuple(bands)
    try:
        coadd = cache.get(brickname, ra_deg, dec_deg, bands)
        return pixel_psf_spec(
            coadd.images,
            source=f"coadd-psf:{coadd.layer}:brick={brickname}",
            bands=bands,
            image_pixscale_arcsec=coadd.pixscale_arcsec,
            stamp_pixscale_arcsec=stamp_pixscale_arcsec,
            kernel_size=kernel_size,
            wings=wings,
        )
    except ValueError as exc:  # CoaddPsfError, or a PSF image pixel_psf_spec cannot use
        failed = tuple(getattr(exc, "bands", ())) or tuple(bands)
        return analytic_psf_spec(
            fallback_model,
            fallback_fwhm_arcsec,
            bands,
            source=f"analytic:brick-psfsize:brick={brickname}",
            moffat_beta=moffat_beta,
            fallback_bands=failed,
            fallback_reason=f"coadd-psf failed for bands {','.join(failed)}: {exc}",
        )
