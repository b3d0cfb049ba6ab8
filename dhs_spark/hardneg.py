"""Real hard negatives (seed stage 3): mine model false positives, ring galaxies and mergers,
drop anything near a known lens, deduplicate by position, and write a position lookup that the
trainer joins on to up-weight these objects.

Sources and their loss weights (:class:`~dhs_spark.config.HardNegativeConfig`):

- ``model_fp``: *real, un-injected* rows of a model-score table with ``score >=
  min_score_threshold`` (weight ``weight_model_fp``, 3.0 by default). They are "false"
  positives because nothing was injected into them and every row within
  ``exclusion_radius_arcsec`` of a known lens is removed. See :func:`real_score_rows` for what
  proves a row real; an injected positive (``label == 1``) in the table is an error unless
  ``allow_injected`` (then it is dropped and logged), a null injection is always dropped
  (logged), and a table without the columns that prove a row real is an error.
- ``ring``: ring galaxies (``weight_ring``, 2.0); ``merger``: mergers (``weight_merger``, 1.5).

Each source keeps at most ``top_k_per_source`` rows (highest score first where the table has a
score, else table order). Rows within ``exclusion_radius_arcsec`` (5" by default) of a known lens
are dropped (so a lens is never trained as a negative): the known lenses are the given table
(``known_lenses_merged.parquet`` of ``dhs catalogs download --merge``, or a directory holding
it) or, when none is given, the catalogues bundled with the package (SLACS/S4TM/BELLS, lenscat
DESI candidates, Stein et al. 2021), a fallback that is logged. Then rows within
``dedup_radius_arcsec`` of each other are merged, keeping the highest-weight source (ties:
highest score) and listing all.

Lookup Parquet: canonical name :data:`LOOKUP_FILE` (``hard_negative_lookup.parquet``, the only
name written); the seed's name ``hard_neg_lookup.parquet`` (:data:`LEGACY_LOOKUP_FILES`) is
still found when reading (``trainer.hardneg_join.resolve_lookup_path``). Columns ``ra``,
``dec`` (deg), ``healpix_index`` (NESTED, nside :data:`LOOKUP_NSIDE` = 128), ``source``,
``weight``, ``score`` (NaN where the source has none), sorted by ``healpix_index``. The trainer
joins it by position (``trainer.hardneg_join``, using :func:`dhs_spark.healpix.nearest_within`).
"""

from __future__ import annotations

import logging
import math
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
"""The canonical lookup file name: the one :func:`collect_hard_negatives` writes."""
LEGACY_LOOKUP_FILES = ("hard_neg_lookup.parquet",)
"""Older names of the lookup (the seed's), accepted when reading, never written."""
TABLE_FILE = "hard_negatives.parquet"
KNOWN_LENS_FILE = "known_lenses_merged.parquet"
_RA_NAMES = ("ra", "RA", "ra_deg", "RA [deg]", "RAJ2000", "_RAJ2000")
_DEC_NAMES = ("dec", "DEC", "dec_deg", "DEC [deg]", "DEJ2000", "_DEJ2000")
_SCORE_NAMES = ("score", "p_lens", "prob")

# What a score row says about itself (dhs-score: label, is_control, is_null_injection; the Spark
# score stage: label, source_tag; stamps: hard_neg_source). See real_score_rows.
PROOF_COLUMNS = ("is_null_injection", "is_control", "source_tag", "hard_neg_source")
PARENT_TAG, STAMPS_TAG = "parent", "stamps"


