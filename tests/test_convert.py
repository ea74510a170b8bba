"""Streamed zarr conversion: same voxels, mask and labels back through open_segment; chunked for tiles;
bounded memory; an interrupted conversion is detectable."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_vesuvius_pt.data import SegmentError, open_segment
from napari_vesuvius_pt.data.convert import convert_segment, iter_convert


def test_round_trip_with_mask_labels_and_attrs(fragment_dir, tmp_path):
    seg = open_segment(fragment_dir)
    out = convert_segment(seg, tmp_path / "frag.zarr", chunks=(8, 64, 64))
    back = open_segment(out)
    assert back.fmt == "zarr" and back.name == seg.name and back.shape == seg.shape
    assert "chunks (8, 64, 64)" in back.storage
    np.testing.assert_array_equal(back.volume[:], seg.volume[:])
    np.testing.assert_array_equal(back.mask, seg.mask)
    np.testing.assert_array_equal(back.inklabels, seg.inklabels)
    np.testing.assert_array_equal(back.read_tile(3, 40, 50, 16, 64), seg.read_tile(3, 40, 50, 16, 64))
    meta = back.attrs["napari_vesuvius_pt"]
    assert meta["source"] == str(fragment_dir.resolve()) and meta["z_range"] == [0, 20] and meta["complete"]
    assert zarr.open_group(str(out), mode="r")["volume"].chunks == (8, 64, 64)


def test_converts_the_view_as_opened(fragment_dir, tmp_path):
    seg = open_segment(fragment_dir, z_range=(4, 16), reverse=True, downsample=2)
    back = open_segment(convert_segment(seg, tmp_path / "view.zarr"))
    assert back.shape == (12, 96, 96)
    np.testing.assert_array_equal(back.volume[:], seg.volume[:])
    np.testing.assert_array_equal(back.mask, seg.mask)
    meta = back.attrs["napari_vesuvius_pt"]
    assert (meta["z_range"], meta["reverse"], meta["downsample"]) == ([4, 16], True, 2)


def test_interrupted_conversion_is_detectable_and_redone(fragment_dir, tmp_path):
    seg = open_segment(fragment_dir)
    out = tmp_path / "cut.zarr"
    blocks = iter_convert(seg, out, chunks=(8, 32, 32))
    done, total = next(blocks)
    assert (done, total) == (1, 3 * 6)
    blocks.close()  # interrupted
    partial = tmp_path / "cut.zarr.partial"
    assert not out.exists() and partial.is_dir()
    with pytest.raises(SegmentError, match="half-written"):
        open_segment(partial)
    convert_segment(seg, out)  # starts over
    assert not partial.exists()
    np.testing.assert_array_equal(open_segment(out).volume[-1], seg.volume[-1])
    with pytest.raises(SegmentError, match="already exists"):
        convert_segment(seg, out)
    convert_segment(open_segment(fragment_dir, z_range=(0, 5)), out, overwrite=True)
    assert open_segment(out).shape == (5, 192, 192)


def test_streaming_never_holds_the_volume(tmp_path):
    shape = (32, 1024, 1024)  # 64 MiB of uint16 in sparse, uncompressed layers
    root = tmp_path / "big"
    (root / "layers").mkdir(parents=True)
    for i in range(shape[0]):
        layer = tifffile.memmap(root / "layers" / f"{i:02d}.tif", shape=shape[1:], dtype=np.uint16)
        layer[i, :] = i + 1  # a little data to copy
        del layer
    seg = open_segment(root)
    tracemalloc.start()
    try:
        out = convert_segment(seg, tmp_path / "big.zarr", chunks=(16, 128, 128))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    volume_bytes = int(np.prod(shape)) * 2
    assert peak < volume_bytes / 4, f"conversion peaked at {peak / 2**20:.1f} MiB"
    back = open_segment(out)
    assert back.volume[7, 7, 5] == 8 and back.volume[7, 8, 5] == 0


def test_bad_chunks(fragment_dir, tmp_path):
    with pytest.raises(SegmentError, match="chunks must be three positive integers"):
        convert_segment(open_segment(fragment_dir), Path(tmp_path / "x.zarr"), chunks=(0, 64, 64))
