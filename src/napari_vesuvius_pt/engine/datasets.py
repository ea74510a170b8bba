"""Tile datasets for pretraining (two z-shifted views) and fine-tuning (a tile and its ink labels), the
per-epoch batch order, and the loader that feeds the training loop.

Reproducibility without saved iterator state: the order of an epoch is a function of (seed, epoch), and
each sample carries its own seed (for its z-shift), so a resumed run, a run with DataLoader workers and
a run in one process all read the same tiles in the same order with the same shifts.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import types
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from napari_vesuvius_pt.config import DataConfig, TileConfig
from napari_vesuvius_pt.data.augment import read_shifted_views
from napari_vesuvius_pt.data.normalize import Normalizer, normalizer_from_config
from napari_vesuvius_pt.data.segment import Segment, open_from_config
from napari_vesuvius_pt.data.tiles import TileGrid
from napari_vesuvius_pt.engine.rng import mix_seed
from napari_vesuvius_pt.errors import ConfigError, SegmentError


@dataclass
class TileSource:
    """One opened segment with its normalizer, tile grid and the layer its tiles start at."""

    path: str
    segment: Segment
    normalizer: Normalizer
    grid: TileGrid
    z0: int

    @property
    def name(self) -> str:
        return self.segment.name


def centred_z0(layers: int, depth: int, max_shift: int = 0) -> int:
    """First layer of a ``depth + max_shift`` block centred in the segment's layers (predict centres
    ``depth`` layers the same way, so a tile read at shift max_shift / 2 matches it)."""
    return max(0, (layers - depth - max_shift) // 2)


def open_source(
    path: str,
    data: DataConfig,
    tile: TileConfig,
    max_shift: int,
    erosion: int = 0,
    normalization_params: dict[str, float] | None = None,
    need_labels: bool = False,
    keep_planes: bool = True,
) -> TileSource:
    """Open ``path`` with the run's data options and lay a tile grid inside its mask; without
    ``keep_planes`` the segment's 2D images are dropped once the grid is built (``release_planes``)."""
    segment = open_from_config(path, data)
    layers = segment.shape[0]
    if tile.depth + max_shift > layers:
        raise ConfigError(
            f"{segment.name} has {layers} layers (z range {segment.z_range[0]}..{segment.z_range[1]}), but tiles of "
            f"{tile.depth} layers shifted by up to {max_shift} need {tile.depth + max_shift}; lower tile.depth or "
            "augment.max_z_shift, or widen data.z_range"
        )
    if need_labels and segment.inklabels is None:
        raise SegmentError(
            f"{segment.name} ({path}) has no ink labels (inklabels.png); fine-tuning fragments need them"
        )
    if normalization_params:
        normalizer = Normalizer(data.normalization, dict(normalization_params))
    else:
        normalizer = normalizer_from_config(data, segment)
    mask = segment.papyrus_mask()
    if not np.any(mask):
        raise SegmentError(f"{segment.name} ({path}): the mask is empty; there is no papyrus to take tiles from")
    grid = TileGrid.from_mask(mask, tile.size, tile.stride, tile.min_mask_fraction, erosion)
    if not keep_planes:
        del mask
        segment.release_planes()
    return TileSource(str(path), segment, normalizer, grid, centred_z0(layers, tile.depth, max_shift))


def tile_index(sources: Sequence[TileSource], subsets: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """(N, 3) int64 rows (source, y, x) over all sources (optionally a subset of each grid)."""
    rows = []
    for i, src in enumerate(sources):
        positions = src.grid.positions
        if subsets is not None and subsets[i] is not None:
            positions = positions[subsets[i]]
        rows.append(np.column_stack([np.full(len(positions), i, dtype=np.int64), positions]))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), dtype=np.int64)


# ---------------------------------------------------------------- datasets


