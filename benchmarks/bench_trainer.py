"""Does the data loader keep the model fed? Loader rate vs model-only step rate, side by side.

Writes fixture stamps (tests/trainer/conftest.py's synthetic writer: noise + host + arcs, in
the real schema, 64x64 px, 3 bands) to a temporary directory, then measures in one process:

1. model-only: training steps (forward, backward, AdamW) on one preprocessed batch kept in
   memory -> images/s. This is the rate the loader must sustain.
2. loader-only: a full epoch through ``trainer.data.StampDataset`` + DataLoader (Parquet read,
   zero-copy decode, normalisation, shuffling, augmentation), for 0 and N workers -> images/s.
3. end-to-end: the loader feeding the training step (``trainer.train.train_one_epoch``).

Prints loader/model and end-to-end/model ratios (target: loader >= 0.95 x model-only).
On a CUDA GPU it also runs a short AMP (bf16/fp16), channels_last training of the ResNet-18
configuration and reports images/s and GPU utilisation (sampled with nvidia-smi).

    .venv/bin/python benchmarks/bench_trainer.py [--quick] [--workers N] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _polling import PollingThread

from dhs_spark.config.experiment import ExperimentConfig, ModelConfig, TrainingConfig
from trainer.data import StampDataset, StampIndex, make_loader
from trainer.models import build_model
from trainer.preprocess import PreprocessConfig, preprocess
from trainer.score import pick_device
from trainer.train import _amp_dtype, loss_per_sample, train_one_epoch

REPO = Path(__file__).resolve().parents[1]


def fixture_writer():
    spec = importlib.util.spec_from_file_location("trainer_test_fixture", REPO / "tests" / "trainer" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_stamp_parquet


def model_only_rate(model, batch: torch.Tensor, device, amp_dtype, n_steps: int) -> float:
    """Images/s of training steps on one batch already on the device."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, 2, (len(batch),), device=device).float()
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = batch.to(device).contiguous(memory_format=memory_format)

    def step():
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss = loss_per_sample(logits, y, "bce", 0.0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (allocator, cuDNN autotune)
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync()
    return n_steps * len(batch) / (time.perf_counter() - t0)


def loader_rate(dataset: StampDataset, num_workers: int, pin: bool) -> float:
    """Images/s of one epoch through the DataLoader, batches moved to nothing (loader only)."""
    n = 0
    t0 = time.perf_counter()
    for batch in make_loader(dataset, num_workers, pin):
        n += len(batch["label"])
    return n / (time.perf_counter() - t0)


class GpuSampler(PollingThread):
    """GPU utilisation (%) sampled every 0.2 s with nvidia-smi while active."""

    def __init__(self):
        super().__init__(every_s=0.2)
        self.samples: list[float] = []

    def poll(self) -> bool:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=5)
            self.samples.append(float(out.stdout.strip().splitlines()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return False
        return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer stamps and steps (~1 min on 2 CPU cores)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers for the N-worker runs")
    p.add_argument("--device", default="cpu", help="device of the model-only / end-to-end runs (the CUDA section runs when a GPU exists)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    n_hosts, n_steps = (150, 5) if args.quick else (400, 10)
    tmp = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    try:
        path, _, _ = fixture_writer()(tmp / "stamps", n_hosts=n_hosts, stamp_size=64, seed=0, n_files=4, row_group_size=128)
        index = StampIndex.scan(str(path))
        rows = index.rows()
        pre = PreprocessConfig()
        print(f"data: {index.n_rows} stamps 3x64x64 in {len(index.row_groups)} row groups; torch {torch.__version__}, {torch.get_num_threads()} threads")

        def dataset(batch_size):
            return StampDataset(index, rows, batch_size, pre, shuffle=True, augment=True, seed=0)

        device = pick_device(args.device)
        cfg = ExperimentConfig(
            output_dir=str(tmp / "out"), model=ModelConfig(), training=TrainingConfig(batch_size=64, device=str(device), epochs=1, warmup_epochs=0)
        )
        batch = torch.from_numpy(preprocess(np.stack([index.read_images(index.row_groups[0])[0][i % 128] for i in range(cfg.training.batch_size)])))
        model = build_model(cfg.model).to(device)
        amp_dtype = _amp_dtype(device, cfg.training.amp)
        rate_model = model_only_rate(model, batch, device, amp_dtype, n_steps)
        print(f"[{device}] model-only ({cfg.model.architecture}, width {cfg.model.width}, batch {len(batch)}): {rate_model:8.1f} img/s")
        for workers in sorted({0, args.workers}):
            rate_loader = loader_rate(dataset(cfg.training.batch_size), workers, device.type == "cuda")
            print(f"[{device}] loader-only, {workers} workers: {rate_loader:8.1f} img/s   loader/model = {rate_loader / rate_model:.2f} (target >= 0.95)")
        for workers in sorted({0, args.workers}):
            ds = dataset(cfg.training.batch_size)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
            rec = train_one_epoch(model, make_loader(ds, workers, device.type == "cuda"), ds.n_batches(workers), opt, sched, scaler, cfg, device, amp_dtype, "bench")
            rate = rec["train_images_per_s"]
            print(f"[{device}] end-to-end, {workers} workers: {rate:8.1f} img/s   end-to-end/model = {rate / rate_model:.2f}")

        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gcfg = ExperimentConfig(
                output_dir=str(tmp / "out"),
                model=ModelConfig(architecture="resnet18", width=64, blocks_per_stage=[2, 2, 2, 2]),
                training=TrainingConfig(batch_size=256, device="cuda", amp=True, epochs=1, warmup_epochs=0),
            )
            torch.backends.cudnn.benchmark = True
            gmodel = build_model(gcfg.model).to(gpu).to(memory_format=torch.channels_last)
            gdtype = _amp_dtype(gpu, True)
            gbatch = torch.from_numpy(np.repeat(batch.numpy(), 4, axis=0))
            g_model_rate = model_only_rate(gmodel, gbatch, gpu, gdtype, 20)
            print(f"[cuda] model-only resnet18 AMP {gdtype}, batch {len(gbatch)}: {g_model_rate:8.1f} img/s ({torch.cuda.get_device_name(0)})")
            opt = torch.optim.AdamW(gmodel.parameters(), lr=1e-4)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            scaler = torch.amp.GradScaler("cuda", enabled=gdtype == torch.float16)
            for epoch in range(3 if args.quick else 6):
                ds = StampDataset(index, rows, gcfg.training.batch_size, pre, shuffle=True, augment=True, seed=epoch)
                with GpuSampler() as sampler:
                    rec = train_one_epoch(
                        gmodel, make_loader(ds, args.workers, True), ds.n_batches(args.workers), opt, sched, scaler, gcfg, gpu, gdtype, f"gpu epoch {epoch}"
                    )
                util = f"{np.mean(sampler.samples):.0f}% mean, {np.max(sampler.samples):.0f}% max" if sampler.samples else "unavailable (no nvidia-smi)"
                print(
                    f"[cuda] AMP training epoch {epoch}, {args.workers} workers: {rec['train_images_per_s']:8.1f} img/s "
                    f"(end-to-end/model = {rec['train_images_per_s'] / g_model_rate:.2f}); GPU utilisation {util}"
                )
        else:
            print("[cuda] no GPU: AMP training section skipped")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
