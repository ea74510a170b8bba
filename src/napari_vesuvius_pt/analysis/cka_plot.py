"""The CKA figure: linear | RBF heatmaps side by side, annotated, checkpoint names on the axes.

``draw_cka`` draws into any matplotlib ``Figure`` (the napari widget passes its Qt canvas's figure);
``save_cka_png`` renders with the Agg canvas, no pyplot and no display, and writes the PNG atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from napari_vesuvius_pt._atomic import atomic_open

CMAP = "viridis"
ANNOTATE_UP_TO = 20  # checkpoints; beyond that the numbers would not fit the cells
MISSING = "#bdbdbd"  # cells where CKA is undefined (collapsed or NaN features)

DARK = {"face": "#262930", "fg": "#d1d2d4"}  # napari's dark theme
LIGHT = {"face": "white", "fg": "black"}


def _cell_font(k: int) -> float:
    return float(np.clip(11.0 - 0.15 * k, 6.0, 10.0))


def colour_range(values: np.ndarray, step: float = 0.05) -> tuple[float, float]:
    """The colour scale for ``values``: their min and max widened to the ``step`` grid (at least one step
    wide), so 0.96-0.98 is not drawn as one colour of a 0-1 scale."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0
    vmin = float(np.floor(finite.min() / step + 1e-9) * step)
    vmax = float(min(max(np.ceil(finite.max() / step - 1e-9) * step, vmin + step), max(1.0, finite.max())))
    if vmax - vmin < step:
        vmin = vmax - step
    return round(vmin, 4), round(vmax, 4)


def _heatmap(ax, matrix: np.ndarray, names: Sequence[str], title: str, vmin: float, cmap: Colormap, fg: str,
             vmax: float = 1.0):
    k = len(names)
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=11, color=fg)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    label_size = float(np.clip(11.0 - 0.2 * k, 5.0, 9.0))
    ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_size, color=fg)
    ax.set_yticklabels(names, fontsize=label_size, color=fg)
    ax.tick_params(colors=fg, length=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if k <= ANNOTATE_UP_TO:
        font = _cell_font(k)
        span = max(vmax - vmin, 1e-9)
        for i in range(k):
            for j in range(k):
                v = matrix[i, j]
                if np.isfinite(v):
                    # dark text on the bright (yellow) end of viridis, light text elsewhere
                    color = "black" if (v - vmin) / span > 0.55 else "white"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=font, color=color)
                else:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=font * 0.8, color="black")
    return image


def draw_cka(
    figure: Figure,
    names: Sequence[str],
    linear: np.ndarray,
    rbf: np.ndarray,
    title: str | None = None,
    dark: bool = False,
) -> None:
    """Clear ``figure`` and draw the two heatmaps with one shared colour bar fitted to the values shown
    (``colour_range``; the range is printed in each title)."""
    names = [str(n) for n in names]
    linear = np.asarray(linear, dtype=np.float64).reshape(len(names), len(names))
    rbf = np.asarray(rbf, dtype=np.float64).reshape(len(names), len(names))
    colors = DARK if dark else LIGHT
    figure.clear()
    figure.set_facecolor(colors["face"])
    vmin, vmax = colour_range(np.concatenate([linear.ravel(), rbf.ravel()]))
    from matplotlib import colormaps

    cmap = colormaps[CMAP].with_extremes(bad=MISSING)
    axes = figure.subplots(1, 2)
    image = None
    for ax, matrix, label in zip(axes, (linear, rbf), ("linear CKA", "RBF CKA")):
        ax.set_facecolor(colors["face"])
        image = _heatmap(ax, matrix, names, f"{label} (colour scale {vmin:.2f}–{vmax:.2f})", vmin, cmap,
                         colors["fg"], vmax)
    if not names:
        for ax in axes:
            ax.text(0.5, 0.5, "no checkpoints yet", ha="center", va="center", color=colors["fg"],
                    transform=ax.transAxes)
    if image is not None and names:
        bar = figure.colorbar(image, ax=list(axes), shrink=0.8, fraction=0.04, pad=0.02)
        bar.ax.tick_params(colors=colors["fg"], labelsize=8)
        bar.outline.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=12, color=colors["fg"])


def figure_size(k: int) -> tuple[float, float]:
    """Inches for k checkpoints: cells of about 0.55 in, room for the names, never tiny."""
    side = float(np.clip(0.55 * k, 2.8, 11.0))
    return 2 * side + 2.6, side + 1.4


def render_cka_png(names: Sequence[str], linear: np.ndarray, rbf: np.ndarray, title: str | None = None,
                   dpi: int = 120) -> bytes:
    figure = Figure(figsize=figure_size(len(names)), layout="constrained")
    FigureCanvasAgg(figure)
    draw_cka(figure, names, linear, rbf, title=title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor=figure.get_facecolor())
    return buffer.getvalue()


def save_cka_png(path: str | os.PathLike, names: Sequence[str], linear: np.ndarray, rbf: np.ndarray,
                 title: str | None = None, dpi: int = 120) -> Path:
    data = render_cka_png(names, linear, rbf, title=title, dpi=dpi)
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)