class PretrainViews(Dataset):
    """``dataset[(i, sample_seed)]`` -> two float32 views ``(depth, size, size)`` of tile ``i``, read at
    independent z-shifts of 0..max_shift layers (from the volume, never padded), then normalized."""

    def __init__(self, sources: Sequence[TileSource], index: np.ndarray, depth: int, size: int,
                 max_shift: int, same_shift: bool) -> None:
        self.sources = list(sources)
        self.index = np.asarray(index, dtype=np.int64)
        self.depth, self.size = int(depth), int(size)
        self.max_shift, self.same_shift = int(max_shift), bool(same_shift)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, sample_seed = key
        s, y, x = (int(v) for v in self.index[i])
        src = self.sources[s]
        rng = np.random.default_rng(sample_seed)
        v1, v2 = read_shifted_views(src.segment, src.z0, y, x, self.depth, self.size, self.max_shift, self.same_shift, rng)
        return torch.from_numpy(src.normalizer(v1)), torch.from_numpy(src.normalizer(v2))


class InkTiles(Dataset):
    """``dataset[(i, sample_seed)]`` -> (float32 tile ``(depth, size, size)``, float32 ink ``(size, size)``),
    and with ``weighted`` a third item: float32 ``(size, size)``, 1 where a pixel counts in the loss (the
    segment's ``scored_mask``: papyrus, inside its supervision mask, outside its ignore mask), else 0.

    Training tiles start 0..max_shift layers below the source's z0 (a z-translation drawn from the
    sample's seed); validation tiles (``max_shift=0``) all start at z0.
    """

    def __init__(self, sources: Sequence[TileSource], index: np.ndarray, depth: int, size: int, max_shift: int = 0,
                 weighted: bool = False) -> None:
        self.sources = list(sources)
        self.index = np.asarray(index, dtype=np.int64)
        self.depth, self.size, self.max_shift = int(depth), int(size), int(max_shift)
        self.weighted = bool(weighted)

    def __len__(self) -> int:
        return len(self.index)

    def labels(self, i: int) -> np.ndarray:
        s, y, x = (int(v) for v in self.index[i])
        ink = self.sources[s].segment.inklabels
        return np.asarray(ink[y:y + self.size, x:x + self.size])

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, sample_seed = key
        s, y, x = (int(v) for v in self.index[i])
        src = self.sources[s]
        shift = int(np.random.default_rng(sample_seed).integers(0, self.max_shift + 1)) if self.max_shift else 0
        tile = src.segment.read_tile(src.z0 + shift, y, x, self.depth, self.size)
        labels = (self.labels(i) > 0).astype(np.float32)
        if not self.weighted:
            return torch.from_numpy(src.normalizer(tile)), torch.from_numpy(labels)
        weight = np.zeros((self.size, self.size), np.float32)  # outside the plane: nothing counts
        scored = src.segment.scored_mask()[y:y + self.size, x:x + self.size]
        weight[:scored.shape[0], :scored.shape[1]] = scored
        if labels.shape != weight.shape:
            padded = np.zeros_like(weight)
            padded[:labels.shape[0], :labels.shape[1]] = labels
            labels = padded
        return torch.from_numpy(src.normalizer(tile)), torch.from_numpy(labels), torch.from_numpy(weight)


# ---------------------------------------------------------------- validation tiles

VAL_CACHE_BYTES = 1 << 30  # normalized validation tiles kept in memory between epochs (float32)


class ValidationTiles:
    """The validation tiles of a fine-tuning run: a fixed random subsample of ``subsample`` tiles scored
    each epoch and all of them at the last epoch (``subsample`` 0: all, every epoch), with the
    normalized tiles cached between epochs (up to ``max_bytes``; the subsample's tiles first, as they are
    read every epoch). The subsample is a function of the seed and the tile count, the same on resume.
    """

    def __init__(self, source: TileSource, depth: int, size: int, subsample: int = 0, seed: int = 0,
                 max_bytes: int = VAL_CACHE_BYTES) -> None:
        if subsample < 0:
            raise ConfigError(f"val_subsample must be 0 (all tiles) or more, got {subsample}")
        self.full, self.depth, self.size, self.max_bytes = source, int(depth), int(size), int(max_bytes)
        n = len(source.grid)
        self.sample = source
        if 0 < subsample < n:
            keep = np.sort(np.random.default_rng([int(seed), n, 14]).choice(n, int(subsample), replace=False))
            self.sample = dataclasses.replace(source, grid=source.grid.subset(keep))
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self.cached_bytes = 0
        self.reads = 0  # tiles read from the segment (the rest came from the cache)

    @property
    def subsampled(self) -> bool:
        return self.sample is not self.full

    def for_epoch(self, epoch: int, epochs: int) -> TileSource:
        """The tiles to score after ``epoch`` of ``epochs``: the subsample, or all at the last epoch."""
        return self.full if epoch >= epochs else self.sample

    def tile(self, y: int, x: int) -> np.ndarray:
        """The normalized float32 ``(depth, size, size)`` tile at ``(y, x)`` (read once, then cached)."""
        key = (int(y), int(x))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        src = self.full
        tile = src.normalizer(src.segment.read_tile(src.z0, key[0], key[1], self.depth, self.size))
        self.reads += 1
        if self.cached_bytes + tile.nbytes <= self.max_bytes:
            self._cache[key] = tile
            self.cached_bytes += tile.nbytes
        return tile


