"""Cutouts per second from a mock coadd brick: ``CoaddBrick.cutout`` (brick read once, then
array slicing) versus a naive reference that re-opens and decompresses the brick's seven
``.fits.fz`` files for every stamp, side by side in one process; prints the ratio.

    .venv/bin/python benchmarks/bench_cutouts.py [--n 2000] [--size 101] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from dhs_spark.survey.coadds import CoaddBrick
from dhs_spark.survey.mock import build_mock_survey


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="cutouts for the contender")
    ap.add_argument("--n-reference", type=int, default=20, help="cutouts for the naive reference")
    ap.add_argument("--size", type=int, default=101)
    ap.add_argument("--brick-size-pix", type=int, default=1200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 300 if args.quick else args.n
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mock = build_mock_survey(tmp, n_bricks=1, brick_size_pix=args.brick_size_pix, seed=1)
        t_build = time.perf_counter() - t0
        name = mock.bricknames[0]
        probe = CoaddBrick(mock.root, name)
        probe.load()
        rng = np.random.default_rng(0)
        half = args.size // 2 + 1
        xy = rng.uniform(half, args.brick_size_pix - 1 - half, size=(n, 2))
        ra, dec = probe.wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)

        t0 = time.perf_counter()
        brick = CoaddBrick(mock.root, name)  # includes the one read of the brick
        stamps = [brick.cutout(r, d, args.size) for r, d in zip(ra, dec)]
        t_fast = time.perf_counter() - t0

        m = min(args.n_reference, n)
        t0 = time.perf_counter()
        ref = [CoaddBrick(mock.root, name).cutout(r, d, args.size) for r, d in zip(ra[:m], dec[:m])]
        t_ref = (time.perf_counter() - t0) / m
        same = all(np.array_equal(a.image, b.image) and np.array_equal(a.invvar, b.invvar) for a, b in zip(stamps, ref))

    print(f"mock brick {args.brick_size_pix} px x 3 bands built in {t_build:.2f} s; stamps {args.size} px")
    print(f"CoaddBrick (read once): {n / t_fast:10,.0f} cutouts/s  ({n} cutouts, {t_fast:.2f} s incl. the brick read)")
    print(f"reopen per cutout     : {1 / t_ref:10,.1f} cutouts/s  ({m} cutouts)")
    print(f"speed-up: {t_ref * n / t_fast:.1f}x   identical stamps: {same}")
    if not same:
        raise SystemExit("stamps differ between contender and reference")


if __name__ == "__main__":
    main()
