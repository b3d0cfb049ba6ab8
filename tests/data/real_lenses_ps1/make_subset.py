"""Rebuild ``sled_ps1_lenses.npz`` (a subset) from the full set in ``../shared/data/real_lenses_ps1``.

Every 8th lens (indices 0, 8, ..., 176: 23 of 181), all keys unchanged, so that the tests run
on real PS1 lenses without shipping the 7.4 MB file. Run from the repository root:
``python tests/data/real_lenses_ps1/make_subset.py [/path/to/sled_ps1_lenses.npz]``.
"""

import sys
from pathlib import Path

import numpy as np

SOURCE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[4] / "shared/data/real_lenses_ps1/sled_ps1_lenses.npz"
STEP = 8

with np.load(SOURCE) as d:
    keep = np.arange(0, len(d["name"]), STEP)
    n_total = len(d["name"])
    out = {k: (d[k][keep] if d[k].ndim and len(d[k]) == len(d["name"]) else d[k]) for k in d.keys()}
np.savez_compressed(Path(__file__).resolve().parent / "sled_ps1_lenses.npz", **out)
print(f"kept {len(keep)} of {n_total} lenses")
