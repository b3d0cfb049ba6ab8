"""Realism measurements (dhs_spark.realism): the arc-colour estimator against injected arcs of
known colour (noise-free exactness; bias on the six real DR10 hosts), the arc aperture, the
``dhs realism arcs`` table and summary on real DR10 and PS1 lenses and on stamps, and the
linear probe on synthetic populations (same population: inside the permutation null;
visibly different population: far above it), matching, Wilson intervals, the recovery table
and ``dhs realism probe`` end to end on the real DR10 candidates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_checkpoint import write_tiny_checkpoint

from dhs_spark.anchors import arc_visibility_snr
from dhs_spark.cli import main
from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.realism import (
    ProbeConfig,
    arc_sectors,
    load_ps1_lenses,
    match_by_visibility,
    measure_arc,
    probe_auc,
    recentre_on_peak,
    recovery_table,
    summarise_arcs,
    wilson_interval,
)
from dhs_spark.sims.inject import inject_arc
from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.sersic import SersicSource
from trainer.score import embed_images

DATA = Path(__file__).resolve().parent / "data"
DR10 = DATA / "cutouts_dr10"
PS1 = DATA / "real_lenses_ps1"
SIGMA = np.array([0.002, 0.003, 0.008])  # g, r, z sky noise, nmgy/pixel (DR10-like)


def _centre64(path) -> np.ndarray:
    return np.load(path)["cutout"].transpose(2, 0, 1)[:, 18:82, 18:82].astype(np.float32)


def _inject(cutout, theta_e, beta, r_eff, r_mag, g_r, r_z, psf, psi, ivar=None):
    ivar = np.broadcast_to((1 / SIGMA**2)[:, None, None], cutout.shape).astype(np.float32) if ivar is None else ivar
    src = SersicSource(beta * np.cos(psi), beta * np.sin(psi), r_eff, n=1.0)
    return inject_arc(cutout, ivar, SIEShear(theta_e, q=0.8, phi_rad=0.3), src, r_mag, g_r, r_z, psf)


def test_arc_colour_is_exact_without_noise_and_with_equal_psfs():
    """The estimator is linear in the image and the host model absorbs the same fraction of the
    arc in every band, so a noise-free arc (a 1e-4-level noise floor only, for the MAD) with one
    PSF for all bands comes back with its injected colours to 0.01 mag."""
    rng = np.random.default_rng(0)
    floor = (rng.normal(size=(3, 64, 64)) * SIGMA[:, None, None] * 1e-4).astype(np.float32)
    for g_r, r_z in ((0.3, 0.2), (1.5, 1.0)):
        res = _inject(floor, 1.5, 0.4, 0.2, 22.0, g_r, r_z, [1.2, 1.2, 1.2], psi=np.pi)
        m = measure_arc(res.stamp)
        assert abs(m["g_r"] - g_r) < 0.01 and abs(m["r_z"] - r_z) < 0.01, (g_r, r_z, m["g_r"], m["r_z"])
        assert m["g_r_ok"] and m["r_z_ok"] and m["arc_snr"] > 100


def test_arc_colour_bias_on_the_real_dr10_hosts():
    """Known-colour arcs in the six real DR10 cutouts (opposite their own candidate arc): the
    median bias over 24 injections lies in [-0.05, +0.25] mag in both colours (module docstring:
    +0.12 on the 108-stamp grid), no single value is off by more than 0.65 mag, and a blue arc
    always measures bluer than a red one in the same place."""
    d_gr, d_rz = [], []
    for path in sorted(DR10.glob("*.npz")):
        cut = _centre64(path)
        vis = arc_visibility_snr(cut)
        sig = np.array(vis.sigma_nmgy)
        ivar = np.broadcast_to((1 / sig**2)[:, None, None], cut.shape).astype(np.float32)
        psi = (vis.best_sector + 0.5) * np.pi / 4 + np.pi
        for beta, r_eff, r_mag in ((0.5, 0.1, 22.5), (0.3, 0.3, 22.0)):
            measured = {}
            for g_r, r_z in ((0.3, 0.2), (1.0, 0.6)):
                m = measure_arc(_inject(cut, 1.5, beta, r_eff, r_mag, g_r, r_z, [1.35, 1.2, 1.1], psi, ivar).stamp)
                assert m["g_r_ok"] and m["r_z_ok"], (path.name, beta, g_r)
                measured[g_r] = (m["g_r"], m["r_z"])
                d_gr.append(m["g_r"] - g_r)
                d_rz.append(m["r_z"] - r_z)
            assert measured[0.3][0] < measured[1.0][0] and measured[0.3][1] < measured[1.0][1], (path.name, beta, measured)
    for name, d in (("g-r", d_gr), ("r-z", d_rz)):
        assert -0.05 <= np.median(d) <= 0.25, (name, np.median(d))
        assert np.abs(d).max() <= 0.65, (name, np.abs(d).max())


def test_measure_arc_visibility_is_the_anchor_estimator_and_flags_undetected_colours():
    cut = _centre64(DR10 / "0001m040_4091.npz")
    m = measure_arc(cut)
    assert m["arc_snr"] == arc_visibility_snr(cut).arc_snr
    rng = np.random.default_rng(1)
    noise = (rng.normal(size=(3, 64, 64)) * SIGMA[:, None, None]).astype(np.float32)
    blank = measure_arc(noise)
    assert blank["arc_snr"] < 5 and not blank["g_r_ok"] and not blank["r_z_ok"]
    with pytest.raises(ValueError, match="3, N, N"):
        measure_arc(noise[:2])


@pytest.mark.parametrize("snr,best,expected", [
    ([9, 4, 2, 0, 0, 0, 1, 3.5], 0, [0, 1, 7]),       # grows both ways, stops below 3
    ([4, 4, 4, 4, 4, 4, 4, 9], 7, list(range(8))),     # a full ring: all eight, each once
    ([0, 0, 0, 8, 0, 0, 0, 0], 3, [3]),
    ([3, 0, 0, 0, 0, 0, 3.2, 7], 7, [0, 6, 7]),        # wraps past sector 0
])
def test_arc_sectors(snr, best, expected):
    assert arc_sectors(snr, best) == expected


def test_recentre_on_peak_and_ps1_loader():
    img = np.zeros((3, 64, 64), np.float32)
    img[:, 33, 30] = 5.0  # peak 1 px up, 2 px left of the centre pixel (32, 32)
    out, dy, dx = recentre_on_peak(img)
    assert (dy, dx) == (1, -2) and out.shape == (3, 60, 60) and out[:, 30, 30].tolist() == [5.0, 5.0, 5.0]
    img[:, 32, 40] = 50.0  # brighter but 8 px away (a quasar image, a neighbour): not taken
    assert recentre_on_peak(img)[1:] == (1, -2)
    images, meta = load_ps1_lenses(PS1)
    assert images.shape == (23, 3, 60, 60) and len(meta) == 23
    assert meta["theta_e_arcsec"].notna().sum() >= 1 and set(meta["recentre_dx_pix"]) <= set(range(-2, 3))


def _stamp_parquet(path, images, truth: dict, label: int):
    n, c, s, _ = images.shape
    cols = {"task_id": pa.array([f"t{label}-{i:04d}" for i in range(n)]), "label": pa.array(np.full(n, label, np.int32)),
            "is_control": pa.array(np.full(n, label == 0)), "image": pa.array([im.astype("<f4").tobytes() for im in images], pa.binary()),
            "n_bands": pa.array(np.full(n, c, np.int32)), "stamp_size": pa.array(np.full(n, s, np.int32)),
            "split": pa.array(np.full(n, "test"))}
    cols |= {k: pa.array(np.asarray(v, np.float64)) for k, v in truth.items()}
    pq.write_table(pa.table(cols), path)


def test_realism_arcs_cli_side_by_side(tmp_path):
    """Real DR10 candidates, the PS1 subset, injections and controls in one table and summary;
    the DR10 arc SNRs are those of the anchor estimator on the central 64 px."""
    rng = np.random.default_rng(2)
    base = (rng.normal(size=(6, 3, 64, 64)) * SIGMA[None, :, None, None]).astype(np.float32)
    inj = np.stack([_inject(b, 1.4, 0.4, 0.2, 22.0, 0.5, 0.3, [1.3, 1.2, 1.1], psi=k).stamp for k, b in enumerate(base)])
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    _stamp_parquet(stamps / "part-0.parquet", inj, {"theta_e_arcsec": np.full(6, 1.4), "source_color_g_r": np.full(6, 0.5),
                                                    "source_color_r_z": np.full(6, 0.3), "lensed_flux_r_nmgy": np.full(6, 8.0)}, 1)
    _stamp_parquet(stamps / "part-1.parquet", base, {"theta_e_arcsec": np.zeros(6)}, 0)
    out = tmp_path / "arcs"
    assert main(["realism", "arcs", "--cutouts", str(DR10), "--ps1-dir", str(PS1), "--stamps", str(stamps), "--output", str(out)]) == 0
    table = pd.read_parquet(out / "arcs.parquet")
    assert table["set"].value_counts().to_dict() == {"ps1_sled": 23, "dr10_candidates": 6, "injected": 6, "controls": 6}
    summary = json.loads((out / "arcs_summary.json").read_text())
    dr10 = [arc_visibility_snr(_centre64(f)).arc_snr for f in sorted(DR10.glob("*.npz"))]
    assert summary["sets"]["dr10_candidates"]["arc_snr"]["median"] == pytest.approx(np.median(dr10), rel=1e-12)
    assert summary["sets"]["dr10_candidates"]["arc_snr"]["median"] == pytest.approx(19.69, abs=0.01)  # the figure quoted in issue 14
    s_inj, s_ctl = summary["sets"]["injected"], summary["sets"]["controls"]
    assert s_inj["fraction_visible"] == 1.0 and s_ctl["fraction_visible"] == 0.0
    assert s_inj["input_g_r"]["median"] == 0.5 and abs(s_inj["g_r"]["median"] - 0.5) < 0.2
    assert summary["sets"]["ps1_sled"]["n"] + sum(r["count"] for r in summary["rejected"]) == 23
    assert "| dr10_candidates |" in (out / "arcs_report.md").read_text()
    assert main(["realism", "arcs", "--output", str(out)]) == 2


def test_summarise_arcs_known_answer():
    rows = [{"arc_snr": s, "g_r": c, "g_r_ok": ok, "r_z": 0.1, "r_z_ok": False, "host_g_r": 1.5}
            for s, c, ok in ((1.0, 9.0, False), (6.0, 0.2, True), (20.0, 0.4, True), (30.0, 0.6, True))]
    s = summarise_arcs(rows)
    assert s["n"] == 4 and s["fraction_visible"] == 0.75 and s["arc_snr"]["median"] == 13.0
    assert s["g_r"]["n"] == 3 and s["g_r"]["median"] == pytest.approx(0.4) and s["r_z"]["n"] == 0 and s["r_z"]["median"] is None


# ---------------------------------------------------------------------------------------------
# The linear probe
# ---------------------------------------------------------------------------------------------
def _population(n: int, r_eff: float, tag: str, size: int = 32):
    """Injections of one population: noise + an elliptical exponential host, an SIE with theta_E
    U(1.0", 1.8"), a round Sersic n=1 source of half-light radius ``r_eff`` at U(0.1", 0.5") from
    the axis, unlensed r = 22.5 and g-r 0.6, r-z 0.4 for everyone (same brightness and colour),
    PSF 1.2". Per-stamp randomness from stable_hash64(tag, i)."""
    y, x = np.mgrid[0:size, 0:size] - size // 2
    images, truth = [], []
    for i in range(n):
        rng = rng_from_seed(stable_hash64("realism-probe-test", tag, i))
        q, pa_ = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        xr, yr = x * np.cos(pa_) + y * np.sin(pa_), -x * np.sin(pa_) + y * np.cos(pa_)
        host = np.exp(-np.sqrt(q * xr**2 + yr**2 / q) / rng.uniform(1.5, 3.0)) * rng.uniform(0.5, 2.0)
        cut = (np.array([0.02, 0.06, 0.12])[:, None, None] * host + rng.normal(size=(3, size, size)) * SIGMA[:, None, None]).astype(np.float32)
        res = _inject(cut, rng.uniform(1.0, 1.8), rng.uniform(0.1, 0.5), r_eff, 22.5, 0.6, 0.4, [1.2, 1.2, 1.2], rng.uniform(0, 2 * np.pi))
        images.append(res.stamp)
        truth.append({"theta_e_arcsec": res.truth["theta_e_arcsec"], "lensed_flux_r_nmgy": res.truth["lensed_flux_r_nmgy"]})
    return np.stack(images), pd.DataFrame(truth)


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny32.pt", stamp_size=32, seed=0)
    pops = {tag: _population(80, r_eff, tag) for tag, r_eff in (("A", 0.15), ("B", 0.15), ("extended", 0.8))}
    feats = {tag: embed_images(str(ckpt), im)[0] for tag, (im, _) in pops.items()}
    return ckpt, pops, feats


