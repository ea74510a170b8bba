"""Score a prediction store against a fragment's ink labels: F0.5 at the best threshold of a sweep
(0.10-0.95, the winning Kaggle solutions' range) and at 0.5, precision, recall and ROC AUC.

Where: the papyrus mask, intersected with the region polygons when given. Grid: each prediction is
scored on its own stored grid. At a reduced output size (one pixel per ``r x r`` block of the plane)
the ink labels and the mask/region are average-pooled to that grid and thresholded at 0.5: a block is
ink when at least half of its pixels are, and is scored when at least half of it lies in the mask and
region (the training engine averages labels to the output size the same way). A full-resolution
prediction is scored pixel for pixel.

``skip_empty`` scores only tiles with some ink, as the seed method did: the plane is cut into the
model's tiles (``tile.size`` squares from the origin) and tiles without an ink pixel in the scored area
are left out.

``predict_and_evaluate`` is the Predict & compare job: the labels, the prediction's events, then its
scores, as events any front end can consume.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_vesuvius_pt.analysis.metrics import DEFAULT_THRESHOLDS, BinaryMetrics, fbeta_sweep
from napari_vesuvius_pt.config import DataConfig, PredictConfig, from_dict
from napari_vesuvius_pt.data.blocks import block_fraction
from napari_vesuvius_pt.engine.events import Event, Finished, LabelsReady, MetricsReady
from napari_vesuvius_pt.engine.prediction_store import PredictionStore, open_prediction
from napari_vesuvius_pt.engine.tiling import region_mask
from napari_vesuvius_pt.errors import RunError, SegmentError

METRIC_KEYS = ("f05", "threshold", "precision", "recall", "auc", "f05_at_05")


def _open_segment_for(store: PredictionStore, segment: Any, names: Sequence[str]) -> Any:
    if not isinstance(segment, (str, Path)):
        return segment
    from napari_vesuvius_pt.data.segment import open_from_config

    data = from_dict(DataConfig, dict(store.info(names[0]).get("data") or {}), where=f"{store.path}: data")
    return open_from_config(segment, data)


def _tiles_with_ink(ink: np.ndarray, tile: int) -> np.ndarray:
    """Per pixel: does the ``tile x tile`` square (from the origin) it lies in hold any ink?"""
    if tile <= 1:
        return ink
    has_ink = block_fraction(ink, tile) > 0
    return has_ink.repeat(tile, axis=0).repeat(tile, axis=1)[: ink.shape[0], : ink.shape[1]]


def evaluate(prediction: str | Path | PredictionStore, segment: Any, region: str | Path | None = None,
             skip_empty: bool = False, names: Sequence[str] | None = None,
             thresholds: Any = DEFAULT_THRESHOLDS, beta: float = 0.5,
             partial: bool = False) -> dict[str, BinaryMetrics]:
    """Metrics per encoder of ``prediction`` (a store or its path) against ``segment`` (a path, opened
    as the prediction read it, or an opened Segment).

    ``partial``: score a stopped prediction on the rows written so far instead of refusing it.
    """
    store = prediction if isinstance(prediction, PredictionStore) else open_prediction(prediction)
    names = list(names) if names else store.names
    if not names:
        raise SegmentError(f"{store.path} holds no predictions yet; run vesuvius-pt predict --out {store.path}")
    seg = _open_segment_for(store, segment, names)
    plane = tuple(int(s) for s in seg.shape[1:])
    store.check_segment(seg.name, plane, seg.path)
    if seg.inklabels is None:
        raise SegmentError(f"{seg.name} ({seg.path}) has no ink labels to evaluate against; "
                           "evaluate on a fragment with inklabels.png")
    where = np.asarray(seg.papyrus_mask(), dtype=bool)
    if region is not None:
        from napari_vesuvius_pt.data.tiles import load_regions

        where = where & region_mask(load_regions(region), plane, int(seg.downsample), seg.name)
        if not where.any():
            raise SegmentError(f"region {region} covers no papyrus of {seg.name}; draw it on the fragment")
    labels = np.asarray(seg.inklabels) > 0

    results: dict[str, BinaryMetrics] = {}
    pooled: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        info = store.info(name)
        grid = int(info.get("plane_scale", 1))
        if grid not in pooled:
            pooled[grid] = (block_fraction(labels, grid) >= 0.5, block_fraction(where, grid) >= 0.5)
        ink, scored = pooled[grid]
        array = store.array(name)
        if tuple(array.shape) != ink.shape:
            raise SegmentError(f"{store.path}/{name} has shape {tuple(array.shape)}, but {seg.name}'s plane "
                               f"{plane} at {grid}x{grid} pixels per value gives {ink.shape}")
        scored = scored.copy()
        done = store.done_rows(name)
        if done < array.shape[0]:
            if not partial:
                raise RunError(f"{store.path}/{name} is incomplete ({done} of {array.shape[0]} rows written); "
                               f"run the same vesuvius-pt predict again to finish it, or evaluate the part done")
            scored[done:] = False
        if skip_empty:
            tile = max(1, int((info.get("tile") or {}).get("size", grid)) // grid)
            scored &= _tiles_with_ink(ink & scored, tile)
        if not scored.any():
            raise SegmentError(f"nothing to score for {name}: no pixel of {seg.name} is in the mask"
                               + (" and region" if region is not None else "")
                               + (" with ink tiles" if skip_empty else "")
                               + (" in the rows written so far" if done < array.shape[0] else ""))
        raw = np.asarray(array[...])
        scale = 255.0 if raw.dtype == np.uint8 else 1.0
        results[name] = fbeta_sweep(raw, ink, beta=beta, thresholds=thresholds, mask=scored, scale=scale)
    return results


def metrics_as_json(results: dict[str, BinaryMetrics]) -> dict[str, dict[str, float]]:
    """One object per encoder with the keys f05, threshold, precision, recall, auc (and f05_at_05,
    prevalence, n)."""
    return {name: {**{k: getattr(m, k) for k in METRIC_KEYS}, "prevalence": m.prevalence, "n": m.n}
            for name, m in results.items()}


def labels_event(segment_path: str | Path) -> LabelsReady | None:
    """The segment's ink labels as an event (None when it has none)."""
    from napari_vesuvius_pt.data.segment import open_segment

    segment = open_segment(segment_path)
    if segment.inklabels is None:
        return None
    return LabelsReady(segment.name, np.asarray(segment.inklabels, dtype=np.uint8))


def predict_and_evaluate(config: PredictConfig, skip_empty: bool = False) -> Iterator[Event]:
    """Predict, then score: labels first (so a viewer shows them at once), the prediction's events, then
    a ``MetricsReady`` with ``evaluate``'s results for the arrays this prediction wrote. A stopped
    prediction (no ``Finished``) is not scored."""
    from napari_vesuvius_pt.engine.prediction import predict

    labels = labels_event(config.segment)
    if labels is not None:
        yield labels
    finished = None
    for event in predict(config):
        if isinstance(event, Finished):
            finished = event
        yield event
    if finished is None:
        return
    if labels is None:
        yield MetricsReady({}, note="the segment has no ink labels: no metrics")
        return
    names = list(finished.summary.get("arrays", {})) or None
    yield MetricsReady(evaluate(config.out, config.segment, region=config.region, skip_empty=skip_empty, names=names))
