"""Stage ``score`` in Spark local[2] against the same work in a plain single-process loop.

    python benchmarks/bench_spark_score.py                  # 5k stamps (a few minutes on 2 cores)
    python benchmarks/bench_spark_score.py --stamps 20000   # read the rate at >= 20k stamps

Both sides score the same 4c stamps (made first by 4a + 4c on the mock survey, 64-px stamps) with
the same checkpoint: ``resnet_small`` at the default ``ModelConfig`` (width 16, one block per
stage), weights drawn from a fixed seed (the cost of a forward pass does not depend on training).
The work is: read the stamp Parquet, decode, the checkpoint's preprocessing, the forward pass on
CPU with one torch thread, write the scores.

- Spark: the whole ``score`` stage as the pipeline runs it (checkpoint broadcast, ``mapInArrow``
  over the stamp files, model once per Python worker, fixed-size batches, the scores and rejects
  writes, the read-back reconciliation, the commit).
- loop: ``trainer.score.score_parquet`` (``dhs-score``) in this process with
  ``torch.set_num_threads(1)``, run twice (the better rate counts; the first pays torch's
  first-call costs).

Printed: stamps/s of each, RATIO wall = Spark / (2 x loop) (target >= 0.8: "Spark costs <= 20 %"
on 2 cores; needs 2 idle cores, so the load average is printed), RATIO CPU = loop CPU per stamp /
Spark CPU per stamp (JVM + its Python workers; the load-independent form of the same target).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_spark_inject import make_experiment, spark_cpu_s  # noqa: E402  (benchmarks/, the script's directory)


def write_checkpoint(path: Path, stamp_size: int, seed: int = 0) -> Path:
    """A dhs-train checkpoint of the default model (random weights from ``seed``)."""
    import torch

    from dhs_spark.config.experiment import DataVariantConfig, ExperimentConfig, ModelConfig
    from trainer.checkpoint import save_checkpoint
    from trainer.models import build_model
    from trainer.preprocess import PreprocessConfig

    cfg = ExperimentConfig(output_dir="unused", data=DataVariantConfig(stamp_size=stamp_size), model=ModelConfig())
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    save_checkpoint(path, {"epoch": 0, "model": model.state_dict(), "config": cfg.to_dict(), "preprocess": PreprocessConfig().to_dict()})
    return path


def plain_loop(ckpt: Path, stamps_uri: str, out: Path, batch_size: int) -> dict:
    """``dhs-score``'s ``score_parquet`` in this process, one torch thread."""
    import torch

    from trainer.score import score_parquet

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    n = score_parquet(str(ckpt), stamps_uri.replace("file://", ""), str(out), device="cpu", batch_size=batch_size)
    return {"rows": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stamps", type=int, default=5000, help="stamps to make with 4a + 4c, then score")
    p.add_argument("--stamp-size", type=int, default=64)
    p.add_argument("--bricks", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256, help="stamps per forward pass, both sides")
    args = p.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "dhs_bench_numba"))
    from dhs_spark.jobs import paths as P
    from dhs_spark.jobs.pipeline import RunOptions, run_stage
    from dhs_spark.spark_session import local_spark_session
    from dhs_spark.survey.mock import build_mock_survey

    work = Path(tempfile.mkdtemp(prefix="dhs_bench_score_"))
    survey = build_mock_survey(work / "mock", n_bricks=args.bricks, brick_size_pix=300, n_lrg_per_brick=10, n_neighbours_per_brick=20, n_stars_per_brick=4)
    ckpt = write_checkpoint(work / "best.pt", args.stamp_size)
    spark = local_spark_session(app_name="bench-score", master="local[2]")
    jvm_pid = spark.sparkContext._gateway.proc.pid
    cfg, paths, inputs, opts = make_experiment(spark, work / "exp", survey, args.stamps, args.stamp_size, "score")
    run_stage(spark, "4c", cfg, inputs, opts)
    print(f"mock survey: {args.bricks} bricks, {args.stamp_size}-px stamps; model resnet_small (default ModelConfig), batch {args.batch_size}; Spark local[2]")

    score_opts = RunOptions(checkpoint=str(ckpt), score_input="stamps", score_batch_size=args.batch_size, score_device="cpu")
    cpu0, t0 = spark_cpu_s(jvm_pid), time.perf_counter()
    marker = run_stage(spark, "score", cfg, inputs, score_opts)
    wall = time.perf_counter() - t0
    cpu1 = spark_cpu_s(jvm_pid)
    cpu = sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items())
    jvm_cpu = cpu1[jvm_pid] - cpu0[jvm_pid]
    n = marker["n_scores"] + marker["n_rejects"]
    spark_rate = n / wall
    print(f"spark score: {n} stamps in {wall:.1f} s = {spark_rate:.1f} stamps/s, {1e3 * cpu / n:.2f} CPU ms/stamp "
          f"(JVM {1e3 * jvm_cpu / n:.2f} + Python workers {1e3 * (cpu - jvm_cpu) / n:.2f}); load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    loops = [plain_loop(ckpt, paths.stamps, work / f"loop{i}.parquet", args.batch_size) for i in range(2)]
    rates = [lp["rows"] / lp["wall_s"] for lp in loops]
    loop_rate = max(rates)
    loop_cpu = min(lp["cpu_s"] / lp["rows"] for lp in loops)
    print(f"plain loop (dhs-score's score_parquet, 1 process, 1 torch thread): {loops[0]['rows']} stamps at {rates[0]:.1f} and {rates[1]:.1f} stamps/s "
          f"(two runs), {' and '.join('%.2f' % (1e3 * lp['cpu_s'] / lp['rows']) for lp in loops)} CPU ms/stamp")  # fmt: skip
    ratio = spark_rate / (2 * loop_rate)
    print(f"RATIO wall: spark local[2] / (2 x best plain loop) = {spark_rate:.1f} / {2 * loop_rate:.1f} = {ratio:.2f} (target >= 0.80; "
          f"needs 2 idle cores: load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip
    print(f"RATIO CPU: plain-loop CPU per stamp (better run, {1e3 * loop_cpu:.2f} ms) / Spark CPU per stamp (JVM + workers, {1e3 * cpu / n:.2f} ms) = "
          f"{loop_cpu / (cpu / n):.2f} (load-independent form of the same target)")  # fmt: skip
    assert P.exists(spark, paths.scores("stamps"))
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
