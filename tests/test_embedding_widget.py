"""The embedding explorer: engine (features tile by tile, one shared PCA basis, cosine similarity), the
CLI's zarr, and the dock as the Plugins menu opens it, with a click updating the similarity layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import DataConfig, EncoderConfig, FeaturesConfig, TileConfig, to_dict
from napari_vesuvius_pt.engine.events import TilesDone
from napari_vesuvius_pt.engine.features import (
    FeaturesReady,
    cosine_similarity,
    explore_features,
    fit_shared_pca,
    position_of,
)
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.models.checkpoint import save_checkpoint
from napari_vesuvius_pt.models.encoder import encoder_from_spec

PLUGIN = "napari-vesuvius-pt"
TILE = TileConfig(depth=16, size=32, stride=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A pretraining checkpoint of a tiny encoder (weights from another seed than the random one)."""
    torch.manual_seed(7)
    spec = EncoderConfig(name="resnet10", widen_factor=0.25)
    encoder = encoder_from_spec(spec)
    path = tmp_path_factory.mktemp("runs") / "vicreg" / "checkpoints" / "epoch_002.pt"
    path.parent.mkdir(parents=True)
    return save_checkpoint(path, {"kind": "pretrain", "encoder_spec": to_dict(spec), "encoder": encoder.state_dict(),
                                  "data": to_dict(DataConfig()), "tile": to_dict(TILE), "epoch": 2, "metrics": {}})


def run(cfg: FeaturesConfig) -> tuple[list, FeaturesReady]:
    events = list(explore_features(cfg))
    return events, next(e for e in events if isinstance(e, FeaturesReady))


def test_features_cover_the_region_tile_by_tile_with_one_shared_basis(fragment_dir, trained):
    cfg = FeaturesConfig(encoders=["random", f"{trained.parent.parent}@2"], segment=str(fragment_dir),
                         region=[32, 32, 128, 160], tile=TILE, device="cpu")
    events, result = run(cfg)
    progress = [e for e in events if isinstance(e, TilesDone)]
    assert progress[-1].done == progress[-1].total == 3 * 4  # 96 x 128 pixels in 32-pixel tiles
    assert list(result.maps) == ["random", "vicreg@2"]
    a, b = result.maps.values()
    assert a.features.shape == b.features.shape and a.features.shape[1:] == (12, 16)  # layer2: 8 px per position
    assert a.scale == (8.0, 8.0) and position_of(a, (32 + 3.5, 32 + 3.5)) == (0, 0)
    assert not np.allclose(a.features, b.features)  # really two encoders
    # one basis for both: each picture is that basis applied to that encoder's features
    for name, fmap in result.maps.items():
        np.testing.assert_array_equal(result.rgb[name], result.basis.rgb(fmap.features))
    refit = fit_shared_pca([a.features, b.features])
    np.testing.assert_allclose(np.abs(refit.components), np.abs(result.basis.components), atol=1e-4)
    assert result.rgb["random"].shape == (12, 16, 3) and result.rgb["random"].dtype == np.uint8


def test_cosine_similarity_is_one_at_the_probe_and_symmetric():
    rng = np.random.default_rng(0)
    f = rng.random((5, 6, 7)).astype(np.float32)
    raw = cosine_similarity(f, (2, 3), centre=False)
    assert raw[2, 3] == pytest.approx(1.0)
    v, w = f[:, 2, 3], f[:, 4, 1]
    assert raw[4, 1] == pytest.approx(v @ w / np.linalg.norm(v) / np.linalg.norm(w), rel=1e-5)
    sim = cosine_similarity(f, (2, 3))  # centred on the region's mean vector (default)
    mean = f.reshape(5, -1).mean(1)
    v, w = v - mean, w - mean
    assert sim[2, 3] == pytest.approx(1.0) and sim[4, 1] == pytest.approx(v @ w / np.linalg.norm(v) / np.linalg.norm(w),
                                                                             rel=1e-5)
    with pytest.raises(ConfigError, match="outside"):
        cosine_similarity(f, (9, 9))


def test_cli_features_writes_zarr(fragment_dir, tmp_path, capsys):
    import zarr

    from napari_vesuvius_pt.cli import main

    out = tmp_path / "feat.zarr"
    rc = main(["features", "random:resnet10", "--segment", str(fragment_dir), "--region", "0,0,64,96",
               "--tile-size", "32", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["encoders"] == ["random:resnet10"]
    assert root["random:resnet10/rgb"].shape == (8, 12, 3)
    assert root["random:resnet10/features"].shape[1:] == (8, 12)
    assert "wrote" in capsys.readouterr().out
    assert main(["features", "random", "--segment", str(fragment_dir), "--region", "1,2", "--out", str(out)]) == 2


def test_explorer_dock_shows_rgb_features_and_updates_similarity_on_click(make_napari_viewer, qtbot,
                                                                           fragment_dir, trained):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Embedding explorer")
    widget.segment.set_text(str(fragment_dir))
    widget.encoders.add(str(trained))
    shapes = viewer.add_shapes([np.array([[32, 32], [32, 160], [128, 160], [128, 32]])], shape_type="polygon",
                               name="explore here")
    widget.region.setCurrentIndex(widget.region.findData("layer:explore here"))
    widget.tile_size.setValue(32)
    widget.device.set_value("cpu")
    assert widget.start()
    qtbot.waitUntil(lambda: widget.runner.state == "idle" and widget.runner.last_outcome is not None, timeout=120_000)
    assert widget.runner.last_outcome.status == "finished", widget.status.text()
    qtbot.waitUntil(lambda: widget.shown, timeout=60_000)  # the layers come one per event-loop turn
    rgb = [la for la in viewer.layers if la.metadata.get("embedding") == "rgb"]
    assert len(rgb) == 2 and all(la.rgb and la.data.shape == (12, 16, 3) for la in rgb)
    assert sum(la.visible for la in rgb) == 1  # one encoder at a time
    widget.show_box.setCurrentIndex(1)
    assert [la.visible for la in rgb] == [False, True]
    assert "--region 32,32,128,160" in widget.cli_line.text()

    class Click:  # what napari passes a mouse callback
        position = (100.0, 60.0)
        type = "mouse_press"

    widget._on_click(viewer, Click())
    for name, fmap in widget.result.maps.items():
        sim = widget.layers_made[name][1]
        y, x = position_of(fmap, Click.position)
        assert sim.data[y, x] == pytest.approx(1.0, abs=1e-5) and sim.opacity > 0
    assert viewer.layers["probe"].data.tolist() == [[100.0, 60.0]]
    shapes.visible = False