def test_probe_same_population_is_consistent_with_no_difference(probe_setup):
    """Two independent draws of one population (a fixed random CNN's features): the probe AUC
    lies inside the central 95% of its permutation null and p > 0.05."""
    _, _, feats = probe_setup
    r = probe_auc(feats["A"], feats["B"], seed=1, n_folds=4, n_permutations=50, n_bootstrap=300)
    lo, hi = r["null_interval"]
    assert lo <= r["auc"] <= hi and r["p_value"] > 0.05, r
    assert 0.3 < r["auc"] < 0.7


def test_probe_separates_a_visibly_different_population(probe_setup):
    """Same lenses, brightness and colour, sources 0.15" vs 0.8" (compact vs extended arcs): the
    probe's AUC is far above the permutation null (p at its floor 1/51) with a bootstrap
    interval above 0.85."""
    _, _, feats = probe_setup
    r = probe_auc(feats["A"], feats["extended"], seed=1, n_folds=4, n_permutations=50, n_bootstrap=300)
    assert r["auc"] > 0.9 and r["interval"][0] > 0.85 and r["auc"] > r["null_interval"][1], r
    assert r["p_value"] == pytest.approx(1 / 51)
    assert probe_auc(feats["A"][:1], feats["B"])["auc"] is None  # one real stamp: not computable, with a reason


