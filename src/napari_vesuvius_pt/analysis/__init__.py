"""Representation similarity (CKA) and ink-detection metrics. No Qt, no torch required at import."""

from napari_vesuvius_pt.errors import VesuviusError


class AnalysisInputError(VesuviusError, ValueError):
    """Arrays given to a CKA or metric function do not fit (shapes, NaN, too few samples)."""


from napari_vesuvius_pt.analysis.cka import (  # noqa: E402
    MinibatchCKA,
    centered_gram,
    feature_space_linear_cka,
    gram_linear,
    gram_rbf,
    linear_cka,
    rbf_cka,
)
from napari_vesuvius_pt.analysis.metrics import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    BinaryMetrics,
    fbeta,
    fbeta_sweep,
    roc_auc,
)

__all__ = [
    "AnalysisInputError",
    "BinaryMetrics",
    "DEFAULT_THRESHOLDS",
    "MinibatchCKA",
    "centered_gram",
    "fbeta",
    "fbeta_sweep",
    "feature_space_linear_cka",
    "gram_linear",
    "gram_rbf",
    "linear_cka",
    "rbf_cka",
    "roc_auc",
]
