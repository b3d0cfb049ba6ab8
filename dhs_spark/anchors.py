"""Anchor baseline (seed stage 1): score real known lenses and real hard negatives, judge the
model with a pass/fail gate before believing any synthetic metric.

Metrics (:func:`compute_anchor_metrics`): a lens is *recovered* and a hard negative
*contaminates* when its score is ``>= score_threshold`` (0.5 by default). ``score_separation`` is
median(lens scores) - median(hard-negative scores). ``auroc_anchor`` is the Mann-Whitney AUROC
with ties counted one half (average ranks), equal to scikit-learn's ``roc_auc_score``. The gate
passes when recovery >= ``anchor_min_recovery`` (0.70), contamination <=
``anchor_max_contamination`` (0.15), separation >= ``anchor_min_separation`` (0.4) and AUROC >=
``anchor_min_auroc`` (0.8) (:class:`~dhs_spark.config.EvaluationConfig`).

Arc visibility (:func:`arc_visibility_snr`): SLACS/BELLS were found spectroscopically and most
of their arcs are invisible in DR10, so the report also gives the metrics on the lenses whose
arcs are visible. The measure, per stamp (C, H, W) in nanomaggies at 0.262"/pix:

1. Host model, per band: in each 1-pixel-wide ring about the stamp centre, the median plus a
   cos/sin(2 phi) harmonic fitted to the ring's 3-sigma-clipped values (a smooth, elliptical
   host to first order). Residual R = image - host model.
2. Noise sigma per pixel and band: 1/sqrt(invvar) when given, else 1.4826 x MAD of the residual
   outside the annulus (which ignores the pixel correlation of resampled coadds, so SNRs are
   then somewhat optimistic).
3. Per-pixel SNR S = sum_b R_b / sigma_b^2 / sqrt(sum_b 1 / sigma_b^2) (inverse-variance band
   stack; S ~ N(0, 1) in pure noise).
4. Annulus theta_E +- 0.8" (0.8"-3.0" when theta_E is unknown), split into 8 sectors of 45 deg;
   sector SNR = sum(S) / sqrt(n_pixels). The arc SNR is the largest sector SNR: an arc
   concentrated in one or two sectors survives the ring median, a full symmetric ring does not
   (it is absorbed by the host model: a stated limitation). Pure noise gives the maximum of 8
   standard normals (mean ~1.4); ``arc_snr >= 5`` (:data:`ARC_VISIBLE_SNR`) is "visible".

Training geometry: a model trained on N-px stamps is scored on N-px stamps. Cutouts (101 px
from the services) are cropped about their centre pixel to the checkpoint's ``data.stamp_size``
(:func:`crop_centre`, :func:`checkpoint_stamp_size`) before scoring and before the arc SNR is
measured; the preprocessing's normalisation annulus scales with the stamp, so an uncropped
cutout would be scored on different pixels than the model was trained on.

Grades and gates: the catalogue ``grade`` (confirmed; lenscat confident / probable; Stein et al.
A / B) is kept in every output. The gates (:func:`anchor_gates`, each a
:class:`dhs_spark.gates.Gate` with a bootstrap interval) hold recall to ``anchor_min_recovery``
on all lenses, on the lenses with a visible arc (arc SNR >= 5 on the scored crop) and on the top
grade (:data:`TOP_GRADES`), plus contamination, separation and AUROC. A lenscat compilation is
mostly "probable" candidates and spectroscopic lenses mostly have no visible arc, so recall on
everything alone says little; the two subsets say whether the model finds lenses a person
would accept from the image.

Outputs of :func:`run_anchor_baseline`: ``anchor_metrics.json``, ``anchor_report.md``,
``anchor_scores.parquet`` (with ``grade``, ``top_grade``, ``arc_snr``) and PNGs (score
histograms; galleries of the top-scoring hard negatives and the lowest-scoring lenses where
cutouts are available).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dhs_spark.config.experiment import EvaluationConfig
from dhs_spark.config.seeds import rng_from_seed
from dhs_spark.errors import InputDataError, RejectError
from dhs_spark.gates import Gate, auroc, auroc_interval, bootstrap_interval, judge, summarise

log = logging.getLogger(__name__)

PIXEL_SCALE_ARCSEC = 0.262
ARC_VISIBLE_SNR = 5.0
DEFAULT_ANNULUS_ARCSEC = (0.8, 3.0)
ANNULUS_HALF_WIDTH_ARCSEC = 0.8
N_SECTORS = 8
CUTOUT_SIZE = 101
MATCH_RADIUS_ARCSEC = 1.0
_CRITERIA_KEYS = {  # gate_criteria name -> EvaluationConfig field
    "min_recovery": "anchor_min_recovery",
    "max_contamination": "anchor_max_contamination",
    "min_separation": "anchor_min_separation",
    "min_auroc": "anchor_min_auroc",
    "score_threshold": "score_threshold",
}


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
@dataclass
class AnchorMetrics:
    """Anchor-set metrics at the gate's score threshold (see the module docstring).

    ``gate_criteria``: the thresholds used, keys min_recovery, max_contamination,
    min_separation, min_auroc, score_threshold. ``auroc_anchor`` is NaN when one class is empty.
    """

    n_known_lenses: int
    n_recovered_at_0p5: int
    recovery_rate_0p5: float
    n_hard_negatives: int
    n_contaminated_at_0p5: int
    contamination_rate_0p5: float
    score_separation: float
    auroc_anchor: float
    passes_anchor_gate: bool
    gate_criteria: dict = field(default_factory=dict)

    def criteria_passed(self) -> dict[str, bool]:
        """Each gate criterion and whether it holds."""
        c = self.gate_criteria
        return {
            "min_recovery": bool(self.recovery_rate_0p5 >= c["min_recovery"]),
            "max_contamination": bool(self.contamination_rate_0p5 <= c["max_contamination"]),
            "min_separation": bool(self.score_separation >= c["min_separation"]),
            "min_auroc": bool(self.auroc_anchor >= c["min_auroc"]),
        }

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _check_scores(scores, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{name}: scores must be finite and in [0, 1]; index {i} holds {arr[i]!r}")
    return arr


def resolve_criteria(criteria=None) -> dict:
    """Gate thresholds from ``None`` (EvaluationConfig defaults), an EvaluationConfig, or a dict
    keyed by gate_criteria names or EvaluationConfig field names. Unknown keys raise."""
    base = EvaluationConfig()
    out = {k: float(getattr(base, f)) for k, f in _CRITERIA_KEYS.items()}
    if criteria is None:
        return out
    if isinstance(criteria, EvaluationConfig):
        return {k: float(getattr(criteria, f)) for k, f in _CRITERIA_KEYS.items()}
    by_field = {f: k for k, f in _CRITERIA_KEYS.items()}
    for key, value in dict(criteria).items():
        name = key if key in _CRITERIA_KEYS else by_field.get(key)
        if name is None:
            raise InputDataError(f"anchor criteria: unknown key {key!r}; known: {sorted(_CRITERIA_KEYS)} or {sorted(by_field)}")
        out[name] = float(value)
    return out


def compute_anchor_metrics(lens_scores, hardneg_scores, criteria=None) -> AnchorMetrics:
    """:class:`AnchorMetrics` of lens and hard-negative scores (arrays in [0, 1]).

    ``criteria``: None (the config's gate thresholds), an EvaluationConfig or a dict (see
    :func:`resolve_criteria`). Both sets may not be empty at once; an empty set gives rate NaN
    and fails the gate.
    """
    lens = _check_scores(lens_scores, "lens_scores")
    neg = _check_scores(hardneg_scores, "hardneg_scores")
    if len(lens) == 0 and len(neg) == 0:
        raise InputDataError("compute_anchor_metrics: no lens and no hard-negative scores")
    c = resolve_criteria(criteria)
    thr = c["score_threshold"]
    n_rec = int((lens >= thr).sum())
    n_con = int((neg >= thr).sum())
    recovery = n_rec / len(lens) if len(lens) else float("nan")
    contamination = n_con / len(neg) if len(neg) else float("nan")
    separation = float(np.median(lens) - np.median(neg)) if len(lens) and len(neg) else float("nan")
    m = AnchorMetrics(
        n_known_lenses=len(lens), n_recovered_at_0p5=n_rec, recovery_rate_0p5=float(recovery), n_hard_negatives=len(neg),
        n_contaminated_at_0p5=n_con, contamination_rate_0p5=float(contamination), score_separation=separation,
        auroc_anchor=auroc(lens, neg), passes_anchor_gate=False, gate_criteria=c,
    )
    m.passes_anchor_gate = all(m.criteria_passed().values())  # NaN compares False: an empty set fails
    return m


def bootstrap_ci(lens_scores, hardneg_scores, criteria=None, n_bootstrap: int = 1000, seed: int = 42, confidence: float = 0.95) -> dict:
    """Percentile bootstrap intervals of recovery, contamination, separation and AUROC.

    Lenses and hard negatives are resampled independently with replacement, ``n_bootstrap``
    times, from ``rng_from_seed(seed)``: the same seed gives the same intervals. Returns
    ``{metric: [low, high]}`` plus ``n_bootstrap``, ``confidence`` and ``seed``.
    """
    lens = _check_scores(lens_scores, "lens_scores")
    neg = _check_scores(hardneg_scores, "hardneg_scores")
    thr = resolve_criteria(criteria)["score_threshold"]
    rng = rng_from_seed(seed)
    names = ("recovery_rate_0p5", "contamination_rate_0p5", "score_separation", "auroc_anchor")
    samples = {k: np.full(n_bootstrap, np.nan) for k in names}
    for b in range(n_bootstrap):
        lb = lens[rng.integers(0, len(lens), len(lens))] if len(lens) else lens
        nb = neg[rng.integers(0, len(neg), len(neg))] if len(neg) else neg
        if len(lb):
            samples["recovery_rate_0p5"][b] = (lb >= thr).mean()
        if len(nb):
            samples["contamination_rate_0p5"][b] = (nb >= thr).mean()
        if len(lb) and len(nb):
            samples["score_separation"][b] = np.median(lb) - np.median(nb)
            samples["auroc_anchor"][b] = auroc(lb, nb)
    alpha = (1.0 - confidence) / 2.0
    out: dict = {"n_bootstrap": int(n_bootstrap), "confidence": float(confidence), "seed": int(seed)}
    for k, v in samples.items():
        v = v[np.isfinite(v)]
        out[k] = [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if len(v) else [None, None]
    return out


# --------------------------------------------------------------------------------------------
# Arc visibility
# --------------------------------------------------------------------------------------------
def _ring_geometry(shape: tuple[int, int]):
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    dx, dy = (x - nx // 2).astype(np.float64), (y - ny // 2).astype(np.float64)  # object on pixel (N//2, N//2)
    return dx, dy, np.hypot(dx, dy), np.arctan2(dy, dx)  # phi counter-clockwise from +x (axis 1)


@functools.lru_cache(maxsize=8)
def ring_sectors(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(radius in pixels, 45-degree sector index 0..N_SECTORS-1 counter-clockwise from +x) of
    every pixel of a ``shape`` stamp, object on pixel (N//2, N//2); made once per shape, read-only."""
    _, _, r_pix, phi = _ring_geometry(tuple(shape))
    sector = np.floor(np.mod(phi, 2 * np.pi) / (2 * np.pi / N_SECTORS)).astype(np.int64) % N_SECTORS
    r_pix.setflags(write=False)
    sector.setflags(write=False)
    return r_pix, sector


