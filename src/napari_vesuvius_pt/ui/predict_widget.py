"""Predict & compare dock widget: tiled inference of one or more checkpoints over a segment, in the
background, with one layer per encoder, the ink labels, and a table of F0.5 / precision / recall / AUC.

Prediction layers read the zarr output as it is written, so a stopped prediction shows what was done.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QCheckBox,
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_vesuvius_pt.config import (
    DEFAULT_RUNS_DIR,
    PREDICT_DIRECTIONS,
    PREDICT_DTYPES,
    PREDICT_FORMATS,
    WEIGHTINGS,
    PredictConfig,
)
from napari_vesuvius_pt.engine.comparison import Comparison
from napari_vesuvius_pt.engine.evaluation import predict_and_evaluate
from napari_vesuvius_pt.engine.events import Event, LabelsReady, MetricsReady, Started, TilesDone
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.ui.device_choice import DeviceChoice
from napari_vesuvius_pt.ui.fields import FILE, FILE_OR_FOLDER, FOLDER, PathField, PathList, combo, hrow, spin
from napari_vesuvius_pt.ui.job_panel import JobWidget, remote_flags
from napari_vesuvius_pt.ui.layers import is_layer, outline_labels
from napari_vesuvius_pt.ui.segment_registry import TRAIN, VALIDATION

DEFAULT_OUT = DEFAULT_RUNS_DIR / "predictions"
WHOLE, LAYER_PREFIX, FROM_FILE = "whole", "layer:", "file"
METRIC_COLUMNS = (("f05", "F0.5"), ("threshold", "thr."), ("precision", "precision"), ("recall", "recall"), ("auc", "AUC"))
REFRESH_S = 0.5  # at most this often, prediction layers re-read the zarr while tiles stream in


class PredictWidget(JobWidget):
    title = "Predict & compare"
    cli_name = "predict"
    start_text = "Predict"
    part_name = "encoder"
    cli_hint = "Predicts into the same zarr (finished bands are kept and skipped), then scores each encoder."

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        d = PredictConfig()
        self.segment = PathField(FILE_OR_FOLDER, "segment or fragment", title="Segment", suggestions=True)
        self.region = combo([WHOLE], tip="Predict inside the segment's mask, or only inside drawn regions")
        self.region.setItemText(0, "whole segment (inside its mask)")
        self.region_file = PathField(FILE, "regions JSON or napari Shapes CSV", "Regions (*.json *.csv)", "Regions")
        self.checkpoints = PathList(FILE_OR_FOLDER, title="Add a fine-tuned checkpoint or run")
        self.checkpoints.setToolTip("Fine-tuned run folders or checkpoints: one prediction layer each, named after it")
        self.out = PathField(FOLDER, "PRED.zarr", title="Prediction output (zarr)")
        self.edge = spin(0, 256, d.edge, "Pixels dropped at each side of a tile's prediction")
        self.stride = spin(0, 1024, 0, "Tile stride; 0 = tile size - 2 × edge (kept centres tile the plane)")
        self.stride.setSpecialValueText("auto")
        self.batch_size = spin(1, 4096, d.batch_size)
        self.weighting = combo(WEIGHTINGS, d.weighting, "How overlapping tile centres are blended")
        self.dtype = combo(PREDICT_DTYPES, d.dtype, "Stored as float16 probabilities or uint8 × 255")
        self.full_resolution = QCheckBox("write at full resolution")
        self.full_resolution.setChecked(d.full_resolution)
        self.direction = combo(PREDICT_DIRECTIONS, d.direction,
                               "Depth direction: as trained, flipped, or both (each and their mean)")
        self.out_format = combo(PREDICT_FORMATS, d.format, "OME-Zarr, or also a tiled BigTIFF per array beside it")
        self.skip_empty = QCheckBox("score only tiles with ink")
        self.tta = QCheckBox("test-time augmentation (8 flips and rotations, 8× the compute)")
        self.tta.setChecked(d.tta)
        self.tta.setToolTip("Each tile's prediction is the mean over its 8 flips and 90° rotations (predict --tta)")
        self.device = DeviceChoice()
        self.side_by_side = QCheckBox("side by side (one grid cell per encoder)")
        self.side_by_side.toggled.connect(self.set_side_by_side)

        f = self.form
        f.addRow("segment", self.segment)
        f.addRow("region", self.region)
        f.addRow("regions file", self.region_file)
        f.addRow("checkpoints", self.checkpoints)
        f.addRow("output", self.out)
        f.addRow("", self.tta)
        f.addRow("", self.skip_empty)
        f.addRow("device", self.device)
        a = self.advanced_form
        a.addRow("edge", hrow(self.edge, "stride", self.stride))
        a.addRow("batch", hrow(self.batch_size, "blend", self.weighting))
        a.addRow("store as", self.dtype)
        a.addRow("", self.full_resolution)
        a.addRow("direction", self.direction)
        a.addRow("format", self.out_format)

        self.table = QTableWidget(0, len(METRIC_COLUMNS))
        self.table.setHorizontalHeaderLabels([label for _, label in METRIC_COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)
        self.table.setToolTip("Scores of each encoder's prediction against the ink labels (engine.evaluation.evaluate)")
        self.results.addWidget(self.side_by_side)
        self.results.addWidget(self.table)

        self.prediction_layers: dict[str, Any] = {}
        self.labels_layer = None
        self.comparison = None  # engine.comparison.Comparison of the last finished run
        self.comparison_layers: list | None = None  # the comparison view's layers, once laid out
        self._cancel_layout = None  # stops a comparison layout still in progress
        self._last_refresh = 0.0
        self.region.currentIndexChanged.connect(self._show_region_file)
        self.segment.changed.connect(self._suggest_out)
        self.viewer.layers.events.inserted.connect(self._refresh_regions)
        self.viewer.layers.events.removed.connect(self._refresh_regions)
        self._refresh_regions()
        self.finish_setup({
            "edge": self.edge, "stride": self.stride, "batch_size": self.batch_size, "weighting": self.weighting,
            "dtype": self.dtype, "full_resolution": self.full_resolution, "skip_empty": self.skip_empty,
            "direction": self.direction, "out_format": self.out_format, "tta": self.tta,
            "device": self.device,
        })

    def segments_changed(self, registry) -> None:
        # labeled fragments first: those are the ones predictions can be scored on
        order = {VALIDATION: 0, TRAIN: 1}
        entries = sorted(registry, key=lambda e: order.get(e.role, 2))
        self.segment.set_suggestions((str(e.path), e.label) for e in entries)
        if entries and not self.segment.text():
            self.segment.set_text(str(entries[0].path))

    # ---------------------------------------------------------------- form

    def _refresh_regions(self, *_args) -> None:
        if self._closing:
            return
        current = self.region.currentData()
        self.region.blockSignals(True)
        while self.region.count() > 1:
            self.region.removeItem(1)
        for layer in self.viewer.layers:
            if is_layer(layer, "Shapes"):
                self.region.addItem(f"Shapes layer '{layer.name}'", LAYER_PREFIX + layer.name)
        self.region.addItem("regions file", FROM_FILE)
        self.region.setCurrentIndex(max(0, self.region.findData(current)))
        self.region.blockSignals(False)
        self._show_region_file()

    def _show_region_file(self) -> None:
        visible = self.region.currentData() == FROM_FILE
        self.region_file.setVisible(visible)
        label = self.form.labelForField(self.region_file)
        if label is not None:
            label.setVisible(visible)

    def _suggest_out(self, segment: str) -> None:
        if segment and not self.out.text():
            self.out.set_text(str(DEFAULT_OUT / f"{Path(segment).name or 'segment'}.zarr"))

    def grid(self):
        """napari's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
        canvas = getattr(self.viewer, "canvas", None)
        return canvas.grid if canvas is not None and hasattr(canvas, "grid") else self.viewer.grid

    def set_side_by_side(self, on: bool) -> None:
        """The comparison view's grid (one titled cell per encoder) or its overlay, once a run has scores;
        before that, napari's grid as it is."""
        if self.side_by_side.isChecked() != bool(on):
            self.side_by_side.setChecked(bool(on))
            return
        if getattr(self, "comparison", None) is not None:
            self.show_comparison()
        else:
            self.grid().enabled = bool(on)

    def show_comparison(self) -> None:
        """Lay the scored predictions out with ``ui.compare`` (overlay or side by side), one layer per turn
        of the event loop so the viewer keeps responding; ``comparison_layers`` holds the layers when done."""
        from napari_vesuvius_pt.ui.compare import show_comparison_in_turns
        from napari_vesuvius_pt.ui.notify import notify_error

        if self._cancel_layout is not None:
            self._cancel_layout()
        self.comparison_layers = None
        mode = "side_by_side" if self.side_by_side.isChecked() else "overlay"

        def done(layers: list) -> None:
            self.comparison_layers = layers
            self._cancel_layout = None

        self._cancel_layout = show_comparison_in_turns(
            self.viewer, self.config.out, self.config.segment, region=self.config.region, mode=mode,
            comparison=self.comparison, done=done,
            failed=lambda exc: notify_error(exc, "Predict & compare: comparison view"))

    def _region_polygons(self) -> list[np.ndarray] | None:
        source = self.region.currentData() or WHOLE
        if not source.startswith(LAYER_PREFIX):
            return None
        name = source[len(LAYER_PREFIX):]
        if name not in self.viewer.layers:
            raise ConfigError(f"the Shapes layer {name!r} is gone; choose another region")
        layer = self.viewer.layers[name]
        scale = np.asarray(layer.scale[-2:], dtype=float)
        translate = np.asarray(layer.translate[-2:], dtype=float)
        polygons = [np.asarray(s, dtype=float)[:, -2:] * scale + translate for s in layer.data]
        if not polygons:
            raise ConfigError(f"the Shapes layer {name!r} holds no shapes; draw a rectangle or polygon on it")
        return polygons

    # ---------------------------------------------------------------- config

    def build_config(self) -> PredictConfig:
        segment = self.segment.text()
        if not segment:
            raise ConfigError("no segment chosen: choose the segment or fragment to predict on")
        if not Path(segment).exists():
            raise ConfigError(f"segment not found: {segment}; check the path")
        checkpoints = self.checkpoints.paths()
        if not checkpoints:
            raise ConfigError("no checkpoint chosen: add one or more fine-tuned run folders or checkpoints")
        for ckpt in checkpoints:
            if not Path(ckpt).exists():
                raise ConfigError(f"checkpoint not found: {ckpt}; check the path")
        out = self.out.text() or str(DEFAULT_OUT / f"{Path(segment).name}.zarr")
        region = None
        source = self.region.currentData() or WHOLE
        if source == FROM_FILE:
            region = self.region_file.text()
            if not region or not Path(region).is_file():
                raise ConfigError(f"regions file not found: {region or '(none given)'}")
        elif source.startswith(LAYER_PREFIX):
            self._region_polygons()  # validate now; written beside the output when the job starts
            out_path = Path(out)
            region = str(out_path.with_name(out_path.stem + "_region.json"))
        return PredictConfig(
            checkpoints=checkpoints,
            segment=segment,
            out=out,
            region=region,
            stride=self.stride.value() or None,
            edge=self.edge.value(),
            weighting=self.weighting.currentData(),
            batch_size=self.batch_size.value(),
            device=self.device.value(),
            dtype=self.dtype.currentData(),
            full_resolution=self.full_resolution.isChecked(),
            direction=self.direction.currentData(),
            format=self.out_format.currentData(),
            tta=self.tta.isChecked(),
        )

    def make_events(self, config: PredictConfig) -> Callable[[], Iterator[Event]]:
        skip_empty = self.skip_empty.isChecked()

        def events() -> Iterator[Any]:
            from napari_vesuvius_pt.engine.comparison import load_comparison

            scored = False
            for event in predict_and_evaluate(config, skip_empty):
                scored = scored or (isinstance(event, MetricsReady) and bool(event.metrics))
                yield event
            if scored:  # read the arrays, fit the baselines and sample the display range here, in the worker
                from napari_vesuvius_pt.ui.compare import segment_layer_data

                comparison = load_comparison(config.out, config.segment, config.region)
                segment_layer_data(comparison)
                yield comparison

        return events

    def planned_epochs(self, config: PredictConfig) -> int:
        return 1

    def cli_command(self, config: PredictConfig) -> str:
        args = ["vesuvius-pt", "predict"]
        for ckpt in config.checkpoints:
            args += ["--checkpoint", ckpt]
        args += ["--segment", config.segment, "--out", config.out]
        args += remote_flags([config.segment])
        if config.region:
            args += ["--region", config.region]
        if config.stride:
            args += ["--stride", str(config.stride)]
        args += ["--edge", str(config.edge), "--batch-size", str(config.batch_size), "--weighting", config.weighting,
                 "--dtype", config.dtype, "--device", config.device]
        args.append("--full-resolution" if config.full_resolution else "--no-full-resolution")
        if config.direction != "forward":
            args += ["--direction", config.direction]
        if config.format != "ome-zarr":
            args += ["--format", config.format]
        if config.tta:
            args.append("--tta")
        evaluate = ["vesuvius-pt", "evaluate", "--prediction", config.out, "--segment", config.segment]
        if config.region:
            evaluate += ["--region", config.region]
        if self.skip_empty.isChecked():
            evaluate.append("--skip-empty")
        return shlex.join(args) + " && " + shlex.join(evaluate)

    # ---------------------------------------------------------------- events

    def job_starting(self, config: PredictConfig) -> None:
        polygons = self._region_polygons()
        if polygons is not None:
            from napari_vesuvius_pt.data.tiles import save_regions

            Path(config.region).parent.mkdir(parents=True, exist_ok=True)
            save_regions(config.region, polygons, fragment=self.registry.name_of(config.segment),
                         fragment_path=config.segment)
        self.table.setRowCount(0)
        if self._cancel_layout is not None:
            self._cancel_layout()
            self._cancel_layout = None
        self.comparison = None
        self.comparison_layers = None
        self.prediction_layers = {}  # re-opened from this job's store at its first tiles
        self._run_total = 0
        self._names_done: dict[str, int] = {}
        self._note = ""

    def handle_event(self, event: Event) -> None:
        if isinstance(event, LabelsReady):
            self.show_labels(event)
        elif isinstance(event, Started):
            self._run_total = int(event.total_steps or 0)
        elif isinstance(event, TilesDone):
            self._names_done[event.name] = event.done
            done = sum(self._names_done.values())
            rate = f"{event.tiles_per_s:.1f} tiles/s" if event.tiles_per_s else ""
            self.progress.show_run(done, max(self._run_total, done), rate)
            self.show_prediction(event.name)
        elif isinstance(event, MetricsReady):
            self.show_metrics(event.metrics)
            self._note = event.note
        elif isinstance(event, Comparison):
            self.comparison = event

    def show_labels(self, event: LabelsReady) -> None:
        name = f"{event.name} ink labels"  # the reader's and the Segments widget's name for them
        if name in self.viewer.layers:
            self.labels_layer = self.viewer.layers[name]  # already shown, placed by whoever loaded it
        else:
            from napari_vesuvius_pt._reader import INK_COLOR

            self.labels_layer = self.viewer.add_labels(event.labels, name=name, opacity=0.8,
                                                       colormap=["transparent", INK_COLOR])
        outline_labels(self.labels_layer)
        layers = self.viewer.layers
        layers.move(layers.index(self.labels_layer), len(layers))  # outlines over the predictions

    def show_prediction(self, name: str, force: bool = False) -> None:
        """Add the encoder's layer reading the zarr array, or refresh it (throttled) as bands are written."""
        from napari_vesuvius_pt.engine.prediction_store import open_prediction

        layer = self.prediction_layers.get(name)
        if layer is not None and layer in self.viewer.layers:
            now = time.monotonic()
            if force or now - self._last_refresh > REFRESH_S:
                self._last_refresh = now
                layer.refresh()
            return
        store = open_prediction(self.config.out)
        kwargs = store.layer_kwargs(name)
        data = store.array(name)
        if name in self.viewer.layers and self.viewer.layers[name].metadata.get("prediction") is not None:
            layer = self.viewer.layers[name]  # the same encoder predicted again: show the new store
            layer.data = data
            layer.scale = kwargs["scale"]
            layer.translate = kwargs["translate"]
        else:
            layer = self.viewer.add_image(data, colormap="magma", opacity=0.6, blending="additive", **kwargs)
        layer.metadata["prediction"] = str(Path(self.config.out) / name)
        self.prediction_layers[name] = layer
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            layers = self.viewer.layers
            layers.move(layers.index(self.labels_layer), len(layers))  # label outlines stay on top

    def show_metrics(self, metrics: dict[str, Any]) -> None:
        self.table.setRowCount(len(metrics))
        self.table.setVerticalHeaderLabels(list(metrics))
        best = max(metrics, key=lambda n: metrics[n].f05) if metrics else None
        for row, (name, m) in enumerate(metrics.items()):
            for col, (key, _) in enumerate(METRIC_COLUMNS):
                value = float(getattr(m, key))
                item = QTableWidgetItem(f"{value:.3f}" if key != "threshold" else f"{value:.2f}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if name == best:
                    font = QFont()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, col, item)
        self.table.resizeRowsToContents()

    def metrics_rows(self) -> dict[str, dict[str, float]]:
        """The table as {encoder: {column: value}} (what the user reads)."""
        out = {}
        for row in range(self.table.rowCount()):
            name = self.table.verticalHeaderItem(row).text()
            out[name] = {label: float(self.table.item(row, col).text()) for col, (_, label) in enumerate(METRIC_COLUMNS)}
        return out

    def shutdown(self, wait: float | None = None) -> None:
        if self._cancel_layout is not None:
            self._cancel_layout()
            self._cancel_layout = None
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                emitter.disconnect(self._refresh_regions)
            except (TypeError, ValueError, RuntimeError):
                pass
        super().shutdown() if wait is None else super().shutdown(wait)

    def job_done(self, outcome) -> None:
        for name in list(self.prediction_layers):
            self.show_prediction(name, force=True)
        if outcome.status == "finished" and self._note:
            self.status.setText(f"{self.status.text()} · {self._note}")
        if outcome.status == "finished" and self.comparison is not None:
            from napari_vesuvius_pt.ui.notify import reporting_errors

            with reporting_errors("Predict & compare: comparison view"):
                self.show_comparison()
        if outcome.status == "stopped":
            self.status.setText(
                f"Stopped; the layers show the bands written so far. Predict again with the same settings to "
                f"resume ({self.config.out}).")
