"""Spread statistics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vesuvius_pt.analysis.metrics import fbeta_sweep
from napari_vesuvius_pt.analysis.stats import (
    bootstrap_difference,
    mean_sd,
    metrics_from_bins,
    paired_difference,
    t_interval,
    tile_counts,
)
from napari_vesuvius_pt.errors import AnalysisInputError

T_975_2 = 4.302652729911275  # the t distribution's 97.5% quantile with 2 degrees of freedom (tables)


def test_mean_sd_by_hand():
    s = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.n == 4
    assert s.sd == pytest.approx(np.sqrt(5.0 / 3.0))  # squares of deviations 2.25+0.25+0.25+2.25 = 5, over n-1 = 3
    assert s.text() == "2.500 ± 1.291"
    assert mean_sd([0.7]).text() == "0.700" and mean_sd([0.7]).sd == 0.0
    with pytest.raises(AnalysisInputError):
        mean_sd([])


def test_paired_difference_whose_interval_includes_zero():
    # differences 0.10, 0.15, 0.05: mean 0.10, sd 0.05, half width t * 0.05 / sqrt(3)
    d = paired_difference("A", "B", [0.5, 0.6, 0.7], [0.4, 0.45, 0.65])
    half = T_975_2 * 0.05 / np.sqrt(3)
    assert d.mean == pytest.approx(0.10)
    assert d.seeds.low == pytest.approx(0.10 - half) and d.seeds.high == pytest.approx(0.10 + half)
    assert d.seeds.low == pytest.approx(-0.02421, abs=1e-5)
    assert not d.distinguishable and d.verdict.startswith("not distinguishable from zero")
    assert "A − B, F0.5: +0.100" in d.sentence()


def test_paired_difference_distinguishable_from_zero():
    # differences 0.10, 0.11, 0.09: mean 0.10, sd 0.01 -> 0.10 +- 0.02484
    d = paired_difference("vicreg", "random", [0.60, 0.62, 0.64], [0.50, 0.51, 0.55])
    assert d.seeds.low == pytest.approx(0.10 - T_975_2 * 0.01 / np.sqrt(3))
    assert d.seeds.low == pytest.approx(0.07516, abs=1e-5)
    assert d.distinguishable and d.verdict == "distinguishable from zero"
    # the same differences negated: distinguishable too, below zero
    neg = paired_difference("random", "vicreg", [0.50, 0.51, 0.55], [0.60, 0.62, 0.64])
    assert neg.distinguishable and neg.seeds.high < 0


def test_one_seed_has_no_t_interval():
    assert t_interval([0.1]) is None
    d = paired_difference("A", "B", [0.6], [0.5])
    assert d.seeds is None and not d.distinguishable


def test_tile_counts_by_hand():
    # a 2x4 plane in 2x2 tiles: tile 0 = columns 0-1, tile 1 = columns 2-3
    probs = np.array([[0.9, 0.2, 0.6, 0.6],
                      [0.9, 0.2, 0.05, 0.6]])
    labels = np.array([[1, 0, 1, 0],
                       [1, 0, 0, 0]])
    c = tile_counts(probs, labels, np.ones_like(labels, dtype=bool), tile=2)
    assert list(c.tiles) == [0, 1]
    assert c.pos.sum(1).tolist() == [2, 1] and c.neg.sum(1).tolist() == [2, 3]
    # tile 1 alone at threshold 0.5: predicted {0.6, 0.6, 0.6}, one of them ink -> precision 1/3, recall 1
    f, auc = metrics_from_bins(c.pos[1], c.neg[1], c.edges, c.thresholds)
    p, r = 1 / 3, 1.0
    assert f == pytest.approx(1.25 * p * r / (0.25 * p + r))
    # ink 0.6 vs background {0.6, 0.6, 0.05}: wins 0.5 + 0.5 + 1 over 3
    assert auc == pytest.approx(2.0 / 3.0)


def test_binned_metrics_match_the_exact_sweep():
    rng = np.random.default_rng(0)
    labels = rng.random((80, 96)) < 0.3
    probs = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1).astype(np.float16)
    scored = rng.random(labels.shape) < 0.9
    c = tile_counts(probs.astype(np.float64), labels, scored, tile=16)
    f, auc = metrics_from_bins(c.pos.sum(0), c.neg.sum(0), c.edges, c.thresholds)
    exact = fbeta_sweep(probs, labels, mask=scored)
    assert f == pytest.approx(exact.f05, abs=1e-12)  # F0.5 exact at the sweep's thresholds
    assert auc == pytest.approx(exact.auc, abs=2e-3)  # AUC from 256 bins


def test_bootstrap_of_identical_predictions_is_zero_and_of_a_better_one_excludes_zero():
    rng = np.random.default_rng(1)
    labels = rng.random((96, 96)) < 0.3
    noise = rng.random(labels.shape)
    good = np.clip(0.5 * labels + 0.5 * noise, 0, 1)
    poor = np.clip(0.1 * labels + 0.9 * noise, 0, 1)
    scored = np.ones_like(labels)
    cg, cp = (tile_counts(p, labels, scored, 16) for p in (good, poor))
    same = bootstrap_difference([cg], [cg], samples=300)
    assert same.f05.low == same.f05.high == 0.0 and same.n_tiles == 36
    better = bootstrap_difference([cg], [cp], samples=300)
    assert better.f05.low > 0 and better.auc.low > 0
    d = paired_difference("good", "poor", [0.8, 0.81, 0.79], [0.5, 0.52, 0.49], tiles=better.f05)
    assert d.distinguishable and "bootstrap over 36 tiles" in d.sentence()
