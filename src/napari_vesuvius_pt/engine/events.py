"""Typed events yielded by the engine's run generators.

Runs never print and never touch Qt; the CLI prints these, the widgets turn them into progress bars,
plots and layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Started(Event):
    run_dir: Path | None
    device: str  # human readable, e.g. "cpu" or "cuda:0 (NVIDIA H200)"
    total_steps: int | None = None  # steps (or tiles) the run will do, when known
    first_epoch: int = 0  # > 0 when resuming


@dataclass(frozen=True)
class StepDone(Event):
    epoch: int
    step: int  # within the epoch, 1-based
    steps_per_epoch: int
    losses: dict[str, float]  # "loss" plus its terms, e.g. invariance/variance/covariance
    lr: float
    samples_per_s: float
    data_wait: float = 0.0  # fraction of the step spent waiting for data


@dataclass(frozen=True)
class EpochDone(Event):
    epoch: int  # 1-based, the epoch just finished
    epochs: int
    metrics: dict[str, float]
    checkpoint: Path | None


@dataclass(frozen=True)
class PreviewReady(Event):
    """A prediction to show over the data, e.g. the validation region after a fine-tuning epoch."""

    epoch: int
    name: str
    array: np.ndarray  # (y, x) probabilities
    translate: tuple[float, float] = (0.0, 0.0)  # (y, x) of array[0, 0] in segment pixels
    scale: tuple[float, float] = (1.0, 1.0)
    segment_path: str = ""  # the segment it lies on (the validation fragment)


@dataclass(frozen=True)
class TilesDone(Event):
    """Tiled inference progress (one event per batch)."""

    name: str  # encoder / checkpoint label
    done: int
    total: int
    tiles_per_s: float = 0.0


@dataclass(frozen=True)
class LabelsReady(Event):
    """The segment's ink labels, to show under the predictions (full-resolution pixels)."""

    name: str
    labels: np.ndarray  # uint8 0/1 (y, x)


@dataclass(frozen=True)
class MetricsReady(Event):
    """``engine.evaluation.evaluate`` results per encoder (BinaryMetrics), after a complete prediction."""

    metrics: dict[str, Any]
    note: str = ""  # why there are none, when there are none


@dataclass(frozen=True)
class MatrixUpdated(Event):
    """CKA matrices after a checkpoint's features were added."""

    names: list[str]
    linear: np.ndarray
    rbf: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage(Event):
    """A multi-run job (the demo) moves to its next stage; the stage's own events follow."""

    name: str
    index: int  # 1-based
    total: int


@dataclass(frozen=True)
class Finished(Event):
    run_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # True when the consumer stopped the run early


@dataclass(frozen=True)
class Failed(Event):
    """The run could not go on (non-finite loss, out of memory); the last good checkpoint is kept."""

    message: str
    checkpoint: Path | None = None
