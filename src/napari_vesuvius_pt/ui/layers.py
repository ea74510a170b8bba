"""Finding a segment's layers in the viewer and placing new 2D layers over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.data.remote import location_key


def _same_path(a: Any, b: str | Path) -> bool:
    return bool(a) and bool(b) and location_key(str(a)) == location_key(b)


def is_layer(layer: Any, kind: str) -> bool:
    """Is ``layer`` a napari layer of ``kind`` ("Image", "Labels", "Shapes", ...)? ``isinstance`` against
    ``napari.layers``, which sees through the ``PublicOnlyProxy`` napari gives plugin widgets (the
    proxy's own type is ``PublicOnlyProxy``, so ``type(layer).__name__`` checks fail there)."""
    import napari.layers

    cls = getattr(napari.layers, kind, None)
    return cls is not None and isinstance(layer, cls)


def find_segment_layer(viewer, path: str | Path, names: Sequence[str] = (), kinds: tuple[str, ...] = ("Image",)):
    """The layer showing the segment at ``path``: one of ``names`` (the layers the Segments widget made
    for it), else by the path it was opened from (layer source or metadata), else by the segment's folder
    or file name; None when the segment is not shown."""
    candidates = [layer for layer in viewer.layers if any(is_layer(layer, kind) for kind in kinds)]
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
    if layer is not None and is_layer(layer, "Labels") and not layer.contour:
        layer.contour = width
        layer.opacity = max(float(layer.opacity), 0.8)


def ink_labels_layer(viewer, layer_names: Sequence[str]):
    """The ink labels layer among ``layer_names`` (the reader names it '<segment> ink labels')."""
    for name in layer_names:
        if name.endswith(" ink labels") and name in viewer.layers:
            return viewer.layers[name]
    return None


SEGMENT_KINDS = ("volume", "mask", "inklabels")


def layer_segment_path(layer: Any) -> str | None:
    """The segment a layer belongs to, from its metadata: ``path`` for the reader's volume, mask and ink
    labels; ``segment_path`` for predictions, previews and regions made for a segment."""
    meta = getattr(layer, "metadata", {}) or {}
    if meta.get("kind") in SEGMENT_KINDS and meta.get("path"):
        return str(meta["path"])
    value = meta.get("segment_path")
    return str(value) if value else None


def layers_showing(viewer, path: str | Path, kinds: tuple[str, ...] = SEGMENT_KINDS) -> list:
    """The volume / mask / ink-label layers already showing the segment at ``path`` (e.g. opened with
    File › Open): a second opening replaces them instead of adding '… [1]' copies."""
    return [layer for layer in viewer.layers
            if (getattr(layer, "metadata", {}) or {}).get("kind") in kinds
            and _same_path((layer.metadata or {}).get("path"), path)]


def show_only_segment(viewer, path: str | Path, known: Sequence[str | Path]) -> None:
    """Show the layers of the segment at ``path`` and hide those of the other ``known`` segments.

    Segments are not translated apart: every layer stays in its own fragment's full-resolution pixels,
    the coordinates that regions, predictions and saved region files use, so only one is shown at a
    time and nothing of one fragment is ever drawn over another."""
    others = [p for p in known if not _same_path(p, path)]
    for layer in viewer.layers:
        owner = layer_segment_path(layer)
        if owner is None:
            continue
        if _same_path(owner, path):
            if (layer.metadata or {}).get("kind") in SEGMENT_KINDS:
                layer.visible = True
        elif any(_same_path(owner, p) for p in others):
            layer.visible = False


def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (itself when it is not a proxy)."""
    while "__wrapped__" in type(obj).__dict__ or hasattr(type(obj), "__wrapped__"):
        obj = obj.__wrapped__
    return obj


def same_layer(a: Any, b: Any) -> bool:
    """``a is b`` seen through napari's proxies: a plugin widget's layer handles are proxies, while layer
    list events carry the layers themselves."""
    return unwrap(a) is unwrap(b)
