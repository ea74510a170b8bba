"""Matplotlib canvases for the dock widgets: live training curves and the CKA heatmap pair.

Redraws are throttled: points are appended as events arrive (many per second on a GPU), and the canvas
is drawn at most every ``min_interval_ms`` by a single-shot timer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

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
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(int(95 * height_per_panel * len(self._panels)))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

        self._data: dict[str, tuple[list[float], list[float]]] = {}
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
                (line,) = ax.plot([], [], color=COLORS[color_index % len(COLORS)], linewidth=1.2, label=name)
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
                                       linestyle="--", marker="o", markersize=3, label=name)
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
        xs.append(float(x))
        ys.append(float(y))
        if not self._timer.isActive():
            self._timer.start()

    def points(self, series: str) -> list[tuple[float, float]]:
        xs, ys = self._data[series]
        return list(zip(xs, ys))

    def clear(self) -> None:
        for xs, ys in self._data.values():
            xs.clear()
            ys.clear()
        self.redraw_now()

    def redraw_now(self) -> None:
        for name, line in self._lines.items():
            xs, ys = self._data[name]
            line.set_data(xs, ys)
        for ax in self._all_axes:
            has_data = any(len(line.get_xdata()) for line in ax.get_lines())
            if has_data:
                ax.relim()
                ax.autoscale_view()
            else:  # an empty panel: a plain frame rather than matplotlib's -0.05..0.05 default
                ax.set_xlim(0, 1)
                if ax.get_yscale() != "log":
                    ax.set_ylim(0, 1)
            ax.tick_params(labelbottom=has_data, labelleft=has_data or ax not in self._primary_axes,
                           labelright=has_data)
        self.canvas.draw_idle()


def draw_heatmap(ax, matrix: np.ndarray, names: Sequence[str], title: str) -> None:
    """One annotated CKA heatmap (values 0..1), names on both axes."""
    n = len(names)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest")
    ax.set_title(title, fontsize=9, color=FOREGROUND)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6, color=FOREGROUND)
    ax.set_yticklabels(names, fontsize=6, color=FOREGROUND)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if value > 0.6 else "white")
    return image


class HeatmapPair(QWidget):
    """Linear and RBF CKA side by side, sharing one colour bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(5.0, 2.8), facecolor=BACKGROUND, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.names: list[str] = []
        self.linear: np.ndarray | None = None
        self.rbf: np.ndarray | None = None
        self.show_matrices([], np.zeros((0, 0)), np.zeros((0, 0)))

    def show_matrices(self, names: Sequence[str], linear: np.ndarray, rbf: np.ndarray) -> None:
        self.names = list(names)
        self.linear = np.asarray(linear, dtype=float)
        self.rbf = np.asarray(rbf, dtype=float)
        self.figure.clear()
        axes = self.figure.subplots(1, 2)
        for ax in axes:
            ax.set_facecolor(BACKGROUND)
            for spine in ax.spines.values():
                spine.set_color(GRID)
        if not self.names:
            for ax, title in zip(axes, ("linear CKA", "RBF CKA")):
                ax.set_title(title, fontsize=9, color=FOREGROUND)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(0.5, 0.5, "no matrix yet", ha="center", va="center", color=FOREGROUND, fontsize=8,
                        transform=ax.transAxes)
        else:
            image = draw_heatmap(axes[0], self.linear, self.names, "linear CKA")
            draw_heatmap(axes[1], self.rbf, self.names, "RBF CKA")
            bar = self.figure.colorbar(image, ax=list(axes), shrink=0.8)
            bar.ax.tick_params(colors=FOREGROUND, labelsize=6)
        self.canvas.draw_idle()

    def save_png(self, path, dpi: int = 150) -> None:
        self.figure.savefig(path, dpi=dpi, facecolor=self.figure.get_facecolor())
