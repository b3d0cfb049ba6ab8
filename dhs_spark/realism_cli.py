"""``dhs realism arcs`` and ``dhs realism probe`` (:mod:`dhs_spark.realism`).

::

    dhs realism arcs [--cutouts DIR] [--stamps PARQUET] [--ps1-dir DIR] --output DIR
    dhs realism probe --checkpoint C (--real-cutouts DIR | --known-lenses CAT [--cutout-service-url U | --coadd-root R])
                      --stamps PARQUET --output DIR [--fail-on-gate]

``arcs`` exits 0 (it measures; it does not judge). ``probe`` exits 0, or 3 with
``--fail-on-gate`` when a probe gate failed or could not be computed; 2 on bad input.
"""

from __future__ import annotations

import sys


def _arcs(args) -> int:
    from dhs_spark.errors import InputDataError
    from dhs_spark.realism import run_arcs

    if not (args.cutouts or args.stamps or args.ps1_dir):
        print("ERROR realism arcs: give at least one of --cutouts, --stamps, --ps1-dir", file=sys.stderr)
        return 2
    try:
        summary = run_arcs(args.output, cutouts_dir=args.cutouts, stamps=args.stamps, ps1_path=args.ps1_dir, stamp_size=args.stamp_size,
                           max_stamps=args.max_stamps, seed=args.seed, split=args.split, include_controls=not args.no_controls)
    except InputDataError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    for name, s in summary["sets"].items():
        snr, gr, rz = s["arc_snr"], s["g_r"], s["r_z"]
        print(f"{name}: n={s['n']} arc_snr median={snr['median']} [p10 {snr['p10']}, p90 {snr['p90']}] "
              f"g-r median={gr['median']} (n={gr['n']}) r-z median={rz['median']} (n={rz['n']})")
    print(f"table: {args.output}/arcs.parquet  summary: {args.output}/arcs_summary.json")
    return 0


def _real_lenses(args):
    """(images, meta, rejects) of the real lenses: a cutout directory, or a catalogue with a cutout source."""
    import numpy as np
    import pandas as pd

    from dhs_spark.anchors import CoaddCutouts, ServiceCutouts, read_anchor_table
    from dhs_spark.errors import InputDataError, RejectError
    from dhs_spark.realism import load_cutout_dir

    if args.real_cutouts:
        images, _, meta = load_cutout_dir(args.real_cutouts, stamp_size=None)
        return np.stack(images), meta, []
    table, path = read_anchor_table(args.known_lenses, "known_lenses_merged.parquet", "known lenses")
    if args.coadd_root:
        source = CoaddCutouts(args.coadd_root, cache_dir=args.cache_dir)
    elif args.cutout_service_url:
        source = ServiceCutouts(args.cutout_service_url, cache_dir=args.cache_dir)
    else:
        raise InputDataError("realism probe: --known-lenses needs --cutout-service-url or --coadd-root")
    images, keep, rejects = [], [], []
    for i, row in enumerate(table.itertuples()):
        try:
            images.append(source.get(float(row.ra), float(row.dec))[0])
            keep.append(i)
        except RejectError as exc:
            rejects.append({"name": row.name, "reason": exc.reason, "detail": exc.detail})
    if not images:
        raise InputDataError(f"realism probe: no cutout for any of the {len(table)} lenses of {path}")
    meta = table.iloc[keep].reset_index(drop=True)
    cols = [c for c in ("name", "ra", "dec", "grade", "catalogue", "theta_e_arcsec") if c in meta.columns]
    return np.stack(images), pd.DataFrame(meta[cols]), rejects


