"""Read Parquet stamps (local paths or s3://) for training, validation and scoring.

The stamp columns are those of :data:`dhs_spark.schema.STAMP_COLUMNS` (the one schema module
shared with the Spark producer); :data:`COL` gives their names, so a rename there breaks here at
import time rather than silently.

Layout of the work:

- :class:`StampIndex` scans the data set once: the files, their row groups, and the small
  per-row columns (label, split, position, truth for completeness bins). Images stay on disk.
- :class:`StampDataset` is a torch ``IterableDataset`` over the row groups holding rows of the
  requested split. Each epoch the row groups are permuted (seeded by ``seed`` and the epoch),
  then dealt round-robin to DataLoader workers, so every selected row is produced exactly once
  per epoch whatever the worker count (no duplicates, no drops; the last batch of a worker
  may be short). Rows are shuffled within a buffer of row groups, preprocessed in vectorised
  batches (:mod:`trainer.preprocess`) and augmented per stamp. Same seed, epoch and worker
  count -> same batches.
- Images are decoded by :func:`dhs_spark.schema.decode_image_column` (the schema module's one
  decoder of the binary image column) into an (N, C, H, W) float32 view of the Arrow buffer,
  without copying or building Python objects.
- Hard-negative stamps: label-0 rows cut at look-alike positions carry ``hard_neg_source`` (a
  tag: ring, merger, model_fp, ...; null for ordinary rows) and ``hard_neg_weight`` (float32;
  null for ordinary rows). :func:`plan_hard_negative_stamps` picks the tags to train on, caps
  their share of an epoch (a seeded subsample redrawn each epoch, served through
  :class:`StampDataset`'s ``epoch_rows``) and gives their loss weights. Stamp sets without the
  columns train exactly as before.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import torch

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import InputDataError
from dhs_spark.jobs.paths import arrow_filesystem
from dhs_spark.schema import STAMP_COLUMNS, decode_image_column
from trainer.preprocess import PreprocessConfig, augment, preprocess

COL = types.SimpleNamespace(**{c.name: c.name for c in STAMP_COLUMNS})
"""Stamp column names, e.g. ``COL.image``, ``COL.label`` (AttributeError if the schema drops one)."""

SPLITS = ("train", "val", "test")
# Per-row columns the index keeps in memory (those present in the files; the image never).
# is_null_injection selects the null injections (held out of training by default); the source
# offset and size give the trainer's arc-suppressed gate its fallback mask (trainer.gates).
GATE_TRUTH_COLUMNS = (COL.source_x_arcsec, COL.source_y_arcsec, COL.source_r_eff_arcsec)
INDEX_COLUMNS = (COL.label, COL.split, COL.ra, COL.dec, COL.theta_e_arcsec, COL.arc_snr_sum, COL.psf_fwhm_r_arcsec, COL.is_null_injection, *GATE_TRUTH_COLUMNS)
TRUTH_COLUMNS = (COL.theta_e_arcsec, COL.arc_snr_sum, COL.psf_fwhm_r_arcsec)
# Hard-negative stamp columns, named here so that the trainer reads them whether or not the stamp
# files (and dhs_spark.schema) have them: a file without them reads as null (ordinary rows); the
# index keeps them only when some file has them.
HARD_NEG_SOURCE = "hard_neg_source"
HARD_NEG_WEIGHT = "hard_neg_weight"
HARD_NEG_COLUMNS = (HARD_NEG_SOURCE, HARD_NEG_WEIGHT)

log = logging.getLogger(__name__)


def list_parquet_files(path: str) -> tuple[object, list[str]]:
    """The filesystem and the sorted Parquet files of ``path`` (a file or a directory tree;
    names starting with ``_`` or ``.``, e.g. Spark's ``_SUCCESS``, are skipped)."""
    import pyarrow.fs as pafs

    fs, root = arrow_filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputDataError(f"{path}: no such file or directory")
    if info.type == pafs.FileType.File:
        return fs, [root]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and not any(p.startswith(("_", ".")) for p in i.path[len(root) :].split("/") if p)
    )
    files = [f for f in files if f.endswith(".parquet") or "." not in f.rsplit("/", 1)[-1]]
    if not files:
        raise InputDataError(f"{path}: no Parquet files found")
    return fs, files


