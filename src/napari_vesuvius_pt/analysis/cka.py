"""Centered kernel alignment (Kornblith, Norouzi, Lee, Hinton 2019), linear and RBF.

The functions follow the authors' reference code (google-research ``representation_similarity``):
``gram_linear``, ``gram_rbf`` (bandwidth sigma^2 = threshold^2 x the median of all squared pairwise
distances, the whole n x n matrix with its zero diagonal), ``center_gram`` (with the unbiased option
of Song et al. 2012), ``cka`` and ``feature_space_linear_cka``. Two deliberate differences, both for
numerical safety and both without effect on exact arithmetic:

- inputs are converted to float64 and their features centred (the column means removed) before any
  product; on uncentred float32 activations the Gram matrices overflow or cancel and CKA comes out inf
  or NaN;
- squared distances are clipped at 0 (rounding can leave -1e-13 where the true value is 0).

With many more feature dimensions than samples the biased estimator is inflated toward 1 (0.999
against 0.80 debiased on one example); ``debiased=True`` uses the U-statistic HSIC estimator instead.
There is no minibatch estimator (Nguyen, Raghu, Kornblith 2021): it averages the unbiased linear HSIC
over batches, which is neither the biased estimate the CKA run reports by default nor defined for the
RBF kernel (each batch would get its own bandwidth). An n x n float64 Gram matrix of the usual probe
sets (256 to a few thousand tiles) takes 0.5 to 100 MB, which the CKA run holds in a bounded cache.

Inputs are numpy arrays or torch tensors of shape (n, ...), n samples; higher-dimensional features
(e.g. (n, C, D, H, W) maps) are flattened per sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vesuvius_pt.errors import AnalysisInputError

KERNELS = ("linear", "rbf")


# ------------------------------------------------------------------ input checks


def as_features(x: Any, name: str = "X") -> np.ndarray:
    """(n, ...) numpy array or torch tensor -> centred float64 (n, d); raises on NaN/inf or n < 2."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()  # also covers bfloat16/half, which numpy lacks
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise AnalysisInputError(f"{name}: expected a numeric array of features, got dtype {x.dtype}")
    if x.ndim == 0:
        raise AnalysisInputError(f"{name}: expected features of shape (n_samples, n_features), got a scalar")
    x = x.reshape(x.shape[0], -1) if x.ndim != 1 else x.reshape(-1, 1)
    if x.shape[0] < 2:
        raise AnalysisInputError(f"{name}: CKA needs at least 2 samples, got {x.shape[0]}")
    if x.shape[1] == 0:
        raise AnalysisInputError(f"{name}: features have no dimensions (shape {x.shape})")
    x = x.astype(np.float64, copy=True)
    finite = np.isfinite(x)
    if not finite.all():
        bad = x.size - int(finite.sum())
        rows = int((~finite).any(axis=1).sum())
        raise AnalysisInputError(
            f"{name}: {bad} NaN or infinite value(s) in {rows} of {x.shape[0]} samples; "
            "CKA is undefined: check the model (a diverged checkpoint gives NaN activations) or its input"
        )
    x -= x.mean(axis=0, keepdims=True)
    return x


def _pair(x: Any, y: Any, debiased: bool) -> tuple[np.ndarray, np.ndarray]:
    fx, fy = as_features(x, "X"), as_features(y, "Y")
    if fx.shape[0] != fy.shape[0]:
        raise AnalysisInputError(
            f"X and Y must hold the same samples in the same order: X has {fx.shape[0]} samples, Y has {fy.shape[0]}"
        )
    _check_debiased_n(fx.shape[0], debiased)
    return fx, fy


