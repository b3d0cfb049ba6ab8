"""Injection realism: the same measurements on real lenses and on injections.

Two tools, both run by ``dhs realism`` (:mod:`dhs_spark.realism_cli`):

**1. Arc colours and visibility** (:func:`measure_arc`, :func:`summarise_arcs`, :func:`run_arcs`;
issue 14.3). Per stamp (3, N, N) in nanomaggies, bands g, r, z, lens on pixel (N//2, N//2):

- *Visibility*: ``arc_snr`` of :func:`dhs_spark.anchors.arc_visibility_snr` (host model of
  elliptical ring medians + m = 2 harmonics, inverse-variance band stack, largest 45-degree
  sector SNR in the annulus; 0.8"-3.0" when theta_E is not given).
- *Arc aperture*: the annulus pixels of the best sector, grown sector by sector on both sides
  while the neighbouring sector's own SNR is >= :data:`ARC_GROW_SECTOR_SNR` (3): an arc is a
  contiguous run of sectors; a sector below 3 sigma adds more noise than arc.
- *Host-subtracted fluxes*: F_b = sum over the aperture of (image_b - host_b), where host_b is
  :func:`dhs_spark.anchors.host_model` on the same elliptical rings, with its ring clipping
  decided once on the inverse-variance band stack and applied to every band (per-band clipping,
  as in the visibility measure, keeps a bright arc's pixels out of the r-band ring median but
  not out of the noisier g band's, which reddened red arcs by +0.17/+0.31 mag at g-r = 1.5 on a
  noise-only host; one clip mask brings that to +0.09/+0.18). Flux error sigma_b = sqrt(sum
  over the aperture of 1 / invvar_b) (from the invvar, else the MAD noise of
  :func:`~dhs_spark.anchors.arc_residual`; MAD ignores the pixel correlation of resampled
  coadds, so errors are then somewhat low).
- *Colours*: g-r = -2.5 log10(F_g / F_r), r-z = -2.5 log10(F_r / F_z) (AB, like the fluxes);
  error by first-order propagation, 1.0857 sqrt((sigma_1/F_1)^2 + (sigma_2/F_2)^2). A colour is
  *measured* (``g_r_ok`` / ``r_z_ok``) when arc_snr >= 5 (:data:`dhs_spark.anchors.ARC_VISIBLE_SNR`)
  and both bands' F_b / sigma_b >= :data:`COLOUR_MIN_BAND_SNR` (3); otherwise it is NaN in the
  summaries (the table keeps the raw value).
- *Host colour* for reference: the same colours of the unsubtracted image within 1" of the centre.

Bias of the colour estimator, measured by injecting known-colour Sersic arcs
(:func:`dhs_spark.sims.inject.inject_arc`, SIE theta_E 1.5", q 0.8, source offsets 0.3-0.8",
r_eff 0.1-0.3", unlensed r 22-23, g-r 0.3-1.0, PSF FWHM g/r/z 1.35/1.2/1.1") into the central
64 px of each of the six real DR10 cutouts of ``tests/data/cutouts_dr10``, on the side opposite
their own candidate arc (108 stamps, arc_snr 20-470):

- no noise, equal PSFs: the colour comes back exactly (the host model absorbs the same fraction
  of the arc in every band); the wider g PSF alone reddens g-r by +0.03 and r-z by +0.015
  (light outside the aperture);
- with the real hosts and noise: measured - true has median +0.12 in g-r (interquartile
  -0.01 to +0.24) and +0.12 in r-z (+0.02 to +0.21), host by host between -0.04 and +0.28: the
  estimator reads arcs ~0.1 mag redder than they are (host light the ring model leaves in the
  aperture, and arc light it absorbs unequally in noisy bands), and single values scatter by
  ~0.25 mag; below arc_snr ~ 20 the scatter exceeds 0.3 mag and neighbours in the annulus can
  dominate. Arcs covering most of the ring are partly absorbed by the ring medians (40-60% of
  their flux): their colours hold to the accuracy above, their fluxes do not.

``tests/test_realism.py`` checks the exact noise-free recovery, a 0.15 mag tolerance on the
cleanest host (0006p270_2574) and that a blue arc measures bluer than a red one on every host.
The estimator is the same on real and injected stamps, so the comparison of the two is like
for like even though the absolute colours carry this bias.

What each real set can tell: the DR10 cutouts are real DR10 coadds (same survey, filters,
depth, pixel scale as the injections: directly comparable, but only six, all DESI grade-B
candidates, some "arcs" of which may be neighbours). The PS1 set (``sled_ps1_lenses.npz``, 181
SLED confirmed lenses, 64 x 64 at 0.25"/pix, PS1 g, r, z; see its README) is shallower
(r 5-sigma ~23.2 vs ~23.9) with filters close to but not DECam's, and mixes galaxy-scale lenses,
lensed quasars and group/cluster lenses whose arcs lie outside a 3" annulus. Its lenses sit only
near the stamp centre, so each stamp is recentred on its peak within 2 px first
(:func:`recentre_on_peak`); without that, centring dipoles of bright hosts read as red "arcs"
(the arc and host g-r correlated at 0.43; 0.23 after recentring). Its arc colours where the arc
is detected, best on the systems whose theta_E is known and <= 3", and its visibility *ranking*
are informative; its visibility values are not on the DR10 scale, and many confirmed arcs are
undetected.

**2. The linear-probe realism gate** (:func:`probe_auc`, :func:`run_probe`; issue 15.7): the
CNN's penultimate-layer features (:func:`trainer.score.embed_images`) of real lenses and of
injections; a cross-validated, class-balanced logistic regression separates them. AUC ~ 0.5
means the model's own representation cannot tell injections from real lenses; near 1 means the
injections are recognisably fake to it. After the approach of the 2026 DR10 lens-finder study
that the issue cites (probe AUC 0.997 for Sersic injections against 112 confirmed lenses). See
:func:`run_probe` for the outputs and gates.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dhs_spark.anchors import ARC_VISIBLE_SNR, N_SECTORS, PIXEL_SCALE_ARCSEC, arc_residual, arc_visibility_snr, crop_centre, host_model
from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import InputDataError, RejectError
from dhs_spark.gates import Gate, auroc, auroc_interval, judge, summarise

log = logging.getLogger(__name__)

BANDS = ("g", "r", "z")
ARC_GROW_SECTOR_SNR = 3.0
COLOUR_MIN_BAND_SNR = 3.0
HOST_APERTURE_ARCSEC = 1.0
MAG_ERR = 2.5 / math.log(10.0)  # 1.0857: d(mag) = MAG_ERR x d(flux) / flux
PS1_FILE = "sled_ps1_lenses.npz"
PS1_PIXEL_SCALE_ARCSEC = 0.25
PS1_MAX_SHIFT_PIX = 2
DEFAULT_STAMP_SIZE = 64
SET_DR10 = "dr10_candidates"
SET_PS1 = "ps1_sled"
SET_INJECTED = "injected"
SET_CONTROLS = "controls"


# --------------------------------------------------------------------------------------------
# 1. Arc colours and visibility
# --------------------------------------------------------------------------------------------
def arc_sectors(sector_snr: Sequence[float], best_sector: int, grow_snr: float = ARC_GROW_SECTOR_SNR) -> list[int]:
    """Sectors of the arc aperture: ``best_sector`` plus the contiguous run of neighbours on each
    side whose SNR is >= ``grow_snr`` (sorted; all 8 at most)."""
    snr = np.asarray(sector_snr, dtype=np.float64)
    chosen = {int(best_sector)}
    for step in (1, -1):
        k = int(best_sector)
        for _ in range(N_SECTORS - 1):
            k = (k + step) % N_SECTORS
            if k in chosen or not snr[k] >= grow_snr:
                break
            chosen.add(k)
    return sorted(chosen)


def _colour(f1: float, f2: float, e1: float, e2: float) -> tuple[float, float]:
    if not (f1 > 0 and f2 > 0):
        return float("nan"), float("nan")
    return float(-2.5 * math.log10(f1 / f2)), float(MAG_ERR * math.hypot(e1 / f1, e2 / f2))


def measure_arc(image_chw, invvar=None, theta_e_arcsec: Optional[float] = None, pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC) -> dict:
    """Arc visibility and host-subtracted arc colours of one stamp (module docstring, part 1).

    Args:
        image_chw: (3, N, N) nanomaggies per pixel, bands g, r, z, lens on pixel (N//2, N//2).
        invvar: (3, N, N) inverse variance (1/nmgy^2) or None (MAD noise).
        theta_e_arcsec: annulus theta_E +- 0.8" when finite and > 0, else 0.8"-3.0".
        pixel_scale_arcsec: 0.262 for DR10, 0.25 for PS1.

    Returns a flat dict: ``arc_snr``, ``best_sector``, ``n_arc_sectors``, ``aperture_n_pix``,
    ``annulus_in_arcsec``, ``annulus_out_arcsec``, ``noise_from``, ``host_q``, ``host_pa_rad``,
    per band ``flux_<b>_nmgy`` / ``flux_err_<b>_nmgy`` (aperture, host-subtracted), ``arc_r_mag``
    (aperture r AB magnitude, NaN when F_r <= 0), ``g_r``, ``g_r_err``, ``r_z``, ``r_z_err``,
    ``g_r_ok``, ``r_z_ok`` (see the module docstring), ``host_g_r``, ``host_r_z``.

    Raises:
        InputDataError: not (3, N, N). RejectError: non-finite pixels, no noise estimate.
    """
    img = np.asarray(image_chw, dtype=np.float64)
    if img.ndim != 3 or img.shape[0] != len(BANDS):
        raise InputDataError(f"measure_arc: image must be (3, N, N) in bands g, r, z, got shape {img.shape}")
    res = arc_residual(img, invvar, theta_e_arcsec, pixel_scale_arcsec)
    vis = res.visibility
    sectors = arc_sectors(vis.sector_snr, vis.best_sector)
    aperture = res.annulus & np.isin(res.sector, sectors)
    ivar = np.broadcast_to(res.ivar, img.shape)
    wsum = ivar.sum(axis=0)
    stack = np.where(wsum > 0, (img * ivar).sum(axis=0) / np.sqrt(np.where(wsum > 0, wsum, 1.0)), 0.0)
    resid = np.stack([b - host_model(b, res.host_q, res.host_pa_rad, clip_image=stack) for b in img])
    flux = resid[:, aperture].sum(axis=1)
    with np.errstate(divide="ignore"):
        var = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), np.inf)
    err = np.sqrt(var[:, aperture].sum(axis=1))
    band_snr = np.where(np.isfinite(err) & (err > 0), flux / err, np.nan)
    g_r, g_r_err = _colour(flux[0], flux[1], err[0], err[1])
    r_z, r_z_err = _colour(flux[1], flux[2], err[1], err[2])
    visible = vis.arc_snr >= ARC_VISIBLE_SNR
    core = res.r_arcsec <= HOST_APERTURE_ARCSEC
    host = img[:, core].sum(axis=1)
    out = {
        "arc_snr": float(vis.arc_snr), "best_sector": int(vis.best_sector), "n_arc_sectors": len(sectors),
        "aperture_n_pix": int(aperture.sum()), "annulus_in_arcsec": vis.annulus_arcsec[0], "annulus_out_arcsec": vis.annulus_arcsec[1],
        "noise_from": vis.noise_from, "host_q": float(res.host_q), "host_pa_rad": float(res.host_pa_rad),
    }
    for b, band in enumerate(BANDS):
        out[f"flux_{band}_nmgy"] = float(flux[b])
        out[f"flux_err_{band}_nmgy"] = float(err[b])
    out["arc_r_mag"] = float(22.5 - 2.5 * math.log10(flux[1])) if flux[1] > 0 else float("nan")
    out.update({
        "g_r": g_r, "g_r_err": g_r_err, "r_z": r_z, "r_z_err": r_z_err,
        "g_r_ok": bool(visible and band_snr[0] >= COLOUR_MIN_BAND_SNR and band_snr[1] >= COLOUR_MIN_BAND_SNR),
        "r_z_ok": bool(visible and band_snr[1] >= COLOUR_MIN_BAND_SNR and band_snr[2] >= COLOUR_MIN_BAND_SNR),
        "host_g_r": _colour(host[0], host[1], 0.0, 0.0)[0], "host_r_z": _colour(host[1], host[2], 0.0, 0.0)[0],
    })
    return out


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "median": None, "p10": None, "p90": None}
    return {"n": len(v), "median": float(np.median(v)), "p10": float(np.quantile(v, 0.1)), "p90": float(np.quantile(v, 0.9))}


def summarise_arcs(rows) -> dict:
    """Summary of one set of :func:`measure_arc` rows (a list of dicts or a DataFrame):

    ``n``; ``arc_snr`` {n, median, p10, p90}; ``fraction_visible`` (arc_snr >= 5) and
    ``fraction_below_5``; ``g_r`` and ``r_z`` {n, median, p10, p90} over the rows whose colour
    is measured (``g_r_ok`` / ``r_z_ok``); ``host_g_r``; and, where the rows carry the injected
    truth (``source_color_g_r``, ``source_color_r_z``), ``input_g_r`` / ``input_r_z`` over the
    same rows, so that measured and injected colours sit side by side.
    """
    import pandas as pd

    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    out: dict = {"n": len(df)}
    if not len(df):
        return out | {"arc_snr": _stats([]), "fraction_visible": None, "fraction_below_5": None, "g_r": _stats([]), "r_z": _stats([])}
    snr = df["arc_snr"].to_numpy(np.float64)
    out["arc_snr"] = _stats(snr)
    out["fraction_visible"] = float((snr >= ARC_VISIBLE_SNR).mean())
    out["fraction_below_5"] = float((snr < ARC_VISIBLE_SNR).mean())
    for colour in ("g_r", "r_z"):
        ok = df[f"{colour}_ok"].to_numpy(bool)
        out[colour] = _stats(df.loc[ok, colour])
        if f"source_color_{colour}" in df.columns:
            out[f"input_{colour}"] = _stats(df.loc[ok, f"source_color_{colour}"])
    out["host_g_r"] = _stats(df["host_g_r"])
    return out


def load_cutout_dir(directory, stamp_size: Optional[int] = DEFAULT_STAMP_SIZE):
    """Every ``.npz`` cutout of ``directory`` (:class:`dhs_spark.anchors.NpzCutoutDirectory`
    layout) cropped to ``stamp_size`` about the centre (None: as stored). Returns
    ``(images list of (3, n, n), invvars list (None where absent), meta DataFrame name, ra, dec)``."""
    import pandas as pd

    from dhs_spark.anchors import NpzCutoutDirectory

    source = NpzCutoutDirectory(directory)
    images, invvars = [], []
    for ra, dec, path in zip(source.ra, source.dec, source.files):
        img, ivar = source.get(float(ra), float(dec))
        if stamp_size is not None:
            try:
                img, ivar = crop_centre(img, int(stamp_size), ivar)
            except RejectError as exc:
                raise InputDataError(f"{path}: {exc.detail}; choose a smaller stamp size") from None
        images.append(img)
        invvars.append(ivar)
    meta = pd.DataFrame({"name": [p.stem for p in source.files], "ra": source.ra, "dec": source.dec})
    return images, invvars, meta


def recentre_on_peak(image_chw: np.ndarray, max_shift_pix: int = PS1_MAX_SHIFT_PIX) -> tuple[np.ndarray, int, int]:
    """``(stamp, dy, dx)``: the stamp cut so that the brightest pixel of the band sum within
    ``max_shift_pix`` (Chebyshev distance) of the centre pixel (N//2, N//2) becomes the new
    centre pixel; size N - 2 ``max_shift_pix`` (odd N - 2k keeps the convention N//2). Non-finite
    pixels count as 0 in the search. For stamps whose lens is only *near* the centre (the PS1
    set: median peak offset 1.4 px): a 1-px offset of a bright host leaves a dipole with the
    host's colour in the ring residual, which the arc measurement would read as a red arc."""
    n = image_chw.shape[-1]
    c, k = n // 2, int(max_shift_pix)
    window = np.nan_to_num(image_chw.sum(axis=0))[c - k : c + k + 1, c - k : c + k + 1]
    dy, dx = (int(v) - k for v in np.unravel_index(int(np.argmax(window)), window.shape))
    size = n - 2 * k
    lo_y, lo_x = c + dy - size // 2, c + dx - size // 2
    return image_chw[:, lo_y : lo_y + size, lo_x : lo_x + size], dy, dx


def load_ps1_lenses(path):
    """The PS1 SLED lenses (``sled_ps1_lenses.npz``, a file or the directory holding it):
    ``(images (N, 3, 60, 60) float32 nmgy, meta DataFrame name, ra, dec, theta_e_arcsec,
    recentre_dy_pix, recentre_dx_pix)``, each stamp recentred on its peak within 2 px
    (:func:`recentre_on_peak`; 0.5", so a lensed quasar image 1-2" away is not taken for the
    lens), theta_E = image separation / 2 where SLED gives one (NaN otherwise)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / PS1_FILE
    if not path.exists():
        raise InputDataError(f"PS1 lenses: {path} not found")
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in ("images", "name", "ra", "dec", "image_sep_arcsec", "pixel_scale_arcsec") if k not in d]
        if missing:
            raise InputDataError(f"{path}: lacks keys {missing}")
        if abs(float(d["pixel_scale_arcsec"]) - PS1_PIXEL_SCALE_ARCSEC) > 1e-6:
            raise InputDataError(f"{path}: pixel_scale_arcsec {float(d['pixel_scale_arcsec'])}, expected {PS1_PIXEL_SCALE_ARCSEC}")
        raw = np.asarray(d["images"], dtype=np.float32)
        meta = pd.DataFrame({"name": d["name"].astype(str), "ra": d["ra"], "dec": d["dec"], "theta_e_arcsec": d["image_sep_arcsec"] / 2.0})
    if raw.ndim != 4 or raw.shape[1] != len(BANDS) or raw.shape[2] != raw.shape[3]:
        raise InputDataError(f"{path}: images shape {raw.shape}, expected (N, 3, H, H)")
    cut = [recentre_on_peak(im) for im in raw]
    meta["recentre_dy_pix"] = [c[1] for c in cut]
    meta["recentre_dx_pix"] = [c[2] for c in cut]
    return np.stack([c[0] for c in cut]), meta


STAMP_META_COLUMNS = ("task_id", "split", "ra", "dec", "theta_e_arcsec", "source_mode", "cosmos_ident", "source_r_mag",
                      "source_color_g_r", "source_color_r_z", "lensed_flux_r_nmgy", "arc_snr_sum")


def load_stamps(path, which: str = SET_INJECTED, max_stamps: Optional[int] = 2000, seed: int = 0, split: Optional[str] = None,
                stamp_size: Optional[int] = DEFAULT_STAMP_SIZE):
    """Injected (``label`` 1) or control (``is_control``) stamps of a stamp Parquet file or
    directory: ``(images (n, 3, s, s) float32 nmgy, meta DataFrame)``.

    At most ``max_stamps`` rows (None: all), chosen by the smallest ``stable_hash64(seed,
    task_id)``, so the same seed picks the same stamps on any machine and in any file order.
    ``split``: keep one split. Images are cropped to ``stamp_size`` (None: as stored). ``meta``
    holds the columns of :data:`STAMP_META_COLUMNS` that the files have. Null injections
    (``is_null_injection``) are neither injections nor controls here.
    """
    import pyarrow.dataset as ds

    from dhs_spark.schema import decode_image_column

    if which not in (SET_INJECTED, SET_CONTROLS):
        raise ValueError(f"which must be {SET_INJECTED!r} or {SET_CONTROLS!r}, got {which!r}")
    dataset = ds.dataset(str(path), format="parquet", partitioning="hive", exclude_invalid_files=True)  # split=.../ directories of 4c
    names = set(dataset.schema.names)
    need = {"task_id", "label", "is_control", "image", "n_bands", "stamp_size"}
    if not need <= names:
        raise InputDataError(f"{path}: stamps lack columns {sorted(need - names)}")
    meta_cols = [c for c in STAMP_META_COLUMNS if c in names]
    small = dataset.to_table(columns=sorted(set(meta_cols) | {"label", "is_control"} | ({"is_null_injection"} & names))).to_pandas()
    keep = (small["label"] == 1) & ~small["is_control"].astype(bool) if which == SET_INJECTED else small["is_control"].astype(bool)
    if "is_null_injection" in small.columns:
        keep &= ~small["is_null_injection"].fillna(False).astype(bool)
    if split is not None:
        if "split" not in small.columns:
            raise InputDataError(f"{path}: no 'split' column to select split {split!r}")
        keep &= small["split"] == split
    chosen = small.loc[keep, "task_id"].astype(str)
    if max_stamps is not None and len(chosen) > max_stamps:
        order = np.argsort([stable_hash64(int(seed), t) for t in chosen], kind="stable")
        chosen = chosen.iloc[np.sort(order[:max_stamps])]
    wanted = set(chosen)
    images, metas = [], []
    for batch in dataset.to_batches(columns=["image", "n_bands", "stamp_size", *meta_cols], batch_size=256):
        ids = batch.column("task_id").to_pylist()
        sel = [i for i, t in enumerate(ids) if t in wanted]
        if not sel:
            continue
        sub = batch.take(sel)
        imgs = decode_image_column(sub.column(0), sub.column(1).to_numpy(), sub.column(2).to_numpy(), str(path))
        if stamp_size is not None:
            if imgs.shape[-1] < stamp_size:
                raise InputDataError(f"{path}: stamps are {imgs.shape[-1]} px, smaller than the stamp size {stamp_size} asked for")
            imgs = np.stack([crop_centre(im, int(stamp_size))[0] for im in imgs])
        images.append(np.array(imgs, dtype=np.float32))
        metas.append(sub.select(meta_cols).to_pandas())
    if not images:
        raise InputDataError(f"{path}: no {which} stamps" + (f" in split {split!r}" if split else ""))
    import pandas as pd

    meta = pd.concat(metas, ignore_index=True)
    order = np.argsort(meta["task_id"].to_numpy(str), kind="stable")  # file order varies; task_id order does not
    return np.concatenate(images)[order], meta.iloc[order].reset_index(drop=True)


def measure_set(images, meta, set_name: str, pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC, invvars=None):
    """:func:`measure_arc` on every image of a set (theta_E not used: the default 0.8"-3.0"
    annulus for every set, so that injections, whose theta_E is known, and real candidates,
    whose theta_E is not, are measured the same way). Rows: ``set``, the meta columns, the
    measurement, or ``reject_reason`` for an image that could not be measured."""
    import pandas as pd

    rows = []
    for i, img in enumerate(images):
        row = {"set": set_name, **meta.iloc[i].to_dict(), "pixel_scale_arcsec": pixel_scale_arcsec, "reject_reason": ""}
        try:
            row.update(measure_arc(img, None if invvars is None else invvars[i], None, pixel_scale_arcsec))
        except RejectError as exc:
            row["reject_reason"] = f"{exc.reason}: {exc.detail}"
        rows.append(row)
    return pd.DataFrame(rows)


def run_arcs(output_dir, cutouts_dir=None, stamps=None, ps1_path=None, stamp_size: int = DEFAULT_STAMP_SIZE, max_stamps: Optional[int] = 2000,
             seed: int = 0, split: Optional[str] = None, include_controls: bool = True) -> dict:
    """Measure every given set and write ``arcs.parquet``, ``arcs.csv`` (one row per object,
    column ``set``), ``arcs_summary.json`` ({set: :func:`summarise_arcs`} plus the inputs) and
    ``arcs_report.md`` (the sets side by side). Sets: ``dr10_candidates`` (``cutouts_dir``,
    cropped to ``stamp_size``), ``ps1_sled`` (``ps1_path``; its own 0.25"/pix), ``injected``
    and ``controls`` (``stamps``; up to ``max_stamps`` each). Returns the summary dict."""
    import pandas as pd

    if cutouts_dir is None and stamps is None and ps1_path is None:
        raise InputDataError("realism arcs: give at least one of cutouts, stamps, PS1 lenses")
    frames = []
    if cutouts_dir is not None:
        images, invvars, meta = load_cutout_dir(cutouts_dir, stamp_size)
        frames.append(measure_set(images, meta, SET_DR10, PIXEL_SCALE_ARCSEC, invvars))
    if ps1_path is not None:
        images, meta = load_ps1_lenses(ps1_path)
        frames.append(measure_set(images, meta, SET_PS1, PS1_PIXEL_SCALE_ARCSEC))
    if stamps is not None:
        for which in (SET_INJECTED, SET_CONTROLS) if include_controls else (SET_INJECTED,):
            images, meta = load_stamps(stamps, which, max_stamps, seed, split, stamp_size)
            frames.append(measure_set(images, meta, which, PIXEL_SCALE_ARCSEC))
    table = pd.concat(frames, ignore_index=True)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_dir / "arcs.parquet", index=False)
    table.to_csv(out_dir / "arcs.csv", index=False)
    measured = table[table["reject_reason"] == ""]
    summary = {"sets": {name: summarise_arcs(measured[measured["set"] == name]) for name in table["set"].unique()},
               "rejected": table.loc[table["reject_reason"] != "", ["set", "reject_reason"]].value_counts().reset_index().to_dict("records"),
               "inputs": {"cutouts": str(cutouts_dir) if cutouts_dir else None, "stamps": str(stamps) if stamps else None,
                          "ps1": str(ps1_path) if ps1_path else None, "stamp_size": stamp_size, "max_stamps": max_stamps, "seed": seed,
                          "split": split},
               "estimator": {"annulus_arcsec": [0.8, 3.0], "grow_sector_snr": ARC_GROW_SECTOR_SNR, "colour_min_band_snr": COLOUR_MIN_BAND_SNR,
                             "visible_snr": ARC_VISIBLE_SNR}}
    (out_dir / "arcs_summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    (out_dir / "arcs_report.md").write_text(_arcs_markdown(summary))
    return summary


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _fmt_stats(s: Optional[dict]) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return f"{s['median']:.2f} [{s['p10']:.2f}, {s['p90']:.2f}] (n={s['n']})"


def _arcs_markdown(summary: dict) -> str:
    lines = ["# Arc visibility and host-subtracted arc colours", "",
             "Median [10th, 90th percentile] per set, measured with the same estimator (dhs_spark.realism.measure_arc). "
             "Colours only where the arc is visible (arc SNR >= 5) and both bands are detected at >= 3 sigma.", "",
             "| set | n | arc SNR | visible (>= 5) | g-r (arc) | r-z (arc) | injected g-r | injected r-z | host g-r |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary["sets"].items():
        vis = f"{s['fraction_visible']:.2f}" if s.get("fraction_visible") is not None else "n/a"
        lines.append(f"| {name} | {s['n']} | {_fmt_stats(s.get('arc_snr'))} | {vis} | {_fmt_stats(s.get('g_r'))} | {_fmt_stats(s.get('r_z'))} | "
                     f"{_fmt_stats(s.get('input_g_r'))} | {_fmt_stats(s.get('input_r_z'))} | {_fmt_stats(s.get('host_g_r'))} |")
    lines += ["", "PS1 (ps1_sled) is shallower than DR10 and uses PS1 filters: compare its colours, not its arc SNRs, with DR10.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# 2. The linear-probe realism gate
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the realism probe (:func:`run_probe`).

    ``auc_max``: the probe and the matched probe pass at AUC <= this (0.70: halfway between
    indistinguishable (0.5) and the 0.9+ of an injection set a network tells apart at a glance;
    the cited study measured 0.997 for Sersic injections). ``n_folds``: stratified CV folds
    (capped at the smaller class). ``n_permutations``: label permutations for the p-value.
    ``logistic_c``: inverse L2 strength of the logistic regression on standardised features.
    ``max_injected``: injections used (deterministic subset). ``match_per_real``: injections
    matched to each real lens by arc visibility (nearest in asinh(arc_snr), without
    replacement). ``theta_e_window_arcsec`` and ``mag_bin_edges``: the bright-arc recovery table
    (injections with theta_E in the window, binned by lensed r AB magnitude).
    ``bright_mag_max``: injections with lensed r <= this are "bright"; ``recall_gap_max``:
    |bright-injection recall - real recall| allowed (0.20). ``min_real_for_verdict``: below this
    many real lenses the report says the probe's interval is too wide to conclude anything
    (the gate still reports its value and verdict). ``score_threshold``: the recall threshold.
    """

    auc_max: float = 0.70
    n_folds: int = 5
    n_permutations: int = 200
    n_bootstrap: int = 1000
    logistic_c: float = 1.0
    max_injected: int = 2000
    match_per_real: int = 5
    theta_e_window_arcsec: tuple[float, float] = (1.0, 2.0)
    mag_bin_edges: tuple[float, ...] = (17.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 26.0)
    bright_mag_max: float = 21.0
    recall_gap_max: float = 0.20
    min_real_for_verdict: int = 30
    score_threshold: float = 0.5


def _oof_probabilities(x: np.ndarray, y: np.ndarray, n_folds: int, c: float, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.empty(len(y), dtype=np.float64)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=int(seed) % 2**32)
    for train, test in folds.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))
        model.fit(x[train], y[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return out


def probe_auc(real_features, injected_features, seed: int = 0, n_folds: int = 5, n_permutations: int = 200, n_bootstrap: int = 1000,
              logistic_c: float = 1.0) -> dict:
    """Cross-validated linear probe, real (label 1) against injected (label 0) features.

    Standardised features, L2 logistic regression with balanced class weights, stratified
    ``n_folds``-fold CV (fewer when a class has fewer members; at least 2). The AUC is
    :func:`dhs_spark.gates.auroc` of the out-of-fold probabilities; its interval a percentile
    bootstrap of those probabilities (:func:`dhs_spark.gates.auroc_interval`: it holds the
    fitted probes fixed, so it understates the refit variance); the p-value is one-sided,
    (1 + #{permuted AUC >= AUC}) / (1 + n_permutations), refitting the whole CV on permuted
    labels. Out-of-fold AUCs of classes that do not differ scatter about a value a little
    *below* 0.5 (each held-out point's class is under-represented in its training folds), so
    "consistent with no difference" means inside ``null_interval``, the central 95% of the
    permuted AUCs (``null_auc_median`` their median), not "the bootstrap interval holds 0.5".
    Returns ``{auc, interval, p_value, null_interval, null_auc_median, n_real, n_injected,
    n_folds, n_permutations, probabilities}`` or, when a class has fewer than 2 members,
    ``{auc: None, reason, ...}``.
    """
    real = np.asarray(real_features, dtype=np.float64)
    inj = np.asarray(injected_features, dtype=np.float64)
    n_real, n_inj = len(real), len(inj)
    base = {"n_real": n_real, "n_injected": n_inj}
    folds = min(int(n_folds), n_real, n_inj)
    if folds < 2:
        return base | {"auc": None, "interval": None, "p_value": None, "n_folds": folds, "probabilities": None,
                       "reason": f"needs at least 2 real and 2 injected stamps (has {n_real} real, {n_inj} injected)"}
    if real.ndim != 2 or inj.ndim != 2 or real.shape[1] != inj.shape[1]:
        raise InputDataError(f"probe_auc: features must be (n, D) with the same D, got {real.shape} and {inj.shape}")
    x = np.concatenate([real, inj])
    y = np.r_[np.ones(n_real, np.int64), np.zeros(n_inj, np.int64)]
    p = _oof_probabilities(x, y, folds, logistic_c, seed)
    auc = auroc(p[y == 1], p[y == 0])
    rng = rng_from_seed(stable_hash64("probe-permutations", int(seed)))
    null = np.empty(int(n_permutations))
    for i in range(len(null)):
        y_perm = rng.permutation(y)
        q = _oof_probabilities(x, y_perm, folds, logistic_c, seed + 1 + i)
        null[i] = auroc(q[y_perm == 1], q[y_perm == 0])
    p_value = float((1 + (null >= auc).sum()) / (1 + len(null))) if len(null) else None
    return base | {"auc": float(auc), "interval": auroc_interval(p[y == 1], p[y == 0], n_bootstrap, seed), "p_value": p_value,
                   "n_folds": folds, "n_permutations": int(n_permutations), "probabilities": p,
                   "null_auc_median": float(np.median(null)) if len(null) else None,
                   "null_interval": (float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))) if len(null) else None}


def match_by_visibility(real_snr, injected_snr, per_real: int, seed: int = 0) -> np.ndarray:
    """Indices of injections matched to the real lenses' arc visibility: for each real lens (in
    a seeded random order), the ``per_real`` unused injections nearest in asinh(arc_snr) (a log
    scale for large SNRs that stays finite for the negative SNRs of arc-free stamps). Without
    replacement; fewer when the injections run out. Real lenses with a non-finite SNR are skipped."""
    real = np.arcsinh(np.asarray(real_snr, dtype=np.float64))
    inj = np.arcsinh(np.asarray(injected_snr, dtype=np.float64))
    free = np.isfinite(inj)
    chosen: list[int] = []
    for i in rng_from_seed(stable_hash64("probe-match", int(seed))).permutation(len(real)):
        if not np.isfinite(real[i]):
            continue
        cand = np.flatnonzero(free)
        if not len(cand):
            break
        pick = cand[np.argsort(np.abs(inj[cand] - real[i]), kind="stable")[:per_real]]
        free[pick] = False
        chosen.extend(int(k) for k in pick)
    return np.array(sorted(chosen), dtype=np.int64)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[Optional[float], Optional[float]]:
    """Wilson (1927) score interval of a binomial proportion k/n (95% for z = 1.96); (None, None) for n = 0."""
    if n == 0:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def recovery_table(injected_scores, injected_meta, real_scores, real_meta, cfg: ProbeConfig) -> dict:
    """Recall at ``cfg.score_threshold`` of injections with theta_E in ``cfg.theta_e_window_arcsec``
    per bin of lensed r magnitude (22.5 - 2.5 log10 ``lensed_flux_r_nmgy``), each with a Wilson
    interval, next to the recall of the real lenses (those whose theta_E is known and in the
    window when any is known, else all of them, as ``real_selection`` says)."""
    thr = cfg.score_threshold
    s = np.asarray(injected_scores, dtype=np.float64)
    te = injected_meta["theta_e_arcsec"].to_numpy(np.float64)
    flux = injected_meta["lensed_flux_r_nmgy"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, 22.5 - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    lo, hi = cfg.theta_e_window_arcsec
    window = (te >= lo) & (te <= hi) & np.isfinite(mag)
    edges = np.asarray(cfg.mag_bin_edges, dtype=np.float64)
    bins = []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = window & (mag >= a) & (mag < b)
        k, n = int((s[sel] >= thr).sum()), int(sel.sum())
        bins.append({"mag_lo": float(a), "mag_hi": float(b), "n": n, "n_recovered": k, "recall": k / n if n else None,
                     "interval": wilson_interval(k, n)})
    bright = window & (mag <= cfg.bright_mag_max)
    kb, nb = int((s[bright] >= thr).sum()), int(bright.sum())
    rs = np.asarray(real_scores, dtype=np.float64)
    rte = real_meta["theta_e_arcsec"].to_numpy(np.float64) if "theta_e_arcsec" in real_meta.columns else np.full(len(rs), np.nan)
    known = np.isfinite(rte)
    rsel = known & (rte >= lo) & (rte <= hi) if known.any() else np.ones(len(rs), bool)
    kr, nr = int((rs[rsel] >= thr).sum()), int(rsel.sum())
    return {"score_threshold": thr, "theta_e_window_arcsec": [lo, hi], "bins": bins,
            "bright": {"mag_max": cfg.bright_mag_max, "n": nb, "n_recovered": kb, "recall": kb / nb if nb else None, "interval": wilson_interval(kb, nb)},
            "real": {"n": nr, "n_recovered": kr, "recall": kr / nr if nr else None, "interval": wilson_interval(kr, nr),
                     "real_selection": "theta_E known and in the window" if known.any() else "all real lenses (no theta_E known)"}}


def _probe_gate(name: str, result: dict, cfg: ProbeConfig, what: str) -> Gate:
    n_real = result["n_real"]
    details = {k: result.get(k) for k in ("n_real", "n_injected", "n_folds", "p_value", "n_permutations", "null_auc_median", "null_interval")}
    if result["auc"] is not None and n_real < cfg.min_real_for_verdict:
        lo, hi = result["interval"]
        p = "not computed" if result.get("p_value") is None else f"{result['p_value']:.3g}"
        details["caveat"] = (f"only {n_real} real lenses: the AUC's bootstrap interval [{lo:.2f}, {hi:.2f}] resamples {n_real} points and "
                             "understates the uncertainty, so a pass says little about realism; a high AUC with a small permutation p-value "
                             f"(here {p}) still shows the injections differ. A verdict needs >= {cfg.min_real_for_verdict} real lenses "
                             "(--known-lenses with --cutout-service-url or --coadd-root)")
    return judge(name, result["auc"], cfg.auc_max, "max", reason_if_missing=f"{result.get('reason', '')}: supply more real lenses or injections",
                 interval=tuple(result["interval"]) if result["interval"] else None, details=details,
                 meaning=f"cross-validated linear-probe AUC of the CNN's penultimate features, real lenses vs {what}; "
                         "0.5 = the model cannot tell them apart, near 1 = the injections look fake to it")


def run_probe(checkpoint, real_images, real_meta, injected_images, injected_meta, out_dir, seed: int = 0, config: ProbeConfig = ProbeConfig(),
              device: str = "cpu", batch_size: int = 256) -> dict:
    """The linear-probe realism gate.

    Args:
        checkpoint: a ``dhs-train`` checkpoint; images are cropped to its ``data.stamp_size``.
        real_images: (n, 3, N, N) float32 nanomaggies of real lenses (N >= the stamp size).
        real_meta: DataFrame, one row per real image (``name``; ``theta_e_arcsec`` optional;
            ``arc_snr`` optional, measured here when absent).
        injected_images: (m, 3, N, N) float32 nanomaggies of injected stamps.
        injected_meta: DataFrame with ``theta_e_arcsec`` and ``lensed_flux_r_nmgy`` (stamp
            truth) and optionally ``arc_snr``; at most ``config.max_injected`` rows are used
            (deterministic by ``task_id`` hash when present, else by position).
        out_dir: where ``probe.json``, ``probe_report.md`` and ``probe_rows.parquet`` go.
        seed: folds, permutations, bootstrap and matching.

    Features and scores come from one batched forward pass (:func:`trainer.score.embed_images`),
    so thousands of real lenses need nothing else. Arc SNRs (for the matching) are
    :func:`dhs_spark.anchors.arc_visibility_snr` on the same crop, default annulus, MAD noise,
    for both sets alike.

    Returns the report dict: ``probe`` and ``probe_matched`` (:func:`probe_auc` results without
    the per-stamp probabilities), ``matching`` (the arc-SNR distributions before and after),
    ``recovery`` (:func:`recovery_table`), ``gates`` (:func:`dhs_spark.gates.summarise` of
    ``realism_probe_auc``, ``realism_probe_auc_matched``, ``bright_arc_recall_gap``), ``config``.
    """
    import pandas as pd

    from dhs_spark.anchors import checkpoint_stamp_size
    from trainer.score import embed_images

    real_meta = pd.DataFrame(real_meta).reset_index(drop=True)
    injected_meta = pd.DataFrame(injected_meta).reset_index(drop=True)
    if len(real_meta) != len(real_images) or len(injected_meta) != len(injected_images):
        raise InputDataError(f"run_probe: {len(real_images)} real images with {len(real_meta)} meta rows, "
                             f"{len(injected_images)} injected with {len(injected_meta)}")
    missing = [c for c in ("theta_e_arcsec", "lensed_flux_r_nmgy") if c not in injected_meta.columns]
    if missing:
        raise InputDataError(f"run_probe: injected_meta lacks {missing} (stamp truth columns)")
    if len(injected_meta) > config.max_injected:
        keys = injected_meta["task_id"].astype(str) if "task_id" in injected_meta.columns else pd.Series(np.arange(len(injected_meta))).astype(str)
        keep = np.sort(np.argsort([stable_hash64(int(seed), k) for k in keys], kind="stable")[: config.max_injected])
        injected_images, injected_meta = np.asarray(injected_images)[keep], injected_meta.iloc[keep].reset_index(drop=True)
    size = checkpoint_stamp_size(checkpoint)
    for what, imgs in (("real", real_images), ("injected", injected_images)):
        if len(imgs) and np.asarray(imgs[0]).shape[-1] < size:
            raise InputDataError(f"run_probe: {what} images are {np.asarray(imgs[0]).shape[-1]} px, the checkpoint takes {size} px")
    real = np.stack([crop_centre(np.asarray(im, np.float32), size)[0] for im in real_images]) if len(real_images) else np.zeros((0, 3, size, size), np.float32)
    inj = np.stack([crop_centre(np.asarray(im, np.float32), size)[0] for im in injected_images]) if len(injected_images) else np.zeros((0, 3, size, size), np.float32)
    real_f, real_s = embed_images(str(checkpoint), real, device, batch_size) if len(real) else (np.zeros((0, 1), np.float32), np.zeros(0))
    inj_f, inj_s = embed_images(str(checkpoint), inj, device, batch_size) if len(inj) else (np.zeros((0, 1), np.float32), np.zeros(0))
    real_snr = _arc_snrs(real, real_meta)
    inj_snr = _arc_snrs(inj, injected_meta)

    kw = {"n_folds": config.n_folds, "n_permutations": config.n_permutations, "n_bootstrap": config.n_bootstrap, "logistic_c": config.logistic_c}
    full = probe_auc(real_f, inj_f, seed, **kw)
    matched_idx = match_by_visibility(real_snr, inj_snr, config.match_per_real, seed)
    matched = probe_auc(real_f, inj_f[matched_idx], seed + 7, **kw)
    recovery = recovery_table(inj_s, injected_meta, real_s, real_meta, config)
    gap = abs(recovery["bright"]["recall"] - recovery["real"]["recall"]) if recovery["bright"]["n"] and recovery["real"]["n"] else None
    gates = [
        _probe_gate("realism_probe_auc", full, config, "all injections"),
        _probe_gate("realism_probe_auc_matched", matched, config, "injections matched to their arc visibility"),
        judge("bright_arc_recall_gap", gap, config.recall_gap_max, "max",
              reason_if_missing=(f"needs injections with theta_E in {list(config.theta_e_window_arcsec)}\" and lensed r <= {config.bright_mag_max} "
                                 f"(has {recovery['bright']['n']}) and real lenses (has {recovery['real']['n']}): raise the injection count "
                                 "or widen the window (--theta-e-window, --bright-mag-max)"),
              meaning="|recall of bright injections - recall of real lenses| at the same score threshold; a large gap means the "
                      "model treats injections and real lenses differently (the sim-to-real gap)",
              details={"bright_recall": recovery["bright"]["recall"], "real_recall": recovery["real"]["recall"],
                       "n_bright": recovery["bright"]["n"], "n_real": recovery["real"]["n"]}),
    ]
    report = {
        "probe": {k: v for k, v in full.items() if k != "probabilities"},
        "probe_matched": {k: v for k, v in matched.items() if k != "probabilities"},
        "matching": {"per_real": config.match_per_real, "n_matched": len(matched_idx), "real_arc_snr": _stats(real_snr),
                     "injected_arc_snr": _stats(inj_snr), "matched_arc_snr": _stats(inj_snr[matched_idx])},
        "recovery": recovery, "gates": summarise(gates), "config": asdict(config), "seed": int(seed),
        "inputs": {"checkpoint": str(checkpoint), "stamp_size": size, "feature_dim": int(real_f.shape[1]) if len(real_f) else None},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = pd.concat([
        real_meta.assign(set="real", score=real_s, arc_snr=real_snr, probe_probability=full["probabilities"][: len(real)] if full["probabilities"] is not None else np.nan),
        injected_meta.assign(set="injected", score=inj_s, arc_snr=inj_snr, matched=np.isin(np.arange(len(inj)), matched_idx),
                             probe_probability=full["probabilities"][len(real):] if full["probabilities"] is not None else np.nan),
    ], ignore_index=True)
    rows.to_parquet(out / "probe_rows.parquet", index=False)
    (out / "probe.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "probe_report.md").write_text(_probe_markdown(report))
    return report


def _arc_snrs(images: np.ndarray, meta) -> np.ndarray:
    if "arc_snr" in meta.columns:
        return meta["arc_snr"].to_numpy(np.float64)
    out = np.full(len(images), np.nan)
    for i, im in enumerate(images):
        try:
            out[i] = arc_visibility_snr(im).arc_snr
        except RejectError as exc:
            log.warning("arc SNR of stamp %d not measured: %s", i, exc)
    return out


def _probe_markdown(report: dict) -> str:
    def fmt(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    lines = ["# Linear-probe realism gate", ""]
    for name, g in report["gates"]["gates"].items():
        iv = g.get("interval") or [None, None]
        verdict = {True: "PASS", False: "FAIL", None: "NOT COMPUTABLE"}[g["pass"]]
        lines.append(f"- **{name}: {verdict}** value {fmt(g['value'])}, 95% interval [{fmt(iv[0])}, {fmt(iv[1])}], threshold <= {g['threshold']}. "
                     f"{g['meaning']}. {g['reason']}")
        if g["details"].get("caveat"):
            lines.append(f"  - **Caveat: {g['details']['caveat']}.**")
        if g["details"].get("p_value") is not None:
            lo, hi = g["details"]["null_interval"]
            lines.append(f"  - permutation p-value {g['details']['p_value']:.3g}; AUC of label-permuted data (no difference) 95% range "
                         f"[{lo:.3f}, {hi:.3f}] ({g['details']['n_permutations']} permutations; n real {g['details']['n_real']}, "
                         f"n injected {g['details']['n_injected']})")
    m = report["matching"]
    lines += ["", f"Arc SNR, median [10th, 90th]: real {_fmt_stats(m['real_arc_snr'])}; all injections {_fmt_stats(m['injected_arc_snr'])}; "
              f"matched injections {_fmt_stats(m['matched_arc_snr'])}.", ""]
    r = report["recovery"]
    lines += [f"## Bright-arc recovery (theta_E in {r['theta_e_window_arcsec']}\", score >= {r['score_threshold']})", "",
              "| lensed r | n | recall | 95% Wilson interval |", "|---|---|---|---|"]
    for b in r["bins"]:
        iv = b["interval"]
        lines.append(f"| {b['mag_lo']:.1f}-{b['mag_hi']:.1f} | {b['n']} | {fmt(b['recall'], '.2f')} | [{fmt(iv[0], '.2f')}, {fmt(iv[1], '.2f')}] |")
    rr = r["real"]
    lines += ["", f"Real lenses ({rr['real_selection']}): recall {fmt(rr['recall'], '.2f')} ({rr['n_recovered']} of {rr['n']}), "
              f"95% Wilson interval [{fmt(rr['interval'][0], '.2f')}, {fmt(rr['interval'][1], '.2f')}].", ""]
    return "\n".join(lines)