def hive_value(file_path: str, key: str) -> str | None:
    """The value of a hive-style ``key=value`` directory in ``file_path`` (None when absent)."""
    for part in file_path.split("/")[:-1]:
        if part.startswith(f"{key}="):
            return part[len(key) + 1 :]
    return None


def _hard_negative_columns(table: pa.Table, names: set[str]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(hard_neg_source as objects with None, hard_neg_weight as float64 with NaN)`` of one
    file, None when the file has neither column (one alone reads the other as null)."""
    if not any(c in names for c in HARD_NEG_COLUMNS):
        return None
    n = table.num_rows
    source = table.column(HARD_NEG_SOURCE).to_numpy(zero_copy_only=False).astype(object) if HARD_NEG_SOURCE in names else np.full(n, None, object)
    weight = (
        table.column(HARD_NEG_WEIGHT).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False) if HARD_NEG_WEIGHT in names else np.full(n, np.nan)
    )
    return source, weight


def _file_rows(row_groups: list, n_files: int) -> list[int]:
    """Rows per file from the row-group list."""
    out = [0] * n_files
    for rg in row_groups:
        out[rg.file_index] += rg.n_rows
    return out


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: file number, row-group number, rows, and global row offset."""

    file_index: int
    row_group: int
    n_rows: int
    offset: int


class StampIndex:
    """The files, row groups and per-row small columns of a stamp data set.

    ``meta`` maps each present column of :data:`INDEX_COLUMNS` to a numpy array over the global
    rows (files in sorted order, row groups in file order). Built by :meth:`scan`.
    """

    def __init__(self, path: str, filesystem, files: list[str], row_groups: list[RowGroup], meta: dict[str, np.ndarray], columns: set[str]):
        self.path = path
        self.columns = columns  # column names present in every file
        self.filesystem = filesystem
        self.files = files
        self.row_groups = row_groups
        self.meta = meta
        self.n_rows = sum(rg.n_rows for rg in row_groups)
        self._open: dict[int, object] = {}

    @classmethod
    def scan(cls, path: str) -> StampIndex:
        import pyarrow.parquet as pq

        fs, files = list_parquet_files(str(path))
        row_groups: list[RowGroup] = []
        parts: dict[str, list[np.ndarray]] = {}
        offset = 0
        common: set[str] | None = None
        hard_parts: list[Optional[tuple[np.ndarray, np.ndarray]]] = []
        for i, f in enumerate(files):
            try:
                pf = pq.ParquetFile(fs.open_input_file(f))
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputDataError(f"{f}: not a readable Parquet file ({exc})") from None
            names = set(pf.schema_arrow.names)
            common = names if common is None else common & names
            missing = {COL.image, COL.n_bands, COL.stamp_size} - names
            if missing:
                raise InputDataError(f"{f}: missing stamp columns {sorted(missing)}")
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                row_groups.append(RowGroup(i, rg, n, offset))
                offset += n
            cols = [c for c in (*INDEX_COLUMNS, *HARD_NEG_COLUMNS) if c in names]
            table = pf.read(columns=cols)
            hive_split = hive_value(f, COL.split)
            hard_parts.append(_hard_negative_columns(table, names))
            for c in INDEX_COLUMNS:
                if c == COL.is_null_injection:
                    # absent (stamps that predate the column) or null: not a null injection
                    flag = table.column(c).fill_null(False).to_numpy(zero_copy_only=False) if c in names else np.zeros(table.num_rows, bool)
                    parts.setdefault(c, []).append(flag.astype(bool))
                elif c in names:
                    parts.setdefault(c, []).append(table.column(c).to_numpy(zero_copy_only=False))
                elif c == COL.split and hive_split is not None:
                    # 4c writes split=<value>/ directories (as Spark's partitionBy("split") does), not a column
                    parts.setdefault(c, []).append(np.full(table.num_rows, hive_split, dtype=object))
                else:
                    parts.setdefault(c, []).append(None)
        meta = {}
        for c, chunks in parts.items():
            if all(ch is not None for ch in chunks):
                meta[c] = np.concatenate(chunks) if chunks else np.zeros(0)
        if any(p is not None for p in hard_parts):
            n_of = _file_rows(row_groups, len(files))
            filled = [p if p is not None else (np.full(n, None, object), np.full(n, np.nan)) for p, n in zip(hard_parts, n_of)]
            meta[HARD_NEG_SOURCE] = np.concatenate([p[0] for p in filled]) if filled else np.zeros(0, object)
            meta[HARD_NEG_WEIGHT] = np.concatenate([p[1] for p in filled]) if filled else np.zeros(0)
        if COL.split in meta:
            meta[COL.split] = meta[COL.split].astype(str)
        if COL.label in meta:
            labels = meta[COL.label]
            bad = ~np.isin(labels, (0, 1))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputDataError(f"{path}: label must be 0 or 1, got {labels[row]!r} at global row {row}")
            meta[COL.label] = labels.astype(np.int64)
        return cls(str(path), fs, files, row_groups, meta, common or set())

    def rows(self, split: str | None = None, null_injections: bool = True) -> np.ndarray:
        """Global row indices of ``split`` (all rows when None), ascending; without the null
        injections when ``null_injections`` is False."""
        keep = np.ones(self.n_rows, bool) if null_injections else ~self.is_null_injection
        if split is None:
            return np.flatnonzero(keep).astype(np.int64)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if COL.split not in self.meta:
            raise InputDataError(f"{self.path}: no '{COL.split}' column, cannot select split {split!r}")
        return np.flatnonzero((self.meta[COL.split] == split) & keep).astype(np.int64)

    @property
    def is_null_injection(self) -> np.ndarray:
        """(n_rows,) bool: null injections (zero source flux through the injection path, label 0);
        all False for stamps that predate the column."""
        return self.meta.get(COL.is_null_injection, np.zeros(self.n_rows, bool))

    def where(self, rg: RowGroup) -> str:
        return f"{self.files[rg.file_index]} (row group {rg.row_group})"

    def _file(self, rg: RowGroup):
        """The ParquetFile of a row group (the file handle is kept open per process)."""
        import pyarrow.parquet as pq

        pf = self._open.get(rg.file_index)
        if pf is None:
            pf = self._open[rg.file_index] = pq.ParquetFile(self.filesystem.open_input_file(self.files[rg.file_index]))
        return pf

    def read(self, rg: RowGroup, columns: list[str]) -> pa.Table:
        """Columns of one row group."""
        return self._file(rg).read_row_group(rg.row_group, columns=columns)

    def file_has_column(self, rg: RowGroup, name: str) -> bool:
        """Whether the file holding ``rg`` has column ``name`` (files written by older code may lack it)."""
        return name in self._file(rg).schema_arrow.names

    def read_images(self, rg: RowGroup, extra_columns: tuple[str, ...] = ()) -> tuple[np.ndarray, pa.Table]:
        """Images (N, C, H, W) float32 nanomaggies of one row group (a view of the Arrow
        buffer) and the table of ``extra_columns``."""
        table = self.read(rg, [COL.image, COL.n_bands, COL.stamp_size, *extra_columns])
        where = self.where(rg)
        images = decode_image_column(table.column(COL.image), table.column(COL.n_bands).to_numpy(), table.column(COL.stamp_size).to_numpy(), where)
        return images, table.select(list(extra_columns))

    def groups_of(self, rows: np.ndarray) -> list[tuple[RowGroup, np.ndarray]]:
        """The row groups holding ``rows`` (sorted global indices), each with its local indices."""
        starts = np.array([rg.offset for rg in self.row_groups], dtype=np.int64)
        which = np.searchsorted(starts, rows, side="right") - 1
        out = []
        for g in np.unique(which):
            rg = self.row_groups[int(g)]
            out.append((rg, rows[which == g] - rg.offset))
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}  # file handles do not cross process boundaries
        return state


