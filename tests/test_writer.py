"""The writer contribution: an Image layer saved through napari as a .zarr and opened back in place."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_vesuvius_pt._writer import write_image

PLUGIN = "napari-vesuvius-pt"


@pytest.fixture
def viewer():
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    return ViewerModel()


def test_prediction_layer_round_trips_with_name_scale_and_translate(viewer, tmp_path):
    probs = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    viewer.add_image(probs, name="vicreg ep3", scale=(4, 4), translate=(1.5, 1.5), colormap="magma",
                     contrast_limits=(0, 1), metadata={"encoder": "vicreg", "not json": object()})
    written = viewer.layers.save(str(tmp_path / "pred.zarr"), selected=False, plugin=PLUGIN)
    assert written == [str(tmp_path / "pred.zarr")]

    arr = zarr.open_array(str(tmp_path / "pred.zarr"), mode="r")
    assert arr.attrs["name"] == "vicreg ep3"
    assert arr.attrs["scale"] == [4.0, 4.0] and arr.attrs["translate"] == [1.5, 1.5]
    assert arr.attrs["metadata"] == {"encoder": "vicreg"}  # what JSON cannot hold is left out

    viewer.layers.clear()
    viewer.open(str(tmp_path / "pred.zarr"), plugin=PLUGIN)
    layer = viewer.layers["vicreg ep3"]
    np.testing.assert_array_equal(np.asarray(layer.data), probs)
    np.testing.assert_allclose(layer.scale, (4, 4))
    np.testing.assert_allclose(layer.translate, (1.5, 1.5))
    assert layer.colormap.name == "magma"
    assert list(tmp_path.iterdir()) == [tmp_path / "pred.zarr"]  # no temporary folder left behind


def test_writing_over_an_existing_zarr_replaces_it_whole(tmp_path):
    target = tmp_path / "pred.zarr"
    write_image(str(target), np.ones((600, 40), np.float32), {"name": "old", "scale": [1, 1], "translate": [0, 0]})
    volume = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    written = write_image(str(tmp_path / "pred"), volume, {"name": "new"})  # the .zarr suffix is added
    assert written == [str(target)]
    arr = zarr.open_array(str(target), mode="r")
    assert arr.attrs["name"] == "new" and arr.shape == (3, 20, 30)
    np.testing.assert_array_equal(arr[:], volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "pred.zarr"
    write_image(str(target), np.ones((8, 8), np.float32), {"name": "kept"})

    class Broken:
        shape, dtype = (600, 8), np.dtype(np.float32)

        def __getitem__(self, key):
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_image(str(target), Broken(), {"name": "lost"})
    assert zarr.open_array(str(target), mode="r").attrs["name"] == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr"]
