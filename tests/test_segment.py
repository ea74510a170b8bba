"""open_segment: every format, the open-time options, lazy tile reads, real Kaggle label PNGs, bad input."""

from __future__ import annotations

import pickle
import shutil
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_vesuvius_pt.config import DataConfig
from napari_vesuvius_pt.data import SegmentError, open_from_config, open_segment
from napari_vesuvius_pt.data.segment import ink_fraction


def _layers(path: Path) -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in sorted((path / "surface_volume").glob("*.tif"))])


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def _kaggle_folder(root: Path, volume: np.ndarray, mask=None, labels=None, **tiff_kwargs) -> Path:
    (root / "surface_volume").mkdir(parents=True)
    for i, layer in enumerate(volume):
        tifffile.imwrite(root / "surface_volume" / f"{i:02d}.tif", layer, **tiff_kwargs)
    if mask is not None:
        _png(root / "mask.png", mask)
    if labels is not None:
        _png(root / "inklabels.png", labels)
    return root


@pytest.fixture
def small(tmp_path):
    """A (6, 40, 48) uint16 volume with a 0/255 mask and 0/1 labels, in the Kaggle layout."""
    rng = np.random.default_rng(5)
    vol = rng.integers(0, 65535, (6, 40, 48), dtype=np.uint16)
    mask = np.zeros((40, 48), np.uint8)
    mask[4:36, 6:44] = 255
    labels = np.zeros((40, 48), np.uint8)
    labels[10:20, 10:30] = 1
    return _kaggle_folder(tmp_path / "small", vol, mask, labels), vol, mask > 0, labels


# ---------------------------------------------------------------- formats


def test_kaggle_folder_matches_files(fragment_dir):
    seg = open_segment(fragment_dir)
    vol = _layers(fragment_dir)
    mask = np.asarray(Image.open(fragment_dir / "mask.png")) > 0
    labels = np.asarray(Image.open(fragment_dir / "inklabels.png"))
    assert (seg.fmt, seg.name, seg.path) == ("kaggle-folder", fragment_dir.name, fragment_dir)
    assert seg.shape == (20, 192, 192) and seg.volume.dtype == np.uint16 and seg.volume.ndim == 3
    assert (seg.z_range, seg.reverse, seg.downsample) == ((0, 20), False, 1)
    assert "memory-mapped" in seg.storage
    np.testing.assert_array_equal(seg.volume[:], vol)
    np.testing.assert_array_equal(seg.volume[7, 30:90, 11:40], vol[7, 30:90, 11:40])
    np.testing.assert_array_equal(seg.read_tile(2, 50, 60, 16, 64), vol[2:18, 50:114, 60:124])
    assert seg.mask.dtype == bool and seg.mask.shape == (192, 192)
    np.testing.assert_array_equal(seg.mask, mask)
    assert seg.inklabels.dtype == np.uint8 and set(np.unique(seg.inklabels)) == {0, 1}
    np.testing.assert_array_equal(seg.inklabels, labels)
    assert seg.ir is None and seg.levels == [seg.volume]
    assert ink_fraction(seg) == pytest.approx(labels[mask].mean())


def test_layers_folder_scroll_segment(scroll_dir):
    seg = open_segment(scroll_dir)
    assert seg.fmt == "layers-folder" and seg.shape == (20, 160, 160)
    assert seg.inklabels is None and ink_fraction(seg) is None
    expected = np.asarray(Image.open(scroll_dir / f"{scroll_dir.name}_mask.png")) > 0
    np.testing.assert_array_equal(seg.mask, expected)
    assert seg.papyrus_mask() is seg.mask
    layer = tifffile.imread(scroll_dir / "layers" / "05.tif")
    np.testing.assert_array_equal(seg.volume[5], layer)
    # picking the layers folder itself opens its segment
    assert open_segment(scroll_dir / "layers").fmt == "layers-folder"


