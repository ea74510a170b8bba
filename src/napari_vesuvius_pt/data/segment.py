"""Segments on disk opened lazily: a ``(z, y, x)`` volume that reads only the tiles asked for, with
its mask, ink labels and infrared image.

The pieces:

- :mod:`~napari_vesuvius_pt.data.layouts`: the formats (``kaggle-folder``, ``layers-folder``, ``tiff``,
  ``zarr``, ``ome-zarr``) and what is where in each;
- :mod:`~napari_vesuvius_pt.data.sources`: the raw ``(Z, Y, X)`` readers (TIFF layers, multi-page TIFF,
  zarr), picklable, opening files lazily;
- :mod:`~napari_vesuvius_pt.data.lazy_volume`: ``LazyVolume``, the volume after the open-time options;
- :mod:`~napari_vesuvius_pt.data.images`: masks, ink labels and IR images (PNG or zarr arrays);
- :mod:`~napari_vesuvius_pt.data.blocks`: the block reductions of downsampling.

Reading: uncompressed TIFF layers are memory-mapped (``tifffile.memmap``); compressed or tiled ones
are read through tifffile's zarr store, which decodes only the strips or tiles a read touches; zarr
reads only the chunks it touches. No read decodes more than the region asked for (plus the rest of
the strips/chunks it falls in).

Options applied at open time, in this order: ``z_range`` ([start, stop) in the file's layer indices),
``reverse`` (flip the depth axis of that range), ``downsample`` (integer in-plane factor).

Downsampling the volume is a lazy block mean (see ``lazy_volume``). The plane shape is
``floor(shape / factor)``; the remainder rows/columns at the far edges are dropped. Mask and ink labels
are reduced by majority (a pixel is set when at least half of its block is), the IR image by block mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from napari_vesuvius_pt.data.blocks import block_reduce
from napari_vesuvius_pt.data.images import load_plane_image
from napari_vesuvius_pt.data.layouts import IMAGE_KINDS, TRAINING_MASKS, Located, locate
from napari_vesuvius_pt.data.lazy_volume import LazyVolume
from napari_vesuvius_pt.data.remote import is_url
from napari_vesuvius_pt.errors import SegmentError

if TYPE_CHECKING:
    from napari_vesuvius_pt.config import DataConfig


# ---------------------------------------------------------------- the segment


class Segment:
    """One segment as opened: a lazy volume after z range, reverse and downsample, with its 2D images."""

    def __init__(self, name: str, path: Path, fmt: str, volume: LazyVolume, mask: np.ndarray | None,
                 inklabels: np.ndarray | None, ir: np.ndarray | None, levels: list, storage: str,
                 attrs: dict | None = None):
        self.name = name
        self.path = path if is_url(path) else Path(path)  # a URL stays a string (data.remote)
        self.fmt = fmt
        self.volume = volume
        self.mask = mask
        self.inklabels = inklabels
        self.ir = ir
        self.levels = levels
        self.storage = storage  # e.g. "65 uncompressed TIFF layers (memory-mapped)" or zarr chunking
        self.attrs = dict(attrs or {})  # metadata stored with the segment (zarr attrs), else empty
        self._papyrus: np.ndarray | None = None
        self._released = False  # release_planes() was called: the 2D images are gone
        # training masks (bool (y, x) or None; villa's layout ships them, see data.layouts):
        self.supervision_mask: np.ndarray | None = None  # the pixels that count in the loss and metrics
        self.validation_mask: np.ndarray | None = None  # a validation region
        self.ignore_mask: np.ndarray | None = None  # pixels removed from the loss and the metrics

    @property
    def z_range(self) -> tuple[int, int]:
        return self.volume.z_range

    @property
    def reverse(self) -> bool:
        return self.volume.reverse

    @property
    def downsample(self) -> int:
        return self.volume.downsample

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.shape

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    def __repr__(self) -> str:
        parts = [f"{self.name!r}", self.fmt, f"shape={self.shape}", str(self.dtype), f"z {self.z_range[0]}..{self.z_range[1]}"]
        if self.reverse:
            parts.append("reversed")
        if self.downsample > 1:
            parts.append(f"downsample {self.downsample}")
        return f"Segment({', '.join(parts)})"

    def read_tile(self, z0: int, y: int, x: int, depth: int, size: int) -> np.ndarray:
        """A ``(depth, size, size)`` tile in the raw dtype. In-plane parts outside the volume are zeros
        (tiles at the edges); layers outside the volume are an error (a tile needs real layers)."""
        nz, h, w = self.shape
        if depth < 1 or size < 1:
            raise SegmentError(f"tile depth and size must be positive, got depth={depth}, size={size}")
        if z0 < 0 or z0 + depth > nz:
            raise SegmentError(
                f"{self.name}: a tile of {depth} layers from layer {z0} needs layers {z0}..{z0 + depth}, "
                f"but the volume has layers 0..{nz} (z range {self.z_range[0]}..{self.z_range[1]} of the file); "
                "use a smaller tile depth or a wider z range")
        y0, y1, x0, x1 = max(y, 0), min(y + size, h), max(x, 0), min(x + size, w)
        if y0 == y and x0 == x and y1 == y + size and x1 == x + size:
            return self.volume[z0:z0 + depth, y:y + size, x:x + size]
        tile = np.zeros((depth, size, size), dtype=self.dtype)
        if y0 < y1 and x0 < x1:
            tile[:, y0 - y:y1 - y, x0 - x:x1 - x] = self.volume[z0:z0 + depth, y0:y1, x0:x1]
        return tile

    def scored_mask(self) -> np.ndarray:
        """The pixels that count in the loss and the metrics: papyrus, within the supervision mask when
        there is one, outside the ignore mask."""
        scored = self.papyrus_mask()
        if self.supervision_mask is not None:
            scored = scored & self.supervision_mask
        if self.ignore_mask is not None:
            scored = scored & ~self.ignore_mask
        return scored

    def release_planes(self) -> None:
        """Drop the 2D images (mask, ink labels, infrared, training masks) once a run has taken what it
        needs from them (pretraining: the tile grid): about 2 bytes a pixel each segment would hold for
        the whole run, 10 GB for 38 segments of fragment 2's size. Reading tiles needs only the volume."""
        self.mask = self.inklabels = self.ir = None
        self.supervision_mask = self.validation_mask = self.ignore_mask = None
        self._papyrus = None
        self._released = True

    def papyrus_mask(self) -> np.ndarray:
        """The mask, or all True when the segment has none."""
        if self._released:
            raise RuntimeError(f"{self.name}: its mask was released (release_planes) after the tile grid was built")
        if self.mask is not None:
            return self.mask
        if self._papyrus is None:
            self._papyrus = np.ones(self.shape[1:], dtype=bool)
        return self._papyrus


