"""Normalizations by name: the explicit Kaggle convention, fitted minmax/zscore, per-tile instance."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vesuvius_pt.config import DataConfig
from napari_vesuvius_pt.data import open_segment
from napari_vesuvius_pt.data.normalize import (
    NORMALIZATIONS,
    Normalizer,
    fit_normalizer,
    kaggle_normalize,
    normalizer_from_config,
    sample_voxels,
)
from napari_vesuvius_pt.errors import ConfigError, SegmentError


def test_kaggle_is_shift_clip_divide():
    raw = np.array([0, 0x12FF, 0x1300, 200 << 8, (201 << 8) + 5, 65535], np.uint16)
    # cv2.imread(path, 0) on 16-bit layers kept the high byte: 0, 0x12, 0x13, 200, 201, 255
    expected = np.array([0, 0x12, 0x13, 200, 200, 200], np.float32) / 255
    out = kaggle_normalize(raw)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # uint8 layers are already 8-bit: no shift
    np.testing.assert_array_equal(kaggle_normalize(np.array([18, 199, 250], np.uint8)),
                                  np.array([18, 199, 200], np.float32) / 255)
    np.testing.assert_array_equal(Normalizer("kaggle")(raw), expected)
    with pytest.raises(SegmentError, match="uint8 or uint16"):
        kaggle_normalize(np.zeros(3, np.float32))


def _volume_with_outliers():
    """Papyrus values 1000..1999 inside the mask, huge values outside it (which fitting must ignore)."""
    rng = np.random.default_rng(0)
    vol = rng.integers(1000, 2000, (8, 96, 96)).astype(np.uint16)
    mask = np.zeros((96, 96), bool)
    mask[16:80, 16:80] = True
    vol[:, ~mask] = 60000
    return vol, mask


def test_minmax_fits_percentiles_inside_the_mask():
    vol, mask = _volume_with_outliers()
    norm = fit_normalizer("minmax", vol, mask, samples=16, seed=0)
    assert norm.name == "minmax"
    assert norm.params["low"] == pytest.approx(1010, abs=8)  # 1st percentile of U(1000, 2000)
    assert norm.params["high"] == pytest.approx(1990, abs=8)
    out = norm(vol)
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert out.min() == 0.0 and out.max() == 1.0  # clipped
    inside = out[:, mask]
    assert 0.02 > (inside == 0).mean() > 0.001 and 0.02 > (inside == 1).mean() > 0.001


def test_zscore_fits_mean_and_std_inside_the_mask():
    vol, mask = _volume_with_outliers()
    norm = fit_normalizer("zscore", vol, mask, samples=16, seed=0)
    assert norm.params["mean"] == pytest.approx(1499.5, abs=10)
    assert norm.params["std"] == pytest.approx(1000 / np.sqrt(12), rel=0.03)
    inside = norm(vol)[:, mask]
    assert abs(inside.mean()) < 0.05 and inside.std() == pytest.approx(1.0, abs=0.05)


def test_instance_and_none():
    rng = np.random.default_rng(1)
    batch = (rng.normal(5000, 300, (3, 4, 16, 16)) + np.arange(3)[:, None, None, None] * 10000).astype(np.uint16)
    out = Normalizer("instance")(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)  # each tile on its own
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-3)
    tile = batch[1]
    np.testing.assert_allclose(Normalizer("instance")(tile), out[1], atol=1e-5)
    raw = Normalizer("none")(tile)
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, tile.astype(np.float32))
    # fitting a parameter-free normalization reads nothing
    assert fit_normalizer("instance", None).params == {} and fit_normalizer("kaggle", None).name == "kaggle"


def test_normalizer_round_trip_and_validation():
    norm = Normalizer("minmax", {"low": 10, "high": 250})
    again = Normalizer.from_dict(norm.to_dict())
    assert again == norm and again.params == {"low": 10.0, "high": 250.0}
    assert set(NORMALIZATIONS) == {"none", "kaggle", "minmax", "zscore", "instance", "div255"}
    with pytest.raises(ConfigError, match="unknown normalization 'gamma'"):
        Normalizer("gamma")
    with pytest.raises(ConfigError, match="needs parameters mean, std"):
        Normalizer("zscore", {"mean": 1.0})
    with pytest.raises(ConfigError, match="high > low"):
        Normalizer("minmax", {"low": 5, "high": 5})
    with pytest.raises(SegmentError, match="constant"):
        fit_normalizer("zscore", np.full((2, 32, 32), 7, np.uint16))


def test_from_config_fits_or_reuses_saved_params(fragment_dir, scroll_dir):
    fragment, scroll = open_segment(fragment_dir), open_segment(scroll_dir)
    fitted = normalizer_from_config(DataConfig(normalization="zscore"), fragment)
    assert fitted == fit_normalizer("zscore", fragment.volume, fragment.mask)
    # what a run saved in its config is used as is, not refitted on another segment
    saved = DataConfig(normalization="zscore", normalization_params=dict(fitted.params))
    assert normalizer_from_config(saved, scroll) == fitted
    assert normalizer_from_config(DataConfig(normalization="kaggle"), scroll).params == {}

    # the point of fitting per segment: scroll segment and fragment intensities meet after zscore
    raw_f = sample_voxels(fragment.volume, fragment.mask, samples=8, seed=3)
    raw_s = sample_voxels(scroll.volume, scroll.mask, samples=8, seed=3)
    assert raw_s.mean() - raw_f.mean() > 3000
    norm_f = normalizer_from_config(DataConfig(normalization="zscore"), fragment)
    norm_s = normalizer_from_config(DataConfig(normalization="zscore"), scroll)
    for values, norm in ((raw_f, norm_f), (raw_s, norm_s)):
        out = norm(values)
        assert abs(out.mean()) < 0.1 and out.std() == pytest.approx(1.0, abs=0.1)
