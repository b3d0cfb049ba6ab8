"""Phase-4 pieces without running Spark jobs: flags and config resolution, the 4a row expansion,
the 4c per-partition function, the 4d classifier and the commit of a stage directory."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dhs_spark.config import ExperimentConfig, task_seed
from dhs_spark.errors import ConfigErrors, RejectError
from dhs_spark.jobs import paths as P
from dhs_spark.jobs.phase4a_manifest import GRID_R_MAG_STEPS, GRID_THETA_E_STEPS, expand_hosts, manifest_params, split_of_cell
from dhs_spark.jobs.phase4c_stamps import OUTPUT_SCHEMA, StampParams, stamp_batches
from dhs_spark.jobs.phase4d_gates import CORE_PIX, core_auc, core_indices
from dhs_spark.jobs.pipeline import PipelineInputs, RunOptions, build_parser, config_fingerprint, resolve_config
from dhs_spark.schema import MANIFEST_COLUMNS, decode_image


def _resolve(*argv):
    return resolve_config(build_parser().parse_args(["--stage", "4a", "--experiment-id", "e1", "--output", "/tmp/dhs-out", *argv]))


def test_flags_override_config_and_variant(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("experiment_name: x\noutput_dir: /elsewhere\ndata:\n  psf_model: gaussian\n  oversample: 4\n")
    cfg = _resolve("--config", str(cfg_file), "--psf-model", "moffat", "--moffat-beta", "3.5", "--source-mode", "sersic", "--set", "data.oversample=2")
    assert (cfg.data.psf_model, cfg.data.moffat_beta, cfg.data.source_mode, cfg.data.oversample) == ("moffat", 3.5, "parametric", 2)
    assert cfg.output_dir == "file:///tmp/dhs-out/e1" and cfg.experiment_id == "e1"
    v5 = _resolve("--variant", "v5_cosmos_source", "--cosmos-library", "/data/lib.h5")
    assert (v5.data.variant_name, v5.data.source_mode, v5.data.psf_model) == ("v5_cosmos_source", "cosmos", "moffat")
    assert v5.data.cosmos_library_path == "/data/lib.h5"


def test_bad_flags_fail_with_the_field_named():
    with pytest.raises(ConfigErrors, match="data.moffat_beta"):
        _resolve("--psf-model", "moffat")
    with pytest.raises(ConfigErrors, match="--variant"):
        _resolve("--variant", "no_such_variant")
    with pytest.raises(ConfigErrors, match="data.stamp_size"):
        _resolve("--set", "data.stamp_size=33")


def test_every_flag_is_documented():
    for action in build_parser()._actions:
        assert action.help and len(action.help) > 8, f"{action.option_strings} has no help"


def test_fingerprint_follows_what_changes_rows():
    cfg = _resolve()
    base = config_fingerprint(cfg, PipelineInputs("p", "b", "c"), RunOptions())
    assert base == config_fingerprint(cfg, PipelineInputs("p", "b", "c"), RunOptions(partitions=8, resume=True, fail_once_task_id="x"))
    assert base != config_fingerprint(_resolve("--set", "data.oversample=2"), PipelineInputs("p", "b", "c"), RunOptions())
    assert base != config_fingerprint(cfg, PipelineInputs("p", "b", "other"), RunOptions())


def _hosts(n=300, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "brickname": [f"{1000 + i % 7:04d}p{i % 3:03d}" for i in range(n)],
            "ra": rng.uniform(10, 40, n),
            "dec": rng.uniform(-5, 5, n),
            "psf_fwhm_g_arcsec": 1.4,
            "psf_fwhm_r_arcsec": 1.2,
            "psf_fwhm_z_arcsec": 1.1,
            "psf_fallback_bands": "",
        }
    )


def test_manifest_rows_are_per_task_deterministic_and_disjoint_controls():
    cfg = ExperimentConfig(output_dir="/x", experiment_id="e")
    cfg.population.mode = "uniform"  # row mechanics on hosts without photometry
    cfg.data.n_replicates = 2
    params = manifest_params(cfg, "train")
    hosts = _hosts()
    full = expand_hosts(hosts, params)
    assert list(full.columns) == [c.name for c in MANIFEST_COLUMNS] and full.task_id.is_unique
    part = expand_hosts(hosts.iloc[[5, 17, 250]], params)
    pd.testing.assert_frame_equal(part.reset_index(drop=True), full[full.ra.isin(part.ra)].reset_index(drop=True))
    row = full.iloc[0]
    assert row.task_seed == task_seed(42, row.brickname, row.ra, row.dec, row.config_id, row.replicate) and row.task_id == f"{row.task_seed:016x}"
    kinds = full.groupby(["ra"]).is_control.agg(set)
    assert all(len(k) == 1 for k in kinds), "unpaired: a host gives injections or controls, never both"
    frac = full.drop_duplicates("ra").is_control.mean()
    assert abs(frac - cfg.data.control_fraction) < 0.1
    inj = full[~full.is_control]
    lo, hi = cfg.data.theta_e_range
    assert inj.theta_e_arcsec.between(lo, hi).all() and inj.source_r_mag.between(23, 26).all()
    assert (inj.label == (~inj.is_null_injection).astype(int)).all() and 0 < inj.is_null_injection.mean() < 0.15, "5% null injections, label 0"
    assert (full[full.is_control].theta_e_arcsec == 0).all() and (full[full.is_control].label == 0).all()
    assert full.groupby("ra").split.nunique().max() == 1
    cfg.data.control_type = "paired"
    paired = expand_hosts(hosts, manifest_params(cfg, "train"))
    assert paired.groupby("ra").is_control.nunique().max() == 2, "paired: control hosts keep their injections"


def _sweep_hosts(n=400):
    """Real DR10 LRG sweep rows (photometry) as 4a hosts on one real brick's PSF and depth."""
    from dhs_spark.survey.bricks import load_bricks_table
    from dhs_spark.survey.mock import DEFAULT_BRICKS_PATHS, DEFAULT_SWEEP_PATH

    sweep = pd.read_csv(DEFAULT_SWEEP_PATH)
    sweep = sweep[sweep.is_lrg_v3].head(n)
    brick = load_bricks_table(DEFAULT_BRICKS_PATHS[0]).iloc[0]
    hosts = pd.DataFrame({"brickname": sweep.BRICKNAME.astype(str).to_numpy(), "ra": sweep.RA.to_numpy(), "dec": sweep.DEC.to_numpy(),
                          "psf_fallback_bands": ""})  # fmt: skip
    for b in "grz":
        hosts[f"flux_{b}"] = sweep[f"FLUX_{b.upper()}"].to_numpy()
        hosts[f"psf_fwhm_{b}_arcsec"] = brick[f"psf_fwhm_{b}_arcsec"]
        hosts[f"psfdepth_{b}_invvar_nmgy2"] = brick[f"psfdepth_{b}_invvar_nmgy2"]
    hosts["flux_w1"] = sweep.FLUX_W1.to_numpy()
    hosts["ebv"] = brick["ebv"]
    for col in ("shape_r_arcsec", "shape_e1", "shape_e2", "z_lens"):
        hosts[col] = np.nan
    return hosts


