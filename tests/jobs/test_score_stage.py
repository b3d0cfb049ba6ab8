"""Stage ``score`` (dhs_spark.jobs.score_stage) in Spark local mode on test_phase4_local's mock survey.

The survey's deliberate damage (brick 0: corrupt g image, brick 1: no z band, brick 4: a NaN
patch 3 px from one LRG) exercises the parent mode's rejects. The model is the tiny random CNN
of tests/tiny_checkpoint.py at the survey's 48-px stamps: a fixed function of the pixels, which
is all the equality checks need.

Tolerance against ``dhs-score``: both run the same float32 forward pass; the stage runs every
batch at exactly --score-batch-size stamps, dhs-score runs a short last batch per row group, and
oneDNN's kernels for another batch shape may round the last bit differently. So scores (float32
sigmoids in (0, 1), stored as float64) agree to 2 float32 ulps at [0.5, 1): atol 2 * 2**-23 =
2.4e-7 (1 ulp, 3e-8, is seen). Between runs of the stage itself (1 or 3 partitions, parent rows
against the identical 4c control cutouts) the batch shape is the same, so bytes are equal.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from tiny_checkpoint import write_tiny_checkpoint

from dhs_spark.errors import InputDataError
from dhs_spark.jobs import score_stage
from dhs_spark.schema import SCORE_COLUMNS, arrow_schema
from jobs.test_phase4_local import COMMON, STAMP, _read, _run, survey  # noqa: F401  (the module-scoped mock survey fixture)

ATOL_VS_DHS_SCORE = 2 * 2.0**-23  # 2 float32 ulps in [0.5, 1): see the module docstring


def _score(spark, survey, out, *extra):  # noqa: F811
    return _run(spark, survey, out, "score", *extra)


@pytest.fixture(scope="module")
def scored(spark, survey, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("score")
    ckpt = write_tiny_checkpoint(out / "tiny48.pt", stamp_size=STAMP, seed=3)
    for stage in ("4a", "4c"):
        assert _run(spark, survey, out, stage, "--source-mode", "sersic") == 0
    exp = out / "t6"
    runs = {}
    for n_parts in (1, 3):  # the second run replaces the first: keep its rows
        assert _score(spark, survey, out, "--checkpoint", str(ckpt), "--partitions", str(n_parts), "--score-batch-size", "8") == 0
        runs[n_parts] = _read(exp / "score" / "stamps" / "scores").sort_values("task_id").reset_index(drop=True)
    assert _score(spark, survey, out, "--checkpoint", str(ckpt), "--score-input", "parent", "--score-batch-size", "8") == 0
    return {
        "out": out,
        "exp": exp,
        "ckpt": ckpt,
        "runs": runs,
        "stamps": _read(exp / "phase4c_stamps" / "stamps"),
        "manifest": _read(exp / "phase4a_manifest" / "manifest"),
        "parent_scores": _read(exp / "score" / "parent" / "scores"),
        "parent_rejects": _read(exp / "score" / "parent" / "rejects"),
    }


def test_stamp_scores_equal_dhs_score(scored, tmp_path):
    from trainer.score import score_parquet

    ref_path = tmp_path / "ref.parquet"
    n = score_parquet(str(scored["ckpt"]), str(scored["exp"] / "phase4c_stamps" / "stamps"), str(ref_path), device="cpu", batch_size=8)
    ref = pd.read_parquet(ref_path)
    got = scored["runs"][3]
    assert n == len(scored["stamps"]) == len(got) > 20 and got.task_id.is_unique
    m = got.merge(ref, on="task_id", suffixes=("", "_ref"), validate="one_to_one")
    assert len(m) == n, "every stamp dhs-score scores, the stage scores"
    np.testing.assert_allclose(m.score, m.score_ref, rtol=0, atol=ATOL_VS_DHS_SCORE, err_msg="stage vs dhs-score on the same stamps")
    np.testing.assert_array_equal(m.label, m.label_ref)
    assert m.score.std() > 1e-4, "the model separates stamps (a constant score would make the equality vacuous)"


def test_the_stage_table_lets_mining_prove_label_0_stamps_real(scored):
    """With is_control and is_null_injection carried over, hardneg's rule proves every control
    real and drops injected positives and null injections: none is left unproven."""
    from dhs_spark.hardneg import real_score_rows

    got = scored["runs"][3]
    real, counts = real_score_rows(got, "stage scores", allow_injected=True)
    assert counts["model_fp_dropped_unproven"] == 0
    assert np.array_equal(real, got.is_control.to_numpy(bool)), "the real rows are exactly the controls here"
    assert counts["model_fp_dropped_injected_positives"] == int((got.label == 1).sum()) > 0


def test_scores_are_the_same_bytes_for_1_and_3_partitions(scored):
    a, b = scored["runs"][1], scored["runs"][3]
    assert a.task_id.tolist() == b.task_id.tolist()
    assert np.array_equal(a.score.to_numpy(), b.score.to_numpy()), "a stamp's score must not depend on the partitioning"


def test_score_rows_carry_identity_checkpoint_and_schema(scored):
    got, stamps = scored["runs"][3], scored["stamps"]
    sha = hashlib.sha256(scored["ckpt"].read_bytes()).hexdigest()
    assert (got.checkpoint_sha256 == sha).all() and (got.source_tag == "stamps").all()
    m = got.merge(stamps[["task_id", "ra", "dec", "brickname", "label", "split", "is_control", "is_null_injection"]], on="task_id", suffixes=("", "_stamp"))
    for col in ("ra", "dec", "brickname", "label", "split", "is_control", "is_null_injection"):
        assert (m[col].astype(str) == m[f"{col}_stamp"].astype(str)).all(), f"score column {col} differs from the stamp's"
    assert ((got.score > 0) & (got.score < 1)).all()
    part = next((scored["exp"] / "score" / "stamps" / "scores").glob("*.parquet"))
    schema = pq.read_schema(part)
    expected = arrow_schema(SCORE_COLUMNS)
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in expected], "score files hold SCORE_COLUMNS, in order"
    marker = json.loads((scored["exp"] / "score" / "stamps" / "_COMPLETE.json").read_text())
    assert marker["checkpoint_sha256"] == sha and marker["n_scores"] == len(got) and marker["n_rejects"] == 0


def test_parent_mode_scores_every_selected_lrg_or_records_why(scored, survey):  # noqa: F811
    from dhs_spark.config import ExperimentConfig
    from dhs_spark.survey.parent import select_lrg

    mock = survey["mock"]
    cat = pd.read_parquet(mock.catalog_parquet)
    cat.columns = [c.lower() for c in cat.columns]
    lrg = cat.loc[select_lrg(cat, ExperimentConfig(output_dir="/x").data.phase3_parent_sample)]
    expected = {score_stage.parent_task_id(b, r, d) for b, r, d in zip(lrg.brickname.str.strip(), lrg.ra, lrg.dec)}
    s, r = scored["parent_scores"], scored["parent_rejects"]
    assert len(expected) == len(lrg) > 20
    assert set(s.task_id) | set(r.task_id) == expected and not set(s.task_id) & set(r.task_id), "each parent row scored or rejected, once"
    assert s.label.isna().all() and (s.source_tag == "parent").all() and (r.stage == "score").all()
    b = mock.bricknames
    reasons = r.groupby("brickname").reason.agg(set).to_dict()
    assert reasons.get(b[0]) == {"corrupt_brick"} and reasons.get(b[1]) == {"missing_band"}
    assert reasons.get(b[4]) == {"nonfinite_pixels"} and (r.brickname == b[4]).sum() == 1, "the NaN patch rejects its one host only"
    assert (s.brickname == b[2]).sum() > 0, "a brick without PSF sizes is still cut and scored (no injection, no PSF)"
    assert r.detail.str.len().min() > 5


def test_parent_cutouts_score_as_4c_controls_and_take_4a_splits(scored):
    """A parent row is cut like a 4c control: same pixels, so the same score bytes; and 4a's split."""
    s, stamps, manifest = scored["parent_scores"], scored["runs"][3], scored["manifest"]
    controls = stamps.drop(columns=["is_control", "is_null_injection"]).merge(scored["stamps"][["task_id", "is_control"]], on="task_id")
    controls = controls[controls.is_control]
    m = controls.merge(s.drop(columns=["is_control", "is_null_injection"]), on=["ra", "dec"], suffixes=("_ctl", "_parent"))
    assert len(m) >= 5 and len(m) == len(controls), "every 4c control host is a scored parent row"
    assert np.array_equal(m.score_ctl.to_numpy(), m.score_parent.to_numpy()), "parent cutout == 4c control cutout, scored alike"
    hosts = manifest.drop_duplicates(["ra", "dec"])[["ra", "dec", "split"]]
    ms = s.merge(hosts, on=["ra", "dec"], suffixes=("", "_4a"))
    assert len(ms) > 0 and (ms.split == ms.split_4a).all()


