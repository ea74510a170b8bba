"""The geometry of tiled inference: kept centres cover the plane, border tiles are reflected, blends
are normalized by their weights, and the row band streams the same result as a whole-plane sum."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vesuvius_pt.data.blocks import block_fraction
from napari_vesuvius_pt.engine.tiling import (
    RowBandAccumulator,
    make_layout,
    plan_tiles,
    read_padded,
    reflect_indices,
    region_mask,
    weight_map,
)
from napari_vesuvius_pt.errors import ConfigError, SegmentError

# (plane, size, edge, stride, output stride): plane sides that are and are not multiples of the stride,
# planes smaller than a tile, reduced outputs, overlapping strides
COMBOS = [
    ((96, 96), 32, 8, None, 1),
    ((100, 77), 32, 8, None, 1),
    ((37, 130), 64, 8, None, 4),
    ((21, 13), 64, 16, None, 4),
    ((150, 91), 64, 8, 16, 4),
    ((83, 83), 24, 0, 10, 2),
    ((57, 200), 16, 4, 4, 1),
]


def _coverage(layout, positions):
    """How many kept centres cover each output pixel, summed tile by tile."""
    count = np.zeros(layout.out_shape, np.int64)
    k = layout.kept_out
    for y0, x0 in positions:
        oy, ox = layout.kept_origin_out(int(y0), int(x0))
        ys = slice(max(oy, 0), min(oy + k, count.shape[0]))
        xs = slice(max(ox, 0), min(ox + k, count.shape[1]))
        count[ys, xs] += 1
    return count


def _expected_count(n_out, stride_out, kept_out, n_tiles):
    """Per output pixel along one axis: tiles k with k*stride <= i < k*stride + kept."""
    i = np.arange(n_out)[:, None]
    k = np.arange(n_tiles)[None, :] * stride_out
    return ((k <= i) & (i < k + kept_out)).sum(1)


@pytest.mark.parametrize("plane,size,edge,stride,r", COMBOS)
def test_kept_centres_cover_every_pixel_with_known_counts(plane, size, edge, stride, r):
    layout = make_layout(plane, size, edge, stride, r)
    positions = plan_tiles(layout)
    count = _coverage(layout, positions)
    assert count.min() >= 1, "a pixel got no prediction"
    cy = _expected_count(layout.out_shape[0], layout.stride_out, layout.kept_out, len(layout.starts(0)))
    cx = _expected_count(layout.out_shape[1], layout.stride_out, layout.kept_out, len(layout.starts(1)))
    np.testing.assert_array_equal(count, np.outer(cy, cx))
    if stride is None:  # the default stride: kept centres tile the plane exactly
        assert (count == 1).all()
    # the last kept centre reaches the end, but no tile is wasted past it
    assert layout.starts(0)[-1] + edge < plane[0] and layout.starts(1)[-1] + edge < plane[1]


def test_tiles_follow_the_mask_and_cover_each_masked_pixel_once():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:173]
    mask = ((yy - 70) ** 2 / 60 ** 2 + (xx - 90) ** 2 / 70 ** 2) < 1
    mask &= rng.random(mask.shape) > 0.02  # ragged
    layout = make_layout(mask.shape, 32, 8, None, 1)
    positions = plan_tiles(layout, mask)
    count = _coverage(layout, positions)
    assert (count[mask] == 1).all()
    every = plan_tiles(layout)
    assert len(positions) < len(every)
    for y0, x0 in positions:  # every kept tile touches the mask
        a, b = max(y0 + 8, 0), y0 + 8 + layout.kept
        c, d = max(x0 + 8, 0), x0 + 8 + layout.kept
        assert mask[a:b, c:d].any()
    # rows come in order (the streaming writer relies on it)
    assert (np.diff(positions[:, 0]) >= 0).all()


def test_reflect_indices_match_numpy_reflect_padding_and_fold_far_indices():
    n = 7
    padded = np.pad(np.arange(n), 5, mode="reflect")
    np.testing.assert_array_equal(reflect_indices(-5, n + 10, n), padded)
    far = reflect_indices(-50, 200, n)
    assert far.min() == 0 and far.max() == n - 1
    np.testing.assert_array_equal(reflect_indices(-3, 6, 1), np.zeros(6))


def test_read_padded_reflects_at_the_border_and_reads_only_the_block_it_needs():
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 60000, size=(3, 40, 50), dtype=np.uint16)
    reads = []

    def read(ys, xs):
        reads.append((ys.stop - ys.start) * (xs.stop - xs.start))
        return volume[:, ys, xs]

    padded = np.pad(volume, ((0, 0), (20, 20), (20, 20)), mode="reflect")
    for y0, x0 in [(-8, -8), (30, 40), (-8, 20), (10, 10), (34, -3)]:
        tile = read_padded(read, y0, x0, 16, (40, 50))
        np.testing.assert_array_equal(tile, padded[:, y0 + 20:y0 + 36, x0 + 20:x0 + 36])
        assert reads[-1] <= 16 * 16
    wide = read_padded(read, -8, 30, 16, (40, 50), width=40)  # a run of neighbouring tiles as one block
    np.testing.assert_array_equal(wide, padded[:, 12:28, 50:90])
    # a plane smaller than the tile: reflection repeats
    small = volume[:, :5, :6]
    tile = read_padded(lambda ys, xs: small[:, ys, xs], -4, -4, 16, (5, 6))
    assert tile.shape == (3, 16, 16)
    assert set(np.unique(tile)) <= set(np.unique(small))


def test_gaussian_blend_is_normalized_by_the_summed_weights():
    """A constant prediction must come out constant: the reference code's gaussian / count does not."""
    layout = make_layout((90, 70), 32, 0, 8, 1)
    weights = weight_map("gaussian", layout.kept_out)
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    acc = RowBandAccumulator(*layout.out_shape[::-1])
    by_count = np.zeros(layout.out_shape)  # the reference: sum of gaussian-weighted values / tile count
    count = np.zeros(layout.out_shape)
    for y0, x0 in plan_tiles(layout):
        tile = np.full((layout.size_out, layout.size_out), 0.8, np.float32)
        oy, ox = layout.kept_origin_out(int(y0), int(x0))
        acc.add(layout.crop_kept(tile), weights, oy, ox)
        ys, xs = slice(max(oy, 0), oy + 32), slice(max(ox, 0), ox + 32)
        by_count[ys, xs] += (0.8 * weights)[: by_count[ys, xs].shape[0], : by_count[ys, xs].shape[1]]
        count[ys, xs] += 1
    values, covered = acc.pop(layout.out_shape[0])
    assert covered.all()
    np.testing.assert_allclose(values, 0.8, rtol=1e-5)
    assert (by_count / count).min() < 0.4  # what the reference's normalization does to tile edges


