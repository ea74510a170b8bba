"""The npe2 manifest: valid, and every contribution points at something that exists."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest
from npe2 import PluginManifest

WIDGETS = {
    "Segments": "napari_vesuvius_pt.ui.segments_widget:SegmentsWidget",
    "Pretrain": "napari_vesuvius_pt.ui.pretrain_widget:PretrainWidget",
    "Fine-tune": "napari_vesuvius_pt.ui.finetune_widget:FinetuneWidget",
    "Predict & compare": "napari_vesuvius_pt.ui.predict_widget:PredictWidget",
    "CKA": "napari_vesuvius_pt.ui.cka_widget:CKAWidget",
}


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution("napari-vesuvius-pt")


def test_npe2_validate_accepts_the_manifest():
    npe2 = shutil.which("npe2")
    cmd = [npe2] if npe2 else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*cmd, "validate", "napari-vesuvius-pt"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_contributions_and_widget_names(manifest):
    c = manifest.contributions
    commands = {cmd.id: cmd.python_name for cmd in c.commands}
    widgets = {w.display_name: commands[w.command] for w in c.widgets}
    assert widgets == WIDGETS
    reader = c.readers[0]
    assert reader.accepts_directories and {"*.tif", "*.tiff", "*.zarr"} <= set(reader.filename_patterns)
    assert c.writers[0].layer_types == ["image"] and c.writers[0].filename_extensions == [".zarr"]
    assert [s.key for s in c.sample_data] == ["synthetic-fragment"]


def test_reader_writer_and_sample_commands_import(manifest):
    for cmd in manifest.contributions.commands:
        if ".ui." in cmd.python_name:
            continue  # widgets import Qt; the Segments widget is imported by its own tests
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.python_name
