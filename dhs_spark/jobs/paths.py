"""Every output path of the phase-4 pipeline, and the file operations that commit a stage.

One experiment directory holds one directory per stage (names from ``DataVariantConfig``)::

    <experiment>/<data.phase4a_manifest>/manifest/        Parquet manifest rows
                                        /summary.csv      counts by tier, split and label
    <experiment>/<data.phase4c_stamps>/stamps/split=*/    Parquet stamps (partitioned by split)
                                      /rejects/           Parquet reject rows
    <experiment>/phase4d_gates/gates.json, gates.md
    <experiment>/score/<score input>/scores/          Parquet scores (SCORE_COLUMNS), input 'stamps' or 'parent'
                                    /rejects/         parent rows that could not be cut
    <each stage dir>/_stage_config.json                   the resolved config of the run
    <each stage dir>/_COMPLETE.json                       row counts, written last
    <experiment>/_staging/<stage>.<run id>/               a run in progress

Paths are URIs (``file:///abs/path`` or ``s3://bucket/key``); bare local paths are made
absolute ``file://`` URIs, so the same code serves local disk and S3. The driver's file
operations go through Hadoop's FileSystem API in its JVM (``file:`` and EMRFS ``s3:``); code
without a JVM (4c's Python workers writing stamps, the trainer) uses :func:`arrow_filesystem`,
pyarrow's clients for local disk and S3 (not HDFS: 4c refuses an ``hdfs://`` output up front).

Idempotence: a stage writes into its staging directory, writes ``_COMPLETE.json`` there last,
then :func:`commit` swaps it into place. On a local file system each rename is atomic,
so a reader sees the old output, no output, or the new output, never a mix and never two copies.
On S3 a rename is a copy, so readers (and ``--resume``) trust only a directory holding
``_COMPLETE.json`` and check its counts against the data.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = "_COMPLETE.json"
STAGE_CONFIG = "_stage_config.json"
GATES_DIRNAME = "phase4d_gates"
SCORE_DIRNAME = "score"


def to_uri(path: str) -> str:
    """``path`` as a URI: URIs unchanged (trailing '/' dropped), local paths absolute ``file://``."""
    if "://" in path:
        return path.rstrip("/")
    return Path(path).expanduser().resolve().as_uri()


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, '/'-separated (URIs never use the OS separator)."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def is_local(uri: str) -> bool:
    return to_uri(uri).startswith("file:")


