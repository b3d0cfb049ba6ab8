"""trainer.data: zero-copy decoding, split selection, worker sharding without duplicates or drops."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhs_spark.errors import InputDataError
from dhs_spark.schema import decode_image, decode_image_column
from trainer.data import COL, StampDataset, StampIndex, load_images, make_loader
from trainer.preprocess import PreprocessConfig, preprocess


def _binary(images: np.ndarray) -> pa.Array:
    return pa.array([im.astype("<f4").tobytes() for im in images], pa.binary())


def test_decode_is_a_view_in_chw_order():
    images = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    arr = _binary(images)
    decoded = decode_image_column(arr, np.array([3, 3]), np.array([4, 4]))
    assert np.shares_memory(decoded, np.frombuffer(arr.buffers()[2], np.uint8)), "decoding must not copy the Arrow buffer"
    np.testing.assert_array_equal(decoded, images)
    assert decoded[1, 2, 0, 3] == 48 + 2 * 16 + 3  # flat position: row 1, band 2 (band-major), y 0, x 3
    # a sliced array (offset != 0) still decodes the right rows; so does a chunked column
    np.testing.assert_array_equal(decode_image_column(arr.slice(1, 1), 3, 4), images[1:])
    np.testing.assert_array_equal(decode_image_column(pa.chunked_array([arr.slice(0, 1), arr.slice(1, 1)]), 3, 4), images)
    np.testing.assert_array_equal(decode_image(arr[1], 3, 4), images[1])
    np.testing.assert_array_equal(decode_image(images[0].tobytes(), 3, 4), images[0])


def test_decode_rejects_ragged_null_mistyped_and_mixed_rows():
    ragged = pa.array([np.zeros(48, "<f4").tobytes(), np.zeros(47, "<f4").tobytes()], pa.binary())
    with pytest.raises(InputDataError, match="f.parquet: image of row 1 has 188 bytes"):
        decode_image_column(ragged, 3, 4, "f.parquet")
    with pytest.raises(InputDataError, match="null images"):
        decode_image_column(pa.array([np.zeros(48, "<f4").tobytes(), None], pa.binary()), 3, 4)
    with pytest.raises(InputDataError, match="expected binary"):
        decode_image_column(pa.array([[1.0, 2.0]], pa.list_(pa.float32())), 1, 1)
    with pytest.raises(InputDataError, match="mixed stamp shapes"):
        decode_image_column(_binary(np.zeros((2, 3, 4, 4), np.float32)), np.array([3, 3]), np.array([4, 5]))
    with pytest.raises(ValueError, match="47 float32 values"):
        decode_image(np.zeros(47, "<f4").tobytes(), 3, 4)


def test_index_reads_images_written_by_the_fixture(stamp_data):
    path, images, cols = stamp_data
    index = StampIndex.scan(str(path))
    assert index.n_rows == len(images)
    assert len(index.files) == 2  # _SUCCESS is skipped
    rows = np.array([5, 0, 700, 333])
    np.testing.assert_array_equal(load_images(index, rows), images[rows])
    np.testing.assert_array_equal(index.meta[COL.label], cols["label"])
    splits = {s: set(index.rows(s).tolist()) for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == len(images)
    assert not (splits["train"] & splits["val"]) and not (splits["val"] & splits["test"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_row_exactly_once_per_epoch(stamp_data, num_workers):
    path, images, cols = stamp_data
    index = StampIndex.scan(str(path))
    rows = index.rows("train")
    ds = StampDataset(index, rows, batch_size=24, preprocess_cfg=PreprocessConfig(), shuffle=True, augment=False, seed=3, shuffle_buffer=100)
    seen, n_batches = [], 0
    for batch in make_loader(ds, num_workers=num_workers):
        r = batch["row"].numpy()
        seen.append(r)
        n_batches += 1
        np.testing.assert_array_equal(batch["label"].numpy(), cols["label"][r])
        np.testing.assert_allclose(batch["image"].numpy(), preprocess(images[r]), atol=1e-6)
    seen = np.concatenate(seen)
    assert len(seen) == len(rows) and set(seen.tolist()) == set(rows.tolist()), "a row was duplicated or dropped"
    assert n_batches == ds.n_batches(num_workers)


def test_shuffle_is_seeded_by_seed_and_epoch(stamp_data):
    index = StampIndex.scan(str(stamp_data[0]))

    def order(seed, epoch):
        ds = StampDataset(index, index.rows("train"), 32, PreprocessConfig(), shuffle=True, augment=True, seed=seed)
        ds.set_epoch(epoch)
        return np.concatenate([b["row"].numpy() for b in make_loader(ds)])

    np.testing.assert_array_equal(order(1, 0), order(1, 0))
    assert not np.array_equal(order(1, 0), order(1, 1))
    assert not np.array_equal(order(1, 0), order(2, 0))


def test_missing_image_column_names_the_file(tmp_path):
    pq.write_table(pa.table({"ra": [1.0]}), tmp_path / "bad.parquet")
    with pytest.raises(InputDataError, match=r"bad\.parquet: missing stamp columns"):
        StampIndex.scan(str(tmp_path))
    with pytest.raises(InputDataError, match="no such file"):
        StampIndex.scan(str(tmp_path / "nowhere"))


def test_split_read_from_spark_partition_directories(stamp_data, tmp_path):
    """Spark's partitionBy('split') writes split=<value>/ directories and drops the column; the
    index must take each row's split from its directory."""
    out_dir, images, cols = stamp_data
    with_column = StampIndex.scan(str(out_dir))
    table = pq.read_table(str(out_dir))
    for split in ("train", "val", "test"):
        part = table.filter(pa.compute.equal(table["split"], split)).drop_columns(["split"])
        (tmp_path / f"split={split}").mkdir()
        pq.write_table(part, tmp_path / f"split={split}" / "part-00000.parquet")
    hive = StampIndex.scan(str(tmp_path))
    for split in ("train", "val", "test"):
        rows = hive.rows(split)
        assert len(rows) == len(with_column.rows(split)) > 0, split
        assert sorted(hive.meta[COL.ra][rows].tolist()) == sorted(with_column.meta[COL.ra][with_column.rows(split)].tolist()), split
