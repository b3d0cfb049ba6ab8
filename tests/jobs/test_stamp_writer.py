"""4c's worker-side stamp writer: layout, task commit, abort, retries, S3 (moto on 127.0.0.1)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dhs_spark.jobs.phase4c_stamps import write_stamps
from dhs_spark.jobs.stamp_writer import FILE_COLUMNS, SPARK_ROW_METADATA_KEY, SplitStampWriter, stamp_file_schema
from dhs_spark.schema import IMAGE_ENCODING, spark_schema

SPLITS = ("train", "val", "test")


def _manifest(tiny_survey, replicates=4):
    """The tiny survey's manifest, each row ``replicates`` times (new task id and seed), sorted by
    brick, with the three splits dealt round-robin."""
    import pandas as pd

    manifest, params = tiny_survey
    copies = [manifest.assign(task_id=manifest.task_id + f"-r{k}", task_seed=manifest.task_seed + k) for k in range(replicates)]
    manifest = pd.concat(copies).sort_values(["brickname", "task_id"]).reset_index(drop=True)
    manifest["split"] = [SPLITS[i % 3] for i in range(len(manifest))]
    return manifest, params


def _batches(manifest, size=4):
    return pa.Table.from_pandas(manifest, preserve_index=False).to_batches(max_chunksize=size)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _run(manifest, params, root, name="part-00003", attempt=0, row_group_rows=5, schema=None, **kw):
    writer = SplitStampWriter(str(root / "stamps"), str(root / "_tmp"), name, schema, row_group_rows, **kw)
    summary = pa.Table.from_batches(list(write_stamps(_batches(manifest), params, writer, attempt))).to_pandas()
    return writer, summary


def test_one_file_per_split_holding_every_stamp_in_task_order(tiny_survey, tmp_path):
    manifest, params = _manifest(tiny_survey)
    spark_json = spark_schema(FILE_COLUMNS).json()
    writer, summary = _run(manifest, params, tmp_path, schema=stamp_file_schema(spark_json))
    assert summary.task_id.tolist() == manifest.task_id.tolist(), "one summary row per manifest row, in order"
    stamps = summary[summary.record_kind == "stamp"]
    assert len(stamps) > 15 and summary[summary.record_kind == "stamp"].reason.isna().all()
    assert _files(tmp_path / "stamps") == [f"split={s}/part-00003-c000.parquet" for s in sorted(set(stamps.split))]
    assert not _files(tmp_path / "_tmp"), "committed files leave nothing in the temporary directory"
    table = ds.dataset(str(tmp_path / "stamps"), format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("task_id").to_pylist()) == sorted(stamps.task_id)
    for split in set(stamps.split):
        f = pq.ParquetFile(tmp_path / "stamps" / f"split={split}" / "part-00003-c000.parquet")
        assert f.read(columns=["task_id"]).column(0).to_pylist() == stamps[stamps.split == split].task_id.tolist()
        groups = [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]
        assert len(groups) > 1 and set(groups[:-1]) == {5} and 0 < groups[-1] <= 5, f"row groups of row_group_rows rows, the last fewer: {groups}"
        assert "split" not in f.schema_arrow.names and f.schema_arrow.field("image").metadata[b"encoding"] == IMAGE_ENCODING.encode()
        fields = {x["name"]: x for x in json.loads(f.metadata.metadata[SPARK_ROW_METADATA_KEY.encode()])["fields"]}
        assert fields["image"]["metadata"]["encoding"] == IMAGE_ENCODING
    assert writer.rows_written == stamps.split.value_counts().to_dict()


def test_a_failed_attempt_leaves_no_stamp_files_and_its_retry_writes_the_same_bytes(tiny_survey, tmp_path):
    manifest, params = _manifest(tiny_survey)
    victim = manifest.task_id.iloc[-3]  # late in the task: rows before it were already flushed
    hooked = type(params)(**{**params.__dict__, "fail_once_task_id": victim})
    with pytest.raises(RuntimeError, match="forced first-attempt failure"):
        _run(manifest, hooked, tmp_path / "a", attempt=0)
    assert not _files(tmp_path / "a"), "an aborted attempt leaves no file, final or temporary"
    _run(manifest, hooked, tmp_path / "a", attempt=1)
    _run(manifest, params, tmp_path / "b")
    first = _files(tmp_path / "a" / "stamps")
    assert first and first == _files(tmp_path / "b" / "stamps")
    for name in first:
        assert (tmp_path / "a" / "stamps" / name).read_bytes() == (tmp_path / "b" / "stamps" / name).read_bytes()
    # A speculative or late duplicate attempt of the same partition replaces the file in place.
    _run(manifest, params, tmp_path / "a", attempt=2)
    assert _files(tmp_path / "a" / "stamps") == first
    assert all((tmp_path / "a" / "stamps" / n).read_bytes() == (tmp_path / "b" / "stamps" / n).read_bytes() for n in first)


def test_a_consumer_that_stops_early_aborts_the_files(tiny_survey, tmp_path):
    manifest, params = _manifest(tiny_survey)
    writer = SplitStampWriter(str(tmp_path / "stamps"), str(tmp_path / "_tmp"), "part-00000", row_group_rows=2)
    gen = write_stamps(_batches(manifest), params, writer)
    next(gen), next(gen)
    gen.close()  # GeneratorExit inside: the task died mid-way
    assert not _files(tmp_path)


def test_large_tasks_roll_over_to_numbered_files_in_row_order(tiny_survey, tmp_path):
    """Past ``max_file_bytes`` a split continues in the next file (S3 copies one object in one
    CopyObject, at most 5 GiB): names numbered in order, rows in task order across them."""
    manifest, params = _manifest(tiny_survey)
    one_group = 3 * 3 * 32 * 32 * 4  # bytes of three 32 px grz images: every file closes after one row group of 3 rows
    _, summary = _run(manifest, params, tmp_path, row_group_rows=3, max_file_bytes=one_group)
    stamps = summary[summary.record_kind == "stamp"]
    for split in set(stamps.split):
        names = sorted(p.name for p in (tmp_path / "stamps" / f"split={split}").iterdir())
        expected = stamps[stamps.split == split].task_id.tolist()
        assert names == [f"part-00003-c{k:03d}.parquet" for k in range(-(-len(expected) // 3))]
        rows = [pq.read_table(tmp_path / "stamps" / f"split={split}" / n, columns=["task_id"]).column(0).to_pylist() for n in names]
        assert [t for r in rows for t in r] == expected and all(len(r) <= 3 for r in rows)


def test_rows_without_a_usable_split_are_refused(tmp_path):
    schema = stamp_file_schema()
    batch = pa.RecordBatch.from_pylist([{"task_id": "t1", "split": None}], schema=schema.append(pa.field("split", pa.string())))
    writer = SplitStampWriter(str(tmp_path / "s"), str(tmp_path / "t"), "part-00000")
    with pytest.raises(ValueError, match="without a split"):
        writer.write(batch)
    with pytest.raises(ValueError, match="cannot name a split"):
        writer.write(pa.RecordBatch.from_pylist([{"task_id": "t1", "split": "../x"}], schema=batch.schema))


def test_s3_commit_moves_the_files_into_place(tiny_survey, tmp_path, moto_endpoint):
    """On S3 (moto's server on 127.0.0.1, reached through AWS_ENDPOINT_URL like a real endpoint)
    the files appear under stamps/ only at commit, with the bytes a local run writes."""
    import boto3

    manifest, params = _manifest(tiny_survey)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dhs-stamps")
    writer = SplitStampWriter("s3://dhs-stamps/exp/stamps", "s3://dhs-stamps/exp/_tmp", "part-00001", row_group_rows=5, max_file_bytes=1)
    gen = write_stamps(_batches(manifest), params, writer)
    for _ in range(len(manifest) // 4):  # every batch but the last: rows are written, nothing committed
        next(gen)
    def keys(prefix):  # objects, not the directory markers pyarrow leaves behind a deleted file
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="dhs-stamps", Prefix=prefix).get("Contents", []) if not o["Key"].endswith("/"))

    assert not keys("exp/stamps/"), "nothing under stamps/ before the commit"
    list(gen)
    local_writer, summary = _run(manifest, params, tmp_path, name="part-00001", max_file_bytes=1)
    expected = [f"exp/stamps/{name}" for name in _files(tmp_path / "stamps")]
    assert keys("exp/stamps/") == expected and not keys("exp/_tmp/")
    for key in expected:
        body = s3.get_object(Bucket="dhs-stamps", Key=key)["Body"].read()
        assert body == (tmp_path / "stamps" / key.removeprefix("exp/stamps/")).read_bytes()
    assert writer.rows_written == local_writer.rows_written


def test_arrow_filesystem_takes_local_file_and_s3_uris_and_names_the_rest(tmp_path, moto_endpoint):
    import boto3
    import pyarrow.fs as pafs

    from dhs_spark.jobs.paths import arrow_filesystem

    fs, path = arrow_filesystem(str(tmp_path / "x"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    assert arrow_filesystem((tmp_path / "x").as_uri())[1] == str(tmp_path / "x")
    boto3.client("s3").create_bucket(Bucket="dhs-a")
    for scheme in ("s3", "s3a", "s3n"):  # Hadoop's names for the same buckets
        fs, path = arrow_filesystem(f"{scheme}://dhs-a/exp/stamps")
        assert isinstance(fs, pafs.S3FileSystem) and path == "dhs-a/exp/stamps"
    with pytest.raises(ValueError, match="hdfs://"):
        arrow_filesystem("hdfs://namenode/exp")
