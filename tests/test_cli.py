"""The `dhs` command registers every capability and its help runs without heavy imports."""

from __future__ import annotations

import subprocess
import sys


def test_dhs_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "dhs_spark.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("config", "cosmos", "crossmatch", "survey", "catalogs", "anchors", "hardneg"):
        assert command in out.stdout, command


def test_dhs_help_does_not_import_heavy_modules():
    code = "import sys; from dhs_spark.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'pyspark', 'galsim', 'boto3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
