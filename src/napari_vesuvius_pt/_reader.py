"""napari reader: segments (Kaggle folder, layers folder, multi-page TIFF, zarr, OME-Zarr), prediction
zarrs written by the predict engine, and image-layer zarrs written by this plugin's writer.

A segment becomes a lazy Image layer (the ``Segment.volume`` itself, or its levels as a multiscale
image) named after the segment, with its mask and ink labels as Labels layers ("<name> mask",
"<name> ink labels"). Everything is placed in the full-resolution pixel grid of the segment's files:
a segment opened with ``downsample f`` gets scale ``f`` and an offset of ``(f - 1) / 2`` (each pixel is
the mean of an ``f x f`` block, so its centre sits over the block's centre), which is also where the
predict engine puts its predictions.

``get_reader`` returns None for paths that are not segments (napari then tries other readers). A path
that is clearly meant as a segment (a folder with ``surface_volume/`` or ``layers/``, a zarr written by
this plugin, a half-written ``.partial``) but cannot be opened is claimed anyway: reading it shows the
``SegmentError`` message as a napari error notification and adds nothing (napari's null-layer result),
so the viewer goes on; an exception raised by a reader function would instead propagate out of
``viewer.open``. This module reports through napari itself (imported when reporting) and imports nothing
from ``ui``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from napari_vesuvius_pt.data.display import INK_COLOR, MASK_COLOR, robust_contrast_limits
from napari_vesuvius_pt.data.layouts import PARTIAL_SUFFIX, is_zarr
from napari_vesuvius_pt.data.sources import TIFF_SUFFIXES
from napari_vesuvius_pt.errors import SegmentError, VesuviusError

LayerData = tuple  # (data, kwargs, layer type)
ReaderFunction = Callable[[Any], list]

PLUGIN = "napari-vesuvius-pt"
IMAGE_LAYER_FORMAT = "napari-vesuvius-pt/image-layer/1"  # what _writer writes
PREDICTION_STYLE = {"colormap": "magma", "opacity": 0.6, "blending": "additive"}


# ---------------------------------------------------------------- layer data (shared with the widget and sample data)


def placement(downsample: int, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, translate) of an ``ndim``-D layer whose last two axes are downsampled by ``downsample``."""
    f = float(downsample)
    lead = ndim - 2
    return (1.0,) * lead + (f, f), (0.0,) * lead + ((f - 1) / 2, (f - 1) / 2)


def segment_layers(name: str, volume: Any, mask: np.ndarray | None = None, inklabels: np.ndarray | None = None,
                   *, downsample: int = 1, levels: Sequence[Any] | None = None,
                   metadata: dict[str, Any] | None = None,
                   contrast_limits: tuple[float, float] | None = None) -> list[LayerData]:
    """Layer data tuples for a segment: its volume as an Image layer (multiscale when ``levels`` has more
    than one level), the mask and ink labels as Labels layers, all placed alike."""
    metadata = dict(metadata or {})
    scale3, translate3 = placement(downsample, 3)
    scale2, translate2 = placement(downsample, 2)
    multiscale = levels is not None and len(levels) > 1
    if contrast_limits is None:
        contrast_limits = robust_contrast_limits(volume, mask)
    image_kwargs: dict[str, Any] = {
        "name": name, "scale": scale3, "translate": translate3, "colormap": "gray",
        "metadata": {**metadata, "kind": "volume"}, "multiscale": multiscale,
    }
    if contrast_limits is not None:
        image_kwargs["contrast_limits"] = list(contrast_limits)
    layers: list[LayerData] = [(list(levels) if multiscale else volume, image_kwargs, "image")]
    if mask is not None:
        layers.append((_as_labels(mask), {
            "name": f"{name} mask", "scale": scale2, "translate": translate2, "opacity": 0.18,
            "colormap": ["transparent", MASK_COLOR], "metadata": {**metadata, "kind": "mask"},
        }, "labels"))
    if inklabels is not None:
        layers.append((_as_labels(inklabels), {
            "name": f"{name} ink labels", "scale": scale2, "translate": translate2, "opacity": 0.5,
            "colormap": ["transparent", INK_COLOR], "metadata": {**metadata, "kind": "inklabels"},
        }, "labels"))
    return layers


def _as_labels(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return np.ascontiguousarray(arr).view(np.uint8)
    return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.uint8)


def segment_metadata(segment: Any) -> dict[str, Any]:
    """What a layer records about the segment it shows (``ui.layers.find_segment_layer`` reads ``path``)."""
    return {
        "path": str(segment.path), "segment": segment.name, "format": segment.fmt,
        "z_range": list(segment.z_range), "reverse": bool(segment.reverse), "downsample": int(segment.downsample),
        "storage": getattr(segment, "storage", ""),
    }