def test_host_conditioned_manifest_is_physical_symmetric_and_split_honest():
    cfg = ExperimentConfig(output_dir="/x", experiment_id="e")
    cfg.data.null_injection_fraction = 0.2
    params = manifest_params(cfg, "train")
    hosts = _sweep_hosts()
    m = expand_hosts(hosts, params)
    assert m.task_id.is_unique and (m.population_mode == "host_conditioned").all()
    assert m.equals(expand_hosts(hosts, params)), "same hosts, same rows"
    inj = m[~m.is_control]
    # a host is kept or dropped whole: injections and controls come from the same host population
    kept = m.groupby(["brickname", "ra", "dec"]).size()
    assert 0.1 * len(hosts) < len(kept) < 0.7 * len(hosts)
    assert m.z_lens.notna().all() and m.sigma_v_kms.notna().all(), "host properties on controls too"
    assert (inj.theta_e_arcsec >= 1.0).all() and (inj.theta_e_arcsec <= 4.0).all()
    assert np.allclose(inj.z_source > inj.z_lens + 0.1, True)
    # theta_E from sigma and the redshifts (SIS, Planck18) on every row
    from dhs_spark.sims.population import einstein_radius_arcsec

    assert np.allclose(einstein_radius_arcsec(inj.sigma_v_kms, inj.z_lens, inj.z_source), inj.theta_e_arcsec, rtol=1e-9)
    # a redrawn source (detectability) redraws z_s too: the host's sigma_v and z_l stay, theta_E follows
    from dhs_spark.jobs.phase4a_manifest import _host_lenses

    host_zs = {(h.brickname, float(h.ra), float(h.dec)): lens["z_source"] for h, lens in zip(hosts.itertuples(), _host_lenses(hosts, params)) if lens}
    zs_host = np.array([host_zs[(r.brickname, r.ra, r.dec)] for r in inj.itertuples()])
    first = (inj.selection_draws == 1).to_numpy()
    assert np.array_equal(inj.z_source.to_numpy()[first], zs_host[first]), "a first draw keeps the host's z_s"
    # redraws redraw z_s, except where the new z_s puts theta_E outside 1-4" (most hosts sit near the 1" floor)
    assert (inj.z_source.to_numpy()[~first] != zs_host[~first]).mean() > 0.25, "redraws redraw z_s"
    # parametric sources from the row's own split, moved to z_source; colours blue as star-forming sources
    pools = params.source_pool.parametric
    assert all(i in set(pools[s].ident) for i, s in zip(inj.source_catalog_ident, inj.split))
    assert not set(pools["train"].ident) & (set(pools["val"].ident) | set(pools["test"].ident)), "each galaxy in one split"
    assert (inj.source_z_catalog.notna()).all() and np.median(inj.source_color_g_r) < 0.8
    # detectability: many rows pass (48% here: parametric sources on one brick); those that pass reach the cut
    assert inj.detectable.mean() > 0.3 and (inj.loc[inj.detectable.astype(bool), "arc_snr_expected"] >= cfg.population.detectable_min_arc_snr).all()
    # null injections: label 0, not controls, about the configured fraction
    nulls = m[m.is_null_injection]
    assert (nulls.label == 0).all() and not nulls.is_control.any() and 0.1 < len(nulls) / len(inj) < 0.3
    assert (m[m.label == 1].is_null_injection == False).all()  # noqa: E712