def _check_debiased_n(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise AnalysisInputError(f"the debiased (unbiased HSIC) estimator needs at least 4 samples, got {n}")


# ------------------------------------------------------------------ Gram matrices (reference API)


def gram_linear(x: Any) -> np.ndarray:
    """Linear-kernel Gram matrix (n, n) of centred float64 features."""
    f = as_features(x)
    return f @ f.T


def _squared_distances(f: np.ndarray) -> np.ndarray:
    dots = f @ f.T
    sq_norms = np.diag(dots)
    sq = sq_norms[:, None] + sq_norms[None, :] - 2.0 * dots
    np.maximum(sq, 0.0, out=sq)
    np.fill_diagonal(sq, 0.0)
    return sq


def gram_rbf(x: Any, threshold: float = 0.5) -> np.ndarray:
    """RBF Gram matrix, exp(-d^2 / (2 sigma^2)) with sigma^2 = threshold^2 * median(all squared distances)."""
    return _gram_rbf(as_features(x), threshold)


def _gram_rbf(f: np.ndarray, threshold: float) -> np.ndarray:
    if not threshold > 0:
        raise AnalysisInputError(f"RBF threshold must be > 0 (a fraction of the median distance), got {threshold}")
    sq = _squared_distances(f)
    median = float(np.median(sq))
    if median <= 0.0:
        raise AnalysisInputError(
            "RBF bandwidth is zero: at least half of all sample pairs have identical features "
            "(a collapsed or constant representation); RBF CKA is undefined"
        )
    return np.exp(-sq / (2.0 * threshold**2 * median))


def center_gram(gram: np.ndarray, unbiased: bool = False) -> np.ndarray:
    """Centre a symmetric Gram matrix; ``unbiased`` gives the U-statistic form (diagonal zeroed)."""
    gram = np.array(gram, dtype=np.float64, copy=True)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise AnalysisInputError(f"a Gram matrix must be square, got shape {gram.shape}")
    if not np.allclose(gram, gram.T):
        raise AnalysisInputError("a Gram matrix must be symmetric")
    return _center_in_place(gram, unbiased)


def _center_in_place(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    n = gram.shape[0]
    if unbiased:
        _check_debiased_n(n, True)
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0.0)
    else:
        means = gram.mean(axis=0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool = False) -> float:
    """CKA from two (uncentred) Gram matrices of the same samples."""
    gx = center_gram(gram_x, unbiased=debiased)
    gy = center_gram(gram_y, unbiased=debiased)
    if gx.shape != gy.shape:
        raise AnalysisInputError(f"Gram matrices of different sizes: {gx.shape} and {gy.shape}")
    nx, ny = np.linalg.norm(gx), np.linalg.norm(gy)
    _check_norm(nx, "X")
    _check_norm(ny, "Y")
    return float(np.vdot(gx, gy) / (nx * ny))


def _check_norm(norm: float, name: str) -> None:
    if not norm > 0.0:
        raise AnalysisInputError(
            f"{name}: features do not vary across samples (a constant or collapsed representation); CKA is undefined"
        )


# ------------------------------------------------------------------ public estimators


def linear_cka(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA. Uses the cheaper feature-space form when samples outnumber features (same value)."""
    fx, fy = _pair(x, y, debiased)
    n, dx, dy = fx.shape[0], fx.shape[1], fy.shape[1]
    if dx * dy + dx * dx + dy * dy < n * (dx + dy):
        return _feature_space(fx, fy, debiased)
    return cka(fx @ fx.T, fy @ fy.T, debiased=debiased)


def rbf_cka(x: Any, y: Any, threshold: float = 0.5, debiased: bool = False) -> float:
    """RBF-kernel CKA; the bandwidth of each kernel follows its own median distance."""
    fx, fy = _pair(x, y, debiased)
    return cka(_gram_rbf(fx, threshold), _gram_rbf(fy, threshold), debiased=debiased)


def feature_space_linear_cka(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA computed from d x d cross-covariances: O(n d^2) instead of O(n^2 d)."""
    fx, fy = _pair(x, y, debiased)
    return _feature_space(fx, fy, debiased)


def _debiased_dot(xty: float, rows_x: np.ndarray, rows_y: np.ndarray, sq_x: float, sq_y: float, n: int) -> float:
    return xty - n / (n - 2.0) * float(rows_x @ rows_y) + sq_x * sq_y / ((n - 1.0) * (n - 2.0))


def _feature_space(fx: np.ndarray, fy: np.ndarray, debiased: bool) -> float:
    dot = np.linalg.norm(fx.T @ fy) ** 2
    norm_x = np.linalg.norm(fx.T @ fx)
    norm_y = np.linalg.norm(fy.T @ fy)
    if debiased:
        n = fx.shape[0]
        rows_x = np.einsum("ij,ij->i", fx, fx)
        rows_y = np.einsum("ij,ij->i", fy, fy)
        sq_x, sq_y = float(rows_x.sum()), float(rows_y.sum())
        dot = _debiased_dot(dot, rows_x, rows_y, sq_x, sq_y, n)
        norm_x = np.sqrt(max(_debiased_dot(norm_x**2, rows_x, rows_x, sq_x, sq_x, n), 0.0))
        norm_y = np.sqrt(max(_debiased_dot(norm_y**2, rows_y, rows_y, sq_y, sq_y, n), 0.0))
    _check_norm(norm_x, "X")
    _check_norm(norm_y, "Y")
    return float(dot / (norm_x * norm_y))


def centered_gram(x: Any, kernel: str = "linear", threshold: float = 0.5, debiased: bool = False) -> np.ndarray:
    """The centred Gram matrix scaled to unit Frobenius norm.

    CKA between two representations is then one dot product, ``np.vdot(a, b)``; a CKA matrix over many
    checkpoints computes each checkpoint's matrix once and each new row in O(k n^2).
    """
    if kernel not in KERNELS:
        raise AnalysisInputError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    f = as_features(x)
    _check_debiased_n(f.shape[0], debiased)
    gram = f @ f.T if kernel == "linear" else _gram_rbf(f, threshold)
    gram = _center_in_place(gram, unbiased=debiased)  # symmetric by construction
    norm = np.linalg.norm(gram)
    _check_norm(norm, "X")
    gram /= norm
    return gram
