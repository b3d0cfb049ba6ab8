"""``dhs anchors compute --known-lens-dir --hard-neg-dir (--checkpoint | --scores) --output-dir [--device] [--stamp-size]``.

With ``--checkpoint`` the cutouts are cropped to the checkpoint's training stamp size
(``dhs_spark.anchors.crop_centre``); ``--fail-on-gate`` exits 3 unless every anchor gate was
computed and passed."""

from __future__ import annotations

import sys


def _compute(args) -> int:
    from dhs_spark.anchors import CoaddCutouts, NpzCutoutDirectory, ServiceCutouts, run_anchor_baseline
    from dhs_spark.config.experiment import EvaluationConfig, from_yaml
    from dhs_spark.errors import ConfigErrors, InputDataError

    if (args.scores is None) == (args.checkpoint is None):
        print("ERROR anchors compute: give exactly one of --checkpoint and --scores", file=sys.stderr)
        return 2
    sources = [s for s in (args.cutout_dir, args.coadd_root, args.cutout_service_url) if s]
    if len(sources) > 1:
        print("ERROR anchors compute: give at most one of --cutout-dir, --coadd-root, --cutout-service-url", file=sys.stderr)
        return 2
    try:
        cfg = from_yaml(args.config) if args.config else None
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"ERROR {err}", file=sys.stderr)
        return 2
    evaluation = cfg.evaluation if cfg else EvaluationConfig()
    if args.n_bootstrap is not None:
        evaluation.n_bootstrap = args.n_bootstrap
    seed = cfg.seeds.global_seed if cfg else args.seed
    try:
        if args.cutout_dir:
            cutouts = NpzCutoutDirectory(args.cutout_dir)
        elif args.coadd_root:
            cutouts = CoaddCutouts(args.coadd_root, cache_dir=args.cache_dir)
        elif args.cutout_service_url:
            cutouts = ServiceCutouts(args.cutout_service_url, cache_dir=args.cache_dir)
        else:
            cutouts = None
        report = run_anchor_baseline(args.known_lens_dir, args.hard_neg_dir, args.output_dir, scores_path=args.scores,
                                     checkpoint_path=args.checkpoint, device=args.device, cutouts=cutouts, evaluation=evaluation,
                                     seed=seed, arc_snr_min=args.arc_snr_min, stamp_size=args.stamp_size)
    except InputDataError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    gates = report["gates"]
    print(f"anchor gate: {'PASS' if report['anchor_gate_passed'] else 'FAIL'}  failed={gates['failed']} not_computable={gates['not_computable']}")
    for name, g in gates["gates"].items():
        print(f"  {name}: value={g['value']} threshold={g['threshold']} pass={g['pass']} {g['reason']}")
    print(f"report: {args.output_dir}/anchor_report.md")
    return 0 if report["anchor_gate_passed"] or not args.fail_on_gate else 3


def register(subparsers) -> None:
    from dhs_spark.anchors import ARC_VISIBLE_SNR

    parser = subparsers.add_parser("anchors", help="anchor baseline: real lenses and real hard negatives, with a gate")
    sub = parser.add_subparsers(dest="anchors_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("compute", help="score anchors and write metrics (JSON, markdown, PNGs)")
    p.add_argument("--known-lens-dir", required=True, help="directory with known_lenses_merged.parquet, or the file")
    p.add_argument("--hard-neg-dir", required=True, help="directory with hard_negatives_merged.parquet, or the file")
    p.add_argument("--checkpoint", default=None, help="model checkpoint scored with trainer.score.score_images")
    p.add_argument("--scores", default=None, help="Parquet/CSV of precomputed scores (name or ra/dec, score)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cutout-dir", default=None, help="directory of .npz cutouts (key cutout (101,101,3) nmgy, meta_ra, meta_dec)")
    p.add_argument("--coadd-root", default=None, help="DR10 coadd root (local or s3://) to cut stamps from")
    p.add_argument("--cutout-service-url", default=None, help="Legacy Survey cutout service base URL")
    p.add_argument("--cache-dir", default=None, help="cache for downloaded coadds / cutouts")
    p.add_argument("--config", default=None, help="experiment YAML: evaluation thresholds and seed")
    p.add_argument("--seed", type=int, default=42, help="bootstrap seed (the config's global_seed wins when --config is given)")
    p.add_argument("--n-bootstrap", type=int, default=None)
    p.add_argument("--arc-snr-min", type=float, default=ARC_VISIBLE_SNR, help="arc SNR at which a lens counts as visible in DR10")
    p.add_argument("--stamp-size", type=int, default=None,
                   help="crop cutouts about their centre to this many px (default: the checkpoint's data.stamp_size; none with --scores)")
    p.add_argument("--fail-on-gate", action="store_true", help="exit 3 unless every anchor gate was computed and passed")
    p.set_defaults(func=_compute)
