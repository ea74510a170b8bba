"""Finding a segment's layers in the viewer and placing new 2D layers over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _same_path(a: Any, b: str | Path) -> bool:
    if not a:
        return False
    try:
        return Path(str(a)).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def find_segment_layer(viewer, path: str | Path, names: Sequence[str] = (), kinds: tuple[str, ...] = ("Image",)):
    """The layer showing the segment at ``path``: one of ``names`` (the layers the Segments widget made
    for it), else by the path it was opened from (layer source or metadata), else by the segment's folder
    or file name; None when the segment is not shown."""
    candidates = [layer for layer in viewer.layers if type(layer).__name__ in kinds]
    for layer in candidates:
        if layer.name in names:
            return layer
    for layer in candidates:
        meta = getattr(layer, "metadata", {}) or {}
        if any(_same_path(meta.get(key), path) for key in ("path", "segment_path", "source")):
            return layer
        if _same_path(getattr(getattr(layer, "source", None), "path", None), path):
            return layer
    names = {Path(path).name, Path(path).stem}
    for layer in candidates:
        if layer.name in names:
            return layer
    return None


def plane_placement(layer) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(scale, translate) of ``layer``'s last two axes and the plane's larger side in world units;
    identity and a nominal size when there is no layer."""
    if layer is None:
        return (1.0, 1.0), (0.0, 0.0), 1000.0
    scale = tuple(float(s) for s in layer.scale[-2:])
    translate = tuple(float(t) for t in layer.translate[-2:])
    shape = np.asarray(layer.data[0].shape if getattr(layer, "multiscale", False) else layer.data.shape)[-2:]
    extent = float(max(shape[0] * scale[0], shape[1] * scale[1]))
    return scale, translate, extent


def outline_labels(layer, width: int = 2) -> None:
    """Show a Labels layer (ink labels) as outlines, so a prediction underneath stays readable."""
    if layer is not None and type(layer).__name__ == "Labels" and not layer.contour:
        layer.contour = width
        layer.opacity = max(float(layer.opacity), 0.8)


def ink_labels_layer(viewer, layer_names: Sequence[str]):
    """The ink labels layer among ``layer_names`` (the reader names it '<segment> ink labels')."""
    for name in layer_names:
        if name.endswith(" ink labels") and name in viewer.layers:
            return viewer.layers[name]
    return None
