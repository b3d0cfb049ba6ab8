"""Join the hard-negative lookup to training stamps by sky position, not by id.

The lookup (written by ``dhs hardneg collect --create-lookup`` as
``hard_negative_lookup.parquet``, :data:`dhs_spark.hardneg.LOOKUP_FILE`) is a Parquet table
with columns ``ra``, ``dec`` (degrees, ICRS), ``healpix_index``, ``source`` (e.g. model_fp,
ring, merger), ``weight`` and ``score``. :func:`resolve_lookup_path` also finds it under the
seed's name ``hard_neg_lookup.parquet``, preferring the canonical one and logging which it read. A stamp whose host lies within ``radius_arcsec`` of a lookup entry is that hard
negative: ids are not trusted because the lookup and the stamps are made by different jobs
(and a re-run re-hashes ids), while the host position is the physical identity.

Only negatives (label 0) are up-weighted: a positive injected onto a hard-negative host is a
lens and keeps weight 1 (it is counted in the report). A stamp near several entries takes the
nearest one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dhs_spark.errors import InputDataError
from dhs_spark.hardneg import LEGACY_LOOKUP_FILES, LOOKUP_COLUMNS, LOOKUP_FILE  # the writer's names: one definition
from dhs_spark.healpix import nearest_within

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardNegativeLookup:
    """The lookup's columns as arrays (ra, dec in degrees; weight >= 0)."""

    ra: np.ndarray
    dec: np.ndarray
    source: np.ndarray
    weight: np.ndarray
    score: np.ndarray
    path: str = ""

    def __len__(self) -> int:
        return len(self.ra)


def resolve_lookup_path(path: str) -> str:
    """The lookup to read for ``path`` (local or s3://).

    - A directory holding :data:`~dhs_spark.hardneg.LOOKUP_FILE` (``hard_negative_lookup.parquet``)
      or a legacy name (``hard_neg_lookup.parquet``): that file, the canonical name first.
    - A file path named with one of these names that does not exist, next to an existing file
      with the other name: that file (e.g. the seed's config naming ``hard_neg_lookup.parquet``
      beside what ``dhs hardneg collect`` wrote).
    - Anything else: ``path`` itself (a file, or a directory of lookup parts read as one dataset).

    Each choice of a named file is logged (a warning when it is a legacy name or a substitute).
    """
    import pyarrow.fs as pafs

    from dhs_spark.jobs.paths import arrow_filesystem

    names = (LOOKUP_FILE, *LEGACY_LOOKUP_FILES)
    fs, inner = arrow_filesystem(str(path))
    text = str(path).rstrip("/")
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.Directory:
        for name in names:
            if fs.get_file_info(f"{inner.rstrip('/')}/{name}").type == pafs.FileType.File:
                chosen = f"{text}/{name}"
                if name == LOOKUP_FILE:
                    log.info("hard-negative lookup: %s (canonical name, in directory %s)", chosen, path)
                else:
                    log.warning("hard-negative lookup: %s (legacy name %s; the canonical name is %s)", chosen, name, LOOKUP_FILE)
                return chosen
        return str(path)
    if kind == pafs.FileType.NotFound and "/" in inner and inner.rsplit("/", 1)[1] in names:
        inner_dir, given = inner.rsplit("/", 1)
        text_dir = text.rsplit("/", 1)[0]
        for name in names:
            if name != given and fs.get_file_info(f"{inner_dir}/{name}").type == pafs.FileType.File:
                log.warning("hard-negative lookup: %s does not exist; reading %s/%s instead (the canonical name is %s)", path, text_dir, name, LOOKUP_FILE)
                return f"{text_dir}/{name}"
    return str(path)


