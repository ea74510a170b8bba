"""Validation at real size (issue 14): a fixed subsample of the validation tiles is scored each epoch
and all of them at the last, and the normalized tiles are read from the segment once, then cached."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vesuvius_pt.config import (
    AugmentConfig,
    DataConfig,
    EncoderConfig,
    FinetuneConfig,
    OptimConfig,
    TileConfig,
)
from napari_vesuvius_pt.engine import finetune
from napari_vesuvius_pt.engine.datasets import ValidationTiles, open_source
from napari_vesuvius_pt.engine.events import EpochDone
from napari_vesuvius_pt.errors import ConfigError

NO_AUGMENT = AugmentConfig(max_z_shift=0, flip=False, rotate90=False, shift_scale_rotate=0.0, grid_distortion=0.0,
                           brightness_contrast=0.0, gamma=0.0, noise=0.0, blur=0.0, holes=0, big_holes=0)
TILE = TileConfig(depth=16, size=32, stride=16, min_mask_fraction=0.5)


def test_subsample_is_fixed_and_tiles_are_cached(fragment_dir):
    src = open_source(str(fragment_dir), DataConfig(normalization="zscore"), TILE, 0, need_labels=True)
    n = len(src.grid)
    assert n > 20
    a = ValidationTiles(src, TILE.depth, TILE.size, subsample=10, seed=3)
    b = ValidationTiles(src, TILE.depth, TILE.size, subsample=10, seed=3)
    assert len(a.for_epoch(1, 3).grid) == 10 and len(a.for_epoch(3, 3).grid) == n
    np.testing.assert_array_equal(a.sample.grid.positions, b.sample.grid.positions)  # the same on resume
    assert not np.array_equal(a.sample.grid.positions,
                              ValidationTiles(src, TILE.depth, TILE.size, 10, seed=4).sample.grid.positions)
    assert not ValidationTiles(src, TILE.depth, TILE.size, subsample=0).subsampled
    assert not ValidationTiles(src, TILE.depth, TILE.size, subsample=n + 5).subsampled
    y, x = (int(v) for v in a.sample.grid.positions[0])
    first = a.tile(y, x)
    again = a.tile(y, x)
    assert again is first and a.reads == 1  # the second time from the cache
    expected = src.normalizer(src.segment.read_tile(src.z0, y, x, TILE.depth, TILE.size))
    np.testing.assert_array_equal(first, expected)
    small = ValidationTiles(src, TILE.depth, TILE.size, subsample=10, max_bytes=first.nbytes)
    for yy, xx in small.sample.grid.positions[:3]:
        small.tile(int(yy), int(xx))
    assert small.cached_bytes == first.nbytes and small.reads == 3  # the cap holds
    with pytest.raises(ConfigError, match="val_subsample"):
        ValidationTiles(src, TILE.depth, TILE.size, subsample=-1)


def test_finetune_scores_a_subsample_each_epoch_and_all_tiles_at_the_end(tmp_path, fragment_dir, fragment2_dir):
    cfg = FinetuneConfig(
        fragments=[str(fragment_dir)], val_fragment=str(fragment2_dir), out=str(tmp_path / "run"),
        encoder=EncoderConfig("resnet10", widen_factor=0.125), tile=TILE, data=DataConfig(normalization="zscore"),
        augment=NO_AUGMENT, optim=OptimConfig(name="adamw", lr=1e-3, warmup_epochs=0.0), epochs=3,
        steps_per_epoch=1, batch_size=4, device="cpu", val_subsample=6)
    epochs = [e for e in finetune(cfg) if isinstance(e, EpochDone)]
    tiles = [int(e.metrics["val_tiles"]) for e in epochs]
    full = len(open_source(str(fragment2_dir), cfg.data, TILE, 0, need_labels=True).grid)
    assert tiles == [6, 6, full] and full > 6
    assert all(e.metrics["val_seconds"] > 0 and 0 <= e.metrics["f05"] <= 1 for e in epochs)
