"""The comparison view: encoders' predictions over one fragment, laid out so a researcher can read them.

``show_comparison(viewer, prediction, segment, region=None, mode="overlay")`` is the one function that
lays it out (the Predict & compare widget calls it after a run, ``vesuvius-pt demo --gui`` calls it,
and so can a user from napari's console). It returns the layers it made, and docks a Comparison panel
(tabified with the other docks) with the controls:

- overlay: one prediction visible at a time over the volume (the encoder switch and slider choose which),
  the ink labels as outlines on top, and a difference map A − B on request;
- side by side: exactly one grid cell per encoder, each with the same volume, that encoder's prediction,
  the outlined labels and a title (the encoder's name and F0.5); napari's grid uses one camera for all
  cells, so they pan and zoom together; the view is zoomed to the region;
- a threshold: "binarise" shows every prediction as ink/background at it (through the layers' contrast
  limits, so it is live) and prints F0.5 / precision / recall at it;
- the table: F0.5, best threshold, precision, recall, AUC per encoder (mean ± sd over seeds), then the
  all-ink baseline and the linear z-profile baseline when the engine provides it; ROC and PR curves;
  warnings when the region holds no ink or only ink, or an encoder scores at the all-ink baseline.

Layers are recognised with ``isinstance`` against ``napari.layers`` classes, which works through the
``PublicOnlyProxy`` napari hands plugin widgets (``type(layer).__name__`` does not).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_vesuvius_pt.engine.comparison import Comparison, load_comparison
from napari_vesuvius_pt.ui.in_turns import run_in_turns, run_now
from napari_vesuvius_pt.ui.layers import find_segment_layer, is_layer, outline_labels, unwrap

Mode = Literal["overlay", "side_by_side"]
MODES = ("overlay", "side_by_side")
COMPARE_KEY = "comparison"  # layer.metadata key marking the layers this module made
CELL_LAYERS = 4  # volume, prediction, labels outline, title: napari's grid stride in side-by-side
TABLE_COLUMNS = (("f05", "F0.5"), ("threshold", "thr."), ("precision", "precision"), ("recall", "recall"),
                 ("auc", "AUC"))
PREDICTION_COLORMAP = "magma"
PREDICTION_OPACITY = 0.75
DIFFERENCE_COLORMAP = "PiYG"

_PANELS: dict[int, Any] = {}


def grid_of(viewer: Any) -> Any:
    """napari's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _title(name: str, comparison: Comparison) -> str:
    row = next(r for r in comparison.rows() if r.name == name)
    f05 = f"F0.5 {row.mean['f05']:.3f}" + (f" ± {row.sd['f05']:.3f} ({row.seeds} seeds)" if row.seeds > 1 else "")
    return f"{name}  {f05}"


def _remove_previous(viewer: Any) -> None:
    for layer in [la for la in viewer.layers if (la.metadata or {}).get(COMPARE_KEY)]:
        viewer.layers.remove(layer)


def segment_layer_data(comparison: Comparison) -> dict[str, tuple]:
    """The fragment's volume / mask / ink-label layer data (the reader's), computed once per comparison:
    the Predict widget calls it in its worker, so the contrast limits are not sampled on the GUI thread."""
    cached = getattr(comparison, "_layer_data", None)
    if cached is None:
        from napari_vesuvius_pt._reader import layers_of_segment

        cached = {kwargs["metadata"]["kind"]: (data, kwargs) for data, kwargs, _ in layers_of_segment(comparison.segment)}
        comparison._layer_data = cached
    return cached


def _prediction_layer(viewer: Any, comparison: Comparison, name: str, layer_name: str, visible: bool = True):
    p = comparison.predictions[name]
    kwargs = {k: v for k, v in p.layer_kwargs.items() if k in ("scale", "translate")}
    return viewer.add_image(p.probabilities, name=layer_name, colormap=PREDICTION_COLORMAP, contrast_limits=(0.0, 1.0),
                            opacity=PREDICTION_OPACITY, blending="translucent", visible=visible,
                            metadata={COMPARE_KEY: "prediction", "encoder": name,
                                      "prediction_path": str(comparison.store_path)}, **kwargs)


def _zoom_to_region(viewer: Any, comparison: Comparison) -> None:
    viewer.reset_view()
    bbox = comparison.region_bbox
    if bbox is None:
        return
    y0, x0, y1, x1 = bbox
    extent = np.asarray(viewer.layers.extent.world)[:, -2:]
    scene = np.maximum(extent[1] - extent[0], 1.0)
    region = np.maximum(np.array([y1 - y0, x1 - x0]), 1.0)
    scene_model = getattr(viewer, "scene", None)  # napari >= 0.9 keeps the camera there
    camera = scene_model.camera if scene_model is not None and hasattr(scene_model, "camera") else viewer.camera
    camera.zoom = float(camera.zoom * 0.9 * np.min(scene / region))
    center = list(camera.center)
    center[-2:] = [(y0 + y1) / 2, (x0 + x1) / 2]
    camera.center = tuple(center)


