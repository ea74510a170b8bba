"""Representation similarity (CKA) and ink-detection metrics. No Qt, no torch required at import.

Bad arrays raise :class:`napari_vesuvius_pt.errors.AnalysisInputError`.
"""

from napari_vesuvius_pt.analysis.cka import (
    centered_gram,
    feature_space_linear_cka,
    gram_linear,
    gram_rbf,
    linear_cka,
    rbf_cka,
)
from napari_vesuvius_pt.analysis.metrics import (
    DEFAULT_THRESHOLDS,
    BinaryMetrics,
    fbeta,
    fbeta_sweep,
    roc_auc,
)

__all__ = [
    "BinaryMetrics",
    "DEFAULT_THRESHOLDS",
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