def test_uint8_layers_ir_and_0_255_masks(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (4, 30, 20), dtype=np.uint8)
    mask = np.zeros((30, 20), np.uint8)
    mask[5:25, 2:18] = 255
    labels = np.zeros((30, 20), np.uint8)
    labels[8:12, 4:10] = 255
    root = _kaggle_folder(tmp_path / "u8", vol, mask, labels)
    ir = rng.integers(0, 255, (30, 20), dtype=np.uint8)
    _png(root / "ir.png", ir)
    seg = open_segment(root)
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(seg.volume[:], vol)
    np.testing.assert_array_equal(seg.mask, mask > 0)
    np.testing.assert_array_equal(seg.inklabels, (labels > 0).astype(np.uint8))
    assert seg.ir.dtype == np.uint8
    np.testing.assert_array_equal(seg.ir, ir)  # the IR image as stored, not binarized like the mask
    # downsampled, the IR image is the block mean (rounded half up), the remainder column dropped
    small = open_segment(root, downsample=3)  # 30 x 20 -> 10 x 6
    blocks = ir[:, :18].reshape(10, 3, 6, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(small.ir, np.floor(blocks + 0.5).astype(np.uint8))


@pytest.mark.parametrize("kwargs, storage", [({}, "memory-mapped"),
                                             ({"compression": "zlib", "tile": (32, 32)}, "read by strip/tile")])
def test_multipage_tiff(tmp_path, kwargs, storage):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 65535, (5, 64, 80), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol, **kwargs)
    seg = open_segment(path)
    assert seg.fmt == "tiff" and seg.shape == vol.shape and storage in seg.storage
    np.testing.assert_array_equal(seg.volume[:], vol)
    np.testing.assert_array_equal(seg.volume[1:4, 10:50, 33:70], vol[1:4, 10:50, 33:70])
    assert seg.mask is None and seg.papyrus_mask().all() and seg.papyrus_mask().shape == (64, 80)
    # sidecar mask and labels
    _png(tmp_path / "stack_mask.png", np.ones((64, 80), np.uint8))
    assert open_segment(path).mask.all()


def test_zarr_array_and_ome_zarr(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 65535, (6, 64, 64), dtype=np.uint16)
    plain = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=vol.shape, chunks=(2, 32, 32), dtype=vol.dtype)
    plain[:] = vol
    seg = open_segment(tmp_path / "plain.zarr")
    assert seg.fmt == "zarr" and seg.name == "plain" and "chunks (2, 32, 32)" in seg.storage
    np.testing.assert_array_equal(seg.volume[2:5, 7:40, 3:9], vol[2:5, 7:40, 3:9])

    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    level0 = group.create_array("0", shape=(1, *vol.shape), chunks=(1, 2, 32, 32), dtype=vol.dtype)
    level0[0] = vol
    level1 = group.create_array("1", shape=(1, 6, 32, 32), chunks=(1, 2, 32, 32), dtype=vol.dtype)
    level1[0] = vol[:, ::2, ::2]
    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 5:20] = 1
    group.create_array("inklabels", shape=labels.shape, dtype=np.uint8)[...] = labels
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}],
                                   "axes": [{"name": n} for n in "czyx"]}]
    seg = open_segment(tmp_path / "ome.zarr", z_range=(1, 5), reverse=True)
    assert seg.fmt == "ome-zarr" and seg.shape == (4, 64, 64)
    np.testing.assert_array_equal(seg.volume[:], vol[1:5][::-1])
    assert len(seg.levels) == 2 and seg.levels[1].shape == (4, 32, 32)
    np.testing.assert_array_equal(seg.levels[1][0], vol[4, ::2, ::2])
    np.testing.assert_array_equal(seg.inklabels, labels)


# ---------------------------------------------------------------- open-time options


def test_z_range_reverse_downsample(small):
    root, vol, mask, labels = small
    seg = open_segment(root, z_range=(1, 5), reverse=True, downsample=2)
    assert seg.shape == (4, 20, 24) and seg.z_range == (1, 5) and seg.reverse and seg.downsample == 2
    # reverse flips depth within the range: volume layer 0 is file layer 4
    blocks = vol[1:5][::-1].reshape(4, 20, 2, 24, 2).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_array_equal(seg.volume[:], np.floor(blocks + 0.5).astype(np.uint16))
    np.testing.assert_array_equal(seg.volume[3, 2:7, 5], np.floor(blocks[3, 2:7, 5] + 0.5))
    np.testing.assert_array_equal(seg.volume[::2, 1, ::5], np.floor(blocks[::2, 1, ::5] + 0.5))
    # mask and labels by majority over the 2x2 blocks
    np.testing.assert_array_equal(seg.mask, mask.reshape(20, 2, 24, 2).mean(axis=(1, 3)) >= 0.5)
    np.testing.assert_array_equal(seg.inklabels, labels.reshape(20, 2, 24, 2).mean(axis=(1, 3)) >= 0.5)
    seg = open_from_config(root, DataConfig(z_range=[2, 4], reverse=False, downsample=1))
    np.testing.assert_array_equal(seg.volume[:], vol[2:4])