def _hide_others(viewer: Any) -> None:
    """Hide every layer that is not a grid cell's (by metadata: identity fails through napari's proxy)."""
    for layer in viewer.layers:
        if (layer.metadata or {}).get(COMPARE_KEY) not in ("cell", "prediction") and layer.visible:
            layer.visible = False


def show_comparison(viewer: Any, prediction: str | Path | Any, segment: Any, region: Any = None,
                    mode: Mode = "overlay", comparison: Comparison | None = None, panel: bool = True) -> list:
    """Lay out the encoders of ``prediction`` (a store or its path) over ``segment`` (a path or an opened
    Segment) inside ``region`` (a regions file, polygons, or None) and return the layers made.

    ``mode``: "overlay" (one prediction at a time over the volume) or "side_by_side" (one grid cell per
    encoder). ``panel``: dock the Comparison panel (switch, threshold, table, curves, warnings)."""
    return run_now(comparison_steps(viewer, prediction, segment, region, mode, comparison, panel)) or []


def show_comparison_in_turns(viewer: Any, prediction: str | Path | Any, segment: Any, region: Any = None,
                             mode: Mode = "overlay", comparison: Comparison | None = None, panel: bool = True,
                             done: Callable[[list], None] | None = None,
                             failed: Callable[[Exception], None] | None = None) -> Callable[[], None]:
    """``show_comparison`` one layer per turn of Qt's event loop (``ui.in_turns``), for widgets: a grid of
    four encoders adds sixteen layers, which froze the viewer for seconds in one call. ``done(layers)``
    at the end; returns ``cancel()``."""
    steps = comparison_steps(viewer, prediction, segment, region, mode, comparison, panel)
    return run_in_turns(steps, done=None if done is None else (lambda made: done(made or [])), failed=failed)


def comparison_steps(viewer: Any, prediction: str | Path | Any, segment: Any, region: Any = None,
                     mode: Mode = "overlay", comparison: Comparison | None = None,
                     panel: bool = True) -> Iterator[list]:
    """The comparison layout as steps: yields the layers made so far after each layer it adds (and once
    at the end, with the panel set); ``show_comparison`` runs them all at once."""
    from napari_vesuvius_pt.errors import ConfigError

    if mode not in MODES:
        raise ConfigError(f"unknown comparison mode {mode!r}; choose one of: {', '.join(MODES)}")
    if comparison is None:
        comparison = load_comparison(prediction, segment, region)
    _remove_previous(viewer)
    for layer in viewer.layers:  # the streaming prediction layers of a run: one prediction shows at a time
        if (layer.metadata or {}).get("prediction") or (layer.metadata or {}).get("kind") == "prediction":
            layer.visible = False
    encoders = comparison.encoders
    seg_data = segment_layer_data(comparison)
    made: list = []
    grid = grid_of(viewer)
    if mode == "overlay":
        grid.enabled = False
        seg = comparison.segment
        volume = find_segment_layer(viewer, seg.path, (seg.name,))
        if volume is None:
            data, kwargs = seg_data["volume"]
            volume = viewer.add_image(data, **{**kwargs, "name": f"{seg.name} (comparison)",
                                               "metadata": {**kwargs["metadata"], COMPARE_KEY: "volume"}})
            made.append(volume)
            yield made
        volume.visible = True
        for i, (encoder, names) in enumerate(encoders.items()):
            made.append(_prediction_layer(viewer, comparison, names[0], f"compare: {encoder}", visible=i == 0))
            yield made
        labels = find_segment_layer(viewer, seg.path, (f"{seg.name} ink labels",), kinds=("Labels",))
        if labels is None:
            data, kwargs = seg_data["inklabels"]
            labels = viewer.add_labels(data, **{**kwargs, "name": f"{seg.name} ink labels (comparison)",
                                                "metadata": {**kwargs["metadata"], COMPARE_KEY: "labels"}})
            made.append(labels)
            yield made
        labels.visible = True
        outline_labels(labels)
        viewer.layers.move(viewer.layers.index(labels), len(viewer.layers))
        viewer.reset_view()
        if comparison.region_bbox is not None:
            _zoom_to_region(viewer, comparison)
    else:
        vol_data, vol_kwargs = seg_data["volume"]
        lab_data, lab_kwargs = seg_data["inklabels"]
        y0, x0 = (comparison.region_bbox[:2] if comparison.region_bbox is not None else (0.0, 0.0))
        for cell, (encoder, names) in enumerate(encoders.items()):
            meta = {COMPARE_KEY: "cell", "cell": cell, "encoder": encoder}
            made.append(viewer.add_image(vol_data, **{**vol_kwargs, "name": f"[{encoder}] volume",
                                                      "metadata": {**vol_kwargs["metadata"], **meta}}))
            yield made
            prediction_layer = _prediction_layer(viewer, comparison, names[0], f"[{encoder}] prediction")
            prediction_layer.metadata["cell"] = cell
            made.append(prediction_layer)
            yield made
            labels = viewer.add_labels(lab_data, **{**lab_kwargs, "name": f"[{encoder}] ink labels",
                                                    "metadata": {**lab_kwargs["metadata"], **meta}})
            outline_labels(labels)
            made.append(labels)
            yield made
            made.append(viewer.add_points([[y0, x0]], name=f"[{encoder}] title", size=1, face_color="transparent",
                                          border_color="transparent", metadata=meta,
                                          text={"string": [_title(encoder, comparison)], "color": "white",
                                                "size": 14, "anchor": "upper_left", "translation": [4, 4]}))
            yield made
        # the cells' layers first, CELL_LAYERS per cell in order; everything else hidden behind them
        for index, layer in enumerate(made):
            viewer.layers.move(viewer.layers.index(layer), index)
        _hide_others(viewer)
        n = len(encoders)
        cols = int(np.ceil(np.sqrt(n)))
        grid.stride = CELL_LAYERS
        grid.shape = (int(np.ceil(n / cols)), cols)
        grid.spacing = 4
        grid.enabled = True
        yield made
        _zoom_to_region(viewer, comparison)
    if panel and getattr(viewer, "window", None) is not None:
        yield made
        comparison_panel(viewer).set_comparison(comparison, mode, made)
    yield made


