"""The frame every job widget shares: a settings form, Start / Pause / Stop, progress with rate and time
left, a status line naming the device and the run folder, and the CLI command that repeats the job.

A subclass fills the form and says how to turn it into a run config and an engine generator; the frame
runs it through ``JobRunner`` and stops it cleanly when the widget or the viewer goes away. A training
job's two live plots (losses per step, metrics per epoch) are kept by the frame too: the subclass only
makes them (``add_training_plots``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_vesuvius_pt.config import DataConfig
from napari_vesuvius_pt.engine.events import EpochDone, Event, Started, StepDone, TilesDone
from napari_vesuvius_pt.errors import ConfigError, VesuviusError
from napari_vesuvius_pt.ui.notify import notify_error
from napari_vesuvius_pt.ui.segment_registry import SegmentRegistry, registry_for
from napari_vesuvius_pt.ui.settings import Remembered, remember
from napari_vesuvius_pt.ui.warm_up import PLOT_FONTS, warm_up
from napari_vesuvius_pt.ui.worker_bridge import IDLE, PAUSED, RUNNING, STOPPING, JobOutcome, JobRunner

if TYPE_CHECKING:
    from napari_vesuvius_pt.ui.plots import LivePlot

CLOSE_WAIT_S = 60.0  # how long closing a widget waits for its job to write the checkpoint


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunProgress(QWidget):
    """Two bars (the current epoch or encoder, and the whole run) and a line with rate and time left.

    Time left comes from the run's own pace since Start, with paused time left out.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.part_bar = QProgressBar(self)
        self.run_bar = QProgressBar(self)
        for bar in (self.part_bar, self.run_bar):
            bar.setTextVisible(True)
            bar.setMaximumHeight(18)
        self.rate_label = QLabel("", self)
        self.rate_label.setWordWrap(True)
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.part_label = QLabel("epoch", self)
        layout.addRow(self.part_label, self.part_bar)
        layout.addRow("run", self.run_bar)
        layout.addRow(self.rate_label)
        self.reset()

    def reset(self) -> None:
        for bar in (self.part_bar, self.run_bar):
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setFormat("%p%")
        self.rate_label.setText("")
        self._rate = ""
        self._active_s = 0.0
        self._since: float | None = None
        self._first_done: int | None = None

    def begin(self) -> None:
        self.reset()
        self._since = time.monotonic()

    def pause(self) -> None:
        if self._since is not None:
            self._active_s += time.monotonic() - self._since
            self._since = None

    def resume(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def active_seconds(self) -> float:
        return self._active_s + (time.monotonic() - self._since if self._since is not None else 0.0)

    def seconds_left(self, done: int, total: int) -> float | None:
        if self._first_done is None:
            self._first_done = done
            self._first_at = self.active_seconds()
            return None
        progressed = done - self._first_done
        if progressed <= 0 or total <= done:
            return None
        return (total - done) * (self.active_seconds() - self._first_at) / progressed

    def show_part(self, label: str, done: int, total: int, text: str | None = None) -> None:
        self.part_label.setText(label)
        self.part_bar.setRange(0, max(total, 1))
        self.part_bar.setValue(min(done, max(total, 1)))
        self.part_bar.setFormat(text or f"{done}/{total}")

    def show_run(self, done: int, total: int, rate: str = "") -> None:
        self.run_bar.setRange(0, max(total, 1))
        self.run_bar.setValue(min(done, max(total, 1)))
        self.run_bar.setFormat(f"{done}/{total}  %p%")
        left = self.seconds_left(done, total)
        self._rate = rate
        parts = [rate] if rate else []
        if left is not None:
            parts.append(f"{format_duration(left)} left")
        elif done >= total > 0:
            parts.append("finishing")
        self.rate_label.setText(" · ".join(parts))

    def finish(self, text: str) -> None:
        """The last rate stays; time left gives way to how the job ended."""
        self.pause()
        self.rate_label.setText(" · ".join(p for p in (self._rate, text) if p))


def _stop_orphaned(runner: JobRunner, *_args: Any) -> None:
    """The widget's C++ side is gone (its viewer closed): stop the job, without waiting in the GUI thread."""
    runner.detach()


def _collapsed(title: str, widget: QWidget) -> QCollapsible:
    section = QCollapsible(title)
    section.setDuration(0)  # no animation: it would re-lay out the dock for 300 ms
    section.addWidget(widget)
    section.collapse(animate=False)
    return section


def remote_flags(paths: list[str]) -> list[str]:
    """The CLI's remote-segment flags (--cache, --cache-size, --s3-endpoint) as this napari has them set
    (the Segments widget's cache fields), when one of ``paths`` is a URL; none otherwise."""
    import os

    from napari_vesuvius_pt.data.remote import CACHE_ENV, CACHE_SIZE_ENV, S3_ENDPOINT_ENV, is_url

    if not any(is_url(str(p)) for p in paths):
        return []
    flags = []
    for flag, env in (("--cache", CACHE_ENV), ("--cache-size", CACHE_SIZE_ENV), ("--s3-endpoint", S3_ENDPOINT_ENV)):
        if os.environ.get(env):
            flags += [flag, os.environ[env]]
    return flags


class JobWidget(QWidget):
    """Base of the Pretrain, Fine-tune, Predict and CKA dock widgets."""

    title = "Job"
    cli_name = ""  # the vesuvius-pt sub-command
    cli_hint = ""  # said under the command in its tooltip
    part_name = "epoch"  # what the first progress bar counts
    start_text = "Start"
    engine_modules: tuple[str, ...] = ()  # imported in the background when the dock opens (ui/warm_up.py)

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName(f"vesuvius-{self.title.lower().replace(' ', '-')}")
        self.runner = JobRunner(self.title, self._dispatch_event, self._dispatch_done, self._dispatch_state)
        self.config: Any = None  # the config of the current (or last) job
        self.run_dir = None
        self._epochs = 1
        self._device: str | None = None
        self._closing = False
        self.step_plot: LivePlot | None = None  # StepDone losses (see add_training_plots)
        self.epoch_plot: LivePlot | None = None  # EpochDone metrics

        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(6, 6, 6, 6)

        self.settings_box = QWidget()
        self.form = QFormLayout(self.settings_box)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.body_layout.addWidget(self.settings_box)
        # rarely changed settings (tile geometry, optimiser, storage): a collapsed section under the form
        self.advanced_box = QWidget()
        self.advanced_form = QFormLayout(self.advanced_box)
        self.advanced_form.setContentsMargins(0, 0, 0, 0)
        self.advanced_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.advanced = _collapsed("Advanced settings", self.advanced_box)
        self.body_layout.addWidget(self.advanced)

        self.start_button = QPushButton(self.start_text)
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.start_button.setToolTip("Start the job in the background; the viewer stays usable")
        self.pause_button.setToolTip("Pause after the current step; press again to resume")
        self.stop_button.setToolTip("Stop after the current step; the run writes a checkpoint first")
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.runner.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(button)
        self.body_layout.addLayout(buttons)

        self.progress = RunProgress()
        self.progress.part_label.setText(self.part_name)
        self.body_layout.addWidget(self.progress)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body_layout.addWidget(self.status)
        self.cli_line = QLineEdit()
        self.cli_line.setReadOnly(True)
        self.cli_line.setPlaceholderText("the vesuvius-pt command that repeats this job")
        cli_row = QHBoxLayout()
        cli_row.addWidget(QLabel("CLI"))
        cli_row.addWidget(self.cli_line)
        self.body_layout.addLayout(cli_row)

        self.results = QVBoxLayout()  # plots, tables: filled by the subclass
        self.body_layout.addLayout(self.results)
        self.body_layout.addStretch(1)

        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        self.setMinimumWidth(420)

        self.registry: SegmentRegistry = registry_for(napari_viewer)
        self.remembered: Remembered | None = None
        self.destroyed.connect(partial(_stop_orphaned, self.runner))
        self._show_state(IDLE)

    def add_section(self, title: str, widget: QWidget) -> QCollapsible:
        """A collapsed section holding ``widget``, under the Advanced settings (e.g. a ConfigForm)."""
        section = _collapsed(title, widget)
        self.body_layout.insertWidget(self.body_layout.indexOf(self.advanced) + 1, section)
        return section

    def finish_setup(self, remembered_fields: dict[str, Any]) -> None:
        """End of a subclass's ``__init__``: restore the fields saved at the last launch (and save every
        change from now on), and offer the segments loaded in the Segments widget."""
        self.advanced.setVisible(self.advanced_form.rowCount() > 0)
        warm_up(*self.engine_modules, PLOT_FONTS)
        self.remembered = remember(self.title, remembered_fields)
        self.registry.changed.connect(self._registry_changed)
        self._registry_changed()

    def _registry_changed(self) -> None:
        if self._closing:
            return
        self.segments_changed(self.registry)

    def data_config_for(self, paths: list[str], normalization: str) -> DataConfig:
        """How the job reads ``paths``: the z range, reverse and downsample they were loaded with in the
        Segments widget (a run reads all its segments alike), and ``normalization``."""
        entries = [e for e in (self.registry.get(p) for p in paths) if e is not None]
        if not entries:
            return DataConfig(normalization=normalization)
        ways = {(tuple(e.z_range), e.reverse, e.downsample) for e in entries}
        if len(ways) > 1:
            listing = "; ".join(f"{e.name}: layers {e.z_range[0]}-{e.z_range[1]}, reverse {e.reverse}, "
                                f"downsample {e.downsample}" for e in entries)
            raise ConfigError(f"the chosen segments were loaded with different settings ({listing}); a run reads "
                              "all its segments alike: load them with the same z range, reverse and downsample")
        z_range, reverse, downsample = ways.pop()
        return DataConfig(z_range=list(z_range), reverse=reverse, downsample=downsample, normalization=normalization)

    def add_training_plots(self, step_plot: LivePlot, epoch_plot: LivePlot) -> None:
        """Show two plots under the progress that the frame fills: ``step_plot`` with each ``StepDone``'s
        losses that are among its series (x: the step within the run), ``epoch_plot`` with each
        ``EpochDone``'s metrics that are among its series (x: the epoch). Both are cleared when a job
        starts and drawn once more when it ends."""
        self.step_plot, self.epoch_plot = step_plot, epoch_plot
        self.results.addWidget(step_plot)
        self.results.addWidget(epoch_plot)

    def _training_plots(self) -> list[LivePlot]:
        return [p for p in (self.step_plot, self.epoch_plot) if p is not None]

    # ---------------------------------------------------------------- what a subclass provides

    def build_config(self) -> Any:
        """The run config from the form; raise a VesuviusError saying what to fix."""
        raise NotImplementedError

    def make_events(self, config: Any) -> Callable[[], Iterator[Event]]:
        """A callable, run in the worker thread, that returns the engine generator."""
        raise NotImplementedError

    def cli_command(self, config: Any) -> str:
        """The run folder's own config, into a fresh folder (the CLI refuses to overwrite a run).
        Jobs without a run folder override this."""
        import shlex
        from pathlib import Path

        from napari_vesuvius_pt.ui.fields import next_free_folder

        out = Path(config.out)
        again = next_free_folder(out.with_name(out.name + "-again"))
        paths = [*(getattr(config, "segments", None) or []), *(getattr(config, "fragments", None) or [])]
        return shlex.join(["vesuvius-pt", self.cli_name, "--config", str(out / "config.yaml"), "--out", str(again),
                           *remote_flags(paths)])

    def planned_epochs(self, config: Any) -> int:
        return int(getattr(config, "epochs", 1) or 1)

    def job_starting(self, config: Any) -> None:
        """Reset plots and layers for a new job (GUI thread, before the worker starts)."""

    def handle_event(self, event: Event) -> None:
        """Turn an event into plots and layers (progress is done here in the frame)."""

    def segments_changed(self, registry: SegmentRegistry) -> None:
        """The Segments widget loaded, removed or re-roled a segment: offer it in the form."""

    def job_done(self, outcome: JobOutcome) -> None:
        """After the job ended, however it ended."""

    # ---------------------------------------------------------------- control

    def start(self) -> bool:
        """Build the config and start the job; False (with a notification) when the form is not valid."""
        if self.runner.busy:
            return False
        try:
            config = self.build_config()
        except VesuviusError as exc:
            notify_error(exc, self.title)
            self.status.setText(f"Not started: {exc}")
            return False
        self.config = config
        self.run_dir = None
        self._device = None
        self._epochs = self.planned_epochs(config)
        self.cli_line.setText(self.cli_command(config))
        self.cli_line.setToolTip(self.cli_line.text() + (f"\n\n{self.cli_hint}" if self.cli_hint else ""))
        self.cli_line.setCursorPosition(0)
        self.progress.begin()
        self.status.setText("Starting…")
        try:
            self.job_starting(config)
        except VesuviusError as exc:
            notify_error(exc, self.title)
            self.status.setText(f"Not started: {exc}")
            return False
        for plot in self._training_plots():
            plot.clear()
        self.runner.start(self.make_events(config), device=getattr(config, "device", "auto") or "auto")
        return True

    def stop(self) -> None:
        self.runner.stop()

    @property
    def worker(self):
        return self.runner.worker

    # ---------------------------------------------------------------- events (GUI thread)

    def _dispatch_state(self, state: str) -> None:
        if self._closing:
            return
        if state == PAUSED:
            self.progress.pause()
        elif state == RUNNING:
            self.progress.resume()
        self._show_state(state)

    def _show_state(self, state: str) -> None:
        self.start_button.setEnabled(state == IDLE)
        self.pause_button.setEnabled(state in (RUNNING, PAUSED))
        self.pause_button.setText("Resume" if state == PAUSED else "Pause")
        self.stop_button.setEnabled(state in (RUNNING, PAUSED))
        self.stop_button.setText("Stopping…" if state == STOPPING else "Stop")
        self.settings_box.setEnabled(state == IDLE)
        if state == PAUSED:
            self.status.setText(self._running_text() + " — paused")
        elif state == RUNNING and self.status.text().endswith(" — paused"):
            self.status.setText(self._running_text())
        elif state == STOPPING:
            self.status.setText("Stopping after the current step; the run writes its checkpoint…")

    def _running_text(self) -> str:
        text = f"Running on {self._device}" if self._device else "Running"
        if self.run_dir:
            text += f" · run folder {self.run_dir}"
        return text

    def _dispatch_event(self, event: Event) -> None:
        if isinstance(event, Started):
            self._device = event.device
            self.run_dir = event.run_dir
            self.status.setText(self._running_text())
            if event.first_epoch:
                self.status.setText(self._running_text() + f" · continuing after epoch {event.first_epoch}")
            self.cli_line.setText(self.cli_command(self.config))
            self.cli_line.setToolTip(self.cli_line.text() + (f"\n\n{self.cli_hint}" if self.cli_hint else ""))
            self.cli_line.setCursorPosition(0)
        elif isinstance(event, StepDone):
            spe = max(event.steps_per_epoch, 1)
            self.progress.show_part(f"epoch {event.epoch}/{self._epochs}", event.step, spe)
            done = (event.epoch - 1) * spe + event.step
            self.progress.show_run(done, self._epochs * spe, f"{event.samples_per_s:.1f} samples/s")
            if self.step_plot is not None:
                x = (event.epoch - 1) * event.steps_per_epoch + event.step
                for name, value in event.losses.items():
                    if name in self.step_plot.series:
                        self.step_plot.add_point(name, x, value)
        elif isinstance(event, EpochDone):
            self._epochs = max(event.epochs, 1)
            if self.epoch_plot is not None:
                for name in self.epoch_plot.series:
                    if name in event.metrics:
                        self.epoch_plot.add_point(name, event.epoch, event.metrics[name])
        elif isinstance(event, TilesDone):
            self.progress.show_part(event.name, event.done, event.total, f"{event.name}: {event.done}/{event.total}")
        self.handle_event(event)

    def _dispatch_done(self, outcome: JobOutcome) -> None:
        if self._closing:
            return
        took = format_duration(outcome.seconds)
        if outcome.status == "finished":
            where = f" · checkpoint {outcome.checkpoint}" if outcome.checkpoint else ""
            text = f"Finished in {took}" + (f" on {outcome.device}" if outcome.device else "") + where
        elif outcome.status == "stopped":
            kept = self._checkpoint_after_stop(outcome)
            text = f"Stopped after {took}; " + (f"checkpoint kept at {kept}" if kept else "no checkpoint was written yet")
        elif outcome.status == "failed":
            text = f"Failed: {outcome.message}" + (f" · last good checkpoint {outcome.checkpoint}" if outcome.checkpoint else "")
        else:
            text = f"Error: {outcome.message}"
        self.status.setText(text)
        self.progress.finish(outcome.status)
        for plot in self._training_plots():
            plot.redraw_now()
        self.job_done(outcome)

    def _checkpoint_after_stop(self, outcome: JobOutcome):
        if outcome.run_dir is not None:
            from napari_vesuvius_pt.engine.run_folder import RunFolder

            latest = RunFolder(outcome.run_dir).latest_checkpoint()
            if latest is not None:
                return latest
        return outcome.checkpoint

    # ---------------------------------------------------------------- closing

    def shutdown(self, wait: float = CLOSE_WAIT_S) -> None:
        """Stop the job (it writes its checkpoint) and wait for it, then forget this widget."""
        if self._closing:
            return
        self._closing = True
        try:
            self.registry.changed.disconnect(self._registry_changed)
        except (TypeError, ValueError, RuntimeError):
            pass
        busy = self.runner.busy
        self.runner.detach()
        if busy:
            self.runner.wait(wait)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        self.shutdown()
        super().closeEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        from napari_vesuvius_pt.ui.docks import tabify_on_show

        tabify_on_show(self)  # one tabbed panel for the plugin's docks, whatever opened them
        super().showEvent(event)

    def event(self, event) -> bool:
        # napari removes a dock widget (its close button) by taking the widget out of the dock
        runner = getattr(self, "runner", None)  # events can arrive while __init__ is still running
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and runner is not None and runner.busy:
            self.shutdown()
        return super().event(event)
