"""How segment values are shown (no Qt): the colours of masks and ink labels, and display ranges of raw
volumes, for the reader's layers and the Segments widget's preview alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vesuvius_pt.data.normalize import Normalizer, sample_voxels
from napari_vesuvius_pt.errors import VesuviusError

MASK_COLOR = "#4cc9f0"
INK_COLOR = "#ff3d7f"
# what a normalization's output range is, for showing it on 8 bits (None: the image's own percentiles)
DISPLAY_RANGE: dict[str, tuple[float, float] | None] = {
    "none": None, "kaggle": (0.0, 200.0 / 255.0), "minmax": (0.0, 1.0), "zscore": (-2.5, 2.5),
    "instance": (-2.5, 2.5),
}


def hex_rgb(color: str) -> list[int]:
    """``"#rrggbb"`` as ``[r, g, b]`` (0..255)."""
    return [int(color[i:i + 2], 16) for i in (1, 3, 5)]


def robust_contrast_limits(volume: Any, mask: np.ndarray | None = None) -> tuple[float, float] | None:
    """The 0.5th and 99.5th percentiles of a few tiles of the central layers inside ``mask``: a display
    range that reads well, without reading the whole volume (a viewer would otherwise scan it)."""
    try:
        values = sample_voxels(volume, mask, samples=16, size=64, max_depth=8)
    except VesuviusError:
        return None
    if values.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    if not high > low:
        return None
    return low, high


def display_limits(normalizer: Normalizer, volume: Any, mask: np.ndarray | None) -> tuple[float, float] | None:
    """Contrast limits under which the raw volume looks as the model sees it after ``normalizer``."""
    p = normalizer.params
    if normalizer.name == "minmax":
        return p["low"], p["high"]
    if normalizer.name == "zscore":
        lo, hi = DISPLAY_RANGE["zscore"]  # type: ignore[misc]
        return p["mean"] + lo * p["std"], p["mean"] + hi * p["std"]
    if normalizer.name == "kaggle":
        return (0.0, 200.0 * 256) if np.dtype(volume.dtype) == np.uint16 else (0.0, 200.0)
    return robust_contrast_limits(volume, mask)
