"""Fast zarr tile reads: the decoded-chunk cache returns exactly what the array holds and serves repeated
reads without touching the store; local zarr is read through tensorstore (with its cache pool) when it
is installed; ``convert --codec none`` writes uncompressed chunks. Speed is measured in
bench/bench_tile_read.py, not here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from napari_vesuvius_pt.data import chunk_cache
from napari_vesuvius_pt.data.chunk_cache import CachedArray, DecodedChunkCache, cached, default_cache_bytes
from napari_vesuvius_pt.data.convert import convert_segment
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.errors import ConfigError


class Counting:
    """A zarr array that counts the reads that reach it."""

    def __init__(self, arr):
        self.arr, self.reads = arr, 0
        self.shape, self.dtype, self.chunks = arr.shape, arr.dtype, arr.chunks

    def __getitem__(self, key):
        self.reads += 1
        return self.arr[key]


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, (10, 70, 90), dtype=np.uint16)
    arr = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=data.shape, chunks=(4, 32, 32), dtype="uint16")
    arr[...] = data
    return data, arr


def test_cached_reads_equal_the_array_and_repeat_without_the_store(volume):
    data, arr = volume
    source = Counting(arr)
    view = CachedArray(source, DecodedChunkCache(1 << 30))
    keys = [(slice(1, 9), slice(5, 60), slice(3, 88)), (slice(None), slice(64, 70), slice(80, 90)),
            (3, slice(0, 70), slice(10, 11)), (slice(2, 6), 69, slice(None)), (slice(0, 0), slice(0, 5), slice(0, 5))]
    for key in keys:
        np.testing.assert_array_equal(view[key], data[key])
    before = source.reads
    for key in keys:  # all chunks are cached now
        np.testing.assert_array_equal(view[key], data[key])
    assert source.reads == before


def test_misses_are_read_in_one_call(volume):
    data, arr = volume
    source = Counting(arr)
    view = CachedArray(source, DecodedChunkCache(1 << 30))
    view[0:8, 0:64, 0:64]  # 2 x 2 x 2 chunks
    assert source.reads == 1


def test_the_cache_keeps_to_its_size(volume):
    data, arr = volume
    cache = DecodedChunkCache(3 * 4 * 32 * 32 * 2)  # three chunks
    view = CachedArray(arr, cache)
    for z in range(0, 10, 4):
        for y in range(0, 70, 32):
            np.testing.assert_array_equal(view[z:z + 4, y:y + 32, 0:64], data[z:z + 4, y:y + 32, 0:64])
    assert cache.nbytes <= cache.max_bytes


def test_cache_size_from_the_environment(monkeypatch, volume):
    _, arr = volume
    monkeypatch.setenv(chunk_cache.ENV_CACHE_MB, "12")
    assert default_cache_bytes() == 12 << 20
    monkeypatch.setenv(chunk_cache.ENV_CACHE_MB, "0")
    assert cached(arr, DecodedChunkCache(default_cache_bytes())) is arr  # 0 turns it off
    monkeypatch.delenv(chunk_cache.ENV_CACHE_MB)
    assert 0 < default_cache_bytes() <= chunk_cache.MAX_DEFAULT_BYTES
    memmap_like = np.zeros((2, 2, 2))
    assert cached(memmap_like) is memmap_like  # numpy arrays and memory maps are read as they are


def test_converted_zarr_reads_like_its_source(fragment_dir, tmp_path):
    seg = open_segment(fragment_dir)
    out = convert_segment(seg, tmp_path / "frag.zarr", chunks=(8, 64, 64))
    back = open_segment(out)
    rng = np.random.default_rng(1)
    for _ in range(20):
        z0, y, x = int(rng.integers(0, 12)), int(rng.integers(-10, 180)), int(rng.integers(-10, 180))
        np.testing.assert_array_equal(back.read_tile(z0, y, x, 8, 32), seg.read_tile(z0, y, x, 8, 32))
    again = pickle.loads(pickle.dumps(back))  # a DataLoader worker re-opens it
    np.testing.assert_array_equal(again.read_tile(3, 40, 50, 8, 32), seg.read_tile(3, 40, 50, 8, 32))


def test_local_zarr_is_read_with_tensorstore_when_installed(fragment_dir, tmp_path):
    ts = pytest.importorskip("tensorstore")
    from napari_vesuvius_pt.data.tensorstore_array import TensorStoreArray, open_local_zarr

    out = convert_segment(open_segment(fragment_dir), tmp_path / "frag.zarr", chunks=(8, 64, 64))
    seg = open_segment(out)
    seg.read_tile(0, 0, 0, 8, 32)
    assert isinstance(seg.volume.source.array, TensorStoreArray)
    assert seg.volume.source.array.chunks == (8, 64, 64)
    assert open_local_zarr(tmp_path / "missing.zarr") is None  # not a zarr: the caller falls back
    assert ts is not None


def test_zarr_python_fallback_reads_the_same(fragment_dir, tmp_path, monkeypatch):
    from napari_vesuvius_pt.data import tensorstore_array

    out = convert_segment(open_segment(fragment_dir), tmp_path / "frag.zarr", chunks=(8, 64, 64))
    fast = open_segment(out).read_tile(2, 30, 40, 8, 48)
    monkeypatch.setattr(tensorstore_array, "open_local_zarr", lambda *a, **k: None)
    seg = open_segment(out)
    np.testing.assert_array_equal(seg.read_tile(2, 30, 40, 8, 48), fast)
    assert isinstance(seg.volume.source.array, CachedArray)  # zarr-python behind the decoded-chunk cache


def test_convert_uncompressed(fragment_dir, tmp_path):
    seg = open_segment(fragment_dir)
    out = convert_segment(seg, tmp_path / "raw.zarr", chunks=(8, 64, 64), codec="none")
    back = open_segment(out)
    assert "uncompressed" in back.storage
    np.testing.assert_array_equal(back.volume[:, :, :], seg.volume[:, :, :])
    with pytest.raises(ConfigError, match="unknown zarr codec"):
        convert_segment(seg, tmp_path / "x.zarr", codec="zip")
