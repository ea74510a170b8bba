"""Block reductions over the last two axes: one ``factor x factor`` block of pixels becomes one value.

Every in-plane reduction of the package goes through here: the lazy volume's downsampling, the mask,
ink labels and IR image of a downsampled segment, the Segments widget's preview, and the labels and
masks brought to a model's reduced output grid.

======================  ==================================================  =========================
``how``                 value of a block                                    far edges (not a multiple)
======================  ==================================================  =========================
``"sum"``               the sum, accumulated in ``dtype``                   remainder dropped
``"mean"``              the mean in the input's dtype (or ``dtype``);       remainder dropped
                        integers rounded half up
``"majority"``          bool: at least half of the block is set             remainder dropped
``"fraction"``          float32 mean (the set fraction of a mask)           partial blocks, averaged
                                                                            over what they hold
======================  ==================================================  =========================

Dropping the remainder is what downsampling a segment does (its plane is ``floor(shape / factor)``);
partial blocks are what a model's output grid has (``ceil(shape / factor)``).

The core is :func:`_strided_sum`: ``factor**2`` strided adds, one pass over the data, several times
faster than a reshape-sum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

REDUCTIONS = ("sum", "mean", "majority", "fraction")


def _strided_sum(a: np.ndarray, factor: int, dtype: Any) -> np.ndarray:
    """Sum over ``factor x factor`` blocks of the last two axes, accumulated in ``dtype``; partial blocks at
    the far edges sum what they hold (the result has ``ceil(shape / factor)`` rows and columns)."""
    f = int(factor)
    total = a[..., ::f, ::f].astype(dtype)  # the (0, 0) offsets: one per block, partial blocks included
    for i in range(f):
        for j in range(f):
            if i == 0 and j == 0:
                continue
            part = a[..., i::f, j::f]
            rows, cols = part.shape[-2:]
            if rows == total.shape[-2] and cols == total.shape[-1]:
                total += part
            elif rows and cols:
                total[..., :rows, :cols] += part
    return total


def _whole_blocks(a: np.ndarray, factor: int) -> np.ndarray:
    """``a`` without the rows and columns past its last whole block (a view)."""
    h, w = a.shape[-2:]
    return a[..., : h // factor * factor, : w // factor * factor]


def block_sum(a: np.ndarray, factor: int, dtype: Any = None) -> np.ndarray:
    """Sum over whole ``factor x factor`` blocks, in ``dtype`` (default: int64 for integers and bool,
    float64 for floats)."""
    if dtype is None:
        dtype = np.float64 if np.issubdtype(a.dtype, np.inexact) else np.int64
    return _strided_sum(_whole_blocks(a, factor), factor, dtype)


def block_mean(a: np.ndarray, factor: int, dtype: Any = None) -> np.ndarray:
    """Mean over whole ``factor x factor`` blocks, in ``dtype`` (default: ``a``'s): integers are summed
    exactly and rounded half up, floats summed in float64. ``factor`` 1 returns ``a`` itself."""
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    if factor == 1:
        return a
    area = factor * factor
    a = _whole_blocks(a, factor)
    if np.issubdtype(dtype, np.integer):
        acc = np.uint32 if (dtype.itemsize <= 2 and not np.issubdtype(dtype, np.signedinteger)
                            and area <= 65536) else np.int64
        total = _strided_sum(a, factor, acc)
        return ((total + area // 2) // area).astype(dtype)
    return (_strided_sum(a, factor, np.float64) / area).astype(dtype)


def block_majority(a: np.ndarray, factor: int) -> np.ndarray:
    """Bool over whole ``factor x factor`` blocks: set where at least half of the block is set (nonzero).
    ``factor`` 1 returns a bool ``a`` itself."""
    on = a if a.dtype == bool else a != 0
    if factor == 1:
        return on
    area = factor * factor
    counts = _strided_sum(_whole_blocks(on, factor).view(np.uint8), factor, np.uint16 if area < 65536 else np.uint32)
    return counts >= (area + 1) // 2  # 2 * count >= area, without doubling in the accumulator's dtype


def block_fraction(a: Any, factor: int, band_rows: int = 4096) -> np.ndarray:
    """float32 mean of a 2D ``a`` over each ``factor x factor`` block, partial blocks at the far borders
    averaged over what they hold: labels and masks brought to a model's reduced output grid. Reads ``a``
    (a numpy or zarr array) a band of rows at a time."""
    r = int(factor)
    if r == 1:
        return np.asarray(a, dtype=np.float32)
    h, w = a.shape
    out = np.empty((math.ceil(h / r), math.ceil(w / r)), np.float32)
    col_counts = np.diff(np.append(np.arange(0, w, r), w)).astype(np.float32)
    band = max(r, band_rows - band_rows % r)
    for y in range(0, h, band):
        chunk = np.asarray(a[y:y + band])
        row_counts = np.diff(np.append(np.arange(0, chunk.shape[0], r), chunk.shape[0])).astype(np.float32)
        sums = _strided_sum(chunk, r, np.float64)
        out[y // r:y // r + len(row_counts)] = sums / np.outer(row_counts, col_counts)
    return out


def block_reduce(a: Any, factor: int, how: str = "mean", dtype: Any = None) -> np.ndarray:
    """Reduce ``a`` over ``factor x factor`` blocks of its last two axes; ``how`` is one of
    :data:`REDUCTIONS` (see the module docstring). ``dtype`` applies to ``"sum"`` and ``"mean"``."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"block factor must be at least 1, got {factor}")
    if how == "mean":
        return block_mean(np.asarray(a), factor, dtype)
    if how == "majority":
        return block_majority(np.asarray(a), factor)
    if how == "fraction":
        return block_fraction(a, factor)
    if how == "sum":
        return block_sum(np.asarray(a), factor, dtype)
    raise ValueError(f"unknown block reduction {how!r}; use one of {', '.join(REDUCTIONS)}")
