"""Download (or load) every catalogue source, normalise, merge and report what came from where.

For each source: unless offline, try its online query (with a timeout); on any failure fall back
to the supplied table (user's copy) or the bundled one, and record that it fell back and why.
A source with neither is "missing". The download fails (``missing_required`` non-empty) only
when a *required* source is missing; by default the required sources are the ones the package
bundles, so an offline run always has them.

Outputs in ``output_dir``: ``sources/<key>.parquet`` (each normalised source),
``known_lenses_merged.parquet`` and ``hard_negatives_merged.parquet`` (with ``--merge``),
``hard_negatives_excluded.parquet`` (the look-alikes dropped near a known lens) and
``catalog_summary.json``. Next step: ``dhs crossmatch`` on the merged tables against the DR10
footprint (they already carry ``brickname``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from dhs_spark.catalogs import lenscat, mergers, rings, spectroscopic, stein2021
from dhs_spark.catalogs.common import DEFAULT_TIMEOUT_S, VIZIER_ASU_URL
from dhs_spark.catalogs.merge import DEDUP_RADIUS_ARCSEC, add_brickname, deduplicate, exclude_near

log = logging.getLogger(__name__)

SOURCES = (spectroscopic.SOURCE, spectroscopic.AUGER_SOURCE, lenscat.SOURCE, stein2021.SOURCE, rings.SOURCE, mergers.SOURCE)
SOURCES_BY_KEY = {s.key: s for s in SOURCES}
DEFAULT_REQUIRED = ("slacs_s4tm_bells", "lenscat", "gz_decals_rings")
DEFAULT_URLS = {"vizier": VIZIER_ASU_URL, "lenscat": lenscat.LENSCAT_URL, "rings": rings.RINGS_URL}
LENS_PRIORITY = ("slacs_s4tm_bells", "lenscat", "stein2021")  # who names a merged lens
HARDNEG_TYPES = {"gz_decals_rings": "ring", "darg2010_mergers": "merger"}


@dataclass
class SourceReport:
    """Where one source came from. ``status``: 'online', 'supplied', 'bundled' or 'missing';
    ``fell_back``: an online query was tried and failed; ``online_error``/``local_error`` say why."""

    key: str
    kind: str
    required: bool
    status: str = "missing"
    n_rows: int = 0
    location: str = ""
    fell_back: bool = False
    online_error: str = ""
    local_error: str = ""


@dataclass
class DownloadResult:
    reports: list[SourceReport]
    missing_required: list[str]
    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        lines = []
        for r in self.reports:
            how = r.status + (" (fell back: online failed)" if r.fell_back and r.status != "missing" else "")
            tag = "required" if r.required else "optional"
            line = f"{r.key:<20} {tag:<8} {how:<40} rows={r.n_rows:<6} {r.location}"
            if r.fell_back:
                line += f"\n    online error: {r.online_error}"
            if r.status == "missing":
                line += f"\n    MISSING: {r.local_error}"
            lines.append(line)
        fell = [r.key for r in self.reports if r.fell_back and r.status != "missing"]
        missing = [r.key for r in self.reports if r.status == "missing"]
        lines.append(f"fell back to local data: {', '.join(fell) or 'none'}")
        lines.append(f"missing: {', '.join(missing) or 'none'}"
                     + (f" (REQUIRED missing: {', '.join(self.missing_required)})" if self.missing_required else ""))
        lines.extend(f"{k}: {v}" for k, v in self.counts.items())
        return lines


def _load_source(source, offline: bool, supplied_dir: Optional[Path], urls: dict, timeout_s: float, report: SourceReport):
    if not offline and source.fetch_online is not None:
        try:
            df = source.fetch_online(urls, timeout_s)
            report.status, report.location = "online", str(urls)
            return df
        except Exception as exc:  # noqa: BLE001 - any failure of the network path means "fall back", recorded below
            report.fell_back = True
            report.online_error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: online query failed (%s); falling back to local data", source.key, report.online_error)
    try:
        df, path, origin = source.load_local(supplied_dir)
    except FileNotFoundError as exc:
        report.local_error = str(exc).strip("'\"")
        return None
    report.status, report.location = origin, str(path)
    return df


def download_catalogs(
    output_dir,
    offline: bool = False,
    merge: bool = True,
    supplied_dir=None,
    sources: Optional[list[str]] = None,
    required: tuple[str, ...] = DEFAULT_REQUIRED,
    urls: Optional[dict] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    dedup_radius_arcsec: float = DEDUP_RADIUS_ARCSEC,
    exclusion_radius_arcsec: float = 5.0,
) -> DownloadResult:
    """Fetch/load ``sources`` (keys of :data:`SOURCES`; all by default), write them and, with
    ``merge``, the merged known-lens and hard-negative tables. ``supplied_dir`` defaults to
    ``output_dir/supplied``. Unknown source keys raise ``ValueError`` naming them."""
    output_dir = Path(output_dir)
    supplied_dir = Path(supplied_dir) if supplied_dir else output_dir / "supplied"
    keys = list(sources) if sources else [s.key for s in SOURCES]
    unknown = [k for k in [*keys, *required] if k not in SOURCES_BY_KEY]
    if unknown:
        raise ValueError(f"unknown catalogue source(s) {unknown}; known: {sorted(SOURCES_BY_KEY)}")
    urls = {**DEFAULT_URLS, **(urls or {})}
    (output_dir / "sources").mkdir(parents=True, exist_ok=True)

    frames, reports = {}, []
    for key in keys:
        source = SOURCES_BY_KEY[key]
        report = SourceReport(key=key, kind=source.kind, required=key in required)
        df = _load_source(source, offline, supplied_dir, urls, timeout_s, report)
        if df is not None:
            report.n_rows = len(df)
            frames[key] = df
            df.to_parquet(output_dir / "sources" / f"{key}.parquet", index=False)
        reports.append(report)
    missing_required = [r.key for r in reports if r.required and r.status == "missing"]
    result = DownloadResult(reports=reports, missing_required=missing_required)

    if merge:
        spectro = frames.get("slacs_s4tm_bells")
        if spectro is not None and "auger2009_theta_e" in frames:
            spectro = spectroscopic.add_theta_e(spectro, frames["auger2009_theta_e"])
            frames["slacs_s4tm_bells"] = spectro
        lens_frames = [frames[k] for k in LENS_PRIORITY if k in frames]
        lenses = add_brickname(deduplicate(lens_frames, dedup_radius_arcsec))
        hn_frames = [frames[k].assign(hardneg_type=t) for k, t in HARDNEG_TYPES.items() if k in frames]
        hardneg = deduplicate(hn_frames, dedup_radius_arcsec, extra_first=("hardneg_type",))
        hardneg, excluded = exclude_near(hardneg, lenses, exclusion_radius_arcsec)
        hardneg = add_brickname(hardneg)
        outputs = {"known_lenses": output_dir / "known_lenses_merged.parquet",
                   "hard_negatives": output_dir / "hard_negatives_merged.parquet",
                   "hard_negatives_excluded": output_dir / "hard_negatives_excluded.parquet"}
        lenses.to_parquet(outputs["known_lenses"], index=False)
        hardneg.to_parquet(outputs["hard_negatives"], index=False)
        excluded.to_parquet(outputs["hard_negatives_excluded"], index=False)
        result.outputs = {k: str(v) for k, v in outputs.items()}
        result.counts = {
            "known_lenses_in": int(sum(len(f) for f in lens_frames)), "known_lenses_merged": len(lenses),
            "hard_negatives_in": int(sum(len(f) for f in hn_frames)), "hard_negatives_merged": len(hardneg),
            "hard_negatives_excluded_near_lens": len(excluded),
        }
        for cat in sorted({c for cats in lenses["catalogue"] for c in cats.split("|")}):
            result.counts[f"known_lenses_from_{cat}"] = int(lenses["catalogue"].str.split("|").map(lambda cs, c=cat: c in cs).sum())
    summary = {"offline": offline, "supplied_dir": str(supplied_dir), "urls": urls, "timeout_s": timeout_s,
               "dedup_radius_arcsec": dedup_radius_arcsec, "exclusion_radius_arcsec": exclusion_radius_arcsec,
               "sources": [asdict(r) for r in reports], "missing_required": missing_required,
               "outputs": result.outputs, "counts": result.counts}
    (output_dir / "catalog_summary.json").write_text(json.dumps(summary, indent=2))
    return result