def show_difference(viewer: Any, comparison: Comparison, a: str, b: str):
    """A layer of encoder ``a``'s probability minus ``b``'s (green: ``a`` says more ink), over the others."""
    name = f"difference {a} − {b}"
    for layer in [la for la in viewer.layers if (la.metadata or {}).get(COMPARE_KEY) == "difference"]:
        viewer.layers.remove(layer)
    pa = comparison.predictions[comparison.encoders[a][0]]
    diff = comparison.difference(comparison.encoders[a][0], comparison.encoders[b][0])
    kwargs = {k: v for k, v in pa.layer_kwargs.items() if k in ("scale", "translate")}
    layer = viewer.add_image(diff, name=name, colormap=DIFFERENCE_COLORMAP, contrast_limits=(-1.0, 1.0),
                             opacity=0.9, metadata={COMPARE_KEY: "difference", "a": a, "b": b}, **kwargs)
    labels = [la for la in viewer.layers if is_layer(la, "Labels") and la.visible and la.contour]
    if labels:
        viewer.layers.move(viewer.layers.index(labels[-1]), len(viewer.layers))
    return layer


def comparison_panel(viewer: Any) -> ComparisonPanel:
    """The viewer's Comparison panel, docked (tabified) on first use."""
    key = id(unwrap(viewer))
    panel = _PANELS.get(key)
    alive = panel is not None and panel() is not None
    if alive:
        try:
            panel().isVisible()
        except RuntimeError:  # its Qt object was deleted with a closed dock
            alive = False
    if not alive:
        widget = ComparisonPanel(viewer)
        viewer.window.add_dock_widget(widget, name="Comparison", area="right", tabify=True)
        _PANELS[key] = weakref.ref(widget)
        return widget
    return panel()


def _item(text: str, bold: bool = False, align_right: bool = True) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    if bold:
        font = item.font()
        font.setBold(True)
        item.setFont(font)
    return item


