"""Model-level shortcut gates (DESIGN §4): does the model look at the arc, or at something else?

Every gate takes ``score_fn(images) -> scores``: images (N, C, H, W) float32 nanomaggies,
host on pixel (H // 2, W // 2); scores in [0, 1] (``trainer.score.make_score_fn`` applies the
training preprocessing and the model). Gates write plain dicts for the metrics JSON.

- ``core_only``: a logistic regression on the central 10x10 px of every band (train split ->
  AUROC on val), on the raw stamps and on the preprocessed ones (what the model sees). A high
  AUC means the label is readable from the core alone (arc light leaking through PSF wings, or
  host selection): the CNN can learn "bright core". Pass: preprocessed AUC <= ``core_auc_max``.
- ``null_injection``: the stamps carry no zero-flux injection, so the gate uses the nearest thing
  in the data: positives whose arc is invisible (``arc_snr_sum`` < ``NULL_SNR_MAX``). Where a
  control sits at the same host position (paired controls), the shift is score(positive) -
  score(its control), pair by pair; otherwise (unpaired) it is the difference of the mean scores
  of those positives and of all controls, labelled ``method: unpaired_low_snr``. A model that
  sees only arcs gives a shift near 0; a positive shift means the injection changed something
  other than visible arc light. Pass: |mean shift| <= ``null_shift_max``.
- ``arc_suppressed``: the annulus theta_E +- ``MASK_HALF_WIDTH_ARCSEC`` of each positive is
  replaced by background (outer-annulus median + Gaussian noise of its robust sigma), the same
  mask on controls; pass when masked positives score within ``arc_suppressed_shift_max`` of
  masked controls (the score came from the arc region).
- ``ring_adversary``: a circular Gaussian ring (radius from the positives' theta_E, width the
  PSF, per-band amplitude giving the positives' median arc SNR) is added to controls; reported
  is how often such a crude, non-lensing ring is called a lens. Informational (``pass`` null).
"""

from __future__ import annotations

import numpy as np

from dhs_spark.healpix import nearest_within
from trainer.metrics import auroc
from trainer.preprocess import PreprocessConfig, annulus_stats, preprocess, radius_px

CORE_PX = 10
NULL_SNR_MAX = 1.0  # arc_snr_sum below which an arc is invisible (1 sigma summed over the stamp)
MASK_HALF_WIDTH_ARCSEC = 1.0  # ~ PSF FWHM: covers the arc's radial extent after blurring
PAIR_RADIUS_ARCSEC = 0.05  # a paired control sits on the very same host position
FWHM_PER_SIGMA = 2.3548


