"""``dhs catalogs download --all --output-dir DIR --merge [--offline]``."""

from __future__ import annotations

import sys


def _download(args) -> int:
    from dhs_spark.catalogs.download import DEFAULT_REQUIRED, SOURCES, download_catalogs

    if not args.all and not args.source:
        print("ERROR catalogs download: give --all or at least one --source", file=sys.stderr)
        return 2
    sources = [s.key for s in SOURCES] if args.all else args.source
    urls = {k: v for k, v in (("vizier", args.vizier_url), ("lenscat", args.lenscat_url), ("rings", args.rings_url)) if v}
    try:
        result = download_catalogs(
            args.output_dir, offline=args.offline, merge=args.merge, supplied_dir=args.supplied_dir, sources=sources,
            required=tuple(args.require) if args.require is not None else DEFAULT_REQUIRED, urls=urls, timeout_s=args.timeout_s,
            dedup_radius_arcsec=args.dedup_radius_arcsec, exclusion_radius_arcsec=args.exclusion_radius_arcsec)
    except ValueError as exc:
        print(f"ERROR catalogs download: {exc}", file=sys.stderr)
        return 2
    for line in result.summary_lines():
        print(line)
    for name, path in result.outputs.items():
        print(f"wrote {name}: {path}")
    if result.missing_required:
        print(f"ERROR required catalogue(s) missing: {', '.join(result.missing_required)}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    from dhs_spark.catalogs.common import DEFAULT_TIMEOUT_S

    parser = subparsers.add_parser("catalogs", help="known-lens and hard-negative catalogues")
    sub = parser.add_subparsers(dest="catalogs_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("download", help="fetch (or load bundled/supplied) catalogues, normalise and merge them; "
                                        "exit 1 only when a required source is missing")
    p.add_argument("--all", action="store_true", help="every source")
    p.add_argument("--source", action="append", metavar="KEY", help="one source (repeatable): slacs_s4tm_bells, auger2009_theta_e, "
                                                                   "lenscat, stein2021, gz_decals_rings, darg2010_mergers")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--merge", action="store_true", help="write known_lenses_merged.parquet and hard_negatives_merged.parquet")
    p.add_argument("--offline", action="store_true", help="no network: bundled and supplied tables only")
    p.add_argument("--supplied-dir", default=None, help="where user-supplied tables (no licence to bundle) live; default OUTPUT_DIR/supplied")
    p.add_argument("--require", action="append", metavar="KEY",
                   help="a source whose absence fails the run (repeatable; default: slacs_s4tm_bells, lenscat, gz_decals_rings)")
    p.add_argument("--vizier-url", default=None, help="VizieR ASU-TSV endpoint")
    p.add_argument("--lenscat-url", default=None, help="lenscat catalogue CSV URL")
    p.add_argument("--rings-url", default=None, help="Galaxy Zoo DECaLS rings CSV URL")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="per-request timeout")
    p.add_argument("--dedup-radius-arcsec", type=float, default=2.0)
    p.add_argument("--exclusion-radius-arcsec", type=float, default=5.0, help="drop hard negatives this close to a known lens")
    p.set_defaults(func=_download)
