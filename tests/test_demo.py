"""The end-to-end demo (dhs_spark.demo), its stage runner and its report.

The fast tests check the pieces (stage reuse rules, the centre crop of real cutouts, the
training view of hive-partitioned stamps, the gallery's choice of rows, the HTML builder). The
slow test runs the whole demo in its ``quick`` profile (the same code path on ~160 stamps,
spark-submit included, ~2 minutes on 2 cores), then reruns it twice: once reusing every stage,
once redoing training and everything after it, and requires identical numbers each time.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhs_spark.demo import STAGE_NAMES, main, pick_gallery_rows, run_demo, write_training_view
from dhs_spark.report import Section, render_html
from dhs_spark.stages import StageRunner

# ------------------------------------------------------------------ StageRunner


def _runner(tmp_path, **kw):
    return StageRunner(tmp_path, log=lambda msg: None, **kw)


def test_stage_runner_reuses_only_matching_finished_stages(tmp_path):
    calls = []

    def stage(tag):
        def fn():
            calls.append(tag)
            return {"value": np.float64(1.5).item(), "tag": tag}

        return fn

    first = _runner(tmp_path)
    out_a = first.run(1, 2, "a", stage("a"), fingerprint="f1")
    first.run(2, 2, "b", stage("b"), fingerprint="f1")
    assert calls == ["a", "b"] and first.reused == {"a": False, "b": False}

    again = _runner(tmp_path)
    assert again.run(1, 2, "a", stage("a2"), fingerprint="f1") == out_a  # reused: same dict as the fresh run returned
    again.run(2, 2, "b", stage("b2"), fingerprint="f1")
    assert calls == ["a", "b"], "a rerun with the same fingerprint must reuse both stages"
    assert again.reused == {"a": True, "b": True}

    changed = _runner(tmp_path)
    changed.run(1, 2, "a", stage("a3"), fingerprint="f2")
    assert calls[-1] == "a3", "a changed fingerprint must redo the stage"

    forced = _runner(tmp_path, force=True)
    forced.run(1, 1, "a", stage("a4"), fingerprint="f2")
    assert calls[-1] == "a4", "force must redo a finished stage"


def test_stage_runner_redo_cascades_to_later_stages(tmp_path):
    calls = []
    for name in ("a", "b", "c"):
        _runner(tmp_path).run(1, 3, name, lambda n=name: calls.append(n) or {}, fingerprint="f")
    calls.clear()
    r = _runner(tmp_path, redo=frozenset({"b"}))
    for name in ("a", "b", "c"):
        r.run(1, 3, name, lambda n=name: calls.append(n) or {}, fingerprint="f")
    assert calls == ["b", "c"], f"redo b must rerun b and every later stage, not a (ran {calls})"
    calls.clear()
    r = _runner(tmp_path, redo=frozenset({"b"}), cascade=False)
    for name in ("a", "b", "c"):
        r.run(1, 3, name, lambda n=name: calls.append(n) or {}, fingerprint="f")
    assert calls == ["b"]


def test_stage_runner_failed_stage_leaves_no_marker(tmp_path):
    r = _runner(tmp_path)
    r.run(1, 1, "a", lambda: {"x": 1}, fingerprint="f")

    def boom():
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        _runner(tmp_path, force=True).run(1, 1, "a", boom, fingerprint="f")
    assert not (tmp_path / ".stages" / "a.json").exists(), "a failed rerun must not leave the old marker to be reused"


def test_stage_runner_rejects_non_json_results(tmp_path):
    with pytest.raises(TypeError):
        _runner(tmp_path).run(1, 1, "a", lambda: {"x": np.arange(3)}, fingerprint="f")


# ------------------------------------------------------------------ demo pieces


def test_training_view_materialises_the_split_column(tmp_path):
    stamps = tmp_path / "stamps"
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        part = stamps / f"split={split}"
        part.mkdir(parents=True)
        ids = [f"{split}{i:02d}" for i in rng.permutation(n)]
        pq.write_table(pa.table({"task_id": ids, "label": [i % 2 for i in range(n)]}), part / "part-0.parquet")
    counts = write_training_view(stamps, tmp_path / "view")
    assert counts == {"train": 5, "val": 2, "test": 3}
    test = pq.read_table(tmp_path / "view" / "test.parquet")
    assert test["split"].to_pylist() == ["test"] * 3
    assert test["task_id"].to_pylist() == sorted(test["task_id"].to_pylist()), "rows sorted by task_id (a stable order for the trainer)"


def test_gallery_rows_prefer_large_visible_arcs_and_are_deterministic():
    rows = [{"task_id": f"{i:04x}", "theta_e_arcsec": 0.6 + (i % 5) * 0.5, "arc_snr_sum": float(i)} for i in range(40)]
    picks = pick_gallery_rows(rows, 3)
    assert picks == pick_gallery_rows(list(reversed(rows)), 3), "the choice must not depend on the input order"
    assert len(picks) == 3 and all(p["theta_e_arcsec"] >= 1.0 for p in picks)
    snrs = [p["arc_snr_sum"] for p in picks]
    assert snrs == sorted(snrs) and snrs[0] >= np.median([r["arc_snr_sum"] for r in rows if r["theta_e_arcsec"] >= 1.0])


def test_cli_rejects_an_unknown_stage(tmp_path, capsys):
    assert main(["--output", str(tmp_path), "--redo", "nope"]) == 1
    assert "unknown stage" in capsys.readouterr().err


def test_report_html_is_self_contained_and_marks_pass_fail():
    sec = Section("Gates <1>", paragraphs=["a < b"], tables=[("t", ["gate", "pass"], [["x", True], ["y", False], ["z", None]])],
                  images=[("fig", "data:image/png;base64,AAAA")])  # fmt: skip
    html = render_html("T", [sec])
    assert "Gates &lt;1&gt;" in html and "a &lt; b" in html
    assert "<td class='pass'>PASS</td>" in html and "<td class='fail'>FAIL</td>" in html and "<td>n/a</td>" in html
    assert re.findall(r"src='([^']*)'", html) == ["data:image/png;base64,AAAA"]


# ------------------------------------------------------------------ the whole demo


@pytest.mark.slow
def test_quick_demo_end_to_end_reuse_and_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    out = tmp_path / "demo_out"
    first = run_demo(out, seed=42, profile="quick")
    r = first["results"]
    assert set(first["timings_s"]) == set(STAGE_NAMES)

    gates = r["spark_pipeline"]["gates"]
    c = gates["counts"]
    assert gates["passed"] and c["reconciled"] and c["manifest"] == c["stamps"] + c["rejects"] > 100
    assert gates["nonfinite"]["pixels"] == 0
    assert gates["shortcut_gate"]["auc"] is not None and gates["shortcut_gate"]["core_auc_max"] == 0.7
    every = gates["gates"]["gates"]
    assert all(g["value"] is not None for g in every.values()), {k: g["reason"] for k, g in every.items() if g["value"] is None}
    assert every["host_only_core"]["pass"] and every["host_only_full"]["pass"] and every["cosmos_split"]["value"] == 0
    assert gates["realism"]["sets"]["dr10_candidates"]["n"] == 6 and gates["realism"]["sets"]["injected"]["n"] > 0
    assert set(r["realism"]["arcs"]["sets"]) == {"dr10_candidates", "ps1_sled", "injected", "controls"}
    assert r["realism"]["probe"]["probe"]["n_real"] == 6
    assert r["train"]["data"]["n_train"] > 0 and r["score"]["n_scored"] == c["stamps"]
    test = r["score"]["test"]
    assert test["n_negatives"] > 0 and all(e["below_resolution"] for e in test["tpr_at_fpr"].values()), "a few dozen negatives resolve no FPR target"
    held = r["anchors"]["heldout"]
    assert set(held["galaxies_used"]) <= set(r["cosmos_library"]["heldout_idents"])
    assert not set(r["cosmos_library"]["heldout_idents"]) & set(r["cosmos_library"]["train_idents"])
    assert r["anchors"]["real"]["metrics"]["n_known_lenses"] == 6, "the six real DR10 candidate cutouts are scored"
    assert all(e["cosmos"]["remade_equals_pipeline"] for e in r["gallery"]["examples"]), "the pipeline's stamps are re-made bit for bit"
    # the loop: look-alikes planted and cut, the parent sample scored by Spark, Gen6 trained with them, both compared on held-out rows
    looks = r["mock_survey"]["lookalikes"]
    assert looks["n"] > 0 and looks["n_heldout"] > 0
    assert r["hard_negatives"]["parent_scored"]["n"] > 100
    assert r["train"]["hard_negative_stamps"]["n_hard"] == 0 and r["retrain"]["hard_negative_stamps"]["n_hard"] > 0, "Gen5 without, Gen6 with look-alikes"
    assert r["loop"]["counts"]["lookalikes"] > 0 and set(r["loop"]["generations"]) == {"gen5", "gen6"}
    assert "contamination:all" in r["loop"]["difference"]

    html = (out / "report.html").read_text()
    for title in ("Time per stage", "Stamp gallery", "Gates", "Synthetic performance", "Completeness", "Hard negatives", "The sim-to-real loop", "Anchors",
                  "Injection realism", "Where the outputs are"):  # fmt: skip
        assert f">{title}" in html, f"report lacks the section {title!r}"
    srcs = re.findall(r"<img src='([^']*)'", html)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs), "every image is embedded"
    assert "SYNTHETIC" in html and "dhs anchors compute" in html
    assert json.loads((out / "summary.json").read_text())["results"] == r

    reused = run_demo(out, seed=42, profile="quick")
    assert all(reused["reused"].values()) and reused["results"] == r
    redone = run_demo(out, seed=42, profile="quick", redo=("train",))
    assert [k for k, v in redone["reused"].items() if not v] == ["train", "score", "hard_negatives", "retrain", "loop", "anchors", "realism", "gallery"]
    assert redone["results"] == r, "the same seed must give the same numbers (training, scores, mining, anchors, gallery)"
