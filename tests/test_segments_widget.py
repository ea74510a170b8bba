"""The Segments dock widget driven for real: choose a path, preview, load with options and a role, the list
and the registry the training widgets read, bad paths, remembered settings; and its screenshot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_vesuvius_pt.config import DataConfig
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.ui import settings
from napari_vesuvius_pt.ui.segment_registry import (
    PRETRAIN,
    TRAIN,
    VALIDATION,
    LoadedSegment,
    SegmentRegistry,
    registry_for,
)
from napari_vesuvius_pt.ui.segments_widget import SegmentsWidget

WAIT_MS = 30_000
SCREENSHOT_DIR = os.environ.get("VESUVIUS_PT_SCREENSHOTS")  # set to docs/screenshots to refresh the docs' image


@pytest.fixture(autouse=True)
def own_settings_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "widgets.json"
    monkeypatch.setenv(settings.ENV_VAR, str(path))
    return path


def choose(qtbot, widget: SegmentsWidget, path) -> None:
    widget.path.set_text(str(path))
    qtbot.waitUntil(lambda: widget.preview_is_current, timeout=WAIT_MS)


def load(qtbot, widget: SegmentsWidget, role: str) -> None:
    widget.role.setCurrentIndex(widget.role.findData(role))
    before = len(widget.registry)
    widget.load_button.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.status.text().startswith("Loaded"), timeout=WAIT_MS)
    assert len(widget.registry) >= before


def table_row(widget: SegmentsWidget, row: int) -> tuple[str, str]:
    return widget.table.item(row, 0).text(), widget.role_box(row).currentData()


def test_load_segments_with_options_and_roles(make_napari_viewer, qtbot, fragment_dir, scroll_dir, notifications,
                                              tmp_path):
    viewer = make_napari_viewer()
    viewer.window.resize(1400, 900)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Segments")  # the Plugins menu path

    # an unlabeled scroll segment is offered as a pretraining segment
    choose(qtbot, widget, scroll_dir)
    assert widget.role.currentData() == PRETRAIN and "no ink labels" in widget.info.text()
    load(qtbot, widget, PRETRAIN)
    assert [layer.name for layer in viewer.layers] == ["segment2", "segment2 mask"]

    choose(qtbot, widget, fragment_dir)
    # a new path reads all its layers, and a labeled fragment is offered as a training fragment
    assert widget.z_range() == (0, 20) and widget.z_window.maximum() == 20  # the range slider spans the layers
    assert widget.role.currentData() == TRAIN
    assert "mask" in widget.info.text() and "· ink labels" in widget.info.text()
    pixmap = widget.preview_image.pixmap()
    assert pixmap is not None and not pixmap.isNull() and max(pixmap.width(), pixmap.height()) == 260

    widget.z_window.setValue((4, 4))  # handles that meet keep one layer between them
    assert widget.z_range() == (4, 5)
    widget.z_window.setValue((4, 16))
    widget.downsample.setValue(2)
    widget.normalization.setCurrentIndex(widget.normalization.findData("minmax"))
    qtbot.waitUntil(lambda: widget.preview_is_current, timeout=WAIT_MS)
    assert "fitted: low" in widget.preview_text.text() and "layer 6" in widget.preview_text.text()
    load(qtbot, widget, TRAIN)

    volume = viewer.layers["fragment0"]
    assert volume.data.shape == (12, 96, 96)
    np.testing.assert_allclose(volume.scale, (1, 2, 2))  # placed over the full-resolution files
    np.testing.assert_allclose(volume.translate, (0, 0.5, 0.5))
    for name in ("fragment0 mask", "fragment0 ink labels"):
        np.testing.assert_allclose(viewer.layers[name].scale, (2, 2))
        np.testing.assert_allclose(viewer.layers[name].translate, (0.5, 0.5))
    entry = widget.registry.get(fragment_dir)
    assert entry.role == TRAIN and entry.z_range == (4, 16) and entry.downsample == 2
    assert entry.normalization == "minmax" and set(entry.normalization_params) == {"low", "high"}
    # the volume is shown as the model will see it: the fitted minmax range is the display range
    np.testing.assert_allclose(volume.contrast_limits, (entry.normalization_params["low"],
                                                        entry.normalization_params["high"]))
    config = entry.data_config(DataConfig(normalization="kaggle"))
    assert config.z_range == [4, 16] and config.downsample == 2 and config.normalization == "minmax"
    assert registry_for(viewer) is widget.registry
    assert widget.registry.paths(PRETRAIN) == [str(scroll_dir)]
    assert widget.registry.paths(TRAIN) == [str(fragment_dir)]
    assert table_row(widget, 0) == ("segment2\n20×160×160 · mask", PRETRAIN)
    assert table_row(widget, 1) == ("fragment0\n12×96×96 · mask · ink", TRAIN)
    # one segment shown at a time, each in its own pixels: loading the fragment hid the scroll segment
    assert not viewer.layers["segment2"].visible and viewer.layers["fragment0"].visible
    widget.table.selectRow(0)
    assert viewer.layers["segment2"].visible and not viewer.layers["fragment0"].visible
    assert not viewer.layers["fragment0 ink labels"].visible
    widget.table.selectRow(1)
    assert viewer.layers["fragment0"].visible and not viewer.layers["segment2 mask"].visible

    viewer.layers["segment2"].visible = viewer.layers["segment2 mask"].visible = False
    viewer.layers.selection.active = volume
    viewer.dims.set_point(0, 6)
    viewer.reset_view()
    shot = viewer.screenshot(str(tmp_path / "segments.png"), canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 300 and shot[..., :3].std() > 10  # a drawn window, not a blank
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "segments.png", Path(SCREENSHOT_DIR) / "segments.png")

    # roles change from the list; a segment without ink labels cannot be a validation fragment
    box = widget.role_box(0)
    box.setCurrentIndex(box.findData(VALIDATION))
    assert any("no ink labels" in str(n.message) for n in notifications)
    assert widget.registry.get(scroll_dir).role == PRETRAIN and box.currentData() == PRETRAIN
    widget.role_box(1).setCurrentIndex(widget.role_box(1).findData(VALIDATION))
    assert widget.registry.paths(VALIDATION) == [str(fragment_dir)]

    # Remove takes the layers away too; deleting a volume layer in the viewer drops its entry
    widget.table.selectRow(0)
    widget.remove_button.click()
    assert "segment2" not in [layer.name for layer in viewer.layers] and len(widget.registry) == 1
    viewer.layers.remove("fragment0")
    assert len(widget.registry) == 0 and widget.table.rowCount() == 0


def test_bad_paths_notify_and_the_widget_stays_usable(make_napari_viewer, qtbot, fragment_dir, tmp_path,
                                                      notifications):
    viewer = make_napari_viewer()
    widget = SegmentsWidget(viewer)
    broken = tmp_path / "broken"
    shutil.copytree(fragment_dir, broken)
    (broken / "surface_volume" / "03.tif").write_bytes(b"not a tiff")

    for bad, words in ((tmp_path / "nowhere", "not found"), (broken, "03.tif")):
        notifications.clear()
        widget.path.set_text(str(bad))
        qtbot.waitUntil(lambda: not widget.busy and bool(notifications), timeout=WAIT_MS)
        assert any(words in str(n.message) for n in notifications), [str(n.message) for n in notifications]
        assert not widget.load_button.isEnabled() and len(viewer.layers) == 0

    # Load pressed before the preview is ready: it loads when it is, with the role the user chose
    widget.path.set_text(str(fragment_dir))
    load(qtbot, widget, VALIDATION)
    assert [layer.name for layer in viewer.layers] == ["fragment0", "fragment0 mask", "fragment0 ink labels"]
    assert widget.registry.paths(VALIDATION) == [str(fragment_dir)]


def test_settings_are_remembered_by_the_next_widget(make_napari_viewer, qtbot, own_settings_file):
    viewer = make_napari_viewer()
    first = SegmentsWidget(viewer)
    first.normalization.setCurrentIndex(first.normalization.findData("zscore"))
    first.downsample.setValue(3)
    first.reverse.setChecked(True)
    saved = json.loads(own_settings_file.read_text())["Segments"]
    assert {k: saved[k] for k in ("normalization", "downsample", "reverse")} == {
        "normalization": "zscore", "downsample": 3, "reverse": True}

    second = SegmentsWidget(viewer)
    assert second.normalization.currentData() == "zscore"
    assert second.downsample.value() == 3 and second.reverse.isChecked()


def test_damaged_settings_file_is_ignored(own_settings_file):
    own_settings_file.write_text("{not json")
    assert settings.load_settings("Segments") == {}
    settings.save_settings("Segments", {"downsample": 2})
    settings.save_settings("Pretrain", {"epochs": 5})
    assert settings.load_settings("Segments") == {"downsample": 2}
    assert settings.load_settings("Pretrain") == {"epochs": 5}


def test_registry_roles_and_events(tmp_path):
    reg = SegmentRegistry()
    seen = []
    reg.changed.connect(lambda: seen.append("changed"))
    reg.role_changed.connect(lambda entry, old: seen.append((entry.role, old)))
    frag = LoadedSegment(tmp_path / "f", "f", TRAIN, (8, 32, 32), "uint16", (0, 8), has_inklabels=True)
    scroll = LoadedSegment(tmp_path / "s", "s", PRETRAIN, (8, 32, 32), "uint16", (0, 8))
    reg.add(frag)
    reg.add(scroll)
    with pytest.raises(ConfigError, match="no ink labels"):
        reg.set_role(tmp_path / "s", TRAIN)
    with pytest.raises(ConfigError, match="no ink labels"):
        reg.add(LoadedSegment(tmp_path / "t", "t", VALIDATION, (8, 32, 32), "uint16", (0, 8)))
    reg.set_role(str(tmp_path / "f"), VALIDATION)
    assert reg.paths(VALIDATION) == [str(tmp_path / "f")] and reg.paths(TRAIN) == []
    assert seen == ["changed", "changed", (VALIDATION, TRAIN), "changed"]
    reg.add(frag)  # the same path again replaces its entry
    assert len(reg) == 2 and reg.get(tmp_path / "f").role == TRAIN


def test_settings_live_beside_napari_settings(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.ENV_VAR)
    monkeypatch.setenv("NAPARI_CONFIG", str(tmp_path / "napari" / "settings.yaml"))
    assert settings.settings_path() == tmp_path / "napari" / "napari-vesuvius-pt" / "widgets.json"
    monkeypatch.setenv("NAPARI_CONFIG", "")  # napari told not to save settings: neither do the widgets
    assert settings.settings_path() is None
    settings.save_settings("Segments", {"downsample": 2})
    assert settings.load_settings("Segments") == {}


def test_remember_binds_the_form_fields_other_widgets_use(qtbot, own_settings_file):
    from qtpy.QtWidgets import QDoubleSpinBox, QLineEdit

    from napari_vesuvius_pt.ui.fields import FOLDER, PathField, combo

    def fields():
        run, lr, note, optim = PathField(FOLDER), QDoubleSpinBox(), QLineEdit(), combo(("sgd", "adamw"), "sgd")
        lr.setDecimals(4)
        for w in (run, lr, note, optim):
            qtbot.addWidget(w)
        return {"run": run, "lr": lr, "note": note, "optimizer": optim}

    first = fields()
    settings.remember("Pretrain", first)
    first["run"].set_text("/runs/a")
    first["lr"].setValue(0.05)
    first["note"].setText("first try")
    first["optimizer"].setCurrentIndex(1)
    settings.save_settings("Pretrain", {"optimizer": "lamb"})  # an entry the combo no longer offers ...
    second = fields()
    restored = settings.remember("Pretrain", second).restore()
    assert second["run"].text() == "/runs/a" and second["lr"].value() == 0.05
    assert second["note"].text() == "first try"
    assert second["optimizer"].currentData() == "sgd" and "optimizer" in restored  # ... is skipped


def test_a_fragment_opened_twice_is_one_segment(make_napari_viewer, qtbot, fragment_dir):
    viewer = make_napari_viewer()
    viewer.open(str(fragment_dir), plugin="napari-vesuvius-pt")  # File > Open first
    assert [layer.name for layer in viewer.layers] == ["fragment0", "fragment0 mask", "fragment0 ink labels"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Segments")
    choose(qtbot, widget, fragment_dir)
    load(qtbot, widget, TRAIN)
    assert [layer.name for layer in viewer.layers] == ["fragment0", "fragment0 mask", "fragment0 ink labels"]
    assert widget.registry.get(fragment_dir).role == TRAIN and len(widget.registry) == 1
