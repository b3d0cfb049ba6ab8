"""trainer.gates with hand-built scorers whose behaviour is known: an "arc-looking" scorer
(flux in the Einstein-radius annulus) must pass the gates; "shortcut" scorers must fail them."""

import numpy as np
import pytest

from dhs_spark.config import DataVariantConfig
from trainer.gates import (
    add_gaussian_ring,
    arc_suppressed_gate,
    core_only_gate,
    fit_logistic,
    null_injection_gate,
    predict_logistic,
    ring_adversary_gate,
)
from trainer.metrics import auroc
from trainer.preprocess import PreprocessConfig, annulus_stats, radius_px

PRE = PreprocessConfig()
PIXEL_SCALE_ARCSEC = DataVariantConfig().pixel_scale_arcsec


@pytest.fixture(scope="module")
def stamps(paired_arrays):
    return paired_arrays


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


def test_logistic_regression_matches_sklearn_ranking():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x @ [1.0, -2.0, 0.5, 0, 0] + rng.normal(size=400) > 0).astype(float)
    ours = predict_logistic(fit_logistic(x, y, l2=1e-4), x)
    ref = LogisticRegression(C=1e4).fit(x, y).decision_function(x)
    assert np.corrcoef(ours, ref)[0, 1] > 0.999


def test_core_only_auc_detects_a_core_leak(stamps):
    images, cols = stamps
    y = cols["label"]
    half = len(y) // 2
    clean = core_only_gate(images[:half], y[:half], images[half:], y[half:], PRE, auc_max=0.7)
    leaky = images.copy()
    leaky[y == 1, :, 14:18, 14:18] += 3 * r_noise(images)[y == 1, None, None, None]  # positives get a brighter core
    leak = core_only_gate(leaky[:half], y[:half], leaky[half:], y[half:], PRE, auc_max=0.7)
    assert leak["auc_raw"] > 0.95 and not leak["pass"]
    assert leak["auc_raw"] > clean["auc_raw"] + 0.1


def test_null_injection_paired_and_unpaired(stamps):
    images, cols = stamps
    args = (images, cols["label"], cols["ra"], cols["dec"], cols["arc_snr_sum"])
    ok = null_injection_gate(annulus_scorer, *args, shift_max=0.05)
    assert ok["method"] == "paired" and ok["n_pairs"] == ok["n_faint_positives"] > 0
    assert ok["pass"], ok
    # A scorer that sees an injection artefact (a marker pixel on every positive) fails.
    marked = images.copy()
    marked[cols["label"] == 1, 1, 0, 0] += 5 * r_noise(images)[cols["label"] == 1]
    bad = null_injection_gate(corner_scorer, marked, *args[1:], shift_max=0.05)
    assert bad["mean_shift"] > 0.3 and not bad["pass"]
    # Unpaired: controls moved away from their positives -> the mean-difference method.
    ra = cols["ra"] + np.where(cols["label"] == 0, 0.01, 0.0)
    unpaired = null_injection_gate(annulus_scorer, images, cols["label"], ra, cols["dec"], cols["arc_snr_sum"], 0.05)
    assert unpaired["method"] == "unpaired_low_snr" and unpaired["pass"]


def test_arc_suppression_separates_arc_scorer_from_shortcut(stamps):
    images, cols = stamps
    pos, ctrl = cols["label"] == 1, cols["label"] == 0
    bright = pos & (cols["arc_snr_sum"] > 20)
    kw = dict(pixel_scale_arcsec=PIXEL_SCALE_ARCSEC, preprocess_cfg=PRE, shift_max=0.1, threshold=0.5)
    ok = arc_suppressed_gate(annulus_scorer, images[bright], cols["theta_e_arcsec"][bright], images[ctrl], rng=np.random.default_rng(0), **kw)
    assert ok["mean_score_positives"] > ok["mean_score_positives_masked"] + 0.1  # masking removed the evidence
    assert ok["pass"], ok
    marked = images.copy()
    marked[pos, 1, 0, 0] += 5 * r_noise(images)[cols["label"] == 1]  # evidence outside the arc annulus survives masking
    bad = arc_suppressed_gate(corner_scorer, marked[bright], cols["theta_e_arcsec"][bright], marked[ctrl], rng=np.random.default_rng(0), **kw)
    assert not bad["pass"]


def test_gaussian_ring_has_the_requested_snr_and_raises_arc_scores(stamps):
    images, cols = stamps
    ctrl = images[cols["label"] == 0][:50]
    ringed = add_gaussian_ring(ctrl, np.full(50, 1.5), np.full(50, 1.2), np.full(50, 30.0), PIXEL_SCALE_ARCSEC, PRE)
    _, noise = annulus_stats(ctrl, PRE)
    snr = np.sqrt((((ringed - ctrl) / noise) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(snr, 30.0, rtol=1e-4)
    pos = cols["label"] == 1
    rep = ring_adversary_gate(
        annulus_scorer, ctrl, cols["theta_e_arcsec"][pos], cols["arc_snr_sum"][pos], np.full(50, 1.2), PIXEL_SCALE_ARCSEC, PRE, 0.5
    )
    assert rep["mean_score_ringed"] > rep["mean_score_controls"]
    assert rep["pass"] is None
    assert auroc(np.r_[np.zeros(50), np.ones(50)], np.r_[annulus_scorer(ctrl), annulus_scorer(ringed)]) > 0.9
