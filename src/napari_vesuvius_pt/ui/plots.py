"""Matplotlib canvases for the dock widgets: live training curves and the CKA heatmap pair.

Redraws are throttled: points are appended as events arrive (many per second on a GPU), and the canvas
is drawn at most every ``min_interval_ms`` by a single-shot timer. The figures are laid out and rendered
off the GUI thread (``ui.background_canvas``): the GUI thread only records points and paints images.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from napari_vesuvius_pt.ui.background_canvas import BackgroundCanvas

# napari's dark theme, so the plots do not glare out of the dock
BACKGROUND = "#262930"
FOREGROUND = "#d1d2d4"
GRID = "#414851"
COLORS = ("#5fb3ff", "#ffb347", "#7bd88f", "#ff6b81", "#c39bff", "#f4e285")


@dataclass
class Panel:
    """One axes of a LivePlot: its series, and series drawn on a right-hand axis with their own scale."""

    title: str
    series: Sequence[str]
    ylabel: str = ""
    log: bool = False
    secondary: Sequence[str] = field(default_factory=tuple)
    secondary_label: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # legend text for a series, when not its name


def _style_axes(ax) -> None:
    ax.set_facecolor(BACKGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=7)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.grid(True, color=GRID, linewidth=0.5)
    ax.title.set_color(FOREGROUND)
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)


class LivePlot(QWidget):
    """Stacked panels of curves that grow as points arrive: ``add_point(series, x, y)``."""

    def __init__(
        self,
        panels: Sequence[Panel],
        xlabel: str = "step",
        height_per_panel: float = 1.6,
        min_interval_ms: int = 250,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._panels = list(panels)
        self.figure = Figure(figsize=(3.6, height_per_panel * len(self._panels)), facecolor=BACKGROUND,
                             layout="constrained")
        self.canvas = BackgroundCanvas(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(int(95 * height_per_panel * len(self._panels)))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

        self._data: dict[str, tuple[list[float], list[float]]] = {}
        self._data_lock = threading.Lock()  # points are appended here while the render thread copies them
        self._lines = {}
        self._axes_of = {}
        self._all_axes = []
        self._primary_axes = []
        axes = self.figure.subplots(len(self._panels), 1, squeeze=False)[:, 0]
        color_index = 0
        for ax, panel in zip(axes, self._panels):
            _style_axes(ax)
            ax.set_title(panel.title, fontsize=8)
            ax.set_ylabel(panel.ylabel, fontsize=7)
            if panel.log:
                ax.set_yscale("log")
            self._all_axes.append(ax)
            self._primary_axes.append(ax)
            handles = []
            for name in panel.series:
                (line,) = ax.plot([], [], color=COLORS[color_index % len(COLORS)], linewidth=1.2,
                                  label=panel.labels.get(name, name))
                color_index += 1
                self._lines[name] = line
                self._axes_of[name] = ax
                handles.append(line)
            if panel.secondary:
                ax2 = ax.twinx()
                _style_axes(ax2)
                ax2.grid(False)
                ax2.set_ylabel(panel.secondary_label, fontsize=7)
                self._all_axes.append(ax2)
                for name in panel.secondary:
                    (line,) = ax2.plot([], [], color=COLORS[color_index % len(COLORS)], linewidth=1.2,
                                       linestyle="--", marker="o", markersize=3, label=panel.labels.get(name, name))
                    color_index += 1
                    self._lines[name] = line
                    self._axes_of[name] = ax2
                    handles.append(line)
            if len(handles) > 1:
                legend = ax.legend(handles=handles, fontsize=6, loc="upper right", framealpha=0.6,
                                   facecolor=BACKGROUND, edgecolor=GRID, labelcolor=FOREGROUND)
                legend.set_zorder(10)
        axes[-1].set_xlabel(xlabel, fontsize=7)
        for name in self._lines:
            self._data[name] = ([], [])

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(min_interval_ms)
        self._timer.timeout.connect(self.redraw_now)
        self.redraw_now()

    @property
    def series(self) -> list[str]:
        return list(self._lines)

    def add_point(self, series: str, x: float, y: float) -> None:
        if series not in self._data:
            raise KeyError(f"no series {series!r} in this plot; known: {', '.join(self._lines)}")
        if not np.isfinite(y):
            return
        xs, ys = self._data[series]
        with self._data_lock:
            xs.append(float(x))
            ys.append(float(y))
        if not self._timer.isActive():
            self._timer.start()

    def points(self, series: str) -> list[tuple[float, float]]:
        xs, ys = self._data[series]
        with self._data_lock:
            return list(zip(xs, ys))

    def drawn_points(self, series: str) -> list[tuple[float, float]]:
        """The points of ``series`` as drawn: on its line and inside its axes' view, once the pending
        redraws are rendered."""
        self.canvas.wait_drawn()
        with self.canvas.lock:
            line = self._lines[series]
            ax = self._axes_of[series]
            (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
            return [(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata())
                    if x0 <= x <= x1 and y0 <= y <= y1]

    def clear(self) -> None:
        with self._data_lock:
            for xs, ys in self._data.values():
                xs.clear()
                ys.clear()
        self.redraw_now()

    def redraw_now(self) -> None:
        """Queue a redraw with the points so far (rendered off the GUI thread)."""
        with self._data_lock:
            snapshot = {name: (list(xs), list(ys)) for name, (xs, ys) in self._data.items()}
        self.canvas.change(lambda _figure: self._apply(snapshot))

    def _apply(self, snapshot: dict[str, tuple[list[float], list[float]]]) -> None:
        for name, line in self._lines.items():
            line.set_data(*snapshot[name])
        for ax in self._all_axes:
            has_data = any(len(line.get_xdata()) for line in ax.get_lines())
            if has_data:
                ax.relim()
                ax.autoscale_view()
            else:  # an empty panel: a plain frame rather than matplotlib's -0.05..0.05 default
                ax.set_xlim(0, 1, auto=True)  # auto: the first points rescale it
                if ax.get_yscale() != "log":
                    ax.set_ylim(0, 1, auto=True)
            if ax in self._primary_axes:
                ax.tick_params(labelbottom=has_data, labelleft=has_data)
            else:
                ax.tick_params(labelright=has_data)


class HeatmapPair(QWidget):
    """Linear and RBF CKA side by side (``analysis.cka_plot.draw_cka``, the same figure the CLI writes)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(6.0, 3.6), facecolor=BACKGROUND, layout="constrained")
        self.canvas = BackgroundCanvas(self.figure)
        self.canvas.setMinimumHeight(360)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.names: list[str] = []
        self.linear = np.zeros((0, 0))
        self.rbf = np.zeros((0, 0))
        self.title: str | None = None
        self.show_matrices([], self.linear, self.rbf)

    def show_matrices(self, names: Sequence[str], linear: np.ndarray, rbf: np.ndarray, title: str | None = None) -> None:
        """Show the matrices; the figure is drawn off the GUI thread (``canvas.wait_drawn()`` waits)."""
        self.names = [str(n) for n in names]
        self.linear = np.asarray(linear, dtype=float).reshape(len(self.names), len(self.names))
        self.rbf = np.asarray(rbf, dtype=float).reshape(len(self.names), len(self.names))
        self.title = title
        names, lin, rbf_ = list(self.names), self.linear.copy(), self.rbf.copy()
        self.canvas.change(lambda figure: self._draw(figure, names, lin, rbf_, title))

    def _draw(self, figure: Figure, names: list[str], linear: np.ndarray, rbf: np.ndarray, title: str | None) -> None:
        from napari_vesuvius_pt.analysis.cka_plot import draw_cka

        if names:
            draw_cka(figure, names, linear, rbf, title=title, dark=True)
            self._fit_cell_text(figure, len(names))
        else:
            figure.clear()
            for ax, kind in zip(figure.subplots(1, 2), ("linear CKA", "RBF CKA")):
                ax.set_facecolor(BACKGROUND)
                ax.set_title(kind, fontsize=10, color=FOREGROUND)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color(GRID)
                ax.text(0.5, 0.5, "no matrix yet:\npress Compute", ha="center", va="center", fontsize=8,
                        color=FOREGROUND, transform=ax.transAxes)

    @staticmethod
    def _fit_cell_text(figure: Figure, k: int) -> None:
        """draw_cka sizes the cell numbers for its PNG; in a dock the cells are smaller: shrink the numbers
        to fit their cells (and drop them where even 5 pt would not fit)."""
        figure.draw_without_rendering()  # lays the figure out, so the heatmaps' sizes are known
        for ax in figure.axes[:2]:
            cell_px = ax.get_window_extent().width / max(k, 1)
            size_pt = cell_px * 72.0 / figure.dpi / 2.6  # "0.93" is about 2.6 em wide
            for text in ax.texts:
                if size_pt < 5.0:
                    text.set_visible(False)
                else:
                    text.set_fontsize(min(text.get_fontsize(), size_pt))

    def save_png(self, path) -> None:
        """The shown matrices as a PNG on a white background, like the CLI's ``cka.png``."""
        from napari_vesuvius_pt.analysis.cka_plot import save_cka_png

        save_cka_png(path, self.names, self.linear, self.rbf, title=self.title)
