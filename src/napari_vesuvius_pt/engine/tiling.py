"""The geometry of tiled inference, in plain numpy: where tiles go, which part of each prediction is
kept, how tiles at the segment border are padded, and how kept centres are blended into output rows.

Coordinates: the input plane is the segment's ``(y, x)`` plane (after downsampling); a model with
output stride ``r`` predicts one output pixel per ``r x r`` block of it, so output pixel ``i`` covers
input pixels ``[i r, (i + 1) r)``. A tile of side ``size`` at ``(y0, x0)`` keeps only its centre,
``edge`` input pixels in from each side (``kept = size - 2 edge``). Tile starts run from ``-edge``
in steps of ``stride``, so the first kept centre starts at pixel 0 and, with the default stride
``kept``, the kept centres tile the plane exactly. Parts of a tile outside the plane are filled by
reflection and the kept centres cropped back to the plane, so every pixel gets a prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_vesuvius_pt.config import WEIGHTINGS
from napari_vesuvius_pt.errors import ConfigError, SegmentError

GAUSSIAN_SIGMA_SCALE = 0.125  # sigma as a fraction of the kept centre's side (MONAI's default)
GAUSSIAN_MIN_WEIGHT = 1e-3  # floor, relative to the peak: no pixel of a kept centre is ever ignored


@dataclass(frozen=True)
class TileLayout:
    plane: tuple[int, int]  # (H, W) of the input plane
    size: int  # tile side, input pixels
    edge: int  # dropped at each side of a tile's prediction, input pixels
    stride: int  # between tile starts, input pixels
    out_stride: int = 1  # input pixels per output pixel

    @property
    def kept(self) -> int:
        return self.size - 2 * self.edge

    @property
    def out_shape(self) -> tuple[int, int]:
        r = self.out_stride
        return (math.ceil(self.plane[0] / r), math.ceil(self.plane[1] / r))

    @property
    def size_out(self) -> int:
        return self.size // self.out_stride

    @property
    def edge_out(self) -> int:
        return self.edge // self.out_stride

    @property
    def kept_out(self) -> int:
        return self.kept // self.out_stride

    @property
    def stride_out(self) -> int:
        return self.stride // self.out_stride

    def starts(self, axis: int) -> np.ndarray:
        """Tile starts along ``axis`` (0: y, 1: x): ``-edge + k stride`` until the kept centres reach the end."""
        n_plane = self.plane[axis]
        count = 1 + max(0, math.ceil((n_plane - self.kept) / self.stride))
        return -self.edge + self.stride * np.arange(count, dtype=np.int64)

    def kept_origin_out(self, y0: int, x0: int) -> tuple[int, int]:
        """Output pixel where the kept centre of the tile at input ``(y0, x0)`` begins."""
        r = self.out_stride
        return (y0 + self.edge) // r, (x0 + self.edge) // r

    def crop_kept(self, tile_out: np.ndarray) -> np.ndarray:
        """The kept centre of one tile's output (last two axes ``size_out x size_out``)."""
        e, k = self.edge_out, self.kept_out
        return tile_out[..., e:e + k, e:e + k]


def make_layout(plane: tuple[int, int], size: int, edge: int, stride: int | None = None,
                out_stride: int = 1) -> TileLayout:
    """Check the tile geometry and return it; ``stride=None`` makes the kept centres tile the plane."""
    size, edge, r = int(size), int(edge), int(out_stride)
    if r < 1:
        raise ConfigError(f"output stride must be at least 1, got {r}")
    if size < 1 or size % r:
        raise ConfigError(f"tile size {size} must be a positive multiple of the model's output stride {r}")
    if edge < 0 or 2 * edge >= size:
        raise ConfigError(f"edge {edge} leaves nothing of a {size}-pixel tile: use 0 <= edge < {size / 2:g}")
    if edge % r:
        raise ConfigError(f"edge {edge} must be a multiple of the model's output stride {r} (it predicts {r}x{r} "
                          f"blocks); use --edge {edge - edge % r} or {edge - edge % r + r}")
    kept = size - 2 * edge
    stride = kept if stride is None else int(stride)
    if stride < 1 or stride > kept:
        raise ConfigError(f"stride {stride} must be between 1 and the kept centre {kept} (= tile {size} - 2 x edge "
                          f"{edge}); a larger stride leaves gaps between the kept centres")
    if stride % r:
        raise ConfigError(f"stride {stride} must be a multiple of the model's output stride {r}")
    h, w = (int(v) for v in plane)
    if h < 1 or w < 1:
        raise SegmentError(f"the segment's plane {plane} is empty")
    return TileLayout((h, w), size, edge, stride, r)