def test_match_by_visibility_and_wilson():
    real = np.array([5.0, 20.0])
    inj = np.array([1.0, 4.0, 6.0, 19.0, 21.0, 100.0, np.nan])
    idx = match_by_visibility(real, inj, per_real=2, seed=0)
    assert sorted(idx.tolist()) == [1, 2, 3, 4]  # nearest two to 5 (4, 6) and to 20 (19, 21); NaN never picked
    assert len(match_by_visibility(real, inj[:3], per_real=2)) == 3  # runs out without repeating
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / (10 + 1.959964**2), rel=1e-9)  # k = 0: z^2 / (n + z^2)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(1 - hi, rel=1e-12) and 0.23 < lo < 0.24  # symmetric about 1/2; 0.2366 (Wilson 1927)
    assert wilson_interval(0, 0) == (None, None)


def test_recovery_table_known_answer():
    cfg = ProbeConfig(theta_e_window_arcsec=(1.0, 2.0), mag_bin_edges=(18.0, 20.0, 22.0), bright_mag_max=20.0, score_threshold=0.5)
    flux = 10 ** ((22.5 - np.array([19.0, 19.5, 21.0, 21.5, 19.0])) / 2.5)
    meta = pd.DataFrame({"theta_e_arcsec": [1.5, 1.5, 1.5, 1.5, 2.5], "lensed_flux_r_nmgy": flux})
    t = recovery_table([0.9, 0.2, 0.7, 0.8, 0.9], meta, [0.6, 0.1, 0.9], pd.DataFrame({"name": ["a", "b", "c"]}), cfg)
    assert [(b["n"], b["n_recovered"]) for b in t["bins"]] == [(2, 1), (2, 2)]  # theta_E 2.5 is outside the window
    assert t["bright"]["recall"] == 0.5 and t["real"]["recall"] == pytest.approx(2 / 3) and t["real"]["n"] == 3


