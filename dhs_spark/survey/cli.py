"""``dhs crossmatch`` and ``dhs survey mock|parent``.

- ``dhs crossmatch --catalog CAT --brick-metadata BRICKS --output-dir DIR [--bands grz]``: every
  catalogue row with its brick, in-footprint flag, outside reason and brick PSF/depth/E(B-V),
  written to ``DIR/crossmatch.parquet`` with a ``DIR/crossmatch_summary.json``.
- ``dhs survey mock --output-dir DIR [--n-bricks 4 --brick-size-pix 800 --seed 42]``: build the
  mock survey (:mod:`dhs_spark.survey.mock`).
- ``dhs survey parent --sweeps FILE... --output DIR [--variant v3_color_relaxed --exclude-psf]``:
  the LRG parent sample as a local Spark job over sweep files (FITS or Parquet).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _crossmatch(args) -> int:
    from dhs_spark.errors import InputDataError
    from dhs_spark.survey.bricks import load_bricks_table
    from dhs_spark.survey.footprint import crossmatch, read_catalog

    try:
        bricks = load_bricks_table(args.brick_metadata, psfdepth_unit=args.psfdepth_unit)
        catalog = read_catalog(args.catalog)
        result = crossmatch(catalog, bricks, bands=tuple(args.bands))
    except InputDataError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.to_parquet(out / "crossmatch.parquet", index=False)
    reasons = result["outside_reason"].value_counts().to_dict()
    summary = {
        "catalog": str(args.catalog),
        "brick_metadata": str(args.brick_metadata),
        "bands": args.bands,
        "n_rows": int(len(result)),
        "n_in_footprint": int(result["in_footprint"].sum()),
        "outside_reasons": {str(k): int(v) for k, v in reasons.items()},
    }
    (out / "crossmatch_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


def _mock(args) -> int:
    from dhs_spark.survey.mock import build_mock_survey

    mock = build_mock_survey(args.output_dir, n_bricks=args.n_bricks, brick_size_pix=args.brick_size_pix, seed=args.seed)
    print(json.dumps({"root": str(mock.root), "bricks": list(mock.bricknames), "bricks_table": str(mock.bricks_table), "catalog": str(mock.catalog_parquet)}))
    return 0


def _parent(args) -> int:
    from dhs_spark.spark_session import local_spark_session
    from dhs_spark.survey.parent_spark import build_parent_sample

    spark = local_spark_session(app_name="dhs-parent", master=args.master)
    try:
        df = build_parent_sample(spark, args.sweeps, variant=args.variant, exclude_types=("PSF",) if args.exclude_psf else None)
        df.write.mode("overwrite").parquet(args.output)
        n = spark.read.parquet(args.output).count()  # count what was written, not _SUCCESS
    finally:
        spark.stop()
    print(json.dumps({"output": args.output, "variant": args.variant, "n_rows": n}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("crossmatch", help="match a catalogue to DR10 bricks: brick, footprint flag, PSF, depth")
    p.add_argument("--catalog", required=True, help="CSV, Parquet or FITS table with ra/dec (degrees)")
    p.add_argument("--brick-metadata", required=True, help="survey-bricks-dr10-south.fits.gz or a CSV/Parquet excerpt")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--bands", default="grz", help="bands a brick must cover to count as in the footprint (default grz)")
    p.add_argument("--psfdepth-unit", default="auto", choices=("auto", "invvar", "mag"), help="unit of psfdepth_* in the bricks file")
    p.set_defaults(func=_crossmatch)

    survey = subparsers.add_parser("survey", help="mock survey and LRG parent sample")
    sub = survey.add_subparsers(dest="survey_command", metavar="ACTION")
    sub.required = True
    m = sub.add_parser("mock", help="write a small deterministic mock survey in the DR10 coadd layout")
    m.add_argument("--output-dir", required=True)
    m.add_argument("--n-bricks", type=int, default=4)
    m.add_argument("--brick-size-pix", type=int, default=800)
    m.add_argument("--seed", type=int, default=42)
    m.set_defaults(func=_mock)
    pp = sub.add_parser("parent", help="LRG parent sample from sweep files (FITS or Parquet), local Spark")
    pp.add_argument("--sweeps", nargs="+", required=True)
    pp.add_argument("--output", required=True, help="output Parquet directory")
    pp.add_argument("--variant", default="v3_color_relaxed")
    pp.add_argument("--exclude-psf", action="store_true", help="also drop TYPE == PSF rows (optional morphology cut)")
    pp.add_argument("--master", default="local[2]")
    pp.set_defaults(func=_parent)