def host_shape(image_chw: np.ndarray, window_pix: float = 4.0) -> tuple[float, float]:
    """Axis ratio q (<= 1) and major-axis angle (rad, counter-clockwise from +x) of the host
    from second moments of the band-summed stamp through a round Gaussian window of sigma
    ``window_pix``, with the window divided out (for a Gaussian host of covariance T the
    windowed moments are M = (T^-1 + I/w^2)^-1, so T^-1 = M^-1 - I/w^2, exact for Gaussians and
    a first-order correction of the round-window bias otherwise)."""
    dx, dy, r, _ = _ring_geometry(image_chw.shape[1:])
    w = np.clip(image_chw.sum(axis=0), 0.0, None) * np.exp(-0.5 * (r / window_pix) ** 2)
    if not w.sum() > 0:
        return 1.0, 0.0
    m = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / w.sum()
    t_inv = np.linalg.inv(m) - np.eye(2) / window_pix**2
    cov = np.linalg.inv(t_inv) if np.all(np.linalg.eigvalsh(t_inv) > 0) else m  # else: host far wider than the window
    evals, evecs = np.linalg.eigh(cov)
    q = float(np.sqrt(max(evals[0], 1e-12) / max(evals[1], 1e-12)))
    return min(q, 1.0), float(np.arctan2(evecs[1, 1], evecs[0, 1]))


