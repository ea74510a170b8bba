"""Encoders compared on one fragment: what the comparison view (``ui/compare.py``) shows, without Qt.

``load_comparison(prediction, segment, region)`` reads every encoder of a prediction store on its stored
grid, with the fragment's ink labels and the scored area (papyrus mask ∩ region) pooled to that grid
exactly as ``engine.evaluation.evaluate`` pools them, and gives:

- ``rows()``: the table, one row per encoder (mean ± sd over probe seeds when the store holds several
  seeds of an encoder, named ``<encoder> seed<N>`` / ``<encoder>-seed<N>``), then the baselines: the
  all-ink row (F0.5 = 1.25 p / (0.25 p + 1) at prevalence p, recall 1, AUC 0.5) and, when
  ``engine.evaluation.baseline_rows`` exists, the rows it returns (e.g. the linear z-profile model);
- ``at_threshold(t)``: F0.5 / precision / recall of each encoder with pixels ``>= t`` called ink;
- ``curves(name)``: ROC and precision-recall curves (256 thresholds);
- ``warnings()``: the region holds no ink or only ink; an encoder scores at (or below) the all-ink
  baseline (its F0.5 within ``AT_BASELINE`` of it: it has learned nothing a constant could not say).

Memory: the arrays are the stored grids (the model's output size), read once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.analysis.metrics import BinaryMetrics, fbeta, fbeta_sweep
from napari_vesuvius_pt.data.blocks import block_fraction
from napari_vesuvius_pt.engine.prediction_store import PredictionStore, decode
from napari_vesuvius_pt.engine.tiling import region_mask
from napari_vesuvius_pt.errors import SegmentError

ALL_INK = "all ink"
AT_BASELINE = 0.01  # an encoder whose F0.5 is within this of the all-ink F0.5 is "at the baseline"
SEED_PATTERN = re.compile(r"^(?P<encoder>.+?)[ _-]+seed[ _-]?(?P<seed>\d+)$", re.IGNORECASE)
CURVE_BINS = 256


def all_ink_f05(prevalence: float, beta: float = 0.5) -> float:
    """F-beta of calling every pixel ink: precision p, recall 1 (1.25 p / (0.25 p + 1) for beta 0.5)."""
    return float(fbeta(prevalence, 1.0 if prevalence > 0 else 0.0, beta))


def all_ink_row(prevalence: float, n: int, beta: float = 0.5) -> BinaryMetrics:
    return BinaryMetrics(f05=all_ink_f05(prevalence, beta), threshold=0.0, precision=float(prevalence),
                         recall=1.0 if prevalence > 0 else 0.0, auc=0.5, f05_at_05=all_ink_f05(prevalence, beta),
                         prevalence=float(prevalence), n=int(n), beta=beta,
                         notes=("every pixel called ink",))


def encoder_of(name: str) -> str:
    """The encoder a prediction name belongs to: ``vicreg seed2`` -> ``vicreg``; others unchanged."""
    m = SEED_PATTERN.match(name)
    return m.group("encoder") if m else name


@dataclass(frozen=True)
class Row:
    """One table row: the mean over seeds (``sd`` is 0 with one seed) of each metric."""

    name: str
    mean: dict[str, float]
    sd: dict[str, float]
    seeds: int
    baseline: bool = False


@dataclass
class EncoderPrediction:
    name: str
    probabilities: np.ndarray  # float32 (h, w) on the stored grid
    ink: np.ndarray  # bool, same grid
    scored: np.ndarray  # bool, same grid
    metrics: BinaryMetrics
    layer_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    store_path: Path
    segment_name: str
    predictions: dict[str, EncoderPrediction]  # every stored prediction (each seed)
    baselines: dict[str, BinaryMetrics]
    region_bbox: tuple[float, float, float, float] | None  # (y0, x0, y1, x1) in full-resolution pixels
    segment: Any = None  # the opened Segment
    notes: list[str] = field(default_factory=list)  # e.g. why a baseline is missing

    @property
    def encoders(self) -> dict[str, list[str]]:
        """encoder -> its prediction names (seeds), in store order."""
        groups: dict[str, list[str]] = {}
        for name in self.predictions:
            groups.setdefault(encoder_of(name), []).append(name)
        return groups

    @property
    def prevalence(self) -> float:
        first = next(iter(self.predictions.values()))
        return first.metrics.prevalence

    def rows(self) -> list[Row]:
        keys = ("f05", "threshold", "precision", "recall", "auc")
        out = []
        for encoder, names in self.encoders.items():
            values = np.array([[getattr(self.predictions[n].metrics, k) for k in keys] for n in names])
            sd = values.std(axis=0, ddof=1) if len(names) > 1 else np.zeros(len(keys))
            out.append(Row(encoder, dict(zip(keys, values.mean(0).tolist())), dict(zip(keys, sd.tolist())),
                           len(names)))
        for name, m in self.baselines.items():
            out.append(Row(name, {k: float(getattr(m, k)) for k in keys}, dict.fromkeys(keys, 0.0), 1, baseline=True))
        return out

    def at_threshold(self, threshold: float, beta: float = 0.5) -> dict[str, dict[str, float]]:
        """Per prediction: precision, recall and F-beta with ``probability >= threshold`` called ink."""
        out = {}
        for name, p in self.predictions.items():
            called = (p.probabilities >= threshold) & p.scored
            ink = p.ink & p.scored
            tp = float(np.count_nonzero(called & ink))
            n_called, n_ink = float(np.count_nonzero(called)), float(np.count_nonzero(ink))
            precision = tp / n_called if n_called else 0.0
            recall = tp / n_ink if n_ink else 0.0
            out[name] = {"f05": float(fbeta(precision, recall, beta)), "precision": precision, "recall": recall}
        return out

    def curves(self, name: str) -> dict[str, np.ndarray]:
        """ROC (fpr, tpr) and precision-recall (recall, precision) of one prediction over 256 thresholds."""
        p = self.predictions[name]
        probs, ink = p.probabilities[p.scored], p.ink[p.scored]
        bins = np.clip((probs * (CURVE_BINS - 1)).round().astype(np.int64), 0, CURVE_BINS - 1)
        pos = np.bincount(bins[ink], minlength=CURVE_BINS)[::-1].cumsum()
        neg = np.bincount(bins[~ink], minlength=CURVE_BINS)[::-1].cumsum()
        n_pos, n_neg = max(int(pos[-1]), 1), max(int(neg[-1]), 1)
        tpr, fpr = pos / n_pos, neg / n_neg
        called = pos + neg
        precision = np.divide(pos, called, out=np.ones(CURVE_BINS), where=called > 0)
        return {"fpr": np.r_[0.0, fpr], "tpr": np.r_[0.0, tpr], "recall": tpr, "precision": precision}

    def difference(self, a: str, b: str) -> np.ndarray:
        """Probability of ``a`` minus that of ``b`` (same grid), 0 outside the scored area."""
        pa, pb = self.predictions[a], self.predictions[b]
        if pa.probabilities.shape != pb.probabilities.shape:
            raise SegmentError(f"{a} {pa.probabilities.shape} and {b} {pb.probabilities.shape} are on different "
                               "grids; predict both with the same output size to compare them pixel for pixel")
        return np.where(pa.scored, pa.probabilities - pb.probabilities, 0.0).astype(np.float32)

    def warnings(self) -> list[str]:
        out = []
        p = self.prevalence
        if p == 0:
            out.append("the region holds no ink: F0.5, precision and recall are 0 for every encoder and the AUC "
                       "is undefined; choose a region with ink")
        elif p == 1:
            out.append("the region holds only ink: every encoder scores like the all-ink baseline; choose a "
                       "region with background too")
        else:
            base = all_ink_f05(p)
            for row in self.rows():
                if not row.baseline and row.mean["f05"] <= base + AT_BASELINE:
                    out.append(f"{row.name} scores at the all-ink baseline (F0.5 {row.mean['f05']:.3f} vs "
                               f"{base:.3f} for calling every pixel ink): it has not learned to find ink here")
        return out


def _polygons(region: Any) -> list[np.ndarray] | None:
    if region is None:
        return None
    if isinstance(region, (str, Path)):
        from napari_vesuvius_pt.data.tiles import load_regions

        return load_regions(region)
    return [np.asarray(p, dtype=float)[:, -2:] for p in region]


def _external_baselines(store: PredictionStore, segment: Any, region: Any,
                        notes: list[str]) -> dict[str, BinaryMetrics]:
    """``engine.evaluation.baseline_rows`` (the per-pixel linear z-profile baseline) when it exists; its
    all-ink row is left out (ours is on the encoders' stored grid). A baseline that cannot be fitted
    (no pixels to train on) becomes a note, not an error."""
    import tempfile

    from napari_vesuvius_pt.engine import evaluation
    from napari_vesuvius_pt.errors import VesuviusError

    fn = getattr(evaluation, "baseline_rows", None)
    if fn is None:
        return {}
    try:
        if region is not None and not isinstance(region, (str, Path)):
            from napari_vesuvius_pt.data.tiles import save_regions

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "region.json"
                save_regions(path, list(region))
                rows = fn(store, segment.path, region=path)
        else:
            rows = fn(store, segment.path, region=region)
    except VesuviusError as exc:
        notes.append(f"linear baseline not computed: {exc}")
        return {}
    return {k: v for k, v in dict(rows).items() if k != ALL_INK}


def load_comparison(prediction: str | Path | PredictionStore, segment: Any, region: Any = None,
                    beta: float = 0.5, external_baselines: bool = True) -> Comparison:
    """Every encoder of ``prediction`` against ``segment`` (a path or an opened Segment) inside its mask
    and ``region`` (a regions file, polygons in full-resolution (y, x) pixels, or None for all of it)."""
    from napari_vesuvius_pt.engine.evaluation import open_labeled

    store, names, seg = open_labeled(prediction, segment)
    plane = tuple(int(s) for s in seg.shape[1:])
    where = np.asarray(seg.scored_mask(), dtype=bool)  # supervision / ignore masks honoured
    polygons = _polygons(region)
    bbox = None
    if polygons:
        where = where & region_mask(polygons, plane, int(seg.downsample), seg.name)
        if not where.any():
            raise SegmentError(f"the region covers no papyrus of {seg.name}; draw it on the fragment")
        pts = np.concatenate(polygons)
        bbox = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
    labels = np.asarray(seg.inklabels) > 0
    pooled: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    predictions = {}
    for name in names:
        grid = int(store.info(name).get("plane_scale", 1))
        if grid not in pooled:
            pooled[grid] = (block_fraction(labels, grid) >= 0.5, block_fraction(where, grid) >= 0.5)
        ink, scored = pooled[grid]
        raw = np.asarray(store.array(name)[...])
        if raw.shape != ink.shape:
            raise SegmentError(f"{store.path}/{name} has shape {raw.shape}, but {seg.name}'s plane {plane} at "
                               f"{grid}x{grid} pixels per value gives {ink.shape}")
        scored_here = scored.copy()
        scored_here[store.done_rows(name):] = False
        if not scored_here.any():
            raise SegmentError(f"nothing to compare for {name}: no stored pixel lies in the mask and region")
        probs = decode(raw)
        metrics = fbeta_sweep(probs, ink, beta=beta, mask=scored_here)
        predictions[name] = EncoderPrediction(name, probs, ink, scored_here, metrics, store.layer_kwargs(name))
    first = next(iter(predictions.values())).metrics
    baselines = {ALL_INK: all_ink_row(first.prevalence, first.n, beta)}
    notes: list[str] = []
    if external_baselines:
        baselines.update(_external_baselines(store, seg, region if isinstance(region, (str, Path)) else polygons,
                                             notes))
    return Comparison(store.path, seg.name, predictions, baselines, bbox, seg, notes)
