"""A process-wide cache of decoded chunks, so repeated tile reads from a chunked array (zarr, OME-Zarr)
cost a numpy copy instead of a store read and a decode.

Used for chunked arrays read through zarr-python (remote zarr over fsspec, compressed TIFFs through
tifffile's zarr store); local zarr is read with tensorstore and its own cache pool instead
(data/tensorstore_array.py), which measured faster on hits.

Why: zarr-python spends milliseconds of fixed overhead per read (its async machinery, codec pipeline)
however small the read, and a random ``(16, 128, 128)`` tile touches up to 8 chunks; training reads the
same tiles every epoch and prediction's overlapping tile rows read each chunk row twice. With decoded
chunks cached, a tile read is a few dictionary look-ups and copies: bench/bench_tile_read.py measures
it against memory-mapped TIFF, zarr-python alone, zarr-python with more async concurrency, an
uncompressed zarr and tensorstore (with and without its own cache).

Size: ``VESUVIUS_PT_CHUNK_CACHE_MB`` (0 turns the cache off), else a quarter of the memory available
when the cache is first used, at most 16 GiB. Least recently used chunks are dropped first. Each
process (a DataLoader worker, say) has its own cache.

Misses are read in one call of the underlying array over the bounding box of the missing chunks
(aligned to chunk boundaries), so the store decodes them concurrently, then split into chunks.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

ENV_CACHE_MB = "VESUVIUS_PT_CHUNK_CACHE_MB"
MAX_DEFAULT_BYTES = 16 << 30


def default_cache_bytes() -> int:
    """The cache size: ``$VESUVIUS_PT_CHUNK_CACHE_MB`` MiB, else a quarter of the available memory (<= 16 GiB)."""
    env = os.environ.get(ENV_CACHE_MB, "").strip()
    if env:
        try:
            return max(0, int(float(env) * (1 << 20)))
        except ValueError:
            pass
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil missing
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 << 30
    return int(min(available // 4, MAX_DEFAULT_BYTES))


class DecodedChunkCache:
    """A thread-safe LRU of decoded chunks capped at ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return arr

    def put(self, key: Any, arr: np.ndarray) -> None:
        size = arr.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = arr
            self.nbytes += size
            while self.nbytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


_shared: DecodedChunkCache | None = None
_shared_lock = threading.Lock()
_tokens = itertools.count()


def shared_cache() -> DecodedChunkCache:
    """The process's cache (created on first use, sized by :func:`default_cache_bytes`)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = DecodedChunkCache(default_cache_bytes())
    return _shared


def _axis(key: Any, n: int) -> tuple[int, int, bool]:
    if isinstance(key, (int, np.integer)):
        i = int(key) % n if -n <= int(key) < n else None
        if i is None:
            raise IndexError(f"index {key} is out of bounds for an axis of size {n}")
        return i, i + 1, True
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step != 1:
            raise IndexError("cached chunk reads take slices with step 1")
        return start, max(start, stop), False
    raise TypeError(f"cached chunk reads take integers and slices, got {type(key).__name__}")


class CachedArray:
    """Numpy-style reads (integers and step-1 slices) of a chunked array through a :class:`DecodedChunkCache`.

    ``array`` needs ``shape``, ``dtype``, ``chunks`` (regular) and numpy indexing by slices.
    """

    def __init__(self, array: Any, cache: DecodedChunkCache | None = None):
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(int(c) for c in array.chunks)
        self.ndim = len(self.shape)
        self.cache = cache or shared_cache()
        self._token = next(_tokens)  # entries of this array (never shared with a re-opened array)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        bounds = [_axis(k, n) for k, n in zip(key, self.shape)]
        lo = [b[0] for b in bounds]
        hi = [b[1] for b in bounds]
        out = np.empty([h - low for low, h in zip(lo, hi)], dtype=self.dtype)
        if out.size:
            ranges = [range(low // c, -(-h // c)) for low, h, c in zip(lo, hi, self.chunks)]
            indices = list(itertools.product(*ranges))
            found = {idx: self.cache.get((self._token, idx)) for idx in indices}
            missing = [idx for idx, arr in found.items() if arr is None]
            if missing:
                found.update(self._load(missing))
            for idx, chunk in found.items():
                c0 = [i * c for i, c in zip(idx, self.chunks)]
                src = tuple(slice(max(low, a) - a, min(h, a + n) - a) for low, h, a, n in zip(lo, hi, c0, chunk.shape))
                dst = tuple(slice(max(low, a) - low, min(h, a + n) - low) for low, h, a, n in zip(lo, hi, c0, chunk.shape))
                out[dst] = chunk[src]
        drop = tuple(i for i, b in enumerate(bounds) if b[2])
        return out.squeeze(axis=drop) if drop else out

    def _load(self, missing: list[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
        """Read the bounding box of the missing chunks in one call, split it, cache the pieces."""
        first = [min(idx[d] for idx in missing) for d in range(self.ndim)]
        last = [max(idx[d] for idx in missing) for d in range(self.ndim)]
        box0 = [f * c for f, c in zip(first, self.chunks)]
        box1 = [min((e + 1) * c, n) for e, c, n in zip(last, self.chunks, self.shape)]
        block = np.asarray(self.array[tuple(slice(a, b) for a, b in zip(box0, box1))])
        loaded = {}
        for idx in itertools.product(*(range(f, e + 1) for f, e in zip(first, last))):
            sl = tuple(slice(i * c - a, min((i + 1) * c, n) - a)
                       for i, c, a, n in zip(idx, self.chunks, box0, self.shape))
            chunk = block[sl]  # a view: the pieces partition the block, so their bytes add up to it
            self.cache.put((self._token, idx), chunk)
            loaded[idx] = chunk
        return loaded


def cached(array: Any, cache: DecodedChunkCache | None = None) -> Any:
    """``array`` read through the shared decoded-chunk cache when it is chunked and the cache is on;
    numpy arrays and memory maps are returned as they are."""
    if isinstance(array, np.ndarray) or getattr(array, "chunks", None) is None:
        return array
    if getattr(array, "caches_chunks", False):  # it has its own cache (tensorstore's pool)
        return array
    cache = cache or shared_cache()
    if cache.max_bytes <= 0:
        return array
    chunks = tuple(array.chunks)
    if not chunks or not all(isinstance(c, (int, np.integer)) for c in chunks):
        return array  # irregular chunking (dask-style tuples): read directly
    return CachedArray(array, cache)