def local_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (or of a bare path)."""
    from urllib.parse import unquote, urlparse

    uri = to_uri(uri)
    if not uri.startswith("file:"):
        raise ValueError(f"not a local path: {uri}")
    return Path(unquote(urlparse(uri).path))


def arrow_filesystem(uri: str):
    """``(pyarrow FileSystem, path inside it)`` for a local path, ``file://`` or ``s3://`` URI.

    For code without a JVM (Spark's Python workers, the trainer): pyarrow's S3FileSystem takes
    credentials and region from the usual AWS environment (an EMR node's instance profile).
    ``s3a://`` and ``s3n://`` (Hadoop's names for the same buckets) are read as ``s3://``.
    """
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3a", "s3n"):
        uri = "s3://" + rest
    elif scheme not in ("s3", "file"):
        raise ValueError(f"{uri}: Python-side file access supports local paths, file:// and s3:// (not {scheme}://)")
    return pafs.FileSystem.from_uri(uri)


@dataclass(frozen=True)
class ExperimentPaths:
    """The directories of one experiment (``root`` = the experiment directory URI)."""

    root: str
    manifest_dirname: str = "phase4a_manifest"
    stamps_dirname: str = "phase4c_stamps"

    @classmethod
    def from_config(cls, cfg) -> ExperimentPaths:
        return cls(to_uri(cfg.output_dir), cfg.data.phase4a_manifest, cfg.data.phase4c_stamps)

    def stage_dir(self, stage: str) -> str:
        names = {"4a": self.manifest_dirname, "4c": self.stamps_dirname, "4d": GATES_DIRNAME, "score": SCORE_DIRNAME}
        if stage not in names:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(names)}")
        return join(self.root, names[stage])

    def staging_dir(self, stage: str, run_id: str | None = None) -> str:
        name = self.stage_dir(stage).rsplit("/", 1)[1]
        return join(self.root, "_staging", f"{name}.{run_id or uuid.uuid4().hex}")

    @property
    def manifest(self) -> str:
        return join(self.stage_dir("4a"), "manifest")

    @property
    def manifest_summary(self) -> str:
        return join(self.stage_dir("4a"), "summary.csv")

    @property
    def stamps(self) -> str:
        return join(self.stage_dir("4c"), "stamps")

    @property
    def rejects(self) -> str:
        return join(self.stage_dir("4c"), "rejects")

    @property
    def gates_json(self) -> str:
        return join(self.stage_dir("4d"), "gates.json")

    @property
    def gates_md(self) -> str:
        return join(self.stage_dir("4d"), "gates.md")

    def score_dir(self, score_input: str) -> str:
        """The committed directory of one score run: ``<experiment>/score/<score_input>`` (the
        stage directory of ``score`` holds one per input, so scoring the parent sample does not
        replace the stamps' scores)."""
        if not score_input or "/" in score_input:
            raise ValueError(f"score input must be a plain name such as 'stamps' or 'parent', got {score_input!r}")
        return join(self.stage_dir("score"), score_input)

    def scores(self, score_input: str) -> str:
        return join(self.score_dir(score_input), "scores")

    def score_rejects(self, score_input: str) -> str:
        return join(self.score_dir(score_input), "rejects")


# -- Hadoop FileSystem operations (driver only) ------------------------------------------------


def _fs(spark, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(to_uri(uri))
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def exists(spark, uri: str) -> bool:
    fs, path = _fs(spark, uri)
    return bool(fs.exists(path))


def delete(spark, uri: str) -> None:
    fs, path = _fs(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def rename(spark, src: str, dst: str) -> None:
    fs, src_path = _fs(spark, src)
    _, dst_path = _fs(spark, dst)
    fs.mkdirs(dst_path.getParent())
    if not fs.rename(src_path, dst_path):
        raise OSError(f"rename failed: {src} -> {dst}")


def mkdirs(spark, uri: str) -> None:
    fs, path = _fs(spark, uri)
    fs.mkdirs(path)


def write_text(spark, uri: str, text: str) -> None:
    """Write (overwrite) a small UTF-8 text file."""
    fs, path = _fs(spark, uri)
    out = fs.create(path, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def read_text(spark, uri: str) -> str | None:
    """A small text file's content, or None when it does not exist."""
    fs, path = _fs(spark, uri)
    if not fs.exists(path):
        return None
    stream = fs.open(path)
    try:
        return spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def copy_to_local(spark, uri: str, dest_dir: str | Path) -> Path:
    """A local copy of the file at ``uri`` (the path itself when it is already local)."""
    if is_local(uri):
        return local_path(uri)
    fs, path = _fs(spark, uri)
    dest = Path(dest_dir) / to_uri(uri).rsplit("/", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs.copyToLocalFile(False, path, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(dest.as_uri()), True)
    return dest


def read_marker(spark, stage_dir: str) -> dict | None:
    """The ``_COMPLETE.json`` of a committed stage directory, or None."""
    text = read_text(spark, join(stage_dir, COMPLETE_MARKER))
    return None if text is None else json.loads(text)


def commit(spark, staging: str, final: str) -> None:
    """Move a finished staging directory to ``final``, replacing what was there.

    The old output is first renamed aside and deleted only after the new one is in place, so a
    failure mid-commit never leaves two copies under ``final``.
    """
    aside = None
    if exists(spark, final):
        aside = f"{final}.__replaced.{uuid.uuid4().hex}"
        rename(spark, final, aside)
    rename(spark, staging, final)
    if aside is not None:
        delete(spark, aside)
