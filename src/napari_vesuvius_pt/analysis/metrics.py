"""Pixel metrics for ink detection: F-beta (the Kaggle metric is F0.5) at the best threshold of a sweep,
and ROC AUC.

Both come from one pass that counts, for every distinct predicted value, how many ink and how many
background pixels got it (a histogram: 256 bins for uint8, 65,536 for float16, the sorted distinct values
otherwise). Each threshold of the sweep and the AUC are then a cumulative sum over those counts, so a
sweep over millions of pixels costs one histogram, not one pass per threshold.

Conventions: a pixel is predicted ink when ``prob >= threshold``; ties in the AUC count one half.
Where a quantity is undefined, the result is 0 (precision with no predictions, recall and F with no
ink) or 0.5 (AUC with one class only), never NaN, and ``BinaryMetrics.notes`` says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_vesuvius_pt.errors import AnalysisInputError

# the winning Kaggle solutions swept 0.10-0.95; rounded so that 0.2 is 0.2 and not 0.20000000000000004
DEFAULT_THRESHOLDS = np.round(np.arange(0.10, 0.96, 0.05), 2)


@dataclass(frozen=True)
class BinaryMetrics:
    f05: float  # F-beta at the best threshold (beta = 0.5 unless asked otherwise)
    threshold: float  # the best threshold of the sweep (the lowest one on ties)
    precision: float  # at the best threshold
    recall: float  # at the best threshold
    auc: float  # ROC AUC (0.5 when only one class is present)
    f05_at_05: float  # F-beta at threshold 0.5
    prevalence: float  # fraction of ink pixels
    n: int  # pixels evaluated
    beta: float = 0.5
    notes: tuple[str, ...] = ()  # why a value is 0 or 0.5 by convention

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


def fbeta(precision: Any, recall: Any, beta: float = 0.5) -> Any:
    """(1 + b^2) P R / (b^2 P + R); 0 where P = R = 0. Works elementwise on arrays."""
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    b2 = float(beta) ** 2
    den = b2 * p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(den > 0, (1.0 + b2) * p * r / np.where(den > 0, den, 1.0), 0.0)
    return float(f) if f.ndim == 0 else f


# ------------------------------------------------------------------ histogram of scores by class


@dataclass(frozen=True)
class _Counts:
    values: np.ndarray  # sorted distinct probabilities (float64)
    pos: np.ndarray  # ink pixels per value
    neg: np.ndarray  # background pixels per value

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    def at_or_above(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(true positives, false positives) for ``prob >= t`` at each threshold."""
        tp_ge = np.concatenate([np.cumsum(self.pos[::-1])[::-1], [0]])
        fp_ge = np.concatenate([np.cumsum(self.neg[::-1])[::-1], [0]])
        idx = np.searchsorted(self.values, thresholds, side="left")
        return tp_ge[idx], fp_ge[idx]


