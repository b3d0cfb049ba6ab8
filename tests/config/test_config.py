"""Experiment config: every validation rule on both sides, YAML round trips, CLI exit codes."""

from __future__ import annotations

import copy
import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dhs_spark.config import (
    DataVariantConfig,
    ExperimentConfig,
    TrainingConfig,
    create_experiment_config,
    from_dict,
    from_yaml,
    get_reproducibility_info,
    set_all_seeds,
    task_seed,
    to_yaml,
)
from dhs_spark.errors import ConfigErrors

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))
VALID = {"output_dir": "out", "data": {"psf_model": "gaussian"}}


def merged(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def error_fields(data: dict) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        from_dict(data, file="case.yaml")
    assert all(err.file == "case.yaml" for err in info.value.errors)
    return [err.field for err in info.value.errors]


# (failing patch, field the error must name, passing patch of the same rule)
RULES = [
    ({"output_dir": None}, "output_dir", {"output_dir": "elsewhere"}),
    ({"data": {"psf_model": "moffat"}}, "data.moffat_beta", {"data": {"psf_model": "moffat", "moffat_beta": 3.5}}),
    ({"data": {"psf_model": "moffat", "moffat_beta": 0.9}}, "data.moffat_beta", {"data": {"psf_model": "moffat", "moffat_beta": 1.5}}),
    ({"data": {"source_mode": "cosmos"}}, "data.cosmos_library_path", {"data": {"source_mode": "cosmos", "cosmos_library_path": "c.h5"}}),
    ({"hard_negatives": {"enabled": True}}, "hard_negatives.hard_neg_path", {"hard_negatives": {"enabled": True, "hard_neg_path": "h.parquet"}}),
    ({"data": {"theta_e_range": [2.0, 1.0]}}, "data.theta_e_range", {"data": {"theta_e_range": [1.0, 2.0]}}),
    ({"data": {"theta_e_range": [-1.0, 1.0]}}, "data.theta_e_range", {"data": {"theta_e_range": [0.1, 1.0]}}),
    ({"data": {"theta_e_range": [1.0]}}, "data.theta_e_range", {"data": {"theta_e_range": [1.0, 1.5]}}),
    ({"data": {"stamp_size": 63}}, "data.stamp_size", {"data": {"stamp_size": 64}}),
    ({"data": {"stamp_size": 30}}, "data.stamp_size", {"data": {"stamp_size": 32}}),
    ({"data": {"bands": ["z", "g"]}}, "data.bands", {"data": {"bands": ["g", "z"]}}),
    ({"data": {"bands": ["g", "i"]}}, "data.bands", {"data": {"bands": ["r"]}}),
    ({"data": {"control_fraction": 1.5}}, "data.control_fraction", {"data": {"control_fraction": 1.0}}),
    ({"data": {"split_fractions": {"train": 0.9, "val": 0.2}}}, "data.split_fractions", {"data": {"split_fractions": {"train": 0.8, "val": 0.2}}}),
    ({"data": {"split_fractions": {"train": 1.2, "val": -0.2}}}, "data.split_fractions.train", {"data": {"split_fractions": {"train": 1.0, "val": 0.0}}}),
    ({"data": {"healpix_nside": 100}}, "data.healpix_nside", {"data": {"healpix_nside": 64}}),
    ({"data": {"oversample": 0}}, "data.oversample", {"data": {"oversample": 1}}),
    ({"data": {"n_replicates": 0}}, "data.n_replicates", {"data": {"n_replicates": 2}}),
    ({"data": {"pixel_scale_arcsec": 0.0}}, "data.pixel_scale_arcsec", {"data": {"pixel_scale_arcsec": 0.262}}),
    ({"priors": {"source_r_mag_range": [26.0, 23.0]}}, "priors.source_r_mag_range", {"priors": {"source_r_mag_range": [22.0, 25.0]}}),
    ({"priors": {"beta_frac_sq_range": [0.1, 1.5]}}, "priors.beta_frac_sq_range", {"priors": {"beta_frac_sq_range": [0.1, 0.5]}}),
    ({"priors": {"lens_q_range": [0.5, 1.2]}}, "priors.lens_q_range", {"priors": {"lens_q_range": [0.3, 1.0]}}),
    ({"priors": {"shear_sigma": -0.1}}, "priors.shear_sigma", {"priors": {"shear_sigma": 0.0}}),
    ({"evaluation": {"anchor_min_recovery": 1.7}}, "evaluation.anchor_min_recovery", {"evaluation": {"anchor_min_recovery": 0.9}}),
    ({"evaluation": {"fpr_targets": [0.0]}}, "evaluation.fpr_targets[0]", {"evaluation": {"fpr_targets": [1e-5]}}),
    ({"hard_negatives": {"exclusion_radius_arcsec": 0.0}}, "hard_negatives.exclusion_radius_arcsec", {"hard_negatives": {"exclusion_radius_arcsec": 3.0}}),
    ({"hard_negatives": {"min_score_threshold": 2.0}}, "hard_negatives.min_score_threshold", {"hard_negatives": {"min_score_threshold": 0.9}}),
    ({"training": {"epochs": 0}}, "training.epochs", {"training": {"epochs": 1}}),
    ({"training": {"clip_sigma": -1.0}}, "training.clip_sigma", {"training": {"clip_sigma": 25.0}}),
    # types and unknown keys
    ({"data": {"moffat_beta": "abc", "psf_model": "moffat"}}, "data.moffat_beta", {"data": {"moffat_beta": 2, "psf_model": "moffat"}}),
    ({"data": {"stamp_size": 64.0}}, "data.stamp_size", {"data": {"stamp_size": 64}}),
    ({"data": {"psf_model": "airy"}}, "data.psf_model", {"data": {"psf_model": "pixel"}}),
    ({"training": {"amp": "yes"}}, "training.amp", {"training": {"amp": False}}),
    ({"data": {"psf_modle": "gaussian"}}, "data.psf_modle", {"data": {}}),
    ({"colour": 1}, "colour", {}),
    ({"seeds": 5}, "seeds", {"seeds": {"global_seed": 5}}),
]


@pytest.mark.parametrize("bad, field, good", RULES, ids=[r[1] + f"#{i}" for i, r in enumerate(RULES)])
def test_each_rule_fails_and_passes(bad, field, good):
    assert field in error_fields(merged(VALID, bad)), f"rule for {field} did not fire"
    cfg = from_dict(merged(VALID, good))
    assert isinstance(cfg, ExperimentConfig)


def test_all_errors_reported_at_once():
    fields = error_fields(merged(VALID, {"data": {"stamp_size": 63, "psf_model": "moffat", "bands": ["x"]}, "training": {"epochs": 0}}))
    assert {"data.stamp_size", "data.moffat_beta", "data.bands", "training.epochs"} <= set(fields)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_config_files_round_trip(path, tmp_path):
    cfg = from_yaml(path)
    out = tmp_path / "round.yaml"
    to_yaml(cfg, out)
    again = from_yaml(out)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_every_field_survives_round_trip(tmp_path):
    # Change every leaf away from its default so a field dropped by to_yaml/from_yaml shows.
    cfg = ExperimentConfig(output_dir="o", git_commit="abc", git_branch="b", git_dirty=True, created_at="t")
    cfg.data = dataclasses.replace(cfg.data, psf_model="moffat", moffat_beta=2.5, source_mode="cosmos", cosmos_library_path="c.h5",
                                   theta_e_range=(0.7, 2.2), bands=["g", "z"], split_fractions={"train": 0.5, "test": 0.5})
    cfg.training = TrainingConfig(epochs=3, loss="focal", subtract_radial_profile=True)
    to_yaml(cfg, tmp_path / "c.yaml")
    assert from_yaml(tmp_path / "c.yaml") == cfg


def test_variants_name_parent_and_change():
    for path in (REPO / "configs" / "data_variants").glob("*.yaml"):
        data = from_yaml(path).data
        assert data.variant_name == path.stem
        assert data.changes_from_parent, path
        if data.variant_name != "v3_color_relaxed":
            assert (REPO / "configs" / "data_variants" / f"{data.parent_variant}.yaml").exists(), path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dhs_spark.cli", "config", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("output_dir: o\ndata:\n  psf_modle: gaussian\n", "data.psf_modle"),
        ("output_dir: o\ndata:\n  stamp_size: big\n", "data.stamp_size"),
        ("data:\n  psf_model: gaussian\n", "output_dir"),
        ("output_dir: o\ndata:\n  psf_model: moffat\n", "data.moffat_beta"),
        ("output_dir: o\ndata: [unclosed\n", "line 3"),
    ],
    ids=["unknown-key", "wrong-type", "missing-field", "inconsistent-pair", "yaml-syntax"],
)
def test_cli_validate_bad_file(tmp_path, text, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = cli("validate", str(CONFIG_FILES[0]), str(bad))
    assert result.returncode == 2
    assert needle in result.stderr and str(bad) in result.stderr, result.stderr


def test_cli_validate_and_show_good():
    result = cli("validate", *map(str, CONFIG_FILES))
    assert result.returncode == 0, result.stderr
    shown = cli("show", str(REPO / "configs" / "data_variants" / "v4_sota_moffat.yaml"))
    assert shown.returncode == 0
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["data"]["moffat_beta"] == 3.5 and resolved["priors"]["source_r_mag_range"] == [23.0, 26.0]


def test_create_experiment_config(tmp_path):
    a = create_experiment_config(experiment_name="gen5", generation="gen5", data_variant="v5_cosmos_source", output_base_dir=str(tmp_path))
    b = create_experiment_config(experiment_name="gen5", generation="gen5", data_variant=DataVariantConfig(), output_base_dir=str(tmp_path))
    assert a.experiment_id != b.experiment_id and sorted([b.experiment_id, a.experiment_id]) == [a.experiment_id, b.experiment_id]
    assert a.output_dir == str(tmp_path / a.experiment_id)
    assert a.data.source_mode == "cosmos" and a.git_commit is not None and len(a.git_commit) == 40
    with pytest.raises(ConfigErrors):
        create_experiment_config("x", "g", DataVariantConfig(psf_model="moffat"), str(tmp_path))


def test_set_all_seeds_reproducible():
    import torch

    def draw():
        return random.random(), np.random.rand(), torch.rand(3).tolist()

    set_all_seeds(7)
    first = draw()
    set_all_seeds(7)
    assert draw() == first
    set_all_seeds(8)
    assert draw() != first


def test_task_seed_identity():
    base = task_seed(42, "1500p020", 150.1, 2.05, "cfg0", 0)
    assert base == task_seed(42, "1500p020", 150.1, 2.05, "cfg0", 0)
    assert 0 <= base < 2**63
    others = {task_seed(43, "1500p020", 150.1, 2.05, "cfg0", 0), task_seed(42, "1500p020", 150.1, 2.05, "cfg0", 1),
              task_seed(42, "1500p020", 150.1000001, 2.05, "cfg0", 0), task_seed(42, "1500p020", 150.1, 2.05, "cfg1", 0)}
    assert base not in others and len(others) == 4


def test_reproducibility_info():
    info = get_reproducibility_info()
    assert info["numpy"] == np.__version__ and info["pyspark"].startswith("3.5") and info["python"].count(".") == 2
