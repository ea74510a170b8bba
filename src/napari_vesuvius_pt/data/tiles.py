"""Tile grids over a segment's plane, kept where the (eroded) mask covers them, and region splits.

Coordinates are napari's: pixel ``(r, c)`` has its centre at ``(r, c)``, so a ``size``-wide tile at
``(y, x)`` covers rows ``y .. y + size - 1`` and has its centre at ``y + (size - 1) / 2``.

Validation regions are polygons drawn on a fragment. A tile whose centre lies inside a polygon
validates; a tile that overlaps a polygon or any validation tile (plus a margin) without its centre
inside is left out of both sets, so that no pixel is seen by both training and validation.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_vesuvius_pt.errors import ConfigError

__all__ = ["TileGrid", "load_regions", "save_regions", "region_fragment", "region_owner", "split_by_regions", "rasterize_polygons", "window_sums"]


def window_sums(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``image`` over each ``size``-square window at the grid ``ys`` × ``xs``: shape (len(ys), len(xs)).

    Works band by band (one row of windows at a time), so it never builds a full-size integral image:
    the real Kaggle masks are 14830 × 9506.
    """
    out = np.zeros((len(ys), len(xs)), dtype=np.int64)
    for i, y in enumerate(ys):
        band = image[y : y + size].sum(axis=0, dtype=np.int64)
        cum = np.concatenate([[0], np.cumsum(band)])
        out[i] = cum[xs + size] - cum[xs]
    return out


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Square erosion by ``pixels``; outside the image counts as outside the mask (separable: fast)."""
    if pixels <= 0:
        return mask
    from scipy import ndimage

    return ndimage.minimum_filter(mask.astype(np.uint8), size=2 * pixels + 1, mode="constant", cval=0).astype(bool)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    from scipy import ndimage

    return ndimage.maximum_filter(mask.astype(np.uint8), size=2 * pixels + 1, mode="constant", cval=0).astype(bool)


@dataclass
class TileGrid:
    """``size`` × ``size`` tiles at ``positions`` ((N, 2) int, the (y, x) of each tile's top-left pixel)."""

    positions: np.ndarray
    size: int
    stride: int
    shape: tuple[int, int]  # the plane (height, width) the grid lies on

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def centres(self) -> np.ndarray:
        """(N, 2) float (y, x) of each tile's centre in pixel-centre coordinates."""
        return self.positions.astype(np.float64) + (self.size - 1) / 2.0

    def subset(self, index: np.ndarray | Sequence[int]) -> "TileGrid":
        return TileGrid(self.positions[np.asarray(index, dtype=np.int64)], self.size, self.stride, self.shape)

    def footprint(self, index: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """A boolean (height, width) image of the pixels the tiles (all, or ``index``) cover."""
        out = np.zeros(self.shape, dtype=bool)
        positions = self.positions if index is None else self.positions[np.asarray(index, dtype=np.int64)]
        for y, x in positions:
            out[y : y + self.size, x : x + self.size] = True
        return out

    @classmethod
    def from_mask(
        cls,
        mask: np.ndarray,
        size: int,
        stride: int,
        min_fraction: float = 1.0,
        erosion: int = 0,
    ) -> "TileGrid":
        """Tiles on a regular grid whose share of pixels inside the (eroded) mask is at least ``min_fraction``.

        ``min_fraction=1.0`` keeps only tiles lying fully inside the mask, as the seed did.
        """
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ConfigError(f"a tile grid needs a 2D (y, x) mask, got shape {mask.shape}")
        size, stride = int(size), int(stride)
        if size < 1 or stride < 1:
            raise ConfigError(f"tile size and stride must be positive, got size {size}, stride {stride}")
        if not 0.0 < min_fraction <= 1.0:
            raise ConfigError(f"min_mask_fraction must lie in (0, 1], got {min_fraction}")
        h, w = mask.shape
        if size > h or size > w:
            raise ConfigError(
                f"tile size {size} does not fit the segment's plane {h}x{w}; use a smaller tile size"
            )
        kept = _erode(mask.astype(bool), int(erosion))
        ys = np.arange(0, h - size + 1, stride)
        xs = np.arange(0, w - size + 1, stride)
        counts = window_sums(kept, ys, xs, size)
        need = int(np.ceil(min_fraction * size * size - 1e-9))
        iy, ix = np.nonzero(counts >= max(need, 1))
        positions = np.stack([ys[iy], xs[ix]], axis=1).astype(np.int64)
        return cls(positions, size, stride, (h, w))


# ---------------------------------------------------------------- regions


def _polygon_array(points, where: str) -> np.ndarray:
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a polygon must be a list of [y, x] vertices") from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ConfigError(f"{where}: a polygon must be a list of [y, x] vertices, got shape {arr.shape}")
    arr = arr[:, -2:]  # (z, y, x) vertices from a 3D Shapes layer: keep the plane
    if len(arr) < 3:
        raise ConfigError(f"{where}: a polygon needs at least 3 vertices, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{where}: a polygon has non-finite vertices")
    return arr


def _load_json_regions(path: Path) -> list[np.ndarray]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); expected {{\"polygons\": [[[y, x], ...], ...]}}") from None
    if isinstance(data, dict):
        polygons = data.get("polygons")
    else:
        polygons = data
    if not isinstance(polygons, list):
        raise ConfigError(f"{path}: expected {{\"polygons\": [[[y, x], ...], ...]}} (polygons in full-resolution pixels)")
    return [_polygon_array(p, f"{path} polygon {i}") for i, p in enumerate(polygons)]


def _load_csv_regions(path: Path) -> list[np.ndarray]:
    """napari's Shapes CSV: index, shape-type, vertex-index, axis-0, axis-1[, axis-2]."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        axes = sorted((f for f in fields if f.startswith("axis-")), key=lambda f: int(f.split("-")[1]))
        if "index" not in fields or len(axes) < 2:
            raise ConfigError(
                f"{path}: not a napari Shapes CSV; expected the columns index, shape-type, vertex-index, axis-0, axis-1"
            )
        shapes: dict[int, list[tuple[int, list[float]]]] = {}
        kinds: dict[int, str] = {}
        for n, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                index = int(row["index"])
                vertex = int(row.get("vertex-index") or len(shapes.get(index, [])))
                coords = [float(row[a]) for a in axes[-2:]]
            except (TypeError, ValueError):
                raise ConfigError(f"{path} line {n}: cannot read the shape index or coordinates") from None
            shapes.setdefault(index, []).append((vertex, coords))
            kinds[index] = (row.get("shape-type") or "polygon").strip()
    polygons = []
    for index in sorted(shapes):
        if kinds[index] in ("line", "path"):
            raise ConfigError(
                f"{path}: shape {index} is a {kinds[index]}, which encloses no area; draw rectangles or polygons"
            )
        vertices = [c for _, c in sorted(shapes[index], key=lambda t: t[0])]
        if kinds[index] == "ellipse":
            vertices = _ellipse_polygon(np.asarray(vertices))
        polygons.append(_polygon_array(vertices, f"{path} shape {index}"))
    return polygons


def _ellipse_polygon(box: np.ndarray, n: int = 64) -> np.ndarray:
    """napari saves an ellipse as the 4 corners of its bounding box; approximate it by a polygon."""
    centre = box.mean(axis=0)
    radii = (box.max(axis=0) - box.min(axis=0)) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + radii[0] * np.sin(t), centre[1] + radii[1] * np.cos(t)], axis=1)


def load_regions(path: str | Path) -> list[np.ndarray]:
    """Validation polygons as (K, 2) float (y, x) arrays in full-resolution pixels.

    Reads JSON ``{"polygons": [[[y, x], ...], ...]}`` or the CSV napari's Shapes layer saves (the last
    two axis columns are (y, x)).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"region file not found: {path}")
    polygons = _load_csv_regions(path) if path.suffix.lower() == ".csv" else _load_json_regions(path)
    if not polygons:
        raise ConfigError(f"{path} holds no polygons; draw at least one validation region")
    return polygons


