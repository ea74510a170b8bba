"""The reader contribution, through napari: every segment format, prediction zarrs, paths it leaves to
other readers, and a broken segment that is reported as a notification."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
import zarr
from napari.utils.colormaps.standardize_color import transform_color
from PIL import Image

from napari_vesuvius_pt._reader import get_reader
from napari_vesuvius_pt.data.convert import convert_segment
from napari_vesuvius_pt.data.display import MASK_COLOR
from napari_vesuvius_pt.data.lazy_volume import LazyVolume
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.data.synthetic import make_fragment
from napari_vesuvius_pt.engine.prediction_store import PredictionStore, SegmentInfo, encode

PLUGIN = "napari-vesuvius-pt"


@pytest.fixture(scope="module")
def small():
    return make_fragment((8, 96, 80), seed=3)


@pytest.fixture
def viewer():
    """napari's viewer model (no window): what viewer.open does is the same, at a fraction of the cost."""
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()  # napari's start-up does this: find installed plugins
    return ViewerModel()


def by_name(viewer) -> dict:
    return {layer.name: layer for layer in viewer.layers}


def test_kaggle_folder_opens_as_a_lazy_volume_with_mask_and_ink_labels(make_napari_viewer, fragment_dir, monkeypatch):
    viewer = make_napari_viewer()  # a real window: drawing the volume must not read it whole either
    reads = []
    original = LazyVolume.__getitem__

    def counting(self, key):
        out = original(self, key)
        reads.append(out.size)
        return out

    monkeypatch.setattr(LazyVolume, "__getitem__", counting)
    monkeypatch.setattr(LazyVolume, "__array__", lambda *a, **k: pytest.fail("the whole volume was read"))

    viewer.open(str(fragment_dir), plugin=PLUGIN)
    viewer.window._qt_viewer.canvas.native.repaint()

    layers = by_name(viewer)
    assert set(layers) == {"fragment0", "fragment0 mask", "fragment0 ink labels"}
    image = layers["fragment0"]
    assert type(image).__name__ == "Image" and isinstance(image.data, LazyVolume)
    assert image.data.shape == (20, 192, 192)
    assert viewer.dims.nsteps[0] == 20  # z is a slider
    # napari read slices and samples, never the volume (20 x 192 x 192) in one go
    assert reads and max(reads) < 20 * 192 * 192 / 4
    low, high = image.contrast_limits
    assert 0 < low < high < 65535  # a display range from the papyrus, not the dtype's full range
    mask = np.asarray(Image.open(fragment_dir / "mask.png")) > 0
    ink = np.asarray(Image.open(fragment_dir / "inklabels.png")) > 0
    assert type(layers["fragment0 mask"]).__name__ == "Labels"
    np.testing.assert_array_equal(layers["fragment0 mask"].data > 0, mask)
    np.testing.assert_array_equal(layers["fragment0 ink labels"].data > 0, ink)
    assert layers["fragment0 ink labels"].metadata["path"] == str(fragment_dir)
    for layer in layers.values():
        np.testing.assert_allclose(layer.scale[-2:], (1, 1))


def test_scroll_segment_layers_folder_has_a_mask_and_no_ink_labels(viewer, scroll_dir):
    viewer.open(str(scroll_dir), plugin=PLUGIN)
    assert set(by_name(viewer)) == {"segment2", "segment2 mask"}
    volume, mask = viewer.layers["segment2"], viewer.layers["segment2 mask"]
    np.testing.assert_array_equal(np.asarray(volume.data[5]), tifffile.imread(scroll_dir / "layers" / "05.tif"))
    np.testing.assert_array_equal(mask.data > 0, np.asarray(Image.open(scroll_dir / "segment2_mask.png")) > 0)
    # the mask is drawn in the plugin's mask colour over a transparent background, in place over the volume
    np.testing.assert_allclose(mask.colormap.map(np.array([0, 1])),
                               [[0, 0, 0, 0], [*transform_color(MASK_COLOR)[0][:3], 1]], atol=1e-6)
    np.testing.assert_allclose(mask.scale, volume.scale[-2:])
    np.testing.assert_allclose(mask.translate, volume.translate[-2:])


def test_multipage_tiff_with_its_mask_beside_it(viewer, small, tmp_path):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, small.volume)
    Image.fromarray(small.mask * 255).save(tmp_path / "scan_mask.png")  # 0/255 masks are read too
    viewer.open(str(path), plugin=PLUGIN)
    layers = by_name(viewer)
    assert set(layers) == {"scan", "scan mask"}
    np.testing.assert_array_equal(layers["scan"].data[3], small.volume[3])
    np.testing.assert_array_equal(layers["scan mask"].data > 0, small.mask > 0)