def test_hard_negative_source_column_tags_rows(scored, spark, survey, tmp_path):  # noqa: F811
    stamps = ds.dataset(str(scored["exp"] / "phase4c_stamps" / "stamps"), format="parquet", partitioning="hive").to_table()
    # without 4c's footer metadata: Spark would take the columns from its stored Spark schema and miss the new one
    stamps = stamps.slice(0, 12).replace_schema_metadata(None)
    tags = pa.array(["ring", None, "model_fp"] * 4, pa.string())
    path = tmp_path / "hardneg_stamps.parquet"
    i = stamps.schema.get_field_index("hard_neg_source")  # the stamp schema may carry the (null) column already
    pq.write_table(stamps.set_column(i, "hard_neg_source", tags) if i >= 0 else stamps.append_column("hard_neg_source", tags), path)
    # another experiment directory: --score-stamps needs no 4c there, and the fixture's scores stay
    assert _score(spark, survey, tmp_path, "--checkpoint", str(scored["ckpt"]), "--score-stamps", str(path), "--score-batch-size", "8") == 0
    got = _read(tmp_path / "t6" / "score" / "stamps" / "scores").set_index("task_id")
    want = dict(zip(stamps.column("task_id").to_pylist(), ["ring", "stamps", "model_fp"] * 4))
    assert got.source_tag.to_dict() == want
    ref = scored["runs"][3].set_index("task_id").score
    assert np.array_equal(got.score.to_numpy(), ref.loc[got.index].to_numpy())


