"""Build the COSMOS source library (HDF5) from a GalSim galaxy catalogue.

Python API: :func:`draw_catalog` (galaxies in memory) and :func:`build_library` (writes the file);
the command line is ``dhs cosmos build`` (:mod:`dhs_spark.sims.cosmos_cli`).

Each galaxy is drawn on a fixed S x S stamp at ``pixel_scale_arcsec`` (0.03"), its centre on the
stamp's true centre ((S - 1) / 2 in 0-based pixels), normalised to unit total flux in the stamp.

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
  (native vs deconvolved on the AEGIS galaxies, after a 1" survey PSF).
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
import logging
import math
import os
from typing import Optional

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import ConfigError, InputDataError
from dhs_spark.sims.cosmos import LIBRARY_COLUMNS, aperture_snr, clumpiness, half_light_radius_arcsec

log = logging.getLogger(__name__)

BUILDER_VERSION = "cosmos-build-2"

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


def _draw_real(rgc, index: int, ident: str, size: int, pixscale: float, treatment: str, target_fwhm: float, whiten: bool, seed: int):
    """(image, true flux, noise variance per pixel, psf fwhm, treatment used) of one RealGalaxyCatalog entry."""
    import galsim

    gal_file = rgc.cat["GAL_FILENAME"][index]
    gal_path = os.path.join(rgc.image_dir, gal_file)
    if not os.path.isfile(gal_path):
        raise InputDataError(f"COSMOS galaxy {ident}: image file not found: {gal_path}")
    psf_path = os.path.join(rgc.image_dir, rgc.cat["PSF_FILENAME"][index])
    if treatment == "auto":
        treatment = "deconvolve" if os.path.isfile(psf_path) else "hst_native"
    if treatment == "deconvolve":
        if not os.path.isfile(psf_path):
            raise InputDataError(f"COSMOS galaxy {ident}: PSF file not found (needed by psf_treatment='deconvolve'): {psf_path}")
        raw = rgc.getGalImage(index).array
        if not np.all(np.isfinite(raw)):
            raise InputDataError(f"COSMOS galaxy {ident}: non-finite pixels in {gal_path}")
        rng = galsim.BaseDeviate(stable_hash64("cosmos-build-noise", int(seed), ident) & 0x7FFFFFFF)
        real = galsim.RealGalaxy(rgc, index=index, rng=rng)
        final = galsim.Convolve(real, galsim.Gaussian(fwhm=target_fwhm))
        drawn = final.drawImage(nx=size, ny=size, scale=pixscale)
        variance = float(final.noise.getVariance())
        if whiten:
            variance = float(drawn.whitenNoise(final.noise))
        return drawn.array.astype(np.float64), float(real.flux), variance, float(target_fwhm), treatment
    if treatment != "hst_native":
        raise ConfigError("psf_treatment", f"must be one of {PSF_TREATMENTS}", treatment)
    if not math.isclose(float(rgc.cat["PIXEL_SCALE"][index]), pixscale, rel_tol=1e-6):
        raise InputDataError(
            f"COSMOS galaxy {ident}: catalogue pixel scale {rgc.cat['PIXEL_SCALE'][index]} differs from the requested {pixscale} "
            "and psf_treatment='hst_native' does not resample"
        )
    raw = rgc.getGalImage(index).array.astype(np.float64)
    if not np.all(np.isfinite(raw)):
        raise InputDataError(f"COSMOS galaxy {ident}: non-finite pixels in {gal_path}")
    return _center_crop(raw, size), float(raw.sum()), float(rgc.cat["NOISE_VARIANCE"][index]), HST_F814W_PSF_FWHM_ARCSEC, treatment


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
) -> DrawnLibrary:
    """Draw the galaxies of a GalSim catalogue onto unit-flux stamps (see the module doc).

    ``catalog``: a RealGalaxyCatalog FITS file (absolute, or relative to ``galsim_dir``, where its
    images and PSFs live). ``gal_type``: 'real' (the HST images) or 'parametric' (COSMOSCatalog
    fits; ``exclusion_level`` as in GalSim). ``n_sources``: how many (chosen by ``seed``), all
    when None.
    """
    import galsim

    if gal_type not in GAL_TYPES:
        raise ConfigError("gal_type", f"must be one of {GAL_TYPES}", gal_type)
    if psf_treatment not in PSF_TREATMENTS:
        raise ConfigError("psf_treatment", f"must be one of {PSF_TREATMENTS}", psf_treatment)
    if stamp_size < 8:
        raise ConfigError("stamp_size", "must be >= 8 pixels", stamp_size)
    if not pixel_scale_arcsec > 0:
        raise ConfigError("pixel_scale_arcsec", "must be > 0", pixel_scale_arcsec)
    path, image_dir = _resolve_catalog(catalog, galsim_dir)
    zphot = _zphot_by_ident(path)

    rows = []
    if gal_type == "real":
        try:
            rgc = galsim.RealGalaxyCatalog(os.path.basename(path), dir=os.path.dirname(os.path.abspath(path)))
        except Exception as exc:  # GalSim raises OSError/KeyError/GalSimError for a bad file
            raise InputDataError(f"COSMOS catalogue {path} could not be read as a GalSim RealGalaxyCatalog: {exc}") from exc
        rgc.image_dir = image_dir
        chosen = _choose(rgc.nobjects, n_sources, seed)
        for index in chosen:
            ident = str(rgc.ident[index])
            image, true_flux, variance, psf_fwhm, used = _draw_real(
                rgc, int(index), ident, stamp_size, pixel_scale_arcsec, psf_treatment, target_psf_fwhm_arcsec, whiten, seed
            )
            rows.append((ident, float(rgc.cat["MAG"][index]), zphot.get(ident, math.nan), image, true_flux, variance, psf_fwhm))
            log.info("drew COSMOS galaxy %s (%s)", ident, used)
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
            rows.append((ident, float(record["mag_auto"]), z, drawn.array.astype(np.float64), float(gal.flux), 0.0, float(target_psf_fwhm_arcsec)))

    n = len(rows)
    images = np.empty((n, stamp_size, stamp_size), dtype=np.float32)
    meta = {name: np.empty(n) for name in LIBRARY_COLUMNS}
    meta["ident"] = np.array([r[0] for r in rows])
    for k, (ident, mag, z, image, true_flux, variance, psf_fwhm) in enumerate(rows):
        stamp_flux = image.sum()
        if not np.all(np.isfinite(image)) or not stamp_flux > 0:
            raise InputDataError(f"COSMOS galaxy {ident} from {path}: drawn stamp is non-finite or has non-positive flux {stamp_flux!r}")
        unit = image / stamp_flux
        hlr = half_light_radius_arcsec(unit, pixel_scale_arcsec)
        noise_sigma = math.sqrt(variance) / stamp_flux
        images[k] = unit
        meta["mag"][k] = mag
        meta["zphot"][k] = z
        meta["half_light_radius_arcsec"][k] = hlr
        meta["clumpiness"][k] = clumpiness(unit, pixel_scale_arcsec, hlr)
        meta["flux"][k] = true_flux
        meta["flux_fraction_in_stamp"][k] = stamp_flux / true_flux
        meta["noise_sigma"][k] = noise_sigma
        meta["snr"][k] = aperture_snr(unit, pixel_scale_arcsec, hlr, noise_sigma)
        meta["psf_fwhm_arcsec"][k] = psf_fwhm
        meta["pixel_scale_arcsec"][k] = pixel_scale_arcsec
    attrs = {
        "pixel_scale_arcsec": float(pixel_scale_arcsec),
        "stamp_size": int(stamp_size),
        "n_sources": int(n),
        "builder_version": BUILDER_VERSION,
        "galsim_version": galsim.__version__,
        "source_catalog": os.path.basename(path),
        "source_catalog_sha256": _sha256(path),
        "gal_type": gal_type,
        "psf_treatment": psf_treatment if gal_type == "real" else "parametric fits convolved with the target Gaussian",
        "target_psf_fwhm_arcsec": float(target_psf_fwhm_arcsec),
        "whiten": bool(whiten),
        "seed": int(seed),
        "flux_units": "flux: catalogue image units (HST counts) of the whole galaxy; images: stamp normalised to sum 1",
        "noise_sigma_units": "per-pixel noise sigma of the unit-flux stamp",
        "half_light_radius_definition": HLR_DEFINITION,
        "clumpiness_definition": CLUMPINESS_DEFINITION,
        "snr_definition": SNR_DEFINITION,
    }
    return DrawnLibrary(images=images, meta=meta, pixscale_arcsec=float(pixel_scale_arcsec), attrs=attrs)


def write_library(drawn: DrawnLibrary, output_path: str) -> None:
    """Write ``drawn`` as an HDF5 library: ``images`` (N, S, S) float32, gzip, one chunk per galaxy;
    one 1-D dataset per metadata column; file attributes. Written to a temporary name then renamed."""
    import h5py

    n, size, _ = drawn.images.shape
    tmp = f"{output_path}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.create_dataset(
            "images",
            data=drawn.images,
            chunks=(1, size, size),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            track_times=False,
        )
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
    os.replace(tmp, output_path)


def build_library(output_path: str, catalog: str, galsim_dir: Optional[str] = None, **options) -> DrawnLibrary:
    """Draw a catalogue (``options`` as in :func:`draw_catalog`) and write it to ``output_path``."""
    drawn = draw_catalog(catalog, galsim_dir=galsim_dir, **options)
    write_library(drawn, output_path)
    log.info("wrote %d COSMOS sources to %s", drawn.images.shape[0], output_path)
    return drawn