def host_model(band_image: np.ndarray, q: float = 1.0, pa_rad: float = 0.0, clip_sigma: float = 3.0,
               clip_image: Optional[np.ndarray] = None) -> np.ndarray:
    """Smooth host model of one band (H, W) on elliptical rings (axis ratio ``q``, major axis at
    ``pa_rad``): per 1-pixel ring of elliptical radius, the 3-sigma-clipped median, interpolated
    to each pixel's exact elliptical radius, plus a cos/sin(2 phi) harmonic per ring fitted to
    the clipped values (absorbs ellipticity that changes with radius).

    ``clip_image``: optional (H, W) image whose ring values decide which pixels are clipped
    (default: ``band_image`` itself). Passing the same band-stacked image for every band makes
    all bands use the same pixels, so that the model absorbs the same fraction of an arc in each
    band and the arc's colour survives the subtraction (``dhs_spark.realism.measure_arc``)."""
    dx, dy, _, phi = _ring_geometry(band_image.shape)
    xr = dx * np.cos(pa_rad) + dy * np.sin(pa_rad)
    yr = -dx * np.sin(pa_rad) + dy * np.cos(pa_rad)
    r_ell = np.sqrt(q * xr**2 + yr**2 / q)  # conserves area: ring areas as for circles
    flat_img, flat_r, flat_phi = band_image.ravel().astype(np.float64), r_ell.ravel(), phi.ravel()
    flat_clip = flat_img if clip_image is None else np.asarray(clip_image, dtype=np.float64).ravel()
    ring = np.floor(flat_r + 0.5).astype(np.int64)
    order = np.argsort(ring, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(ring[order])) + 1)
    radii, medians, keeps = [], [], []
    for idx in groups:
        vals = flat_clip[idx]
        med = np.median(vals)
        mad = 1.4826 * np.median(np.abs(vals - med))
        keep = np.abs(vals - med) <= clip_sigma * mad if mad > 0 else np.ones(len(idx), bool)
        radii.append(flat_r[idx][keep].mean())
        medians.append(np.median(flat_img[idx][keep]))
        keeps.append(keep)
    profile = np.interp(flat_r, np.array(radii), np.array(medians))
    out = profile.copy()
    for idx, keep in zip(groups, keeps):
        if len(idx) < 12:  # innermost rings: too few pixels for a harmonic
            continue
        c2, s2 = np.cos(2 * flat_phi[idx]), np.sin(2 * flat_phi[idx])
        coef, *_ = np.linalg.lstsq(np.column_stack([c2[keep], s2[keep]]), (flat_img[idx] - profile[idx])[keep], rcond=None)
        out[idx] += coef[0] * c2 + coef[1] * s2
    return out.reshape(band_image.shape)


@dataclass(frozen=True)
class ArcVisibility:
    """Arc-visibility measurement of one stamp: ``arc_snr`` (largest sector SNR), the sector
    holding it (0..7, sector k spans phi in [k, k+1) x 45 deg counter-clockwise from +x), the
    annulus used (arcsec), the per-band noise sigma (nanomaggies; median when from invvar) and
    every sector's SNR (``sector_snr``, -inf for a sector without a valid pixel)."""

    arc_snr: float
    best_sector: int
    annulus_arcsec: tuple[float, float]
    sigma_nmgy: tuple[float, ...]
    noise_from: str
    sector_snr: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class ArcResidual:
    """The pieces of the arc-visibility measure (module docstring, steps 1-4) that other
    measurements reuse (``dhs_spark.realism.measure_arc``): all arrays (C, H, W) or (H, W).

    ``residual``: image - host model (nanomaggies); ``ivar``: per-pixel inverse variance used
    (1/nmgy^2; 0 where unusable); ``annulus``: pixel mask of the annulus with usable noise;
    ``sector``: sector index 0..7 of every pixel; ``host_q``, ``host_pa_rad``: the host shape
    of the elliptical rings; ``visibility``: the :class:`ArcVisibility` result.
    """

    residual: np.ndarray
    ivar: np.ndarray
    annulus: np.ndarray
    sector: np.ndarray
    r_arcsec: np.ndarray
    host_q: float
    host_pa_rad: float
    visibility: ArcVisibility