def test_converted_zarr_keeps_name_mask_and_labels(viewer, fragment_dir, tmp_path):
    out = convert_segment(open_segment(fragment_dir), tmp_path / "frag.zarr")
    viewer.open(str(out), plugin=PLUGIN)
    layers = by_name(viewer)
    assert set(layers) == {"fragment0", "fragment0 mask", "fragment0 ink labels"}
    np.testing.assert_array_equal(layers["fragment0"].data[5, 40:60, 50:90],
                                  open_segment(fragment_dir).volume[5, 40:60, 50:90])


def test_ome_zarr_levels_open_as_a_multiscale_image(viewer, small, tmp_path):
    path = tmp_path / "ome.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=small.volume, chunks=(4, 48, 40))
    group.create_array("1", data=small.volume[:, ::2, ::2], chunks=(4, 48, 40))
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 2**i, 2**i]}]}
                for i in range(2)]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    viewer.open(str(path), plugin=PLUGIN)
    image = viewer.layers["ome"]
    assert image.multiscale and len(image.data) == 2
    # each level shows the file's voxels: level 0 at full resolution, level 1 the stored half-size copy
    np.testing.assert_array_equal(np.asarray(image.data[0][5]), small.volume[5])
    np.testing.assert_array_equal(np.asarray(image.data[1][2, 7:30, 3:20]), small.volume[2, 14:60:2, 6:40:2])
    np.testing.assert_array_equal(np.asarray(image.data[1][-1]), small.volume[-1, ::2, ::2])
    # napari places the coarse level over the full one (2x in-plane), in the segment's pixel grid
    np.testing.assert_allclose(image.downsample_factors, [[1, 1, 1], [1, 2, 2]])
    np.testing.assert_allclose(image.scale, (1, 1, 1))
    low, high = image.contrast_limits
    assert small.volume.min() <= low < high <= small.volume.max()  # a display range of the data, not the dtype's


def test_prediction_zarr_opens_one_layer_per_encoder_at_its_recorded_scale(viewer, tmp_path):
    info = SegmentInfo("fragment0", "/data/fragment0", (20, 192, 192), downsample=1)
    store = PredictionStore.create(tmp_path / "pred.zarr", info)
    for name, value in (("vicreg", 0.8), ("random", 0.2)):
        writer = store.start_array(name, (48, 48), (16, 48), "uint8",
                                   {"scale": [4.0, 4.0], "translate": [1.5, 1.5]}, run={"encoder": name})
        writer.write_band(encode(np.full((48, 48), value, np.float32), "uint8"))
        writer.finish()
    viewer.open(str(tmp_path / "pred.zarr"), plugin=PLUGIN)
    layers = by_name(viewer)
    assert set(layers) == {"vicreg", "random"}
    np.testing.assert_allclose(layers["vicreg"].scale, (4, 4))
    np.testing.assert_allclose(layers["vicreg"].translate, (1.5, 1.5))
    assert np.asarray(layers["vicreg"].data[0, 0]) == round(0.8 * 255)
    assert layers["random"].metadata["segment"] == "fragment0"


def test_paths_that_are_not_segments_are_left_to_other_readers(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    zarr.create_array(str(tmp_path / "plain.zarr"), data=np.zeros((4, 4), np.float32))
    for name in ("photo.png", "notes", "plain.zarr", "missing.tif"):
        assert get_reader(str(tmp_path / name)) is None, name


def test_broken_segment_shows_the_problem_as_a_notification(viewer, fragment_dir, tmp_path, notifications):
    broken = tmp_path / "broken"
    shutil.copytree(fragment_dir, broken)
    (broken / "surface_volume" / "07.tif").unlink()
    assert get_reader(str(broken)) is not None  # claimed: it is plainly meant as a segment
    viewer.open(str(broken), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    messages = [str(n.message) for n in notifications]
    assert any("missing layer file" in m and "07.tif" in m for m in messages), messages

    # the viewer goes on: the good fragment still opens
    viewer.open(str(fragment_dir), plugin=PLUGIN)
    assert "fragment0" in by_name(viewer)


def test_several_paths_at_once(viewer, fragment_dir, scroll_dir):
    viewer.open([str(fragment_dir), str(scroll_dir)], plugin=PLUGIN, stack=False)
    assert {"fragment0", "segment2"} <= set(by_name(viewer))