# -- the per-partition function without Spark ------------------------------------------------------


def _stamp_batches(scored, n_rows: int, chunk: int):
    table = ds.dataset(str(scored["exp"] / "phase4c_stamps" / "stamps"), format="parquet", partitioning="hive").to_table().slice(0, n_rows)
    return table.to_batches(max_chunksize=chunk)


def test_model_is_built_once_per_worker_and_batching_changes_no_score(scored):
    data = scored["ckpt"].read_bytes()
    params = score_stage.ScoreParams(score_stage.sha256_hex(data), device="cpu", batch_size=8)
    reads = []

    def checkpoint_bytes():
        reads.append(1)
        return data

    score_stage._MODELS.clear()
    before = score_stage.MODEL_LOADS["count"]
    stats: dict = {}
    one = pa.Table.from_batches(list(score_stage.score_batches(_stamp_batches(scored, 21, 5), params, checkpoint_bytes, stats)))
    two = pa.Table.from_batches(list(score_stage.score_batches(_stamp_batches(scored, 21, 21), params, checkpoint_bytes)))
    assert score_stage.MODEL_LOADS["count"] - before == 1 and len(reads) == 1, "two partitions of 5 batches each: one model, one read of the bytes"
    assert stats["scored"] == 21 and stats["rejects"] == 0
    assert one.column("task_id").to_pylist() == two.column("task_id").to_pylist(), "rows come out in input order"
    assert one.column("score").to_pylist() == two.column("score").to_pylist(), "input batches of 5 or 21 rows give the same bytes"