def layers_of_segment(segment: Any, contrast_limits: tuple[float, float] | None = None) -> list[LayerData]:
    """Layer data tuples for an opened ``Segment``."""
    return segment_layers(segment.name, segment.volume, segment.mask, segment.inklabels,
                          downsample=segment.downsample, levels=segment.levels,
                          metadata=segment_metadata(segment), contrast_limits=contrast_limits)


def layers_of_prediction(path: str | Path) -> list[LayerData]:
    """One Image layer per encoder of a prediction zarr, in place over the segment (lazy zarr arrays; the
    OME-Zarr pyramid as a multiscale image once it is written)."""
    from napari_vesuvius_pt.engine.prediction_store import open_prediction

    store = open_prediction(path)
    if not store.names:
        raise SegmentError(f"prediction {path} holds no predictions yet; run `vesuvius-pt predict` into it")
    out = []
    for name in store.names:
        info = store.info(name)
        kwargs = {**store.layer_kwargs(name), **PREDICTION_STYLE}
        kwargs["metadata"] = {
            "prediction_path": str(path), "encoder": name, "segment": store.segment.get("name"),
            "segment_path": store.segment.get("path"), "complete": bool(info.get("complete", False)),
            "done_rows": store.done_rows(name), "kind": "prediction",
        }
        levels = store.levels(name)
        if len(levels) > 1:
            kwargs["multiscale"] = True
        out.append((levels if len(levels) > 1 else levels[0], kwargs, "image"))
    return out


def layers_of_image_zarr(path: str | Path) -> list[LayerData]:
    """The Image layer a zarr written by ``_writer.write_image`` holds, with its recorded placement."""
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    attrs = arr.attrs.asdict()
    kwargs: dict[str, Any] = {"name": attrs.get("name") or Path(path).stem}
    for key in ("scale", "translate", "contrast_limits", "opacity", "blending"):
        if attrs.get(key) is not None:
            kwargs[key] = attrs[key]
    from napari.utils.colormaps import AVAILABLE_COLORMAPS

    if attrs.get("colormap") in AVAILABLE_COLORMAPS:  # a custom colormap saved by name cannot be rebuilt
        kwargs["colormap"] = attrs["colormap"]
    kwargs["metadata"] = {**dict(attrs.get("metadata") or {}), "source_zarr": str(path)}
    return [(arr, kwargs, "image")]


# ---------------------------------------------------------------- deciding what a path is


def _zarr_attrs(path: Path) -> dict[str, Any] | None:
    """The attrs of the zarr at ``path`` (group or array), or None if it is not a readable zarr."""
    if not (path.is_dir() and is_zarr(path)):
        return None
    import zarr

    try:
        return dict(zarr.open(str(path), mode="r").attrs)
    except Exception:  # unreadable metadata: let open_segment say what is wrong
        return {}


def _claims(path: Path) -> bool:
    """Whether ``path`` is plainly meant as a segment of this plugin, so a failure to open it is reported
    rather than passed on to other readers."""
    if path.name.endswith(PARTIAL_SUFFIX):
        return True
    if path.is_dir() and ((path / "surface_volume").is_dir() or (path / "layers").is_dir()
                          or path.name in ("surface_volume", "layers")):
        return True
    attrs = _zarr_attrs(path)
    return bool(attrs) and "napari_vesuvius_pt" in attrs


def _reader_for_one(path: Path) -> Callable[[], list] | None:
    """A function producing the layers of ``path``, or None when this plugin does not read it."""
    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.engine.prediction_store import READABLE_FORMATS

    if not path.exists():
        return None
    is_tiff = path.is_file() and path.suffix.lower() in TIFF_SUFFIXES
    attrs = _zarr_attrs(path)
    if not (is_tiff or path.is_dir()):
        return None
    if attrs is not None and attrs.get("format") in READABLE_FORMATS:
        return lambda: layers_of_prediction(path)
    if attrs is not None and attrs.get("format") == IMAGE_LAYER_FORMAT:
        return lambda: layers_of_image_zarr(path)
    if path.is_dir() and attrs is None and not _claims(path):
        return None  # a plain folder: not a segment
    try:
        segment = open_segment(path)
    except SegmentError as exc:
        if _claims(path):
            return _failure(exc)
        return None
    return lambda: layers_of_segment(segment)


def _failure(exc: VesuviusError) -> Callable[[], list]:
    """A layer maker that shows ``exc`` (a user's error: its message says what to do) as a napari error
    notification and makes no layers."""

    def report() -> list:
        from napari.utils.notifications import show_error

        show_error(f"{PLUGIN}: {exc}")
        return []

    return report


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """napari's reader hook: a reader function for ``path`` (or every path of a list), else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    makers = [_reader_for_one(Path(p).expanduser()) for p in paths]
    if any(m is None for m in makers):
        return None

    def read(_path: Any) -> list:
        layers: list = []
        for make in makers:
            layers.extend(make())  # type: ignore[misc]
        return layers or [(None,)]  # nothing to add (a reported failure): napari's "read, no layers" sentinel

    return read