def test_selection_none_keeps_the_full_faint_range():
    """population.selection 'none' (completeness studies) draws each source once and keeps it,
    so the expected arc SNR spans the faint range the 'detectable' default cuts away."""
    hosts = _sweep_hosts()
    snr = {}
    for selection in ("detectable", "none"):
        cfg = ExperimentConfig(output_dir="/x", experiment_id="e")
        cfg.population.selection = selection
        m = expand_hosts(hosts, manifest_params(cfg, "train"))
        inj = m[(m.label == 1)]
        snr[selection] = inj.arc_snr_expected.to_numpy(float)
        if selection == "none":
            assert (inj.selection_draws == 1).all()
    cut = ExperimentConfig().population.detectable_min_arc_snr
    assert np.median(snr["none"]) < np.median(snr["detectable"])
    assert (snr["none"] < cut).mean() > (snr["detectable"] < cut).mean() + 0.2


def test_splits_hash_the_healpix_cell():
    fractions = (("train", 0.7), ("val", 0.15), ("test", 0.15))
    splits = [split_of_cell(c, 128, fractions) for c in range(6000)]
    for name, frac in fractions:
        assert abs(splits.count(name) / len(splits) - frac) < 0.03, name
    assert split_of_cell(1234, 128, fractions) == split_of_cell(1234, 128, fractions)