class ComparisonPanel(QWidget):
    """Controls of the comparison view: mode, encoder switch, threshold, difference, table, curves."""

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        from superqt import QLabeledDoubleSlider

        super().__init__(parent)
        self.setObjectName("vesuvius-comparison")
        self.viewer = viewer
        self.comparison: Comparison | None = None
        self.mode: Mode = "overlay"
        self.layers: list = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)

        row = QHBoxLayout()
        self.mode_box = QComboBox()
        self.mode_box.addItem("overlay (one at a time)", "overlay")
        self.mode_box.addItem("side by side (one cell per encoder)", "side_by_side")
        self.mode_box.setToolTip("Overlay: one encoder's prediction over the volume; side by side: napari's grid")
        self.mode_box.currentIndexChanged.connect(self._mode_changed)
        row.addWidget(QLabel("view"))
        row.addWidget(self.mode_box, 1)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.encoder_box = QComboBox()
        self.encoder_box.setToolTip("The encoder whose prediction the overlay shows")
        self.encoder_slider = QSlider(Qt.Orientation.Horizontal)
        self.encoder_slider.setToolTip("Step through the encoders")
        self.encoder_slider.setMinimum(0)
        self.encoder_box.currentIndexChanged.connect(self._show_encoder)
        self.encoder_slider.valueChanged.connect(self.encoder_box.setCurrentIndex)
        row.addWidget(QLabel("encoder"))
        row.addWidget(self.encoder_box, 2)
        row.addWidget(self.encoder_slider, 1)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.binarise = QCheckBox("binarise at")
        self.binarise.setToolTip("Show each prediction as ink (probability >= threshold) or background")
        self.threshold = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setDecimals(2)
        self.threshold.setValue(0.5)
        self.binarise.toggled.connect(self._threshold_changed)
        self.threshold.valueChanged.connect(self._threshold_changed)
        row.addWidget(self.binarise)
        row.addWidget(self.threshold, 1)
        layout.addLayout(row)
        self.at_threshold = QLabel()
        self.at_threshold.setWordWrap(True)
        self.at_threshold.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.at_threshold)

        row = QHBoxLayout()
        self.diff_a, self.diff_b = QComboBox(), QComboBox()
        self.diff_button = QPushButton("difference A − B")
        self.diff_button.setToolTip("Add a layer of A's probability minus B's (green: A sees more ink)")
        self.diff_button.clicked.connect(self.show_difference)
        row.addWidget(self.diff_a, 1)
        row.addWidget(QLabel("−"))
        row.addWidget(self.diff_b, 1)
        row.addWidget(self.diff_button)
        layout.addLayout(row)

        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb000;")
        layout.addWidget(self.warning)

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels([label for _, label in TABLE_COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setToolTip("Best F0.5 of the threshold sweep with its threshold, precision and recall, and "
                              "ROC AUC; mean ± sd over probe seeds; baselines in italics")
        layout.addWidget(self.table)

        from matplotlib.figure import Figure

        from napari_vesuvius_pt.ui.background_canvas import BackgroundCanvas

        self.figure = Figure(figsize=(4, 2.2), tight_layout=True)
        self.canvas = BackgroundCanvas(self.figure)
        self.canvas.setMinimumHeight(170)
        self.roc_ax, self.pr_ax = self.figure.subplots(1, 2)
        layout.addWidget(self.canvas)
        layout.addStretch(1)

    # ---------------------------------------------------------------- state

    @property
    def warnings(self) -> list[str]:
        return self.comparison.warnings() if self.comparison is not None else []

    def set_comparison(self, comparison: Comparison, mode: Mode, layers: list) -> None:
        self.comparison, self.mode, self.layers = comparison, mode, layers
        encoders = list(comparison.encoders)
        for box in (self.encoder_box, self.diff_a, self.diff_b, self.mode_box):
            box.blockSignals(True)
        self.encoder_box.clear()
        self.encoder_box.addItems(encoders)
        self.encoder_slider.setMaximum(max(0, len(encoders) - 1))
        self.diff_a.clear()
        self.diff_a.addItems(encoders)
        self.diff_b.clear()
        self.diff_b.addItems(encoders)
        self.diff_b.setCurrentIndex(min(1, len(encoders) - 1))
        self.mode_box.setCurrentIndex(MODES.index(mode))
        for box in (self.encoder_box, self.diff_a, self.diff_b, self.mode_box):
            box.blockSignals(False)
        overlay = mode == "overlay"
        for w in (self.encoder_box, self.encoder_slider):
            w.setEnabled(overlay and len(encoders) > 1)
        self.diff_button.setEnabled(len(encoders) > 1)
        self.fill_table()
        self.warning.setText("\n".join(f"⚠ {w}" for w in self.warnings))
        self.warning.setVisible(bool(self.warnings))
        self.plot_curves()
        self._threshold_changed()

    def rows(self) -> dict[str, dict[str, str]]:
        """The table as {row name: {column: text}} (what the user reads)."""
        out = {}
        for r in range(self.table.rowCount()):
            name = self.table.verticalHeaderItem(r).text()
            out[name] = {label: self.table.item(r, c).text() for c, (_, label) in enumerate(TABLE_COLUMNS)}
        return out

    def fill_table(self) -> None:
        rows = self.comparison.rows()
        self.table.setRowCount(len(rows))
        self.table.setVerticalHeaderLabels([r.name + (" (baseline)" if r.baseline else "") for r in rows])
        encoders = [r for r in rows if not r.baseline]
        best = max(encoders, key=lambda r: r.mean["f05"]).name if encoders else None
        for i, r in enumerate(rows):
            for c, (key, _) in enumerate(TABLE_COLUMNS):
                digits = 2 if key == "threshold" else 3
                text = f"{r.mean[key]:.{digits}f}"
                if r.seeds > 1:
                    text += f" ± {r.sd[key]:.{digits}f}"
                if r.baseline and key == "threshold":
                    text = "–"
                item = _item(text, bold=r.name == best)
                if r.baseline:
                    font = item.font()
                    font.setItalic(True)
                    item.setFont(font)
                self.table.setItem(i, c, item)
        self.table.resizeRowsToContents()
        header = self.table.horizontalHeader().height()
        self.table.setFixedHeight(header + sum(self.table.rowHeight(i) for i in range(len(rows))) + 6)

    def plot_curves(self) -> None:
        """ROC and PR curves per encoder, computed and drawn off the GUI thread (``canvas.wait_drawn()``)."""
        comparison = self.comparison
        self.canvas.change(lambda _figure: self._draw_curves(comparison))

    def _draw_curves(self, c: Comparison) -> None:
        self.roc_ax.clear()
        self.pr_ax.clear()
        for encoder, names in c.encoders.items():
            curve = c.curves(names[0])
            self.roc_ax.plot(curve["fpr"], curve["tpr"], label=encoder, lw=1.2)
            self.pr_ax.plot(curve["recall"], curve["precision"], label=encoder, lw=1.2)
        self.roc_ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        self.pr_ax.axhline(c.prevalence, color="0.6", lw=0.8, ls="--", label="all ink")
        self.roc_ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
        self.pr_ax.set(title="precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        for ax in (self.roc_ax, self.pr_ax):
            ax.title.set_fontsize(9)
            ax.xaxis.label.set_fontsize(8)
            ax.yaxis.label.set_fontsize(8)
            ax.tick_params(labelsize=7)
        self.pr_ax.legend(fontsize=7, loc="upper right")

    # ---------------------------------------------------------------- controls

    def prediction_layers(self) -> list:
        return [la for la in self.layers if (la.metadata or {}).get(COMPARE_KEY) == "prediction"]

    def _show_encoder(self, index: int) -> None:
        if self.mode != "overlay":
            return
        self.encoder_slider.blockSignals(True)
        self.encoder_slider.setValue(index)
        self.encoder_slider.blockSignals(False)
        name = self.encoder_box.itemText(index)
        for layer in self.prediction_layers():
            layer.visible = layer.name == f"compare: {name}"

    def _mode_changed(self, index: int) -> None:
        if self.comparison is None:
            return
        mode = self.mode_box.itemData(index)
        if mode != self.mode:
            show_comparison(self.viewer, self.comparison.store_path, self.comparison.segment,
                            mode=mode, comparison=self.comparison)

    def _threshold_changed(self, *_args) -> None:
        if self.comparison is None:
            return
        t = float(self.threshold.value())
        on = self.binarise.isChecked()
        for layer in self.prediction_layers():
            layer.contrast_limits = (max(0.0, t - 0.002), max(t, 0.002)) if on else (0.0, 1.0)
        scores = self.comparison.at_threshold(t)
        lines = []
        for encoder, names in self.comparison.encoders.items():
            vals = np.array([[scores[n]["f05"], scores[n]["precision"], scores[n]["recall"]] for n in names])
            f, p, r = vals.mean(0)
            lines.append(f"<b>{encoder}</b>: F0.5 {f:.3f} · precision {p:.3f} · recall {r:.3f}")
        self.at_threshold.setText(f"at threshold {t:.2f}:<br>" + "<br>".join(lines))

    def show_difference(self) -> Any:
        if self.comparison is None:
            return None
        a, b = self.diff_a.currentText(), self.diff_b.currentText()
        if a == b:
            from napari_vesuvius_pt.ui.notify import notify_info

            notify_info("choose two different encoders for A − B")
            return None
        layer = show_difference(self.viewer, self.comparison, a, b)
        self.layers.append(layer)
        return layer

    def scores_at_threshold(self) -> dict[str, dict[str, float]]:
        return self.comparison.at_threshold(float(self.threshold.value())) if self.comparison else {}


def is_comparison_layer(layer: Any) -> bool:
    return bool((layer.metadata or {}).get(COMPARE_KEY))
