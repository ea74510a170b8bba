"""Convert a segment to a chunked zarr for fast random tile reads (``vesuvius-pt convert``).

Output: a zarr group with ``volume`` (z, y, x) in chunks sized for tile reads (default (16, 128, 128),
Blosc LZ4 with byte shuffle: cheap to decode; ``codec="none"`` stores raw chunks, see
bench/bench_tile_read.py for what each costs),
``mask``, ``inklabels``, the training masks (``supervision_mask``, ``validation_mask``, ``ignore_mask``;
uint8 0/1) and ``ir`` when the source has them, and attrs
``napari_vesuvius_pt = {name, source, z_range, reverse, downsample, complete}``. ``open_segment`` opens
it back as format ``zarr``.

Streaming: the volume is copied one slab of ``chunk depth`` layers by one band of ``chunk height`` rows
at a time, so each zarr chunk is written once and memory holds only ``depth x rows x width`` voxels,
never the whole volume (nor a whole slab of full layers, which for a real segment would be gigabytes).

Atomicity: everything is written into ``OUT.zarr.partial`` and renamed to ``OUT.zarr`` at the end, so
an interrupted conversion leaves a ``.partial`` folder that ``open_segment`` refuses, never a complete-
looking zarr with missing chunks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.data.layouts import TRAINING_MASKS
from napari_vesuvius_pt.data.segment import Segment
from napari_vesuvius_pt.config import ZARR_CODECS
from napari_vesuvius_pt.errors import ConfigError, SegmentError

DEFAULT_CHUNKS = (16, 128, 128)
PLANE_CHUNKS = (1024, 1024)  # mask, labels and IR: 2D arrays read whole at open time


def _create_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
                  fast_codec: bool = False, uncompressed: bool = False):
    """zarr 3 (``create_array``) or zarr 2.16+ (``create_dataset``). ``fast_codec``: Blosc LZ4 with byte
    shuffle, which decodes several times faster than zarr 3's default zstd (bench/bench_tile_read.py),
    and tile reads are decode-bound."""
    create = getattr(group, "create_array", None)
    if create is not None:
        kwargs: dict[str, Any] = {}
        if uncompressed:
            kwargs["compressors"] = None
        elif fast_codec:
            from zarr.codecs import BloscCodec

            kwargs["compressors"] = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        return create(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **kwargs)
    kwargs = {}  # pragma: no cover - zarr 2
    if fast_codec:  # pragma: no cover
        from numcodecs import Blosc

        kwargs["compressor"] = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **kwargs)  # pragma: no cover


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def iter_convert(segment: Segment, out: str | Path, chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
                 overwrite: bool = False, codec: str = "blosc-lz4") -> Iterator[tuple[int, int]]:
    """Write ``segment`` (as opened: z range, reverse, downsample applied) to ``out``; yields
    ``(blocks done, blocks total)`` after each block. Closing the generator early leaves only ``.partial``."""
    import zarr

    if codec not in ZARR_CODECS:
        raise ConfigError(f"unknown zarr codec {codec!r}; use one of {', '.join(ZARR_CODECS)}")
    out = Path(out)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise SegmentError(f"chunks must be three positive integers (depth, rows, columns), got {chunks}")
    if out.exists():
        if not overwrite:
            raise SegmentError(f"{out} already exists; remove it or pass overwrite")
    local = isinstance(segment.path, Path)  # a remote segment's path is its URL (data/remote.py)
    if local and out.resolve() == segment.path.resolve():
        raise SegmentError(f"cannot convert {segment.path} onto itself")
    partial = _partial_path(out)
    if partial.exists():
        shutil.rmtree(partial)  # a previous interrupted conversion
    nz, h, w = segment.shape
    cz, cy, cx = min(chunks[0], nz), min(chunks[1], h), min(chunks[2], w)
    group = zarr.open_group(str(partial), mode="w")
    meta = {
        "name": segment.name,
        "source": str(segment.path.resolve()) if local else str(segment.path),
        "source_format": segment.fmt,
        "z_range": list(segment.z_range),
        "reverse": segment.reverse,
        "downsample": segment.downsample,
        "complete": False,
    }
    group.attrs["napari_vesuvius_pt"] = meta
    volume = _create_array(group, "volume", (nz, h, w), (cz, cy, cx), segment.dtype, fast_codec=True,
                           uncompressed=codec == "none")
    images = [("mask", segment.mask), ("inklabels", segment.inklabels), ("ir", segment.ir)]
    images += [(k, getattr(segment, k, None)) for k in TRAINING_MASKS]
    for kind, img in images:
        if img is None:
            continue
        data = img.astype(np.uint8) if img.dtype == bool else img
        arr = _create_array(group, kind, data.shape, (min(PLANE_CHUNKS[0], h), min(PLANE_CHUNKS[1], w)), data.dtype)
        arr[...] = data
    slabs = range(0, nz, cz)
    bands = range(0, h, cy)
    total = len(slabs) * len(bands)
    done = 0
    for z0 in slabs:
        z1 = min(z0 + cz, nz)
        for y0 in bands:
            y1 = min(y0 + cy, h)
            volume[z0:z1, y0:y1, :] = segment.volume[z0:z1, y0:y1, :]
            done += 1
            yield done, total
    group.attrs["napari_vesuvius_pt"] = {**meta, "complete": True}
    if out.exists():  # overwrite: replace only once the new copy is complete
        shutil.rmtree(out)
    os.replace(partial, out)


def convert_segment(segment: Segment, out: str | Path, chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
                    overwrite: bool = False, codec: str = "blosc-lz4") -> Path:
    """Convert without progress reporting; returns ``out``."""
    for _ in iter_convert(segment, out, chunks, overwrite, codec):
        pass
    return Path(out)