def read_position_table(path, what: str):
    """Read a Parquet/CSV/TSV table, or a directory of Parquet files (the score stage's
    ``scores/``), with a position; returns a DataFrame with float ``ra``,
    ``dec`` (deg) and, where present, ``score`` and ``name``. Errors name the file and row."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{what}: file not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():  # a Parquet dataset directory, e.g. the score stage's scores/ (hive split=... folders too)
        import pyarrow.dataset as ds

        try:
            table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pandas()
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise InputDataError(f"{what}: {path}: not a readable Parquet directory ({exc})") from None
    elif suffix in (".parquet", ".pq"):
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


def _flags(df, name: str, path) -> tuple[np.ndarray, np.ndarray]:
    """``(is_true, is_false)`` of a nullable boolean column (both False where null or absent)."""
    import pandas as pd

    if name not in df.columns:
        return np.zeros(len(df), bool), np.zeros(len(df), bool)
    col = df[name]
    try:
        values = pd.array(col.astype(object).where(col.notna(), None).tolist(), dtype="boolean")
    except (TypeError, ValueError):
        bad = next(i for i, v in enumerate(col) if v is not None and not pd.isna(v) and v not in (True, False, 0, 1))
        raise InputDataError(f"model scores: {path}: column {name!r} must be true/false/null, row {bad} holds {col.iloc[bad]!r}") from None
    return values.fillna(False).to_numpy(bool), (~values).fillna(False).to_numpy(bool)


def _plain(value):
    """A numpy scalar as the Python value (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _strings(df, name: str) -> np.ndarray:
    """A string column as an object array (None where null or absent)."""
    if name not in df.columns:
        return np.full(len(df), None, dtype=object)
    col = df[name]
    return col.astype(object).where(col.notna(), None).to_numpy(dtype=object)


def real_score_rows(df, path, allow_injected: bool = False) -> tuple[np.ndarray, dict[str, int]]:
    """Which rows of a model-score table are real, un-injected objects (bool mask) and counts.

    A row is real when nothing was injected into it and it says so:

    - ``source_tag == 'parent'`` (Spark score stage: a parent-sample object cut from the coadds), or
    - ``label == 0`` and one of: ``is_null_injection`` false, ``is_control`` true (4a: a control
      is never a null injection), a hard-negative tag (``hard_neg_source`` not null, or a
      ``source_tag`` other than ``stamps``/``parent``).

    Never real: ``label == 1`` (an injected positive) and ``is_null_injection`` true (a null
    injection: label 0, but through the injection path). Null injections are dropped and
    logged. Injected positives, and rows that nothing proves real (e.g. label 0 with null
    flags), raise :class:`InputDataError` naming how many rows and which column, unless
    ``allow_injected``: then they are dropped and logged. A table without ``label`` (or
    ``source_tag``) and at least one of :data:`PROOF_COLUMNS` cannot prove anything and always
    raises.

    Counts: ``model_fp_rows_read``, ``model_fp_dropped_injected_positives``,
    ``model_fp_dropped_null_injections``, ``model_fp_dropped_unproven``, ``model_fp_real``.
    """
    import pandas as pd

    proof = [c for c in PROOF_COLUMNS if c in df.columns]
    if not proof or ("label" not in df.columns and "source_tag" not in df.columns):
        raise InputDataError(
            f"model scores: {path}: cannot prove any row is real (un-injected): the table needs 'label' and one of "
            f"{list(PROOF_COLUMNS)} (dhs-score writes label, is_control, is_null_injection; the score stage writes label, "
            f"source_tag); it has {list(df.columns)}"
        )
    n = len(df)
    label = pd.to_numeric(df["label"], errors="coerce").to_numpy(np.float64) if "label" in df.columns else np.full(n, np.nan)
    odd = np.isfinite(label) & ~np.isin(label, (0.0, 1.0))
    if odd.any():
        i = int(np.flatnonzero(odd)[0])
        raise InputDataError(f"model scores: {path}: column 'label' must be 0, 1 or null, row {i} holds {df['label'].iloc[i]!r}")
    null_injection, not_null_injection = _flags(df, "is_null_injection", path)
    control, _ = _flags(df, "is_control", path)
    tag = _strings(df, "source_tag")
    parent = tag == PARENT_TAG
    hard_neg_tag = np.array([t is not None and t not in (PARENT_TAG, STAMPS_TAG) for t in tag], bool)
    hard_neg_tag |= np.array([s is not None for s in _strings(df, "hard_neg_source")], bool)
    positive = label == 1
    injected = positive | null_injection
    real = ~injected & (parent | ((label == 0) & (not_null_injection | control | hard_neg_tag)))
    unproven = ~injected & ~real
    counts = {"model_fp_rows_read": n, "model_fp_dropped_injected_positives": int(positive.sum()),
              "model_fp_dropped_null_injections": int((null_injection & ~positive).sum()), "model_fp_dropped_unproven": int(unproven.sum()),
              "model_fp_real": int(real.sum())}  # fmt: skip
    problems = []
    if positive.any():
        problems.append(f"{counts['model_fp_dropped_injected_positives']} of {n} rows are injected positives (column 'label' == 1)")
    if unproven.any():
        i = int(np.flatnonzero(unproven)[0])
        shown = ", ".join(f"{c}={_plain(df[c].iloc[i])!r}" for c in ("label", *proof) if c in df.columns)
        problems.append(f"{counts['model_fp_dropped_unproven']} of {n} rows cannot be proven real by columns {['label', *proof]} (first: row {i}, {shown})")
    if problems and not allow_injected:
        raise InputDataError(f"model scores: {path}: {'; '.join(problems)}. Only real, un-injected rows may become model false positives: "
                             "drop these rows first, or pass --allow-injected (allow_injected=True) to drop them here")  # fmt: skip
    if problems:
        log.warning("model scores: %s: allow_injected: dropping %s", path, "; ".join(problems))
    if counts["model_fp_dropped_null_injections"]:
        log.warning("model scores: %s: dropping %d null injections (column 'is_null_injection' true): injected, so never model false positives",
                    path, counts["model_fp_dropped_null_injections"])  # fmt: skip
    return real, counts


def bundled_known_lenses():
    """The known lenses bundled with the package (SLACS/S4TM/BELLS of Du et al., lenscat DESI
    candidates and SLACS/BELLS, Stein et al. 2021) as one DataFrame with ``ra``, ``dec``,
    ``name``, ``catalogue``; not deduplicated (the exclusion only needs positions)."""
    import pandas as pd

    from dhs_spark.catalogs import lenscat, spectroscopic, stein2021

    frames = [source.load_local(None)[0] for source in (spectroscopic.SOURCE, lenscat.SOURCE, stein2021.SOURCE)]
    return pd.concat([f[["name", "ra", "dec", "catalogue"]] for f in frames], ignore_index=True)


def load_known_lenses(path=None) -> tuple[object, str]:
    """``(table with ra, dec, what it is)`` of the known lenses to exclude around: ``path`` (a
    Parquet/CSV file, or a directory holding :data:`KNOWN_LENS_FILE`), or the bundled
    catalogues when ``path`` is None (logged: an explicit fallback)."""
    if path is None:
        lenses = bundled_known_lenses()
        what = f"{len(lenses)} bundled known lenses (dhs_spark/data/catalogs: {', '.join(sorted(set(lenses['catalogue'])))})"
        log.warning("collect_hard_negatives: no known-lens table given: excluding around the %s", what)
        return lenses, what
    path = Path(path)
    if path.is_dir():
        path = path / KNOWN_LENS_FILE
    lenses = read_position_table(path, "known lenses")
    return lenses, f"{len(lenses)} known lenses of {path}"


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
    and counts (``<source>_in``, ``<source>_kept``, ``excluded_near_lens``, ``merged_duplicates``,
    ``known_lenses``, and for model scores those of :func:`real_score_rows`)."""

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
    allow_injected: bool = False,
) -> HardNegativeResult:
    """Collect hard negatives from the given sources (any may be None) as described in the
    module docstring; write ``hard_negatives.parquet`` and, with ``create_lookup``, the lookup
    :data:`LOOKUP_FILE` into ``output_dir``.

    ``model_scores_path``: only its real, un-injected rows can become ``model_fp`` (see
    :func:`real_score_rows`; ``allow_injected`` drops injected positives and unproven rows
    instead of raising). ``known_lens_path``: None -> the bundled known-lens catalogues."""
    import pandas as pd

    cfg = config if config is not None else HardNegativeConfig()
    if cfg.top_k_per_source < 1:
        raise InputDataError(f"HardNegativeConfig.top_k_per_source must be >= 1, got {cfg.top_k_per_source!r}")
    if not (isinstance(cfg.exclusion_radius_arcsec, (int, float)) and math.isfinite(cfg.exclusion_radius_arcsec) and cfg.exclusion_radius_arcsec > 0):
        raise InputDataError(f"HardNegativeConfig.exclusion_radius_arcsec must be a positive number of arcsec, got {cfg.exclusion_radius_arcsec!r}")
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
            real, real_counts = real_score_rows(df, path, allow_injected)
            counts |= real_counts
            df = df[real & (df["score"] >= cfg.min_score_threshold).to_numpy()]
        else:
            df = _only_type(df, source)
        counts[f"{source}_in"] = len(df)
        df = _top_k(df, cfg.top_k_per_source)
        parts.append(pd.DataFrame({"name": df["name"].astype(str).to_numpy(), "ra": df["ra"].to_numpy(), "dec": df["dec"].to_numpy(),
                                   "source": source, "weight": float(weight), "score": df["score"].to_numpy(dtype=np.float64)}))
    if not parts:
        raise InputDataError("collect_hard_negatives: give at least one of model_scores_path, ring_catalog_path, merger_catalog_path")
    table = pd.concat(parts, ignore_index=True)

    lenses, lenses_what = load_known_lenses(known_lens_path)
    near, _ = nearest_within(table["ra"].to_numpy(), table["dec"].to_numpy(), lenses["ra"].to_numpy(), lenses["dec"].to_numpy(),
                             cfg.exclusion_radius_arcsec)
    counts["known_lenses"] = len(lenses)
    counts["excluded_near_lens"] = int((near >= 0).sum())
    log.info("collect_hard_negatives: %d rows within %g arcsec of the %s dropped", counts["excluded_near_lens"], cfg.exclusion_radius_arcsec, lenses_what)
    table = table[near < 0].reset_index(drop=True)

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
    """Write the lookup columns of ``table`` sorted by HEALPix index (NESTED, nside 128) to
    ``path`` (by convention named :data:`LOOKUP_FILE`)."""
    lookup = table[list(LOOKUP_COLUMNS)].sort_values(["healpix_index", "ra", "dec"], kind="stable")
    lookup = lookup.astype({"ra": np.float64, "dec": np.float64, "healpix_index": np.int64, "weight": np.float64, "score": np.float64})
    lookup.to_parquet(path, index=False)
