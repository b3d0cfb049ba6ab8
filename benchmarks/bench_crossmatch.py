"""Cross-match of 10^6 catalogue rows against the DR10 bricks table: the vectorised
``dhs_spark.survey.footprint.crossmatch`` versus a naive per-row reference (desiutil-style
scalar brickname + dict lookup), run side by side in one process; prints rows/s and the ratio.

The reference is timed on a subsample (default 20,000 rows) and extrapolated per row, so the
default run takes well under a minute. ``--quick``: 10^5 rows.

    .venv/bin/python benchmarks/bench_crossmatch.py [--rows 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dhs_spark.survey.bricks import brick_center, load_bricks_table
from dhs_spark.survey.footprint import crossmatch

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "survey"


def naive_brickname(ra: float, dec: float) -> str:
    """One row at a time, as a scalar loop would: grid row, columns, centre, formatted name."""
    row = int((dec + 90.0 + 0.125) / 0.25)
    center_dec = -90.0 + row * 0.25
    dec_lo = max(0.0, abs(center_dec) - 0.125)
    ncol = 1 if row in (0, 720) else int(math.ceil(360.0 / 0.25 * math.cos(math.radians(dec_lo)) / 2) * 2)
    col = int((ra % 360.0) / 360.0 * ncol)
    ra_c = 180.0 if ncol == 1 else (col + 0.5) * 360.0 / ncol
    return f"{ra_c * 10000:07.0f}"[:4] + ("p" if center_dec >= 0 else "m") + f"{abs(center_dec) * 10000:06.0f}"[:3]


def naive_crossmatch(ra, dec, lookup: dict) -> list:
    out = []
    for r, d in zip(ra, dec):
        name = naive_brickname(r, d)
        brick = lookup.get(name)
        inside = brick is not None and brick["has_g"] and brick["has_r"] and brick["has_z"]
        out.append((name, inside, brick["psf_fwhm_r_arcsec"] if brick else float("nan")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reference-rows", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.rows
    bricks = pd.concat([load_bricks_table(DATA / f"dr10_south_bricks_excerpt_{f}.csv") for f in "ab"], ignore_index=True)
    # positions: half inside the excerpt's bricks (near their centres), half anywhere on the sky
    rng = np.random.default_rng(1)
    ra_c, dec_c = brick_center(bricks["brickname"].to_numpy())
    pick = rng.integers(0, len(bricks), n // 2)
    ra = np.concatenate([ra_c[pick] + rng.uniform(-0.12, 0.12, n // 2), rng.uniform(0, 360, n - n // 2)])
    dec = np.concatenate([dec_c[pick] + rng.uniform(-0.12, 0.12, n // 2), np.degrees(np.arcsin(rng.uniform(-1, 1, n - n // 2)))])
    cat = pd.DataFrame({"ra": ra, "dec": dec})

    t0 = time.perf_counter()
    out = crossmatch(cat, bricks)
    t_vec = time.perf_counter() - t0

    m = min(args.reference_rows, n)
    lookup = {r["brickname"]: r for r in bricks.to_dict("records")}
    t0 = time.perf_counter()
    ref = naive_crossmatch(ra[:m], dec[:m], lookup)
    t_ref = (time.perf_counter() - t0) * n / m
    agree = all(a == b and c == d for (a, c, _), b, d in zip(ref, out["brickname"][:m], out["in_footprint"][:m]))

    print(f"rows: {n:,}   in footprint: {int(out['in_footprint'].sum()):,}   reference agrees on first {m:,}: {agree}")
    print(f"vectorised crossmatch : {t_vec:8.2f} s  ({n / t_vec:,.0f} rows/s)")
    print(f"naive per-row (extrap): {t_ref:8.2f} s  ({n / t_ref:,.0f} rows/s, timed on {m:,} rows)")
    print(f"speed-up: {t_ref / t_vec:.1f}x")
    if not agree:
        raise SystemExit("vectorised and reference cross-match disagree")


if __name__ == "__main__":
    main()