def _labels_as_bool(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == bool:
        return labels
    if np.issubdtype(labels.dtype, np.integer):
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise AnalysisInputError(
                f"labels must be 0/1 (or bool); got values {labels.min()}..{labels.max()} "
                "(an ink label PNG saved as 0/255 must be divided by 255)"
            )
        return labels.astype(bool)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isin(labels, (0.0, 1.0)).all():
            raise AnalysisInputError(
                "labels must be 0/1 (or bool); got other values (soft labels? threshold them first)"
            )
        return labels.astype(bool)
    raise AnalysisInputError(f"labels must be 0/1 or bool, got dtype {labels.dtype}")


def _counts(probs: Any, labels: Any, mask: Any = None, scale: float = 1.0) -> _Counts:
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.shape != labels.shape:
        raise AnalysisInputError(f"predictions {probs.shape} and labels {labels.shape} must have the same shape")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != probs.shape:
            raise AnalysisInputError(f"mask {mask.shape} and predictions {probs.shape} must have the same shape")
        probs, labels = probs[mask], labels[mask]
    probs, labels = probs.ravel(), _labels_as_bool(labels.ravel())
    if probs.size == 0:
        raise AnalysisInputError("no pixels to evaluate: the mask or region is empty")
    if not scale > 0:
        raise AnalysisInputError(f"scale must be > 0, got {scale}")
    if probs.dtype == bool:
        probs = probs.view(np.uint8)

    if probs.dtype == np.uint8:
        values = np.arange(256, dtype=np.float64)
        pos = np.bincount(probs[labels], minlength=256)
        neg = np.bincount(probs, minlength=256) - pos
    elif probs.dtype == np.float16:
        nan = np.isnan(probs)
        if nan.any():
            raise AnalysisInputError(f"predictions hold {int(nan.sum())} NaN value(s)")
        if probs.min() < 0:
            raise AnalysisInputError(
                f"predictions must be probabilities in [0, 1]; got a minimum of {float(probs.min())}"
            )
        bits = (probs + np.float16(0)).view(np.uint16)  # -0.0 -> +0.0; non-negative float16 bits sort like values
        pos = np.bincount(bits[labels], minlength=65536)
        neg = np.bincount(bits, minlength=65536) - pos
        values = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float64)
        values[0x7C00:] = np.inf  # inf/NaN codes (never populated: NaN was rejected, inf fails the range check)
    elif np.issubdtype(probs.dtype, np.number) and not np.iscomplexobj(probs):
        if np.issubdtype(probs.dtype, np.floating):
            finite = np.isfinite(probs)
            if not finite.all():
                raise AnalysisInputError(f"predictions hold {probs.size - int(finite.sum())} NaN or infinite value(s)")
        vp, cp = np.unique(probs[labels], return_counts=True)
        vn, cn = np.unique(probs[~labels], return_counts=True)
        values = np.union1d(vp, vn).astype(np.float64)
        pos = np.zeros(values.size, dtype=np.int64)
        neg = np.zeros(values.size, dtype=np.int64)
        pos[np.searchsorted(values, vp.astype(np.float64))] = cp
        neg[np.searchsorted(values, vn.astype(np.float64))] = cn
    else:
        raise AnalysisInputError(f"predictions must be numeric, got dtype {probs.dtype}")

    keep = (pos + neg) > 0
    values, pos, neg = values[keep] / scale, pos[keep].astype(np.int64), neg[keep].astype(np.int64)
    if values[0] < 0 or values[-1] > 1:
        hint = " (uint8 predictions scaled to 0..255 need scale=255)" if values[-1] > 1 else ""
        raise AnalysisInputError(
            f"predictions must be probabilities in [0, 1]; got {values[0]:.4g}..{values[-1]:.4g}{hint}; "
            "apply a sigmoid to logits first"
        )
    return _Counts(values, pos, neg)


def _auc(c: _Counts) -> float:
    n_pos, n_neg = c.n_pos, c.n_neg
    if n_pos == 0 or n_neg == 0:
        return 0.5
    neg_below = np.cumsum(c.neg) - c.neg
    wins = float(np.dot(c.pos.astype(np.float64), neg_below + 0.5 * c.neg))
    return wins / (float(n_pos) * float(n_neg))


# ------------------------------------------------------------------ public API


def roc_auc(probs: Any, labels: Any, mask: Any = None, scale: float = 1.0) -> float:
    """Probability that a random ink pixel scores above a random background pixel (ties count 1/2).

    0.5 when only one class is present (the AUC is undefined there).
    """
    return _auc(_counts(probs, labels, mask, scale))


def fbeta_sweep(
    probs: Any,
    labels: Any,
    beta: float = 0.5,
    thresholds: Any = DEFAULT_THRESHOLDS,
    mask: Any = None,
    scale: float = 1.0,
) -> BinaryMetrics:
    """F-beta at the best of ``thresholds`` (and at 0.5), with precision, recall, AUC and prevalence.

    ``probs``: probabilities in [0, 1] (any float dtype), or integers with ``scale`` (uint8 written as
    probability x 255: ``scale=255``). ``labels``: 0/1 or bool, same shape. ``mask``: evaluate only there.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if thresholds.size == 0:
        raise AnalysisInputError("thresholds: give at least one threshold")
    if not beta > 0:
        raise AnalysisInputError(f"beta must be > 0, got {beta}")
    c = _counts(probs, labels, mask, scale)
    n_pos, n_neg = c.n_pos, c.n_neg
    n = n_pos + n_neg
    grid = np.append(thresholds, 0.5)
    tp, fp = c.at_or_above(grid)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros(grid.size), where=predicted > 0)
    recall = tp / n_pos if n_pos else np.zeros(grid.size)
    f = fbeta(precision, recall, beta)
    best = int(np.argmax(f[:-1]))

    notes = []
    if n_pos == 0:
        notes.append("no ink pixels: recall and F are 0 at every threshold; AUC is undefined and reported as 0.5")
    elif n_neg == 0:
        notes.append("no background pixels: AUC is undefined and reported as 0.5")
    if n_pos and f[best] == 0.0:
        if predicted[best] == 0:
            notes.append("no pixel reaches any threshold of the sweep: precision and F are 0")
        else:
            notes.append("no predicted pixel at any threshold is ink: F is 0")

    return BinaryMetrics(
        f05=float(f[best]),
        threshold=float(thresholds[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        auc=_auc(c),
        f05_at_05=float(f[-1]),
        prevalence=n_pos / n,
        n=int(n),
        beta=float(beta),
        notes=tuple(notes),
    )
