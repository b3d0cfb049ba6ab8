"""Write the stamps of one 4c task as Parquet, from the Python worker that made them.

Why not Spark's writer: a 64 px grz stamp is a 49 KB binary value. Handing it back to the JVM
(Arrow -> rows) and through parquet-mr cost ~0.4-0.6 ms of JVM CPU per stamp, a quarter of the
injection itself (benchmarks/bench_spark_inject.py), while pyarrow writes the same bytes in the
worker for a fraction of that. So 4c's ``mapInArrow`` writes its stamps here and hands Spark
only one small row per manifest row (task id, stamp or reject, reason); Spark writes the
rejects from those rows and counts both outputs back from disk.

Layout, the one Spark's ``partitionBy("split")`` writes: ``<stamps>/split=<split>/<stem>-cNNN.parquet``,
the ``split`` column in the directory name only; per task and split one file, or several when
the rows pass ``max_file_bytes`` (1 GiB of Arrow data by default: S3 copies a file in one
CopyObject, which stops at 5 GiB). Row groups hold exactly ``row_group_rows`` rows (the last
of a file fewer), so a worker buffers less than two row groups per split. Write options: zstd
level 1, no dictionary (pixel bytes never repeat). The footer keeps the schema's field metadata
(descriptions, the image encoding) in pyarrow's and in Spark's form, so Spark readers see the
same metadata as for files Spark wrote.

Task commit: each file is written under ``tmp_uri`` with an attempt-unique name and moved to its
final name only after every row of the task is written (:meth:`SplitStampWriter.commit`): a
rename on local disk, a server-side copy on S3. An attempt that fails before its commit leaves
nothing under ``<stamps>``; one that fails during or after it may leave some of its files, which
the retry replaces. Final names depend on the Spark partition and the row count, never on the
attempt, and a partition's rows are deterministic, so the retry writes the same names with the
same rows (the same bytes too, unless an input changed between attempts, e.g. the coadd-PSF
fallback after a transient HTTP failure, which the rows record). The driver deletes ``tmp_uri``
after the job. Speculative execution stays off (``spark_session.stamp_spark_conf``): a losing
attempt could still move files after the job has returned.
"""

from __future__ import annotations

import re
import uuid
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dhs_spark.jobs.paths import arrow_filesystem, join
from dhs_spark.schema import STAMP_COLUMNS, arrow_schema

PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "use_dictionary": False}
MAX_FILE_BYTES = 1 << 30
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
SPARK_ROW_METADATA_KEY = "org.apache.spark.sql.parquet.row.metadata"
FILE_COLUMNS = tuple(c for c in STAMP_COLUMNS if c.name != "split")
"""The stamp columns a file holds (``split`` is the directory)."""


def stamp_file_schema(spark_row_metadata: Optional[str] = None) -> pa.Schema:
    """The Arrow schema of a stamp file; ``spark_row_metadata``: Spark's StructType JSON of the
    same columns (``spark_schema(FILE_COLUMNS).json()``), kept in the footer for Spark readers."""
    schema = arrow_schema(FILE_COLUMNS)
    return schema.with_metadata({SPARK_ROW_METADATA_KEY: spark_row_metadata}) if spark_row_metadata else schema


