"""trainer.gates with hand-built scorers whose behaviour is known: an "arc-looking" scorer
(flux in the Einstein-radius annulus) must pass the gates; "shortcut" scorers (a corner pixel,
the noise level, ring symmetry) must fail them. The arc masks are checked against arcs rendered
by the injection code (dhs_spark.sims.inject)."""

import json

import numpy as np
import pytest

from dhs_spark.config import DataVariantConfig, EvaluationConfig, InjectionPriors
from dhs_spark.gates import Gate
from trainer.gates import (
    ARC_MASK_FLUX_FRACTION,
    add_gaussian_ring,
    annulus_half_width_arcsec,
    annulus_masks,
    arc_footprint_masks,
    arc_suppressed_gate,
    core_only_gate,
    fit_logistic,
    null_injection_gate,
    positive_masks,
    predict_logistic,
    ring_adversary_gate,
    run_gates,
)
from trainer.metrics import auroc
from trainer.preprocess import PreprocessConfig, annulus_stats, radius_px

PRE = PreprocessConfig()
PIXEL_SCALE_ARCSEC = DataVariantConfig().pixel_scale_arcsec
ALPHA = 0.01


@pytest.fixture(scope="module")
def stamps(paired_arrays):
    """The paired fixture plus each positive's arc (positive - its control: same host, same noise)."""
    images, cols = paired_arrays
    key = {(r, d): i for i, (r, d, lab) in enumerate(zip(cols["ra"], cols["dec"], cols["label"])) if lab == 0}
    arcs = np.zeros_like(images)
    for i in np.flatnonzero(cols["label"] == 1):
        arcs[i] = images[i] - images[key[(cols["ra"][i], cols["dec"][i])]]
    return images, cols, arcs


@pytest.fixture(scope="module")
def fresh_hosts():
    """Unpaired control-like stamps from other hosts: stand-ins for null injections, whose
    images are their untouched cutouts (zero source flux)."""
    from tests.trainer.conftest import make_stamps

    images, cols = make_stamps(150, stamp_size=32, seed=11)
    return images[cols["label"] == 0]


def r_noise(images):
    """Per-stamp r-band sky sigma (outer-annulus robust estimate), shape (N,)."""
    return annulus_stats(images, PRE)[1][:, 1, 0, 0]


def annulus_scorer(images):
    """Mean r-band flux (in noise units) at 3-10 px: where the fixture's arcs are."""
    r = radius_px(*images.shape[-2:])
    sel = (r >= 3) & (r <= 10)
    return 1 / (1 + np.exp(-(images[:, 1][:, sel].mean(axis=1) / r_noise(images) * 3 - 1)))


def corner_scorer(images):
    """A shortcut: reads the value of one corner pixel."""
    return 1 / (1 + np.exp(-images[:, 1, 0, 0] / r_noise(images)))


def noise_scorer(images):
    """A shortcut a model learns when injections carry extra noise: the r-band noise level."""
    return 1 / (1 + np.exp(-(r_noise(images) / 0.005 - 1.15) * 20))


