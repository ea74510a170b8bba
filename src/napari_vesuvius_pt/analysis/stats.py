"""Spread statistics for comparisons of encoders: mean ± sd over probe seeds, the paired difference of
two encoders with a 95% t interval over seeds, and a paired bootstrap over validation tiles.

Seeds are paired: seed k of encoder A and seed k of encoder B start their heads from the same
initialization and see the same batches, so the difference d_k = A_k - B_k removes what the seed does
to both. The t interval is ``mean(d) ± t(0.975, n - 1) * sd(d) / sqrt(n)``.

The bootstrap resamples the validation tiles (squares of the plane) with replacement, the same tiles
for both encoders, recomputes each seed's F0.5 at its best threshold (and its AUC) from the tiles'
per-threshold counts, averages over seeds and takes the difference; its 2.5 and 97.5 percentiles are
the interval. It says how much the difference depends on which part of the fragment validates; the
seed interval says how much it depends on the probe's luck.

A difference is "distinguishable from zero" when every interval computed for it excludes zero on the
same side; otherwise "not distinguishable from zero".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_vesuvius_pt.analysis.metrics import DEFAULT_THRESHOLDS, fbeta
from napari_vesuvius_pt.errors import AnalysisInputError

CONFIDENCE = 0.95
AUC_BINS = 256  # histogram resolution of the bootstrap's AUC (F0.5 is exact at the sweep's thresholds)


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float  # sample standard deviation (n - 1); 0 for one value
    n: int
    values: tuple[float, ...]

    def text(self, digits: int = 3) -> str:
        """``0.612 ± 0.034`` (or the value alone for n = 1)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def mean_sd(values: Sequence[float]) -> Spread:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise AnalysisInputError("mean ± sd of no values")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return Spread(float(v.mean()), sd, int(v.size), tuple(float(x) for x in v))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "t over N seeds" | "bootstrap over N tiles"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3) -> str:
        return f"{self.low:+.{digits}f} to {self.high:+.{digits}f} ({self.method})"


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The t interval of the mean of paired differences; None with fewer than two."""
    from scipy import stats

    d = np.asarray(list(differences), dtype=np.float64)
    n = d.size
    if n < 2:
        return None
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(d.std(ddof=1)) / np.sqrt(n)
    m = float(d.mean())
    return Interval(m - half, m + half, f"t over {n} seeds")


def verdict(intervals: Sequence[Interval | None]) -> tuple[bool, str]:
    """(distinguishable, plain words): distinguishable when every interval excludes zero on one side."""
    ints = [i for i in intervals if i is not None]
    if not ints:
        return False, "not distinguishable from zero (no interval: one seed and no tiles to resample)"
    signs = {np.sign(i.low) if i.excludes_zero else 0.0 for i in ints}
    if 0.0 not in signs and len(signs) == 1:
        return True, "distinguishable from zero"
    which = [i.method for i in ints if not i.excludes_zero]
    return False, "not distinguishable from zero (" + ("; ".join(f"the interval {m} includes zero" for m in which)
                                                      or "the intervals disagree in sign") + ")"


# ------------------------------------------------------------------ per-tile counts


@dataclass(frozen=True)
class TileCounts:
    """Per validation tile: ink and background pixels in each score bin (bin edges include every
    threshold of the sweep, so F0.5 at those thresholds is exact)."""

    tiles: np.ndarray  # (T,) tile ids (row-major over the plane's tile grid)
    pos: np.ndarray  # (T, B) int64
    neg: np.ndarray  # (T, B) int64
    edges: np.ndarray  # (B,) left edges of the bins
    thresholds: np.ndarray


def _edges(thresholds: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, AUC_BINS + 1)[:-1], thresholds]))


def tile_counts(probs: np.ndarray, labels: np.ndarray, scored: np.ndarray, tile: int,
                thresholds: Any = DEFAULT_THRESHOLDS) -> TileCounts:
    """Count, per ``tile x tile`` square (from the origin) of the plane, the scored ink and background
    pixels in each score bin. ``probs`` are probabilities in [0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels) > 0
    scored = np.asarray(scored, dtype=bool)
    if probs.shape != labels.shape or probs.shape != scored.shape:
        raise AnalysisInputError(f"probabilities {probs.shape}, labels {labels.shape} and scored area "
                                 f"{scored.shape} must have the same shape")
    tile = max(1, int(tile))
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    edges = _edges(thresholds)
    h, w = probs.shape
    ntx = -(-w // tile)
    yy, xx = np.nonzero(scored)
    if yy.size == 0:
        raise AnalysisInputError("no scored pixels to count")
    tid = (yy // tile) * ntx + xx // tile
    b = np.clip(np.searchsorted(edges, probs[yy, xx], side="right") - 1, 0, len(edges) - 1)
    tiles, inv = np.unique(tid, return_inverse=True)
    key = inv * len(edges) + b
    size = len(tiles) * len(edges)
    pos = np.bincount(key[labels[yy, xx]], minlength=size).reshape(len(tiles), len(edges))
    allc = np.bincount(key, minlength=size).reshape(len(tiles), len(edges))
    return TileCounts(tiles, pos.astype(np.int64), (allc - pos).astype(np.int64), edges, thresholds)


def align(counts: Sequence[TileCounts]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Put several TileCounts on the union of their tiles (missing tiles count zero)."""
    tiles = np.unique(np.concatenate([c.tiles for c in counts]))
    pos, neg = [], []
    for c in counts:
        idx = np.searchsorted(tiles, c.tiles)
        p = np.zeros((len(tiles), c.pos.shape[1]), dtype=np.int64)
        n = np.zeros_like(p)
        p[idx], n[idx] = c.pos, c.neg
        pos.append(p)
        neg.append(n)
    return tiles, pos, neg


def metrics_from_bins(pos: np.ndarray, neg: np.ndarray, edges: np.ndarray, thresholds: np.ndarray,
                      beta: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """F-beta at the best threshold and AUC from binned counts ``(..., B)``; returns arrays ``(...)``."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    tp_ge = np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1]
    fp_ge = np.cumsum(neg[..., ::-1], axis=-1)[..., ::-1]
    idx = np.searchsorted(edges, thresholds)  # thresholds are edges: p >= t is bins from idx on
    tp, fp = tp_ge[..., idx], fp_ge[..., idx]
    n_pos = pos.sum(-1, keepdims=True)
    n_neg = neg.sum(-1)
    prec = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    rec = np.divide(tp, n_pos, out=np.zeros_like(tp), where=n_pos > 0)
    f = np.max(fbeta(prec, rec, beta), axis=-1)
    below = np.cumsum(neg, axis=-1) - neg
    wins = (pos * (below + 0.5 * neg)).sum(-1)
    den = n_pos[..., 0] * n_neg
    auc = np.divide(wins, den, out=np.full_like(wins, 0.5), where=den > 0)
    return f, auc


# ------------------------------------------------------------------ paired comparisons


@dataclass(frozen=True)
class PairedDifference:
    a: str
    b: str
    metric: str  # "f05" | "auc"
    mean: float  # mean over seeds of A_k - B_k (or A - B for one seed)
    seeds: Interval | None
    tiles: Interval | None
    distinguishable: bool
    verdict: str

    def sentence(self, label: str | None = None, digits: int = 3) -> str:
        """e.g. ``VICReg − random, F0.5: +0.052 (95% interval -0.011 to +0.115 (t over 3 seeds); +0.020
        to +0.081 (bootstrap over 38 tiles)): not distinguishable from zero (...)``."""
        label = label or f"{self.a} − {self.b}"
        parts = "; ".join(i.text(digits) for i in (self.seeds, self.tiles) if i is not None)
        name = {"f05": "F0.5", "auc": "AUC"}.get(self.metric, self.metric)
        return f"{label}, {name}: {self.mean:+.{digits}f}" + (f" (95% interval {parts})" if parts else "") \
            + f": {self.verdict}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def paired_difference(a: str, b: str, values_a: Sequence[float], values_b: Sequence[float],
                      metric: str = "f05", tiles: Interval | None = None,
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """A's and B's values paired by seed (same length): the mean difference, its t interval, and the
    verdict over it and ``tiles`` (a bootstrap interval, when given)."""
    va, vb = np.asarray(list(values_a), float), np.asarray(list(values_b), float)
    if va.shape != vb.shape or va.size == 0:
        raise AnalysisInputError(f"paired values need the same number of seeds; got {va.size} and {vb.size}")
    d = va - vb
    seeds = t_interval(d, confidence)
    ok, words = verdict([seeds, tiles])
    return PairedDifference(a, b, metric, float(d.mean()), seeds, tiles, ok, words)


@dataclass
class BootstrapResult:
    f05: Interval
    auc: Interval
    n_tiles: int
    samples: int
    f05_diffs: np.ndarray = field(repr=False)
    auc_diffs: np.ndarray = field(repr=False)


def bootstrap_difference(counts_a: Sequence[TileCounts], counts_b: Sequence[TileCounts],
                         samples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE,
                         beta: float = 0.5) -> BootstrapResult:
    """Paired bootstrap over validation tiles of ``mean_k F(A_k) - mean_k F(B_k)`` (and the same for
    AUC); ``counts_a`` and ``counts_b`` hold one TileCounts per seed."""
    if not counts_a or not counts_b:
        raise AnalysisInputError("the bootstrap needs counts for both encoders")
    every = [*counts_a, *counts_b]
    edges, thresholds = every[0].edges, every[0].thresholds
    if any(c.edges.shape != edges.shape or not np.allclose(c.edges, edges) for c in every):
        raise AnalysisInputError("tile counts were binned differently")
    tiles, pos, neg = align(every)
    n = len(tiles)
    rng = np.random.default_rng(seed)
    # resampling weights: how often each tile is drawn in each sample, (samples, n)
    draws = rng.integers(0, n, size=(samples, n))
    weights = np.zeros((samples, n), dtype=np.float64)
    np.add.at(weights, (np.repeat(np.arange(samples), n), draws.ravel()), 1.0)
    fs, aucs = [], []
    for p, q in zip(pos, neg):
        f, auc = metrics_from_bins(weights @ p, weights @ q, edges, thresholds, beta)
        fs.append(f)
        aucs.append(auc)
    ka = len(counts_a)
    f_diff = np.mean(fs[:ka], axis=0) - np.mean(fs[ka:], axis=0)
    a_diff = np.mean(aucs[:ka], axis=0) - np.mean(aucs[ka:], axis=0)
    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
    method = f"bootstrap over {n} tiles"
    return BootstrapResult(Interval(*np.percentile(f_diff, [lo, hi]).tolist(), method),
                           Interval(*np.percentile(a_diff, [lo, hi]).tolist(), method),
                           n, samples, f_diff, a_diff)


def spreads(values: Mapping[str, Sequence[float]]) -> dict[str, Spread]:
    return {k: mean_sd(v) for k, v in values.items()}
