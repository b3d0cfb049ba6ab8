"""LRG parent sample: colour cuts on DR10 sweep rows (pure numpy / pandas, no Spark).

Magnitudes are AB from nanomaggy fluxes, m = 22.5 - 2.5 log10(flux); a non-positive or
non-finite flux has no magnitude (NaN) and therefore fails every cut (NaN comparisons are
False), with no numpy warnings emitted. Fluxes are not corrected for Galactic extinction: the
cuts reproduce the seed project's selection, which used raw sweep fluxes (tested against its
``is_lrg_v*`` flags).

Each variant is three strict inequalities::

    z < z_max,   r - z > rz_min,   z - W1 > zw1_min

A morphology cut (``TYPE != 'PSF'``) is a separate, optional step (:func:`morphology_mask`),
never part of a variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhs_spark.errors import InputDataError

FLUX_COLUMNS = ("FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1")


@dataclass(frozen=True)
class LrgCut:
    """One LRG selection variant: ``z < z_max_mag``, ``r - z > rz_min_mag``, ``z - W1 > zw1_min_mag`` (AB)."""

    name: str
    z_max_mag: float
    rz_min_mag: float
    zw1_min_mag: float


LRG_VARIANTS: dict[str, LrgCut] = {
    cut.name: cut
    for cut in (
        LrgCut("v1_pure_massive", 20.0, 0.5, 1.6),
        LrgCut("v2_baseline_dr10", 20.4, 0.4, 1.6),
        LrgCut("v3_color_relaxed", 20.4, 0.4, 0.8),
        LrgCut("v4_mag_relaxed", 21.0, 0.4, 0.8),
        LrgCut("v5_very_relaxed", 21.5, 0.3, 0.8),
    )
}
DEFAULT_VARIANT = "v3_color_relaxed"


def flux_to_mag(flux_nmgy) -> np.ndarray:
    """AB magnitude 22.5 - 2.5 log10(flux) of nanomaggy fluxes; NaN where flux <= 0 or not finite."""
    f = np.asarray(flux_nmgy, dtype=np.float64)
    good = np.isfinite(f) & (f > 0)
    out = np.full(f.shape, np.nan)
    out[good] = 22.5 - 2.5 * np.log10(f[good])
    return out


def _column(table, name: str) -> np.ndarray:
    """Column ``name`` of a DataFrame / dict / structured array, matched case-insensitively."""
    keys = list(table.columns) if hasattr(table, "columns") else list(table.dtype.names) if hasattr(table, "dtype") else list(table)
    for key in keys:
        if str(key).upper() == name:
            return np.asarray(table[key])
    raise InputDataError(f"LRG selection: the table has no {name} column (columns: {keys[:20]})")


def lrg_photometry(table) -> dict[str, np.ndarray]:
    """z magnitude and the r-z, z-W1 colours (AB, float64) of sweep rows; NaN where a flux is <= 0."""
    g, r, z, w1 = (flux_to_mag(_column(table, c)) for c in FLUX_COLUMNS)
    return {"g_mag": g, "r_mag": r, "z_mag": z, "w1_mag": w1, "r_minus_z": r - z, "z_minus_w1": z - w1}


def _cut(variant) -> LrgCut:
    if isinstance(variant, LrgCut):
        return variant
    try:
        return LRG_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown LRG variant {variant!r}; choose one of {sorted(LRG_VARIANTS)}") from None


def select_lrg(table, variant: str = DEFAULT_VARIANT) -> np.ndarray:
    """Boolean mask of the rows of ``table`` that pass LRG ``variant``.

    ``table``: a pandas DataFrame (or dict of arrays / structured array) with the sweep columns
    FLUX_G, FLUX_R, FLUX_Z, FLUX_W1 in nanomaggies (names case-insensitive). ``variant``: a key of
    :data:`LRG_VARIANTS` or an :class:`LrgCut`. TYPE is not used here (see :func:`morphology_mask`).
    """
    cut = _cut(variant)
    phot = lrg_photometry(table)
    return _apply(cut, phot)


def _apply(cut: LrgCut, phot: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN compares False: non-positive fluxes fail, silently by design
        return (phot["z_mag"] < cut.z_max_mag) & (phot["r_minus_z"] > cut.rz_min_mag) & (phot["z_minus_w1"] > cut.zw1_min_mag)


def select_all_variants(table) -> dict[str, np.ndarray]:
    """``{variant name: mask}`` for every variant, computing the magnitudes once."""
    phot = lrg_photometry(table)
    return {name: _apply(cut, phot) for name, cut in LRG_VARIANTS.items()}


def morphology_mask(table, exclude_types=("PSF",)) -> np.ndarray:
    """True for rows whose Tractor TYPE is not in ``exclude_types`` (stripped, upper-case compare)."""
    types = np.char.upper(np.char.strip(np.asarray(_column(table, "TYPE")).astype(str)))
    return ~np.isin(types, [t.upper() for t in exclude_types])


PARENT_COLUMNS = (
    ("ra", "float64", "degrees"),
    ("dec", "float64", "degrees"),
    ("brickname", "string", "DR10 brick"),
    ("type", "string", "Tractor morphological type"),
    ("flux_g_nmgy", "float64", "nanomaggies"),
    ("flux_r_nmgy", "float64", "nanomaggies"),
    ("flux_z_nmgy", "float64", "nanomaggies"),
    ("flux_w1_nmgy", "float64", "nanomaggies"),
    ("z_mag", "float64", "AB, NaN for flux <= 0"),
    ("r_minus_z", "float64", "AB colour"),
    ("z_minus_w1", "float64", "AB colour"),
) + tuple((f"is_lrg_{name.split('_')[0]}", "bool", name) for name in LRG_VARIANTS)


def parent_sample_frame(table, variant: str = DEFAULT_VARIANT, exclude_types=None):
    """The parent sample of one chunk of sweep rows as a pandas DataFrame of :data:`PARENT_COLUMNS`.

    Keeps the rows passing ``variant`` (and, when ``exclude_types`` is given, the morphology cut),
    with lower-case unit-named columns and every variant's flag (``is_lrg_v1`` ... ``is_lrg_v5``).
    This is the per-partition function of :mod:`dhs_spark.survey.parent_spark`.
    """
    import pandas as pd

    cut = _cut(variant)
    phot = lrg_photometry(table)
    keep = _apply(cut, phot)
    if exclude_types:
        keep &= morphology_mask(table, exclude_types)
    out = {
        "ra": _column(table, "RA").astype(np.float64),
        "dec": _column(table, "DEC").astype(np.float64),
        "brickname": np.char.strip(_column(table, "BRICKNAME").astype(str)),
        "type": np.char.strip(_column(table, "TYPE").astype(str)),
    }
    for band in ("g", "r", "z", "w1"):
        out[f"flux_{band}_nmgy"] = _column(table, f"FLUX_{band.upper()}").astype(np.float64)
    out.update({k: phot[k] for k in ("z_mag", "r_minus_z", "z_minus_w1")})
    for name, c in LRG_VARIANTS.items():
        out[f"is_lrg_{name.split('_')[0]}"] = _apply(c, phot)
    frame = pd.DataFrame(out)
    return frame.loc[keep].reset_index(drop=True)
