"""Two model generations on the same held-out stamps: what the hard-negative loop changed.

Inputs are the held-out (test-split) rows scored by each generation, in the same row order:
injections (label 1), plain negatives (controls) and look-alikes (label-0 rows with a
``hard_neg_source`` tag; the part after ':' is the look-alike type). Measured per generation,
each with a bootstrap interval, and as a paired Gen6 - Gen5 difference:

- the score threshold that recovers ``completeness`` of the injections (default 0.5);
- contamination by look-alike type at that threshold: the fraction of the type's look-alikes
  scoring >= it (a look-alike at the same completeness is the comparison a lens search makes);
- tpr at fixed fpr (1e-2, 1e-3), negatives = controls and look-alikes together;
- completeness by arc visibility (``arc_visibility_snr`` bins) at that threshold.

Bootstrap: rows are resampled with replacement, the same indices for both generations (the
difference is paired), injections and negatives separately; the interval is the 2.5-97.5
percentile range. Pure numpy; no torch.
"""

from __future__ import annotations

import numpy as np

VISIBILITY_BINS = (0.0, 5.0, 10.0, 20.0, 40.0, np.inf)
FPR_TARGETS = (1e-2, 1e-3)


def threshold_at_completeness(pos_scores: np.ndarray, completeness: float) -> float:
    """The score s at which a fraction ``completeness`` of ``pos_scores`` is >= s."""
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))
    if not pos.size:
        return float("nan")
    k = min(max(int(np.ceil(completeness * pos.size)), 1), pos.size)
    return float(pos[pos.size - k])


def tpr_at_fpr(pos_scores: np.ndarray, neg_scores: np.ndarray, fpr: float) -> float:
    """Fraction of positives above the threshold that lets at most ``fpr`` of the negatives
    through (strictly above the ceil(fpr N)-th highest negative); NaN when there are fewer than
    1/fpr negatives, where the fpr cannot be resolved."""
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))[::-1]
    if neg.size < 1.0 / fpr or not len(pos_scores):
        return float("nan")
    allowed = int(np.floor(fpr * neg.size))
    thr = neg[allowed] if allowed < neg.size else -np.inf
    return float(np.mean(np.asarray(pos_scores) > thr))


def _metrics(pos, neg_ctrl, looks, look_types, visibility, completeness, all_types):
    thr = threshold_at_completeness(pos, completeness)
    out = {"threshold": thr}
    for t in all_types:  # every type of the full set: a resample may lack one (NaN then)
        sel = look_types == t
        out[f"contamination:{t}"] = float(np.mean(looks[sel] >= thr)) if sel.any() else float("nan")
    out["contamination:all"] = float(np.mean(looks >= thr)) if looks.size else float("nan")
    negatives = np.concatenate([neg_ctrl, looks])
    for f in FPR_TARGETS:
        out[f"tpr_at_fpr_{f:g}"] = tpr_at_fpr(pos, negatives, f)
    for lo, hi in zip(VISIBILITY_BINS[:-1], VISIBILITY_BINS[1:]):
        sel = (visibility >= lo) & (visibility < hi)
        out[f"completeness:vis_{lo:g}-{hi:g}"] = float(np.mean(pos[sel] >= thr)) if sel.any() else float("nan")
    return out


def compare_generations(scores: dict, label: np.ndarray, is_control: np.ndarray, hard_neg_source, visibility: np.ndarray,
                        completeness: float = 0.5, n_bootstrap: int = 1000, seed: int = 0) -> dict:  # fmt: skip
    """``scores``: generation name -> (N,) scores of the same held-out rows. ``label``,
    ``is_control``, ``hard_neg_source`` (None for rows without a tag), ``visibility`` (the arc
    visibility truth of injections; NaN elsewhere): (N,) each. Returns, per generation, each
    metric's value and 95% interval, the paired difference of the last generation minus the
    first, and the counts (module docstring)."""
    label = np.asarray(label)
    ctrl = np.asarray(is_control, dtype=bool)
    tags = np.array([None if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in hard_neg_source], dtype=object)
    is_look = (label == 0) & np.array([t is not None for t in tags])
    pos_i, ctrl_i, look_i = np.flatnonzero(label == 1), np.flatnonzero(ctrl & ~is_look), np.flatnonzero(is_look)
    look_types = np.array([t.split(":", 1)[1] if ":" in t else t for t in tags[look_i]], dtype=object)
    vis = np.asarray(visibility, dtype=np.float64)
    all_types = sorted(set(look_types))
    names = list(scores)
    arrays = {g: np.asarray(scores[g], dtype=np.float64) for g in names}

    def run(p, c, lk):
        return {g: _metrics(s[pos_i[p]], s[ctrl_i[c]], s[look_i[lk]], look_types[lk], vis[pos_i[p]], completeness, all_types) for g, s in arrays.items()}

    point = run(np.arange(pos_i.size), np.arange(ctrl_i.size), np.arange(look_i.size))
    rng = np.random.default_rng(seed)
    boots = [run(rng.integers(0, pos_i.size, pos_i.size), rng.integers(0, ctrl_i.size, ctrl_i.size), rng.integers(0, look_i.size, look_i.size))
             for _ in range(n_bootstrap)]  # fmt: skip

    def interval(values):
        v = np.asarray([x for x in values if np.isfinite(x)])
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size >= max(20, n_bootstrap // 2) else None

    out = {"generations": {}, "counts": {"injections": int(pos_i.size), "controls": int(ctrl_i.size), "lookalikes": int(look_i.size),
                                         "lookalikes_by_type": {t: int((look_types == t).sum()) for t in sorted(set(look_types))}},
           "completeness": completeness, "n_bootstrap": n_bootstrap}  # fmt: skip
    for g in names:
        out["generations"][g] = {k: {"value": v, "interval": interval([b[g][k] for b in boots])} for k, v in point[g].items()}
    if len(names) >= 2:
        first, last = names[0], names[-1]
        out["difference"] = {"of": f"{last} - {first}"}
        for k in point[first]:
            diff = [b[last][k] - b[first][k] for b in boots]
            out["difference"][k] = {"value": point[last][k] - point[first][k], "interval": interval(diff)}
    return out
