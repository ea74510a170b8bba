"""The Pretrain dock widget driven for real on a synthetic scroll segment with a tiny encoder."""

from __future__ import annotations

import dataclasses
import shlex
import threading
from pathlib import Path

from napari_vesuvius_pt.cli import main as cli_main
from napari_vesuvius_pt.config import AugmentConfig, PretrainConfig, load_config
from napari_vesuvius_pt.engine.events import StepDone
from napari_vesuvius_pt.models.checkpoint import load_checkpoint
from napari_vesuvius_pt.ui.pretrain_widget import PretrainWidget

JOB_TIMEOUT_MS = 120_000


def tiny(widget: PretrainWidget, segment: Path, run: Path, epochs: int, steps: int) -> None:
    widget.segments.add(segment)
    widget.encoder.setCurrentIndex(widget.encoder.findData("resnet10"))
    widget.widen.setValue(0.25)
    widget.tile_depth.setValue(16)
    widget.tile_size.setValue(32)
    widget.tile_stride.setValue(32)
    widget.epochs.setValue(epochs)
    widget.batch_size.setValue(4)
    widget.steps.setValue(steps)
    widget.device.set_value("cpu")
    widget.run_folder.set_text(str(run))


def wait_done(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.runner.state == "idle" and widget.runner.last_outcome is not None,
                    timeout=JOB_TIMEOUT_MS)


