"""Phase 4c: cut each manifest row's host from its coadd brick, inject the arc, write stamps.

The per-partition work is :func:`stamp_batches`, a pure function from Arrow record batches of
manifest rows to Arrow record batches of output rows, wrapped by :func:`write_stamps`, which
writes the stamp rows (no Spark import; tests and the benchmark run both directly). Spark
(:func:`produce`) only repartitions the manifest by brick, sorts each partition by (brickname,
task_id) so that every brick is opened once per partition, and calls :func:`write_stamps` through
``mapInArrow`` with small Arrow batches (``spark_session.ARROW_MAX_RECORDS_PER_BATCH``).

Every manifest row gives exactly one output row: a stamp (STAMP_COLUMNS of ``dhs_spark.schema``)
or a reject (REJECT_COLUMNS) carrying the reason of the :class:`~dhs_spark.errors.RejectError`
or :class:`~dhs_spark.errors.InputDataError` that stopped it. Other exceptions are bugs and fail
the task (Spark retries it, then the job). So manifest rows = stamps + rejects, checked on the
written data before the stage commits.

Writing: the worker writes its stamps itself (:mod:`dhs_spark.jobs.stamp_writer`: pyarrow, one
Parquet file per task and split, moved into place when the task's rows are all written) and
yields Spark only one small row per manifest row (:data:`SUMMARY_COLUMNS`: task id, stamp or
reject, reason). One pass: Spark writes the rejects from those rows, and the stage counts
stamps and rejects back from what is on disk before it commits. (Returning the 49 KB image rows
to the JVM for parquet-mr cost ~0.4-0.6 ms of JVM CPU per stamp; see the writer's docstring.)

Determinism: a row's bytes depend only on the row (its ``task_seed`` drives the COSMOS galaxy
choice and the arc's Poisson noise), never on the partition or attempt, so 1 or 8 partitions
and retried tasks write identical stamps. File names follow the partition id
(``part-00003-c000.parquet``), so the same partition count gives the same files in the same row
order on every run.

Lens placement: the cutout puts the host on pixel (N//2, N//2) up to a sub-pixel remainder
(``Cutout.offset_x_pix``, ``offset_y_pix``); the lens centre (and the source, whose manifest
position is relative to the lens) is shifted by that remainder times the pixel scale, so the
lens sits exactly on the host. x is numpy axis 1, y axis 0.

COSMOS sources: the library file reaches executors through ``SparkContext.addFile`` (any
``file:``/``s3:`` URI) and is opened once per Python worker (``COSMOSLoaderV2``'s per-process
cache). COSMOS arcs are rendered with at least ``COSMOS_OVERSAMPLE`` (8) sub-pixels per axis
whatever ``data.oversample`` says (4 leaves 1.5 % flux errors on real galaxies); the stamp records
the value used in ``render_oversample``.

PSF (:class:`_BrickPsf`, one per partition): 'gaussian'/'moffat' use the brick's psfsize per band
(``psf_source`` ``analytic:brick-psfsize:brick=<brick>``). 'pixel' takes the brick's coadd PSF
from the Legacy Survey viewer at ``data.coadd_psf_url``: one :class:`BrickPsfCache` per partition
fetches it once per brick at the brick centre (plus ``data.psf_cache_dir`` on disk), resampled to
the stamp grid, extended with ``data.psf_wings`` to an odd kernel of ``stamp_size - 1`` pixels,
its measured FWHM recorded. A brick whose coadd PSF fails (HTTP errors past the retries, a
malformed file, a missing or unusable band) falls back to ``data.psf_fallback_model`` with the
brick's psfsize, logged and flagged (``psf_fallback_analytic``, ``psf_fallback_reason`` naming the
bands and position). Instead of the service, ``psf_kernels_fn`` (``--psf-kernels-fn``) may give
per-stamp kernels (``psf_source`` = the hook's name, FWHM measured). Every injected stamp carries
``spec.truth_fields()`` of :class:`dhs_spark.survey.psf.PsfSpec`. A control has no arc, hence no
PSF and no render: its psf_model, psf_source, psf_fwhm_used_<b>_arcsec, psf_fallback_analytic,
psf_fallback_reason and render_oversample are null (the brick's seeing stays in the manifest's
psf_fwhm_<b>_arcsec, as for every row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa

from dhs_spark.config.experiment import PsfWingsConfig
from dhs_spark.errors import ConfigError, InputDataError, RejectError
from dhs_spark.jobs import paths as P
from dhs_spark.jobs.stamp_writer import FILE_COLUMNS, SplitStampWriter, stamp_file_schema
from dhs_spark.schema import IMAGE_DTYPE, PIPELINE_VERSION, REJECT_COLUMNS, STAMP_COLUMNS, Column, arrow_schema, spark_schema
from dhs_spark.spark_session import ARROW_MAX_RECORDS_PER_BATCH

log = logging.getLogger("dhs.jobs.4c")

STAGE = "4c"
BANDS = ("g", "r", "z")
SPARKFILES_PREFIX = "sparkfiles:"
RECORD_COLUMNS: tuple[Column, ...] = (
    Column("record_kind", pa.string(), "stamp | reject", False),
    Column("stage", pa.string(), "stage that wrote the row"),
    Column("reason", pa.string(), "reject reason"),
    Column("detail", pa.string(), "reject detail"),
)
# One Arrow schema for the stamps and rejects of a partition (stamp_batches); the stamp rows go
# to the stamp writer, a summary of every row to Spark. A reject has no image, so the combined
# rows let it be null (the written stamps keep it required).
OUTPUT_COLUMNS: tuple[Column, ...] = tuple(dataclasses.replace(c, nullable=True) if c.name == "image" else c for c in STAMP_COLUMNS) + RECORD_COLUMNS
OUTPUT_SCHEMA = arrow_schema(OUTPUT_COLUMNS)
SUMMARY_COLUMNS: tuple[Column, ...] = tuple(dataclasses.replace(c, nullable=True) if c.name == "reason" else c for c in REJECT_COLUMNS) + (RECORD_COLUMNS[0],)
"""What a 4c task returns to Spark per manifest row: the reject columns (reason and detail null
for a stamp) and ``record_kind``."""


@dataclass(frozen=True)
class CoaddPsfParams:
    """How 4c reaches the coadd-PSF service (``data.coadd_psf_url`` and friends, see
    :class:`~dhs_spark.config.experiment.DataVariantConfig`); picklable, shipped with :class:`StampParams`."""

    url: str
    cache_dir: Optional[str] = None
    timeout_s: float = 30.0
    max_retries: int = 4
    backoff_s: float = 1.0
    fallback_model: str = "gaussian"
    wings: Optional[PsfWingsConfig] = None


@dataclass(frozen=True)
class StampParams:
    """What :func:`stamp_batches` needs (picklable; shipped to executors once per task).

    ``cosmos_library``: a local path, or ``'sparkfiles:<name>'`` for a file shipped with
    ``SparkContext.addFile``; None for parametric sources. ``psf_kernels_fn``: dotted path
    ``'module:function'`` of ``f(brickname, ra, dec, bands, pixscale_arcsec, stamp_size) ->
    list of 2-D kernels`` for ``psf_model='pixel'``; ``coadd_psf`` the coadd-PSF service for it
    otherwise. ``fail_once_task_id``: a task id whose row raises on the task's first attempt (retry/determinism tests, ``DHS_FAIL_ONCE_TASK_ID``).
    """

    experiment_id: str
    coadd_root: str
    stamp_size: int
    pixscale_arcsec: float
    oversample: int
    psf_model: str
    moffat_beta: Optional[float]
    source_mode: str
    add_poisson: bool
    arc_noise_model: str = "correlated"
    write_invvar: bool = False
    write_arc_image: bool = True
    cosmos_library: Optional[str] = None
    cosmos_loader_mode: str = "hdf5"
    psf_kernels_fn: Optional[str] = None
    fail_once_task_id: Optional[str] = None
    coadd_psf: Optional[CoaddPsfParams] = None


def check_psf_provider(data, psf_kernels_fn: Optional[str]) -> None:
    """``psf_model: pixel`` needs exactly one provider: the coadd-PSF service or the kernels hook
    (ConfigError otherwise; the driver calls this before any stage runs)."""
    if data.psf_model != "pixel":
        return
    if not psf_kernels_fn and not data.coadd_psf_url:
        raise ConfigError("data.coadd_psf_url", "psf_model 'pixel' needs the coadd-PSF service URL (--coadd-psf-url) or a --psf-kernels-fn hook", None)
    if psf_kernels_fn and data.coadd_psf_url:
        raise ConfigError("data.coadd_psf_url", f"give either the coadd-PSF service or --psf-kernels-fn {psf_kernels_fn}, not both", data.coadd_psf_url)


def stamp_params(
    cfg, coadd_root: str, write_invvar: bool = False, cosmos_library: Optional[str] = None, fail_once_task_id=None, psf_kernels_fn: Optional[str] = None
) -> StampParams:
    d = cfg.data
    if list(d.bands) != list(BANDS):
        raise ConfigError("data.bands", "4c injects g, r, z together; other band sets are not supported", d.bands)
    check_psf_provider(d, psf_kernels_fn)
    coadd_psf = None
    if d.psf_model == "pixel" and d.coadd_psf_url:
        coadd_psf = CoaddPsfParams(d.coadd_psf_url, d.psf_cache_dir, float(d.coadd_psf_timeout_s), int(d.coadd_psf_max_retries),
                                   float(d.coadd_psf_backoff_s), d.psf_fallback_model, d.psf_wings)  # fmt: skip
    return StampParams(
        experiment_id=cfg.experiment_id,
        coadd_root=coadd_root,
        stamp_size=int(d.stamp_size),
        pixscale_arcsec=float(d.pixel_scale_arcsec),
        oversample=int(d.oversample),
        psf_model=d.psf_model,
        moffat_beta=d.moffat_beta,
        source_mode=d.source_mode,
        add_poisson=bool(d.add_arc_poisson_noise),
        arc_noise_model=d.arc_noise_model,
        write_invvar=write_invvar,
        cosmos_library=cosmos_library,
        cosmos_loader_mode=d.cosmos_loader_mode,
        fail_once_task_id=fail_once_task_id,
        psf_kernels_fn=psf_kernels_fn,
        coadd_psf=coadd_psf,
    )


# -- the per-partition function ------------------------------------------------------------------


#: Side (pixels) of the brick-centre region the arc-noise correlation is measured on, once per brick.
NOISE_REGION_PIX = 160


def brick_noise_correlation(brick):
    """The coadd's noise correlation for the arcs of ``brick`` (loaded): measured once per brick on
    its central :data:`NOISE_REGION_PIX` square (sources masked, :func:`dhs_spark.sims.noise.
    estimate_noise_correlation`), so every stamp of a brick gets the same estimate whatever the
    partitioning, and the estimate costs nothing per stamp. A brick's resampling and dither
    pattern is the same over its area; the region's ~20,000 sky pixels give lags to ~0.007."""
    from dhs_spark.sims.noise import estimate_noise_correlation

    n = brick.image.shape[-1]
    lo = max(0, n // 2 - NOISE_REGION_PIX // 2)
    region = (slice(None), slice(lo, lo + NOISE_REGION_PIX), slice(lo, lo + NOISE_REGION_PIX))
    return estimate_noise_correlation(brick.image[region], brick.invvar[region], centre_radius_pix=0.0)


class _BrickCache:
    """The brick of the current run of rows; a new brickname releases the previous brick. Its
    noise correlation (:func:`brick_noise_correlation`) is measured on first use."""

    def __init__(self, coadd_root: str):
        self.coadd_root = coadd_root
        self.brickname = None
        self.brick = None
        self._noise = None
        self.opened = 0

    def get(self, brickname: str):
        from dhs_spark.survey.coadds import CoaddBrick

        if brickname != self.brickname:
            self.brickname, self.brick, self._noise = brickname, CoaddBrick(self.coadd_root, brickname, BANDS), None
            self.opened += 1
        return self.brick

    def noise_correlation(self):
        if self.brick.image is None:
            return None  # a band is missing: cutout() rejects every row of this brick (missing_band)
        if self._noise is None:
            self._noise = brick_noise_correlation(self.brick)
        return self._noise


class _BrickPsf:
    """The :class:`~dhs_spark.survey.psf.PsfSpec` of each stamp (see the module docstring); one
    per partition. Coadd PSFs are made once per brick (rows come sorted by brick, so only the
    current brick's spec is kept; :class:`BrickPsfCache` remembers fetches and failures)."""

    def __init__(self, params: StampParams):
        self.params = params
        self.cache = None
        self.brickname, self.brick_spec = None, None
        c = params.coadd_psf
        if params.psf_model == "pixel" and not params.psf_kernels_fn:
            if c is None:
                raise ConfigError("data.coadd_psf_url", "psf_model 'pixel' without --psf-kernels-fn needs StampParams.coadd_psf (see stamp_params)", None)
            from dhs_spark.survey.coadd_psf import BrickPsfCache, CoaddPsfClient
            from dhs_spark.survey.http import CachedHttpClient

            http = CachedHttpClient(c.url, cache_dir=c.cache_dir, timeout_s=c.timeout_s, max_retries=c.max_retries, backoff_s=c.backoff_s)
            self.cache = BrickPsfCache(CoaddPsfClient(http))

    @property
    def requests(self) -> int:
        return self.cache.requests if self.cache is not None else 0

    def spec(self, row: dict, fwhm_arcsec: list[float]):
        from dhs_spark.survey import psf

        p, brickname = self.params, row["brickname"]
        if p.psf_model != "pixel":
            return psf.analytic_psf_spec(p.psf_model, fwhm_arcsec, BANDS, f"analytic:brick-psfsize:brick={brickname}", p.moffat_beta)
        if p.psf_kernels_fn:
            module, _, name = p.psf_kernels_fn.partition(":")
            kernels = getattr(importlib.import_module(module), name)(brickname, row["ra"], row["dec"], BANDS, p.pixscale_arcsec, p.stamp_size)
            kernels = tuple(np.asarray(k, dtype=np.float64) for k in kernels)
            fwhm = tuple(psf.gaussian_fwhm_arcsec(k, p.pixscale_arcsec) for k in kernels)
            return psf.PsfSpec(model="pixel", source=p.psf_kernels_fn, bands=BANDS, fwhm_arcsec=fwhm, kernels=kernels)
        if brickname != self.brickname:
            from dhs_spark.survey.bricks import brick_center
            from dhs_spark.survey.coadd_psf import brick_psf_spec

            ra_c, dec_c = brick_center(brickname)
            c = p.coadd_psf
            # odd and inside the stamp, so the renderer never has to cap it
            kernel_size = p.stamp_size - 1 if p.stamp_size % 2 == 0 else p.stamp_size
            self.brick_spec = brick_psf_spec(self.cache, brickname, float(ra_c[0]), float(dec_c[0]), BANDS, fwhm_arcsec, c.fallback_model, p.moffat_beta,
                                             kernel_size, c.wings, p.pixscale_arcsec)  # fmt: skip
            self.brickname = brickname
        return self.brick_spec


def _cosmos_loader(params: StampParams):
    if params.source_mode != "cosmos":
        return None
    from dhs_spark.sims.cosmos import COSMOSLoaderV2

    path = params.cosmos_library
    if path and path.startswith(SPARKFILES_PREFIX):
        from pyspark import SparkFiles

        path = SparkFiles.get(path[len(SPARKFILES_PREFIX) :])
    return COSMOSLoaderV2(cosmos_path=path, mode=params.cosmos_loader_mode)


#: Most sub-pixels per axis for a COSMOS source shrunk by ``source_size_scale`` < 1 (its pixels
#: then undersample the 0.262/8" render grid; the oversampling grows as 1/scale up to this cap).
COSMOS_MAX_OVERSAMPLE = 12


def _cosmos_source(loader, row: dict, oversample: int):
    """(COSMOS source at the origin, render oversampling, pedestal flux fraction of its raw stamp)
    for a manifest row: the galaxy 4a chose (``cosmos_ident``; rows of uniform-prior manifests
    without one draw it from the task seed), its angular size scaled by ``source_size_scale``
    (moved to the row's source redshift)."""
    from dhs_spark.sims.cosmos import COSMOSImageSource

    ident = row.get("cosmos_ident")
    base = loader.source_by_ident(ident) if ident else loader.get_source(row["task_seed"])
    lib = loader.library()
    pedestal_col = lib.meta.get("pedestal_flux_fraction")
    pedestal = float(pedestal_col[lib.row_by_ident[base.ident]]) if pedestal_col is not None else None
    scale = row.get("source_size_scale")
    if scale is None or not np.isfinite(scale) or scale == 1.0:
        return base, oversample, pedestal
    if scale <= 0:
        raise InputDataError(f"task {row['task_id']}: source_size_scale must be > 0 (got {scale!r})")
    scaled = COSMOSImageSource(image=base.image, pixscale_arcsec=base.pixscale_arcsec * scale, ident=base.ident, clumpiness=base.clumpiness,
                               half_light_radius_arcsec=base.half_light_radius_arcsec * scale)  # fmt: skip
    return scaled, min(COSMOS_MAX_OVERSAMPLE, max(oversample, int(np.ceil(oversample / scale)))), pedestal


def _psf_fwhm(row: dict) -> list[float]:
    fwhm = [row[f"psf_fwhm_{b}_arcsec"] for b in BANDS]
    bad = [b for b, f in zip(BANDS, fwhm) if f is None or not np.isfinite(f) or f <= 0]
    if bad:
        raise RejectError("psf_missing", f"brick {row['brickname']}: no usable PSF FWHM in band(s) {','.join(bad)} (values {fwhm})")
    return [float(f) for f in fwhm]


def has_arc(row: dict) -> bool:
    """Whether 4c injects into a manifest row: not a control and not a hard negative (a look-alike
    position, cut as it is; null injections go through the injection path with zero flux)."""
    return not row["is_control"] and not row.get("hard_neg_source")


def make_stamp(row: dict, brick, params: StampParams, loader=None, psf: Optional[_BrickPsf] = None,
               noise_correlation=None) -> tuple[dict, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """One manifest row -> (output columns, image (C, N, N) float32, invvar or None, the added
    arc (C, N, N) float32 or None for a control).

    ``psf``: the partition's :class:`_BrickPsf` (a new one when None, for one-off calls).
    ``noise_correlation``: the brick's (:func:`brick_noise_correlation`; measured here when None
    and the arc noise is correlated).

    Raises RejectError / InputDataError for a stamp that cannot be made.
    """
    from dhs_spark.config.seeds import rng_from_seed, stable_hash64
    from dhs_spark.sims.detectability import arc_sector_snr
    from dhs_spark.sims.inject import inject_arc
    from dhs_spark.sims.lensing import SIEShear
    from dhs_spark.sims.sersic import SersicSource

    cut = brick.cutout(row["ra"], row["dec"], params.stamp_size)
    # One rule for every row, controls included: a stamp with any no-data pixel is rejected
    # before anything is injected, so no mask pattern tells injections from controls (the
    # arc-footprint rule of inject_arc cannot fire after it).
    no_data = cut.invvar <= 0
    if no_data.any():
        bands = [BANDS[b] for b in np.unique(np.nonzero(no_data)[0])]
        raise RejectError("invvar_nonpositive_in_stamp", f"{int(no_data.sum())} pixels with invvar <= 0, bands {bands}")
    out = {
        "bad_pixel_frac": float(cut.bad_pixel_frac),
        "maskbits_or": int(cut.maskbits_or),
    }
    arc = None
    if not has_arc(row):
        image = cut.image.astype(np.float32)
        out.update(source_mode="none", arc_snr_sum=0.0, arc_snr_peak=0.0)
        out.update({f"lensed_flux_{b}_nmgy": 0.0 for b in BANDS})
    else:
        spec = (psf or _BrickPsf(params)).spec(row, _psf_fwhm(row))
        oversample = params.oversample
        if params.source_mode == "cosmos":
            from dhs_spark.sims.cosmos import COSMOS_OVERSAMPLE

            oversample = max(oversample, COSMOS_OVERSAMPLE)
        dx, dy = cut.offset_x_pix * params.pixscale_arcsec, cut.offset_y_pix * params.pixscale_arcsec
        lens = SIEShear(row["theta_e_arcsec"], row["lens_q"], row["lens_phi_rad"], row["shear_gamma1"], row["shear_gamma2"], dx, dy)
        sx, sy = row["source_x_arcsec"] + dx, row["source_y_arcsec"] + dy
        if params.source_mode == "cosmos":
            source, oversample, pedestal = _cosmos_source(loader, row, oversample)
            source = source.at(sx, sy, row["source_phi_rad"])
            out["source_pedestal_flux_fraction"] = pedestal
        else:
            source = SersicSource(sx, sy, row["source_r_eff_arcsec"], row["source_sersic_n"], row["source_q"], row["source_phi_rad"])
        result = inject_arc(
            cut.image,
            cut.invvar,
            lens,
            source,
            row["source_r_mag"],
            row["source_color_g_r"],
            row["source_color_r_z"],
            **spec.inject_kwargs(),
            pixscale=params.pixscale_arcsec,
            oversample=oversample,
            add_poisson=params.add_poisson,
            rng=rng_from_seed(stable_hash64("arc-poisson", row["task_seed"])),
            ebv=float(row.get("ebv") or 0.0),
            noise_model=params.arc_noise_model,
            noise_correlation=(noise_correlation or brick_noise_correlation(brick)) if params.arc_noise_model == "correlated" and params.add_poisson else None,
            source_flux_scale=0.0 if row.get("is_null_injection") else 1.0,
        )
        t = result.truth
        image, arc = result.stamp, result.arc
        out.update({k: t[k] for k in ("source_mode", "cosmos_ident", "magnification", "arc_snr_sum", "arc_snr_peak")})
        out.update(spec.truth_fields(), render_oversample=t["oversample"], noise_model=t["noise_model"])
        out["arc_visibility_snr"] = arc_sector_snr(result.arc, cut.invvar, row["theta_e_arcsec"], params.pixscale_arcsec)
        for b in BANDS:
            out[f"unlensed_flux_{b}_nmgy"] = t[f"unlensed_flux_{b}_nmgy"]
            out[f"lensed_flux_{b}_nmgy"] = t[f"arc_flux_in_stamp_{b}_nmgy"]  # what the stamp really gained
            out[f"extinction_{b}_mag"] = t[f"extinction_{b}_mag"]
    nan_count = int((~np.isfinite(image)).sum())
    if nan_count:
        raise RejectError("nan_in_stamp", f"{nan_count} non-finite pixels after injection")
    out["nan_count"] = 0
    return out, np.ascontiguousarray(image, dtype=np.float32), cut.invvar if params.write_invvar else None, arc


def _binary_array(arrays: list[Optional[np.ndarray]]) -> pa.Array:
    """A binary Arrow array of per-row (C, H, W) arrays (None -> null) as raw '<f4' bytes
    (``dhs_spark.schema.IMAGE_ENCODING``), built with one copy into the data buffer."""
    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([0 if a is None else 4 * a.size for a in arrays], out=offsets[1:])
    values = [np.ravel(a).astype(IMAGE_DTYPE, copy=False) for a in arrays if a is not None]
    data = np.concatenate(values) if values else np.empty(0, IMAGE_DTYPE)
    validity = None if len(values) == len(arrays) else pa.array([a is not None for a in arrays], pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), len(arrays), [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


def _record_batch(rows: list[dict], images: list, invvars: list, arcs: list) -> pa.RecordBatch:
    columns = []
    binary = {"image": images, "invvar": invvars, "arc_image": arcs}
    for field in OUTPUT_SCHEMA:
        if field.name in binary:
            columns.append(_binary_array(binary[field.name]))
        else:
            columns.append(pa.array([r.get(field.name) for r in rows], field.type))
    return pa.RecordBatch.from_arrays(columns, schema=OUTPUT_SCHEMA)


def stamp_batches(batches: Iterable[pa.RecordBatch], params: StampParams, attempt_number: int = 0, stats: Optional[dict] = None) -> Iterator[pa.RecordBatch]:
    """Manifest record batches (sorted by brickname) -> output record batches, one row per input row.

    ``attempt_number`` is Spark's ``TaskContext.attemptNumber()`` (only the forced-failure hook
    reads it). ``stats``, when given, receives ``bricks_opened``, ``stamps``, ``rejects``,
    ``psf_requests`` (coadd-PSF fetches, one per brick) and the seconds spent opening bricks +
    cutting (``io_s``) and injecting (``inject_s``).
    """
    import time

    cache = _BrickCache(params.coadd_root)
    loader = _cosmos_loader(params)
    psf = _BrickPsf(params)
    stats = stats if stats is not None else {}
    for key in ("stamps", "rejects", "io_s", "inject_s"):
        stats.setdefault(key, 0)
    for batch in batches:
        rows, images, invvars, arcs = [], [], [], []
        for row in batch.to_pylist():
            if params.fail_once_task_id and row["task_id"] == params.fail_once_task_id and attempt_number == 0:
                raise RuntimeError(f"forced first-attempt failure of task {row['task_id']} (DHS_FAIL_ONCE_TASK_ID)")
            out = {c.name: row.get(c.name) for c in STAMP_COLUMNS}
            out.update(n_bands=len(BANDS), stamp_size=params.stamp_size, pipeline_version=PIPELINE_VERSION, stage=STAGE)
            image = invvar = arc = None
            try:
                t0 = time.perf_counter()
                brick = cache.get(row["brickname"])
                brick.load()
                t1 = time.perf_counter()
                stats["io_s"] += t1 - t0
                noise = cache.noise_correlation() if params.arc_noise_model == "correlated" and params.add_poisson and has_arc(row) else None
                values, image, invvar, arc = make_stamp(row, brick, params, loader, psf, noise)
                arc = arc if params.write_arc_image else None
                stats["inject_s"] += time.perf_counter() - t1
                out.update(values, record_kind="stamp")
                stats["stamps"] += 1
            except (RejectError, InputDataError) as exc:
                reason = getattr(exc, "reason", "input_data")
                detail = getattr(exc, "detail", None) or str(exc)
                out.update(record_kind="reject", reason=reason, detail=detail)
                image = invvar = arc = None
                stats["rejects"] += 1
            rows.append(out)
            images.append(image)
            invvars.append(invvar)
            arcs.append(arc)
        if rows:
            yield _record_batch(rows, images, invvars, arcs)
    stats["bricks_opened"] = stats.get("bricks_opened", 0) + cache.opened
    stats["psf_requests"] = stats.get("psf_requests", 0) + psf.requests


def write_stamps(batches: Iterable[pa.RecordBatch], params: StampParams, writer, attempt_number: int = 0, stats: Optional[dict] = None) -> Iterator[pa.RecordBatch]:
    """:func:`stamp_batches`, with the stamp rows written by ``writer`` (a
    :class:`~dhs_spark.jobs.stamp_writer.SplitStampWriter`), committed after the last row;
    yields one :data:`SUMMARY_COLUMNS` row per input row. Any exception aborts the writer's files."""
    import pyarrow.compute as pc

    names = [c.name for c in SUMMARY_COLUMNS]
    try:
        for out in stamp_batches(batches, params, attempt_number, stats):
            is_stamp = pc.equal(out.column("record_kind"), "stamp")
            writer.write(out.filter(is_stamp))
            yield out.select(names)
        writer.commit()
    except BaseException:
        writer.abort()
        raise


# -- Spark ---------------------------------------------------------------------------------------


def _ship_library(spark, path: str) -> str:
    """addFile the COSMOS library; returns the ``sparkfiles:`` spec executors resolve.

    A local file is first linked (or copied) under a content-derived name, so two libraries that
    share a file name never collide in one SparkContext.
    """
    uri = P.to_uri(path)
    if P.is_local(uri):
        local = P.local_path(uri)
        if not local.is_file():
            raise InputDataError(f"COSMOS library {local}: no such file (data.cosmos_library_path / --cosmos-library)")
        st = local.stat()
        tag = hashlib.sha1(f"{local}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        shipped = Path(tempfile.gettempdir()) / "dhs_sparkfiles" / f"{local.stem}-{tag}{local.suffix}"
        if not shipped.exists():
            shipped.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(local, shipped)
            except OSError:
                shutil.copyfile(local, shipped)
        uri = shipped.as_uri()
    spark.sparkContext.addFile(uri)
    return SPARKFILES_PREFIX + uri.rsplit("/", 1)[1]


def _manifest_marker(spark, paths: P.ExperimentPaths) -> dict:
    marker = P.read_marker(spark, paths.stage_dir("4a"))
    if marker is None:
        raise InputDataError(f"4c: no complete manifest at {paths.stage_dir('4a')} (run stage 4a first)")
    return marker


def produce(spark, cfg, paths: P.ExperimentPaths, inputs, opts, staging: str) -> dict:
    """Write ``stamps/`` (partitioned by split) and ``rejects/`` into ``staging``; return counts."""
    from pyspark import TaskContext
    from pyspark.sql import functions as F

    if not inputs.coadd_root:
        raise InputDataError("4c needs --coadd-root (or --mock-survey)")
    manifest_marker = _manifest_marker(spark, paths)
    library = None
    if cfg.data.source_mode == "cosmos" and cfg.data.cosmos_loader_mode != "synthetic":
        library = _ship_library(spark, cfg.data.cosmos_library_path)
    coadd_root = inputs.coadd_root if "://" in inputs.coadd_root else str(Path(inputs.coadd_root).resolve())
    params = stamp_params(cfg, coadd_root, opts.write_invvar, library, opts.fail_once_task_id, opts.psf_kernels_fn)
    manifest = spark.read.parquet(paths.manifest)
    n_manifest = manifest.count()
    n_parts = opts.partitions or spark.sparkContext.defaultParallelism

    stamps_uri, rejects_uri, tmp_uri = P.join(staging, "stamps"), P.join(staging, "rejects"), P.join(staging, "_tmp")
    try:  # the workers write through pyarrow: refuse a file system it cannot reach before any task runs
        P.arrow_filesystem(stamps_uri)
    except ValueError as exc:
        raise ConfigError("output_dir", str(exc), cfg.output_dir) from None
    file_schema = stamp_file_schema(spark_schema(FILE_COLUMNS).json())

    def run(batches):
        task = TaskContext.get()
        writer = SplitStampWriter(stamps_uri, tmp_uri, f"part-{task.partitionId():05d}", file_schema, ARROW_MAX_RECORDS_PER_BATCH)
        return write_stamps(batches, params, writer, task.attemptNumber())

    # One pass: the workers write the stamps, Spark the rejects from the small summary rows.
    P.mkdirs(spark, stamps_uri)  # an all-reject run still leaves an (empty) stamps/
    summary = manifest.repartition(n_parts, "brickname").sortWithinPartitions("brickname", "task_id").mapInArrow(run, spark_schema(SUMMARY_COLUMNS))
    summary.filter(F.col("record_kind") == "reject").select(*[c.name for c in REJECT_COLUMNS]).write.parquet(rejects_uri)
    P.delete(spark, tmp_uri)
    counts = _counts(spark, stamps_uri, rejects_uri)
    if counts["n_stamps"] + counts["n_rejects"] != n_manifest or counts["n_distinct_tasks"] != n_manifest:
        raise RuntimeError(f"4c: manifest rows {n_manifest} != stamps {counts['n_stamps']} + rejects {counts['n_rejects']} (distinct {counts['n_distinct_tasks']})")
    counts.update(n_manifest=n_manifest, manifest_run_id=manifest_marker["run_id"], partitions=n_parts)
    log.info("4c: %s", counts)
    return counts


def _counts(spark, stamps_uri: str, rejects_uri: str) -> dict:
    """Counts read back from the written data (explicit schemas: an all-reject run leaves
    stamps/ without files, and the other way round)."""
    from pyspark.sql import functions as F

    stamps = spark.read.schema(spark_schema(STAMP_COLUMNS)).parquet(stamps_uri).select("task_id", F.lit(None).cast("string").alias("reason"))
    rejects = spark.read.schema(spark_schema(REJECT_COLUMNS)).parquet(rejects_uri).select("task_id", "reason")
    total = stamps.unionByName(rejects).agg(F.count("*").alias("n"), F.countDistinct("task_id").alias("distinct"), F.count("reason").alias("rejects")).first()
    reasons = {r["reason"]: int(r["count"]) for r in rejects.groupBy("reason").count().collect()}
    return {"n_stamps": int(total["n"] - total["rejects"]), "n_rejects": int(total["rejects"]), "n_distinct_tasks": int(total["distinct"]), "reject_reasons": reasons}


def verify(spark, cfg, paths: P.ExperimentPaths, marker: dict) -> bool:
    """Whether the committed stamps were made from the current manifest and still reconcile."""
    current = P.read_marker(spark, paths.stage_dir("4a"))
    if current is None or current.get("run_id") != marker.get("manifest_run_id"):
        return False
    if not (P.exists(spark, paths.stamps) and P.exists(spark, paths.rejects)):
        return False
    counts = _counts(spark, paths.stamps, paths.rejects)
    same = counts["n_stamps"] == marker.get("n_stamps") and counts["n_rejects"] == marker.get("n_rejects")
    return same and counts["n_distinct_tasks"] == marker.get("n_manifest") == current.get("n_rows")