def test_row_band_streaming_equals_one_whole_plane_sum():
    rng = np.random.default_rng(2)
    layout = make_layout((75, 61), 24, 4, 8, 2)
    positions = plan_tiles(layout)
    outputs = rng.random((len(positions), layout.size_out, layout.size_out)).astype(np.float32)
    weights = weight_map("gaussian", layout.kept_out)
    total = np.zeros(layout.out_shape, np.float64)
    wsum = np.zeros(layout.out_shape, np.float64)
    k = layout.kept_out
    for (y0, x0), out in zip(positions, outputs):
        oy, ox = layout.kept_origin_out(int(y0), int(x0))
        kept = layout.crop_kept(out)
        for dy in range(k):
            for dx in range(k):
                y, x = oy + dy, ox + dx
                if 0 <= y < total.shape[0] and 0 <= x < total.shape[1]:
                    total[y, x] += kept[dy, dx] * weights[dy, dx]
                    wsum[y, x] += weights[dy, dx]
    expected = total / wsum

    acc = RowBandAccumulator(layout.out_shape[1], layout.out_shape[0])
    bands, max_held = [], 0
    tops = (positions[:, 0] + layout.edge) // layout.out_stride
    for i, ((y0, x0), out) in enumerate(zip(positions, outputs)):
        oy, ox = layout.kept_origin_out(int(y0), int(x0))
        acc.add(layout.crop_kept(out), weights, oy, ox)
        max_held = max(max_held, acc.rows_held)
        upto = tops[i + 1] if i + 1 < len(positions) else layout.out_shape[0]
        if upto > acc.start:
            bands.append(acc.pop(upto)[0])
    streamed = np.concatenate(bands)
    np.testing.assert_allclose(streamed, expected, rtol=1e-5)
    assert max_held <= 2 * layout.kept_out  # a band, not the plane


def test_layout_refuses_impossible_geometry():
    with pytest.raises(ConfigError, match="multiple of the model's output stride"):
        make_layout((64, 64), 64, 6, None, 4)
    with pytest.raises(ConfigError, match="gaps"):
        make_layout((64, 64), 64, 8, 56, 4)
    with pytest.raises(ConfigError, match="leaves nothing"):
        make_layout((64, 64), 32, 16, None, 1)
    with pytest.raises(ConfigError, match="stride 6 must be a multiple"):
        make_layout((64, 64), 64, 8, 6, 4)
    with pytest.raises(ConfigError, match="weighting"):
        weight_map("count", 8)


def test_block_fraction_averages_blocks_including_partial_ones():
    a = np.zeros((10, 7), np.uint8)
    a[0:4, 0:4] = 1
    a[8:10, 4:7] = 1
    a[9, 6] = 0
    frac = block_fraction(a, 4, band_rows=4)
    assert frac.shape == (3, 2)
    assert frac[0, 0] == 1.0 and frac[1, 0] == 0.0
    assert frac[2, 1] == pytest.approx(5 / 6)  # a 2 x 3 partial block holding 5 ones
    np.testing.assert_array_equal(block_fraction(a, 1), a.astype(np.float32))


def test_region_mask_scales_by_the_downsample_and_refuses_a_region_outside():
    square = np.array([[20, 40], [20, 80], [60, 80], [60, 40]], float)  # (y, x), full resolution
    mask = region_mask([square], (50, 50), downsample=2)
    assert mask[10:30, 20:40].all()  # full-resolution rows 20..60, columns 40..80, halved
    inside = np.zeros_like(mask)
    inside[9:31, 19:41] = True  # at most one pixel of outline more
    assert not (mask & ~inside).any()
    with pytest.raises(SegmentError, match="lies outside"):
        region_mask([square + 500], (50, 50), downsample=2, segment_name="frag")
