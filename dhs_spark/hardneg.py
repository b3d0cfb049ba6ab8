"""Real hard negatives (seed stage 3): mine model false positives, ring galaxies and mergers,
drop anything near a known lens, deduplicate by position, and write a position lookup that the
trainer joins on to up-weight these objects.

Sources and their loss weights (:class:`~dhs_spark.config.HardNegativeConfig`):

- ``model_fp``: rows of a model-score table with ``score >= min_score_threshold`` (weight
  ``weight_model_fp``, 3.0 by default). They are "false" positives because every row within
  ``exclusion_radius_arcsec`` of a known lens is removed.
- ``ring``: ring galaxies (``weight_ring``, 2.0); ``merger``: mergers (``weight_merger``, 1.5).

Each source keeps at most ``top_k_per_source`` rows (highest score first where the table has a
score, else table order). Rows within ``exclusion_radius_arcsec`` of a known lens are dropped
(so a lens is never trained as a negative), then rows within ``dedup_radius_arcsec`` of each
other are merged, keeping the highest-weight source (ties: highest score) and listing all.

Lookup Parquet (``hard_negative_lookup.parquet``): ``ra``, ``dec`` (deg), ``healpix_index``
(NESTED, nside :data:`LOOKUP_NSIDE` = 128), ``source``, ``weight``, ``score`` (NaN where the
source has none), sorted by ``healpix_index``. The trainer joins it by position
(``trainer.hardneg_join``, using :func:`dhs_spark.healpix.nearest_within`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dhs_spark.config.experiment import HardNegativeConfig
from dhs_spark.errors import InputDataError
from dhs_spark.healpix import group_within, healpix_index, nearest_within

log = logging.getLogger(__name__)

LOOKUP_NSIDE = 128
LOOKUP_COLUMNS = ("ra", "dec", "healpix_index", "source", "weight", "score")
LOOKUP_FILE = "hard_negative_lookup.parquet"
TABLE_FILE = "hard_negatives.parquet"
_RA_NAMES = ("ra", "RA", "ra_deg", "RA [deg]", "RAJ2000", "_RAJ2000")
_DEC_NAMES = ("dec", "DEC", "dec_deg", "DEC [deg]", "DEJ2000", "_DEJ2000")
_SCORE_NAMES = ("score", "p_lens", "prob")


def read_position_table(path, what: str):
    """Read a Parquet/CSV/TSV table with a position; returns a DataFrame with float ``ra``,
    ``dec`` (deg) and, where present, ``score`` and ``name``. Errors name the file and row."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{what}: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    else:
        raise InputDataError(f"{what}: {path}: unsupported file type {suffix!r} (use .parquet, .csv or .tsv)")

    def pick(names):
        return next((c for c in names if c in table.columns), None)

    ra_col, dec_col, score_col = pick(_RA_NAMES), pick(_DEC_NAMES), pick(_SCORE_NAMES)
    if ra_col is None or dec_col is None:
        raise InputDataError(f"{what}: {path}: needs ra/dec columns (one of {_RA_NAMES} / {_DEC_NAMES}); has {list(table.columns)}")
    out = table.copy()
    out["ra"] = pd.to_numeric(table[ra_col], errors="coerce").astype(np.float64)
    out["dec"] = pd.to_numeric(table[dec_col], errors="coerce").astype(np.float64)
    bad = ~np.isfinite(out["ra"]) | ~np.isfinite(out["dec"]) | (out["dec"].abs() > 90)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputDataError(f"{what}: {path}: row {i} has no valid position (ra={table[ra_col].iloc[i]!r}, dec={table[dec_col].iloc[i]!r})")
    out["score"] = pd.to_numeric(table[score_col], errors="coerce").astype(np.float64) if score_col else np.nan
    if "name" not in out.columns:
        out["name"] = ""
    return out.reset_index(drop=True)


def _top_k(df, k: int):
    if "score" in df.columns and df["score"].notna().any():
        df = df.sort_values("score", ascending=False, kind="stable", na_position="last")
    return df.head(k)


def _only_type(df, hardneg_type: str):
    """A merged hard-negative table (``dhs catalogs download``) holds rings and mergers: keep one type."""
    return df[df["hardneg_type"] == hardneg_type] if "hardneg_type" in df.columns else df


@dataclass
class HardNegativeResult:
    """What :func:`collect_hard_negatives` produced: the deduplicated table, the paths written,
    and per-source counts (``<source>_in``, ``<source>_kept``, ``excluded_near_lens``, ``merged_duplicates``)."""

    table: object
    table_path: Path
    lookup_path: Optional[Path]
    counts: dict[str, int] = field(default_factory=dict)


