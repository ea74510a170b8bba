"""Score a prediction store against a fragment's ink labels: F0.5 at the best threshold of a sweep
(0.10-0.95, the winning Kaggle solutions' range) and at 0.5, precision, recall and ROC AUC.

Where: the papyrus mask, intersected with the region polygons when given (or with the segment's own
validation mask, ``region=VALIDATION_MASK``), inside the segment's supervision mask and outside its
ignore mask when it has them (villa's layout; ``masks=False`` scores without them). Grid: each prediction is
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
from dataclasses import dataclass
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
VALIDATION_MASK = "validation_mask"  # as a region: the segment's own validation mask


def scored_area(seg: Any, region: str | Path | None = None, masks: bool = True) -> np.ndarray:
    """The pixels of ``seg`` that are scored: papyrus (within the supervision mask, outside the ignore
    mask, with ``masks``), within ``region`` (polygons, or ``VALIDATION_MASK``)."""
    where = np.asarray(seg.scored_mask() if masks else seg.papyrus_mask(), dtype=bool)
    if region is None:
        return where
    if str(region) == VALIDATION_MASK:
        if getattr(seg, "validation_mask", None) is None:
            raise SegmentError(f"{seg.name} ({seg.path}) has no validation mask (<id>_validation_mask.png or .zarr)")
        where = where & seg.validation_mask
    else:
        from napari_vesuvius_pt.data.tiles import load_regions

        where = where & region_mask(load_regions(region), where.shape, int(seg.downsample), seg.name)
    if not where.any():
        raise SegmentError(f"region {region} covers no scored papyrus of {seg.name}; draw it on the fragment")
    return where


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


@dataclass(frozen=True)
class ScoredPlane:
    """One encoder's prediction on its stored grid with what it is scored against there."""

    name: str
    raw: np.ndarray  # the stored values (float16 probabilities or uint8 probability x 255)
    scale: float  # 255 for uint8, else 1
    ink: np.ndarray  # bool, the labels pooled to the grid
    scored: np.ndarray  # bool, the pixels that count (mask, region, rows written, ink tiles)
    grid: int  # full-resolution pixels per stored value along each axis
    tile: int  # the model's tile size in full-resolution pixels (0 when unknown)

    @property
    def probabilities(self) -> np.ndarray:
        return self.raw.astype(np.float32) / np.float32(self.scale)


def open_labeled(prediction: str | Path | PredictionStore, segment: Any, names: Sequence[str] | None = None
                 ) -> tuple[PredictionStore, list[str], Any]:
    """The prediction store, the encoders to score (``names`` or all) and their labeled segment, checked
    to match the store's plane; :class:`SegmentError` when there is nothing to score against."""
    store = prediction if isinstance(prediction, PredictionStore) else open_prediction(prediction)
    names = list(names) if names else store.names
    if not names:
        raise SegmentError(f"{store.path} holds no predictions yet; run vesuvius-pt predict --out {store.path}")
    seg = _open_segment_for(store, segment, names)
    store.check_segment(seg.name, tuple(int(s) for s in seg.shape[1:]), seg.path)
    if seg.inklabels is None:
        raise SegmentError(f"{seg.name} ({seg.path}) has no ink labels to score against; "
                           "use a fragment with inklabels.png")
    return store, names, seg