def save_regions(path: str | Path, polygons: Sequence[np.ndarray], fragment: str | None = None,
                 fragment_path: str | Path | None = None) -> Path:
    """Write polygons as JSON ``{"fragment": NAME, "fragment_path": PATH, "polygons": [[[y, x], ...], ...]}``
    (atomically); the fragment keys, when given, name the fragment the polygons were drawn on."""
    from napari_vesuvius_pt._atomic import atomic_write_text

    data: dict = {}
    if fragment:
        data["fragment"] = str(fragment)
    if fragment_path:
        data["fragment_path"] = str(fragment_path)
    data["polygons"] = [[[float(v) for v in vertex[-2:]] for vertex in np.asarray(p)] for p in polygons]
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return Path(path)


def region_fragment(path: str | Path) -> tuple[str | None, str | None]:
    """(name, path) of the fragment a region file says its polygons were drawn on; (None, None) when it
    does not say (a napari Shapes CSV, or a file from before fragments were recorded)."""
    path = Path(path)
    if path.suffix.lower() == ".csv" or not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None, None  # load_regions reports it
    if not isinstance(data, dict):
        return None, None
    name, where = data.get("fragment"), data.get("fragment_path")
    return (str(name) if name else None), (str(where) if where else None)


def region_owner(fragments: Sequence[Any], region_file: str | Path) -> int:
    """Index among ``fragments`` (segments or tile sources: ``.name`` and ``.path``) of the one a validation
    region file was drawn on: the one it names (by path, else by name); the first when it names none
    (napari CSVs, files from before 0.2). ConfigError when the named fragment is not among them."""
    name, where = region_fragment(region_file)
    if name is None and where is None:
        return 0
    if where is not None:
        from napari_vesuvius_pt.data.remote import location_key

        for i, s in enumerate(fragments):
            if location_key(s.path) == location_key(where):
                return i
    matches = [i for i, s in enumerate(fragments) if name is not None and name in (s.name, Path(str(s.path)).name)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(s.name for s in fragments)
    if matches:
        raise ConfigError(f"{region_file} was drawn on {name!r}, and {len(matches)} training fragments have that "
                          f"name ({known}); give the fragments distinct names or save the regions again")
    raise ConfigError(f"{region_file} was drawn on {name or where!r}, which is not a training fragment "
                      f"({known}); add it to the fragments or draw the regions on one of them")


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """A boolean (height, width) image of the pixels a polygon touches (its interior and outline).

    Conservative on purpose: it marks pixels to keep out of training.
    """
    from PIL import Image, ImageDraw

    h, w = shape
    image = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(image)
    for polygon in polygons:
        xy = [(float(x), float(y)) for y, x in np.asarray(polygon)[:, -2:]]
        draw.polygon(xy, fill=1, outline=1)
    return np.asarray(image, dtype=bool)


def _centres_inside(centres: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    inside = np.zeros(len(centres), dtype=bool)
    for polygon in polygons:
        inside |= MplPath(np.asarray(polygon)[:, -2:]).contains_points(centres, radius=0.0)
    return inside


def split_by_regions(
    grid: TileGrid,
    polygons: Sequence[np.ndarray],
    size: int | None = None,
    margin: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``grid`` of (training tiles, validation tiles).

    A tile validates when its centre lies inside a polygon. A tile trains only when it shares no pixel
    with any polygon or any validation tile, even after growing those by ``margin`` pixels; the rest are
    left out, so no pixel trains and validates.
    """
    size = int(size or grid.size)
    if size != grid.size:
        raise ConfigError(f"split_by_regions: tile size {size} differs from the grid's {grid.size}")
    polygons = [_polygon_array(p, "validation region") for p in polygons]
    if not polygons:
        raise ConfigError("no validation polygons given; draw at least one region")
    if len(grid) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    val = _centres_inside(grid.centres, polygons)
    forbidden = rasterize_polygons(polygons, grid.shape) | grid.footprint(np.nonzero(val)[0])
    forbidden = _dilate(forbidden, int(margin))
    ys, yi = np.unique(grid.positions[:, 0], return_inverse=True)
    xs, xi = np.unique(grid.positions[:, 1], return_inverse=True)
    overlap = window_sums(forbidden, ys, xs, size)[yi.ravel(), xi.ravel()] > 0
    train = ~val & ~overlap
    return np.nonzero(train)[0].astype(np.int64), np.nonzero(val)[0].astype(np.int64)


def split_by_mask(grid: TileGrid, region: np.ndarray, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``split_by_regions`` with the validation region given as a bool ``(y, x)`` raster (a validation
    mask): a tile validates when its centre pixel is in ``region``; a tile trains only when it shares no
    pixel (grown by ``margin``) with the region or a validation tile."""
    region = np.asarray(region, dtype=bool)
    if region.shape != tuple(grid.shape):
        raise ConfigError(f"validation mask is {region.shape[0]}x{region.shape[1]} but the tile grid's plane is "
                          f"{grid.shape[0]}x{grid.shape[1]}")
    if not region.any():
        raise ConfigError("the validation mask is empty (all zero): no validation region")
    if len(grid) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cy = np.clip(np.floor(grid.centres[:, 0]).astype(np.int64), 0, region.shape[0] - 1)
    cx = np.clip(np.floor(grid.centres[:, 1]).astype(np.int64), 0, region.shape[1] - 1)
    val = region[cy, cx]
    forbidden = _dilate(region | grid.footprint(np.nonzero(val)[0]), int(margin))
    ys, yi = np.unique(grid.positions[:, 0], return_inverse=True)
    xs, xi = np.unique(grid.positions[:, 1], return_inverse=True)
    overlap = window_sums(forbidden, ys, xs, grid.size)[yi.ravel(), xi.ravel()] > 0
    train = ~val & ~overlap
    return np.nonzero(train)[0].astype(np.int64), np.nonzero(val)[0].astype(np.int64)


def scale_polygons(polygons: Sequence[np.ndarray], factor: float) -> list[np.ndarray]:
    """Polygons in full-resolution pixels -> pixels of a segment downsampled by ``factor``.

    A full-resolution pixel centre ``p`` lies in downsampled pixel ``p // factor``, whose centre is at
    ``(p - (factor - 1) / 2) / factor`` in downsampled coordinates.
    """
    if factor == 1:
        return [np.asarray(p, dtype=np.float64) for p in polygons]
    return [(np.asarray(p, dtype=np.float64) - (factor - 1) / 2.0) / factor for p in polygons]
