"""The ``dhs`` command: one entry point, one subcommand per capability.

Each subcommand lives in its own module, which defines ``register(subparsers)`` adding an
argparse parser whose ``func(args) -> int`` runs it. Modules import their heavy dependencies
inside ``func`` so that ``dhs --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "dhs_spark.config.cli",
    "dhs_spark.sims.cosmos_cli",
    "dhs_spark.survey.cli",
    "dhs_spark.catalogs.cli",
    "dhs_spark.anchors_cli",
    "dhs_spark.hardneg_cli",
    "dhs_spark.realism_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhs", description="Dark Halo Scope: strong-lens search tools for DESI Legacy Surveys DR10.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