def core_features(images: np.ndarray, core_px: int = CORE_PX) -> np.ndarray:
    """The central ``core_px`` x ``core_px`` pixels of every band, flattened to (N, C*core_px^2)."""
    h, w = images.shape[-2:]
    y0, x0 = h // 2 - core_px // 2, w // 2 - core_px // 2
    return np.ascontiguousarray(images[:, :, y0 : y0 + core_px, x0 : x0 + core_px]).reshape(len(images), -1).astype(np.float64)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, n_iter: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Returns ``(mean, scale, coef)`` with coef[0] the intercept; predict with
    :func:`predict_logistic`. ``l2`` penalises all weights except the intercept.
    """
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.column_stack([np.ones(len(x)), (x - mean) / scale])
    coef = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2 * len(x))
    penalty[0] = 0.0
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ coef, -30, 30)))
        grad = z.T @ (p - y) + penalty * coef
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(coef))
        step = np.linalg.solve(hess, grad)
        coef -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return mean, scale, coef


def predict_logistic(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mean, scale, coef = model
    return np.column_stack([np.ones(len(x)), (x - mean) / scale]) @ coef


def core_only_gate(train_images, train_labels, val_images, val_labels, preprocess_cfg: PreprocessConfig, auc_max: float) -> dict:
    """Core-only logistic-regression AUROC, raw and preprocessed (see the module docstring)."""
    out = {"core_px": CORE_PX, "n_train": int(len(train_labels)), "n_val": int(len(val_labels)), "auc_max": auc_max}
    for name, transform in (("raw", lambda a: a), ("preprocessed", lambda a: preprocess(a, preprocess_cfg))):
        model = fit_logistic(core_features(transform(train_images)), np.asarray(train_labels, np.float64))
        out[f"auc_{name}"] = auroc(val_labels, predict_logistic(model, core_features(transform(val_images))))
    out["pass"] = bool(out["auc_preprocessed"] <= auc_max)
    return out


def null_injection_gate(score_fn, images, labels, ra, dec, arc_snr_sum, shift_max: float) -> dict:
    """Score shift of invisible injections (see the module docstring)."""
    labels = np.asarray(labels)
    snr = np.asarray(arc_snr_sum, dtype=np.float64)
    faint = np.flatnonzero((labels == 1) & np.isfinite(snr) & (snr < NULL_SNR_MAX))
    ctrl = np.flatnonzero(labels == 0)
    out = {"snr_max": NULL_SNR_MAX, "shift_max": shift_max, "n_faint_positives": int(len(faint))}
    if len(faint) == 0 or len(ctrl) == 0:
        return out | {"method": None, "mean_shift": None, "pass": None, "reason": "no positives with arc_snr_sum below snr_max, or no controls"}
    partner, _ = nearest_within(np.asarray(ra)[faint], np.asarray(dec)[faint], np.asarray(ra)[ctrl], np.asarray(dec)[ctrl], PAIR_RADIUS_ARCSEC)
    paired = partner >= 0
    if paired.any():
        pos_idx, ctrl_idx = faint[paired], ctrl[partner[paired]]
        scores = score_fn(np.concatenate([images[pos_idx], images[ctrl_idx]]))
        shift = scores[: len(pos_idx)] - scores[len(pos_idx) :]
        out |= {"method": "paired", "n_pairs": int(len(shift)), "mean_shift": float(shift.mean()), "max_abs_shift": float(np.abs(shift).max())}
    else:
        s_pos, s_ctrl = score_fn(images[faint]), score_fn(images[ctrl])
        out |= {"method": "unpaired_low_snr", "n_controls": int(len(ctrl)), "mean_shift": float(s_pos.mean() - s_ctrl.mean())}
    out["pass"] = bool(abs(out["mean_shift"]) <= shift_max)
    return out


def _background_fill(images: np.ndarray, mask: np.ndarray, preprocess_cfg: PreprocessConfig, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``images`` with pixels where ``mask`` (N, H, W) is True replaced, in every band, by
    the outer-annulus median plus Gaussian noise of the annulus robust sigma."""
    med, sigma = annulus_stats(images, preprocess_cfg)
    fill = med + sigma * rng.standard_normal(images.shape).astype(np.float32)
    return np.where(mask[:, None], fill, images).astype(np.float32)


def arc_suppressed_gate(score_fn, pos_images, theta_e_arcsec, ctrl_images, pixel_scale_arcsec, preprocess_cfg, rng, shift_max, threshold) -> dict:
    """Scores before/after masking the Einstein-radius annulus (see the module docstring).
    Controls are masked with the positives' theta_E values, cycled."""
    theta = np.asarray(theta_e_arcsec, dtype=np.float64)
    if len(pos_images) == 0 or len(ctrl_images) == 0:
        return {"pass": None, "reason": "needs positives and controls"}
    h, w = pos_images.shape[-2:]
    r_arcsec = radius_px(h, w) * pixel_scale_arcsec
    ctrl_theta = np.resize(theta, len(ctrl_images))

    def masks(thetas):
        return np.abs(r_arcsec[None] - thetas[:, None, None]) <= MASK_HALF_WIDTH_ARCSEC

    s_pos = score_fn(pos_images)
    s_pos_masked = score_fn(_background_fill(pos_images, masks(theta), preprocess_cfg, rng))
    s_ctrl_masked = score_fn(_background_fill(ctrl_images, masks(ctrl_theta), preprocess_cfg, rng))
    shift = float(s_pos_masked.mean() - s_ctrl_masked.mean())
    return {
        "mask_half_width_arcsec": MASK_HALF_WIDTH_ARCSEC,
        "n_positives": int(len(pos_images)),
        "n_controls": int(len(ctrl_images)),
        "mean_score_positives": float(s_pos.mean()),
        "mean_score_positives_masked": float(s_pos_masked.mean()),
        "mean_score_controls_masked": float(s_ctrl_masked.mean()),
        "recall_at_threshold": float((s_pos >= threshold).mean()),
        "recall_at_threshold_masked": float((s_pos_masked >= threshold).mean()),
        "shift_vs_controls": shift,
        "shift_max": shift_max,
        "pass": bool(shift <= shift_max),
    }


