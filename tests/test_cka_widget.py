"""The CKA dock widget on a tiny pretraining run: the heatmaps show the epoch × epoch matrices, a new
epoch in the followed run adds a row, and the matrices export as PNG and CSV."""

from __future__ import annotations

import csv
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_vesuvius_pt.config import EncoderConfig, PretrainConfig, TileConfig, VICRegConfig
from napari_vesuvius_pt.engine.pretraining import pretrain
from napari_vesuvius_pt.ui.cka_widget import CKAWidget

JOB_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, scroll_dir) -> Path:
    run = tmp_path_factory.mktemp("cka") / "run"
    cfg = PretrainConfig(segments=[str(scroll_dir)], out=str(run), encoder=EncoderConfig("resnet10", widen_factor=0.25),
                         tile=TileConfig(depth=16, size=32, stride=32), vicreg=VICRegConfig(expander=[64, 64]),
                         epochs=2, batch_size=4, steps_per_epoch=1, device="cpu")
    for _ in pretrain(cfg):
        pass
    return run


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as fh:
        rows = list(csv.reader(fh))
    return rows[0][1:], np.array([[float(v) for v in row[1:]] for row in rows[1:]])


def wait_done(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.runner.state == "idle" and widget.runner.last_outcome is not None,
                    timeout=JOB_TIMEOUT_MS)


def test_cka_panel_shows_the_epoch_matrix_follows_the_run_and_exports(make_napari_viewer, qtbot, pretrain_run,
                                                                        scroll_dir, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "CKA")  # the Plugins menu path
    widget.run.set_text(str(pretrain_run))
    widget.segment.set_text(str(scroll_dir))
    widget.tiles.setValue(8)
    widget.device.set_value("cpu")
    widget.random_reference.setChecked(False)  # the epochs only here (the reference: its own test)
    assert not widget.export_png.isEnabled()
    assert widget.start()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "finished", widget.status.text()

    heat = widget.heatmaps
    assert heat.names == ["epoch_001", "epoch_002"]
    for matrix in (heat.linear, heat.rbf):
        assert matrix.shape == (2, 2)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
        np.testing.assert_allclose(matrix, matrix.T)
        assert 0.0 <= matrix[0, 1] <= 1.0
    # the heatmaps are laid out and rendered off the GUI thread, never on it
    assert heat.canvas.wait_drawn()
    assert heat.canvas.renders >= 1 and threading.main_thread().ident not in heat.canvas.render_threads
    titles = [ax.get_title() for ax in heat.figure.axes[:2]]
    assert len(heat.figure.axes) >= 2 and [t.split(" (")[0] for t in titles] == ["linear CKA", "RBF CKA"]
    assert all("colour scale" in t for t in titles)  # the scale fits the values and says so
    assert (pretrain_run / "cka" / "cka.json").is_file()  # the engine's own outputs, in the run folder

    # a new epoch appears in the followed run: the next poll adds its row
    shutil.copy(pretrain_run / "checkpoints" / "epoch_002.pt", pretrain_run / "checkpoints" / "epoch_003.pt")
    widget.follow.setChecked(True)
    assert widget.poll_run()
    wait_done(qtbot, widget)
    assert heat.names == ["epoch_001", "epoch_002", "epoch_003"]
    assert heat.linear[1, 2] == pytest.approx(1.0, abs=1e-6)  # the same weights: identical representations
    assert not widget.poll_run()  # nothing new: no job

    written = widget.export(png=tmp_path / "cka.png", csv_stem=tmp_path / "cka.csv")
    assert Image.open(tmp_path / "cka.png").size[0] > 300
    names, linear = read_csv(tmp_path / "cka_linear.csv")
    assert names == heat.names
    np.testing.assert_allclose(linear, heat.linear, atol=1e-6)
    _, rbf = read_csv(tmp_path / "cka_rbf.csv")
    np.testing.assert_allclose(rbf, heat.rbf, atol=1e-6)
    assert len(written) == 3
    # one CSV writer: the export is the engine's own linear.csv of the same matrix, byte for byte
    assert (tmp_path / "cka_linear.csv").read_text() == (pretrain_run / "cka" / "linear.csv").read_text()


def test_a_run_folder_without_checkpoints_is_a_notification(make_napari_viewer, qtbot, scroll_dir, tmp_path):
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer()
        widget = CKAWidget(viewer)
        empty_run = tmp_path / "not-a-run"
        empty_run.mkdir()
        widget.run.set_text(str(empty_run))
        widget.segment.set_text(str(scroll_dir))
        widget.tiles.setValue(8)
        widget.device.set_value("cpu")
        assert widget.start()
        wait_done(qtbot, widget)
        assert widget.runner.last_outcome.status == "error"
        assert any("holds no checkpoints" in str(n.message) for n in seen)
        assert widget.start_button.isEnabled()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_colour_scale_fits_the_values_and_is_printed():
    import numpy as np
    from matplotlib.figure import Figure

    from napari_vesuvius_pt.analysis.cka_plot import colour_range, draw_cka

    assert colour_range(np.array([0.96, 0.97, 1.0])) == (0.95, 1.0)  # not 0-1: the differences stay visible
    assert colour_range(np.array([0.89, 0.93, 1.0])) == (0.85, 1.0)
    fig = Figure()
    m = np.array([[1.0, 0.97], [0.97, 1.0]])
    draw_cka(fig, ["epoch_001", "epoch_002"], m, m)
    assert "colour scale 0.95–1.00" in fig.axes[0].get_title()
    assert fig.axes[0].images[0].get_clim() == (0.95, 1.0)


def test_random_reference_is_on_by_default(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "CKA")
    assert widget.random_reference.isChecked()
