"""``dhs hardneg collect --model-scores --ring-catalog --merger-catalog --known-lenses --output-dir --create-lookup
[--allow-injected] [--exclusion-radius-arcsec R]``.

Model false positives come only from real, un-injected score rows
(:func:`dhs_spark.hardneg.real_score_rows`); a score table holding injected positives is an
error unless ``--allow-injected``, which drops them (logged).
"""

from __future__ import annotations

import sys


def _collect(args) -> int:
    import dataclasses
    import logging

    from dhs_spark.config.experiment import HardNegativeConfig, from_yaml
    from dhs_spark.errors import ConfigErrors, InputDataError
    from dhs_spark.hardneg import collect_hard_negatives

    try:
        cfg = from_yaml(args.config).hard_negatives if args.config else HardNegativeConfig()
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"ERROR {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in (("min_score_threshold", args.min_score_threshold), ("top_k_per_source", args.top_k_per_source),
                                   ("exclusion_radius_arcsec", args.exclusion_radius_arcsec)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    try:
        result = collect_hard_negatives(model_scores_path=args.model_scores, ring_catalog_path=args.ring_catalog,
                                        merger_catalog_path=args.merger_catalog, known_lens_path=args.known_lenses,
                                        output_dir=args.output_dir, config=cfg, create_lookup=args.create_lookup,
                                        allow_injected=args.allow_injected)
    except InputDataError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    for key, value in result.counts.items():
        print(f"{key}: {value}")
    print(f"hard negatives: {len(result.table)} -> {result.table_path}")
    if result.lookup_path:
        print(f"lookup: {result.lookup_path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("hardneg", help="real hard-negative mining")
    sub = parser.add_subparsers(dest="hardneg_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("collect", help="model false positives + rings + mergers, minus known lenses, deduplicated, with a lookup")
    p.add_argument("--model-scores", default=None,
                   help="score Parquet/CSV with ra, dec, score and the columns that prove a row real: label plus is_control / "
                        "is_null_injection (dhs-score) or source_tag (the score stage). Only real, un-injected rows become model_fp")
    p.add_argument("--allow-injected", action="store_true",
                   help="drop injected positives (label 1) and rows not provable real from --model-scores instead of failing "
                        "(logged); they never become model false positives either way")
    p.add_argument("--ring-catalog", default=None, help="ring galaxies (e.g. hard_negatives_merged.parquet: rows with hardneg_type ring)")
    p.add_argument("--merger-catalog", default=None, help="mergers (e.g. hard_negatives_merged.parquet: rows with hardneg_type merger)")
    p.add_argument("--known-lenses", default=None,
                   help="known lenses to exclude around: a table or a directory holding known_lenses_merged.parquet "
                        "(dhs catalogs download --merge); default: the catalogues bundled with the package (logged)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--create-lookup", action="store_true", help="also write hard_negative_lookup.parquet for the trainer's position join")
    p.add_argument("--config", default=None, help="experiment YAML whose hard_negatives section sets thresholds and weights")
    p.add_argument("--min-score-threshold", type=float, default=None, help="model_fp: minimum score (default: config, 0.8)")
    p.add_argument("--top-k-per-source", type=int, default=None, help="rows kept per source (default: config, 5000)")
    p.add_argument("--exclusion-radius-arcsec", type=float, default=None,
                   help="drop every row within this many arcsec of a known lens (default: config hard_negatives.exclusion_radius_arcsec, 5.0)")
    p.set_defaults(func=_collect)