def load_lookup(path: str) -> HardNegativeLookup:
    """Read and check a lookup Parquet file or directory (local or s3://), found by
    :func:`resolve_lookup_path` (canonical or legacy file name)."""
    import pyarrow.dataset as pads

    from dhs_spark.jobs.paths import arrow_filesystem

    path = resolve_lookup_path(path)
    fs, inner = arrow_filesystem(str(path))
    try:
        table = pads.dataset(inner, filesystem=fs, format="parquet").to_table()
    except (OSError, FileNotFoundError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read the hard-negative lookup ({exc})") from None
    missing = [c for c in LOOKUP_COLUMNS if c not in table.column_names]
    if missing:
        raise InputDataError(f"{path}: hard-negative lookup lacks columns {missing} (needs {list(LOOKUP_COLUMNS)})")
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("ra", "dec", "weight", "score")}
    for name in ("ra", "dec", "weight"):
        bad = ~np.isfinite(cols[name].astype(np.float64))
        if bad.any():
            raise InputDataError(f"{path}: non-finite {name} at row {int(np.flatnonzero(bad)[0])}")
    if np.any(cols["weight"] < 0):
        raise InputDataError(f"{path}: negative weight at row {int(np.flatnonzero(cols['weight'] < 0)[0])}")
    return HardNegativeLookup(
        ra=cols["ra"].astype(np.float64),
        dec=cols["dec"].astype(np.float64),
        source=table.column("source").to_numpy(zero_copy_only=False).astype(str),
        weight=cols["weight"].astype(np.float64),
        score=cols["score"].astype(np.float64),
        path=str(path),
    )


@dataclass(frozen=True)
class HardNegativeJoin:
    """Result of :func:`join_hard_negatives`.

    ``weights``: per-stamp loss weight (1 unless a matched negative). ``lookup_index``: matched
    lookup row per stamp (-1 if none). ``sep_arcsec``: separation of that match (inf if none).
    ``report``: counts per lookup source (see :func:`join_hard_negatives`).
    """

    weights: np.ndarray
    lookup_index: np.ndarray
    sep_arcsec: np.ndarray
    report: dict


def join_hard_negatives(
    stamp_ra: np.ndarray,
    stamp_dec: np.ndarray,
    stamp_label: np.ndarray,
    lookup: HardNegativeLookup,
    radius_arcsec: float,
    hard_neg_weight: float,
) -> HardNegativeJoin:
    """Match stamps (degrees) to the lookup within ``radius_arcsec``; a matched negative gets
    weight ``lookup.weight * hard_neg_weight``.

    ``report`` holds, per lookup ``source``: ``lookup_entries``, ``matched_negatives``,
    ``matched_positives`` (kept at weight 1), and ``unmatched_entries`` (lookup rows no stamp
    fell near: hard negatives the training set does not contain); plus totals and the radius.
    """
    if not hard_neg_weight >= 0:
        raise ValueError(f"hard_neg_weight must be >= 0, got {hard_neg_weight!r}")
    label = np.asarray(stamp_label)
    nearest, sep = nearest_within(stamp_ra, stamp_dec, lookup.ra, lookup.dec, radius_arcsec)
    matched = nearest >= 0
    neg = matched & (label == 0)
    weights = np.ones(len(label), dtype=np.float32)
    weights[neg] = (lookup.weight[nearest[neg]] * hard_neg_weight).astype(np.float32)
    per_source = {}
    used = np.zeros(len(lookup), dtype=bool)
    used[nearest[matched]] = True
    for src in sorted(set(lookup.source.tolist())):
        of_src = lookup.source == src
        src_of_stamp = np.zeros(len(label), dtype=bool)
        src_of_stamp[matched] = of_src[nearest[matched]]
        per_source[src] = {
            "lookup_entries": int(of_src.sum()),
            "matched_negatives": int((src_of_stamp & (label == 0)).sum()),
            "matched_positives": int((src_of_stamp & (label == 1)).sum()),
            "unmatched_entries": int((of_src & ~used).sum()),
        }
    report = {
        "radius_arcsec": float(radius_arcsec),
        "hard_neg_weight": float(hard_neg_weight),
        "n_stamps": int(len(label)),
        "matched_negatives": int(neg.sum()),
        "matched_positives": int((matched & (label == 1)).sum()),
        "by_source": per_source,
    }
    return HardNegativeJoin(weights=weights, lookup_index=nearest, sep_arcsec=sep, report=report)