def test_grid_tier_is_every_host_times_every_cell():
    cfg = ExperimentConfig(output_dir="/x", experiment_id="e")
    cfg.data.control_fraction = 0.0
    grid = expand_hosts(_hosts(20), manifest_params(cfg, "grid"))
    assert len(grid) == 20 * GRID_THETA_E_STEPS * GRID_R_MAG_STEPS
    per_cell = grid.groupby("config_id")
    assert per_cell.theta_e_arcsec.nunique().max() == 1 and per_cell.source_r_mag.nunique().max() == 1
    assert np.isclose(grid.theta_e_arcsec.min(), 0.5) and np.isclose(grid.theta_e_arcsec.max(), 3.0)


def _batches(manifest, size=2):
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    return table.to_batches(max_chunksize=size)


def test_partition_function_without_spark(tiny_survey):
    manifest, params = tiny_survey
    stats = {}
    out = pa.Table.from_batches(list(stamp_batches(_batches(manifest), params, stats=stats)), schema=OUTPUT_SCHEMA).to_pandas()
    assert len(out) == len(manifest) and out.task_id.tolist() == manifest.task_id.tolist()
    assert stats["bricks_opened"] == manifest.brickname.nunique(), "sorted rows open each brick once"
    assert (out.record_kind == "stamp").sum() == stats["stamps"] and stats["stamps"] + stats["rejects"] == len(manifest)
    stamps = out[out.record_kind == "stamp"]
    assert all(decode_image(img, 3, 32).shape == (3, 32, 32) for img in stamps.image)
    again = pa.Table.from_batches(list(stamp_batches(_batches(manifest, 5), params)), schema=OUTPUT_SCHEMA).to_pandas()
    assert list(out.image.dropna()) == list(again.image.dropna()), "batching never changes bytes"


def test_forced_failure_only_on_first_attempt_and_rejects_for_missing_bricks(tiny_survey):
    manifest, params = tiny_survey
    victim = manifest.task_id.iloc[1]
    hooked = StampParams(**{**params.__dict__, "fail_once_task_id": victim})
    with pytest.raises(RuntimeError, match="forced first-attempt failure"):
        list(stamp_batches(_batches(manifest), hooked, attempt_number=0))
    retried = pa.Table.from_batches(list(stamp_batches(_batches(manifest), hooked, attempt_number=1))).to_pandas()
    clean = pa.Table.from_batches(list(stamp_batches(_batches(manifest), params))).to_pandas()
    assert list(retried.image.dropna()) == list(clean.image.dropna())
    nowhere = StampParams(**{**params.__dict__, "coadd_root": "/nonexistent/survey"})
    out = pa.Table.from_batches(list(stamp_batches(_batches(manifest), nowhere))).to_pandas()
    assert (out.record_kind == "reject").all() and set(out.reason) == {"missing_band"} and out.image.isna().all()


def test_executor_payloads_pickle():
    params = StampParams("e", "s3://b/coadd", 64, 0.262, 4, "moffat", 3.5, "cosmos", True, cosmos_library="sparkfiles:lib.h5")
    assert pickle.loads(pickle.dumps(params)) == params
    err = pickle.loads(pickle.dumps(RejectError("edge", "brick 0001m002")))
    assert (err.reason, err.detail) == ("edge", "brick 0001m002")


def test_core_indices_and_classifier():
    idx = core_indices(48)
    assert len(idx) == 3 * CORE_PIX * CORE_PIX and len(set(idx)) == len(idx)
    for band in range(3):
        assert band * 48 * 48 + 24 * 48 + 24 in idx, "the host pixel is in the core"
    assert band * 48 * 48 + 18 * 48 + 18 not in idx
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    leaky = rng.normal(size=(200, 300)) + labels[:, None] * 0.5
    assert core_auc(leaky, labels) > 0.95
    assert abs(core_auc(rng.normal(size=(200, 300)), labels) - 0.5) < 0.15
    assert core_auc(leaky[:6], np.array([0, 0, 0, 1, 1, 1])) is None


