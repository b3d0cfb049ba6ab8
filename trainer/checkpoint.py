"""Checkpoints: one ``torch.save`` file of plain data, loadable with ``torch.load(weights_only=True)``.

Contents (only tensors, dicts, lists, str, int, float, bool and None, so the safe unpickler
reads it): ``format``, ``epoch`` (0-based, last finished), ``model`` (state dict), ``optimizer``,
``scheduler``, ``scaler`` (AMP; {} on CPU), ``config`` (``ExperimentConfig.to_dict()``),
``preprocess`` (:class:`trainer.preprocess.PreprocessConfig` fields), ``git``, ``metrics`` (of
that epoch), ``history`` (all epochs so far), ``early_stopping`` (best value, best epoch,
epochs without improvement) and ``torch_rng_state``. The best model's weights also go to a
``.safetensors`` file beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dhs_spark.config.experiment import from_dict
from dhs_spark.errors import InputDataError
from trainer.models import build_model
from trainer.preprocess import PreprocessConfig

FORMAT = "dhs-trainer-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (plus ``format``) atomically: a crash mid-write leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with the safe unpickler (``weights_only=True``); check its format."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputDataError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # corrupt file or not a torch file: say which file
        raise InputDataError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputDataError(f"{path}: not a {FORMAT} file")
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu"):
    """``(model in eval mode on device, ExperimentConfig, PreprocessConfig)`` of a loaded checkpoint."""
    cfg = from_dict(ckpt["config"])
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, cfg, PreprocessConfig(**ckpt["preprocess"])