def arc_residual(image_chw, invvar_chw=None, theta_e_arcsec: Optional[float] = None,
                 pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC) -> ArcResidual:
    """Host-subtracted residual, noise and sector SNRs of a stamp (C, N, N) in nanomaggies
    centred on the lens (module docstring, steps 1-4). ``invvar_chw``: (C, N, N) 1/nmgy^2 or
    None (MAD noise outside the annulus). ``theta_e_arcsec``: annulus theta_E +- 0.8" when
    finite and > 0, else 0.8"-3.0"."""
    img = np.asarray(image_chw, dtype=np.float64)
    if img.ndim != 3 or img.shape[1] != img.shape[2]:
        raise InputDataError(f"arc_visibility_snr: image must be (C, N, N), got shape {img.shape}")
    if not np.isfinite(img).all():
        raise RejectError("nonfinite_pixels", f"{int((~np.isfinite(img)).sum())} non-finite pixels")
    if theta_e_arcsec is not None and np.isfinite(theta_e_arcsec) and theta_e_arcsec > 0:
        r_in = max(DEFAULT_ANNULUS_ARCSEC[0], theta_e_arcsec - ANNULUS_HALF_WIDTH_ARCSEC)
        r_out = max(r_in + 0.5, theta_e_arcsec + ANNULUS_HALF_WIDTH_ARCSEC)
    else:
        r_in, r_out = DEFAULT_ANNULUS_ARCSEC
    r_pix, sector = ring_sectors(img.shape[1:])
    r_arcsec = r_pix * pixel_scale_arcsec
    annulus = (r_arcsec >= r_in) & (r_arcsec <= r_out)
    q, pa = host_shape(img)
    resid = np.stack([b - host_model(b, q, pa) for b in img])
    if invvar_chw is not None:
        ivar = np.asarray(invvar_chw, dtype=np.float64)
        if ivar.shape != img.shape:
            raise InputDataError(f"arc_visibility_snr: invvar shape {ivar.shape} != image shape {img.shape}")
        ivar = np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
        noise_from = "invvar"
        sigmas = tuple(float(np.median(1 / np.sqrt(v[v > 0]))) if (v > 0).any() else float("inf") for v in ivar)
    else:
        outside = (r_arcsec > r_out + 1.0)
        sig = np.array([1.4826 * np.median(np.abs(b[outside] - np.median(b[outside]))) for b in resid])
        if not np.all(sig > 0):
            raise RejectError("no_noise_estimate", f"MAD noise is zero in band(s) {np.flatnonzero(~(sig > 0)).tolist()}")
        ivar = np.broadcast_to((1.0 / sig**2)[:, None, None], img.shape)
        noise_from = "mad"
        sigmas = tuple(float(s) for s in sig)
    wsum = ivar.sum(axis=0)
    snr_map = np.where(wsum > 0, (resid * ivar).sum(axis=0) / np.sqrt(np.where(wsum > 0, wsum, 1.0)), 0.0)
    valid = annulus & (wsum > 0)
    snrs = np.full(N_SECTORS, -np.inf)
    for k in range(N_SECTORS):
        sel = valid & (sector == k)
        if sel.sum() > 0:
            snrs[k] = snr_map[sel].sum() / np.sqrt(sel.sum())
    best = int(np.argmax(snrs))
    vis = ArcVisibility(arc_snr=float(snrs[best]), best_sector=best, annulus_arcsec=(float(r_in), float(r_out)),
                        sigma_nmgy=sigmas, noise_from=noise_from, sector_snr=tuple(float(s) for s in snrs))
    return ArcResidual(residual=resid, ivar=np.asarray(ivar), annulus=valid, sector=sector, r_arcsec=r_arcsec, host_q=q,
                       host_pa_rad=pa, visibility=vis)


def arc_visibility_snr(image_chw, invvar_chw=None, theta_e_arcsec: Optional[float] = None,
                       pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC) -> ArcVisibility:
    """Arc SNR of a stamp (C, H, W) in nanomaggies centred on the lens (module docstring)."""
    return arc_residual(image_chw, invvar_chw, theta_e_arcsec, pixel_scale_arcsec).visibility


# --------------------------------------------------------------------------------------------
# Cutouts, scores and the report
# --------------------------------------------------------------------------------------------
class NpzCutoutDirectory:
    """Cutouts from a directory of ``.npz`` files (key ``cutout`` (H, W, 3) float32 nanomaggies,
    bands g, r, z; ``meta_ra``/``meta_dec`` degrees), as in shared/data/cutouts_dr10. An object
    takes the file whose position is within ``MATCH_RADIUS_ARCSEC``; none -> RejectError('no_cutout')."""

    def __init__(self, directory):
        from dhs_spark.healpix import nearest_within

        self._nearest = nearest_within
        self.files = sorted(Path(directory).glob("*.npz"))
        if not self.files:
            raise InputDataError(f"cutout directory {directory}: no .npz files")
        ra, dec = [], []
        for f in self.files:
            with np.load(f) as d:
                if "cutout" not in d or "meta_ra" not in d or "meta_dec" not in d:
                    raise InputDataError(f"{f}: needs keys cutout, meta_ra, meta_dec (has {list(d.keys())})")
                ra.append(float(d["meta_ra"]))
                dec.append(float(d["meta_dec"]))
        self.ra, self.dec = np.array(ra), np.array(dec)

    def get(self, ra: float, dec: float) -> tuple[np.ndarray, Optional[np.ndarray]]:
        idx, _ = self._nearest([ra], [dec], self.ra, self.dec, MATCH_RADIUS_ARCSEC)
        if idx[0] < 0:
            raise RejectError("no_cutout", f"no .npz cutout within {MATCH_RADIUS_ARCSEC}\" of ({ra:.6f}, {dec:.6f})")
        with np.load(self.files[idx[0]]) as d:
            img = np.asarray(d["cutout"], dtype=np.float32)
            ivar = np.asarray(d["invvar"], dtype=np.float32).transpose(2, 0, 1) if "invvar" in d else None
        if img.ndim != 3 or img.shape[2] != 3:
            raise RejectError("bad_cutout", f"{self.files[idx[0]]}: cutout shape {img.shape}, expected (H, W, 3)")
        return img.transpose(2, 0, 1), ivar  # HWC -> CHW


class CoaddCutouts:
    """Cutouts from DR10 coadd bricks under ``root`` (dhs_spark.survey.coadds.CoaddBrick)."""

    def __init__(self, root, cache_dir=None, size: int = CUTOUT_SIZE):
        self.root, self.cache_dir, self.size, self._bricks = root, cache_dir, size, {}

    def get(self, ra: float, dec: float):
        from dhs_spark.survey.bricks import brickname_for
        from dhs_spark.survey.coadds import CoaddBrick

        name = str(brickname_for(ra, dec)[0])
        if name not in self._bricks:
            self._bricks = {name: CoaddBrick(self.root, name, cache_dir=self.cache_dir)}  # one brick in memory at a time
        cut = self._bricks[name].cutout(ra, dec, self.size)
        return cut.image, cut.invvar


