"""Ink model: the 3D encoder plus a light 2D decoder that predicts ink at a reduced output size.

Each encoder stage's feature map is pooled over depth, projected to a common width, and merged
top-down as in a feature pyramid down to the finest stage the output needs. The seed method's "fine-tuning on smaller output
sizes": a 64x64 tile predicts a 16x16 logit map at output stride 4, where ``layer1`` already lives,
so no upsampling path is spent on resolution the labels do not need.

In-plane strides of the stages: layer1 /4, layer2 /8, layer3 /16, layer4 /32.

Pooling over depth (``depth_pooling``): ``max`` keeps, per channel, the layer where the feature is
strongest (ink sits in a few layers at the surface, which undulates through the tile), ``attention``
learns a softmax weight over depth per position from the features (a 1x1x1 convolution), ``mean``
averages all layers, which dilutes a few inked layers among many empty ones. The 2023 Kaggle winners
and villa's ink models pool with max or attention; see docs/defaults-study.md for the measurements.
The classes default to ``mean``, the layout of checkpoints written before the option (their payload has
no ``depth_pooling``); fine-tuning runs pass ``FinetuneConfig.depth_pooling``, whose default is ``max``.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_vesuvius_pt.config import DEPTH_POOLINGS, OUTPUT_STRIDES
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.models.encoder import STAGES, Encoder

STAGE_STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class DepthPool(nn.Module):
    """``(B, C, D, H, W) -> (B, C, H, W)`` by mean, max or a learned softmax attention over depth."""

    def __init__(self, channels: int, mode: str = "max") -> None:
        super().__init__()
        if mode not in DEPTH_POOLINGS:
            raise ConfigError(f"depth_pooling must be one of {', '.join(DEPTH_POOLINGS)}, got {mode!r}")
        self.mode = mode
        self.score = nn.Conv3d(channels, 1, 1) if mode == "attention" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "mean":
            return x.mean(dim=2)
        if self.mode == "max":
            return x.amax(dim=2)
        assert self.score is not None
        weights = torch.softmax(self.score(x).float(), dim=2).to(x.dtype)  # (B, 1, D, H, W)
        return (x * weights).sum(dim=2)


class InkDecoder(nn.Module):
    """Depth-pooled feature pyramid -> one ink logit per output pixel."""

    def __init__(self, stage_channels: dict[str, int], output_stride: int = 4, channels: int = 64,
                 depth_pooling: str = "mean") -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.output_stride = output_stride
        self.depth_pooling = depth_pooling
        finest = "layer1" if output_stride <= 4 else "layer2"
        self.stages = STAGES[STAGES.index(finest):]
        self.pool = nn.ModuleDict({s: DepthPool(stage_channels[s], depth_pooling) for s in self.stages})
        self.lateral = nn.ModuleDict({s: nn.Conv2d(stage_channels[s], channels, 1) for s in self.stages})
        self.smooth = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, 1, 1)

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int]) -> Tensor:
        merged: Tensor | None = None
        for stage in reversed(self.stages):  # coarse to fine
            lateral = self.lateral[stage](self.pool[stage](features[stage]))
            if merged is not None:
                merged = F.interpolate(merged, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                lateral = lateral + merged
            merged = lateral
        assert merged is not None
        logits = self.classifier(self.smooth(merged))
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits


class InkModel(nn.Module):
    """``forward((B, 1, D, S, S)) -> (B, 1, S / output_stride, S / output_stride)`` ink logits."""

    def __init__(self, encoder: Encoder, output_stride: int = 4, decoder_channels: int = 64,
                 depth_pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.head = InkDecoder(encoder.stage_channels, output_stride, decoder_channels, depth_pooling)
        self.output_stride = output_stride
        self.depth_pooling = depth_pooling
        self.encoder_frozen = False

    def output_size(self, size: int | tuple[int, int]) -> tuple[int, int]:
        sy, sx = (size, size) if isinstance(size, int) else size
        s = self.output_stride
        if sy % s or sx % s:
            raise ConfigError(
                f"tile size {sy}x{sx} is not a multiple of the output stride {s}; use a tile size divisible by {s}"
            )
        return sy // s, sx // s

    def forward(self, x: Tensor) -> Tensor:
        self.encoder.check_input(x)  # shape, channels, dtype, NaN: before any work
        out_size = self.output_size(tuple(x.shape[-2:]))
        if self.encoder_frozen:
            with torch.no_grad():
                _, features = self.encoder.forward_features(x)
        else:
            _, features = self.encoder.forward_features(x)
        return self.head(features, out_size)

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Frozen: no encoder gradients and batch-norm statistics kept as loaded, even in ``train()``."""
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        self.encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> "InkModel":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.encoder.parameters())

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.head.parameters())
