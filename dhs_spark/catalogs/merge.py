"""Merging catalogues: positional deduplication, exclusion of hard negatives near known lenses,
and the DR10 brickname of every row.

Deduplication is friends-of-friends within ``radius_arcsec`` (default 2"): rows closer than
that, transitively, are one object. The merged row takes name, position and grade from the
highest-priority member (the order of the input frames), each numeric column from the first
member where it is finite, and keeps every catalogue, reference and name ('|'-joined in
``catalogue``, ``reference`` and ``aliases``; ``n_merged`` counts the rows).
"""

from __future__ import annotations

import numpy as np

from dhs_spark.catalogs.common import CATALOG_COLUMNS
from dhs_spark.healpix import group_within, nearest_within

DEDUP_RADIUS_ARCSEC = 2.0


def _join_unique(values) -> str:
    seen: dict[str, None] = {}
    for v in values:
        for part in str(v).split("|"):
            part = part.strip()
            if part:
                seen.setdefault(part, None)
    return "|".join(seen)


def _first_finite(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(arr))
    return float(arr[finite[0]]) if len(finite) else float("nan")


def deduplicate(frames, radius_arcsec: float = DEDUP_RADIUS_ARCSEC, extra_first=()):
    """Concatenate ``frames`` (highest priority first) and merge rows within ``radius_arcsec``.

    ``extra_first``: further columns copied from the highest-priority member (e.g.
    ``hardneg_type``). Returns the merged DataFrame (CATALOG_COLUMNS + extra + ``aliases``,
    ``n_merged``) in the order of each group's first member.
    """
    import pandas as pd

    cols = list(CATALOG_COLUMNS) + list(extra_first)
    frames = [f[cols] for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({**{c: pd.Series(dtype=object) for c in cols}, "aliases": pd.Series(dtype=object),
                             "n_merged": pd.Series(dtype=np.int64)})
    df = pd.concat(frames, ignore_index=True)
    df["_group"] = group_within(df["ra"].to_numpy(), df["dec"].to_numpy(), radius_arcsec)
    grouped = df.groupby("_group", sort=True)
    # The leader is each group's first row (pandas' first() would mix rows, skipping NaN per column).
    leaders = df.loc[grouped.head(1).index].set_index("_group")
    out = leaders[["name", "ra", "dec", "grade", *extra_first]].copy()
    for col in ("z_lens", "z_src", "theta_e_arcsec"):
        out[col] = grouped[col].agg(_first_finite)
    out["catalogue"] = grouped["catalogue"].agg(_join_unique)
    out["reference"] = grouped["reference"].agg(_join_unique)
    out["aliases"] = grouped["name"].agg(_join_unique)
    out["n_merged"] = grouped.size().astype(np.int64)
    return out[cols + ["aliases", "n_merged"]].reset_index(drop=True)


def exclude_near(hardneg, lenses, radius_arcsec: float):
    """Split ``hardneg`` into (kept, dropped): a row within ``radius_arcsec`` of any lens is
    dropped (it may be the lens itself, or its arc). ``dropped`` gains ``nearest_lens`` and
    ``lens_sep_arcsec``."""
    if len(hardneg) == 0 or len(lenses) == 0:
        return hardneg.reset_index(drop=True), hardneg.iloc[0:0].copy()
    idx, sep = nearest_within(hardneg["ra"].to_numpy(), hardneg["dec"].to_numpy(), lenses["ra"].to_numpy(),
                              lenses["dec"].to_numpy(), radius_arcsec)
    near = idx >= 0
    dropped = hardneg[near].copy()
    dropped["nearest_lens"] = lenses["name"].to_numpy()[idx[near]]
    dropped["lens_sep_arcsec"] = sep[near]
    return hardneg[~near].reset_index(drop=True), dropped.reset_index(drop=True)


def add_brickname(df):
    """``brickname`` column: the DR10 brick of each row (dhs_spark.survey.bricks.brickname_for)."""
    from dhs_spark.survey.bricks import brickname_for

    df = df.copy()
    df["brickname"] = brickname_for(df["ra"].to_numpy(), df["dec"].to_numpy()) if len(df) else np.array([], dtype=str)
    return df
