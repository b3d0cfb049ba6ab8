"""Hard-negative stamps in the trainer: label-0 rows tagged ``hard_neg_source`` with a
``hard_neg_weight`` are read by the index, chosen by ``hard_negatives.sources``, weighted by
``hard_neg_weight * hard_negatives.weight``, capped at ``hard_negatives.max_fraction`` of an
epoch (redrawn per epoch), combined with the lookup join, and stamp sets without the columns
train exactly as before. Stamps: the synthetic fixture of conftest.py, tagged here."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhs_spark.config.experiment import ExperimentConfig, HardNegativeConfig, ModelConfig, TrainingConfig
from dhs_spark.errors import InputDataError
from tests.trainer.conftest import make_stamps, stamp_table
from trainer import train
from trainer.data import HARD_NEG_SOURCE, HARD_NEG_WEIGHT, StampDataset, StampIndex, make_loader, plan_hard_negative_stamps
from trainer.hardneg_join import HardNegativeJoin
from trainer.preprocess import PreprocessConfig

TAG_WEIGHT = {"ring": 2.0, "merger": 1.5, "model_fp": 3.0}
N_TAGGED = {"ring": 20, "merger": 12, "model_fp": 8}


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """``table`` with column ``name`` replaced, or appended where absent."""
    i = table.schema.get_field_index(name)
    field = pa.field(name, values.type)
    return table.set_column(i, field, values) if i >= 0 else table.append_column(field, values)


def plain_table(images, cols) -> pa.Table:
    """The fixture's table without the hard-negative columns (a stamp set from before them,
    whether or not dhs_spark.schema lists them by now)."""
    table = stamp_table(images, cols)
    return table.drop_columns([c for c in (HARD_NEG_SOURCE, HARD_NEG_WEIGHT) if c in table.column_names])


def tagged_table(n_hosts: int = 60, seed: int = 5) -> pa.Table:
    """The fixture's paired stamps with label-0 rows tagged: 20 ring, 12 merger, 8 model_fp (in
    row order), one ring row with a null weight, and one positive tagged ring (an injection onto
    a look-alike host: a lens, not a hard negative)."""
    images, cols = make_stamps(n_hosts, stamp_size=32, seed=seed)
    table = stamp_table(images, cols)
    label = cols["label"]
    tags = np.full(len(label), None, dtype=object)
    neg = np.flatnonzero(label == 0)
    start = 0
    for tag, n in N_TAGGED.items():
        tags[neg[start : start + n]] = tag
        start += n
    tags[np.flatnonzero(label == 1)[0]] = "ring"
    weights = np.array([TAG_WEIGHT[t] if t is not None else np.nan for t in tags])
    weights[neg[0]] = np.nan  # a ring row without a weight
    weight_arr = pa.array([None if np.isnan(w) else w for w in weights], pa.float32())
    table = set_column(table, HARD_NEG_SOURCE, pa.array(tags.tolist(), pa.string()))
    return set_column(table, HARD_NEG_WEIGHT, weight_arr)


def write(table: pa.Table, path, row_group_size: int = 16):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """(directory, table) of the tagged stamps in two files."""
    d = tmp_path_factory.mktemp("tagged")
    table = tagged_table()
    half = table.num_rows // 2
    write(table.slice(0, half), d / "part-0.parquet")
    write(table.slice(half), d / "part-1.parquet")
    return d, table


def _train_truth(index: StampIndex):
    rows = index.rows("train")
    return rows, index.meta[HARD_NEG_SOURCE][rows], index.meta["label"][rows]


def test_index_reads_the_columns_and_a_file_without_them_reads_as_ordinary_rows(tagged, tmp_path):
    d, table = tagged
    index = StampIndex.scan(str(d))
    assert index.meta[HARD_NEG_SOURCE].tolist() == table.column(HARD_NEG_SOURCE).to_pylist()
    np.testing.assert_array_equal(np.isnan(index.meta[HARD_NEG_WEIGHT]), table.column(HARD_NEG_WEIGHT).is_null().to_numpy(zero_copy_only=False))
    # mixed: a file written before the columns existed, beside one with them
    images, cols = make_stamps(10, stamp_size=32, seed=9)
    write(table, tmp_path / "mixed" / "a.parquet")
    write(plain_table(images, cols), tmp_path / "mixed" / "b.parquet")
    mixed = StampIndex.scan(str(tmp_path / "mixed"))
    assert mixed.meta[HARD_NEG_SOURCE][table.num_rows :].tolist() == [None] * 20
    assert np.isnan(mixed.meta[HARD_NEG_WEIGHT][table.num_rows :]).all()
    # without the columns anywhere: not in the index, and no plan (training as before)
    plain = StampIndex.scan(str(write(plain_table(images, cols), tmp_path / "plain" / "p.parquet")))
    assert HARD_NEG_SOURCE not in plain.meta and HARD_NEG_WEIGHT not in plain.meta
    assert plan_hard_negative_stamps(plain, plain.rows("train"), 2.0, 0.1, ["ring"], seed=0) is None


def test_sources_and_weights(tagged, caplog):
    index = StampIndex.scan(str(tagged[0]))
    rows, tag, label = _train_truth(index)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        plan = plan_hard_negative_stamps(index, rows, weight=2.0, max_fraction=1.0, sources=["ring", "merger", "spiral"], seed=0)
    chosen = np.array([t in ("ring", "merger") for t in tag]) & (label == 0)
    np.testing.assert_array_equal(plan.hard, rows[chosen])
    assert not set(plan.hard) & set(plan.ordinary), "a row is hard or ordinary, not both"
    model_fp = rows[(tag == "model_fp") & (label == 0)]
    assert len(model_fp) and not set(model_fp) & set(plan.epoch_rows(0)), "an unchosen tag is left out of training"
    tagged_positive = rows[(tag == "ring") & (label == 1)]
    assert set(tagged_positive) <= set(plan.ordinary) and (plan.weights[tagged_positive] == 1).all(), "a tagged positive is a lens, weight 1"
    raw = index.meta[HARD_NEG_WEIGHT][plan.hard]
    np.testing.assert_allclose(plan.weights[plan.hard], np.where(np.isnan(raw), 1.0, raw) * 2.0, rtol=0, atol=0, err_msg="hard_neg_weight x weight")
    assert (np.delete(plan.weights, plan.hard) == 1).all(), "every other row keeps weight 1"
    assert plan.epoch_rows(0).tolist() == sorted(rows[~((tag == "model_fp") & (label == 0))].tolist()), "no cap: every chosen row, every epoch"
    r = plan.report
    assert r["sources_used"] == sorted({str(t) for t in tag[chosen]}) and r["left_out_of_training"] == len(model_fp)
    assert r["tagged_positives_as_ordinary"] == len(tagged_positive) and r["null_weight_rows"] == int(np.isnan(raw).sum())
    assert "lists ['spiral'], which no label-0 training stamp carries" in caplog.text
    # sources None: every tag; [] : none
    assert len(plan_hard_negative_stamps(index, rows, 1.0, 1.0, None, 0).hard) == int(((tag != None) & (label == 0)).sum())  # noqa: E711
    assert len(plan_hard_negative_stamps(index, rows, 1.0, 1.0, [], 0).hard) == 0


def test_max_fraction_caps_each_epoch_and_redraws(tagged):
    index = StampIndex.scan(str(tagged[0]))
    rows, _, _ = _train_truth(index)
    plan = plan_hard_negative_stamps(index, rows, 1.0, max_fraction=0.1, sources=None, seed=3)
    n_ord = len(plan.ordinary)
    k = int(np.floor(0.1 * n_ord / 0.9))
    assert 0 < k < len(plan.hard), "the fixture has more hard rows than a 10% cap admits"
    assert plan.n_hard_per_epoch == k
    seen = set()
    for epoch in range(6):
        served = plan.epoch_rows(epoch)
        hard = np.intersect1d(served, plan.hard)
        assert set(plan.ordinary) <= set(served) and len(hard) == k and len(served) == n_ord + k
        assert len(hard) / len(served) <= 0.1
        np.testing.assert_array_equal(served, plan.epoch_rows(epoch), err_msg="same seed and epoch -> same rows")
        seen |= set(hard.tolist())
    assert len(seen) > k, "the subsample is redrawn each epoch"
    assert plan_hard_negative_stamps(index, rows, 1.0, 0.0, None, 3).n_hard_per_epoch == 0


def test_bad_weights_are_named(tmp_path):
    table = tagged_table(n_hosts=20)
    w = table.column(HARD_NEG_WEIGHT).to_pylist()
    i = next(j for j, v in enumerate(w) if v is not None)
    w[i] = -1.0
    table = set_column(table, HARD_NEG_WEIGHT, pa.array(w, pa.float32()))
    index = StampIndex.scan(str(write(table, tmp_path / "s.parquet")))
    with pytest.raises(InputDataError, match=rf"s\.parquet \(row group 0\), row {i}: hard_neg_weight must be finite and >= 0, got -1.0 \(global row {i}\)"):
        plan_hard_negative_stamps(index, np.arange(index.n_rows), 1.0, 1.0, None, 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_serves_the_epoch_rows_once_with_their_weights(tagged, num_workers):
    index = StampIndex.scan(str(tagged[0]))
    rows, _, _ = _train_truth(index)
    plan = plan_hard_negative_stamps(index, rows, 3.0, max_fraction=0.1, sources=None, seed=1)
    ds = StampDataset(index, plan.epoch_rows(0), 8, PreprocessConfig(), weights=plan.weights, shuffle=True, seed=1, epoch_rows=plan.epoch_rows)
    for epoch in (0, 4):
        ds.set_epoch(epoch)
        got_rows, got_w = [], []
        for batch in make_loader(ds, num_workers):
            got_rows.append(batch["row"].numpy())
            got_w.append(batch["weight"].numpy())
        served, w = np.concatenate(got_rows), np.concatenate(got_w)
        assert sorted(served.tolist()) == plan.epoch_rows(epoch).tolist(), f"epoch {epoch}: each row of the epoch exactly once"
        np.testing.assert_array_equal(w, plan.weights[served])
        assert (w[np.isin(served, plan.hard)] != 1).any()


def test_combine_weights_takes_the_larger_never_the_product(tagged):
    index = StampIndex.scan(str(tagged[0]))
    rows, _, _ = _train_truth(index)
    plan = plan_hard_negative_stamps(index, rows, 1.0, 1.0, None, 0)
    label = index.meta["label"]
    hard_a, hard_b = plan.hard[0], plan.hard[1]
    plain_neg = next(r for r in rows if label[r] == 0 and not plan.is_hard[r])
    plain_pos = next(r for r in rows if label[r] == 1)
    lookup_index = np.full(index.n_rows, -1)
    join_w = np.ones(index.n_rows, np.float32)
    for r, w in ((hard_a, 10.0), (hard_b, 0.5), (plain_neg, 0.25), (plain_pos, 1.0)):
        lookup_index[r], join_w[r] = 0, w
    join = HardNegativeJoin(weights=join_w, lookup_index=lookup_index, sep_arcsec=np.zeros(index.n_rows), report={})
    weights, both = train.combine_weights(plan, join, label)
    assert both == 2
    assert weights[hard_a] == 10.0 and weights[hard_b] == plan.weights[hard_b] and weights[plain_neg] == 0.25 and weights[plain_pos] == 1.0
    assert train.combine_weights(plan, None, label)[0].tolist() == plan.weights.tolist()


def small_cfg(out_dir, **hard) -> ExperimentConfig:
    t = TrainingConfig(epochs=1, batch_size=16, learning_rate=5e-3, warmup_epochs=0, device="cpu", num_workers=0)
    return ExperimentConfig(output_dir=str(out_dir), training=t, model=ModelConfig(width=8, blocks_per_stage=[1, 1]),
                            hard_negatives=HardNegativeConfig(**hard))  # fmt: skip


def test_fit_samples_and_reports_hard_negative_stamps(tagged, tmp_path):
    d, _ = tagged
    metrics = train.fit(small_cfg(tmp_path, sources=["ring", "merger"], max_fraction=0.1, weight=2.0), str(d), run_gates=False)
    r = metrics["hard_negative_stamps"]
    assert r["sources_used"] == ["merger", "ring"] and r["weight"] == 2.0 and r["also_matched_by_lookup"] == 0
    assert metrics["epochs"][0]["train_stamps"] == r["n_ordinary"] + r["n_hard_per_epoch"]
    assert 0 < r["n_hard_per_epoch"] < r["n_hard"]


def test_stamps_without_the_columns_train_as_before(tmp_path):
    """Columns absent: no plan, no report. Columns present but all null: the same epochs, bit for bit."""
    images, cols = make_stamps(60, stamp_size=32, seed=5)
    plain = plain_table(images, cols)
    write(plain, tmp_path / "plain" / "p.parquet")
    nulls = set_column(plain, HARD_NEG_SOURCE, pa.nulls(plain.num_rows, pa.string()))
    nulls = set_column(nulls, HARD_NEG_WEIGHT, pa.nulls(plain.num_rows, pa.float32()))
    write(nulls, tmp_path / "nulls" / "p.parquet")
    cfg = dataclasses.replace(small_cfg(tmp_path / "a", sources=["ring"], max_fraction=0.2, weight=4.0), training=dataclasses.replace(small_cfg(tmp_path).training, epochs=2))
    a = train.fit(cfg, str(tmp_path / "plain"), run_gates=False)
    b = train.fit(dataclasses.replace(cfg, output_dir=str(tmp_path / "b")), str(tmp_path / "nulls"), run_gates=False)
    assert "hard_negative_stamps" not in a and b["hard_negative_stamps"]["n_hard"] == 0
    strip = [{k: v for k, v in e.items() if k != "train_images_per_s"} for e in a["epochs"]]
    assert strip == [{k: v for k, v in e.items() if k != "train_images_per_s"} for e in b["epochs"]]


def test_a_source_entry_matches_the_catalogue_part_of_a_tag(tmp_path):
    """4a tags rows '<catalogue>:<type>' (e.g. lookalike:ring_collisional): 'lookalike' takes them all."""
    table = tagged_table(n_hosts=30)
    tags = [None if t is None else ("lookalike:" + t if t != "model_fp" else t) for t in table.column(HARD_NEG_SOURCE).to_pylist()]
    table = set_column(table, HARD_NEG_SOURCE, pa.array(tags, pa.string()))
    index = StampIndex.scan(str(write(table, tmp_path / "s.parquet")))
    rows = np.arange(index.n_rows)
    label = index.meta["label"]
    lookalike = {r for r in rows if label[r] == 0 and tags[r] is not None and tags[r].startswith("lookalike:")}
    assert set(plan_hard_negative_stamps(index, rows, 1.0, 1.0, ["lookalike"], 0).hard) == lookalike
    ring_only = {r for r in lookalike if tags[r] == "lookalike:ring"}
    assert set(plan_hard_negative_stamps(index, rows, 1.0, 1.0, ["lookalike:ring"], 0).hard) == ring_only and ring_only < lookalike