# ---------------------------------------------------------------- opening


def open_segment(path: str | Path, z_range: Sequence[int] | None = None, reverse: bool = False,
                 downsample: int = 1) -> Segment:
    """Open a segment lazily (see the module docstring for formats and options); raises SegmentError.
    ``path`` may be an ``https://`` or ``s3://`` URL (see :mod:`~napari_vesuvius_pt.data.remote`)."""
    if is_url(path):
        from napari_vesuvius_pt.data.remote import locate_url

        return _assemble(locate_url(str(path)), z_range, reverse, _check_downsample(downsample))
    path = Path(path).expanduser()
    if not path.exists():
        raise SegmentError(f"segment not found: {path}")
    factor = _check_downsample(downsample)
    return _assemble(locate(path), z_range, reverse, factor)


def open_from_config(path: str | Path, data: "DataConfig") -> Segment:
    """Open ``path`` with a run's data options (z range, reverse, downsample)."""
    return open_segment(path, z_range=data.z_range, reverse=data.reverse, downsample=data.downsample)


def _check_downsample(downsample: Any) -> int:
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample < 1:
        raise SegmentError(f"downsample must be a whole number >= 1 (an in-plane factor), got {downsample!r}")
    return int(downsample)


def _check_z_range(z_range: Sequence[int] | None, n_layers: int, where: Path) -> tuple[int, int]:
    if z_range is None:
        return 0, n_layers
    try:
        start, stop = (int(v) for v in z_range)
        if any(float(v) != int(v) for v in z_range):
            raise ValueError
    except (TypeError, ValueError):
        raise SegmentError(f"z_range must be two whole numbers [start, stop), got {z_range!r}") from None
    if not 0 <= start < stop <= n_layers:
        raise SegmentError(f"z_range [{start}, {stop}) is outside the {n_layers} layers of {where} "
                           f"(need 0 <= start < stop <= {n_layers})")
    return start, stop


def _assemble(found: Located, z_range, reverse: bool, factor: int) -> Segment:
    path, source, images = found.path, found.source, found.images
    n_layers, h, w = source.shape
    if h < factor or w < factor:
        raise SegmentError(f"downsample {factor} is larger than the layers of {path} ({h}x{w})")
    z = _check_z_range(z_range, n_layers, path)
    volume = LazyVolume(source, z, reverse, factor)
    loaded: dict[str, np.ndarray | None] = {}
    for kind in IMAGE_KINDS:
        arr = load_plane_image(images.get(kind), kind)
        if arr is not None and arr.shape != (h, w):
            where = images[kind] if isinstance(images[kind], Path) else f"{path} ({kind} array)"
            raise SegmentError(f"{kind} {where} is {arr.shape[0]}x{arr.shape[1]} but the layers are {h}x{w}; "
                               "the mask and labels must have the layers' size")
        loaded[kind] = arr
    mask = None
    if loaded["mask"] is not None:
        full = loaded["mask"]
        if not full.any():
            raise SegmentError(f"mask of {path} is empty (all zero): there is no papyrus to read; check the mask file")
        mask = block_reduce(full, factor, "majority")
        if not mask.any():
            raise SegmentError(f"mask of {path} is empty after downsampling by {factor}; use a smaller factor")
    inklabels = None
    if loaded["inklabels"] is not None:
        inklabels = block_reduce(loaded["inklabels"], factor, "majority").view(np.uint8)
    ir = None
    if loaded["ir"] is not None:
        ir = block_reduce(loaded["ir"], factor, "mean")
    segment = Segment(found.name, path, found.fmt, volume, mask, inklabels, ir, [volume], source.storage, found.attrs)
    for kind in TRAINING_MASKS:  # reduced like the mask: a pixel is set when half of its block is
        if loaded[kind] is not None:
            setattr(segment, kind, block_reduce(loaded[kind], factor, "majority"))
    for level in found.levels:  # coarser levels for display, with the same z selection when their depth matches
        if level.shape[0] == source.shape[0] and level.shape[1] < segment.shape[1]:
            segment.levels.append(LazyVolume(level, segment.z_range, segment.reverse, 1))
    return segment


def ink_fraction(segment: Segment) -> float | None:
    """Fraction of the papyrus (mask) that is ink; None without ink labels."""
    if segment.inklabels is None:
        return None
    papyrus = segment.papyrus_mask()
    n = int(papyrus.sum())
    return float(segment.inklabels[papyrus].sum()) / n if n else math.nan