def collect_hard_negatives(
    model_scores_path=None,
    ring_catalog_path=None,
    merger_catalog_path=None,
    known_lens_path=None,
    output_dir=".",
    config: HardNegativeConfig = None,
    create_lookup: bool = True,
) -> HardNegativeResult:
    """Collect hard negatives from the given sources (any may be None) as described in the
    module docstring; write ``hard_negatives.parquet`` and, with ``create_lookup``,
    ``hard_negative_lookup.parquet`` into ``output_dir``."""
    import pandas as pd

    cfg = config if config is not None else HardNegativeConfig()
    if cfg.top_k_per_source < 1:
        raise InputDataError(f"HardNegativeConfig.top_k_per_source must be >= 1, got {cfg.top_k_per_source!r}")
    counts: dict[str, int] = {}
    parts = []
    specs = (("model_fp", model_scores_path, cfg.weight_model_fp), ("ring", ring_catalog_path, cfg.weight_ring),
             ("merger", merger_catalog_path, cfg.weight_merger))
    for source, path, weight in specs:
        if path is None:
            continue
        df = read_position_table(path, f"{source} table")
        if source == "model_fp":
            if df["score"].isna().all():
                raise InputDataError(f"model scores: {path}: no score column (one of {_SCORE_NAMES})")
            df = df[df["score"] >= cfg.min_score_threshold]
        else:
            df = _only_type(df, source)
        counts[f"{source}_in"] = len(df)
        df = _top_k(df, cfg.top_k_per_source)
        parts.append(pd.DataFrame({"name": df["name"].astype(str).to_numpy(), "ra": df["ra"].to_numpy(), "dec": df["dec"].to_numpy(),
                                   "source": source, "weight": float(weight), "score": df["score"].to_numpy(dtype=np.float64)}))
    if not parts:
        raise InputDataError("collect_hard_negatives: give at least one of model_scores_path, ring_catalog_path, merger_catalog_path")
    table = pd.concat(parts, ignore_index=True)

    if known_lens_path is not None:
        lenses = read_position_table(known_lens_path, "known lenses")
        near, _ = nearest_within(table["ra"].to_numpy(), table["dec"].to_numpy(), lenses["ra"].to_numpy(), lenses["dec"].to_numpy(),
                                 cfg.exclusion_radius_arcsec)
        counts["excluded_near_lens"] = int((near >= 0).sum())
        table = table[near < 0].reset_index(drop=True)
    else:
        log.warning("collect_hard_negatives: no known-lens table given, so no exclusion around known lenses")

    # Highest weight first, then highest score, so each position group's leader is its best source.
    table = table.sort_values(["weight", "score"], ascending=[False, False], kind="stable", na_position="last").reset_index(drop=True)
    table["group"] = group_within(table["ra"].to_numpy(), table["dec"].to_numpy(), cfg.dedup_radius_arcsec) if len(table) else []
    grouped = table.groupby("group", sort=True)
    all_sources = grouped["source"].agg(lambda s: "|".join(dict.fromkeys(s)))
    table = table.loc[grouped.head(1).index].set_index("group")
    table["all_sources"] = all_sources
    counts["merged_duplicates"] = int(grouped.size().sum() - len(table))
    table = table.reset_index(drop=True)
    table["healpix_index"] = healpix_index(table["ra"].to_numpy(), table["dec"].to_numpy(), LOOKUP_NSIDE) if len(table) else np.zeros(0, np.int64)
    for source, _, _ in specs:
        if f"{source}_in" in counts:
            counts[f"{source}_kept"] = int((table["source"] == source).sum())

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / TABLE_FILE
    table.to_parquet(table_path, index=False)
    lookup_path = None
    if create_lookup:
        lookup_path = out_dir / LOOKUP_FILE
        write_lookup(table, lookup_path)
    return HardNegativeResult(table=table, table_path=table_path, lookup_path=lookup_path, counts=counts)


def write_lookup(table, path) -> None:
    """Write the lookup columns of ``table`` sorted by HEALPix index (NESTED, nside 128)."""
    lookup = table[list(LOOKUP_COLUMNS)].sort_values(["healpix_index", "ra", "dec"], kind="stable")
    lookup = lookup.astype({"ra": np.float64, "dec": np.float64, "healpix_index": np.int64, "weight": np.float64, "score": np.float64})
    lookup.to_parquet(path, index=False)