# ---------------------------------------------------------------- batch order


class EpochBatches:
    """Micro-batches of ``(tile, sample_seed)`` keys for one process, a function of (seed, epoch) only.

    An epoch has ``steps`` optimizer steps of ``accumulate`` micro-batches of ``batch_size`` tiles per
    process. The global order is a shuffled pass (or several, when the epoch asks for more tiles than
    there are) cut into ``world`` interleaved shares, as DistributedSampler does. ``set_epoch(e, skip)``
    chooses the epoch and how many optimizer steps of it were done already (a resumed run).
    """

    def __init__(self, n_tiles: int, batch_size: int, steps: int, accumulate: int = 1, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if n_tiles < 1:
            raise ConfigError("no tiles to train on")
        self.n, self.batch_size, self.steps = int(n_tiles), int(batch_size), int(steps)
        self.accumulate, self.seed, self.rank, self.world = int(accumulate), int(seed), int(rank), int(world)
        self.shuffle = shuffle
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip_steps)

    def order(self, epoch: int) -> np.ndarray:
        """This process's (micro-batches, batch_size) tile indices for ``epoch``."""
        micro = self.steps * self.accumulate
        need = micro * self.batch_size * self.world
        parts, k = [], 0
        while sum(len(p) for p in parts) < need:
            if self.shuffle:
                parts.append(np.random.default_rng([self.seed, epoch, k]).permutation(self.n))
            else:
                parts.append(np.arange(self.n))
            k += 1
        order = np.concatenate(parts)[:need]
        return order.reshape(micro, self.world, self.batch_size)[:, self.rank, :]

    def __len__(self) -> int:
        return (self.steps - self.skip) * self.accumulate

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        for m in range(self.skip * self.accumulate, len(order)):
            yield [(int(i), mix_seed(self.seed, self.epoch, m, j, self.rank)) for j, i in enumerate(order[m])]


def make_loader(dataset: Dataset, batches: EpochBatches, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over ``batches``; worker processes start with spawn (safe from a worker thread)."""
    if num_workers < 0:
        raise ConfigError(f"num_workers must be 0 or more, got {num_workers}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = dict(multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=2)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


class ThreadPrefetcher:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (for ``num_workers=0``).

    Reading tiles (file I/O, decompression, numpy normalization) mostly releases the GIL, so it overlaps
    the training step. ``close()`` stops the thread; items come out in order.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True, name="tile-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable) -> None:
        try:
            for item in iterable:
                if not self._put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((False, exc))
            return
        self._put((True, self._END))

    def __iter__(self) -> "ThreadPrefetcher":
        return self

    def __next__(self):
        ok, item = self._queue.get()
        if not ok:
            raise item
        if item is self._END:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)


def iterate_batches(loader: DataLoader, prefetch: int) -> Iterator:
    """``loader``'s batches; read ahead in a thread when there are no worker processes and ``prefetch`` > 0."""
    if loader.num_workers == 0 and prefetch > 0:
        return ThreadPrefetcher(loader, prefetch)
    return iter(loader)


def close_batches(it: Iterator) -> None:
    """Stop a read-ahead thread, or a generator over one (a DataLoader's own iterator needs nothing)."""
    if isinstance(it, (ThreadPrefetcher, types.GeneratorType)):
        it.close()