def test_paths_and_atomic_commit(spark, tmp_path):
    exp = P.ExperimentPaths(P.to_uri(str(tmp_path / "exp")))
    assert exp.stamps == P.to_uri(str(tmp_path / "exp")) + "/phase4c_stamps/stamps"
    assert P.join("s3://b/x/", "a", "/b/") == "s3://b/x/a/b" and P.to_uri("s3://b/x/") == "s3://b/x"
    final = exp.stage_dir("4c")
    old = tmp_path / "exp" / "phase4c_stamps"
    old.mkdir(parents=True)
    (old / "part-old.parquet").write_text("old")
    staging = exp.staging_dir("4c", "run1")
    P.write_text(spark, P.join(staging, "part-new.parquet"), "new")
    P.commit(spark, staging, final)
    assert sorted(p.name for p in old.iterdir() if not p.name.startswith(".")) == ["part-new.parquet"]  # .crc: Hadoop checksums
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["_staging", "phase4c_stamps"], "the replaced copy is gone"
    assert P.read_text(spark, P.join(final, "part-new.parquet")) == "new" and P.read_text(spark, P.join(final, "nope")) is None


def delta_kernels(brickname, ra, dec, bands, pixscale_arcsec, stamp_size):
    """A psf_kernels_fn for the pixel-PSF hook: a unit impulse per band (no blur)."""
    kernel = np.zeros((5, 5))
    kernel[2, 2] = 1.0
    return [kernel] * len(bands)


def test_pixel_psf_hook_is_called(tiny_survey):
    manifest, params = tiny_survey
    hooked = StampParams(**{**params.__dict__, "psf_model": "pixel", "psf_kernels_fn": f"{__name__}:delta_kernels", "add_poisson": False})
    out = pa.Table.from_batches(list(stamp_batches(_batches(manifest), hooked))).to_pandas()
    inj = out[(out.record_kind == "stamp") & ~out.is_control]
    assert len(inj) and (inj.psf_model == "pixel").all() and (inj.psf_source == f"{__name__}:delta_kernels").all()
    # an impulse PSF keeps every lensed photon inside the stamp: added flux = magnification x unlensed
    np.testing.assert_allclose(inj.lensed_flux_r_nmgy, inj.magnification * inj.unlensed_flux_r_nmgy, rtol=2e-3)


def test_4c_over_s3_coadds_leaves_no_temporary_files(tiny_survey, moto_endpoint, tmp_path, monkeypatch):
    """Bricks read from s3:// are downloaded into a temporary directory of their own and removed
    once read, on success and on a failed task alike; the stamps equal those of the local bricks."""
    import dataclasses
    import tempfile
    from pathlib import Path

    import boto3

    manifest, params = tiny_survey
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="dhs-test")
    root = Path(params.coadd_root)
    for path in (root / "coadd").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "dhs-test", f"survey/{path.relative_to(root).as_posix()}")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    remote = dataclasses.replace(params, coadd_root="s3://dhs-test/survey")

    local_out = pa.Table.from_batches(list(stamp_batches(_batches(manifest), params)), schema=OUTPUT_SCHEMA).to_pandas()
    stats = {}
    s3_out = pa.Table.from_batches(list(stamp_batches(_batches(manifest), remote, stats=stats)), schema=OUTPUT_SCHEMA).to_pandas()
    assert stats["bricks_opened"] == manifest.brickname.nunique() and stats["stamps"] > 0
    assert list(s3_out.image.dropna()) == list(local_out.image.dropna()), "the same bytes from S3 as from local disk"
    assert not any(scratch.iterdir()), f"temporary files left: {sorted(p.name for p in scratch.iterdir())}"

    failing = dataclasses.replace(remote, fail_once_task_id=manifest.task_id.iloc[-1])
    with pytest.raises(RuntimeError, match="forced first-attempt failure"):
        list(stamp_batches(_batches(manifest), failing))
    assert not any(scratch.iterdir()), "a failed task leaves no temporary files either"
