"""Stage ``score``: score stamps with a trained checkpoint on Spark executors.

Two inputs (``--score-input``):

- ``stamps``: an existing stamp set, by default this experiment's committed 4c stamps
  (``ExperimentPaths.stamps``), or any stamp Parquet of the same schema (``--score-stamps``,
  e.g. hard negatives). Every stamp gives one score row; its source tag is ``stamps``, or the
  row's ``hard_neg_source`` where the stamps have that column and the value is not null.
- ``parent``: the un-injected parent sample (a search set): every host 4a would take (the same
  parent sample, LRG selection and bricks table: :func:`~dhs_spark.jobs.phase4a_manifest.host_frame`)
  is cut from the coadds by 4c's own code (:class:`~dhs_spark.survey.coadds.CoaddBrick` and
  :func:`~dhs_spark.jobs.phase4c_stamps.make_stamp` as for a control: the same edge, no-data
  and non-finite rules) at ``data.stamp_size``, and scored. A row that cannot be cut becomes a
  reject row (``REJECT_COLUMNS``, stage ``score``) with 4c's reason. Parent rows have no label
  (null), the task id ``stable_hash64('parent', brickname, ra, dec)`` in hex (the object, not
  the experiment), and the split 4a's rule gives their HEALPix cell.

The per-partition work is :func:`score_batches`, a pure function from Arrow record batches to
Arrow record batches of :data:`OUTPUT_SCHEMA` (no Spark import; tests and the benchmark run it
directly). Spark (:func:`produce`) only moves small rows: in ``stamps`` mode one row per Parquet
row group (:data:`UNIT_COLUMNS`, from the files' footers, read on the driver), whose stamps the
Python worker reads itself with pyarrow (:func:`read_row_groups`); the JVM never holds an image
(reading the 49 KB image values in the JVM and shipping them to Python through Arrow cost ~3 ms
of JVM CPU per stamp, more than the forward pass). In ``parent`` mode the rows are the hosts.
``mapInArrow`` returns one small row per input row; Spark writes ``scores/`` and ``rejects/``
into the stage's staging directory; ``run_stage`` commits it to ``<experiment>/score/<score
input>/`` with ``_COMPLETE.json``.

Model: the driver reads the checkpoint file (local or any Hadoop URI), checks it loads, and
broadcasts its bytes. A Python worker builds the model once per (checkpoint sha256, device,
batch size) and keeps it for every later task (:data:`_MODELS`; worker reuse is Spark's
default). On CPU, torch runs ``spark.task.cpus`` threads per task (1 by default), so Spark's
cores are not oversubscribed; ``--score-device auto`` takes CUDA where the executor has it
(:func:`trainer.score.pick_device`).

Scores: exactly :func:`trainer.score.make_score_fn` (the checkpoint's preprocessing, sigmoid of a
float32 forward pass, float64 output), i.e. ``dhs-score``'s computation. Stamps are scored in
batches of exactly ``batch_size``: a short last batch is padded by repeating its last stamp and
the padding's scores dropped. The forward pass of one stamp then always runs in a batch of the
same shape, so a stamp's score is the same bytes however Spark partitions the rows (batches of
other sizes can differ in the last float32 bit: oneDNN picks its kernels by batch shape).
Against ``dhs-score``, whose last batch per row group is short, scores agree to float32
rounding (a few 1e-8 absolute).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa

from dhs_spark.errors import ConfigError, InputDataError, RejectError
from dhs_spark.jobs import paths as P
from dhs_spark.schema import REJECT_COLUMNS, SCORE_COLUMNS, Column, arrow_schema, decode_image_column, spark_schema

log = logging.getLogger("dhs.jobs.score")

STAGE = "score"
SCORE_INPUTS = ("stamps", "parent")
#: The stamp columns read in ``stamps`` mode (the others are left on disk).
REQUIRED_STAMP_COLUMNS = ("task_id", "ra", "dec", "image", "n_bands", "stamp_size")
OPTIONAL_STAMP_COLUMNS = ("brickname", "label", "split", "hard_neg_source", "is_control", "is_null_injection")
#: What a task returns: the score columns (score null for a reject) and the reject's reason/detail.
OUTPUT_COLUMNS: tuple[Column, ...] = tuple(dataclasses.replace(c, nullable=True) if c.name == "score" else c for c in SCORE_COLUMNS) + (
    Column("reason", pa.string(), "reject reason (null for a scored row)"),
    Column("detail", pa.string(), "reject detail"),
)
OUTPUT_SCHEMA = arrow_schema(OUTPUT_COLUMNS)


@dataclass(frozen=True)
class ScoreParams:
    """What :func:`score_batches` needs (picklable; shipped to executors with each task).

    ``checkpoint_sha256``: the sha256 of the broadcast checkpoint bytes (the model cache key,
    checked against the bytes on first load). ``device``: auto | cpu | cuda[:N], resolved on the
    executor. ``torch_threads``: torch's intra-op threads on CPU (Spark's ``spark.task.cpus``).
    ``score_input``: 'stamps' or 'parent'. Parent mode only: ``coadd_root``, ``stamp_size`` (px),
    ``healpix_nside`` and ``split_fractions`` (4a's split rule) and ``experiment_id`` (rejects).
    Stamps mode: ``stamps_uri`` (the root the row-group units' paths are in) and ``score_split``.
    """

    checkpoint_sha256: str
    score_input: str = "stamps"
    device: str = "auto"
    batch_size: int = 256
    torch_threads: int = 1
    coadd_root: Optional[str] = None
    stamp_size: int = 64
    pixscale_arcsec: float = 0.262
    healpix_nside: int = 64
    split_fractions: tuple[tuple[str, float], ...] = ()
    experiment_id: Optional[str] = None
    stamps_uri: Optional[str] = None
    score_split: Optional[str] = None

    def __post_init__(self):
        if self.score_input not in SCORE_INPUTS:
            raise ConfigError("--score-input", f"must be one of {SCORE_INPUTS}", self.score_input)
        if int(self.batch_size) < 1:
            raise ConfigError("--score-batch-size", "must be >= 1", self.batch_size)
        if int(self.torch_threads) < 1:
            raise ConfigError("spark.task.cpus", "torch threads per task must be >= 1", self.torch_threads)


# -- the model, once per Python worker -----------------------------------------------------------

#: (checkpoint sha256, device, batch size) -> ``score_fn`` of :func:`trainer.score.make_score_fn`.
#: Module state of the Python worker: it lives as long as the (reused) worker process.
_MODELS: dict[tuple[str, str, int], Callable[[np.ndarray], np.ndarray]] = {}
#: Models built by this process (tests read it: one per worker and checkpoint, not per batch).
MODEL_LOADS = {"count": 0}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_model_bytes(data: bytes, device="cpu", where: str = "checkpoint"):
    """``(model in eval mode on device, ExperimentConfig, PreprocessConfig)`` of checkpoint file
    bytes; InputDataError naming ``where`` when the bytes are not a dhs-train checkpoint."""
    from trainer.checkpoint import load_checkpoint, model_from_checkpoint

    try:
        return model_from_checkpoint(load_checkpoint(io.BytesIO(data)), device)
    except InputDataError as exc:
        raise InputDataError(f"{where}: not a loadable dhs-train checkpoint ({exc})") from None
    except (KeyError, TypeError, RuntimeError) as exc:  # a checkpoint of another model shape or version
        raise InputDataError(f"{where}: checkpoint does not build its model ({type(exc).__name__}: {exc})") from None


def score_fn_for(params: ScoreParams, checkpoint_bytes: Callable[[], bytes]):
    """This worker's ``score_fn`` for ``params`` (built on first use from ``checkpoint_bytes()``,
    e.g. a broadcast's value, which is then not read again); sets torch's CPU threads."""
    import torch

    from trainer.score import make_score_fn, pick_device

    device = pick_device(params.device)
    if device.type == "cpu" and torch.get_num_threads() != params.torch_threads:
        torch.set_num_threads(int(params.torch_threads))
    key = (params.checkpoint_sha256, str(device), int(params.batch_size))
    fn = _MODELS.get(key)
    if fn is None:
        data = checkpoint_bytes()
        got = sha256_hex(data)
        if got != params.checkpoint_sha256:
            raise InputDataError(f"broadcast checkpoint bytes have sha256 {got}, the driver read {params.checkpoint_sha256}")
        model, _, pre = load_model_bytes(data, device, f"checkpoint {params.checkpoint_sha256[:12]}")
        _MODELS.clear()  # one model per worker: a new checkpoint releases the old one
        fn = _MODELS[key] = make_score_fn(model, pre, device, int(params.batch_size))
        MODEL_LOADS["count"] += 1
    return fn


def score_fixed_batches(score_fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    """``score_fn(images)`` with every forward batch exactly ``batch_size`` stamps: a short tail
    is padded with copies of the last stamp, whose scores are dropped (module docstring)."""
    n = len(images)
    if n == 0:
        return np.empty(0, np.float64)
    pad = (-n) % batch_size
    if pad:
        images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    return score_fn(images)[:n]


# -- rows in, rows out ---------------------------------------------------------------------------


def parent_task_id(brickname: str, ra: float, dec: float) -> str:
    """The task id of a parent (search) row: the object's, not the experiment's."""
    from dhs_spark.config.seeds import stable_hash64

    return f"{stable_hash64('parent', str(brickname), float(ra), float(dec)):016x}"


def _column(batch: pa.RecordBatch, name: str, type_: pa.DataType) -> pa.Array:
    i = batch.schema.get_field_index(name)
    return pa.nulls(batch.num_rows, type_) if i < 0 else batch.column(i).cast(type_)


def _stamp_rows(batch: pa.RecordBatch, params: ScoreParams) -> tuple[dict, np.ndarray, dict]:
    """(meta columns of the stamps to score, their images (N, C, H, W), meta of rejects) of one
    batch of stamp rows. A stamp with a non-finite pixel is rejected (``nonfinite_pixels``)."""
    import pyarrow.compute as pc

    meta = {
        "task_id": _column(batch, "task_id", pa.string()),
        "ra": _column(batch, "ra", pa.float64()),
        "dec": _column(batch, "dec", pa.float64()),
        "brickname": _column(batch, "brickname", pa.string()),
        "label": _column(batch, "label", pa.int32()),
        "split": _column(batch, "split", pa.string()),
        "source_tag": pc.fill_null(_column(batch, "hard_neg_source", pa.string()), "stamps"),
        "is_control": _column(batch, "is_control", pa.bool_()),
        "is_null_injection": _column(batch, "is_null_injection", pa.bool_()),
    }
    first = meta["task_id"][0].as_py() if batch.num_rows else None
    images = decode_image_column(batch.column(batch.schema.get_field_index("image")), batch.column(batch.schema.get_field_index("n_bands")).to_numpy(),
                                 batch.column(batch.schema.get_field_index("stamp_size")).to_numpy(), where=f"stamps batch from task {first}")  # fmt: skip
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if finite.all():
        return meta, images, {}
    keep, drop = pa.array(finite), pa.array(~finite)
    bad = {k: v.filter(drop) for k, v in meta.items()}
    counts = (~np.isfinite(images[~finite])).reshape(int((~finite).sum()), -1).sum(axis=1)
    bad["reason"] = ["nonfinite_pixels"] * len(counts)
    bad["detail"] = [f"{int(c)} non-finite pixels in the stored stamp" for c in counts]
    return {k: v.filter(keep) for k, v in meta.items()}, images[finite], bad


#: A unit of stamps-mode work: one Parquet row group (Spark ships these small rows, not the images).
UNIT_COLUMNS: tuple[Column, ...] = (
    Column("path", pa.string(), "file path inside the stamps URI's file system", False),
    Column("row_group", pa.int32(), "row-group number in the file", False),
    Column("hive_split", pa.string(), "the file's split=<value> directory, null when none"),
)


def read_row_groups(units: Iterable[pa.RecordBatch], params: ScoreParams) -> Iterator[pa.RecordBatch]:
    """Stamp record batches (the scored columns only) of the row groups named by ``units``
    (:data:`UNIT_COLUMNS`), read with pyarrow from ``params.stamps_uri``'s file system; a file
    without a split column takes its ``split=`` directory; ``params.score_split`` filters rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dhs_spark.spark_session import ARROW_MAX_RECORDS_PER_BATCH

    fs, _ = P.arrow_filesystem(params.stamps_uri)
    wanted = REQUIRED_STAMP_COLUMNS + OPTIONAL_STAMP_COLUMNS
    path, pf = None, None
    for batch in units:
        for unit in batch.to_pylist():
            if unit["path"] != path:
                path, pf = unit["path"], pq.ParquetFile(fs.open_input_file(unit["path"]))
            table = pf.read_row_group(int(unit["row_group"]), columns=[c for c in wanted if c in pf.schema_arrow.names])
            if "split" not in table.column_names:
                table = table.append_column("split", pa.array([unit["hive_split"]] * table.num_rows, pa.string()))
            if params.score_split:
                table = table.filter(pc.equal(table.column("split"), params.score_split))
            yield from table.to_batches(max_chunksize=ARROW_MAX_RECORDS_PER_BATCH)


class _Brick:
    """The coadd brick of the current run of rows (rows come sorted by brick)."""

    def __init__(self, coadd_root: str):
        self.coadd_root, self.brickname, self.brick, self.opened = coadd_root, None, None, 0

    def get(self, brickname: str):
        from dhs_spark.survey.coadds import CoaddBrick

        if brickname != self.brickname:
            self.brickname, self.brick = brickname, CoaddBrick(self.coadd_root, brickname, ("g", "r", "z"))
            self.opened += 1
        return self.brick


def _parent_rows(batch: pa.RecordBatch, params: ScoreParams, bricks: _Brick) -> tuple[dict, np.ndarray, dict]:
    """Cut each parent row (brickname, ra, dec) with 4c's rules, as a control: (meta of the cut
    rows, their images (N, 3, S, S) float32, meta of the rejects with reason and detail)."""
    from dhs_spark.healpix import healpix_index
    from dhs_spark.jobs.phase4a_manifest import split_of_cell
    from dhs_spark.jobs.phase4c_stamps import StampParams, make_stamp

    cut = StampParams(params.experiment_id or "", params.coadd_root, int(params.stamp_size), float(params.pixscale_arcsec), 1, "gaussian", None, "none", False)
    rows = batch.select(["brickname", "ra", "dec"]).to_pylist()
    cells = healpix_index(np.array([r["ra"] for r in rows], float), np.array([r["dec"] for r in rows], float), params.healpix_nside) if rows else []
    good: dict[str, list] = {k: [] for k in ("task_id", "ra", "dec", "brickname", "split")}
    bad: dict[str, list] = {k: [] for k in ("task_id", "ra", "dec", "brickname", "split", "reason", "detail")}
    images = []
    for row, cell in zip(rows, cells):
        brickname, ra, dec = str(row["brickname"]), float(row["ra"]), float(row["dec"])
        fields = {"task_id": parent_task_id(brickname, ra, dec), "ra": ra, "dec": dec, "brickname": brickname,
                  "split": split_of_cell(int(cell), params.healpix_nside, params.split_fractions)}  # fmt: skip
        try:
            brick = bricks.get(brickname)
            brick.load()
            _, image, _, _ = make_stamp({**fields, "is_control": True}, brick, cut)
        except (RejectError, InputDataError) as exc:
            for k, v in fields.items():
                bad[k].append(v)
            bad["reason"].append(getattr(exc, "reason", "input_data"))
            bad["detail"].append(getattr(exc, "detail", None) or str(exc))
            continue
        for k, v in fields.items():
            good[k].append(v)
        images.append(image)

    def meta(cols: dict) -> dict:
        n = len(cols["task_id"])
        out = {k: pa.array(cols[k], pa.float64() if k in ("ra", "dec") else pa.string()) for k in ("task_id", "ra", "dec", "brickname", "split")}
        out.update(label=pa.nulls(n, pa.int32()), source_tag=pa.array(["parent"] * n, pa.string()))
        return out

    stack = np.stack(images) if images else np.empty((0, 3, params.stamp_size, params.stamp_size), np.float32)
    rejects = {**meta(bad), "reason": bad["reason"], "detail": bad["detail"]} if bad["task_id"] else {}
    return meta(good), stack, rejects


def _output_batch(meta: dict, params: ScoreParams, scores: Optional[np.ndarray] = None) -> pa.RecordBatch:
    n = len(meta["task_id"])
    columns = []
    for field in OUTPUT_SCHEMA:
        if field.name == "checkpoint_sha256":
            columns.append(pa.array([params.checkpoint_sha256] * n, pa.string()))
        elif field.name == "score":
            columns.append(pa.nulls(n, pa.float64()) if scores is None else pa.array(scores, pa.float64()))
        elif field.name in meta:
            value = meta[field.name]
            columns.append(value if isinstance(value, pa.Array) else pa.array(value, field.type))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=OUTPUT_SCHEMA)


def score_batches(batches: Iterable[pa.RecordBatch], params: ScoreParams, checkpoint_bytes: Callable[[], bytes],
                  stats: Optional[dict] = None) -> Iterator[pa.RecordBatch]:  # fmt: skip
    """Input record batches -> :data:`OUTPUT_SCHEMA` batches: one row per input row, scored
    (``score`` set) or rejected (``reason`` and ``detail`` set).

    Input: stamp rows (``stamps``: :data:`REQUIRED_STAMP_COLUMNS`, optionally
    :data:`OPTIONAL_STAMP_COLUMNS`) or parent rows (``parent``: brickname, ra, dec; sorted by
    brickname so that each brick is read once). Stamps are scored in batches of exactly
    ``params.batch_size`` (carried over between input batches; the last padded), so the output
    rows come in input order but not in the input's batches. ``stats``, when given, receives
    ``scored``, ``rejects``, ``bricks_opened`` and the seconds spent preparing (decoding or
    cutting, ``prepare_s``) and scoring (``score_s``).
    """
    import time

    stats = stats if stats is not None else {}
    for key in ("scored", "rejects", "prepare_s", "score_s"):
        stats.setdefault(key, 0)
    bs = int(params.batch_size)
    bricks = _Brick(params.coadd_root) if params.score_input == "parent" else None
    score_fn = None
    pending_meta: list[dict] = []
    pending_images: list[np.ndarray] = []

    def flush(final: bool) -> Iterator[pa.RecordBatch]:
        nonlocal score_fn, pending_meta, pending_images
        n = sum(len(m["task_id"]) for m in pending_meta)
        take = n if final else (n // bs) * bs
        if take == 0:
            return
        t0 = time.perf_counter()
        if score_fn is None:
            score_fn = score_fn_for(params, checkpoint_bytes)
        images = np.concatenate(pending_images) if len(pending_images) > 1 else pending_images[0]
        meta = {k: pa.concat_arrays([m[k] for m in pending_meta]) for k in pending_meta[0]}
        scores = score_fixed_batches(score_fn, images[:take], bs)
        stats["score_s"] += time.perf_counter() - t0
        stats["scored"] += take
        yield _output_batch({k: v.slice(0, take) for k, v in meta.items()}, params, scores)
        if take < n:
            pending_meta, pending_images = [{k: v.slice(take) for k, v in meta.items()}], [images[take:]]
        else:
            pending_meta, pending_images = [], []

    for batch in batches:
        if batch.num_rows == 0:
            continue
        t0 = time.perf_counter()
        meta, images, rejects = _parent_rows(batch, params, bricks) if bricks is not None else _stamp_rows(batch, params)
        stats["prepare_s"] += time.perf_counter() - t0
        if rejects:
            stats["rejects"] += len(rejects["task_id"])
            yield _output_batch(rejects, params)
        if len(images):
            pending_meta.append(meta)
            pending_images.append(images)
            yield from flush(final=False)
    yield from flush(final=True)
    stats["bricks_opened"] = stats.get("bricks_opened", 0) + (bricks.opened if bricks is not None else 0)


# -- the driver ----------------------------------------------------------------------------------


def read_checkpoint(spark, uri: Optional[str]) -> bytes:
    """The checkpoint file's bytes (local path or any URI Hadoop reads, e.g. s3://)."""
    import tempfile

    if not uri:
        raise ConfigError("--checkpoint", "the score stage needs a trained checkpoint: pass --checkpoint PATH (best.pt written by dhs-train; local or s3://)")
    full = P.to_uri(uri)
    if not P.exists(spark, full):
        raise InputDataError(f"--checkpoint {uri}: no such file")
    local = P.copy_to_local(spark, full, tempfile.mkdtemp(prefix="dhs_score_ckpt_"))
    if local.is_dir():
        raise InputDataError(f"--checkpoint {uri}: is a directory; pass the checkpoint file (best.pt or last.pt)")
    return local.read_bytes()


def fingerprint_extra(spark, opts) -> dict:
    """What the score output depends on beyond the config and inputs (``--resume`` compares it)."""
    return {"checkpoint_sha256": sha256_hex(read_checkpoint(spark, opts.checkpoint)), "score_input": opts.score_input, "score_stamps": opts.score_stamps,
            "score_split": opts.score_split, "batch_size": opts.score_batch_size, "device": opts.score_device}  # fmt: skip


def _stamps_uri(spark, paths: P.ExperimentPaths, opts) -> tuple[str, Optional[str]]:
    """(stamps URI, the 4c run id when they are this experiment's committed 4c stamps)."""
    if opts.score_stamps:
        uri = P.to_uri(opts.score_stamps)
        if not P.exists(spark, uri):
            raise InputDataError(f"--score-stamps {opts.score_stamps}: no such file or directory")
        return uri, None
    marker = P.read_marker(spark, paths.stage_dir("4c"))
    if marker is None:
        raise InputDataError(f"score --score-input stamps: no committed 4c stamps at {paths.stage_dir('4c')} (no {P.COMPLETE_MARKER}); "
                             "run --stage 4c first, pass --score-stamps DIR for another stamp set, or --score-input parent to score the parent sample")  # fmt: skip
    return paths.stamps, marker["run_id"]


def _stamp_units(uri: str, opts, in_channels: int, stamp_size: int) -> list[dict]:
    """One :data:`UNIT_COLUMNS` row (plus ``n_rows``, the stamps it will score) per Parquet row
    group of the stamps at ``uri``, after checking
    the files' columns and stamp shape against the model (from the footers: Parquet min/max
    statistics of n_bands and stamp_size, the two columns themselves where a file has none)."""
    import pyarrow.parquet as pq

    from trainer.data import hive_value, list_parquet_files

    fs, files = list_parquet_files(uri)
    units = []
    for f in files:
        try:
            pf = pq.ParquetFile(fs.open_input_file(f))
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputDataError(f"{f}: not a readable Parquet file ({exc})") from None
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED_STAMP_COLUMNS if c not in names]
        if missing:
            raise InputDataError(f"{f}: stamps lack columns {missing} needed for scoring (have {names})")
        split = hive_value(f, "split")
        if opts.score_split and "split" not in names and split is None:
            raise InputDataError(f"{f}: --score-split {opts.score_split} given, but the stamps have no split column or split=... directory")
        for rg in range(pf.num_row_groups):
            meta = pf.metadata.row_group(rg)
            if meta.num_rows == 0 or (opts.score_split and "split" not in names and split != opts.score_split):
                continue
            shape = []
            for col in ("n_bands", "stamp_size"):
                stats = meta.column(names.index(col)).statistics
                if stats is not None and stats.has_min_max:
                    shape.append({int(stats.min), int(stats.max)})
                else:
                    shape.append(set(pf.read_row_group(rg, columns=[col]).column(col).to_pylist()))
            if shape != [{in_channels}, {stamp_size}]:
                raise InputDataError(f"{f} row group {rg}: stamps of (n_bands, stamp_size) ({', '.join(str(sorted(v))[1:-1] for v in shape)}); "
                                     f"the checkpoint's model takes ({in_channels}, {stamp_size})")  # fmt: skip
            n_rows = meta.num_rows
            if opts.score_split and "split" in names:
                n_rows = pf.read_row_group(rg, columns=["split"]).column("split").to_pylist().count(opts.score_split)
            units.append({"path": f, "row_group": rg, "hive_split": split, "n_rows": n_rows})
    return units


def produce(spark, cfg, paths: P.ExperimentPaths, inputs, opts, staging: str) -> dict:
    """Write ``scores/`` and ``rejects/`` into ``staging``; return the counts for ``_COMPLETE.json``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if opts.score_input not in SCORE_INPUTS:
        raise ConfigError("--score-input", f"must be one of {SCORE_INPUTS}", opts.score_input)
    data = read_checkpoint(spark, opts.checkpoint)
    sha = sha256_hex(data)
    _, ck_cfg, _ = load_model_bytes(data, "cpu", f"--checkpoint {opts.checkpoint}")
    in_channels, ck_size = int(ck_cfg.model.in_channels), int(ck_cfg.data.stamp_size)
    if not (opts.score_device in ("auto", "cpu") or str(opts.score_device).startswith("cuda")):
        raise ConfigError("--score-device", "must be auto, cpu or cuda[:N] (resolved on each executor)", opts.score_device)
    params = ScoreParams(
        checkpoint_sha256=sha,
        score_input=opts.score_input,
        device=opts.score_device,
        batch_size=int(opts.score_batch_size),
        torch_threads=int(spark.conf.get("spark.task.cpus", "1")),
        coadd_root=inputs.coadd_root,
        stamp_size=int(cfg.data.stamp_size),
        pixscale_arcsec=float(cfg.data.pixel_scale_arcsec),
        healpix_nside=int(cfg.data.healpix_nside),
        split_fractions=tuple((str(k), float(v)) for k, v in cfg.data.split_fractions.items()),
        experiment_id=cfg.experiment_id,
    )
    upstream: dict = {"score_input": opts.score_input, "checkpoint_sha256": sha, "checkpoint": opts.checkpoint}
    if opts.score_input == "stamps":
        uri, run_4c = _stamps_uri(spark, paths, opts)
        try:  # the workers read the stamps through pyarrow
            P.arrow_filesystem(uri)
        except ValueError as exc:
            raise InputDataError(str(exc)) from None
        units = _stamp_units(uri, opts, in_channels, ck_size)
        params = dataclasses.replace(params, stamps_uri=uri, score_split=opts.score_split)
        n_parts = max(1, min(len(units), int(opts.partitions) or spark.sparkContext.defaultParallelism))
        n_input = sum(u.pop("n_rows") for u in units)
        rows = spark.createDataFrame(units, spark_schema(UNIT_COLUMNS)).repartition(n_parts, "path", "row_group").sortWithinPartitions("path", "row_group")
        upstream.update(stamps_uri=uri, stamps_run_id=run_4c)
    else:
        from dhs_spark.jobs.phase4a_manifest import host_frame

        missing = [flag for flag, value in (("--parent-sample", inputs.parent_sample), ("--bricks-table", inputs.bricks_table), ("--coadd-root", inputs.coadd_root))
                   if not value]  # fmt: skip
        if missing:
            raise InputDataError(f"score --score-input parent needs {', '.join(missing)} (or --mock-survey)")
        if opts.score_split:
            raise ConfigError("--score-split", "applies to --score-input stamps only (a parent row's split is computed as it is cut)", opts.score_split)
        if int(cfg.data.stamp_size) != ck_size or in_channels != 3:
            raise ConfigError("data.stamp_size", f"the checkpoint's model takes ({in_channels} bands, {ck_size} px) stamps; parent rows are cut g, r, z at "
                              f"data.stamp_size (pass --set data.stamp_size={ck_size})", cfg.data.stamp_size)  # fmt: skip
        params = dataclasses.replace(params, coadd_root=inputs.coadd_root if "://" in inputs.coadd_root else str(P.local_path(inputs.coadd_root)))
        hosts = host_frame(spark, inputs, cfg, "train", 0).select("brickname", "ra", "dec")
        n_parts = int(opts.partitions) or spark.sparkContext.defaultParallelism
        rows = hosts.repartition(n_parts, "brickname").sortWithinPartitions("brickname", "ra", "dec")
        upstream.update(parent_sample=inputs.parent_sample, select_lrg=inputs.select_lrg)
        n_input = rows.count()

    broadcast = spark.sparkContext.broadcast(data)

    def run(batches):
        if params.score_input == "stamps":
            batches = read_row_groups(batches, params)
        return score_batches(batches, params, lambda: broadcast.value)

    out = rows.mapInArrow(run, spark_schema(OUTPUT_COLUMNS)).persist(StorageLevel.DISK_ONLY)
    scores_uri, rejects_uri = P.join(staging, "scores"), P.join(staging, "rejects")
    try:
        out.filter(F.col("reason").isNull()).select(*[c.name for c in SCORE_COLUMNS]).write.parquet(scores_uri)
        rejects = out.filter(F.col("reason").isNotNull()).select(
            "task_id", F.lit(cfg.experiment_id).alias("experiment_id"), F.lit(STAGE).alias("stage"), "reason", "detail", "brickname", "ra", "dec", "split"
        )
        rejects.select(*[F.col(c.name).cast(spark_schema((c,))[0].dataType) for c in REJECT_COLUMNS]).write.parquet(rejects_uri)
    finally:
        out.unpersist()
        broadcast.destroy()
    counts = _counts(spark, scores_uri, rejects_uri)
    if counts["n_scores"] + counts["n_rejects"] != n_input or counts["n_distinct_tasks"] != n_input:
        raise RuntimeError(f"score: input rows {n_input} != scores {counts['n_scores']} + rejects {counts['n_rejects']} (distinct task ids {counts['n_distinct_tasks']})")
    counts.update(n_input=n_input, **upstream)
    log.info("score: %s", counts)
    return counts


def _counts(spark, scores_uri: str, rejects_uri: str) -> dict:
    from pyspark.sql import functions as F

    scores = spark.read.schema(spark_schema(SCORE_COLUMNS)).parquet(scores_uri).select("task_id", F.lit(None).cast("string").alias("reason"))
    rejects = spark.read.schema(spark_schema(REJECT_COLUMNS)).parquet(rejects_uri).select("task_id", "reason")
    total = scores.unionByName(rejects).agg(F.count("*").alias("n"), F.countDistinct("task_id").alias("distinct"), F.count("reason").alias("rejects")).first()
    reasons = {r["reason"]: int(r["count"]) for r in rejects.groupBy("reason").count().collect()}
    return {"n_scores": int(total["n"] - total["rejects"]), "n_rejects": int(total["rejects"]), "n_distinct_tasks": int(total["distinct"]), "reject_reasons": reasons}


def verify(spark, cfg, paths: P.ExperimentPaths, marker: dict) -> bool:
    """Whether a committed score run still reconciles with its marker (and, for this
    experiment's 4c stamps, was made from the current 4c run)."""
    score_input = marker.get("score_input")
    if score_input not in SCORE_INPUTS:
        return False
    if marker.get("stamps_run_id"):
        current = P.read_marker(spark, paths.stage_dir("4c"))
        if current is None or current.get("run_id") != marker["stamps_run_id"]:
            return False
    scores, rejects = paths.scores(score_input), paths.score_rejects(score_input)
    if not (P.exists(spark, scores) and P.exists(spark, rejects)):
        return False
    counts = _counts(spark, scores, rejects)
    return counts["n_scores"] == marker.get("n_scores") and counts["n_rejects"] == marker.get("n_rejects") and counts["n_distinct_tasks"] == marker.get("n_input")