def plan_tiles(layout: TileLayout, where: np.ndarray | None = None) -> np.ndarray:
    """Tile starts ``(N, 2)`` (y0, x0), row by row, of the tiles whose kept centre touches ``where``
    (a bool ``(H, W)`` array; None: everywhere). Reads ``where`` one band of tile rows at a time."""
    ys, xs = layout.starts(0), layout.starts(1)
    h, w = layout.plane
    if where is None:
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1)
    if where.shape != (h, w):
        raise SegmentError(f"mask shape {where.shape} differs from the segment's plane {(h, w)}")
    x_lo = np.clip(xs + layout.edge, 0, w)
    x_hi = np.clip(xs + layout.edge + layout.kept, 0, w)
    rows = []
    for y0 in ys:
        a, b = max(0, y0 + layout.edge), min(h, y0 + layout.edge + layout.kept)
        column_any = where[a:b].any(axis=0)
        cumulative = np.concatenate([[0], np.cumsum(column_any, dtype=np.int64)])
        hit = cumulative[x_hi] - cumulative[x_lo] > 0
        rows.extend((int(y0), int(x0)) for x0 in xs[hit])
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def reflect_indices(start: int, length: int, n: int) -> np.ndarray:
    """Indices ``start .. start + length - 1`` folded into ``[0, n)`` by reflection (numpy's "reflect":
    the border pixel is not repeated), for any distance outside."""
    idx = np.arange(start, start + length, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    folded = np.mod(idx, period)
    return np.where(folded < n, folded, period - folded)


def read_padded(read: Callable[[slice, slice], np.ndarray], y0: int, x0: int, size: int,
                plane: tuple[int, int], width: int | None = None) -> np.ndarray:
    """A ``(..., size, width)`` block (``width`` defaults to ``size``) at ``(y0, x0)``, reflected where it
    leaves the plane.

    ``read(ys, xs)`` returns the in-plane block ``[..., ys, xs]``; only the block needed is read.
    """
    h, w = plane
    width = size if width is None else int(width)
    if y0 >= 0 and x0 >= 0 and y0 + size <= h and x0 + width <= w:
        return np.asarray(read(slice(y0, y0 + size), slice(x0, x0 + width)))
    yi, xi = reflect_indices(y0, size, h), reflect_indices(x0, width, w)
    ya, xa = int(yi.min()), int(xi.min())
    block = np.asarray(read(slice(ya, int(yi.max()) + 1), slice(xa, int(xi.max()) + 1)))
    return block[..., yi - ya, :][..., xi - xa]


def weight_map(kind: str, side: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """Blending weights over a kept centre of ``side x side`` output pixels (peak 1).

    "mean": all ones, so overlaps are averaged. "gaussian": a centred Gaussian floored at
    ``GAUSSIAN_MIN_WEIGHT``; the blend divides by the summed weights, so where one tile alone covers a
    pixel its prediction is kept as is (dividing by a tile count instead would darken tile edges).
    """
    if kind == "mean":
        return np.ones((side, side), np.float32)
    if kind != "gaussian":
        raise ConfigError(f"unknown weighting {kind!r}; use one of {', '.join(WEIGHTINGS)}")
    centre = (side - 1) / 2.0
    sigma = max(sigma_scale * side, 1e-6)
    g = np.exp(-0.5 * ((np.arange(side) - centre) / sigma) ** 2)
    w = np.outer(g, g)
    return np.maximum(w / w.max(), GAUSSIAN_MIN_WEIGHT).astype(np.float32)


class RowBandAccumulator:
    """Weighted sums of kept tile centres over a band of output rows that moves down the plane.

    Tiles arrive row by row; rows above ``start`` are final and gone, so memory is a band of rows of the
    output's width, whatever the segment's height.
    """

    def __init__(self, width: int, height: int, start: int = 0):
        self.width, self.height, self.start = int(width), int(height), int(start)
        self._sum = np.zeros((0, self.width), np.float32)
        self._weight = np.zeros((0, self.width), np.float32)

    @property
    def rows_held(self) -> int:
        return self._sum.shape[0]

    def _grow(self, rows: int) -> None:
        if rows > self.rows_held:
            extra = max(rows - self.rows_held, self.rows_held // 2)
            pad = np.zeros((extra, self.width), np.float32)
            self._sum = np.concatenate([self._sum, pad])
            self._weight = np.concatenate([self._weight, pad])

    def add(self, values: np.ndarray, weights: np.ndarray, y: int, x: int) -> None:
        """Add ``values * weights`` at output ``(y, x)``; parts above the band or outside the plane drop."""
        h, w = values.shape
        y_lo, y_hi = max(y, self.start), min(y + h, self.height)
        x_lo, x_hi = max(x, 0), min(x + w, self.width)
        if y_lo >= y_hi or x_lo >= x_hi:
            return
        self._grow(y_hi - self.start)
        src = (slice(y_lo - y, y_hi - y), slice(x_lo - x, x_hi - x))
        dst = (slice(y_lo - self.start, y_hi - self.start), slice(x_lo, x_hi))
        self._sum[dst] += values[src] * weights[src]
        self._weight[dst] += weights[src]

    def pop(self, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[start, stop)`` as (blended values, covered); 0 where no tile reached. Moves ``start``."""
        stop = min(int(stop), self.height)
        n = max(0, stop - self.start)
        self._grow(n)
        total, weight = self._sum[:n], self._weight[:n]
        covered = weight > 0
        values = np.divide(total, weight, out=np.zeros_like(total), where=covered)
        self._sum, self._weight = self._sum[n:].copy(), self._weight[n:].copy()
        self.start += n
        return values, covered


def region_mask(polygons: list[np.ndarray], plane: tuple[int, int], downsample: int = 1,
                segment_name: str = "segment") -> np.ndarray:
    """Rasterize region polygons (``(K, 2)`` (y, x) in the segment's full-resolution pixels) onto the
    plane (downsampled by ``downsample``); a polygon wholly outside the segment is an error."""
    from napari_vesuvius_pt.data.tiles import rasterize_polygons, scale_polygons

    h, w = plane
    scaled = scale_polygons(polygons, downsample)
    for i, p in enumerate(scaled):
        if len(p) < 3:
            raise ConfigError(f"region polygon {i} has {len(p)} vertices; a region needs at least 3")
        (y_min, x_min), (y_max, x_max) = p[:, -2:].min(0), p[:, -2:].max(0)
        if y_max < 0 or x_max < 0 or y_min > h - 1 or x_min > w - 1:
            full = np.asarray(polygons[i], dtype=np.float64)[:, -2:]
            raise SegmentError(
                f"region polygon {i} (y {full[:, 0].min():.0f}..{full[:, 0].max():.0f}, x {full[:, 1].min():.0f}.."
                f"{full[:, 1].max():.0f}) lies outside {segment_name} ({h * downsample} x {w * downsample} "
                f"full-resolution pixels); draw the region on this segment, in full-resolution pixels")
    return rasterize_polygons(scaled, (h, w))
