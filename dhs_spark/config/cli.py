"""``dhs config validate FILE...`` and ``dhs config show FILE``."""

from __future__ import annotations

import sys

import yaml


def _validate(args) -> int:
    from dhs_spark.config.experiment import from_yaml
    from dhs_spark.errors import ConfigErrors

    n_bad = 0
    for path in args.files:
        try:
            from_yaml(path)
        except ConfigErrors as exc:
            n_bad += 1
            for err in exc.errors:
                print(f"ERROR {err}", file=sys.stderr)
        else:
            print(f"ok {path}")
    return 2 if n_bad else 0


def _show(args) -> int:
    from dhs_spark.config.experiment import from_yaml
    from dhs_spark.errors import ConfigErrors

    try:
        cfg = from_yaml(args.file)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"ERROR {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="validate or show experiment configs")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("validate", help="validate YAML configs: exit 0 when all are valid, 2 otherwise")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_validate)
    p = sub.add_parser("show", help="print the resolved config with every default filled in")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_show)
