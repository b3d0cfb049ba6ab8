"""Lens classifiers: ResNets with basic blocks, one logit out (sigmoid -> lens probability).

Both architectures use a CIFAR-style stem (3x3 convolution, stride 1, no max-pool): stamps are
32-101 px and arcs are 1-2 px wide, which an ImageNet 7x7/stride-2 stem plus pooling would blur
away before the first block. Stage k has ``width * 2**k`` channels; every stage after the
first halves the resolution.

- ``resnet_small``: any number of stages (``blocks_per_stage``), for CPU tests (width 8-16).
- ``resnet18``: exactly 4 stages; with ``width: 64`` and ``blocks_per_stage: [2, 2, 2, 2]`` it is
  ResNet-18's body (11.2 M parameters), for the GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from dhs_spark.errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class LensResNet(nn.Module):
    """ResNet body + global average pool + dropout + linear -> one logit per stamp."""

    def __init__(self, in_channels: int, width: int, blocks_per_stage: list[int], dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers = []
        c_in = width
        for k, n_blocks in enumerate(blocks_per_stage):
            c_out = width * 2**k
            for b in range(n_blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (k > 0 and b == 0) else 1))
                c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero the last BN of each block: the block starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        return self.head(self.body(self.stem(x))).squeeze(1)


def build_model(model_cfg) -> LensResNet:
    """The network of a :class:`dhs_spark.config.ModelConfig` (checked here; errors name the field)."""
    blocks = list(model_cfg.blocks_per_stage)
    if model_cfg.architecture not in ("resnet_small", "resnet18"):
        raise ConfigError("model.architecture", "expected 'resnet_small' or 'resnet18'", model_cfg.architecture)
    if not blocks or any(b < 1 for b in blocks):
        raise ConfigError("model.blocks_per_stage", "must be a non-empty list of positive block counts", blocks)
    if model_cfg.architecture == "resnet18" and len(blocks) != 4:
        raise ConfigError("model.blocks_per_stage", "resnet18 has 4 stages, e.g. [2, 2, 2, 2]", blocks)
    if model_cfg.width < 1:
        raise ConfigError("model.width", "must be >= 1", model_cfg.width)
    if not 0.0 <= model_cfg.dropout < 1.0:
        raise ConfigError("model.dropout", "must lie in [0, 1)", model_cfg.dropout)
    return LensResNet(model_cfg.in_channels, model_cfg.width, blocks, model_cfg.dropout)