def add_gaussian_ring(images, radius_arcsec, fwhm_arcsec, snr, pixel_scale_arcsec, preprocess_cfg) -> np.ndarray:
    """``images`` plus a circular ring about the centre pixel with Gaussian radial profile
    (sigma = FWHM / 2.3548), scaled per image and band so that sqrt(sum((ring / sigma_noise)^2))
    = ``snr / sqrt(C)`` (total over bands = ``snr``), sigma_noise the outer-annulus robust sigma."""
    n, c, h, w = images.shape
    r = radius_px(h, w)[None] * pixel_scale_arcsec
    sig = (np.asarray(fwhm_arcsec, np.float64) / FWHM_PER_SIGMA)[:, None, None]
    profile = np.exp(-0.5 * ((r - np.asarray(radius_arcsec, np.float64)[:, None, None]) / sig) ** 2)  # (N, H, W)
    _, noise = annulus_stats(images, preprocess_cfg)
    norm = np.sqrt((profile**2).sum(axis=(1, 2)))  # SNR of a unit-amplitude ring at unit noise
    amp = (np.asarray(snr, np.float64) / np.sqrt(c) / norm)[:, None, None, None] * noise
    return (images + amp * profile[:, None]).astype(np.float32)


def ring_adversary_gate(score_fn, ctrl_images, theta_e_arcsec, arc_snr_sum, psf_fwhm_arcsec, pixel_scale_arcsec, preprocess_cfg, threshold) -> dict:
    """Fraction of controls with an added Gaussian ring scored >= ``threshold`` (informational)."""
    if len(ctrl_images) == 0 or len(theta_e_arcsec) == 0:
        return {"pass": None, "reason": "needs controls and positives' theta_E"}
    n = len(ctrl_images)
    snr = float(np.nanmedian(arc_snr_sum)) if np.isfinite(arc_snr_sum).any() else 10.0
    fwhm = np.resize(np.where(np.isfinite(psf_fwhm_arcsec), psf_fwhm_arcsec, 1.2), n)
    ringed = add_gaussian_ring(ctrl_images, np.resize(theta_e_arcsec, n), fwhm, np.full(n, snr), pixel_scale_arcsec, preprocess_cfg)
    s_plain, s_ring = score_fn(ctrl_images), score_fn(ringed)
    return {
        "n_controls": n,
        "ring_snr": snr,
        "mean_score_controls": float(s_plain.mean()),
        "mean_score_ringed": float(s_ring.mean()),
        "fraction_ringed_above_threshold": float((s_ring >= threshold).mean()),
        "fraction_plain_above_threshold": float((s_plain >= threshold).mean()),
        "pass": None,
    }


def run_gates(score_fn, val: dict, train: dict, preprocess_cfg: PreprocessConfig, evaluation, pixel_scale_arcsec: float, seed: int) -> dict:
    """All four gates. ``val`` / ``train`` hold ``images`` (nanomaggies) and ``label``; ``val``
    also ``ra``, ``dec``, ``theta_e_arcsec``, ``arc_snr_sum``, ``psf_fwhm_r_arcsec`` (NaN where
    unknown). ``evaluation`` is a :class:`dhs_spark.config.EvaluationConfig`."""
    from dhs_spark.config.seeds import rng_from_seed

    rng = rng_from_seed(seed)
    pos, ctrl = val["label"] == 1, val["label"] == 0
    theta_pos = val["theta_e_arcsec"][pos]
    thr = evaluation.score_threshold
    return {
        "core_only": core_only_gate(train["images"], train["label"], val["images"], val["label"], preprocess_cfg, evaluation.core_auc_max),
        "null_injection": null_injection_gate(score_fn, val["images"], val["label"], val["ra"], val["dec"], val["arc_snr_sum"], evaluation.null_shift_max),
        "arc_suppressed": arc_suppressed_gate(
            score_fn, val["images"][pos], theta_pos, val["images"][ctrl], pixel_scale_arcsec, preprocess_cfg, rng, evaluation.arc_suppressed_shift_max, thr
        ),
        "ring_adversary": ring_adversary_gate(
            score_fn, val["images"][ctrl], theta_pos, val["arc_snr_sum"][pos], val["psf_fwhm_r_arcsec"][ctrl], pixel_scale_arcsec, preprocess_cfg, thr
        ),
    }
