"""``LazyVolume``: the ``(z, y, x)`` volume of a segment after its z range, reverse and downsampling,
reading from a :mod:`~napari_vesuvius_pt.data.sources` source only what an index asks for.

Downsampling is a block mean (like ``cv2.resize(..., INTER_AREA)`` at an integer factor), not striding:
striding aliases the fibre texture and keeps all the noise of the skipped pixels' neighbours, while the
mean is what a lower-resolution scan would have recorded. It stays lazy: a tile of ``size`` pixels reads
the ``size * factor`` pixels under it and nothing else. The plane shape is ``floor(shape / factor)``; the
remainder rows/columns at the far edges are dropped. Integers are rounded half up, in the raw dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from napari_vesuvius_pt.data.blocks import block_mean
from napari_vesuvius_pt.data.sources import VolumeSource


def _axis_index(key: Any, n: int, axis: str) -> tuple[np.ndarray, bool]:
    """Selected indices along one axis, and whether the axis is dropped (an integer key)."""
    if isinstance(key, (int, np.integer)):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
        return np.array([i % n]), True
    if isinstance(key, slice):
        return np.arange(*key.indices(n)), False
    raise TypeError(f"LazyVolume indices must be integers or slices, got {type(key).__name__} for axis {axis}")


class LazyVolume:
    """A ``(z, y, x)`` view of a segment after z range, reverse and downsampling. Indexing with integers
    and slices reads only what is asked; ``np.asarray(volume)`` reads everything (explicitly)."""

    def __init__(self, source: VolumeSource, z_range: tuple[int, int], reverse: bool = False, downsample: int = 1):
        self.source = source
        self.z_range = (int(z_range[0]), int(z_range[1]))
        self.reverse = bool(reverse)
        self.downsample = int(downsample)
        _, h, w = source.shape
        self.shape = (self.z_range[1] - self.z_range[0], h // self.downsample, w // self.downsample)
        self.dtype = source.dtype

    ndim = 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        extra = (", reversed" if self.reverse else "") + (f", downsample {self.downsample}" if self.downsample > 1 else "")
        return f"LazyVolume(shape={self.shape}, dtype={self.dtype}, layers {self.z_range[0]}..{self.z_range[1]}{extra})"

    def file_layers(self, zs: Sequence[int]) -> list[int]:
        """File layer indices of the volume's layers ``zs``."""
        start, stop = self.z_range
        return [stop - 1 - z if self.reverse else start + z for z in zs]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3D volume: {len(key)}")
        key = key + (slice(None),) * (3 - len(key))
        (zi, zdrop), (yi, ydrop), (xi, xdrop) = (
            _axis_index(k, n, a) for k, n, a in zip(key, self.shape, "zyx"))
        out_shape = (len(zi), len(yi), len(xi))
        if 0 in out_shape:
            out = np.zeros(out_shape, dtype=self.dtype)
        else:
            f = self.downsample
            y0, y1 = int(yi.min()), int(yi.max()) + 1
            x0, x1 = int(xi.min()), int(xi.max()) + 1
            region = self.source.read(self.file_layers(zi.tolist()), slice(y0 * f, y1 * f), slice(x0 * f, x1 * f))
            out = block_mean(region, f, self.dtype)
            if len(yi) != y1 - y0 or yi[0] != y0:
                out = out[:, yi - y0]
            if len(xi) != x1 - x0 or xi[0] != x0:
                out = out[:, :, xi - x0]
        drop = tuple(i for i, d in enumerate((zdrop, ydrop, xdrop)) if d)
        return out.squeeze(axis=drop) if drop else out

    def __array__(self, dtype=None, copy=None):
        arr = self[:, :, :]
        return arr if dtype is None else arr.astype(dtype)
