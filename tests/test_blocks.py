"""Block reductions, on hand-computed blocks: the mean rounds integers half up in their own dtype, the
majority counts a half-set block as set, the fraction averages partial blocks over what they hold, and
mean and majority drop the remainder rows and columns."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vesuvius_pt.data.blocks import block_fraction, block_reduce


def test_mean_rounds_half_up_in_the_input_dtype_and_drops_the_remainder():
    a = np.array([[1, 2, 7, 7, 9],
                  [2, 2, 7, 8, 9],
                  [9, 9, 9, 9, 9]], np.uint8)  # 3 x 5 -> one row, two columns of 2 x 2 blocks
    mean = block_reduce(a, 2, "mean")
    assert mean.dtype == np.uint8
    np.testing.assert_array_equal(mean, [[2, 7]])  # 7/4 = 1.75 -> 2, 29/4 = 7.25 -> 7
    np.testing.assert_array_equal(block_reduce(np.array([[1, 2], [2, 5]], np.uint16), 2, "mean"), [[3]])  # 2.5 up
    np.testing.assert_allclose(block_reduce(a.astype(np.float32), 2, "mean"), [[1.75, 7.25]])
    big = np.full((2, 2, 2), 65535, np.uint16)  # sums past the dtype: accumulated wider
    np.testing.assert_array_equal(block_reduce(big, 2, "mean"), [[[65535]], [[65535]]])
    assert block_reduce(a, 1, "mean") is a


def test_majority_sets_blocks_at_least_half_set():
    m = np.zeros((4, 7), bool)
    m[0, 0:2] = True  # block (0, 0): 2 of 4 -> set
    m[0, 2] = True  # block (0, 1): 1 of 4 -> not set
    m[3, 6] = True  # the remainder column: dropped
    np.testing.assert_array_equal(block_reduce(m, 2, "majority"), [[True, False, False], [False, False, False]])
    labels = (m * 255).astype(np.uint8)  # any nonzero value counts as set
    np.testing.assert_array_equal(block_reduce(labels, 2, "majority"), block_reduce(m, 2, "majority"))


def test_majority_at_a_factor_whose_doubled_count_passes_uint16():
    f = 200  # 40000 pixels a block: twice a full count does not fit in uint16
    m = np.ones((f, f), bool)
    assert block_reduce(m, f, "majority").tolist() == [[True]]
    m.ravel()[: f * f // 2 + 1] = False
    assert block_reduce(m, f, "majority").tolist() == [[False]]


def test_fraction_keeps_partial_blocks_and_matches_band_by_band():
    a = np.zeros((5, 5), np.uint8)
    a[4, 4] = 1  # alone in the 1 x 1 corner block
    a[0, 0] = 1
    frac = block_reduce(a, 2, "fraction")
    assert frac.dtype == np.float32 and frac.shape == (3, 3)
    assert frac[0, 0] == 0.25 and frac[2, 2] == 1.0 and frac[2, 0] == 0.0
    rng = np.random.default_rng(0)
    b = rng.random((37, 23)) < 0.3
    np.testing.assert_array_equal(block_fraction(b, 3, band_rows=6), block_fraction(b, 3))
    np.testing.assert_allclose(block_fraction(b, 3)[:12, :7],
                               b[:36, :21].reshape(12, 3, 7, 3).mean(axis=(1, 3)), rtol=1e-6)


def test_sum_and_bad_arguments():
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(block_reduce(a, 2, "sum"), [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    with pytest.raises(ValueError, match="unknown block reduction"):
        block_reduce(a, 2, "median")
    with pytest.raises(ValueError, match="at least 1"):
        block_reduce(a, 0, "mean")
