"""TEST HELPER: a tiny, randomly initialised ``dhs-train`` checkpoint (not a trained model).

``write_tiny_checkpoint(path, stamp_size, seed)`` saves a ``resnet_small`` (width 8, two
stages) with its weights drawn by ``torch.manual_seed(seed)``, in the checkpoint format of
``trainer.checkpoint`` with ``data.stamp_size = stamp_size``. A fixed random CNN is a legitimate
embedding for the probe's synthetic checks: its penultimate features are a fixed nonlinear
function of the preprocessed pixels, so two populations it separates differ in the pixels
(what the probe has to detect), and a trained model would only sharpen that.
"""

from __future__ import annotations

import torch

from dhs_spark.config.experiment import DataVariantConfig, ExperimentConfig, ModelConfig
from trainer.checkpoint import save_checkpoint
from trainer.models import build_model
from trainer.preprocess import PreprocessConfig


def write_tiny_checkpoint(path, stamp_size: int = 64, seed: int = 0, width: int = 8):
    cfg = ExperimentConfig(output_dir="unused", data=DataVariantConfig(stamp_size=stamp_size),
                           model=ModelConfig(architecture="resnet_small", width=width, blocks_per_stage=[1, 1]))
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    for m in model.modules():  # the zero-initialised last BN of each block would make every block an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    save_checkpoint(path, {"epoch": 0, "model": model.state_dict(), "config": cfg.to_dict(), "preprocess": PreprocessConfig().to_dict()})
    return path