def test_downsample_drops_remainder_and_tiles_pad_at_edges(small):
    root, vol, _, _ = small
    seg = open_segment(root, downsample=3)  # 40 x 48 -> 13 x 16
    assert seg.shape == (6, 13, 16) and seg.mask.shape == (13, 16)
    tile = seg.read_tile(0, 8, -2, 4, 8)  # runs past the bottom and the left edge
    assert tile.shape == (4, 8, 8) and tile.dtype == np.uint16
    np.testing.assert_array_equal(tile[:, :5, 2:], seg.volume[0:4, 8:13, 0:6])
    assert not tile[:, 5:].any() and not tile[:, :, :2].any()
    with pytest.raises(SegmentError, match="layers 4..8"):
        seg.read_tile(4, 0, 0, 4, 8)


def test_pickled_segment_reopens_its_files(fragment_dir):
    seg = open_segment(fragment_dir, z_range=(2, 18))
    tile = seg.read_tile(0, 30, 30, 16, 32)
    blob = pickle.dumps(seg)
    assert len(blob) < seg.volume.nbytes / 10  # paths, not voxels
    np.testing.assert_array_equal(pickle.loads(blob).read_tile(0, 30, 30, 16, 32), tile)


# ---------------------------------------------------------------- lazy reads


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["memmap-layers", "tiled-zlib-tiff", "zarr"])
def test_tile_read_does_not_allocate_the_volume(tmp_path, layout):
    shape = (16, 1024, 1024)  # 32 MiB of uint16; a tile is 64 KiB
    if layout == "memmap-layers":
        (tmp_path / "seg" / "layers").mkdir(parents=True)
        for i in range(shape[0]):  # sparse files: no data written
            del_me = tifffile.memmap(tmp_path / "seg" / "layers" / f"{i:02d}.tif", shape=shape[1:], dtype=np.uint16)
            del del_me
        path = tmp_path / "seg"
    elif layout == "tiled-zlib-tiff":
        path = tmp_path / "tiled.tif"
        tifffile.imwrite(path, np.zeros(shape, np.uint16), compression="zlib", tile=(64, 64))
    else:
        path = tmp_path / "vol.zarr"
        zarr.open_array(str(path), mode="w", shape=shape, chunks=(16, 64, 64), dtype=np.uint16)
    seg = open_segment(path)
    seg.read_tile(0, 0, 0, 16, 32)  # warm-up: lazy file opening is not the tile read
    peak = _peak_bytes(lambda: seg.read_tile(0, 512, 256, 16, 32))
    volume_bytes = int(np.prod(shape)) * 2
    assert peak < volume_bytes / 20, f"{layout}: reading one tile peaked at {peak} bytes"


# ---------------------------------------------------------------- real Kaggle labels


def test_real_kaggle_mask_and_labels_at_full_size(tmp_path, kaggle_labels_dir):
    """Fragment 2's 14830 x 9506 PNGs (above Pillow's pixel limit) as the mask and labels of a sparse volume."""
    src = kaggle_labels_dir / "2"
    root = tmp_path / "frag2"
    (root / "surface_volume").mkdir(parents=True)
    for i in range(2):  # sparse uint8 layers of the real size: no voxel data written
        del_me = tifffile.memmap(root / "surface_volume" / f"{i:02d}.tif", shape=(14830, 9506), dtype=np.uint8)
        del del_me
    shutil.copy(src / "mask.png", root / "mask.png")
    shutil.copy(src / "inklabels.png", root / "inklabels.png")
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        seg = open_segment(root, downsample=4)
    assert Image.MAX_IMAGE_PIXELS == limit  # lifted for these files only
    assert seg.shape == (2, 3707, 2376) and seg.mask.shape == (3707, 2376)
    assert set(np.unique(seg.inklabels)) == {0, 1}
    assert ink_fraction(seg) == pytest.approx(0.172, abs=0.004)  # the data set's documented 17.2%
    assert seg.read_tile(0, 1000, 1000, 2, 64).shape == (2, 64, 64)


