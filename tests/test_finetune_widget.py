"""The Fine-tune dock widget on the synthetic fragment: a validation region drawn as a Shapes rectangle,
a preview layer replaced every epoch, the regions saved with the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vesuvius_pt.config import FinetuneConfig, load_config
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.engine.events import PreviewReady, StepDone
from napari_vesuvius_pt.models.checkpoint import load_checkpoint
from napari_vesuvius_pt.ui.finetune_widget import PREVIEW_LAYER, REGIONS_LAYER, FinetuneWidget
from napari_vesuvius_pt.ui.segment_registry import TRAIN, LoadedSegment, registry_for

JOB_TIMEOUT_MS = 120_000


def tiny(widget: FinetuneWidget, fragment, run, epochs: int, steps: int) -> None:
    widget.fragments.add(fragment)
    widget.encoder.setCurrentIndex(widget.encoder.findData("resnet10"))
    widget.widen.setValue(0.25)
    widget.tile_depth.setValue(16)
    widget.tile_size.setValue(32)
    widget.tile_stride.setValue(32)
    widget.output_stride.setCurrentIndex(widget.output_stride.findData(4))
    widget.epochs.setValue(epochs)
    widget.batch_size.setValue(4)
    widget.steps.setValue(steps)
    widget.device.set_value("cpu")
    widget.run_folder.set_text(str(run))


def wait_done(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.runner.state == "idle" and widget.runner.last_outcome is not None,
                    timeout=JOB_TIMEOUT_MS)


def test_finetune_on_a_drawn_region_updates_the_preview(make_napari_viewer, qtbot, fragment_dir, tmp_path):
    viewer = make_napari_viewer()
    segment = open_segment(fragment_dir)
    h, w = segment.shape[1:]
    # the fragment as the Segments widget would show it (here at half resolution, scaled back up),
    # registered as a training fragment
    fragment_layer = viewer.add_image(np.asarray(segment.volume[:, ::2, ::2]), name="fragment (half resolution)",
                                      scale=(1, 2, 2))
    registry_for(viewer).add(LoadedSegment(
        path=fragment_dir, name=segment.name, role=TRAIN, shape=segment.shape, dtype=str(segment.volume.dtype),
        z_range=(0, segment.shape[0]), has_mask=True, has_inklabels=True, layer_names=(fragment_layer.name,)))
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Fine-tune")  # the Plugins menu path
    assert widget.fragments.paths() == [str(fragment_dir)]  # offered, ticked, from the Segments widget
    run = tmp_path / "run"
    tiny(widget, fragment_dir, run, epochs=2, steps=1)
    widget.augment_form.fields["rotate90"].value = False  # the Augmentations section: typed AugmentConfig fields

    widget.draw_button.click()
    shapes = viewer.layers[REGIONS_LAYER]
    assert tuple(shapes.scale) == tuple(fragment_layer.scale[-2:]) == (2, 2)
    # the lower 30% of the fragment, drawn in the layer's own (half-resolution) coordinates
    y0 = int(0.7 * h) // 2
    shapes.add_rectangles(np.array([[y0, 0], [h // 2, w // 2]]))

    previews = []
    assert widget.start()
    widget.worker.yielded.connect(lambda e: previews.append(e) if isinstance(e, PreviewReady) else None)
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "finished", widget.status.text()

    # one preview layer, replaced after each epoch, lying inside the drawn region
    assert [p.epoch for p in previews] == [1, 2]
    assert [layer.name for layer in viewer.layers].count(PREVIEW_LAYER) == 1
    preview = viewer.layers[PREVIEW_LAYER]
    assert preview.metadata["epoch"] == 2
    np.testing.assert_array_equal(preview.data, previews[-1].array)
    assert preview.colormap.name == "magma" and preview.opacity == pytest.approx(0.6)
    top_left = np.asarray(preview.translate)
    bottom_right = top_left + np.asarray(preview.data.shape) * np.asarray(preview.scale)
    assert top_left[0] >= 2 * y0 - 32 and bottom_right[0] <= h + 32 and 0 <= preview.data.min() <= preview.data.max() <= 1
    # the regions were saved with the run, in full-resolution pixels, and the config points at them
    saved = json.loads((run / "val_region.json").read_text())["polygons"]
    corners = np.asarray(saved[0])
    assert corners[:, 0].min() == pytest.approx(2 * y0) and corners[:, 0].max() == pytest.approx(h)
    assert corners[:, 1].max() == pytest.approx(w)
    config = load_config(FinetuneConfig, run / "config.yaml")
    assert config.val_region == str(run / "val_region.json") and config.fragments == [str(fragment_dir)]
    assert config.augment.rotate90 is False and config.augment.flip is True
    # live plots: loss per step, F0.5 per epoch; metrics are in the checkpoint
    assert [x for x, _ in widget.loss_plot.points("loss")] == [1, 2]
    assert [x for x, _ in widget.f05_plot.points("f05")] == [1, 2]
    assert widget.f05_plot.drawn_points("f05") == widget.f05_plot.points("f05")
    assert "f05" in load_checkpoint(run / "checkpoints" / "epoch_002.pt")["metrics"]

    # closing the widget (napari's close button takes it out of its dock) stops a running job cleanly
    tiny(widget, fragment_dir, tmp_path / "run2", epochs=20, steps=4)
    steps = []
    assert widget.start()
    widget.worker.yielded.connect(lambda e: steps.append(e) if isinstance(e, StepDone) else None)
    qtbot.waitUntil(lambda: len(steps) >= 1, timeout=JOB_TIMEOUT_MS)
    viewer.window.remove_dock_widget(widget)
    assert widget.runner.wait(60)
    assert load_checkpoint(tmp_path / "run2" / "last.pt")["kind"] == "finetune"


def test_missing_region_and_bad_weights_are_notifications(make_napari_viewer, qtbot, fragment_dir, tmp_path,
                                                          notifications):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    tiny(widget, fragment_dir, tmp_path / "run", epochs=1, steps=1)
    assert not widget.start()
    assert any("no validation region drawn" in str(n.message) for n in notifications)
    widget.origin.setCurrentIndex(widget.origin.findData("run"))
    widget.origin_path.set_text(str(tmp_path / "missing-run"))
    widget.regions_layer().add_rectangles(np.array([[100, 0], [191, 191]]))
    assert not widget.start()
    assert any("encoder weights not found" in str(n.message) for n in notifications)
    assert widget.start_button.isEnabled()


def test_a_validation_fragment_from_the_segments_widget_is_offered(make_napari_viewer, fragment_dir, fragment2_dir):
    from napari_vesuvius_pt.ui.segment_registry import VALIDATION

    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    for path, role in ((fragment_dir, TRAIN), (fragment2_dir, VALIDATION)):
        segment = open_segment(path)
        registry_for(viewer).add(LoadedSegment(
            path=path, name=segment.name, role=role, shape=segment.shape, dtype=str(segment.volume.dtype),
            z_range=(0, segment.shape[0]), has_mask=True, has_inklabels=True))
    assert widget.fragments.paths() == [str(fragment_dir)]
    assert widget.val_fragment.text() == str(fragment2_dir)
    assert widget.validation.currentData() == "fragment"


def test_regions_drawn_on_the_second_fragment_validate_there(make_napari_viewer, qtbot, fragment_dir, fragment2_dir,
                                                             tmp_path):
    """'regions on' picks the training fragment the regions lie on: the Shapes layer sits over it, that
    fragment is shown alone, the saved regions name it, and the preview lands on it."""
    viewer = make_napari_viewer()
    layers = {}
    for path in (fragment_dir, fragment2_dir):
        segment = open_segment(path)
        layers[path] = viewer.add_image(np.asarray(segment.volume[:, ::2, ::2]), name=f"{segment.name} volume",
                                        scale=(1, 2, 2), metadata={"kind": "volume", "path": str(path)})
        registry_for(viewer).add(LoadedSegment(
            path=path, name=segment.name, role=TRAIN, shape=segment.shape, dtype=str(segment.volume.dtype),
            z_range=(0, segment.shape[0]), has_mask=True, has_inklabels=True, layer_names=(layers[path].name,)))
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Fine-tune")
    assert widget.fragments.paths() == [str(fragment_dir), str(fragment2_dir)]
    assert [widget.region_on.itemData(i) for i in range(widget.region_on.count())] == widget.fragments.paths()
    assert widget.region_fragment() == str(fragment_dir)  # the first, until the user picks another
    tiny(widget, fragment_dir, tmp_path / "run", epochs=1, steps=1)

    widget.region_on.setCurrentIndex(widget.region_on.findData(str(fragment2_dir)))
    assert layers[fragment2_dir].visible and not layers[fragment_dir].visible  # the chosen fragment, alone
    widget.draw_button.click()
    shapes = viewer.layers[REGIONS_LAYER]
    assert shapes.metadata["segment_path"] == str(fragment2_dir)
    h, w = open_segment(fragment2_dir).shape[1:]
    shapes.add_rectangles(np.array([[int(0.7 * h) // 2, 0], [h // 2, w // 2]]))
    assert widget.start()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "finished", widget.status.text()
    saved = json.loads((tmp_path / "run" / "val_region.json").read_text())
    assert saved["fragment"] == open_segment(fragment2_dir).name and saved["fragment_path"] == str(fragment2_dir)
    assert viewer.layers[PREVIEW_LAYER].metadata["segment_path"] == str(fragment2_dir)

    # unticking the second fragment moves the regions back to the first ticked one
    item = widget.fragments._find(str(fragment2_dir))
    from qtpy.QtCore import Qt

    item.setCheckState(Qt.CheckState.Unchecked)
    assert widget.region_fragment() == str(fragment_dir) and shapes.metadata["segment_path"] == str(fragment_dir)
