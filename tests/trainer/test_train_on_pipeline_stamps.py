"""The trainer on real pipeline output: Spark 4a/4c on the mock survey -> a CPU run of a few
epochs learns (fixed seed, validation AUROC floor), writes a checkpoint, and resumes from it.

Slow (about 2-4 minutes on 2 cores): run with ``pytest -m slow``; ``make bench`` runs it too.
"""

from __future__ import annotations

import dataclasses

import pytest

pytestmark = pytest.mark.slow

# A floor, not a target: with this seed the run reaches ~0.8; 0.65 is "clearly above 0.5" for
# ~300 validation stamps (the AUROC's standard error there is ~0.03).
VAL_AUROC_FLOOR = 0.65


@pytest.fixture(scope="module")
def pipeline_stamps(spark, tmp_path_factory):
    from dhs_spark.jobs.pipeline import main
    from dhs_spark.survey.mock import build_mock_survey

    root = tmp_path_factory.mktemp("train_on_pipeline")
    mock = build_mock_survey(root / "mock", n_bricks=16, brick_size_pix=500, seed=3, n_lrg_per_brick=40)
    args = ["--stage", "4c", "--source-mode", "sersic", "--experiment-id", "trainpipe", "--output", str(root / "out"),
            "--parent-sample", str(mock.catalog_parquet), "--select-lrg", "--bricks-table", str(mock.bricks_table),
            "--coadd-root", str(mock.root), "--set", "data.stamp_size=48", "--set", "data.n_replicates=4",
            "--set", "data.healpix_nside=256", "--log-level", "WARNING",
            # every LRG a host (the uniform priors): the host-conditioned population keeps ~25% of them,
            # too few stamps for this test of the training mechanics
            "--set", "population.mode=uniform"]  # fmt: skip
    assert main(["--stage", "4a", *args[2:]], spark=spark) == 0
    assert main(args, spark=spark) == 0
    return root / "out" / "trainpipe" / "phase4c_stamps" / "stamps"


def test_cpu_training_on_pipeline_stamps_learns_and_resumes(pipeline_stamps, tmp_path):
    from dhs_spark.config import ExperimentConfig, ModelConfig, SeedConfig, TrainingConfig
    from trainer.checkpoint import load_checkpoint
    from trainer.data import StampIndex
    from trainer.train import fit

    index = StampIndex.scan(str(pipeline_stamps))
    assert index.n_rows >= 2500 and all(len(index.rows(s)) > 100 for s in ("train", "val", "test")), "a few thousand stamps in three splits"
    cfg = ExperimentConfig(
        experiment_name="train-on-pipeline", output_dir=str(tmp_path / "run"), seeds=SeedConfig(global_seed=7),
        model=ModelConfig(architecture="resnet_small", width=16),
        training=TrainingConfig(epochs=3, batch_size=64, learning_rate=2e-3, warmup_epochs=1, early_stopping_patience=3, amp=False, device="cpu"),
    )  # fmt: skip
    metrics = fit(cfg, str(pipeline_stamps), run_gates=False)
    assert metrics["best"]["value"] > VAL_AUROC_FLOOR, metrics["best"]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert {"model", "optimizer", "config"} <= set(best)

    longer = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, epochs=4, early_stopping_patience=4))
    resumed = fit(longer, str(pipeline_stamps), resume=str(tmp_path / "run" / "last.pt"), run_gates=False)
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3], "resumed run continues at epoch 3 and keeps the history"
    assert resumed["epochs"][:3] == metrics["epochs"][:3]
