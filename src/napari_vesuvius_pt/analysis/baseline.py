"""What an ink model must beat: a per-pixel linear model on each pixel's smoothed z-profile, and
calling every pixel ink.

The linear baseline: each layer of the volume is smoothed in the plane with a ``smooth x smooth`` box
filter, and each pixel's feature vector is its column of smoothed values through the layers (its
z-profile). A linear discriminant (LDA: one covariance shared by both classes, closed form) or a
logistic regression is fitted on the training pixels and gives every validation pixel a probability
of ink, which is then scored like any model (F0.5 at the best threshold of the sweep, AUC).

Memory: volumes are read block by block (a few million voxels each, with a halo of ``smooth // 2``
pixels, so the result does not depend on the block size); LDA needs only the sums and the sums of
outer products of the features per class, so it sees every training pixel. Logistic regression is
fitted on a random subsample of at most ``max_samples`` training pixels.

All-ink baseline: precision p (the ink prevalence), recall 1, so F0.5 = 1.25 p / (0.25 p + 1).

Volumes are anything that slices like a ``(z, y, x)`` numpy array (a ``LazyVolume``, a zarr array);
this module knows nothing of segments on disk or of the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vesuvius_pt.analysis.metrics import BinaryMetrics, fbeta_sweep
from napari_vesuvius_pt.errors import AnalysisInputError

BLOCK_VOXELS = 4_000_000  # voxels read at once (float32: 16 MB), halo included
LINEAR_NAME = "linear z-profile"
ALL_INK_NAME = "all ink"


def all_ink_f05(prevalence: float, beta: float = 0.5) -> float:
    """F-beta of calling every pixel ink (precision p, recall 1): (1 + b^2) p / (b^2 p + 1); 1.25 p /
    (0.25 p + 1) for F0.5."""
    p = float(prevalence)
    b2 = float(beta) ** 2
    return (1.0 + b2) * p / (b2 * p + 1.0) if p > 0 else 0.0


def all_ink_metrics(labels: np.ndarray, where: np.ndarray | None = None) -> BinaryMetrics:
    """The all-ink baseline as a metrics row (threshold 0, AUC 0.5: one score for every pixel)."""
    ink = np.asarray(labels) > 0
    if where is not None:
        ink = ink[np.asarray(where, dtype=bool)]
    n = int(ink.size)
    if n == 0:
        raise AnalysisInputError("no pixels to score the all-ink baseline on: the mask or region is empty")
    p = float(ink.sum()) / n
    f = all_ink_f05(p)
    return BinaryMetrics(f05=f, threshold=0.0, precision=p, recall=1.0 if p > 0 else 0.0, auc=0.5,
                         f05_at_05=f, prevalence=p, n=n, notes=("every pixel called ink",))


# ------------------------------------------------------------------ features, block by block


@dataclass(frozen=True)
class Block:
    """A block of the plane ``[y0, y1) x [x0, x1)`` and the smoothed z-profiles of its pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    features: np.ndarray  # float32 (y1 - y0, x1 - x0, depth)


def _block_side(depth: int, halo: int, width: int) -> int:
    side = int(np.sqrt(BLOCK_VOXELS / max(1, depth))) - 2 * halo
    return max(16, min(side, max(16, width)))