def load_images(index: StampIndex, rows: np.ndarray) -> np.ndarray:
    """Raw images (len(rows), C, H, W) float32 nanomaggies of the given global rows, in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    parts = []
    for rg, local in index.groups_of(rows[order]):
        images, _ = index.read_images(rg)
        parts.append(images[local])
    if not parts:
        raise ValueError("no rows to load")
    out = np.empty((len(rows), *parts[0].shape[1:]), dtype=np.float32)
    out[order] = np.concatenate(parts)
    return out


def load_arc_images(index: StampIndex, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(arcs, has_arc)`` of the given global rows, in that order: the ``arc_image`` column
    (what the injection added, (N, C, H, W) float32 nanomaggies), zeros where it is null
    (controls) or absent from the row's file (stamps that predate it); ``has_arc`` says which rows
    hold one."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    parts, flags = [], []
    for rg, local in index.groups_of(rows[order]):
        if not index.file_has_column(rg, COL.arc_image):
            images, _ = index.read_images(rg)
            parts.append(np.zeros_like(images[local]))
            flags.append(np.zeros(len(local), bool))
            continue
        table = index.read(rg, [COL.arc_image, COL.n_bands, COL.stamp_size]).take(pa.array(local))
        valid = table.column(COL.arc_image).is_valid().to_numpy(zero_copy_only=False)
        c, s = int(table.column(COL.n_bands)[0].as_py()), int(table.column(COL.stamp_size)[0].as_py())
        arcs = np.zeros((len(local), c, s, s), np.float32)
        if valid.any():
            sub = table.filter(pa.array(valid))
            arcs[valid] = decode_image_column(sub.column(COL.arc_image), sub.column(COL.n_bands).to_numpy(), sub.column(COL.stamp_size).to_numpy(), index.where(rg))
        parts.append(arcs)
        flags.append(valid)
    if not parts:
        raise ValueError("no rows to load")
    out = np.empty((len(rows), *parts[0].shape[1:]), dtype=np.float32)
    has = np.empty(len(rows), bool)
    out[order], has[order] = np.concatenate(parts), np.concatenate(flags)
    return out, has


class StampDataset(torch.utils.data.IterableDataset):
    """Iterable of preprocessed batches ``{"image", "label", "weight", "row"}`` (torch tensors).

    ``rows``: global row indices to serve (e.g. ``index.rows("train")``). ``epoch_rows``:
    optional ``f(epoch) -> rows`` that replaces ``rows`` at each :meth:`set_epoch` (the
    hard-negative subsample of :class:`HardNegativeStampPlan`). ``weights``: per
    global row sample weights (hard negatives), default 1. With ``shuffle`` the row-group order
    and a buffer of ``shuffle_buffer`` stamps are permuted each epoch; with ``augment`` each
    stamp gets a random flip/rotation. Call :meth:`set_epoch` before each epoch. Use with
    ``torch.utils.data.DataLoader(dataset, batch_size=None)`` (see :func:`make_loader`): the
    dataset batches itself so that preprocessing is vectorised.
    """

    def __init__(
        self,
        index: StampIndex,
        rows: np.ndarray,
        batch_size: int,
        preprocess_cfg: PreprocessConfig,
        weights: np.ndarray | None = None,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 4096,
        epoch_rows: Optional[Callable[[int], np.ndarray]] = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if COL.label not in index.meta:
            raise InputDataError(f"{index.path}: no '{COL.label}' column; training and validation need labels")
        self.index = index
        self.epoch_rows = epoch_rows
        self._set_rows(rows)
        self.batch_size = int(batch_size)
        self.preprocess_cfg = preprocess_cfg
        self.weights = np.ones(index.n_rows, np.float32) if weights is None else np.asarray(weights, np.float32)
        if len(self.weights) != index.n_rows:
            raise ValueError(f"weights has {len(self.weights)} entries for {index.n_rows} rows")
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.epoch = 0

    @property
    def n_stamps(self) -> int:
        """Stamps per epoch."""
        return len(self.rows)

    def n_batches(self, num_workers: int = 0) -> int:
        """Batches per epoch (each worker's last batch may be short)."""
        counts = [sum(len(local) for _, local in self.assigned_groups(w, max(num_workers, 1))) for w in range(max(num_workers, 1))]
        return sum(-(-c // self.batch_size) for c in counts)

    def _set_rows(self, rows: np.ndarray) -> None:
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        self.groups = self.index.groups_of(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (seeds the shuffles; with ``epoch_rows``, also the rows served)."""
        self.epoch = int(epoch)
        if self.epoch_rows is not None:
            self._set_rows(self.epoch_rows(self.epoch))

    def assigned_groups(self, worker_id: int, num_workers: int) -> list[tuple[RowGroup, np.ndarray]]:
        """The row groups worker ``worker_id`` of ``num_workers`` reads this epoch."""
        order = np.arange(len(self.groups))
        if self.shuffle:
            order = rng_from_seed(stable_hash64("rowgroups", self.seed, self.epoch)).permutation(order)
        return [self.groups[i] for i in order[worker_id::num_workers]]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = rng_from_seed(stable_hash64("batches", self.seed, self.epoch, worker_id, num_workers))
        labels_all = self.index.meta[COL.label]
        buffer: list[tuple[np.ndarray, np.ndarray]] = []
        buffered = 0
        groups = self.assigned_groups(worker_id, num_workers)
        for k, (rg, local) in enumerate(groups):
            images, _ = self.index.read_images(rg)
            buffer.append((preprocess(images[local], self.preprocess_cfg), rg.offset + local))
            buffered += len(local)
            last = k == len(groups) - 1
            if buffered < self.shuffle_buffer and not last:
                continue
            images = np.concatenate([b[0] for b in buffer])
            rows = np.concatenate([b[1] for b in buffer])
            if self.shuffle:
                perm = rng.permutation(len(rows))
                images, rows = images[perm], rows[perm]
            n_full = len(rows) if last else (len(rows) // self.batch_size) * self.batch_size
            for start in range(0, n_full, self.batch_size):
                sl = slice(start, min(start + self.batch_size, n_full))
                batch = augment(images[sl], rng) if self.augment else images[sl]
                r = rows[sl]
                yield {
                    "image": torch.from_numpy(np.ascontiguousarray(batch)),
                    "label": torch.from_numpy(labels_all[r].astype(np.float32)),
                    "weight": torch.from_numpy(self.weights[r]),
                    "row": torch.from_numpy(r),
                }
            buffer = [(images[n_full:], rows[n_full:])] if n_full < len(rows) else []
            buffered = len(rows) - n_full


@dataclass(frozen=True)
class HardNegativeStampPlan:
    """How the training split's hard-negative stamps are served (see :func:`plan_hard_negative_stamps`).

    ``ordinary``: training rows always served (untagged rows, and tagged positives). ``hard``:
    the tagged label-0 rows of the chosen sources. ``n_hard_per_epoch``: how many of ``hard``
    each epoch serves (all, unless ``max_fraction`` caps them). ``weights``: per global row loss
    weight (``hard_neg_weight * weight`` on ``hard``, 1 elsewhere). ``is_hard``: per global row,
    whether it is in ``hard``. ``report``: counts for metrics.json.
    """

    ordinary: np.ndarray
    hard: np.ndarray
    n_hard_per_epoch: int
    weights: np.ndarray
    is_hard: np.ndarray
    seed: int
    report: dict = field(default_factory=dict)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Sorted global rows of training epoch ``epoch``: every ordinary row plus
        ``n_hard_per_epoch`` hard rows (all of them, or a subsample seeded by the seed and epoch)."""
        hard = self.hard
        if self.n_hard_per_epoch < len(hard):
            hard = rng_from_seed(stable_hash64("hard-negative-stamps", self.seed, int(epoch))).choice(hard, self.n_hard_per_epoch, replace=False)
        return np.sort(np.concatenate([self.ordinary, hard]).astype(np.int64))


def source_matches(tag: str, sources) -> bool:
    """Whether a row's ``hard_neg_source`` is one of ``sources``: equal to an entry, or its
    catalogue part (before ``:``, as in ``lookalike:ring_collisional``) is."""
    return tag in sources or tag.split(":", 1)[0] in sources


def plan_hard_negative_stamps(
    index: StampIndex, train_rows: np.ndarray, weight: float, max_fraction: float, sources: Optional[list[str]], seed: int
) -> Optional[HardNegativeStampPlan]:
    """The hard-negative stamps of ``train_rows``, or None when the stamp set has no
    ``hard_neg_source`` column (then training is exactly as without this function).

    A hard-negative row is a label-0 row with a non-null ``hard_neg_source``; a tagged positive
    (an injection onto a look-alike host) is a lens, kept as an ordinary row at weight 1 and
    counted. Rows whose tag is not in ``sources`` (None: every tag; :func:`source_matches`) are
    left out of training.
    Weight of a used row: ``hard_neg_weight * weight``; a null ``hard_neg_weight`` counts as 1
    (logged); a negative or non-finite one raises :class:`InputDataError` naming the file and row.
    ``max_fraction`` (0..1): at most this share of an epoch's stamps are hard rows,
    ``n_hard <= max_fraction * n_ordinary / (1 - max_fraction)`` (1: no cap).
    """
    if HARD_NEG_SOURCE not in index.meta:
        if sources is not None:
            log.info("hard negatives: %s has no '%s' column; hard_negatives.sources/weight/max_fraction are unused", index.path, HARD_NEG_SOURCE)
        return None
    if not (0.0 <= max_fraction <= 1.0):
        raise ValueError(f"hard_negatives.max_fraction must lie in [0, 1], got {max_fraction!r}")
    if not (weight >= 0 and np.isfinite(weight)):
        raise ValueError(f"hard_negatives.weight must be a finite number >= 0, got {weight!r}")
    rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    tag = index.meta[HARD_NEG_SOURCE][rows]
    label = index.meta[COL.label][rows]
    tagged = np.array([t is not None for t in tag], bool)
    hard_all = tagged & (label == 0)
    present = sorted({str(t) for t in tag[hard_all]})
    chosen = hard_all if sources is None else hard_all & np.array([t is not None and source_matches(str(t), sources) for t in tag], bool)
    absent = sorted(s for s in (sources or ()) if not any(source_matches(t, [s]) for t in present))
    if absent:
        log.warning("hard negatives: hard_negatives.sources lists %s, which no label-0 training stamp carries (present: %s)", absent, present)
    hard = rows[chosen]
    raw = index.meta[HARD_NEG_WEIGHT][hard].astype(np.float64)
    null_weight = np.isnan(raw)
    bad = ~null_weight & ~(np.isfinite(raw) & (raw >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rg, local = index.groups_of(hard[i : i + 1])[0]
        raise InputDataError(f"{index.where(rg)}, row {int(local[0])}: {HARD_NEG_WEIGHT} must be finite and >= 0, got {float(raw[i])!r} "
                             f"(global row {int(hard[i])})")  # fmt: skip
    if null_weight.any():
        log.warning("hard negatives: %d hard-negative stamps have a null %s; using 1 for them", int(null_weight.sum()), HARD_NEG_WEIGHT)
    weights = np.ones(index.n_rows, np.float32)
    weights[hard] = (np.where(null_weight, 1.0, raw) * weight).astype(np.float32)
    is_hard = np.zeros(index.n_rows, bool)
    is_hard[hard] = True
    ordinary = rows[~hard_all]
    if max_fraction >= 1.0:
        n_epoch = len(hard)
    else:
        n_epoch = min(len(hard), int(np.floor(max_fraction * len(ordinary) / (1.0 - max_fraction) + 1e-9)))
    report = {
        "sources_present": {t: int((tag[hard_all] == t).sum()) for t in present},
        "sources_used": sorted({str(t) for t in tag[chosen]}),
        "left_out_of_training": int((hard_all & ~chosen).sum()),
        "tagged_positives_as_ordinary": int((tagged & (label == 1)).sum()),
        "n_hard": int(len(hard)),
        "n_hard_per_epoch": int(n_epoch),
        "n_ordinary": int(len(ordinary)),
        "null_weight_rows": int(null_weight.sum()),
        "weight": float(weight),
        "max_fraction": float(max_fraction),
    }
    log.info("hard-negative stamps: %s", report)
    return HardNegativeStampPlan(ordinary=ordinary, hard=hard, n_hard_per_epoch=n_epoch, weights=weights, is_hard=is_hard, seed=int(seed), report=report)


def make_loader(dataset: StampDataset, num_workers: int = 0, pin_memory: bool = False):
    """A DataLoader over the self-batching dataset (``batch_size=None``). Workers are not
    persistent, so each epoch's workers see the epoch set by :meth:`StampDataset.set_epoch`."""
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
    )