def test_pillow_limit_is_lifted_only_while_reading(small, monkeypatch):
    root, _, mask, _ = small
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40 x 48 mask is then a "decompression bomb"
    seg = open_segment(root)
    np.testing.assert_array_equal(seg.mask, mask)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(root / "mask.png")


# ---------------------------------------------------------------- bad input


def _copy(small_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_root, tmp_path / "copy"))


def test_missing_layer_file(small, tmp_path):
    root = _copy(small[0], tmp_path)
    (root / "surface_volume" / "03.tif").unlink()
    with pytest.raises(SegmentError, match=r"missing layer file\(s\) 03\.tif in .*surface_volume"):
        open_segment(root)


def test_layers_of_different_shapes_and_types(small, tmp_path):
    root = _copy(small[0], tmp_path)
    tifffile.imwrite(root / "surface_volume" / "04.tif", np.zeros((40, 47), np.uint16))
    with pytest.raises(SegmentError, match=r"different shapes .*00\.tif is 40x48 but 04\.tif is 40x47"):
        open_segment(root)
    tifffile.imwrite(root / "surface_volume" / "04.tif", np.zeros((40, 48), np.uint8))
    with pytest.raises(SegmentError, match=r"different types .*04\.tif is uint8"):
        open_segment(root)


def test_mask_of_another_size(small, tmp_path):
    root = _copy(small[0], tmp_path)
    _png(root / "mask.png", np.ones((40, 50), np.uint8))
    with pytest.raises(SegmentError, match=r"mask .*mask\.png is 40x50 but the layers are 40x48"):
        open_segment(root)


def test_empty_mask(small, tmp_path):
    root = _copy(small[0], tmp_path)
    _png(root / "mask.png", np.zeros((40, 48), np.uint8))
    with pytest.raises(SegmentError, match="mask of .* is empty"):
        open_segment(root)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegmentError, match=r"folder .*empty is empty"):
        open_segment(tmp_path / "empty")
    with pytest.raises(SegmentError, match="segment not found"):
        open_segment(tmp_path / "nowhere")
    (tmp_path / "empty" / "surface_volume").mkdir()
    with pytest.raises(SegmentError, match="no layer files in"):
        open_segment(tmp_path / "empty")


def test_non_image_files(small, tmp_path):
    root = _copy(small[0], tmp_path)
    (root / "surface_volume" / "02.tif").write_text("not a tiff")
    with pytest.raises(SegmentError, match=r"02\.tif is not a readable TIFF"):
        open_segment(root)
    root2 = Path(shutil.copytree(small[0], tmp_path / "copy2"))
    (root2 / "mask.png").write_text("not a png")
    with pytest.raises(SegmentError, match=r"mask .*mask\.png is not a readable image"):
        open_segment(root2)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SegmentError, match="not a supported segment"):
        open_segment(tmp_path / "notes.txt")
    root3 = Path(shutil.copytree(small[0], tmp_path / "copy3"))
    (root3 / "surface_volume" / "readme.txt").write_text("stray")
    with pytest.raises(SegmentError, match=r"unexpected file readme\.txt"):
        open_segment(root3)


def test_bad_options(small):
    root = small[0]
    with pytest.raises(SegmentError, match=r"z_range \[3, 9\) is outside the 6 layers"):
        open_segment(root, z_range=(3, 9))
    with pytest.raises(SegmentError, match=r"z_range \[4, 4\)"):
        open_segment(root, z_range=(4, 4))
    with pytest.raises(SegmentError, match="downsample must be a whole number"):
        open_segment(root, downsample=0)
    with pytest.raises(SegmentError, match="downsample must be a whole number"):
        open_segment(root, downsample=1.5)


def test_partial_output_is_refused(small, tmp_path):
    partial = Path(shutil.copytree(small[0], tmp_path / "out.zarr.partial"))
    with pytest.raises(SegmentError, match="half-written"):
        open_segment(partial)


def test_colour_tiff_is_refused_not_read_as_layers(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(SegmentError, match="grayscale"):
        open_segment(path)
