"""Write the stamps of one 4c task as Parquet, from the Python worker that made them.

Why not Spark's writer: a 64 px grz stamp is a 49 KB binary value. Handing it back to the JVM
(Arrow -> rows) and through parquet-mr cost ~0.4-0.6 ms of JVM CPU per stamp, a quarter of the
injection itself (benchmarks/bench_spark_inject.py), while pyarrow writes the same bytes in the
worker for a fraction of that. So 4c's ``mapInArrow`` writes its stamps here and hands Spark
only one small row per manifest row (task id, stamp or reject, reason); Spark writes the
rejects from those rows and counts both outputs back from disk.

Layout, the one Spark's ``partitionBy("split")`` writes: ``<stamps>/split=<split>/<file_name>``,
one file per task and split, the ``split`` column in the directory name only. Row groups hold
``row_group_rows`` rows (a whole Arrow batch), so a worker buffers at most one row group per
split. Write options: zstd level 1, no dictionary (pixel bytes never repeat). The footer keeps
the schema's field metadata (descriptions, the image encoding) in pyarrow's and in Spark's form,
so Spark readers see the same metadata as for files Spark wrote.

Task commit: each file is written under ``tmp_uri`` with an attempt-unique name and moved to its
final name only after every row of the task is written (:meth:`SplitStampWriter.commit`): a
rename on local disk, a server-side copy on S3, so a failed or killed attempt leaves nothing
under ``<stamps>``. The final name depends on the Spark partition, never on the attempt, and a
partition's rows and bytes are deterministic, so a retried or speculative attempt replaces a
file with identical bytes. The driver deletes ``tmp_uri`` after the job.
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
    """Stamp rows of one task -> ``<stamps_uri>/split=<s>/<file_name>``, committed together.

    ``stamps_uri``, ``tmp_uri``: ``file://`` or ``s3://`` URIs (or local paths) on one file
    system. ``file_name``: this task's file name, the same for every attempt (e.g. from the
    partition id). Use :meth:`write` for batches of stamp rows (any column superset of
    :data:`FILE_COLUMNS` plus ``split``), then :meth:`commit`, or :meth:`abort` on failure.
    """

    def __init__(self, stamps_uri: str, tmp_uri: str, file_name: str, schema: Optional[pa.Schema] = None, row_group_rows: int = 256):
        self.fs, self.stamps_dir = arrow_filesystem(stamps_uri)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)  # object stores need no directories
        _, self.tmp_dir = arrow_filesystem(tmp_uri)
        self.file_name = file_name
        self.schema = schema or stamp_file_schema()
        self.row_group_rows = int(row_group_rows)
        self._attempt = uuid.uuid4().hex
        self._writers: dict[str, tuple[pq.ParquetWriter, str]] = {}
        self._pending: dict[str, list[pa.RecordBatch]] = {}
        self.rows_written: dict[str, int] = {}

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer ``batch``'s rows by split; full row groups go to disk."""
        if batch.num_rows == 0:
            return
        split = batch.column("split")
        if split.null_count:
            raise ValueError(f"{split.null_count} stamp rows without a split (the manifest gives every row one)")
        files = pa.RecordBatch.from_arrays([batch.column(f.name) for f in self.schema], schema=self.schema)
        values = split.unique().to_pylist()
        bad = [v for v in values if not _SPLIT_NAME.fullmatch(v)]
        if bad:
            raise ValueError(f"split value(s) {bad} cannot name a split=<value> directory (letters, digits, '_', '-')")
        for value in values:
            rows = files if len(values) == 1 else files.filter(pc.equal(split, value))
            self._pending.setdefault(value, []).append(rows)
            self.rows_written[value] = self.rows_written.get(value, 0) + rows.num_rows
            if sum(b.num_rows for b in self._pending[value]) >= self.row_group_rows:
                self._flush(value)

    def _flush(self, split: str) -> None:
        batches = self._pending.pop(split, [])
        if not batches:
            return
        if split not in self._writers:
            tmp = join(self.tmp_dir, f"split={split}", f"{self.file_name}.{self._attempt}")
            if self._local:
                self.fs.create_dir(tmp.rsplit("/", 1)[0], recursive=True)
            self._writers[split] = (pq.ParquetWriter(tmp, self.schema, filesystem=self.fs, **PARQUET_OPTIONS), tmp)
        self._writers[split][0].write_table(pa.Table.from_batches(batches), row_group_size=sum(b.num_rows for b in batches))

    def commit(self) -> dict[str, int]:
        """Flush, close and move every file into place; returns rows written per split."""
        for split in list(self._pending):
            self._flush(split)
        for split, (writer, tmp) in sorted(self._writers.items()):
            writer.close()
            final_dir = join(self.stamps_dir, f"split={split}")
            if self._local:
                self.fs.create_dir(final_dir, recursive=True)
            self.fs.move(tmp, join(final_dir, self.file_name))
        self._writers.clear()
        return dict(self.rows_written)

    def abort(self) -> None:
        """Close and delete this attempt's temporary files (best effort: the driver deletes ``tmp_uri`` too)."""
        self._pending.clear()
        for writer, tmp in self._writers.values():
            try:
                writer.close()
                self.fs.delete_file(tmp)
            except OSError:
                pass
        self._writers.clear()
