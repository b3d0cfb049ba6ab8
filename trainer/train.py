"""Train a lens classifier on Parquet stamps: the ``dhs-train`` command and :func:`fit`.

::

    dhs-train --config CFG.yaml --data PATH --hard-neg-path P --hard-neg-weight 5 \\
              --out-dir D --epochs 50 --early-stopping-patience 5 --device auto|cpu|cuda

Flags override the config's fields. The seed's underscore spellings are accepted as deprecated
aliases (:data:`SEED_FLAG_ALIASES`; one deprecation line per run names those used):
``--hard_neg_path`` = ``--hard-neg-path`` (hard_negatives.hard_neg_path, and enables the join),
``--hard_neg_weight`` = ``--hard-neg-weight`` (hard_negatives.hard_neg_weight), ``--out_dir`` =
``--out-dir`` (output_dir), ``--early_stopping_patience`` = ``--early-stopping-patience``
(training.early_stopping_patience). Training: AdamW, a per-step learning-rate schedule (linear
warm-up then cosine, or constant), BCE or focal loss times per-sample weights (hard negatives
matched by position, :mod:`trainer.hardneg_join`), early stopping on a validation metric
(``training.early_stopping_metric``: ``val_auroc``, ``val_loss`` or ``val_tpr_at_fpr_<f>``,
e.g. ``val_tpr_at_fpr_1e-02``; losses are minimised, the rest maximised). On CUDA: channels_last
and automatic mixed precision (bf16 where supported, else fp16 with a gradient scaler).

Writes to ``out_dir``: ``config.yaml``, ``last.pt`` (every epoch, for ``--resume``), ``best.pt``
and ``best.safetensors`` (best validation metric), and ``metrics.json`` rewritten after every
epoch: per-epoch metrics, the hard-negative join report, and at the end the best model's
validation and test reports and the model-level gates (:mod:`trainer.gates`).

Hard-negative stamps (label-0 rows with ``hard_neg_source``/``hard_neg_weight``, when the stamp
set has these columns) are chosen, capped per epoch and weighted by ``hard_negatives.sources``,
``max_fraction`` and ``weight`` (:func:`trainer.data.plan_hard_negative_stamps`); a stamp both
tagged and matched by the lookup takes the larger weight. ``metrics.json`` then holds their
report under ``hard_negative_stamps``.

Null injections (``is_null_injection``) are left out of training and of the validation and test
metrics unless ``data.null_injections_in_training``; the null-injection gate scores those of
the held-out splits against their controls.

Same seed on CPU -> same metrics (row-group order, shuffling and augmentation are seeded by
the global seed and the epoch; torch runs with deterministic algorithms).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dhs_spark.config.experiment import ExperimentConfig, from_dict, from_yaml, git_info, validate
from dhs_spark.config.seeds import rng_from_seed, set_all_seeds, stable_hash64
from dhs_spark.errors import ConfigError, ConfigErrors
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data import (
    COL,
    GATE_TRUTH_COLUMNS,
    TRUTH_COLUMNS,
    HardNegativeStampPlan,
    StampDataset,
    StampIndex,
    load_arc_images,
    load_images,
    make_loader,
    plan_hard_negative_stamps,
)
from trainer.hardneg_join import HardNegativeJoin, join_hard_negatives, load_lookup
from trainer.metrics import classification_report
from trainer.models import build_model
from trainer.preprocess import PreprocessConfig
from trainer.score import make_score_fn, pick_device

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- progress output


def progress(iterable, total: int, desc: str, stream=None):
    """A tqdm bar on a terminal; plain log lines (about every 10%, and the last) otherwise,
    so that batch logs on EMR/CI stay readable."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, file=stream, leave=False)
        return
    every = max(1, total // 10)
    t0 = time.perf_counter()
    i = 0
    for i, item in enumerate(iterable, 1):
        yield item
        if i % every == 0 or i == total:
            print(f"{desc}: {i}/{total} batches, {time.perf_counter() - t0:.1f} s", file=stream, flush=True)


# ---------------------------------------------------------------- configuration


SEED_FLAG_ALIASES = {
    "--hard_neg_path": "--hard-neg-path",
    "--hard_neg_weight": "--hard-neg-weight",
    "--out_dir": "--out-dir",
    "--early_stopping_patience": "--early-stopping-patience",
}
"""The seed's underscore flags (deprecated) -> the project's flags; each maps to the same
config field as its project flag (see the module docstring)."""


class _StoreRecordingAlias(argparse.Action):
    """``store``, also recording in ``namespace.deprecated_aliases`` a deprecated spelling used."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        used = list(getattr(namespace, "deprecated_aliases", []))  # a copy: the parser's default list is shared between parses
        if option_string in SEED_FLAG_ALIASES and option_string not in used:
            namespace.deprecated_aliases = [*used, option_string]


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs-train", description="Train a lens classifier on Parquet stamps.")
    p.set_defaults(deprecated_aliases=[])
    alias = {canonical: seed for seed, canonical in SEED_FLAG_ALIASES.items()}

    def flag(name: str, **kwargs):
        if name in alias:
            p.add_argument(name, alias[name], action=_StoreRecordingAlias, **kwargs)
        else:
            p.add_argument(name, **kwargs)

    p.add_argument("--config", help="experiment YAML (dhs_spark.config.ExperimentConfig); defaults when absent")
    p.add_argument("--data", required=True, help="stamp Parquet file or directory (local or s3://)")
    flag("--out-dir", help="output directory (default: the config's output_dir); --out_dir is a deprecated alias")
    flag("--hard-neg-path", help="hard-negative lookup Parquet, or its directory (enables the position join); --hard_neg_path is a deprecated alias")
    flag("--hard-neg-weight", type=float, help="multiplier of the lookup weight of matched negatives; --hard_neg_weight is a deprecated alias")
    p.add_argument("--epochs", type=int)
    flag("--early-stopping-patience", type=int, help="epochs without improvement before stopping; --early_stopping_patience is a deprecated alias")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--seed", type=int, help="global seed")
    p.add_argument("--device", help="auto | cpu | cuda[:N]")
    p.add_argument("--resume", help="checkpoint (last.pt) to continue from; its config is used, flags still override")
    p.add_argument("--no-gates", action="store_true", help="skip the model-level gates at the end")
    return p


def load_config(path: str, out_dir: str | None) -> ExperimentConfig:
    """The YAML config, with ``output_dir`` taken from ``--out-dir`` when given (so a template
    without output_dir validates)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError("--config", f"cannot read: {exc.strerror}", path) from None
    except yaml.YAMLError:
        return from_yaml(path)  # re-raised there with the file, line and column
    if out_dir and isinstance(data, dict):
        data["output_dir"] = str(out_dir)
    return from_dict(data, str(path))


def apply_overrides(cfg: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    """The config with the CLI flags that were given written into it, then validated."""
    t, h = cfg.training, cfg.hard_negatives
    t = dataclasses.replace(
        t,
        **{
            k: v
            for k, v in {
                "epochs": args.epochs,
                "early_stopping_patience": args.early_stopping_patience,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "num_workers": args.num_workers,
                "device": args.device,
            }.items()
            if v is not None
        },
    )
    if args.hard_neg_path:
        h = dataclasses.replace(h, enabled=True, hard_neg_path=args.hard_neg_path)
    if args.hard_neg_weight is not None:
        h = dataclasses.replace(h, hard_neg_weight=args.hard_neg_weight)
    seeds = dataclasses.replace(cfg.seeds, global_seed=args.seed) if args.seed is not None else cfg.seeds
    out_dir = args.out_dir or cfg.output_dir
    if not out_dir:
        raise ConfigError("output_dir", "set --out-dir or output_dir in the config")
    cfg = dataclasses.replace(cfg, training=t, hard_negatives=h, seeds=seeds, output_dir=str(out_dir))
    errors = validate(cfg)
    if errors:
        raise ConfigErrors(errors)
    return cfg


def early_stopping_mode(metric: str) -> str:
    """'min' for losses, 'max' for the rest; unknown metric names raise."""
    if metric == "val_loss":
        return "min"
    if metric == "val_auroc" or metric.startswith("val_tpr_at_fpr_"):
        return "max"
    raise ConfigError("training.early_stopping_metric", "expected val_auroc, val_loss or val_tpr_at_fpr_<fpr>", metric)


def update_early_stopping(best: dict, value: float, epoch: int, mode: str) -> tuple[dict, bool]:
    """``(new state, improved)``: ``best`` holds ``value``, ``epoch`` and
    ``epochs_without_improvement``; a strict improvement (``mode`` 'min' or 'max') resets it."""
    improved = best["value"] is None or (value < best["value"] if mode == "min" else value > best["value"])
    if improved:
        return {"value": value, "epoch": epoch, "epochs_without_improvement": 0}, True
    return best | {"epochs_without_improvement": best["epochs_without_improvement"] + 1}, False


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warm-up over ``warmup_steps``
    (from 1/warmup_steps to 1), then cosine decay to 0 at ``total_steps`` ('cosine') or 1 ('none')."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress_frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress_frac))


def loss_per_sample(logits: torch.Tensor, labels: torch.Tensor, kind: str, focal_gamma: float) -> torch.Tensor:
    """BCE with logits, or focal loss ``(1 - p_t)^gamma * BCE``, per sample (float32)."""
    logits = logits.float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if kind == "bce":
        return bce
    p = torch.sigmoid(logits)
    p_t = p * labels + (1 - p) * (1 - labels)
    return (1 - p_t) ** focal_gamma * bce


# ---------------------------------------------------------------- one epoch


def _amp_dtype(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_one_epoch(model, loader, n_batches, optimizer, scheduler, scaler, cfg: ExperimentConfig, device, amp_dtype, desc) -> dict:
    """One pass over the training loader; returns mean weighted loss, stamps, images/s."""
    model.train()
    t = cfg.training
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    total_loss, total_n = 0.0, 0
    t0 = time.perf_counter()
    for batch in progress(loader, n_batches, desc):
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = batch["label"].to(device, non_blocking=True)
        w = batch["weight"].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss = (loss_per_sample(logits, y, t.loss, t.focal_gamma) * w).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += float(loss.detach()) * len(y)
        total_n += len(y)
    elapsed = time.perf_counter() - t0
    return {"train_loss": total_loss / max(total_n, 1), "train_stamps": total_n, "train_images_per_s": total_n / max(elapsed, 1e-9)}


@torch.inference_mode()
def predict(model, loader, n_batches, device, amp_dtype, desc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, labels, logits)`` over a loader, sorted by global row index."""
    model.eval()
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    rows, labels, logits = [], [], []
    for batch in progress(loader, n_batches, desc):
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        rows.append(batch["row"].numpy())
        labels.append(batch["label"].numpy())
        logits.append(out.float().cpu().numpy())
    rows, labels, logits = np.concatenate(rows), np.concatenate(labels), np.concatenate(logits).astype(np.float64)
    order = np.argsort(rows)
    return rows[order], labels[order].astype(np.int64), logits[order]


def evaluate(model, loader, n_batches, index: StampIndex, cfg: ExperimentConfig, device, amp_dtype, desc) -> dict:
    """Validation/test report: loss, AUROC, TPR at the FPR targets, completeness bins."""
    rows, labels, logits = predict(model, loader, n_batches, device, amp_dtype, desc)
    scores = 1.0 / (1.0 + np.exp(-logits))
    loss = float(loss_per_sample(torch.from_numpy(logits), torch.from_numpy(labels.astype(np.float32)), cfg.training.loss, cfg.training.focal_gamma).mean())
    truth = {c: index.meta[c][rows].astype(np.float64) for c in TRUTH_COLUMNS if c in index.meta}
    report = classification_report(labels, scores, cfg.evaluation.fpr_targets, cfg.evaluation.score_threshold, truth)
    report["loss"] = loss
    return report


def flat_metrics(prefix: str, report: dict) -> dict:
    """``{prefix}_loss``, ``{prefix}_auroc``, ``{prefix}_tpr_at_fpr_<f>`` from a report."""
    out = {f"{prefix}_loss": report["loss"], f"{prefix}_auroc": report["auroc"]}
    for key, entry in report["tpr_at_fpr"].items():
        out[f"{prefix}_tpr_at_fpr_{key}"] = entry["tpr"]
    return out


# ---------------------------------------------------------------- the run


def combine_weights(plan: HardNegativeStampPlan, join: HardNegativeJoin | None, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Per global row loss weights of a run with hard-negative stamps (``plan``) and perhaps
    the lookup join (``join``, None without one): a hard-negative stamp takes its plan weight, a
    label-0 stamp matched by the lookup its join weight, a stamp that is both the larger of the
    two (never their product: both say "this object is a hard negative"); others 1. Returns
    ``(weights, number of stamps that are both)``."""
    weights = plan.weights.copy()
    if join is None:
        return weights, 0
    matched = (join.lookup_index >= 0) & (np.asarray(labels) == 0)
    both, only_lookup = matched & plan.is_hard, matched & ~plan.is_hard
    weights[only_lookup] = join.weights[only_lookup]
    weights[both] = np.maximum(join.weights[both], plan.weights[both])
    return weights, int(both.sum())



def _choose(rows: np.ndarray, n_max: int, seed: int, what: str) -> np.ndarray:
    """Up to ``n_max`` of ``rows`` (seeded choice), sorted."""
    if len(rows) > n_max:
        rows = np.sort(rng_from_seed(stable_hash64("gates", seed, what)).choice(rows, n_max, replace=False))
    return rows


def _gate_sample(index: StampIndex, rows: np.ndarray, n_max: int, seed: int, split: str, arcs: bool = False) -> dict:
    """Up to ``n_max`` rows of a split (seeded choice), raw images and truth columns; with
    ``arcs`` also ``arc_images`` and ``has_arc`` (:func:`trainer.data.load_arc_images`)."""
    rows = _choose(rows, n_max, seed, split)
    nan = np.full(len(rows), np.nan)
    out = {"rows": rows, "images": load_images(index, rows), "label": index.meta[COL.label][rows]}
    for c in (COL.ra, COL.dec, *TRUTH_COLUMNS, *GATE_TRUTH_COLUMNS):
        out[c] = index.meta[c][rows].astype(np.float64) if c in index.meta else nan
    if arcs:
        out["arc_images"], out["has_arc"] = load_arc_images(index, rows)
    return out


def _one_per_host(index: StampIndex, rows: np.ndarray) -> np.ndarray:
    """The first of ``rows`` at each host position (replicates of a host hold the same cutout,
    and would count as independent evidence in the null gate's test); all rows without positions."""
    if COL.ra not in index.meta or COL.dec not in index.meta or not len(rows):
        return rows
    _, first = np.unique(np.column_stack([index.meta[COL.ra][rows], index.meta[COL.dec][rows]]), axis=0, return_index=True)
    return rows[np.sort(first)]


def _null_sample(index: StampIndex, n_max: int, seed: int) -> dict:
    """Null injections and controls (label 0, not null) of the held-out splits (val, test), one
    per host and up to ``n_max`` of each (seeded choice), for the null-injection gate."""
    held = np.sort(np.concatenate([index.rows("val"), index.rows("test")]))
    null = index.is_null_injection[held]
    nulls = _choose(_one_per_host(index, held[null]), n_max, seed, "null-injections")
    controls = _choose(_one_per_host(index, held[~null & (index.meta[COL.label][held] == 0)]), n_max, seed, "null-controls")
    empty = np.zeros((0, 0, 0, 0), np.float32)
    return {"null_images": load_images(index, nulls) if len(nulls) else empty, "control_images": load_images(index, controls) if len(controls) else empty}


def json_safe(obj):
    """``obj`` with non-finite floats as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False))
    tmp.replace(path)


def fit(cfg: ExperimentConfig, data: str, resume: str | None = None, run_gates: bool = True) -> dict:
    """Train on ``data`` per ``cfg`` (``cfg.output_dir`` receives the outputs); returns the
    metrics dict also written to ``metrics.json``. ``resume``: a ``last.pt`` to continue from."""
    from trainer.gates import run_gates as gates

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out_dir / "config.yaml")
    t = cfg.training
    set_all_seeds(cfg.seeds)
    device = pick_device(t.device)
    amp_dtype = _amp_dtype(device, t.amp)
    mode = early_stopping_mode(t.early_stopping_metric)
    seed = cfg.seeds.global_seed

    index = StampIndex.scan(data)
    # Null injections are a separate evaluation subset (the null gate) unless the config trains on them.
    with_null = cfg.data.null_injections_in_training
    train_rows, val_rows, test_rows = (index.rows(s, null_injections=with_null) for s in ("train", "val", "test"))
    for name, rows in (("train", train_rows), ("val", val_rows)):
        if len(rows) == 0:
            raise ValueError(f"{data}: the {name} split is empty")
    weights, hardneg_report, join = None, None, None
    if cfg.hard_negatives.enabled:
        for c in (COL.ra, COL.dec):
            if c not in index.meta:
                raise ValueError(f"{data}: no '{c}' column, cannot join hard negatives by position")
        join = join_hard_negatives(
            index.meta[COL.ra],
            index.meta[COL.dec],
            index.meta[COL.label],
            load_lookup(cfg.hard_negatives.hard_neg_path),
            cfg.hard_negatives.match_radius_arcsec,
            cfg.hard_negatives.hard_neg_weight,
        )
        weights, hardneg_report = join.weights, join.report
        log.info("hard negatives: %d matched negatives (%s)", join.report["matched_negatives"], json.dumps(join.report["by_source"]))

    h = cfg.hard_negatives
    plan = plan_hard_negative_stamps(index, train_rows, h.weight, h.max_fraction, h.sources, seed)
    epoch_rows = None
    if plan is not None:
        weights, overlap = combine_weights(plan, join, index.meta[COL.label])
        plan.report["also_matched_by_lookup"] = overlap
        epoch_rows = plan.epoch_rows

    pre = PreprocessConfig.from_training(t)
    first_rows = train_rows if plan is None else plan.epoch_rows(0)
    train_ds = StampDataset(index, first_rows, t.batch_size, pre, weights=weights, shuffle=True, augment=t.augment, seed=seed, epoch_rows=epoch_rows)
    val_ds = StampDataset(index, val_rows, t.batch_size, pre)
    pin = device.type == "cuda"
    train_loader, val_loader = make_loader(train_ds, t.num_workers, pin), make_loader(val_ds, t.num_workers, pin)
    n_train_batches, n_val_batches = train_ds.n_batches(t.num_workers), val_ds.n_batches(t.num_workers)

    model = build_model(cfg.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    warmup, total = t.warmup_epochs * n_train_batches, t.epochs * n_train_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, t.scheduler))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    history: list[dict] = []
    best = {"value": None, "epoch": None, "epochs_without_improvement": 0}
    start_epoch = 0
    if resume:
        ckpt = load_checkpoint(resume, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng_state"])
        history, best = list(ckpt["history"]), dict(ckpt["early_stopping"])
        start_epoch = int(ckpt["epoch"]) + 1
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    git = git_info()
    metrics = {
        "config": cfg.to_dict(),
        "git": git,
        "data": {"path": str(data), "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "n_test": int(len(test_rows)),
                 "n_null_injections": {s: int(index.is_null_injection[index.rows(s)].sum()) for s in ("train", "val", "test")},
                 "null_injections_in_training": bool(with_null)},  # fmt: skip
        "device": str(device),
        "amp_dtype": str(amp_dtype) if amp_dtype else None,
        "hard_negatives": hardneg_report,
        **({"hard_negative_stamps": plan.report} if plan is not None else {}),
        "early_stopping": {"metric": t.early_stopping_metric, "mode": mode, "patience": t.early_stopping_patience},
        "epochs": history,
    }

    def state(epoch: int, epoch_metrics: dict) -> dict:
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "config": cfg.to_dict(),
            "preprocess": pre.to_dict(),
            "git": git,
            "metrics": epoch_metrics,
            "history": history,
            "early_stopping": best,
            "torch_rng_state": torch.get_rng_state(),
        }

    for epoch in range(start_epoch, t.epochs):
        if best["epochs_without_improvement"] >= t.early_stopping_patience:
            break
        train_ds.set_epoch(epoch)
        record = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        record |= train_one_epoch(model, train_loader, n_train_batches, optimizer, scheduler, scaler, cfg, device, amp_dtype, f"epoch {epoch} train")
        val_report = evaluate(model, val_loader, n_val_batches, index, cfg, device, amp_dtype, f"epoch {epoch} val")
        record |= flat_metrics("val", val_report)
        record["val"] = val_report
        value = record.get(t.early_stopping_metric)
        if value is None:
            raise ConfigError("training.early_stopping_metric", f"not among the epoch metrics {sorted(k for k in record if k.startswith('val_'))}", t.early_stopping_metric)
        best, improved = update_early_stopping(best, value, epoch, mode)
        history.append(record)
        log.info("epoch %d: train_loss %.4f val_loss %.4f val_auroc %s", epoch, record["train_loss"], record["val_loss"], record["val_auroc"])
        if improved:
            save_checkpoint(out_dir / "best.pt", state(epoch, record))
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out_dir / "best.safetensors"))
        save_checkpoint(out_dir / "last.pt", state(epoch, record))
        metrics["epochs"], metrics["best"] = history, best
        _write_json(out_dir / "metrics.json", metrics)
    metrics["stopped_early"] = len(history) < t.epochs

    # Final reports use the best epoch's weights.
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", map_location=device)["model"])
    if len(test_rows):
        test_ds = StampDataset(index, test_rows, t.batch_size, pre)
        metrics["test"] = evaluate(model, make_loader(test_ds, t.num_workers, pin), test_ds.n_batches(t.num_workers), index, cfg, device, amp_dtype, "test")
    if run_gates:
        n_max = cfg.evaluation.gate_max_stamps
        score_fn = make_score_fn(model, pre, device, t.batch_size)
        no_null = ~index.is_null_injection
        metrics["gates"] = gates(
            score_fn,
            _gate_sample(index, val_rows[no_null[val_rows]], n_max, seed, "val", arcs=True),
            _gate_sample(index, train_rows[no_null[train_rows]], n_max, seed, "train"),
            _null_sample(index, n_max, seed),
            pre,
            cfg.evaluation,
            cfg.data.pixel_scale_arcsec,
            seed,
        )
    metrics["best"] = best
    _write_json(out_dir / "metrics.json", metrics)
    return metrics


def deprecation_line(used: list[str]) -> str | None:
    """The one line that names the deprecated seed flags of a run (None when none was used)."""
    if not used:
        return None
    pairs = ", ".join(f"{a} -> {SEED_FLAG_ALIASES[a]}" for a in used)
    return f"dhs-train: deprecated seed flag(s) used: {pairs}; they still work, but use the hyphenated flags"


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    line = deprecation_line(args.deprecated_aliases)
    if line:
        print(line, file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.resume:
        base = from_dict(load_checkpoint(args.resume)["config"])
    elif args.config:
        base = load_config(args.config, args.out_dir)
    else:
        base = ExperimentConfig()
    cfg = apply_overrides(base, args)
    metrics = fit(cfg, args.data, resume=args.resume, run_gates=not args.no_gates)
    print(json.dumps({"best": metrics["best"], "out_dir": cfg.output_dir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