class SplitStampWriter:
    """Stamp rows of one task -> ``<stamps_uri>/split=<s>/<file_stem>-cNNN.parquet``, committed together.

    ``stamps_uri``, ``tmp_uri``: ``file://`` or ``s3://`` URIs (or local paths) on one file
    system. ``file_stem``: this task's name, the same for every attempt (e.g. ``part-00003`` from
    the partition id). Use :meth:`write` for batches of stamp rows (any column superset of
    :data:`FILE_COLUMNS` plus ``split``), then :meth:`commit`, or :meth:`abort` on failure.
    """

    def __init__(self, stamps_uri: str, tmp_uri: str, file_stem: str, schema: Optional[pa.Schema] = None, row_group_rows: int = 256,
                 max_file_bytes: int = MAX_FILE_BYTES):  # fmt: skip
        self.fs, self.stamps_dir = arrow_filesystem(stamps_uri)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)  # object stores need no directories
        _, self.tmp_dir = arrow_filesystem(tmp_uri)
        self.file_stem = file_stem
        self.schema = schema or stamp_file_schema()
        self.row_group_rows = int(row_group_rows)
        self.max_file_bytes = int(max_file_bytes)
        self._attempt = uuid.uuid4().hex
        self._pending: dict[str, list[pa.RecordBatch]] = {}
        self._open: dict[str, tuple[pq.ParquetWriter, str, int]] = {}  # split -> (writer, tmp path, Arrow bytes written)
        self._files: list[tuple[str, str]] = []  # (tmp path, final path) of every file this attempt opened
        self._files_per_split: dict[str, int] = {}
        self.rows_written: dict[str, int] = {}

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer ``batch``'s rows by split; full row groups go to disk."""
        if batch.num_rows == 0:
            return
        split = batch.column("split")
        if split.null_count:
            raise ValueError(f"{split.null_count} stamp rows without a split (the manifest gives every row one)")
        values = split.unique().to_pylist()
        bad = [v for v in values if not _SPLIT_NAME.fullmatch(v)]
        if bad:
            raise ValueError(f"split value(s) {bad} cannot name a split=<value> directory (letters, digits, '_', '-')")
        files = pa.RecordBatch.from_arrays([batch.column(f.name) for f in self.schema], schema=self.schema)
        for value in values:
            rows = files if len(values) == 1 else files.filter(pc.equal(split, value))
            self._pending.setdefault(value, []).append(rows)
            self.rows_written[value] = self.rows_written.get(value, 0) + rows.num_rows
            self._flush(value, whole_groups_only=True)

    def _flush(self, split: str, whole_groups_only: bool) -> None:
        """Write the pending rows of ``split`` in row groups of ``row_group_rows`` (with
        ``whole_groups_only``, keep the rows short of a whole group pending)."""
        table = pa.Table.from_batches(self._pending.pop(split, []), schema=self.schema)
        n = (table.num_rows // self.row_group_rows) * self.row_group_rows if whole_groups_only else table.num_rows
        for start in range(0, n, self.row_group_rows):
            group = table.slice(start, min(self.row_group_rows, n - start))
            writer, tmp, nbytes = self._writer(split)
            writer.write_table(group, row_group_size=group.num_rows)
            self._open[split] = (writer, tmp, nbytes + group.nbytes)
        if n < table.num_rows:
            self._pending[split] = table.slice(n).to_batches()

    def _writer(self, split: str) -> tuple[pq.ParquetWriter, str, int]:
        """The open file of ``split``; a new one when there is none or it has reached ``max_file_bytes``."""
        if split in self._open and self._open[split][2] >= self.max_file_bytes:
            self._close(split)
        if split not in self._open:
            k = self._files_per_split.get(split, 0)
            self._files_per_split[split] = k + 1
            name = f"{self.file_stem}-c{k:03d}.parquet"
            tmp = join(self.tmp_dir, f"split={split}", f"{name}.{self._attempt}")
            if self._local:
                self.fs.create_dir(tmp.rsplit("/", 1)[0], recursive=True)
            writer = pq.ParquetWriter(tmp, self.schema, filesystem=self.fs, **PARQUET_OPTIONS)
            self._open[split] = (writer, tmp, 0)
            self._files.append((tmp, join(self.stamps_dir, f"split={split}", name)))
        return self._open[split]

    def _close(self, split: str) -> None:
        writer, _, _ = self._open.pop(split)
        writer.close()

    def commit(self) -> dict[str, int]:
        """Flush, close and move every file into place; returns rows written per split."""
        for split in list(self._pending):
            self._flush(split, whole_groups_only=False)
        for split in list(self._open):
            self._close(split)
        for tmp, final in self._files:
            if self._local:
                self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            self.fs.move(tmp, final)
        self._files.clear()
        return dict(self.rows_written)

    def abort(self) -> None:
        """Close and delete this attempt's temporary files (best effort, never hiding the error
        that caused the abort: the driver deletes ``tmp_uri`` too)."""
        self._pending.clear()
        for split in list(self._open):
            try:
                self._close(split)
            except Exception:  # noqa: BLE001 - a broken writer must not mask the task's own error
                pass
        for tmp, _ in self._files:
            try:
                self.fs.delete_file(tmp)
            except Exception:  # noqa: BLE001
                pass
        self._files.clear()
