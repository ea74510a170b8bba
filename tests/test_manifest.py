"""The npe2 manifest: valid, and every contribution does what its menu entry promises when napari calls it
through npe2: the reader is offered for segments and reads their voxels, the writer writes a zarr the
reader opens back in place, the sample is the synthetic fragment, and each widget opens as a dock."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import npe2
import pytest
import tifffile
from npe2 import PluginManager, PluginManifest
from PIL import Image

PLUGIN = "napari-vesuvius-pt"
WIDGETS = {
    "Segments": "napari_vesuvius_pt.ui.segments_widget:SegmentsWidget",
    "Pretrain": "napari_vesuvius_pt.ui.pretrain_widget:PretrainWidget",
    "Fine-tune": "napari_vesuvius_pt.ui.finetune_widget:FinetuneWidget",
    "Predict & compare": "napari_vesuvius_pt.ui.predict_widget:PredictWidget",
    "CKA": "napari_vesuvius_pt.ui.cka_widget:CKAWidget",
    "Embedding explorer": "napari_vesuvius_pt.ui.embedding_widget:EmbeddingWidget",
}


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution(PLUGIN)


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    pm = PluginManager.instance()
    pm.discover()  # napari's start-up does this: find installed plugins
    return pm


def _layers(layer_data: list) -> dict[str, tuple]:
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in layer_data}


def test_npe2_validate_accepts_the_manifest():
    npe2_cli = shutil.which("npe2")
    cmd = [npe2_cli] if npe2_cli else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*cmd, "validate", PLUGIN], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reader_is_offered_for_segments_and_reads_their_voxels(plugins, fragment_dir, tmp_path):
    tif = tmp_path / "scan.tif"
    volume = np.random.default_rng(0).integers(0, 65535, (4, 32, 24), dtype=np.uint16)
    tifffile.imwrite(tif, volume, photometric="minisblack")
    for path in (tif, tmp_path / "seg.zarr", fragment_dir):
        offered = [r.command for r in plugins.iter_compatible_readers([str(path)])]
        assert f"{PLUGIN}.get_reader" in offered, (path, offered)

    # what napari's File > Open does with the plugin chosen: the layers hold the files' values
    layers = _layers(npe2.read([str(tif)], plugin_name=PLUGIN, stack=False))
    data, kwargs, kind = layers["scan"]
    assert kind == "image" and kwargs["colormap"] == "gray"
    np.testing.assert_array_equal(np.asarray(data[2]), volume[2])
    layers = _layers(npe2.read([str(fragment_dir)], plugin_name=PLUGIN, stack=False))
    assert set(layers) == {"fragment0", "fragment0 mask", "fragment0 ink labels"}
    np.testing.assert_array_equal(np.asarray(layers["fragment0"][0][7]),
                                  tifffile.imread(fragment_dir / "surface_volume" / "07.tif"))
    ink, ink_kwargs, ink_kind = layers["fragment0 ink labels"]
    assert ink_kind == "labels"
    np.testing.assert_array_equal(ink > 0, np.asarray(Image.open(fragment_dir / "inklabels.png")) > 0)

    # a file that is not a segment is left to other readers
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(ValueError):
        npe2.read([str(tmp_path / "photo.png")], plugin_name=PLUGIN, stack=False)


def test_writer_saves_an_image_layer_that_the_reader_opens_back_in_place(plugins, tmp_path):
    writers = list(plugins.iter_compatible_writers(["image"]))
    ours = [w for w in writers if w.command == f"{PLUGIN}.write_image"]
    assert ours and ".zarr" in ours[0].filename_extensions
    probs = np.random.default_rng(1).random((40, 56)).astype(np.float32)
    meta = {"name": "vicreg", "scale": (4.0, 4.0), "translate": (1.5, 1.5), "colormap": "magma"}
    written = npe2.write(str(tmp_path / "pred"), [(probs, meta, "image")], plugin_name=PLUGIN)
    assert written == [str(tmp_path / "pred.zarr")]
    data, kwargs, kind = npe2.read(written, plugin_name=PLUGIN, stack=False)[0]
    assert kind == "image" and kwargs["name"] == "vicreg" and kwargs["colormap"] == "magma"
    assert kwargs["scale"] == [4.0, 4.0] and kwargs["translate"] == [1.5, 1.5]
    np.testing.assert_array_equal(np.asarray(data), probs)


def test_sample_is_the_synthetic_fragment_of_seed_0(manifest, plugins):
    from napari_vesuvius_pt._sample_data import SAMPLE_NAME, SAMPLE_SHAPE
    from napari_vesuvius_pt.data.display import INK_COLOR, MASK_COLOR
    from napari_vesuvius_pt.data.synthetic import make_fragment

    (sample,) = manifest.contributions.sample_data
    assert sample.key == "synthetic-fragment"
    layers = _layers(sample.open(_registry=plugins.commands))
    assert list(layers) == [SAMPLE_NAME, f"{SAMPLE_NAME} mask", f"{SAMPLE_NAME} ink labels"]
    expected = make_fragment(SAMPLE_SHAPE, seed=0)
    volume, mask, ink = layers.values()
    np.testing.assert_array_equal(volume[0], expected.volume)
    np.testing.assert_array_equal(mask[0] > 0, expected.mask > 0)
    np.testing.assert_array_equal(ink[0] > 0, expected.inklabels > 0)
    assert (volume[2], mask[2], ink[2]) == ("image", "labels", "labels")
    assert mask[1]["colormap"] == ["transparent", MASK_COLOR] and ink[1]["colormap"] == ["transparent", INK_COLOR]


def test_each_widget_opens_as_a_dock_from_the_plugins_menu(manifest, make_napari_viewer):
    commands = {cmd.id: cmd.python_name for cmd in manifest.contributions.commands}
    assert {w.display_name: commands[w.command] for w in manifest.contributions.widgets} == WIDGETS
    viewer = make_napari_viewer()
    for name, target in WIDGETS.items():
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)  # Plugins > Vesuvius pretraining > name
        assert f"{type(widget).__module__}:{type(widget).__qualname__}" == target
        assert name in dock.name
        # napari handed the widget this viewer (behind its plugin proxy): what the widget adds, the user sees
        widget.viewer.add_image(np.zeros((4, 4), np.float32), name=f"probe {name}")
        assert f"probe {name}" in viewer.layers