def profile_blocks(volume: Any, where: np.ndarray, z: tuple[int, int], smooth: int = 5,
                   normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[Block]:
    """The smoothed z-profiles of layers ``z[0]:z[1]``, for each block of the plane holding a pixel of
    ``where``. Each block is read with a halo of ``smooth // 2`` pixels (clipped at the plane's border,
    where the filter reflects), normalized by ``normalize`` (raw values -> float32), box-filtered."""
    if smooth < 1:
        raise AnalysisInputError(f"smoothing must be at least 1 pixel, got {smooth}")
    where = np.asarray(where, dtype=bool)
    h, w = where.shape
    z0, z1 = int(z[0]), int(z[1])
    halo = smooth // 2
    side = _block_side(z1 - z0, halo, w)
    for by in range(0, h, side):
        for bx in range(0, w, side):
            y1, x1 = min(by + side, h), min(bx + side, w)
            if not where[by:y1, bx:x1].any():
                continue
            ry0, ry1, rx0, rx1 = max(0, by - halo), min(h, y1 + halo), max(0, bx - halo), min(w, x1 + halo)
            raw = np.asarray(volume[z0:z1, ry0:ry1, rx0:rx1])
            vol = normalize(raw) if normalize is not None else raw.astype(np.float32)
            vol = np.asarray(vol, dtype=np.float32)
            if smooth > 1:
                vol = ndimage.uniform_filter(vol, size=(1, smooth, smooth), mode="reflect")
            inner = vol[:, by - ry0:by - ry0 + (y1 - by), bx - rx0:bx - rx0 + (x1 - bx)]
            yield Block(by, y1, bx, x1, np.ascontiguousarray(np.moveaxis(inner, 0, -1)))


# ------------------------------------------------------------------ the models


@dataclass
class ClassStats:
    """Per-class sufficient statistics of feature vectors: counts, sums and sums of outer products
    (float64), accumulated batch by batch."""

    depth: int
    n: np.ndarray = field(init=False)
    s: np.ndarray = field(init=False)
    ss: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.n = np.zeros(2, dtype=np.int64)
        self.s = np.zeros((2, self.depth), dtype=np.float64)
        self.ss = np.zeros((2, self.depth, self.depth), dtype=np.float64)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.depth)
        y = np.asarray(y, dtype=bool).ravel()
        for c, sel in ((0, ~y), (1, y)):
            xc = x[sel]
            self.n[c] += len(xc)
            self.s[c] += xc.sum(0)
            self.ss[c] += xc.T @ xc


@dataclass(frozen=True)
class LinearModel:
    """``P(ink | x) = sigmoid(x . weights + bias)`` on a pixel's smoothed z-profile ``x``."""

    weights: np.ndarray  # (depth,)
    bias: float
    method: str
    n_train: int  # training pixels seen (LDA) or fitted (logistic)
    prevalence: float  # ink share of the training pixels

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logits(x))


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(t, dtype=np.float64)))