def _probe(args) -> int:
    import json
    from pathlib import Path

    from dhs_spark.errors import InputDataError
    from dhs_spark.realism import ProbeConfig, load_stamps, run_probe

    if bool(args.real_cutouts) == bool(args.known_lenses):
        print("ERROR realism probe: give exactly one of --real-cutouts and --known-lenses", file=sys.stderr)
        return 2
    if args.coadd_root and args.cutout_service_url:
        print("ERROR realism probe: give at most one of --coadd-root and --cutout-service-url", file=sys.stderr)
        return 2
    cfg = ProbeConfig(auc_max=args.auc_max, n_folds=args.n_folds, n_permutations=args.n_permutations, n_bootstrap=args.n_bootstrap,
                      max_injected=args.max_injected, match_per_real=args.match_per_real,
                      theta_e_window_arcsec=tuple(args.theta_e_window), bright_mag_max=args.bright_mag_max,
                      recall_gap_max=args.recall_gap_max, score_threshold=args.score_threshold)
    try:
        real, real_meta, rejects = _real_lenses(args)
        injected, inj_meta = load_stamps(args.stamps, "injected", cfg.max_injected, args.seed, args.split, stamp_size=None)
        report = run_probe(args.checkpoint, real, real_meta, injected, inj_meta, args.output, seed=args.seed, config=cfg, device=args.device)
    except InputDataError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    if rejects:
        (Path(args.output) / "probe_rejects.json").write_text(json.dumps(rejects, indent=2))
    gates = report["gates"]
    for name, g in gates["gates"].items():
        print(f"{name}: value={g['value']} interval={g.get('interval')} threshold={g['threshold']} pass={g['pass']} {g['reason']}")
        if g["details"].get("caveat"):
            print(f"  caveat: {g['details']['caveat']}")
    print(f"report: {args.output}/probe_report.md ({len(rejects)} lenses without a cutout)")
    ok = gates["all_passed"] and not gates["not_computable"]
    return 0 if ok or not args.fail_on_gate else 3


def register(subparsers) -> None:
    from dhs_spark.realism import DEFAULT_STAMP_SIZE, ProbeConfig

    d = ProbeConfig()
    parser = subparsers.add_parser("realism", help="injection realism: arc colours and visibility, the linear-probe gate")
    sub = parser.add_subparsers(dest="realism_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("arcs", help="host-subtracted arc colours and arc visibility of real lenses and injections, side by side")
    p.add_argument("--cutouts", default=None, help="directory of real DR10 .npz cutouts (key cutout (H, W, 3) nmgy)")
    p.add_argument("--stamps", default=None, help="stamp Parquet file or directory (injections and controls)")
    p.add_argument("--ps1-dir", default=None, help="directory holding sled_ps1_lenses.npz (or the file)")
    p.add_argument("--output", required=True)
    p.add_argument("--stamp-size", type=int, default=DEFAULT_STAMP_SIZE, help="crop DR10 cutouts and stamps about the centre to this size (px)")
    p.add_argument("--max-stamps", type=int, default=2000, help="stamps per set (deterministic subset by task_id hash)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None)
    p.add_argument("--no-controls", action="store_true", help="measure injections only")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_arcs)

    p = sub.add_parser("probe", help="linear probe on the CNN's penultimate features: real lenses vs injections (a gate)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--real-cutouts", default=None, help="directory of real lens .npz cutouts")
    p.add_argument("--known-lenses", default=None, help="known-lens catalogue (directory with known_lenses_merged.parquet, or the file)")
    p.add_argument("--cutout-service-url", default=None, help="Legacy Survey cutout service base URL (with --known-lenses)")
    p.add_argument("--coadd-root", default=None, help="DR10 coadd root (with --known-lenses)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--stamps", required=True, help="stamp Parquet file or directory")
    p.add_argument("--split", choices=("train", "val", "test"), default=None, help="injections of this split only")
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--auc-max", type=float, default=d.auc_max, help="probe AUC at or below which the gate passes")
    p.add_argument("--n-folds", type=int, default=d.n_folds)
    p.add_argument("--n-permutations", type=int, default=d.n_permutations)
    p.add_argument("--n-bootstrap", type=int, default=d.n_bootstrap)
    p.add_argument("--max-injected", type=int, default=d.max_injected)
    p.add_argument("--match-per-real", type=int, default=d.match_per_real)
    p.add_argument("--theta-e-window", type=float, nargs=2, default=list(d.theta_e_window_arcsec), metavar=("LO", "HI"))
    p.add_argument("--bright-mag-max", type=float, default=d.bright_mag_max)
    p.add_argument("--recall-gap-max", type=float, default=d.recall_gap_max)
    p.add_argument("--score-threshold", type=float, default=d.score_threshold)
    p.add_argument("--fail-on-gate", action="store_true", help="exit 3 unless every probe gate was computed and passed")
    p.set_defaults(func=_probe)