def test_broadcast_bytes_that_do_not_match_the_driver_sha_are_refused(scored):
    params = score_stage.ScoreParams("0" * 64, device="cpu")
    score_stage._MODELS.clear()
    with pytest.raises(InputDataError, match="sha256"):
        list(score_stage.score_batches(_stamp_batches(scored, 3, 3), params, lambda: scored["ckpt"].read_bytes()))


def test_nonfinite_stored_stamp_is_rejected_not_scored(scored):
    import pyarrow.compute as pc

    data = scored["ckpt"].read_bytes()
    (batch,) = _stamp_batches(scored, 4, 4)
    images = [bytearray(v) for v in batch.column(batch.schema.get_field_index("image")).to_pylist()]
    images[1][8:12] = np.array([np.nan], "<f4").tobytes()
    batch = batch.set_column(batch.schema.get_field_index("image"), "image", pa.array([bytes(b) for b in images], pa.binary()))
    out = pa.Table.from_batches(list(score_stage.score_batches([batch], score_stage.ScoreParams(score_stage.sha256_hex(data), device="cpu", batch_size=8), lambda: data)))
    bad = out.filter(pc.is_valid(out.column("reason")))
    assert bad.column("task_id").to_pylist() == [batch.column(0)[1].as_py()] and bad.column("reason").to_pylist() == ["nonfinite_pixels"]
    assert out.filter(pc.is_valid(out.column("score"))).num_rows == 3


# -- clear errors ----------------------------------------------------------------------------------


def _error(caplog, spark, survey, out, *extra):  # noqa: F811
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="dhs.jobs"):
        rc = _score(spark, survey, out, *extra)
    return rc, " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_missing_checkpoint_flag_or_file_says_which_flag(scored, spark, survey, caplog):  # noqa: F811
    rc, msg = _error(caplog, spark, survey, scored["out"])
    assert rc == 2 and "--checkpoint" in msg and "dhs-train" in msg
    rc, msg = _error(caplog, spark, survey, scored["out"], "--checkpoint", str(scored["out"] / "nope.pt"))
    assert rc == 2 and "--checkpoint" in msg and "nope.pt" in msg and "no such file" in msg
    junk = scored["out"] / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    rc, msg = _error(caplog, spark, survey, scored["out"], "--checkpoint", str(junk))
    assert rc == 2 and "junk.pt" in msg and "checkpoint" in msg


def test_missing_stamps_says_to_run_4c_or_pass_score_stamps(scored, spark, survey, caplog, tmp_path):  # noqa: F811
    rc, msg = _error(caplog, spark, survey, tmp_path, "--checkpoint", str(scored["ckpt"]))
    assert rc == 2 and "--stage 4c" in msg and "--score-stamps" in msg and "phase4c_stamps" in msg
    rc, msg = _error(caplog, spark, survey, tmp_path, "--checkpoint", str(scored["ckpt"]), "--score-stamps", str(tmp_path / "absent"))
    assert rc == 2 and "--score-stamps" in msg and "absent" in msg
    from dhs_spark.jobs.pipeline import main

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="dhs.jobs"):
        rc = main(["--stage", "score", "--score-input", "parent", "--checkpoint", str(scored["ckpt"]), "--output", str(tmp_path), "--experiment-id", "t6", *COMMON], spark=spark)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert rc == 2 and all(flag in msg for flag in ("--parent-sample", "--bricks-table", "--coadd-root"))


def test_model_and_stamp_shapes_must_match(scored, spark, survey, caplog, tmp_path):  # noqa: F811
    ck64 = write_tiny_checkpoint(tmp_path / "tiny64.pt", stamp_size=64)
    rc, msg = _error(caplog, spark, survey, scored["out"], "--checkpoint", str(ck64))
    assert rc == 2 and f"(3, {STAMP})" in msg and "(3, 64)" in msg
    rc, msg = _error(caplog, spark, survey, scored["out"], "--checkpoint", str(ck64), "--score-input", "parent")
    assert rc == 2 and "data.stamp_size=64" in msg
