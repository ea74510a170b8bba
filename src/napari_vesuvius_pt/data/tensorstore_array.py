"""Local zarr arrays read with tensorstore: the same chunks as zarr-python, decoded several times faster.

tensorstore reads and decodes the chunks of one request concurrently in C++, with none of zarr-python's
per-call overhead: bench/bench_tile_read.py measured it at 0.80x memory-mapped TIFF for predict's
grid-order reads of a fresh volume against 0.20x for zarr-python (random tiles: 0.13x against 0.07x).
Repeated reads are served by tensorstore's own cache of decoded chunks (its ``cache_pool``), one pool
shared by every array the process opens, sized like data/chunk_cache.py's (a quarter of the available
memory, or ``VESUVIUS_PT_CHUNK_CACHE_MB``): in the same bench its hits ran at 1.05x memmap for random
tiles against 0.67x for the project's own cache over tensorstore, so local zarr skips the latter.

:func:`open_local_zarr` returns None (and the caller keeps zarr-python) when tensorstore is not
installed or cannot open the array (a zarr format or codec it does not support).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np


_context: Any = None
_context_lock = threading.Lock()


def shared_context() -> Any:
    """The tensorstore context of this process: one decoded-chunk cache pool for all arrays."""
    global _context
    if _context is None:
        with _context_lock:
            if _context is None:
                import tensorstore as ts

                from napari_vesuvius_pt.data.chunk_cache import default_cache_bytes

                _context = ts.Context({"cache_pool": {"total_bytes_limit": default_cache_bytes()}})
    return _context


class TensorStoreArray:
    """The numpy-style read side of a tensorstore array: ``shape``, ``dtype``, ``chunks``, ``[...]``."""

    caches_chunks = True  # tensorstore's cache pool: no second cache on top (data.chunk_cache.cached)

    def __init__(self, store: Any):
        self.store = store
        self.shape = tuple(int(s) for s in store.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        layout = store.chunk_layout
        grid = layout.read_chunk.shape or layout.write_chunk.shape
        self.chunks = tuple(int(c) for c in grid) if grid is not None else self.shape
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.store[key].read().result())


def _driver(array_dir: Path) -> str | None:
    if (array_dir / "zarr.json").is_file():
        try:
            meta = json.loads((array_dir / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        return "zarr3" if meta.get("node_type") == "array" else None
    if (array_dir / ".zarray").is_file():
        return "zarr"
    return None


def open_local_zarr(path: str | Path, name: str | None = None) -> TensorStoreArray | None:
    """The zarr array at ``path`` (``name`` inside the group there) through tensorstore, or None."""
    try:
        import tensorstore as ts
    except ImportError:
        return None
    array_dir = Path(path) / name if name else Path(path)
    driver = _driver(array_dir)
    if driver is None:
        return None
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(array_dir.resolve())},
            "recheck_cached_data": "open"}
    try:
        return TensorStoreArray(ts.open(spec, read=True, open=True, context=shared_context()).result())
    except Exception:  # an unsupported codec or layout: zarr-python reads it
        return None