def test_pretraining_from_the_widget_writes_checkpoints_and_plots(make_napari_viewer, qtbot, scroll_dir, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Pretrain")  # the Plugins menu path
    run = tmp_path / "run"
    tiny(widget, scroll_dir, run, epochs=2, steps=2)
    widget.start_button.click()
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    wait_done(qtbot, widget)

    assert widget.runner.last_outcome.status == "finished", widget.status.text()
    payload = load_checkpoint(run / "checkpoints" / "epoch_002.pt")
    assert payload["kind"] == "pretrain" and payload["epoch"] == 2
    assert payload["encoder_spec"]["name"] == "resnet10"
    # the plots hold every step's loss and terms, and one collapse-monitor point per epoch
    losses = widget.loss_plot.points("loss")
    assert [x for x, _ in losses] == [1, 2, 3, 4]
    assert all(y > 0 for _, y in losses)
    for term in ("invariance", "variance", "covariance"):
        assert len(widget.loss_plot.points(term)) == 4
    assert [x for x, _ in widget.collapse_plot.points("effective_rank")] == [1, 2]
    assert all(y >= 1.0 for _, y in widget.collapse_plot.points("effective_rank"))
    assert len(widget.collapse_plot.points("embedding_std")) == 2
    # and they are drawn: on the curves, inside the axes' view
    assert widget.loss_plot.drawn_points("loss") == losses
    assert len(widget.collapse_plot.drawn_points("effective_rank")) == 2
    main = threading.main_thread().ident  # rendered off the GUI thread (it froze the viewer there)
    assert widget.loss_plot.canvas.renders >= 1 and main not in widget.loss_plot.canvas.render_threads
    # progress at the end, the device the job ran on, and the CLI that repeats it from the saved config
    assert widget.progress.run_bar.value() == widget.progress.run_bar.maximum() == 4
    assert "cpu" in widget.status.text() and "Finished" in widget.status.text()
    assert str(run / "config.yaml") in widget.cli_line.text()
    saved = load_config(PretrainConfig, run / "config.yaml")
    assert saved.segments == [str(scroll_dir)] and saved.epochs == 2 and saved.encoder.widen_factor == 0.25
    # ready for the next job, in a fresh folder
    assert widget.start_button.isEnabled()
    assert Path(widget.run_folder.text()) != run

    # the command shown repeats the job headless from the run folder's config.yaml
    args = shlex.split(widget.cli_line.text())
    assert args[:4] == ["vesuvius-pt", "pretrain", "--config", str(run / "config.yaml")]
    assert cli_main(args[1:] + ["--quiet"]) == 0
    again = Path(args[args.index("--out") + 1])
    assert dataclasses.replace(load_config(PretrainConfig, again / "config.yaml"), out=saved.out) == saved
    assert load_checkpoint(again / "checkpoints" / "epoch_002.pt")["epoch"] == 2


def test_stop_mid_run_leaves_a_checkpoint_and_the_run_continues(make_napari_viewer, qtbot, scroll_dir, tmp_path):
    viewer = make_napari_viewer()
    widget = PretrainWidget(viewer)
    run = tmp_path / "run"
    tiny(widget, scroll_dir, run, epochs=20, steps=12)
    steps_seen = []
    widget.start()
    widget.worker.yielded.connect(lambda e: steps_seen.append(e) if isinstance(e, StepDone) else None)
    qtbot.waitUntil(lambda: len(steps_seen) >= 1, timeout=JOB_TIMEOUT_MS)
    widget.stop_button.click()
    wait_done(qtbot, widget)

    outcome = widget.runner.last_outcome
    assert outcome.status == "stopped"
    last = run / "last.pt"
    payload = load_checkpoint(last)
    # the worker may run a few steps past the click (or finish an epoch) before it sees the stop
    assert payload["kind"] == "pretrain" and 0 <= payload["step"] < 12
    assert (payload["epoch"], payload["step"]) != (0, 0) and payload["epoch"] < 20
    assert f"checkpoint kept at {last}" in widget.status.text()

    # a second job in the same napari session continues the stopped run from its checkpoint
    target = payload["epoch"] + 1
    widget.run_folder.set_text(str(run))
    widget.resume.setChecked(True)
    widget.epochs.setValue(target)
    assert widget.start()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "finished", widget.status.text()
    assert load_checkpoint(run / "checkpoints" / f"epoch_{target:03d}.pt")["epoch"] == target


def test_bad_paths_show_notifications(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    widget = PretrainWidget(viewer)
    # caught in the form: a segment that is not there
    tiny(widget, tmp_path / "no-such-segment", tmp_path / "run", epochs=1, steps=1)
    assert not widget.start()
    assert any("segment not found" in str(n.message) for n in notifications)
    # caught by the engine in the worker thread: a folder that holds no segment
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    widget.segments.clear()
    widget.segments.add(empty)
    notifications.clear()
    assert widget.start()
    wait_done(qtbot, widget)
    assert widget.runner.last_outcome.status == "error"
    assert any(str(empty) in str(n.message) for n in notifications)
    assert widget.start_button.isEnabled() and "Error" in widget.status.text()


def test_settings_are_remembered_by_the_next_widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    first = PretrainWidget(viewer)
    first.epochs.setValue(7)
    first.encoder.setCurrentIndex(first.encoder.findData("resnet34"))
    first.device.set_value("cpu")
    first.run_folder.set_text(str(tmp_path / "runs" / "mine"))
    first.close()
    again = PretrainWidget(viewer)  # as at the next napari launch
    assert again.epochs.value() == 7
    assert again.encoder.currentData() == "resnet34"
    assert again.device.value() == "cpu"
    assert again.run_folder.text() == str(tmp_path / "runs" / "mine")


def test_the_collapse_monitor_says_so_in_words(make_napari_viewer):
    from pathlib import Path

    from napari_vesuvius_pt.engine.events import EpochDone
    from napari_vesuvius_pt.models.vicreg import collapse_warning

    assert collapse_warning([{"effective_rank": 100.0}, {"effective_rank": 80.0}]) is None  # noise, not collapse
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Pretrain")
    for epoch, rank in enumerate((176.0, 120.0, 80.0, 40.0), start=1):
        widget.handle_event(EpochDone(epoch=epoch, epochs=4, metrics={"effective_rank": rank, "embedding_std": 0.5},
                                      checkpoint=Path("x.pt")))
        if epoch == 2:
            assert not widget.collapse_note.isVisibleTo(widget)
    text = widget.collapse_note.text()
    assert "collapsing" in text and "176" in text and "40" in text and widget.collapse_note.isVisibleTo(widget)


def test_augmentations_form_reaches_the_run_config_and_is_remembered(make_napari_viewer, scroll_dir, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Pretrain")
    tiny(widget, scroll_dir, tmp_path / "run", epochs=1, steps=1)
    form = widget.augment_form
    assert not widget.augmentations.isExpanded()  # collapsed until asked for
    # one typed field per AugmentConfig field, with the dataclass's default, help and range
    assert list(form.fields) == [f.name for f in dataclasses.fields(AugmentConfig)]
    assert type(form.fields["flip"]).__name__ == "CheckBox"
    assert type(form.fields["holes"]).__name__ == "SpinBox" and form.fields["holes"].max == 32
    assert form.fields["noise"].max == 1 and "noise" in form.fields["noise"].tooltip.lower()
    form.fields["max_z_shift"].value = 1
    form.fields["flip"].value = False
    form.fields["noise"].value = 0.0
    form.fields["big_holes"].value = 0
    cfg = widget.build_config()
    assert cfg.augment == dataclasses.replace(AugmentConfig(), max_z_shift=1, flip=False, noise=0.0, big_holes=0)
    widget.close()
    again = PretrainWidget(viewer)  # as at the next napari launch
    assert again.augment_form.value() == cfg.augment