class ServiceCutouts:
    """Cutouts from the Legacy Survey cutout service (dhs_spark.survey.cutout_service), cached."""

    def __init__(self, base_url, cache_dir=None, size: int = CUTOUT_SIZE):
        from dhs_spark.survey.cutout_service import CutoutServiceClient

        self.client, self.size = CutoutServiceClient(base_url=base_url, cache_dir=cache_dir), size

    def get(self, ra: float, dec: float):
        cut = self.client.fetch(ra, dec, size=self.size, bands="grz", with_invvar=True)
        return cut.image, cut.invvar


def read_anchor_table(path, default_file: str, what: str):
    """A merged catalogue (Parquet/CSV): a file, or a directory holding ``default_file``."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / default_file
    if not path.exists():
        raise InputDataError(f"{what}: {path} not found (run `dhs catalogs download --all --merge` first)")
    table = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    missing = [c for c in ("name", "ra", "dec") if c not in table.columns]
    if missing:
        raise InputDataError(f"{what}: {path}: lacks columns {missing}")
    return table.reset_index(drop=True), path


def attach_scores(table, scores_path, what: str):
    """Join a score file (Parquet/CSV with ``score`` and ``name`` or ``ra``/``dec``) to ``table``:
    by name where the file has names, else by position within 1". Unmatched rows get NaN."""
    import pandas as pd

    from dhs_spark.healpix import nearest_within

    p = Path(scores_path)
    scores = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    if "score" not in scores.columns:
        raise InputDataError(f"{p}: score file needs a 'score' column (has {list(scores.columns)})")
    out = table.copy()
    if "name" in scores.columns and scores["name"].notna().any():
        by_name = dict(zip(scores["name"].astype(str), scores["score"].astype(float)))
        out["score"] = out["name"].astype(str).map(by_name)
    elif {"ra", "dec"} <= set(scores.columns):
        idx, _ = nearest_within(out["ra"].to_numpy(), out["dec"].to_numpy(), scores["ra"].to_numpy(float), scores["dec"].to_numpy(float),
                                MATCH_RADIUS_ARCSEC)
        out["score"] = np.where(idx >= 0, scores["score"].to_numpy(float)[np.maximum(idx, 0)], np.nan)
    else:
        raise InputDataError(f"{p}: score file needs 'name' or 'ra'/'dec' columns")
    out["score"] = out["score"].astype(np.float64)
    log.info("%s: %d of %d rows scored from %s", what, int(out["score"].notna().sum()), len(out), p)
    return out


