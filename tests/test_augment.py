"""Augmentations: shapes kept, reproducible, each op does its job, labels stay on the ink; z-shifted views."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import AugmentConfig
from napari_vesuvius_pt.data.augment import augment_batch, read_shifted_views
from napari_vesuvius_pt.errors import ConfigError

NOTHING = AugmentConfig(flip=False, rotate90=False, shift_scale_rotate=0, grid_distortion=0, brightness_contrast=0,
                        gamma=0, noise=0, blur=0, holes=0, big_holes=0)


def only(**kw) -> AugmentConfig:
    return dataclasses.replace(NOTHING, **kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def painted_batch(b: int = 6, depth: int = 8, size: int = 48, seed: int = 0):
    """Tiles of background 0.2 with bright ink rectangles (0.8) through all layers, and their labels."""
    rng = np.random.default_rng(seed)
    labels = torch.zeros(b, 1, size, size)
    for i in range(b):
        for _ in range(2):
            h, w = rng.integers(size // 6, size // 3, 2)
            y, x = rng.integers(2, size - max(h, w) - 2, 2)
            labels[i, 0, y:y + h, x:x + w] = 1
    x = 0.2 + 0.6 * labels[:, :, None].expand(b, 1, depth, size, size).clone()
    return x, labels


def test_default_recipe_is_reproducible_and_keeps_the_ink_under_its_labels():
    """The recipe training uses: one seed gives one batch (another seed another), the caller's tensors
    are left alone, and after every op the bright ink still lies under its (moved) labels; cut-out
    holes, which blank the tile through all layers and spare the labels, are left out of the check."""
    x, labels = painted_batch(b=8, seed=1)
    labels = labels.to(torch.uint8)
    x0, labels0 = x.clone(), labels.clone()
    a, la = augment_batch(x, labels, AugmentConfig(), gen(1))
    b, lb = augment_batch(x, labels, AugmentConfig(), gen(1))
    c, lc = augment_batch(x, labels, AugmentConfig(), gen(2))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c) and not torch.equal(la, lc)
    assert torch.equal(x, x0) and torch.equal(labels, labels0)  # not modified in place
    assert la.dtype == torch.uint8 and set(la.unique().tolist()) <= {0, 1}
    assert torch.isfinite(a).all()
    moved = 0
    for i in range(x.shape[0]):
        hole = (a[i, 0] == 0).all(0)  # holes are exact zeros through every layer
        image = a[i, 0].mean(0)  # noise averages out over the layers
        lo, hi = torch.quantile(image[~hole], 0.05), torch.quantile(image[~hole], 0.95)
        ink = (image > (lo + hi) / 2) & ~hole
        lab = (la[i, 0] > 0) & ~hole
        iou = (ink & lab).sum() / (ink | lab).sum()
        assert iou > 0.8, f"sample {i}: labels and augmented ink overlap by IoU {iou:.2f}"
        moved += not torch.equal(la[i], labels[i])
    assert moved >= x.shape[0] // 2  # the geometry did move the labels, with the ink
    # non-square tiles, and no labels
    y, none = augment_batch(torch.rand(2, 1, 8, 32, 48), None, AugmentConfig(), gen(0))
    assert y.shape == (2, 1, 8, 32, 48) and none is None


def test_intensity_ops_change_values_but_keep_them_in_range_and_the_labels_as_they_are():
    x, labels = painted_batch(b=8, seed=2)  # background 0.2, ink 0.8
    cfg = only(brightness_contrast=1.0, gamma=1.0, noise=1.0, blur=1.0)
    y, ly = augment_batch(x, labels, cfg, gen(8))
    assert torch.equal(ly, labels)  # intensity never moves the labels
    for i in range(x.shape[0]):
        assert not torch.allclose(y[i], x[i], atol=1e-3), f"sample {i} was not changed"
        ink = labels[i, 0] > 0
        image = y[i, 0].mean(0)
        assert image[ink].mean() > image[~ink].mean() + 0.3  # the ink stays clearly brighter
    # contrast and brightness of +-0.2 on 0.2..0.8, gamma and blur within the range, noise of std <= 0.05
    assert torch.isfinite(y).all() and y.min() > -0.35 and y.max() < 1.45


def test_nothing_enabled_is_the_identity():
    x, labels = painted_batch()
    y, ly = augment_batch(x, labels, NOTHING, gen())
    assert torch.equal(y, x) and torch.equal(ly, labels)


def test_flips_and_quarter_turns_are_exact_and_shared_with_labels():
    x = torch.rand(8, 1, 4, 24, 24)
    labels = (torch.rand(8, 1, 24, 24) > 0.5).float()
    y, ly = augment_batch(x, labels, only(flip=True, rotate90=True), gen(3))
    moved = 0
    for i in range(8):
        found = None
        for k in range(4):
            for flip in (False, True):
                t = torch.rot90(x[i].flip(-1) if flip else x[i], k, dims=(-2, -1))
                if (y[i] - t).abs().max() < 1e-5:
                    found = (k, flip)
        assert found is not None, f"sample {i} is not a flip/rotation of its input"
        k, flip = found
        assert torch.equal(ly[i], torch.rot90(labels[i].flip(-1) if flip else labels[i], k, dims=(-2, -1)))
        moved += found != (0, False)
    assert moved >= 4


@pytest.mark.parametrize("cfg", [
    only(shift_scale_rotate=1.0),
    only(grid_distortion=1.0, grid_limit=0.5),
    dataclasses.replace(AugmentConfig(shift_scale_rotate=1.0, grid_distortion=1.0), holes=0, big_holes=0),
], ids=["shift-scale-rotate", "grid-distortion", "everything-but-holes"])
def test_labels_stay_on_the_painted_ink(cfg):
    x, labels = painted_batch()
    y, ly = augment_batch(x, labels, cfg, gen(4))
    image = y[:, 0].mean(1)  # (b, y, x)
    changed = 0
    for i in range(x.shape[0]):
        lo, hi = torch.quantile(image[i], 0.05), torch.quantile(image[i], 0.95)
        ink = image[i] > (lo + hi) / 2
        lab = ly[i, 0] > 0.5
        iou = (ink & lab).sum() / (ink | lab).sum()
        assert iou > 0.85, f"sample {i}: labels and augmented ink overlap by IoU {iou:.2f}"
        changed += not torch.equal(ly[i], labels[i])
    assert changed >= x.shape[0] - 1  # the geometry did move things


def test_brightness_contrast_is_linear_on_floats_without_wrapping():
    x = torch.rand(6, 1, 4, 16, 16) * 0.2 + 0.8  # near the top of [0, 1]
    cfg = only(brightness_contrast=1.0, max_brightness=0.3, max_contrast=0.3)
    y, _ = augment_batch(x, None, cfg, gen(5))
    for i in range(6):
        a = ((y[i] - y[i].mean()) * (x[i] - x[i].mean())).sum() / ((x[i] - x[i].mean()) ** 2).sum()
        b = y[i].mean() - a * x[i].mean()
        assert 0.7 - 1e-5 <= a <= 1.3 + 1e-5 and -0.3 - 1e-5 <= b <= 0.3 + 1e-5
        assert torch.allclose(y[i], a * x[i] + b, atol=1e-5)
    assert y.max() > 1.0  # no clipping or wrap-around of bright values


def test_gamma_keeps_order_and_range():
    x = torch.rand(6, 1, 4, 16, 16) * 2 - 0.5  # any float range, negatives included
    y, _ = augment_batch(x, None, only(gamma=1.0, max_gamma=0.3), gen(6))
    for i in range(6):
        order = torch.argsort(x[i].flatten())
        assert (y[i].flatten()[order].diff() >= -1e-6).all()
        assert torch.allclose(y[i].min(), x[i].min(), atol=1e-5) and torch.allclose(y[i].max(), x[i].max(), atol=1e-5)
    assert not torch.allclose(y, x, atol=1e-3)


def test_noise_has_the_configured_strength():
    x = torch.zeros(4, 1, 8, 32, 32)
    y, _ = augment_batch(x, None, only(noise=1.0, noise_std=0.1), gen(7))
    std = y.flatten(1).std(1)
    assert ((std > 0.1 * 0.2 * 0.9) & (std < 0.1 * 1.1)).all()


def test_blur_smooths_each_layer_and_keeps_the_mean():
    g = gen(8)
    x = torch.rand(4, 1, 3, 32, 32, generator=g)
    y, _ = augment_batch(x, None, only(blur=1.0), gen(9))
    for i in range(4):
        assert y[i].diff(dim=-1).abs().mean() < 0.8 * x[i].diff(dim=-1).abs().mean()
        assert abs(y[i].mean() - x[i].mean()) < 0.02


def test_holes_go_through_all_layers_and_spare_the_labels():
    x, labels = painted_batch(b=8)
    cfg = only(holes=4, hole_size=0.1, big_holes=1, big_hole_size=0.25)
    y, ly = augment_batch(x, labels, cfg, gen(10))
    assert torch.equal(ly, labels)
    holes = (y == 0).all(dim=2)  # (b, 1, y, x): zero in every layer
    assert torch.equal((y == 0).any(dim=2), holes)  # a hole is never partial in depth
    assert torch.equal(y[~holes[:, :, None].expand_as(y)], x[~holes[:, :, None].expand_as(x)])
    area = holes.flatten(1).float().mean(1)
    assert (area <= 4 * 0.1**2 + 0.25**2 + 1e-6).all() and (area > 0).sum() >= 6


def test_bad_batches_are_refused():
    with pytest.raises(ConfigError, match="batch, 1, z, y, x"):
        augment_batch(torch.rand(2, 8, 16, 16))
    with pytest.raises(ConfigError, match="float"):
        augment_batch(torch.zeros(2, 1, 8, 16, 16, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="ink labels"):
        augment_batch(torch.rand(2, 1, 8, 16, 16), torch.zeros(2, 1, 8, 8))


# ---------------------------------------------------------------- z-shifted views


class LayerVolume:
    """A fake segment whose voxel value tells its own (z, y, x); counts reads."""

    def __init__(self, shape=(14, 40, 40)):
        z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
        self.volume = (z * 10000 + y * 100 + x).astype(np.int32)
        self.shape = shape
        self.reads = 0

    def read_tile(self, z0, y, x, depth, size):
        self.reads += 1
        assert 0 <= z0 and z0 + depth <= self.shape[0]
        return self.volume[z0:z0 + depth, y:y + size, x:x + size]


def test_views_are_read_from_the_volume_with_independent_shifts():
    seg = LayerVolume()
    rng = np.random.default_rng(0)
    shifts = []
    for _ in range(40):
        v1, v2 = read_shifted_views(seg, 3, 5, 7, depth=8, size=16, max_shift=2, rng=rng)
        s = []
        for v in (v1, v2):
            assert v.shape == (8, 16, 16)
            start = int(v[0, 0, 0]) // 10000
            assert 3 <= start <= 5
            assert np.array_equal(v, seg.volume[start:start + 8, 5:21, 7:23])
            s.append(start - 3)
        shifts.append(tuple(s))
    assert seg.reads == 40  # both views from one read
    assert {a for a, _ in shifts} == {0, 1, 2} and {b for _, b in shifts} == {0, 1, 2}
    assert sum(a != b for a, b in shifts) > 10

    same = [read_shifted_views(seg, 0, 0, 0, 8, 16, max_shift=2, same_shift=True, rng=rng) for _ in range(10)]
    assert all(np.array_equal(a, b) for a, b in same)


def test_views_that_would_leave_the_volume_are_refused():
    seg = LayerVolume()
    read_shifted_views(seg, 4, 0, 0, depth=8, size=8, max_shift=2)  # layers 4..14: fits exactly
    with pytest.raises(ConfigError, match="needs layers 5..15, but the segment has 14"):
        read_shifted_views(seg, 5, 0, 0, depth=8, size=8, max_shift=2)


def test_views_from_a_real_segment(fragment_dir):
    from napari_vesuvius_pt.data.segment import open_segment

    seg = open_segment(fragment_dir)
    rng = np.random.default_rng(1)
    for _ in range(5):
        v1, v2 = read_shifted_views(seg, 2, 30, 40, depth=10, size=32, max_shift=2, rng=rng)
        for v in (v1, v2):
            matches = [s for s in range(3) if np.array_equal(v, np.asarray(seg.volume[2 + s:12 + s, 30:62, 40:72]))]
            assert matches, "a view is not a z-shifted crop of the volume"
