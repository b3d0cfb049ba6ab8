"""trainer.train / trainer.score end to end on the fixture stamps (CPU): learning, checkpoints,
resume, determinism, hard-negative weights through the CLI, and scoring consistency."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dhs_spark.config.experiment import ExperimentConfig, HardNegativeConfig, ModelConfig, TrainingConfig
from trainer import score, train
from trainer.metrics import auroc

SMALL = dict(model=ModelConfig(width=8, blocks_per_stage=[1, 1]))


def small_cfg(out_dir, **training):
    t = dict(epochs=3, batch_size=32, learning_rate=5e-3, warmup_epochs=1, device="cpu", num_workers=0) | training
    return ExperimentConfig(output_dir=str(out_dir), training=TrainingConfig(**t), **SMALL)


@pytest.fixture(scope="module")
def trained(stamp_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = train.fit(small_cfg(out), str(stamp_data[0]))
    return out, metrics


def comparable(history):
    """Epoch records without wall-clock rates."""
    return [{k: v for k, v in e.items() if k != "train_images_per_s"} for e in history]


def test_learns_and_writes_outputs(trained):
    out, metrics = trained
    # Fixed-seed floor: the fixture arcs are learnable (~0.83 after 3 epochs); chance is 0.5.
    assert max(e["val_auroc"] for e in metrics["epochs"]) > 0.75
    assert metrics["test"]["auroc"] > 0.7
    on_disk = json.loads((out / "metrics.json").read_text())
    assert len(on_disk["epochs"]) == 3 and on_disk["best"]["epoch"] == int(np.argmax([e["val_auroc"] for e in on_disk["epochs"]]))
    tpr = on_disk["epochs"][-1]["val"]["tpr_at_fpr"]["1e-04"]
    assert tpr["below_resolution"] is True and tpr["n_negatives"] == on_disk["epochs"][-1]["val"]["n_negatives"]
    gates = on_disk["gates"]["gates"]
    assert set(gates) == {"core_only", "null_injection", "arc_suppressed", "ring_adversary"}
    # the fixture has no null injections: the gate says so instead of passing
    assert gates["null_injection"]["pass"] is None and "null_injection_fraction" in gates["null_injection"]["reason"]
    assert "null_injection" in on_disk["gates"]["not_computable"]
    assert {"theta_e_arcsec", "arc_snr_sum", "psf_fwhm_r_arcsec"} <= set(on_disk["test"]["completeness"])


def test_checkpoint_loads_with_the_safe_unpickler(trained):
    out, metrics = trained
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["epoch"] == metrics["best"]["epoch"]
    assert {"model", "optimizer", "scheduler", "config", "git", "metrics", "preprocess"} <= set(ckpt)
    from safetensors.torch import load_file

    weights = load_file(str(out / "best.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in ckpt["model"].items())


# Constant learning rate, so that a 1-epoch run resumed to 2 sees the schedule of a 2-epoch run.
CONSTANT_LR = dict(epochs=2, scheduler="none", warmup_epochs=0)


@pytest.fixture(scope="module")
def constant_lr_run(stamp_data, tmp_path_factory):
    return train.fit(small_cfg(tmp_path_factory.mktemp("const"), **CONSTANT_LR), str(stamp_data[0]), run_gates=False)


def test_same_seed_same_metrics(constant_lr_run, stamp_data, tmp_path):
    again = train.fit(small_cfg(tmp_path, **CONSTANT_LR), str(stamp_data[0]), run_gates=False)
    assert comparable(again["epochs"]) == comparable(constant_lr_run["epochs"])


def test_resume_continues_exactly(constant_lr_run, stamp_data, tmp_path):
    train.fit(small_cfg(tmp_path, **(CONSTANT_LR | {"epochs": 1})), str(stamp_data[0]), run_gates=False)
    resumed = train.fit(small_cfg(tmp_path, **CONSTANT_LR), str(stamp_data[0]), resume=str(tmp_path / "last.pt"), run_gates=False)
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1]
    assert comparable(resumed["epochs"]) == comparable(constant_lr_run["epochs"])


def test_early_stopping_rule():
    best = {"value": None, "epoch": None, "epochs_without_improvement": 0}
    best, up = train.update_early_stopping(best, 0.7, 0, "max")
    assert up and best["epoch"] == 0
    best, up = train.update_early_stopping(best, 0.7, 1, "max")  # equal is not an improvement
    assert not up and best["epochs_without_improvement"] == 1
    best, up = train.update_early_stopping(best, 0.6, 2, "min")
    assert up and best == {"value": 0.6, "epoch": 2, "epochs_without_improvement": 0}


def test_cli_with_hard_negatives(stamp_data, tmp_path):
    path, _, cols = stamp_data
    ctrl = np.flatnonzero(cols["label"] == 0)[:5]
    # New ids, same positions: the join must still find them (each control's paired positive
    # sits on the same host and is reported but not up-weighted).
    pq.write_table(
        pa.table(
            {
                "ra": cols["ra"][ctrl],
                "dec": cols["dec"][ctrl],
                "healpix_index": np.arange(5),
                "source": ["ring"] * 5,
                "weight": np.full(5, 2.0),
                "score": np.full(5, 0.9),
            }
        ),
        tmp_path / "lookup.parquet",
    )
    cfg_path = tmp_path / "cfg.yaml"
    small_cfg(None).to_yaml(cfg_path)
    out = tmp_path / "out"
    argv = ["--config", str(cfg_path), "--data", str(path), "--out-dir", str(out), "--epochs", "1", "--early-stopping-patience", "2"]
    argv += ["--hard-neg-path", str(tmp_path / "lookup.parquet"), "--hard-neg-weight", "5", "--device", "cpu", "--no-gates"]
    assert train.main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["hard_negatives"]["by_source"]["ring"] == {"lookup_entries": 5, "matched_negatives": 5, "matched_positives": 5, "unmatched_entries": 0}
    assert m["config"]["hard_negatives"]["hard_neg_weight"] == 5.0 and len(m["epochs"]) == 1


def test_score_parquet_agrees_with_validation_and_score_images(trained, stamp_data, tmp_path):
    out, metrics = trained
    path, images, cols = stamp_data
    best = metrics["epochs"][metrics["best"]["epoch"]]
    assert score.main(["--checkpoint", str(out / "best.pt"), "--data", str(path), "--output", str(tmp_path / "s.parquet"), "--split", "val", "--device", "cpu"]) == 0
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column_names == ["task_id", "ra", "dec", "label", "score", "is_control", "is_null_injection"]
    # the stamps' flags, copied: the fixture's controls are its label-0 rows; it predates null injections (null)
    np.testing.assert_array_equal(table.column("is_control").to_numpy(zero_copy_only=False), table.column("label").to_numpy() == 0)
    assert table.column("is_null_injection").null_count == table.num_rows
    s = table.column("score").to_numpy()
    assert np.all((s >= 0) & (s <= 1))
    # Same model, same preprocessing, no augmentation: the validation AUROC is reproduced.
    assert auroc(table.column("label").to_numpy(), s) == pytest.approx(best["val_auroc"], abs=1e-9)
    # score_images on the raw arrays of the same stamps gives the same scores.
    ra = table.column("ra").to_numpy()
    lab = table.column("label").to_numpy()
    rows = [int(np.flatnonzero((cols["ra"] == r) & (cols["label"] == lb))[0]) for r, lb in zip(ra[:40], lab[:40])]
    np.testing.assert_allclose(score.score_images(str(out / "best.pt"), images[rows]), s[:40], rtol=0, atol=1e-6)


def test_bad_config_values_are_named(stamp_data, tmp_path):
    cfg = dataclasses.replace(small_cfg(tmp_path), model=ModelConfig(architecture="resnet18", blocks_per_stage=[2, 2]))
    with pytest.raises(ValueError, match=r"model\.blocks_per_stage: resnet18 has 4 stages"):
        train.fit(cfg, str(stamp_data[0]))


def test_dhs_score_table_feeds_hard_negative_mining_without_its_injections(trained, stamp_data, tmp_path):
    """The sim-to-real loop: dhs-score on stamps (positives included) -> dhs hardneg collect. The
    score table proves which rows are real (label 0, is_control), so the injected positives
    are refused unless --allow-injected, and then never become model false positives."""
    from dhs_spark.cli import main as dhs
    from dhs_spark.hardneg import collect_hard_negatives

    out, _ = trained
    path, _, _ = stamp_data
    scores = tmp_path / "scores.parquet"
    assert score.main(["--checkpoint", str(out / "best.pt"), "--data", str(path), "--output", str(scores), "--device", "cpu"]) == 0
    table = pq.read_table(scores).to_pandas()
    threshold = float(np.quantile(table.score[table.label == 0], 0.9))  # the top 10% of controls are the "false positives"
    assert ((table.label == 1) & (table.score >= threshold)).sum() > 50, "many injected positives score high: the case being guarded"
    assert dhs(["hardneg", "collect", "--model-scores", str(scores), "--output-dir", str(tmp_path / "refused")]) == 2
    far = pd.DataFrame({"ra": [0.0], "dec": [-89.0]})  # no lens near the fixture's sky
    far.to_parquet(tmp_path / "lenses.parquet")
    cfg = HardNegativeConfig(min_score_threshold=threshold, top_k_per_source=10_000)
    res = collect_hard_negatives(model_scores_path=scores, known_lens_path=tmp_path / "lenses.parquet", output_dir=tmp_path / "hn", config=cfg,
                                 allow_injected=True)  # fmt: skip
    controls = table[(table.label == 0) & (table.score >= threshold)]
    # controls and positives share host positions (paired), so compare (position, score): each model FP is a control's
    fp = res.table[res.table.source == "model_fp"]
    control_keys = set(zip(controls.ra.round(9), controls.dec.round(9), controls.score))
    assert len(fp) == len(controls) > 0 and set(zip(fp.ra.round(9), fp.dec.round(9), fp.score)) <= control_keys
    assert res.counts["model_fp_dropped_injected_positives"] == int((table.label == 1).sum())


def test_seed_underscore_flags_are_aliases_with_one_deprecation_line(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_fit(cfg, data, resume=None, run_gates=True):  # fit itself is tested above; here only the flags
        seen["cfg"] = cfg
        return {"best": {"epoch": 0}}

    monkeypatch.setattr(train, "fit", fake_fit)
    argv = ["--data", "d", "--out_dir", str(tmp_path / "o"), "--hard_neg_path", "hn/hard_neg_lookup.parquet", "--hard_neg_weight", "7",
            "--early_stopping_patience", "3", "--epochs", "4"]  # fmt: skip
    assert train.main(argv) == 0
    cfg = seen["cfg"]
    assert cfg.output_dir == str(tmp_path / "o") and cfg.training.early_stopping_patience == 3 and cfg.training.epochs == 4
    assert (cfg.hard_negatives.enabled, cfg.hard_negatives.hard_neg_path, cfg.hard_negatives.hard_neg_weight) == (True, "hn/hard_neg_lookup.parquet", 7.0)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    assert len(lines) == 1, lines
    for alias, flag in train.SEED_FLAG_ALIASES.items():
        assert f"{alias} -> {flag}" in lines[0]
    # the project's own flags: same config, no deprecation line
    assert train.main(["--data", "d", "--out-dir", str(tmp_path / "o"), "--hard-neg-path", "hn/hard_neg_lookup.parquet", "--hard-neg-weight", "7",
                       "--early-stopping-patience", "3", "--epochs", "4"]) == 0  # fmt: skip
    assert seen["cfg"] == cfg and "deprecated" not in capsys.readouterr().err
    # one alias: the line names it alone; a repeated alias is named once
    assert train.main(["--data", "d", "--out_dir", "a", "--out_dir", str(tmp_path / "o")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    assert len(lines) == 1 and "--out_dir -> --out-dir" in lines[0] and "--hard_neg_path" not in lines[0]
