"""Evaluating a prediction store against the fragment's ink labels: the numbers match a hand
computation, the labels are pooled to the prediction's grid, and mismatched inputs are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from napari_vesuvius_pt.config import DataConfig, PredictConfig, to_dict
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.data.tiles import save_regions
from napari_vesuvius_pt.engine.evaluation import evaluate, metrics_as_json, predict_and_evaluate
from napari_vesuvius_pt.engine.events import Finished, LabelsReady, MetricsReady, Started, TilesDone
from napari_vesuvius_pt.engine.prediction_store import PredictionStore, SegmentInfo, encode
from napari_vesuvius_pt.errors import RunError, SegmentError

THRESHOLDS = np.round(np.arange(0.10, 0.96, 0.05), 2)


def write_prediction(path, segment, values: np.ndarray, grid: int, name: str = "enc", dtype: str = "float16",
                     finish: bool = True) -> PredictionStore:
    """A prediction store holding ``values`` (probabilities on a ``grid``-pixel grid), as predict writes it."""
    store = PredictionStore.create(path, SegmentInfo.from_segment(segment))
    chunk_rows = 8
    attrs = {"plane_scale": grid, "tile": {"depth": 8, "size": 32}, "data": to_dict(DataConfig()),
             "scale": [grid, grid], "translate": [(grid - 1) / 2] * 2}
    writer = store.start_array(name, values.shape, (chunk_rows, values.shape[1]), dtype, attrs, run={})
    if finish:
        writer.write_band(encode(values, dtype))
        writer.finish()
    else:
        writer.write_band(encode(values[:chunk_rows], dtype))
    return store


def hand_metrics(probs: np.ndarray, ink: np.ndarray) -> dict[str, float]:
    """F0.5 over the sweep by counting, and AUC by the rank-sum formula."""
    best = None
    for t in THRESHOLDS:
        predicted = probs >= t
        tp = np.sum(predicted & ink)
        fp = np.sum(predicted & ~ink)
        fn = np.sum(~predicted & ink)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn)
        f = 1.25 * p * r / (0.25 * p + r) if p + r else 0.0
        if best is None or f > best["f05"]:
            best = {"f05": f, "threshold": t, "precision": p, "recall": r}
    ranks = rankdata(probs)
    n_pos, n_neg = ink.sum(), (~ink).sum()
    best["auc"] = (ranks[ink].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return best


@pytest.fixture(scope="module")
def fragment(fragment_dir):
    return open_segment(fragment_dir)


def noisy_prediction(fragment, grid: int, seed: int = 0) -> np.ndarray:
    """Ink labels pooled to the grid, blurred into probabilities with noise: a plausible prediction."""
    from napari_vesuvius_pt.data.blocks import block_fraction

    rng = np.random.default_rng(seed)
    frac = block_fraction(fragment.inklabels, grid)
    return np.clip(0.15 + 0.6 * frac + 0.25 * rng.standard_normal(frac.shape), 0, 1).astype(np.float32)


def test_f05_matches_a_hand_computation_on_the_reduced_grid(fragment, tmp_path):
    values = noisy_prediction(fragment, 4)
    store = write_prediction(tmp_path / "p.zarr", fragment, values, grid=4)
    result = evaluate(store, fragment)["enc"]

    # by hand: labels and mask average-pooled to 4x4 blocks, then >= 0.5
    h, w = values.shape
    pad = ((0, h * 4 - fragment.shape[1]), (0, w * 4 - fragment.shape[2]))
    labels = np.pad(fragment.inklabels.astype(float), pad).reshape(h, 4, w, 4).mean((1, 3)) >= 0.5
    mask = np.pad(fragment.papyrus_mask().astype(float), pad).reshape(h, 4, w, 4).mean((1, 3)) >= 0.5
    stored = values.astype(np.float16).astype(np.float64)
    expected = hand_metrics(stored[mask], labels[mask])
    assert result.n == mask.sum()
    for key in ("f05", "threshold", "precision", "recall", "auc"):
        assert getattr(result, key) == pytest.approx(expected[key], abs=1e-9), key
    predicted = stored[mask] >= 0.5  # and at the fixed threshold 0.5
    tp = np.sum(predicted & labels[mask])
    p, r = tp / predicted.sum(), tp / labels[mask].sum()
    assert result.f05_at_05 == pytest.approx(1.25 * p * r / (0.25 * p + r))
    assert result.f05 >= result.f05_at_05


def test_region_skip_empty_and_uint8(fragment, fragment_dir, tmp_path):
    values = noisy_prediction(fragment, 1, seed=1)
    write_prediction(tmp_path / "f.zarr", fragment, values, grid=1, name="f16")
    store = write_prediction(tmp_path / "f.zarr", fragment, values, grid=1, name="u8", dtype="uint8")
    region = save_regions(tmp_path / "r.json", [np.array([[20, 20], [20, 170], [120, 170], [120, 20]])])

    res = evaluate(tmp_path / "f.zarr", fragment_dir, region=region)  # a path: opened as the prediction read it
    inside = np.zeros(fragment.shape[1:], bool)
    inside[20:121, 20:171] = True  # the rasterized rectangle, outline included
    inside &= fragment.papyrus_mask()
    stored = values.astype(np.float16).astype(np.float64)
    expected = hand_metrics(stored[inside], fragment.inklabels[inside] > 0)
    assert res["f16"].f05 == pytest.approx(expected["f05"]) and res["f16"].n == inside.sum()
    assert res["u8"].f05 == pytest.approx(res["f16"].f05, abs=0.02)  # 1/255 quantization
    assert res["u8"].auc == pytest.approx(res["f16"].auc, abs=0.01)

    # skipping 32 x 32 tiles without ink: only tiles with some ink are scored
    skip = evaluate(store, fragment, skip_empty=True, names=["f16"])["f16"]
    ink = (fragment.inklabels > 0) & fragment.papyrus_mask()
    tiles = np.zeros_like(ink)
    for y in range(0, ink.shape[0], 32):
        for x in range(0, ink.shape[1], 32):
            tiles[y:y + 32, x:x + 32] = ink[y:y + 32, x:x + 32].any()
    keep = tiles & fragment.papyrus_mask()
    assert keep.sum() < fragment.papyrus_mask().sum()
    assert skip.n == keep.sum()
    assert skip.f05 == pytest.approx(hand_metrics(stored[keep], ink[keep])["f05"])

    table = metrics_as_json(res)
    assert json.loads(json.dumps(table))["f16"]["threshold"] == res["f16"].threshold


def test_mismatched_or_unfinished_predictions_are_refused(fragment, fragment2_dir, tmp_path):
    values = noisy_prediction(fragment, 4)
    store = write_prediction(tmp_path / "p.zarr", fragment, values, grid=4)
    with pytest.raises(SegmentError, match="holds predictions of segment"):
        evaluate(store, fragment2_dir)
    far = save_regions(tmp_path / "far.json", [np.array([[900, 900], [900, 990], [990, 990]])])
    with pytest.raises(SegmentError, match="lies outside"):
        evaluate(store, fragment, region=far)

    part = write_prediction(tmp_path / "part.zarr", fragment, values, grid=4, finish=False)
    with pytest.raises(RunError, match="incomplete"):
        evaluate(part, fragment)
    partial = evaluate(part, fragment, partial=True)["enc"]
    assert 0 < partial.n < evaluate(store, fragment)["enc"].n

    with pytest.raises(SegmentError, match="not found"):
        evaluate(tmp_path / "missing.zarr", fragment)


class FakePredict:
    """Stands in for engine.prediction.predict: writes ``values`` as the array "enc" and yields like it."""

    def __init__(self, fragment, values):
        self.fragment, self.values, self.closed = fragment, values, False

    def __call__(self, config):
        try:
            yield Started(run_dir=Path(config.out), device="cpu", total_steps=1)
            write_prediction(config.out, self.fragment, self.values, grid=4)
            yield TilesDone("enc", 1, 1)
            yield Finished(run_dir=Path(config.out), summary={"arrays": {"enc": "enc"}})
        except GeneratorExit:
            self.closed = True
            raise


def test_predict_and_evaluate_shows_the_labels_first_then_scores_what_it_predicted(
        fragment, fragment_dir, scroll_dir, tmp_path, monkeypatch):
    import napari_vesuvius_pt.engine.prediction as prediction

    fake = FakePredict(fragment, noisy_prediction(fragment, 4))
    monkeypatch.setattr(prediction, "predict", fake)
    config = PredictConfig(checkpoints=["enc.pt"], segment=str(fragment_dir), out=str(tmp_path / "p.zarr"))
    events = list(predict_and_evaluate(config))
    assert [type(e) for e in events] == [LabelsReady, Started, TilesDone, Finished, MetricsReady]
    assert events[0].name == fragment.name and np.array_equal(events[0].labels, fragment.inklabels)
    assert events[-1].metrics == evaluate(config.out, fragment_dir)  # the scores vesuvius-pt evaluate gives
    assert list(events[-1].metrics) == ["enc"] and events[-1].note == ""

    # stopped before it finished: the prediction is closed, and nothing is scored
    config = dataclasses.replace(config, out=str(tmp_path / "stopped.zarr"))
    run = predict_and_evaluate(config)
    assert isinstance(next(run), LabelsReady) and isinstance(next(run), Started)
    run.close()
    assert fake.closed

    # a segment without ink labels: the prediction, then a note instead of scores
    config = dataclasses.replace(config, segment=str(scroll_dir), out=str(tmp_path / "scroll.zarr"))
    monkeypatch.setattr(prediction, "predict", lambda cfg: iter([Finished(run_dir=None, summary={})]))
    events = list(predict_and_evaluate(config))
    assert [type(e) for e in events] == [Finished, MetricsReady]
    assert events[-1].metrics == {} and "no ink labels" in events[-1].note
