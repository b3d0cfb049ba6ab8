"""What the stamp writer's row groups cost in a 4c Python worker's memory.

    python benchmarks/bench_writer_memory.py                 # 3,000 stamps, row groups of 256 vs 32
    python benchmarks/bench_writer_memory.py --stamps 10000 --row-groups 256,128,32

4c's task function (``dhs_spark.jobs.phase4c_stamps.write_stamps``) runs in one fresh process per
row-group size, on the same manifest rows of the mock survey (made by 4a in Spark local[2]). Each
``SplitStampWriter`` holds up to one row group of stamps per split before writing it, so its
buffers grow with ``row_group_rows`` x splits x stamp bytes (3 x 64 x 64 float32 = 48 KiB each).
Printed per size: VmRSS after imports and a warm-up batch (the worker's fixed cost), VmHWM at the end
(the worker's peak, as bench_spark_inject.py reports it) and the Arrow memory pool's peak
(``max_memory``: Arrow buffers only), then the difference from the smallest size.
The trainer reads stamps one row group at a time, and 4c's default is 256
(``ARROW_MAX_RECORDS_PER_BATCH``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Runs in a fresh interpreter per size, so that peaks are not inherited from another size.
_CHILD = r"""
import pickle, sys
import pyarrow as pa, pyarrow.dataset as ds
from dhs_spark.jobs.phase4c_stamps import stamp_params, write_stamps
from dhs_spark.jobs.stamp_writer import SplitStampWriter
from dhs_spark.spark_session import ARROW_MAX_RECORDS_PER_BATCH

manifest, cfg_pickle, coadd_root, out, rows_per_group = sys.argv[1:6]
with open(cfg_pickle, "rb") as f:
    params = stamp_params(pickle.load(f), coadd_root)
table = ds.dataset(manifest, format="parquet").to_table().sort_by([("brickname", "ascending"), ("task_id", "ascending")])

def status_mib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

def run(rows, stem, sink):
    writer = SplitStampWriter(f"{sink}/stamps", f"{sink}/_tmp", stem, row_group_rows=int(rows_per_group))
    for _ in write_stamps(rows.to_batches(max_chunksize=ARROW_MAX_RECORDS_PER_BATCH), params, writer, stats={}):
        pass

run(table.slice(0, 8), "part-99999", out + "/warmup")  # imports, numba first call, the first brick
fixed = status_mib("VmRSS")
run(table, "part-00000", out)
print(f"{table.num_rows} {fixed:.1f} {status_mib('VmHWM'):.1f} {pa.default_memory_pool().max_memory() / 2**20:.1f}")
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stamps", type=int, default=3000)
    p.add_argument("--row-groups", default="256,32", help="comma-separated row_group_rows to compare")
    args = p.parse_args(argv)
    sizes = sorted({int(s) for s in args.row_groups.split(",")}, reverse=True)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from bench_spark_inject import make_experiment  # benchmarks/, the script's directory

    from dhs_spark.spark_session import local_spark_session
    from dhs_spark.survey.mock import build_mock_survey

    work = Path(tempfile.mkdtemp(prefix="dhs_bench_wmem_"))
    try:
        survey = build_mock_survey(work / "mock", n_bricks=16, brick_size_pix=300, n_lrg_per_brick=10, n_neighbours_per_brick=20, n_stars_per_brick=4)
        spark = local_spark_session(app_name="bench-writer-memory", master="local[2]")
        cfg, paths, _, _ = make_experiment(spark, work / "exp", survey, args.stamps, 64, "wmem")
        spark.stop()
        with open(work / "cfg.pkl", "wb") as f:
            pickle.dump(cfg, f)
        results = {}
        for rows in sizes:
            cmd = [sys.executable, "-c", _CHILD, paths.manifest.removeprefix("file://"), str(work / "cfg.pkl"), str(survey.root), str(work / f"out{rows}"), str(rows)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(f"row_group_rows={rows}: the task process failed:\n{done.stderr[-3000:]}")
            n, fixed, hwm, pool = done.stdout.split()[-4:]
            results[rows] = (float(fixed), float(hwm), float(pool))
            print(f"row_group_rows={rows:4d}: {n} stamps; VmRSS after warm-up {float(fixed):.0f} MiB, VmHWM {float(hwm):.0f} MiB, Arrow pool peak {float(pool):.0f} MiB")
        small = sizes[-1]
        for rows in sizes[:-1]:
            d_hwm = results[rows][1] - results[small][1]
            d_pool = results[rows][2] - results[small][2]
            print(f"RATIO VmHWM {rows} / {small} rows per group = {results[rows][1] / results[small][1]:.2f} (+{d_hwm:.0f} MiB, of which Arrow buffers +{d_pool:.0f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
