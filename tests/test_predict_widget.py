"""The Predict & compare dock widget: two checkpoints over the synthetic fragment give two prediction
layers, the ink labels, and a metrics table that agrees with engine.evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import DataConfig, EncoderConfig, TileConfig, to_dict
from napari_vesuvius_pt.engine.evaluation import evaluate
from napari_vesuvius_pt.engine.events import TilesDone
from napari_vesuvius_pt.engine.prediction_store import open_prediction
from napari_vesuvius_pt.models.checkpoint import save_checkpoint
from napari_vesuvius_pt.models.encoder import encoder_from_spec
from napari_vesuvius_pt.models.head import InkModel
from napari_vesuvius_pt.ui.predict_widget import PredictWidget

JOB_TIMEOUT_MS = 120_000


def ink_checkpoint(path: Path, seed: int) -> Path:
    """A fine-tuning checkpoint of a tiny untrained ink model, in the format the engine writes."""
    torch.manual_seed(seed)
    spec = EncoderConfig(name="resnet10", widen_factor=0.25)
    model = InkModel(encoder_from_spec(spec), output_stride=4)
    return save_checkpoint(path, {
        "kind": "finetune", "encoder_spec": to_dict(spec), "encoder": model.encoder.state_dict(),
        "head": model.head.state_dict(), "output_stride": 4, "tile": to_dict(TileConfig(depth=16, size=32, stride=32)),
        "data": to_dict(DataConfig()), "epoch": 1, "metrics": {},
    })


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return [ink_checkpoint(root / "encoder-a.pt", 1), ink_checkpoint(root / "encoder-b.pt", 2)]


def wait_done(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.runner.state == "idle" and widget.runner.last_outcome is not None,
                    timeout=JOB_TIMEOUT_MS)


def test_predict_two_checkpoints_gives_two_layers_and_a_metrics_table(make_napari_viewer, qtbot, fragment_dir,
                                                                      checkpoints, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Predict & compare")  # the Plugins menu path
    widget.segment.set_text(str(fragment_dir))
    for ckpt in checkpoints:
        widget.checkpoints.add(ckpt)
    out = tmp_path / "pred.zarr"
    widget.out.set_text(str(out))
    widget.batch_size.setValue(16)
    widget.edge.setValue(0)  # stride = tile size: 36 tiles per encoder
    widget.device.set_value("cpu")
    assert widget.start()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "finished", widget.status.text()

    store = open_prediction(out)
    assert store.names == ["encoder-a", "encoder-b"]
    for name in store.names:
        layer = viewer.layers[name]
        assert layer.colormap.name == "magma" and layer.opacity == pytest.approx(0.6)
        assert tuple(layer.scale) == tuple(store.layer_kwargs(name)["scale"])
        np.testing.assert_array_equal(np.asarray(layer.data), np.asarray(store.array(name)))
        assert np.asarray(layer.data).max() > 0
    labels = viewer.layers[f"{fragment_dir.name} ink labels"]
    import napari.layers

    assert isinstance(labels, napari.layers.Labels) and labels.data.shape == (192, 192) and labels.data.max() == 1
    assert labels.contour > 0  # outlines, even through the plugin proxy

    table = widget.metrics_rows()
    assert list(table) == ["encoder-a", "encoder-b"]
    expected = evaluate(out, fragment_dir)
    for name, row in table.items():
        assert row["F0.5"] == pytest.approx(expected[name].f05, abs=1e-3)
        assert row["precision"] == pytest.approx(expected[name].precision, abs=1e-3)
        assert row["recall"] == pytest.approx(expected[name].recall, abs=1e-3)
        assert row["AUC"] == pytest.approx(expected[name].auc, abs=1e-3)

    # after the run, the comparison view (laid out one layer per event-loop turn): one prediction at a
    # time, then one grid cell per encoder
    qtbot.waitUntil(lambda: widget.comparison_layers is not None, timeout=JOB_TIMEOUT_MS)
    shown = [la for la in viewer.layers if la.metadata.get("comparison") == "prediction" and la.visible]
    assert [la.metadata["encoder"] for la in shown] == ["encoder-a"]
    widget.side_by_side.setChecked(True)
    qtbot.waitUntil(lambda: widget.comparison_layers is not None, timeout=JOB_TIMEOUT_MS)
    grid = viewer.canvas.grid
    assert grid.enabled
    layers = list(viewer.layers)
    assert len({grid.position(i, layers) for i in range(len(layers))} - {(-1, -1)}) == 2
    widget.side_by_side.setChecked(False)
    qtbot.waitUntil(lambda: widget.comparison_layers is not None, timeout=JOB_TIMEOUT_MS)
    assert not viewer.canvas.grid.enabled
    assert "--checkpoint" in widget.cli_line.text() and str(out) in widget.cli_line.text()


def test_a_stopped_prediction_keeps_its_layers_and_resumes(make_napari_viewer, qtbot, fragment_dir, checkpoints,
                                                           tmp_path):
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    widget.segment.set_text(str(fragment_dir))
    widget.checkpoints.add(checkpoints[0])
    out = tmp_path / "pred.zarr"
    widget.out.set_text(str(out))
    widget.batch_size.setValue(1)
    widget.edge.setValue(0)
    widget.device.set_value("cpu")
    tiles = []
    assert widget.start()
    widget.worker.yielded.connect(lambda e: tiles.append(e) if isinstance(e, TilesDone) else None)
    qtbot.waitUntil(lambda: len(tiles) >= 3, timeout=JOB_TIMEOUT_MS)
    widget.stop()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "stopped"
    assert "encoder-a" in viewer.layers and "Stopped" in widget.status.text()
    assert widget.table.rowCount() == 0  # no scores for an unfinished prediction
    # the next run resumes the same store and completes it
    widget.batch_size.setValue(16)
    assert widget.start()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "finished"
    assert open_prediction(out).done_rows("encoder-a") == open_prediction(out).array("encoder-a").shape[0]
    assert widget.table.rowCount() == 1


def test_tta_and_remote_cache_reach_the_config_and_the_cli_line(make_napari_viewer, fragment_dir, checkpoints,
                                                                tmp_path, monkeypatch):
    """The TTA box turns on predict --tta; a remote segment's CLI line carries the cache the Segments widget
    set; storage and tiling sit in the collapsed advanced section."""
    from napari_vesuvius_pt.config import PredictConfig
    from napari_vesuvius_pt.data.remote import CACHE_ENV, CACHE_SIZE_ENV

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Predict & compare")
    assert not widget.tta.isChecked()  # off by default: 8x the compute
    assert not widget.advanced.isExpanded() and widget.advanced.isVisibleTo(widget)
    assert widget.advanced_form.labelForField(widget.dtype) is not None  # storage is an advanced setting
    widget.segment.set_text(str(fragment_dir))
    widget.checkpoints.add(checkpoints[0])
    widget.out.set_text(str(tmp_path / "pred.zarr"))
    widget.tta.setChecked(True)
    config = widget.build_config()
    assert config.tta and "--tta" in widget.cli_command(config)
    assert "--cache" not in widget.cli_command(config)  # a local segment needs no cache

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(CACHE_SIZE_ENV, "2G")
    remote = PredictConfig(checkpoints=[str(checkpoints[0])], segment="https://example.org/seg.zarr",
                           out=str(tmp_path / "r.zarr"))
    line = widget.cli_command(remote)
    assert f"--cache {tmp_path / 'cache'}" in line and "--cache-size 2G" in line and "--tta" not in line
