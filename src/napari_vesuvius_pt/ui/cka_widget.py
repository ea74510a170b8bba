"""CKA dock widget: is pretraining still changing the representation?

Linear and RBF CKA between the epochs of a pretraining run (or any checkpoints) on a fixed probe set of
tiles from a segment, shown as two heatmaps. With "follow the run", a timer watches the run's
checkpoints folder and adds each new epoch (the engine caches features, so that costs one row).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from napari_vesuvius_pt.analysis.cka_io import write_matrix_csv
from napari_vesuvius_pt.config import CKA_LAYERS, DEFAULT_RUNS_DIR, CKAConfig
from napari_vesuvius_pt.engine.events import Event, MatrixUpdated, Started
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.ui.device_choice import DeviceChoice
from napari_vesuvius_pt.ui.fields import FILE_OR_FOLDER, FOLDER, PathField, PathList, combo, hrow, spin
from napari_vesuvius_pt.ui.job_panel import JobWidget
from napari_vesuvius_pt.ui.notify import notify_error, notify_info
from napari_vesuvius_pt.ui.plots import HeatmapPair
from napari_vesuvius_pt.ui.segment_registry import PRETRAIN

MIN_TILES = 4
DEFAULT_OUT = DEFAULT_RUNS_DIR / "cka"
POLL_MS = 10_000


class CKAWidget(JobWidget):
    title = "CKA"
    cli_name = "cka"
    engine_modules = ("napari_vesuvius_pt.engine.cka_run",)
    start_text = "Compute"
    part_name = "features"
    cli_hint = "Features are cached in the output folder: running it again after a new epoch adds one row."

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        d = CKAConfig()
        self.run = PathField(FOLDER, "pretraining run folder", title="Pretraining run")
        self.run.setToolTip("Every checkpoints/epoch_NNN.pt of the run is compared with every other")
        self.checkpoints = PathList(FILE_OR_FOLDER, title="Add a checkpoint, run folder or weights file")
        self.checkpoints.setToolTip("More sources: checkpoint files, other run folders")
        self.random_reference = QCheckBox("add a random encoder as a reference")
        self.random_reference.setChecked(True)  # a reference row and column: how far is "changed" from random?
        self.random_reference.setToolTip("A randomly initialized encoder of the run's architecture: CKA of trained "
                                         "epochs against it says how much of their similarity any encoder has")
        self.segment = PathField(FILE_OR_FOLDER, "segment the probe tiles come from", title="Segment",
                                 suggestions=True)
        self.tiles = spin(MIN_TILES, 100_000, d.tiles, "Probe tiles (same positions for every checkpoint)")
        self.layer = combo(CKA_LAYERS, d.layer, "pooled embedding, or a stage's feature map pooled to 1×2×2")
        self.debiased = QCheckBox("debiased")
        self.debiased.setToolTip("The unbiased (U-statistic) estimator; the biased one drifts toward 1 when "
                                 "features outnumber probe tiles")
        self.device = DeviceChoice()
        self.out = PathField(FOLDER, "RUN/cka (keeps the feature cache in the run)", title="CKA output folder")
        self.follow = QCheckBox("follow the run: add each new epoch")
        self.follow.setToolTip("Checks the run's checkpoints folder every few seconds and computes the new rows")

        f = self.form
        f.addRow("run", self.run)
        f.addRow("or checkpoints", self.checkpoints)
        f.addRow("", self.random_reference)
        f.addRow("segment", self.segment)
        f.addRow("probe tiles", hrow(self.tiles, "layer", self.layer))
        f.addRow("", self.debiased)
        f.addRow("device", self.device)
        f.addRow("output", self.out)
        f.addRow("", self.follow)

        self.setMinimumWidth(600)  # two heatmaps side by side need the room
        self.heatmaps = HeatmapPair()
        self.export_png = QPushButton("Export PNG…")
        self.export_csv = QPushButton("Export CSV…")
        self.export_png.clicked.connect(lambda: self._export(png=True))
        self.export_csv.clicked.connect(lambda: self._export(png=False))
        exports = QHBoxLayout()
        exports.addWidget(self.export_png)
        exports.addWidget(self.export_csv)
        self.results.addWidget(self.heatmaps)
        self.results.addLayout(exports)
        self._show_exports()

        self._seen_epochs = -1
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll_run)
        self.follow.toggled.connect(lambda on: self.timer.start() if on else self.timer.stop())
        self.finish_setup({
            "run": self.run, "random_reference": self.random_reference, "tiles": self.tiles, "layer": self.layer,
            "debiased": self.debiased, "device": self.device,
        })

    # ---------------------------------------------------------------- form

    def segments_changed(self, registry) -> None:
        entries = sorted(registry, key=lambda e: e.role != PRETRAIN)
        self.segment.set_suggestions((str(e.path), e.label) for e in entries)
        if entries and not self.segment.text():
            self.segment.set_text(str(entries[0].path))

    def _show_exports(self) -> None:
        has = bool(self.heatmaps.names)
        self.export_png.setEnabled(has)
        self.export_csv.setEnabled(has)

    # ---------------------------------------------------------------- config

    def build_config(self) -> CKAConfig:
        sources = []
        run = self.run.text()
        if run:
            if not Path(run).is_dir():
                raise ConfigError(f"pretraining run folder not found: {run}")
            sources.append(run)
        for path in self.checkpoints.paths():
            if not Path(path).exists():
                raise ConfigError(f"checkpoint not found: {path}; check the path")
            sources.append(path)
        if not sources:
            raise ConfigError("nothing to compare: choose a pretraining run folder or add checkpoints")
        if self.random_reference.isChecked():
            sources.append("random")
        segment = self.segment.text()
        if not segment:
            raise ConfigError("no segment chosen: the probe tiles come from a segment; choose one")
        if not Path(segment).exists():
            raise ConfigError(f"segment not found: {segment}; check the path")
        out = self.out.text() or str(Path(run) / "cka" if run else DEFAULT_OUT)
        return CKAConfig(sources=sources, segment=segment, out=out, tiles=self.tiles.value(),
                         layer=self.layer.currentData(), debiased=self.debiased.isChecked(),
                         device=self.device.value())

    def make_events(self, config: CKAConfig) -> Callable[[], Iterator[Event]]:
        def run() -> Iterator[Event]:
            from napari_vesuvius_pt.engine.cka_run import cka

            return cka(config)

        return run

    def planned_epochs(self, config: CKAConfig) -> int:
        return 1

    def cli_command(self, config: CKAConfig) -> str:
        args = ["vesuvius-pt", "cka", *config.sources, "--segment", config.segment, "--out", config.out,
                "--tiles", str(config.tiles), "--layer", config.layer, "--device", config.device]
        if config.debiased:
            args.append("--debiased")
        return shlex.join(args)

    # ---------------------------------------------------------------- events

    def job_starting(self, config: CKAConfig) -> None:
        self._total = 1
        if self.run.text():
            from napari_vesuvius_pt.engine.run_folder import RunFolder

            self._seen_epochs = len(RunFolder(self.run.text()).epoch_checkpoints())

    def handle_event(self, event: Event) -> None:
        if isinstance(event, Started):
            self._total = int(event.total_steps or 1)
        elif isinstance(event, MatrixUpdated):
            title = f"CKA at {self.config.layer}, {self.config.tiles} probe tiles" + (
                ", debiased" if self.config.debiased else "")
            self.heatmaps.show_matrices(event.names, event.linear, event.rbf, title=title)
            self.progress.show_run(len(event.names), max(self._total, len(event.names)), "checkpoints")
            self._show_exports()

    # ---------------------------------------------------------------- follow a running pretraining

    def poll_run(self) -> bool:
        """Start a CKA job when the run folder holds an epoch not in the matrix yet; True if started."""
        run = self.run.text()
        if not self.follow.isChecked() or not run or self.runner.busy or not Path(run).is_dir():
            return False
        from napari_vesuvius_pt.engine.run_folder import RunFolder

        epochs = len(RunFolder(run).epoch_checkpoints())
        if epochs == 0 or epochs == self._seen_epochs:
            return False
        return self.start()

    # ---------------------------------------------------------------- export

    def export(self, png: str | Path | None = None, csv_stem: str | Path | None = None) -> list[Path]:
        """Write the shown matrices: a PNG of the two heatmaps, and ``STEM_linear.csv`` / ``STEM_rbf.csv``."""
        if not self.heatmaps.names:
            raise ConfigError("no CKA matrix yet: press Compute first")
        written = []
        if png:
            self.heatmaps.save_png(png)
            written.append(Path(png))
        if csv_stem:
            stem = Path(csv_stem)
            stem = stem.with_suffix("") if stem.suffix.lower() == ".csv" else stem
            for kind, matrix in (("linear", self.heatmaps.linear), ("rbf", self.heatmaps.rbf)):
                written.append(write_matrix_csv(stem.with_name(f"{stem.name}_{kind}.csv"), self.heatmaps.names, matrix))
        return written

    def _export(self, png: bool) -> None:
        start = str(Path(self.config.out if self.config else DEFAULT_OUT) / ("cka.png" if png else "cka.csv"))
        if png:
            path = QFileDialog.getSaveFileName(self, "Export the heatmaps", start, "PNG (*.png)")[0]
        else:
            path = QFileDialog.getSaveFileName(self, "Export the matrices (…_linear.csv, …_rbf.csv)", start, "CSV (*.csv)")[0]
        if not path:
            return
        try:
            written = self.export(png=path if png else None, csv_stem=None if png else path)
        except (ConfigError, OSError) as exc:
            notify_error(exc, self.title)
            return
        notify_info("wrote " + ", ".join(str(p) for p in written), self.title)

    def shutdown(self, wait: float | None = None) -> None:
        self.timer.stop()
        super().shutdown() if wait is None else super().shutdown(wait)
