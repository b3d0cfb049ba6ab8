"""trainer.loop_metrics: threshold at completeness, tpr at fpr, and the paired Gen5/Gen6 comparison."""

import numpy as np

from trainer.loop_metrics import compare_generations, threshold_at_completeness, tpr_at_fpr


def test_threshold_recovers_the_asked_completeness():
    pos = np.arange(1, 101) / 100.0  # 0.01 .. 1.00
    thr = threshold_at_completeness(pos, 0.5)
    assert thr == 0.51 and np.mean(pos >= thr) == 0.5
    assert threshold_at_completeness(pos, 1.0) == 0.01 and np.isnan(threshold_at_completeness(np.array([]), 0.5))


def test_tpr_at_fpr_counts_negatives_strictly_above():
    neg = np.linspace(0.0, 0.999, 1000)  # the 10 highest are 0.990 .. 0.999: fpr 1e-2 cuts at the 11th highest, 0.989
    pos = np.array([0.5, 0.9895, 0.995, 1.0])
    assert tpr_at_fpr(pos, neg, 1e-2) == 0.75
    assert tpr_at_fpr(pos, neg, 1e-3) == 0.25  # strictly above the second highest, 0.998
    assert np.isnan(tpr_at_fpr(pos, neg[:50], 1e-2)), "50 negatives cannot resolve fpr 1e-2"


def _rows(n_pos=400, n_ctrl=600, n_look=300, seed=1):
    rng = np.random.default_rng(seed)
    label = np.r_[np.ones(n_pos, int), np.zeros(n_ctrl + n_look, int)]
    ctrl = np.r_[np.zeros(n_pos, bool), np.ones(n_ctrl, bool), np.zeros(n_look, bool)]
    tags = [None] * (n_pos + n_ctrl) + [f"lookalike:{t}" for t in rng.choice(["ring", "spiral"], n_look)]
    vis = np.r_[rng.uniform(0, 50, n_pos), np.full(n_ctrl + n_look, np.nan)]
    pos_s, ctrl_s = rng.uniform(0.3, 1.0, n_pos), rng.uniform(0.0, 0.5, n_ctrl)
    return label, ctrl, tags, vis, pos_s, ctrl_s, rng.uniform(0.4, 1.0, n_look)


def test_a_generation_that_demotes_lookalikes_shows_a_real_drop_and_identical_scores_show_none():
    label, ctrl, tags, vis, pos_s, ctrl_s, look_s = _rows()
    gen5 = np.r_[pos_s, ctrl_s, look_s]
    gen6 = np.r_[pos_s, ctrl_s, look_s * 0.5]  # the loop taught the model that look-alikes are not lenses
    out = compare_generations({"gen5": gen5, "gen6": gen6}, label, ctrl, tags, vis, n_bootstrap=300, seed=0)
    assert out["counts"]["lookalikes"] == 300 and set(out["counts"]["lookalikes_by_type"]) == {"ring", "spiral"}
    g5, g6, d = out["generations"]["gen5"], out["generations"]["gen6"], out["difference"]
    assert g5["threshold"]["value"] == g6["threshold"]["value"], "same injections, same threshold"
    assert g6["contamination:all"]["value"] < g5["contamination:all"]["value"]
    lo, hi = d["contamination:all"]["interval"]
    assert hi < 0, "the drop is outside the bootstrap noise"
    assert g6["tpr_at_fpr_0.01"]["value"] >= g5["tpr_at_fpr_0.01"]["value"]
    # a rare type (2 rows) is missing from many resamples: its metric is NaN there, not an error
    rare = list(tags)
    rare[-2:] = ["lookalike:merger", "lookalike:merger"]
    out_rare = compare_generations({"gen5": gen5, "gen6": gen6}, label, ctrl, rare, vis, n_bootstrap=200, seed=0)
    assert out_rare["counts"]["lookalikes_by_type"]["merger"] == 2 and "contamination:merger" in out_rare["generations"]["gen6"]
    same = compare_generations({"a": gen5, "b": gen5.copy()}, label, ctrl, tags, vis, n_bootstrap=100, seed=0)
    assert same["difference"]["contamination:all"]["value"] == 0 and same["difference"]["contamination:all"]["interval"] == [0.0, 0.0]
    # completeness by visibility: every bin's completeness is the fraction of its injections over the threshold
    thr = g5["threshold"]["value"]
    sel = (vis[:400] >= 10) & (vis[:400] < 20)
    assert g5["completeness:vis_10-20"]["value"] == np.mean(pos_s[sel] >= thr)
