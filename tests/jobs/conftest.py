"""Fixtures shared by the phase-4 job tests."""

from __future__ import annotations

import pandas as pd
import pytest

from dhs_spark.config import ExperimentConfig
from dhs_spark.jobs.phase4a_manifest import expand_hosts, manifest_params
from dhs_spark.jobs.phase4c_stamps import StampParams


@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory):
    from dhs_spark.survey.bricks import load_bricks_table
    from dhs_spark.survey.mock import build_mock_survey

    mock = build_mock_survey(tmp_path_factory.mktemp("tiny"), n_bricks=2, brick_size_pix=200, n_lrg_per_brick=3, n_neighbours_per_brick=3, n_stars_per_brick=1)
    cat = pd.read_parquet(mock.catalog_parquet)
    bricks = load_bricks_table(mock.bricks_table).set_index("brickname")
    lrg = cat[cat.MOCK_ROLE == "lrg"]
    hosts = pd.DataFrame({"brickname": lrg.BRICKNAME, "ra": lrg.RA, "dec": lrg.DEC})
    for b in "grz":
        hosts[f"psf_fwhm_{b}_arcsec"] = bricks.loc[hosts.brickname, f"psf_fwhm_{b}_arcsec"].to_numpy()
    hosts["psf_fallback_bands"] = ""
    cfg = ExperimentConfig(output_dir="/x", experiment_id="e")
    cfg.population.mode = "uniform"  # the 4c mechanics on every host (the population is tested in test_pipeline_units)
    cfg.data.control_fraction = 0.3
    manifest = expand_hosts(hosts.reset_index(drop=True), manifest_params(cfg, "train")).sort_values(["brickname", "task_id"])
    params = StampParams("e", str(mock.root), 32, 0.262, 4, "gaussian", None, "parametric", True)
    return manifest, params