def symmetry_scorer(images):
    """A shortcut on ring symmetry: flux at every azimuth, i.e. the faintest of 8 sectors of the
    6-11 px annulus (beyond the fixture hosts' light) above 1 sky sigma per pixel."""
    h, w = images.shape[-2:]
    r = radius_px(h, w)
    y, x = np.indices((h, w))
    sector = ((np.arctan2(y - h // 2, x - w // 2) + np.pi) / (2 * np.pi) * 8).astype(int) % 8
    sel = (r >= 6) & (r <= 11)
    faintest = np.min([images[:, 1][:, sel & (sector == k)].mean(axis=1) for k in range(8)], axis=0)
    return 1 / (1 + np.exp(-(faintest / r_noise(images) - 1.0) * 6))


def test_logistic_regression_matches_sklearn_ranking():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x @ [1.0, -2.0, 0.5, 0, 0] + rng.normal(size=400) > 0).astype(float)
    ours = predict_logistic(fit_logistic(x, y, l2=1e-4), x)
    ref = LogisticRegression(C=1e4).fit(x, y).decision_function(x)
    assert np.corrcoef(ours, ref)[0, 1] > 0.999


def test_core_only_is_informational_and_sees_a_core_leak(stamps):
    images, cols, _ = stamps
    y = cols["label"]
    half = len(y) // 2
    clean = core_only_gate(images[:half], y[:half], images[half:], y[half:], PRE, auc_max=0.7)
    leaky = images.copy()
    leaky[y == 1, :, 14:18, 14:18] += 3 * r_noise(images)[y == 1, None, None, None]  # positives get a brighter core
    leak = core_only_gate(leaky[:half], y[:half], leaky[half:], y[half:], PRE, auc_max=0.7)
    assert isinstance(leak, Gate) and leak.direction == "info" and leak.passed is None
    assert leak.details["auc_raw"] > 0.95 and leak.details["auc_raw"] > clean.details["auc_raw"] + 0.1
    assert core_only_gate(images[:4], np.ones(4), images[4:8], y[4:8], PRE, 0.7).reason.startswith("needs positives and controls")


def test_null_injection_gate_fails_when_the_injection_path_adds_noise(stamps, fresh_hosts):
    images, cols, _ = stamps
    controls = images[cols["label"] == 0]
    for scorer in (annulus_scorer, noise_scorer):
        ok = null_injection_gate(scorer, fresh_hosts, controls, shift_max=0.05, alpha=ALPHA, n_bootstrap=200)
        assert ok.passed is True and ok.value < 0.05, (scorer.__name__, ok)
    rng = np.random.default_rng(3)
    noisy = (fresh_hosts + 0.5 * np.array([0.004, 0.005, 0.009], np.float32)[None, :, None, None] * rng.standard_normal(fresh_hosts.shape)).astype(np.float32)
    bad = null_injection_gate(noise_scorer, noisy, controls, shift_max=0.05, alpha=ALPHA, n_bootstrap=200)
    assert bad.passed is False and bad.value > 0.2 and bad.details["p_value"] < 1e-6 and bad.details["auc_null_vs_controls"] > 0.9
    lo, hi = bad.interval
    assert lo <= bad.value <= hi
    none = null_injection_gate(annulus_scorer, fresh_hosts[:0], controls, 0.05, ALPHA)
    assert none.passed is None and none.reason == "no null injections: set data.null_injection_fraction > 0"


def test_arc_footprint_mask_holds_the_arc_flux(stamps):
    _, cols, arcs = stamps
    pos = arcs[cols["label"] == 1]
    masks = arc_footprint_masks(pos)
    flux = pos.astype(np.float64).clip(0).sum(axis=1)
    frac = (flux * masks).sum(axis=(1, 2)) / flux.sum(axis=(1, 2))
    assert frac.min() >= ARC_MASK_FLUX_FRACTION - 1e-9
    # minimal: dropping the faintest masked pixel falls below the target
    i = 0
    masked_vals = np.sort(flux[i][masks[i]])
    assert (masked_vals.sum() - masked_vals[0]) / flux[i].sum() < ARC_MASK_FLUX_FRACTION
    assert not arc_footprint_masks(np.zeros((1, 3, 8, 8))).any()


@pytest.mark.parametrize("psf_model,moffat_beta", [("gaussian", None), ("moffat", 3.5)])
def test_fallback_annulus_holds_95_percent_of_injected_arcs(psf_model, moffat_beta):
    """Arcs from dhs_spark.sims.inject (default priors, FWHM 0.9-1.8") on a blank 64-px stamp."""
    from dhs_spark.sims.inject import inject_arc
    from dhs_spark.sims.priors import lens_from_params, sample_injection, sersic_from_params

    size, rng = 64, np.random.default_rng(5)
    fracs, old = [], []
    for i in range(30):
        p = sample_injection(InjectionPriors(), (0.5, 3.0), 7000 + i)
        fwhm = rng.uniform(0.9, 1.8)
        arc = inject_arc(np.zeros((3, size, size), np.float32), np.ones((3, size, size), np.float32), lens_from_params(p), sersic_from_params(p),
                         p["source_r_mag"], p["source_color_g_r"], p["source_color_r_z"], [fwhm] * 3, psf_model=psf_model, moffat_beta=moffat_beta,
                         pixscale=PIXEL_SCALE_ARCSEC).arc.sum(axis=0)  # fmt: skip
        half = annulus_half_width_arcsec(np.hypot(p["source_x_arcsec"], p["source_y_arcsec"]), p["source_r_eff_arcsec"], fwhm)
        mask = annulus_masks((size, size), [p["theta_e_arcsec"]], [half], PIXEL_SCALE_ARCSEC)[0]
        fracs.append(arc[mask].sum() / arc.sum())
        old.append(arc[annulus_masks((size, size), [p["theta_e_arcsec"]], [1.0], PIXEL_SCALE_ARCSEC)[0]].sum() / arc.sum())
    assert min(fracs) >= 0.95, f"{psf_model}: worst {min(fracs):.3f}"
    assert np.median(old) < 0.95, "the former |r - theta_E| <= 1 arcsec mask leaves flux out"


def test_arc_suppression_separates_arc_scorer_from_shortcut(stamps):
    images, cols, arcs = stamps
    pos, ctrl = cols["label"] == 1, cols["label"] == 0
    bright = pos & (cols["arc_snr_sum"] > 20)
    pos_set = {"images": images[bright], "arc_images": arcs[bright], "has_arc": np.ones(bright.sum(), bool)}
    masks, info = positive_masks(pos_set, PIXEL_SCALE_ARCSEC)
    assert info["n_arc_footprint"] == bright.sum() and info["arc_flux_fraction_masked_median"] >= ARC_MASK_FLUX_FRACTION
    kw = dict(preprocess_cfg=PRE, shift_max=0.1, alpha=ALPHA, threshold=0.5, mask_info=info, n_bootstrap=200)
    ok = arc_suppressed_gate(annulus_scorer, images[bright], annulus_scorer(images[bright]), masks, images[ctrl], rng=np.random.default_rng(0), **kw)
    assert ok.details["mean_score_positives"] > ok.details["mean_score_positives_masked"] + 0.1  # masking removed the evidence
    assert ok.passed is True, ok
    marked = images.copy()
    marked[pos, 1, 0, 0] += 5 * r_noise(images)[pos]  # evidence outside the arc survives masking
    bad = arc_suppressed_gate(corner_scorer, marked[bright], corner_scorer(marked[bright]), masks, marked[ctrl], rng=np.random.default_rng(0), **kw)
    assert bad.passed is False and bad.value > 0.1
    # without arc_image: the annulus from theta_E, the source offset and size, and the PSF
    fallback = {"images": images[bright], "arc_images": None, "theta_e_arcsec": cols["theta_e_arcsec"][bright], "source_x_arcsec": np.zeros(bright.sum()),
                "source_y_arcsec": np.zeros(bright.sum()), "source_r_eff_arcsec": np.full(bright.sum(), np.nan), "psf_fwhm_r_arcsec": cols["psf_fwhm_r_arcsec"][bright]}  # fmt: skip
    fb_masks, fb_info = positive_masks(fallback, PIXEL_SCALE_ARCSEC)
    assert fb_info["n_annulus_fallback"] == bright.sum() and fb_info["n_r_eff_unknown"] == bright.sum()
    assert (fb_masks | ~masks).all(), "the fixture's arcs (1 px wide at theta_E) lie inside the fallback annulus"


def test_gaussian_ring_snr_and_the_ring_adversary(stamps):
    images, cols, _ = stamps
    ctrl = images[cols["label"] == 0][:80]
    ringed = add_gaussian_ring(ctrl, np.full(80, 1.5), np.full(80, 1.2), np.full(80, 30.0), PIXEL_SCALE_ARCSEC, PRE)
    _, noise = annulus_stats(ctrl, PRE)
    snr = np.sqrt((((ringed - ctrl) / noise) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(snr, 30.0, rtol=1e-4)
    assert auroc(np.r_[np.zeros(80), np.ones(80)], np.r_[annulus_scorer(ctrl), annulus_scorer(ringed)]) > 0.9

    bright = (cols["label"] == 1) & (cols["arc_snr_sum"] > 20)  # the ring gets their median SNR (~60)
    args = (ctrl, cols["theta_e_arcsec"][bright], cols["arc_snr_sum"][bright], np.full(80, 1.2))
    kw = dict(pixel_scale_arcsec=PIXEL_SCALE_ARCSEC, preprocess_cfg=PRE, threshold=0.5, excess_max=0.1, alpha=ALPHA, n_bootstrap=200)
    ok = ring_adversary_gate(annulus_scorer, *args, annulus_scorer(images[bright]), **kw)
    assert ok.passed is True and ok.details["n_matched_positives"] > 20, ok
    assert ok.details["mean_score_ringed"] > ok.details["mean_score_controls"] and ok.details["fraction_ringed_above_threshold"] > 0.9
    bad = ring_adversary_gate(symmetry_scorer, *args, symmetry_scorer(images[bright]), **kw)
    assert bad.passed is False and bad.value > 0.3 and bad.details["p_value"] < 1e-6
    assert bad.details["fraction_plain_above_threshold"] < 0.05, "the symmetry scorer ignores plain controls: it fires on rings, not arcs"


def test_run_gates_reports_every_gate_in_one_shape(stamps, fresh_hosts):
    images, cols, arcs = stamps
    n = len(images)
    val = {"images": images, "label": cols["label"], "arc_images": arcs, "has_arc": cols["label"] == 1,
           **{k: cols[k] for k in ("theta_e_arcsec", "arc_snr_sum", "psf_fwhm_r_arcsec")}, "source_x_arcsec": np.zeros(n),
           "source_y_arcsec": np.zeros(n), "source_r_eff_arcsec": np.full(n, np.nan)}  # fmt: skip
    ev = EvaluationConfig(n_bootstrap=100)
    out = run_gates(annulus_scorer, val, val, {"null_images": fresh_hosts, "control_images": images[cols["label"] == 0]}, PRE, ev, PIXEL_SCALE_ARCSEC, seed=1)
    assert set(out["gates"]) == {"core_only", "null_injection", "arc_suppressed", "ring_adversary"}
    assert out["all_passed"] and not out["not_computable"], out
    assert all(g["interval"] is not None for k, g in out["gates"].items() if k != "core_only")
    json.dumps(out, allow_nan=False)
    no_null = run_gates(annulus_scorer, val, val, {"null_images": images[:0], "control_images": images[:0]}, PRE, ev, PIXEL_SCALE_ARCSEC, seed=1)
    assert no_null["not_computable"] == ["null_injection"]


def test_null_injections_are_held_out_of_training_and_feed_the_null_gate(stamps, fresh_hosts, tmp_path):
    """trainer.data / trainer.train on Parquet with arc_image and is_null_injection, plus a file
    written before those columns (its rows read as no arc and no null injection)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.trainer.conftest import stamp_table
    from trainer.data import StampIndex, load_arc_images
    from trainer.train import _gate_sample, _null_sample

    images, cols, arcs = stamps
    n, n_null = len(images), len(fresh_hosts)
    all_cols = {k: np.r_[v, np.zeros(n_null, v.dtype)] for k, v in cols.items()}
    all_cols["ra"][n:], all_cols["dec"][n:] = 152.0 + np.arange(n_null) * 0.01, 3.0  # their own hosts
    table = stamp_table(np.concatenate([images, fresh_hosts]), all_cols)
    null = np.r_[np.zeros(n, bool), np.ones(n_null, bool)]
    arc_col = [a.tobytes() if lab == 1 else None for a, lab in zip(np.concatenate([arcs, np.zeros_like(fresh_hosts)]), all_cols["label"])]
    table = table.set_column(table.schema.get_field_index("is_null_injection"), "is_null_injection", pa.array(null))
    table = table.set_column(table.schema.get_field_index("arc_image"), "arc_image", pa.array(arc_col, pa.binary()))
    pq.write_table(table.slice(300), tmp_path / "part-0.parquet", row_group_size=100)  # the null injections and 300 fixture rows
    pq.write_table(table.slice(0, 300).drop(["arc_image", "is_null_injection"]), tmp_path / "part-1.parquet", row_group_size=100)

    index = StampIndex.scan(str(tmp_path))  # rows: part-0 (table rows 300..), then part-1 (table rows 0..299)
    assert index.is_null_injection.sum() == n_null and not index.is_null_injection[-300:].any()
    for split in ("train", "val", "test"):
        kept = index.rows(split, null_injections=False)
        assert not index.is_null_injection[kept].any()
        assert len(kept) + index.is_null_injection[index.rows(split)].sum() == len(index.rows(split))

    labels = index.meta["label"]
    new_pos, old_pos = np.flatnonzero(labels[:-300] == 1)[:4], len(labels) - 300 + np.flatnonzero(labels[-300:] == 1)[:2]
    ctrl = np.flatnonzero(labels == 0)[:2]
    got, has = load_arc_images(index, np.r_[new_pos, old_pos, ctrl])
    assert has.tolist() == [True] * 4 + [False] * 4 and not got[4:].any()
    np.testing.assert_array_equal(got[0], np.frombuffer(table.column("arc_image")[300 + int(new_pos[0])].as_py(), "<f4").reshape(3, 32, 32))

    sample = _null_sample(index, n_max=1000, seed=0)
    held = np.isin(index.meta["split"], ["val", "test"])
    assert len(sample["null_images"]) == (held & index.is_null_injection).sum() > 10
    assert len(sample["control_images"]) == (held & ~index.is_null_injection & (labels == 0)).sum()
    val = _gate_sample(index, index.rows("val", null_injections=False), 1000, 0, "val", arcs=True)
    assert (val["has_arc"] <= (val["label"] == 1)).all() and val["has_arc"].sum() > 0