def scored_planes(prediction: str | Path | PredictionStore, segment: Any, region: str | Path | None = None,
                  skip_empty: bool = False, names: Sequence[str] | None = None,
                  partial: bool = False, masks: bool = True) -> Iterator[ScoredPlane]:
    """Each encoder of ``prediction`` on its grid with its pooled labels and scored area, as
    ``evaluate`` scores them (see the module docstring); arguments as for ``evaluate``."""
    store, names, seg = open_labeled(prediction, segment, names)
    plane = tuple(int(s) for s in seg.shape[1:])
    where = scored_area(seg, region, masks)
    labels = np.asarray(seg.inklabels) > 0

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
        tile_px = int((info.get("tile") or {}).get("size", 0) or 0)
        if skip_empty:
            tile = max(1, (tile_px or grid) // grid)
            scored &= _tiles_with_ink(ink & scored, tile)
        if not scored.any():
            raise SegmentError(f"nothing to score for {name}: no pixel of {seg.name} is in the mask"
                               + (" and region" if region is not None else "")
                               + (" with ink tiles" if skip_empty else "")
                               + (" in the rows written so far" if done < array.shape[0] else ""))
        raw = np.asarray(array[...])
        scale = 255.0 if raw.dtype == np.uint8 else 1.0
        yield ScoredPlane(name, raw, scale, ink, scored, grid, tile_px)


def evaluate(prediction: str | Path | PredictionStore, segment: Any, region: str | Path | None = None,
             skip_empty: bool = False, names: Sequence[str] | None = None,
             thresholds: Any = DEFAULT_THRESHOLDS, beta: float = 0.5,
             partial: bool = False, masks: bool = True) -> dict[str, BinaryMetrics]:
    """Metrics per encoder of ``prediction`` (a store or its path) against ``segment`` (a path, opened
    as the prediction read it, or an opened Segment).

    ``partial``: score a stopped prediction on the rows written so far instead of refusing it.
    ``masks``: honour the segment's supervision and ignore masks (see the module docstring).
    """
    return {p.name: fbeta_sweep(p.raw, p.ink, beta=beta, thresholds=thresholds, mask=p.scored, scale=p.scale)
            for p in scored_planes(prediction, segment, region, skip_empty, names, partial, masks)}


def baseline_rows(prediction: str | Path | PredictionStore | None, segment: Any,
                  region: str | Path | None = None, skip_empty: bool = False,
                  train_fragments: Sequence[str | Path] | None = None,
                  method: str = "lda") -> dict[str, BinaryMetrics]:
    """The baselines beside the encoders' rows: ``"all ink"`` always, and ``"linear z-profile"`` (the
    per-pixel linear model on 5x5-smoothed z-profiles, ``engine.baselines``) when it has pixels to
    train on: the segment outside ``region`` (with a region), plus any ``train_fragments``.

    ``prediction`` (optional) gives how the segment was read (z range, downsampling) and the tile size
    for ``skip_empty``; the baseline z-scores each segment itself. Scored at full resolution, on the
    same pixels as ``evaluate`` (mask and region, ink tiles with ``skip_empty``).
    """
    from napari_vesuvius_pt.analysis.baseline import ALL_INK_NAME, all_ink_metrics
    from napari_vesuvius_pt.data.segment import open_from_config
    from napari_vesuvius_pt.engine.baselines import DEFAULT_DATA, linear_baseline

    data, tile = DEFAULT_DATA, 0
    if prediction is not None:
        store = prediction if isinstance(prediction, PredictionStore) else open_prediction(prediction)
        if store.names:
            info = store.info(store.names[0])
            saved = from_dict(DataConfig, dict(info.get("data") or {}), where=f"{store.path}: data")
            data = DataConfig(z_range=saved.z_range, reverse=saved.reverse, downsample=saved.downsample,
                              normalization="zscore")
            tile = int((info.get("tile") or {}).get("size", 0) or 0)
    path = segment if isinstance(segment, (str, Path)) else segment.path
    train = [str(p) for p in (train_fragments or ())]
    if region is not None or train:
        result = linear_baseline([path, *train] if region is not None else train,
                                 val_fragment=None if region is not None else path,
                                 val_region=region, data=data, method=method,
                                 skip_empty=skip_empty, tile=tile or 64)
        return result.rows
    seg = open_from_config(path, data)
    if seg.inklabels is None:
        raise SegmentError(f"{seg.name} ({seg.path}) has no ink labels to score baselines against")
    where = scored_area(seg)
    labels = np.asarray(seg.inklabels) > 0
    if skip_empty:
        where &= _tiles_with_ink(labels & where, max(1, tile or 64))
    return {ALL_INK_NAME: all_ink_metrics(labels, where)}


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