def lda_from_stats(stats: ClassStats, shrinkage: float = 1e-3) -> LinearModel:
    """The linear discriminant in closed form: ``w = S^-1 (mu1 - mu0)``, ``b = -w . (mu1 + mu0) / 2 +
    log(pi1 / pi0)``, with ``S`` the pooled within-class covariance shrunk towards ``tr(S)/d * I`` by
    ``shrinkage`` (keeps it invertible when layers are constant or collinear). The logit is the
    posterior log-odds of ink under two Gaussians with that shared covariance."""
    n0, n1 = (int(v) for v in stats.n)
    if n0 < 2 or n1 < 2:
        raise AnalysisInputError(
            f"the linear baseline needs ink and background pixels to train on; got {n1} ink and {n0} "
            "background pixels (are the training fragments' ink labels empty?)")
    mu = stats.s / stats.n[:, None]
    scatter = sum(stats.ss[c] - stats.n[c] * np.outer(mu[c], mu[c]) for c in (0, 1))
    cov = scatter / (n0 + n1 - 2)
    d = cov.shape[0]
    cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / d + 1e-12) * np.eye(d)
    w = np.linalg.solve(cov, mu[1] - mu[0])
    b = -0.5 * float(w @ (mu[1] + mu[0])) + float(np.log(n1 / n0))
    return LinearModel(w, b, "lda", n0 + n1, n1 / (n0 + n1))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-4) -> LinearModel:
    """Logistic regression (L-BFGS, L2 penalty ``l2`` on the weights of standardized features)."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    n1 = int(y.sum())
    if n1 < 2 or len(y) - n1 < 2:
        raise AnalysisInputError(
            f"the linear baseline needs ink and background pixels to train on; got {n1} ink and "
            f"{len(y) - n1} background pixels in the sample")
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    n, d = z.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        t = z @ w + b
        # log(1 + e^t) - y t, stably
        value = np.logaddexp(0.0, t) - y * t
        g = _sigmoid(t) - y
        return (float(value.mean() + 0.5 * l2 * w @ w),
                np.append(z.T @ g / n + l2 * w, g.mean()))

    p = n1 / n
    theta0 = np.append(np.zeros(d), np.log(p / (1 - p)))
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    w = res.x[:d] / std
    b = float(res.x[d] - w @ mean)
    return LinearModel(w, b, "logistic", n, p)


@dataclass(frozen=True)
class TrainingVolume:
    """One volume's training pixels: ``where`` (bool (y, x)) with their ``labels`` (y, x), the layers
    ``z`` = (start, stop) to read, and the normalization of its raw values."""

    volume: Any
    where: np.ndarray
    labels: np.ndarray
    z: tuple[int, int]
    normalize: Callable[[np.ndarray], np.ndarray] | None = None


def fit_linear_baseline(train: Sequence[TrainingVolume], method: str = "lda", smooth: int = 5,
                        max_samples: int = 200_000, seed: int = 0) -> LinearModel:
    """Fit the linear model on every training pixel (LDA) or a random sample of them (logistic)."""
    if method not in ("lda", "logistic"):
        raise AnalysisInputError(f"unknown baseline method {method!r}; use lda or logistic")
    if not train:
        raise AnalysisInputError("the linear baseline needs at least one training volume")
    depths = {t.z[1] - t.z[0] for t in train}
    if len(depths) != 1:
        raise AnalysisInputError(f"training volumes give z-profiles of different lengths {sorted(depths)}")
    depth = depths.pop()
    total = sum(int(np.count_nonzero(t.where)) for t in train)
    if total == 0:
        raise AnalysisInputError("the linear baseline has no training pixels (masks or split empty)")
    rate = min(1.0, max_samples / total)
    rng = np.random.default_rng(seed)
    stats = ClassStats(depth)
    xs, ys = [], []
    for t in train:
        where = np.asarray(t.where, dtype=bool)
        labels = np.asarray(t.labels) > 0
        for block in profile_blocks(t.volume, where, t.z, smooth, t.normalize):
            sel = where[block.y0:block.y1, block.x0:block.x1]
            x = block.features[sel]
            y = labels[block.y0:block.y1, block.x0:block.x1][sel]
            if method == "lda":
                stats.add(x, y)
            else:
                keep = rng.random(len(y)) < rate
                xs.append(x[keep])
                ys.append(y[keep])
    if method == "lda":
        return lda_from_stats(stats)
    return fit_logistic(np.concatenate(xs), np.concatenate(ys))


def predict_map(model: LinearModel, volume: Any, where: np.ndarray, z: tuple[int, int], smooth: int = 5,
                normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Ink probabilities (float32 (y, x)) at the pixels of ``where``; 0 elsewhere."""
    where = np.asarray(where, dtype=bool)
    if model.weights.shape[0] != z[1] - z[0]:
        raise AnalysisInputError(
            f"the model was fitted on z-profiles of {model.weights.shape[0]} layers, not {z[1] - z[0]}")
    out = np.zeros(where.shape, dtype=np.float32)
    for block in profile_blocks(volume, where, z, smooth, normalize):
        sel = where[block.y0:block.y1, block.x0:block.x1]
        view = out[block.y0:block.y1, block.x0:block.x1]
        view[sel] = model.probabilities(block.features[sel]).astype(np.float32)
    return out


def score_map(probabilities: np.ndarray, labels: np.ndarray, where: np.ndarray) -> BinaryMetrics:
    """Scored like every model: F0.5 at the best threshold of the sweep, AUC (probabilities as float16,
    as predictions are stored)."""
    probs = np.clip(np.asarray(probabilities, dtype=np.float32), 0.0, 1.0).astype(np.float16)
    return fbeta_sweep(probs, np.asarray(labels) > 0, mask=np.asarray(where, dtype=bool))