def test_realism_probe_cli_on_the_real_dr10_candidates(probe_setup, tmp_path):
    """`dhs realism probe` with a 32-px checkpoint, the six real 101-px DR10 cutouts and an
    injection Parquet: every gate has a value or a reason, and the report says plainly that six
    real lenses are too few."""
    ckpt, pops, _ = probe_setup
    images, truth = pops["A"]
    stamps = tmp_path / "stamps.parquet"
    _stamp_parquet(stamps, images, truth.to_dict("list"), 1)
    out = tmp_path / "probe"
    rc = main(["realism", "probe", "--checkpoint", str(ckpt), "--real-cutouts", str(DR10), "--stamps", str(stamps), "--output", str(out),
               "--n-permutations", "20", "--n-bootstrap", "200", "--theta-e-window", "1.0", "1.8", "--bright-mag-max", "30"])
    assert rc == 0
    report = json.loads((out / "probe.json").read_text())
    gates = report["gates"]["gates"]
    assert set(gates) == {"realism_probe_auc", "realism_probe_auc_matched", "bright_arc_recall_gap"}
    for name, g in gates.items():
        assert g["value"] is not None or g["reason"], name
        assert g["pass"] in (True, False) or g["reason"], name
    full = gates["realism_probe_auc"]
    assert full["details"]["n_real"] == 6 and full["details"]["n_injected"] == 80
    assert "only 6 real lenses" in full["details"]["caveat"]
    assert report["probe_matched"]["n_injected"] == 30 and report["inputs"]["stamp_size"] == 32
    assert report["recovery"]["real"]["n"] == 6 and report["recovery"]["bright"]["n"] == 80
    assert "Caveat: only 6 real lenses" in (out / "probe_report.md").read_text()
    rows = pd.read_parquet(out / "probe_rows.parquet")
    assert (rows["set"] == "real").sum() == 6 and rows.loc[rows["set"] == "injected", "matched"].sum() == 30
    assert main(["realism", "probe", "--checkpoint", str(ckpt), "--stamps", str(stamps), "--output", str(out)]) == 2


def test_embeddings_are_the_input_of_the_final_linear_layer(probe_setup):
    """embed_images: its scores equal score_images', and the final linear layer applied to its
    features gives the model's logits (so the hook caught the penultimate layer, batch by batch)."""
    import torch

    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.score import score_images

    ckpt, pops, _ = probe_setup
    images = pops["B"][0][:20]
    feats, scores = embed_images(str(ckpt), images, batch_size=7)
    np.testing.assert_allclose(scores, score_images(str(ckpt), images), rtol=0, atol=1e-7)
    model = model_from_checkpoint(load_checkpoint(ckpt))[0]
    with torch.no_grad():
        logits = model.head[-1](torch.from_numpy(feats)).squeeze(1).double().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), scores, rtol=0, atol=1e-6)
    assert feats.shape == (20, 16) and np.ptp(feats, axis=0).max() > 0