def _gallery(rows, images: dict, path: Path, title: str, n_max: int = 16) -> bool:
    import matplotlib

    from dhs_spark.report import grz_to_rgb

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["key"] in images][:n_max]
    if not rows:
        return False
    ncol = min(4, len(rows))
    nrow = int(np.ceil(len(rows) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 3.6 * nrow + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        ax.imshow(grz_to_rgb(images[r["key"]]), origin="lower")
        ax.set_title(f"{r['name'][:22]}\nscore {r['score']:.3f}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (3.6 * nrow + 0.4)))  # keep the suptitle clear of the first row's titles
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _histograms(lens_scores, neg_scores, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    for scores, name in ((lens_scores, "known lenses"), (neg_scores, "hard negatives")):
        if len(scores):  # an empty set has no density; it still shows in the legend as n=0
            ax.hist(scores, bins=bins, alpha=0.6, label=f"{name} (n={len(scores)})", density=True)
        else:
            ax.plot([], [], label=f"{name} (n=0)")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold}")
    ax.set_xlabel("model score")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Training geometry, grades and gates
# --------------------------------------------------------------------------------------------
def checkpoint_stamp_size(checkpoint_path) -> int:
    """The stamp size (pixels, H = W) a checkpoint was trained on: ``data.stamp_size`` of the
    experiment config that ``dhs-train`` stores in every checkpoint (``trainer.checkpoint``)."""
    from trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    try:
        size = int(ckpt["config"]["data"]["stamp_size"])
    except (KeyError, TypeError, ValueError):
        raise InputDataError(f"{checkpoint_path}: checkpoint config lacks data.stamp_size") from None
    if size < 1:
        raise InputDataError(f"{checkpoint_path}: checkpoint data.stamp_size is {size}")
    return size


def crop_centre(image_chw: np.ndarray, size: int, invvar_chw: Optional[np.ndarray] = None):
    """``(image, invvar)`` cropped to ``size`` x ``size`` about the centre pixel: input pixel
    (N//2, N//2) lands on output pixel (size//2, size//2), where the stamps put the host
    (dhs_spark.schema). A crop, never a resampling: resizing would change the pixel scale the
    model was trained at (0.262"/pix) and every arc's width in pixels. A cutout smaller than
    ``size`` raises RejectError('cutout_too_small'); one of exactly ``size`` is returned as is."""
    n = image_chw.shape[-1]
    if image_chw.shape[-2] != n:
        raise RejectError("bad_cutout", f"cutout shape {image_chw.shape} is not square")
    if n < size:
        raise RejectError("cutout_too_small", f"cutout is {n} px, the model takes {size} px")
    lo = n // 2 - size // 2
    window = (slice(None), slice(lo, lo + size), slice(lo, lo + size))
    return image_chw[window], None if invvar_chw is None else invvar_chw[window]


# The most secure grade of each lens catalogue (dhs_spark.catalogs.common, ``grade``):
# spectroscopically confirmed lenses (SLACS, BELLS, S4TM), lenscat's "confident" DESI candidates
# (Huang et al. 2020, 2021 grading), and Stein et al. 2021's grade A.
TOP_GRADES = ("confirmed", "confident", "A")


def is_top_grade(grades) -> np.ndarray:
    """Bool per grade string: True for :data:`TOP_GRADES` (case-insensitive, whitespace ignored)."""
    top = {g.lower() for g in TOP_GRADES}
    return np.array([str(g).strip().lower() in top for g in grades], dtype=bool)


def _recall_gate(name: str, scores: np.ndarray, threshold_score: float, min_recall: float, n_bootstrap: int, seed: int,
                 subset: str, missing: str) -> Gate:
    recall = float((scores >= threshold_score).mean()) if len(scores) else float("nan")
    interval = bootstrap_interval(lambda idx: float((scores[idx] >= threshold_score).mean()), len(scores), n_bootstrap, seed) if len(scores) else None
    return judge(name, recall, min_recall, "min", reason_if_missing=missing, interval=interval,
                 meaning=f"fraction of {subset} scoring >= {threshold_score}; a failure means the model misses real lenses of this kind",
                 details={"n": int(len(scores)), "n_recovered": int((scores >= threshold_score).sum())})


def anchor_gates(lens_scores, neg_scores, visible_scores, top_grade_scores, criteria=None, n_bootstrap: int = 1000, seed: int = 42,
                 arc_snr_min: float = ARC_VISIBLE_SNR) -> list[Gate]:
    """The anchor gates (:class:`dhs_spark.gates.Gate`), each with a percentile bootstrap interval:

    - ``anchor_recall_all``, ``anchor_recall_visible_arcs`` (lenses with arc SNR >=
      ``arc_snr_min`` on the scored cutout), ``anchor_recall_top_grade`` (:data:`TOP_GRADES`):
      recall at the score threshold >= ``min_recovery``;
    - ``anchor_contamination``: hard negatives scoring >= the threshold, <= ``max_contamination``;
    - ``anchor_score_separation``: median lens - median hard-negative score >= ``min_separation``;
    - ``anchor_auroc``: lenses against hard negatives >= ``min_auroc``.

    An empty set gives ``passed=None`` with the reason (what is missing and how to supply it).
    """
    c = resolve_criteria(criteria)
    thr = c["score_threshold"]
    lens, neg = _check_scores(lens_scores, "lens_scores"), _check_scores(neg_scores, "hardneg_scores")
    vis, top = _check_scores(visible_scores, "visible_scores"), _check_scores(top_grade_scores, "top_grade_scores")
    no_cutout = "needs lens cutouts: run with --cutout-dir, --coadd-root or --cutout-service-url"
    gates = [
        _recall_gate("anchor_recall_all", lens, thr, c["min_recovery"], n_bootstrap, seed, "all scored known lenses",
                     "no known lens was scored: check the known-lens catalogue and the cutout source (anchor_rejects.csv)"),
        _recall_gate("anchor_recall_visible_arcs", vis, thr, c["min_recovery"], n_bootstrap, seed + 1,
                     f"known lenses whose arc SNR >= {arc_snr_min}",
                     f"no scored lens has a measured arc SNR >= {arc_snr_min}; arc visibility {no_cutout}, and most spectroscopic "
                     "lenses' arcs are invisible in DR10: add DESI lenscat candidates"),
        _recall_gate("anchor_recall_top_grade", top, thr, c["min_recovery"], n_bootstrap, seed + 2,
                     f"known lenses of the top grade ({', '.join(TOP_GRADES)})",
                     f"no scored lens has a top grade ({', '.join(TOP_GRADES)}); the catalogue's 'grade' column is missing or holds none"),
    ]
    contamination = float((neg >= thr).mean()) if len(neg) else float("nan")
    gates.append(judge(
        "anchor_contamination", contamination, c["max_contamination"], "max",
        reason_if_missing=f"no hard negative was scored: hard negatives {no_cutout} (or a --scores file that covers them)",
        interval=bootstrap_interval(lambda idx: float((neg[idx] >= thr).mean()), len(neg), n_bootstrap, seed + 3) if len(neg) else None,
        meaning=f"fraction of real look-alikes (rings, mergers, ...) scoring >= {thr}; a failure means real false positives swamp real lenses",
        details={"n": int(len(neg)), "n_contaminated": int((neg >= thr).sum())}))
    both = len(lens) and len(neg)
    missing_pair = "needs scored lenses and scored hard negatives; see anchor_contamination and anchor_recall_all"
    sep = float(np.median(lens) - np.median(neg)) if both else float("nan")
    rng = rng_from_seed(seed + 4)
    sep_samples = [float(np.median(lens[rng.integers(0, len(lens), len(lens))]) - np.median(neg[rng.integers(0, len(neg), len(neg))]))
                   for _ in range(n_bootstrap)] if both else []
    sep_interval = (float(np.quantile(sep_samples, 0.025)), float(np.quantile(sep_samples, 0.975))) if both else None
    gates.append(judge("anchor_score_separation", sep, c["min_separation"], "min", reason_if_missing=missing_pair, interval=sep_interval,
                       meaning="median lens score - median hard-negative score; a failure means the model barely ranks real lenses above look-alikes"))
    gates.append(judge("anchor_auroc", auroc(lens, neg), c["min_auroc"], "min", reason_if_missing=missing_pair,
                       interval=auroc_interval(lens, neg, n_bootstrap, seed + 5) if both else None,
                       meaning="AUROC of real lenses against real hard negatives; a failure means the ranking does not separate them"))
    return gates


def run_anchor_baseline(known_lens_path, hard_neg_path, output_dir, scores_path=None, checkpoint_path=None, device: str = "cpu",
                        cutouts=None, evaluation: Optional[EvaluationConfig] = None, seed: int = 42,
                        arc_snr_min: float = ARC_VISIBLE_SNR, stamp_size: Optional[int] = None) -> dict:
    """The anchor baseline: scores (from ``scores_path``, or ``checkpoint_path`` scored on
    ``cutouts``), metrics, the gates of :func:`anchor_gates` on all lenses, the arc-visible
    subset and the top grade, per-catalogue and per-grade breakdowns, bootstrap intervals, and
    the JSON/markdown/PNG report in ``output_dir``.

    ``cutouts``: an object with ``get(ra, dec) -> (image CHW nmgy, invvar CHW or None)``
    (:class:`NpzCutoutDirectory`, :class:`CoaddCutouts`, :class:`ServiceCutouts`) or None.
    Every cutout is cropped about its centre (:func:`crop_centre`) to the training geometry:
    ``stamp_size`` when given, else the checkpoint's ``data.stamp_size``
    (:func:`checkpoint_stamp_size`); with a scores file and no ``stamp_size`` the cutouts are
    used as they come. Arc SNRs are measured on the same crop. Objects without a cutout or a
    score are listed as rejects with a reason, never dropped silently.

    The report's ``gates`` is :func:`dhs_spark.gates.summarise` of the anchor gates;
    ``anchor_gate_passed`` is True only when every gate was computed and passed.
    """
    import pandas as pd

    if (scores_path is None) == (checkpoint_path is None):
        raise InputDataError("anchors: give exactly one of a scores file and a checkpoint")
    if checkpoint_path is not None and cutouts is None:
        raise InputDataError("anchors: scoring a checkpoint needs cutouts (--cutout-dir, --coadd-root or --cutout-service-url)")
    if checkpoint_path is not None:
        trained = checkpoint_stamp_size(checkpoint_path)
        if stamp_size is not None and int(stamp_size) != trained:
            raise InputDataError(f"anchors: stamp_size {stamp_size} differs from the {trained} px the checkpoint {checkpoint_path} was trained on")
        stamp_size = trained
    ev = evaluation or EvaluationConfig()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lenses, lens_file = read_anchor_table(known_lens_path, "known_lenses_merged.parquet", "known lenses")
    negs, neg_file = read_anchor_table(hard_neg_path, "hard_negatives_merged.parquet", "hard negatives")
    table = pd.concat([lenses.assign(label=1), negs.assign(label=0)], ignore_index=True)
    table["key"] = np.arange(len(table))
    for col, default in (("catalogue", ""), ("theta_e_arcsec", np.nan), ("hardneg_type", ""), ("grade", "")):
        if col not in table.columns:
            table[col] = default
    table["grade"] = table["grade"].fillna("").astype(str)
    table["top_grade"] = is_top_grade(table["grade"]) & (table["label"] == 1)

    images, rejects = {}, []
    if cutouts is not None:
        for row in table.itertuples():
            try:
                img, ivar = cutouts.get(float(row.ra), float(row.dec))
                images[row.key] = crop_centre(img, int(stamp_size), ivar) if stamp_size is not None else (img, ivar)
            except RejectError as exc:
                rejects.append({"name": row.name, "label": row.label, "reason": exc.reason, "detail": exc.detail})
    if scores_path is not None:
        table = attach_scores(table, scores_path, "anchors")
    else:
        from trainer.score import score_images

        keys = sorted(images)
        batch = np.stack([images[k][0] for k in keys]).astype(np.float32) if keys else np.zeros((0, 3, stamp_size, stamp_size), np.float32)
        scored = np.asarray(score_images(str(checkpoint_path), batch, device=device), dtype=np.float64) if keys else np.zeros(0)
        table["score"] = table["key"].map(dict(zip(keys, scored))).astype(np.float64)
    for row in table[table["score"].isna()].itertuples():
        rejects.append({"name": row.name, "label": row.label, "reason": "no_score", "detail": "no score matched this object"})

    snr = {}
    for row in table[table["label"] == 1].itertuples():
        if row.key in images:
            try:
                snr[row.key] = arc_visibility_snr(images[row.key][0], images[row.key][1], row.theta_e_arcsec).arc_snr
            except RejectError as exc:
                rejects.append({"name": row.name, "label": 1, "reason": exc.reason, "detail": exc.detail})
    table["arc_snr"] = table["key"].map(snr).astype(np.float64)
    scored = table[table["score"].notna()]
    lens_s = scored.loc[scored["label"] == 1, "score"].to_numpy()
    neg_s = scored.loc[scored["label"] == 0, "score"].to_numpy()
    metrics = compute_anchor_metrics(lens_s, neg_s, ev)

    per_catalogue = {}
    lens_rows = scored[scored["label"] == 1]
    for cat in sorted({c for cs in lens_rows["catalogue"].astype(str) for c in cs.split("|") if c}):
        sel = lens_rows["catalogue"].astype(str).str.split("|").map(lambda cs, c=cat: c in cs)
        per_catalogue[cat] = compute_anchor_metrics(lens_rows.loc[sel, "score"].to_numpy(), neg_s, ev).to_dict()
    per_grade = {}
    for grade in sorted(set(lens_rows["grade"])):
        s = lens_rows.loc[lens_rows["grade"] == grade, "score"].to_numpy()
        per_grade[grade or "(none)"] = {"n": len(s), "n_recovered": int((s >= ev.score_threshold).sum()),
                                        "recovery_rate": float((s >= ev.score_threshold).mean()), "top_grade": bool(is_top_grade([grade])[0])}
    per_hardneg_type = {}
    neg_rows = scored[scored["label"] == 0]
    for t in sorted(set(neg_rows["hardneg_type"].astype(str)) - {""}):
        s = neg_rows.loc[neg_rows["hardneg_type"] == t, "score"].to_numpy()
        per_hardneg_type[t] = {"n": len(s), "n_contaminated": int((s >= ev.score_threshold).sum()),
                               "contamination_rate": float((s >= ev.score_threshold).mean())}
    visible = lens_rows[lens_rows["arc_snr"] >= arc_snr_min]
    top = lens_rows[lens_rows["top_grade"]]
    visible_block = {"arc_snr_min": arc_snr_min, "n_lenses_with_cutout": int(lens_rows["arc_snr"].notna().sum()),
                     "n_visible": len(visible),
                     "metrics": compute_anchor_metrics(visible["score"].to_numpy(), neg_s, ev).to_dict() if len(visible) else None}
    top_block = {"grades": list(TOP_GRADES), "n": len(top),
                 "metrics": compute_anchor_metrics(top["score"].to_numpy(), neg_s, ev).to_dict() if len(top) else None}
    ci = bootstrap_ci(lens_s, neg_s, ev, n_bootstrap=ev.n_bootstrap, seed=seed) if len(lens_s) and len(neg_s) else {}
    gates = anchor_gates(lens_s, neg_s, visible["score"].to_numpy(), top["score"].to_numpy(), ev, ev.n_bootstrap, seed, arc_snr_min)
    gate_summary = summarise(gates)

    report = {"metrics": metrics.to_dict(), "criteria_passed": metrics.criteria_passed(), "bootstrap_ci": ci,
              "gates": gate_summary, "anchor_gate_passed": bool(gate_summary["all_passed"] and not gate_summary["not_computable"]),
              "per_catalogue": per_catalogue, "per_grade": per_grade, "per_hardneg_type": per_hardneg_type, "arc_visible": visible_block,
              "top_grade": top_block,
              "inputs": {"known_lenses": str(lens_file), "hard_negatives": str(neg_file), "scores": str(scores_path) if scores_path else None,
                         "checkpoint": str(checkpoint_path) if checkpoint_path else None, "n_rows": len(table),
                         "stamp_size": int(stamp_size) if stamp_size is not None else None},
              "rejects": {"n": len(rejects), "by_reason": pd.Series([r["reason"] for r in rejects], dtype=object).value_counts().to_dict()}}
    cols = ["name", "ra", "dec", "label", "catalogue", "grade", "top_grade", "hardneg_type", "score", "arc_snr"]
    table[cols].assign(catalogue=table["catalogue"].astype(str), hardneg_type=table["hardneg_type"].astype(str)).to_parquet(
        out_dir / "anchor_scores.parquet", index=False)
    pd.DataFrame(rejects, columns=["name", "label", "reason", "detail"]).to_csv(out_dir / "anchor_rejects.csv", index=False)

    _histograms(lens_s, neg_s, ev.score_threshold, out_dir / "score_histograms.png")
    imgs = {k: v[0] for k, v in images.items()}
    top_neg = neg_rows.sort_values("score", ascending=False)[["key", "name", "score"]].to_dict("records")
    low_lens = lens_rows.sort_values("score", ascending=True)[["key", "name", "score"]].to_dict("records")
    pngs = {"score_histograms": "score_histograms.png"}
    if _gallery(top_neg, imgs, out_dir / "gallery_top_hard_negatives.png", "Top-scoring hard negatives"):
        pngs["gallery_top_hard_negatives"] = "gallery_top_hard_negatives.png"
    if _gallery(low_lens, imgs, out_dir / "gallery_lowest_lenses.png", "Lowest-scoring known lenses"):
        pngs["gallery_lowest_lenses"] = "gallery_lowest_lenses.png"
    report["pngs"] = pngs
    (out_dir / "anchor_metrics.json").write_text(json.dumps(_jsonable(report), indent=2))
    (out_dir / "anchor_report.md").write_text(_markdown(report))
    return report


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _markdown(report: dict) -> str:
    g = report["gates"]
    verdict = "PASS" if report["anchor_gate_passed"] else ("FAIL" if g["failed"] else "NOT COMPUTABLE")
    m = report["metrics"]
    lines = [
        "# Anchor baseline", "",
        f"**Gate: {verdict}** ({m['n_known_lenses']} known lenses, {m['n_hard_negatives']} hard negatives, "
        f"score threshold {m['gate_criteria']['score_threshold']}, stamps cropped to {report['inputs']['stamp_size'] or 'as given'} px)", "",
        "| gate | value | 95% bootstrap interval | threshold | pass | n | reason |", "|---|---|---|---|---|---|---|",
    ]
    for name, gd in g["gates"].items():
        iv = gd.get("interval") or [None, None]
        side = ">=" if gd["direction"] == "min" else "<="
        lines.append(f"| {name} | {_fmt(gd['value'])} | [{_fmt(iv[0])}, {_fmt(iv[1])}] | {side} {gd['threshold']} | {gd['pass']} | "
                     f"{gd['details'].get('n', '')} | {gd['reason']} |")
    lines += ["", "## Per lens catalogue (against all hard negatives)", "", "| catalogue | n | recovery | AUROC |", "|---|---|---|---|"]
    for cat, pm in report["per_catalogue"].items():
        lines.append(f"| {cat} | {pm['n_known_lenses']} | {_fmt(pm['recovery_rate_0p5'])} | {_fmt(pm['auroc_anchor'])} |")
    lines += ["", f"## Per grade (top grades: {', '.join(TOP_GRADES)})", "", "| grade | n | recovered | recovery | top grade |", "|---|---|---|---|---|"]
    for grade, pg in report["per_grade"].items():
        lines.append(f"| {grade} | {pg['n']} | {pg['n_recovered']} | {_fmt(pg['recovery_rate'])} | {pg['top_grade']} |")
    lines += ["", "## Per hard-negative type", "", "| type | n | contamination |", "|---|---|---|"]
    for t, pm in report["per_hardneg_type"].items():
        lines.append(f"| {t} | {pm['n']} | {_fmt(pm['contamination_rate'])} |")
    v = report["arc_visible"]
    lines += ["", "## Lenses with arcs visible in DR10", "",
              f"Arc SNR (largest 45-degree sector SNR of the host-subtracted annulus; see dhs_spark.anchors) >= {v['arc_snr_min']}: "
              f"{v['n_visible']} of {v['n_lenses_with_cutout']} lenses with a cutout."]
    if v["metrics"]:
        lines.append(f"Recovery on them: {_fmt(v['metrics']['recovery_rate_0p5'])}; AUROC {_fmt(v['metrics']['auroc_anchor'])}.")
    lines += ["", f"Rejected / unscored objects: {report['rejects']['n']} {report['rejects']['by_reason']} (anchor_rejects.csv).", ""]
    lines += [f"![{k}]({p})" for k, p in report.get("pngs", {}).items()]
    return "\n".join(lines) + "\n"
