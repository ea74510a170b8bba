"""F0.5 sweep and AUC against hand computations and brute force."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest

from napari_vesuvius_pt.analysis import fbeta, fbeta_sweep, roc_auc
from napari_vesuvius_pt.errors import AnalysisInputError

# 8 pixels; hand computation in the test below
PROBS = np.array([0.05, 0.2, 0.35, 0.5, 0.55, 0.7, 0.9, 0.95])
LABELS = np.array([0, 0, 1, 0, 1, 1, 0, 1])


def test_fbeta_formula():
    assert fbeta(0.6, 0.75) == pytest.approx(1.25 * 0.6 * 0.75 / (0.25 * 0.6 + 0.75))
    assert fbeta(0.5, 0.5, beta=1.0) == pytest.approx(0.5)
    assert fbeta(0.0, 0.0) == 0.0
    np.testing.assert_allclose(fbeta(np.array([1.0, 0.0]), np.array([1.0, 0.0])), [1.0, 0.0])


def test_sweep_matches_a_hand_computation():
    m = fbeta_sweep(PROBS, LABELS)
    # prob >= 0.55 predicts {0.55, 0.7, 0.9, 0.95}: 3 ink of 4 predicted, 3 of 4 ink found
    assert m.threshold == pytest.approx(0.55)
    assert m.precision == pytest.approx(0.75)
    assert m.recall == pytest.approx(0.75)
    assert m.f05 == pytest.approx(0.75)
    # at 0.5 the background pixel at 0.5 is predicted too: P = 3/5, R = 3/4
    assert m.f05_at_05 == pytest.approx(1.25 * 0.6 * 0.75 / (0.25 * 0.6 + 0.75))  # 0.625
    # AUC: ink {.35,.55,.7,.95} beat background {.05,.2,.5,.9} in 2+3+3+4 = 12 of 16 pairs
    assert m.auc == pytest.approx(12 / 16)
    assert m.prevalence == pytest.approx(0.5)
    assert m.n == 8
    assert m.notes == ()


def test_same_result_for_float16_uint8_2d_and_masked_input():
    probs = PROBS + 0.012  # same order, but no value on a threshold, where float16/uint8 rounding decides
    reference = fbeta_sweep(probs, LABELS)
    assert (reference.f05, reference.threshold) == pytest.approx((0.75, 0.55))
    as_uint8 = np.round(probs * 255).astype(np.uint8)
    image = np.zeros((4, 4))
    labels = np.zeros((4, 4), dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3] = True
    image[mask], labels[mask] = probs, LABELS
    image[~mask], labels[~mask] = 0.99, 0  # outside the mask: confident false positives that must not count
    for m in (
        fbeta_sweep(probs.astype(np.float16), LABELS.astype(bool)),
        fbeta_sweep(as_uint8, LABELS, scale=255),
        fbeta_sweep(image, labels, mask=mask),
    ):
        assert (m.f05, m.threshold, m.auc, m.f05_at_05) == pytest.approx(
            (reference.f05, reference.threshold, reference.auc, reference.f05_at_05), abs=1e-3
        )


def test_auc_counts_ties_as_one_half_like_brute_force():
    rng = np.random.default_rng(0)
    probs = np.round(rng.random(400), 1)  # 11 distinct values: many ties
    labels = rng.random(400) < 0.3 + 0.4 * probs
    pos, neg = probs[labels], probs[~labels]
    wins = sum((p > q) + 0.5 * (p == q) for p, q in product(pos, neg))
    assert roc_auc(probs, labels) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)
    assert roc_auc(probs.astype(np.float16), labels) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.uint8])
def test_sweep_equals_a_pass_per_threshold(dtype):
    rng = np.random.default_rng(1)
    probs = rng.beta(0.7, 1.5, size=20_000)
    labels = rng.random(probs.size) < probs
    scale = 255 if dtype == np.uint8 else 1
    stored = np.round(probs * 255).astype(np.uint8) if dtype == np.uint8 else probs.astype(dtype)
    values = stored.astype(np.float64) / scale
    thresholds = np.round(np.arange(0.10, 0.96, 0.05), 2)
    f = []
    for t in thresholds:
        predicted = values >= t
        tp = np.sum(predicted & labels)
        precision = tp / max(predicted.sum(), 1)
        recall = tp / labels.sum()
        f.append(fbeta(precision, recall))
    m = fbeta_sweep(stored, labels, scale=scale)
    assert m.f05 == pytest.approx(max(f), abs=1e-12)
    assert m.threshold == thresholds[int(np.argmax(f))]


def test_no_ink_and_no_predictions_give_zero_not_nan():
    probs = np.linspace(0, 1, 50)
    m = fbeta_sweep(probs, np.zeros(50, dtype=bool))
    assert (m.f05, m.recall, m.f05_at_05, m.auc, m.prevalence) == (0.0, 0.0, 0.0, 0.5, 0.0)
    assert "no ink pixels" in m.notes[0]
    json.dumps(m.to_dict(), allow_nan=False)

    quiet = fbeta_sweep(np.full(50, 0.02), np.arange(50) % 2)  # ink present, nothing predicted
    assert (quiet.f05, quiet.precision, quiet.recall) == (0.0, 0.0, 0.0)
    assert quiet.auc == 0.5  # all scores tie
    assert any("reaches any threshold" in note for note in quiet.notes)
    d = quiet.to_dict()
    assert set(d) >= {"f05", "threshold", "precision", "recall", "auc", "f05_at_05", "prevalence", "n"}
    json.dumps(d, allow_nan=False)


def test_bad_input_raises_clear_errors():
    with pytest.raises(AnalysisInputError, match="same shape"):
        fbeta_sweep(np.zeros(4), np.zeros(5))
    with pytest.raises(AnalysisInputError, match="NaN"):
        fbeta_sweep(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(AnalysisInputError, match="scale=255"):
        fbeta_sweep(np.array([0, 200], dtype=np.uint8), np.array([0, 1]))
    with pytest.raises(AnalysisInputError, match="0/255"):
        fbeta_sweep(np.array([0.1, 0.9]), np.array([0, 255], dtype=np.uint8))
    with pytest.raises(AnalysisInputError, match="empty"):
        fbeta_sweep(np.zeros(4), np.zeros(4), mask=np.zeros(4, dtype=bool))
    with pytest.raises(AnalysisInputError, match="sigmoid"):
        roc_auc(np.array([-2.0, 3.0]), np.array([0, 1]))
