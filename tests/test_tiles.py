"""Tile grids inside masks, validation regions from JSON and napari's Shapes CSV, and region splits that
never let a pixel both train and validate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_vesuvius_pt.data.tiles import (
    TileGrid,
    load_regions,
    save_regions,
    scale_polygons,
    split_by_regions,
)
from napari_vesuvius_pt.errors import ConfigError


def blob_mask(h: int = 150, w: int = 170) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - 70) / 60.0) ** 2 + ((xx - 90) / 75.0) ** 2 < 1.0
    mask[100:130, 20:60] = True  # a square bump
    mask[60:75, 80:100] = False  # a hole
    return mask


def brute_force(mask: np.ndarray, size: int, stride: int, min_fraction: float, erosion: int) -> set[tuple[int, int]]:
    h, w = mask.shape
    padded = np.pad(mask, erosion, constant_values=False)
    kept = set()
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            inside = 0
            for dy in range(size):
                for dx in range(size):
                    window = padded[y + dy:y + dy + 2 * erosion + 1, x + dx:x + dx + 2 * erosion + 1]
                    inside += bool(window.all())
            if inside >= np.ceil(min_fraction * size * size - 1e-9):
                kept.add((y, x))
    return kept


@pytest.mark.parametrize("min_fraction,erosion", [(1.0, 0), (1.0, 3), (0.5, 0)])
def test_grid_keeps_exactly_the_tiles_inside_the_eroded_mask(min_fraction, erosion):
    mask = blob_mask()
    grid = TileGrid.from_mask(mask, size=16, stride=8, min_fraction=min_fraction, erosion=erosion)
    assert grid.shape == mask.shape
    got = {tuple(int(v) for v in p) for p in grid.positions}
    assert got == brute_force(mask, 16, 8, min_fraction, erosion)
    assert len(got) > 10
    if min_fraction == 1.0:
        assert all(mask[y:y + 16, x:x + 16].all() for y, x in got)


def test_grid_on_a_real_kaggle_mask(kaggle_labels_dir):
    Image.MAX_IMAGE_PIXELS = None
    mask = np.asarray(Image.open(kaggle_labels_dir / "3" / "mask.png")) > 0
    grid = TileGrid.from_mask(mask, size=128, stride=32, min_fraction=1.0, erosion=8)
    assert len(grid) > 1000
    rng = np.random.default_rng(0)
    for y, x in grid.positions[rng.choice(len(grid), 50, replace=False)]:
        assert mask[y - 8:y + 136, x - 8:x + 136].all()


def test_grid_errors():
    with pytest.raises(ConfigError, match="does not fit"):
        TileGrid.from_mask(np.ones((20, 20), bool), size=32, stride=8)
    with pytest.raises(ConfigError, match="min_mask_fraction"):
        TileGrid.from_mask(np.ones((64, 64), bool), size=16, stride=8, min_fraction=0.0)
    assert len(TileGrid.from_mask(np.zeros((64, 64), bool), size=16, stride=8)) == 0


def test_regions_round_trip_json_and_napari_csv(tmp_path):
    napari_io = pytest.importorskip("napari_builtins.io")
    rect = np.array([[10.0, 10.0], [10.0, 50.0], [40.0, 50.0], [40.0, 10.0]])
    tri = np.array([[60.0, 5.0], [90.0, 5.0], [75.0, 40.0]])
    path = save_regions(tmp_path / "regions.json", [rect, tri])
    assert json.loads(path.read_text())["polygons"][0][1] == [10.0, 50.0]
    for got in (load_regions(path),):
        assert len(got) == 2 and np.allclose(got[0], rect) and np.allclose(got[1], tri)

    csv2d = napari_io.napari_write_shapes(str(tmp_path / "shapes.csv"), [rect, tri], {"shape_type": ["rectangle", "polygon"]})
    got = load_regions(csv2d)
    assert np.allclose(got[0], rect) and np.allclose(got[1], tri)
    # a Shapes layer over a 3D volume saves (z, y, x) vertices: the plane is the last two
    rect3d = np.column_stack([np.full(4, 7.0), rect])
    csv3d = napari_io.napari_write_shapes(str(tmp_path / "shapes3d.csv"), [rect3d], {"shape_type": ["rectangle"]})
    assert np.allclose(load_regions(csv3d)[0], rect)


def test_region_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_regions(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_regions(bad)
    bad.write_text(json.dumps({"polygons": [[[0, 0], [5, 5]]]}))
    with pytest.raises(ConfigError, match="at least 3 vertices"):
        load_regions(bad)
    bad.write_text(json.dumps({"polygons": []}))
    with pytest.raises(ConfigError, match="no polygons"):
        load_regions(bad)
    line = tmp_path / "line.csv"
    line.write_text("index,shape-type,vertex-index,axis-0,axis-1\n0,line,0,1,1\n0,line,1,5,5\n")
    with pytest.raises(ConfigError, match="encloses no area"):
        load_regions(line)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a napari Shapes CSV"):
        load_regions(other)


def rectangle(y0, x0, y1, x1) -> np.ndarray:
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)


SPLITS = {
    "lower 30%": [rectangle(0.7 * 149, -1, 149, 170)],
    "triangle": [np.array([[20.0, 30.0], [120.0, 60.0], [40.0, 150.0]])],
    "two polygons": [rectangle(10, 10, 50, 60), np.array([[80.0, 100.0], [140.0, 110.0], [120.0, 165.0], [90.0, 150.0]])],
    "thin strip": [rectangle(64, 0, 71, 170)],
}


@pytest.mark.parametrize("name", sorted(SPLITS))
@pytest.mark.parametrize("margin", [0, 5])
def test_region_split_never_shares_a_pixel(name, margin):
    polygons = SPLITS[name]
    mask = np.ones((150, 170), bool)
    grid = TileGrid.from_mask(mask, size=24, stride=8)
    train, val = split_by_regions(grid, polygons, size=24, margin=margin)
    assert len(val) > 0 and len(train) > 0
    assert not set(train) & set(val)

    train_px = grid.footprint(train)
    val_px = grid.footprint(val)
    assert not (train_px & val_px).any()
    if margin:  # at least `margin` pixels between a training and a validation tile
        from scipy import ndimage

        grown = ndimage.maximum_filter(val_px.astype(np.uint8), size=2 * margin + 1) > 0
        assert not (train_px & grown).any()

    from matplotlib.path import Path as MplPath

    centres = grid.centres
    inside = np.zeros(len(grid), bool)
    for poly in polygons:
        inside |= MplPath(poly).contains_points(centres)
    assert set(val) == set(np.nonzero(inside)[0])  # validation = centre inside a polygon
    # training tiles do not touch any polygon
    yy, xx = np.mgrid[0:150, 0:170]
    for poly in polygons:
        area = MplPath(poly).contains_points(np.column_stack([yy.ravel(), xx.ravel()])).reshape(150, 170)
        assert not (train_px & area).any()


def test_split_drops_tiles_that_straddle_the_region():
    grid = TileGrid.from_mask(np.ones((96, 96), bool), size=32, stride=16)
    train, val = split_by_regions(grid, [rectangle(47.5, -1, 96, 96)], size=32)  # the lower half
    dropped = set(range(len(grid))) - set(train) - set(val)
    assert dropped  # tiles overlapping the region with their centre outside belong to neither set
    assert all(grid.positions[i][0] + 32 <= 47 for i in train)
    assert all(grid.centres[i][0] > 47.5 for i in val)


def test_scale_polygons_maps_full_resolution_pixels_to_downsampled_ones():
    poly = [np.array([[0.5, 0.5], [0.5, 7.5], [7.5, 7.5]])]
    (half,) = scale_polygons(poly, 2)
    assert np.allclose(half, [[0.0, 0.0], [0.0, 3.5], [3.5, 3.5]])
    assert np.allclose(scale_polygons(poly, 1)[0], poly[0])
