"""napari writer: an Image layer (a prediction, a preview) to a ``.zarr`` array with its placement.

The array's attrs hold ``format`` (``_reader.IMAGE_LAYER_FORMAT``), ``name``, ``scale``, ``translate``,
``contrast_limits``, ``colormap``, ``opacity``, ``blending`` and the JSON-able part of the layer's
metadata, so this plugin's reader opens it as the same layer in the same place. The data is copied in
bands of chunk rows (a lazy layer is never read whole), into a hidden temporary folder beside the target
that is renamed over it at the end: a crash leaves the old file or the new one, never half of one.
A multiscale layer is written at full resolution (level 0).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt._reader import IMAGE_LAYER_FORMAT
from napari_vesuvius_pt.errors import ConfigError

_BAND_BYTES = 64 * 2**20  # at most this much of the layer in memory at once


def _jsonable(value: Any) -> Any | None:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of about 1 MiB: 512 x 512 planes (256 x 256 tiles of 16 planes for volumes)."""
    if len(shape) == 1:
        return (min(shape[0], 2**20 // itemsize),)
    plane = 512 if len(shape) == 2 else 256
    lead = [1] * (len(shape) - 3) + ([16] if len(shape) >= 3 else [])
    chunks = [*lead, plane, plane]
    return tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))


def _copy(data: Any, out: Any) -> None:
    """Copy ``data`` into the zarr array ``out`` in bands along axis 0 (whole chunks, bounded memory)."""
    shape = tuple(out.shape)
    if not shape or shape[0] == 0:
        out[...] = np.asarray(data)
        return
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * out.dtype.itemsize
    step = out.chunks[0] * max(1, _BAND_BYTES // max(1, row_bytes * out.chunks[0]))
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        out[start:stop] = np.asarray(data[start:stop])


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``; an old ``path`` is moved aside first and deleted only after."""
    old = None
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, old)
    elif path.exists() or path.is_symlink():
        path.unlink()
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """napari's single-layer writer hook for Image layers: ``path`` (``.zarr`` added when missing)."""
    import zarr

    target = Path(path).expanduser()
    if target.suffix.lower() != ".zarr":
        target = target.with_name(target.name + ".zarr")
    if meta.get("rgb"):
        raise ConfigError(f"cannot write RGB layer {meta.get('name')!r} as a prediction zarr; "
                          "convert it to one channel first")
    if meta.get("multiscale") or isinstance(data, list):
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(getattr(data, "dtype", np.float32))
    if dtype == np.float64:
        dtype = np.dtype(np.float32)  # a prediction or preview needs no more, and halves the file
    attrs = {
        "format": IMAGE_LAYER_FORMAT,
        "name": str(meta.get("name") or target.stem),
        "scale": [float(s) for s in meta.get("scale", [1.0] * len(shape))],
        "translate": [float(t) for t in meta.get("translate", [0.0] * len(shape))],
    }
    for key in ("contrast_limits", "opacity", "blending"):
        value = _jsonable(meta.get(key))
        if value is not None:
            attrs[key] = value
    colormap = meta.get("colormap")  # napari passes the colormap as a dict; a name is enough to restore it
    name = colormap.get("name") if isinstance(colormap, dict) else getattr(colormap, "name", colormap)
    if isinstance(name, str):
        attrs["colormap"] = name
    metadata = {k: v for k, v in (meta.get("metadata") or {}).items() if _jsonable(v) is not None}
    if metadata:
        attrs["metadata"] = {k: _jsonable(v) for k, v in metadata.items()}

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        out = zarr.create_array(str(tmp), shape=shape, chunks=_chunks(shape, dtype.itemsize), dtype=dtype,
                                fill_value=0)
        _copy(data, out)
        out.attrs.update(attrs)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(target)]
