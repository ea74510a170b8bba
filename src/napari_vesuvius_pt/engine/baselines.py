"""The baselines of every comparison on fragments on disk: the per-pixel linear model on smoothed
z-profiles (``analysis.baseline``) trained on the training fragments' pixels and scored on the
validation pixels, and the all-ink F0.5 of those pixels.

The split is the fine-tuning's: a whole validation fragment, or region polygons on the first training
fragment (its pixels inside the polygons validate; its pixels farther than ``smooth // 2 + margin``
from them train, so no smoothed profile that trains reads a validation pixel). Scored pixels lie in the
papyrus mask (and region); ``skip_empty`` keeps only the ``tile``-pixel squares that hold ink, as
``evaluate`` does. Each segment is normalized with its own fitted parameters (z-score by default:
fragments differ in intensity), and the same ``depth`` layers, centred in each segment, form the profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vesuvius_pt.analysis.baseline import (
    ALL_INK_NAME,
    LINEAR_NAME,
    LinearModel,
    TrainingVolume,
    all_ink_metrics,
    fit_linear_baseline,
    predict_map,
    score_map,
)
from napari_vesuvius_pt.analysis.metrics import BinaryMetrics
from napari_vesuvius_pt.config import DataConfig
from napari_vesuvius_pt.data.tiles import region_owner
from napari_vesuvius_pt.errors import AnalysisInputError, ConfigError, SegmentError

DEFAULT_DATA = DataConfig(normalization="zscore")


@dataclass
class BaselineResult:
    rows: dict[str, BinaryMetrics]  # "all ink", "linear z-profile"
    probabilities: np.ndarray  # float32 (y, x) over the validation segment; 0 outside ``where``
    where: np.ndarray  # bool (y, x): the scored pixels
    segment: str  # the validation segment's path
    model: LinearModel
    z: tuple[int, int]  # layers of each profile (in the segment's own indices after z_range)
    train_pixels: int
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        from napari_vesuvius_pt.engine.evaluation import metrics_as_json

        return {"rows": metrics_as_json(self.rows), "segment": self.segment, "method": self.model.method,
                "layers": list(self.z), "train_pixels": self.train_pixels, "notes": list(self.notes)}


def _open(path: str | Path, data: DataConfig):
    from napari_vesuvius_pt.data.segment import open_from_config

    seg = open_from_config(path, data)
    if seg.inklabels is None:
        raise SegmentError(f"{seg.name} ({seg.path}) has no ink labels; the baseline needs labeled fragments")
    return seg


def _window(nz: int, depth: int) -> tuple[int, int]:
    z0 = (nz - depth) // 2
    return z0, z0 + depth


def _normalizer(data: DataConfig, seg):
    from napari_vesuvius_pt.data.normalize import normalizer_from_config

    return normalizer_from_config(data, seg)


def linear_baseline(fragments: Sequence[str | Path], val_fragment: str | Path | None = None,
                    val_region: str | Path | None = None, data: DataConfig | None = None,
                    method: str = "lda", smooth: int = 5, depth: int | None = None,
                    skip_empty: bool = False, tile: int = 64, margin: int = 0,
                    max_samples: int = 200_000, seed: int = 0) -> BaselineResult:
    """Fit the linear z-profile baseline on ``fragments`` and score it (and the all-ink baseline) on
    ``val_fragment`` or on ``val_region`` (on the fragment it names, else the first)."""
    from napari_vesuvius_pt.engine.evaluation import _tiles_with_ink, scored_area

    data = data or DEFAULT_DATA
    if not fragments:
        raise ConfigError("the baseline needs training fragments: --fragments PATH [PATH ...]")
    if (val_fragment is None) == (val_region is None):
        raise ConfigError("give either a validation fragment (--val-fragment) or a validation region "
                          "on the first fragment (--val-region), exactly one")
    segs = [_open(p, data) for p in fragments]
    owner = region_owner(segs, val_region) if val_region is not None else None  # the fragment it splits
    val_seg = segs[owner] if owner is not None else _open(val_fragment, data)
    nzs = [s.shape[0] for s in [*segs, val_seg]]
    depth = int(depth or min(nzs))
    if depth < 1 or depth > min(nzs):
        raise ConfigError(f"profile depth {depth} does not fit the segments' layers ({min(nzs)} in the "
                          "thinnest); use a smaller --depth")
    # what evaluate scores: papyrus, supervised, not ignored, in the region (polygons or the validation mask)
    val_where = scored_area(val_seg, val_region)
    region = val_where if val_region is not None else None
    labels_val = np.asarray(val_seg.inklabels) > 0
    if skip_empty:
        val_where = val_where & _tiles_with_ink(labels_val & val_where, max(1, int(tile)))
        if not val_where.any():
            raise SegmentError(f"no validation tile of {val_seg.name} holds ink: nothing to score with skip_empty")

    train = []
    for i, seg in enumerate(segs):
        where = np.asarray(seg.scored_mask(), dtype=bool)  # supervision / ignore masks honoured
        if i == owner and region is not None:
            grow = smooth // 2 + max(0, int(margin))
            near = ndimage.binary_dilation(region, iterations=grow) if grow else region
            where = where & ~near
        train.append(TrainingVolume(seg.volume, where, np.asarray(seg.inklabels), _window(seg.shape[0], depth),
                                    _normalizer(data, seg)))
    try:
        model = fit_linear_baseline(train, method=method, smooth=smooth, max_samples=max_samples, seed=seed)
        z = _window(val_seg.shape[0], depth)
        probs = predict_map(model, val_seg.volume, val_where, z, smooth, _normalizer(data, val_seg))
    except AnalysisInputError as exc:
        raise ConfigError(f"linear baseline: {exc}") from None
    rows = {ALL_INK_NAME: all_ink_metrics(labels_val, val_where),
            LINEAR_NAME: score_map(probs, labels_val, val_where)}
    return BaselineResult(rows, probs, val_where, str(val_seg.path), model, z, model.n_train)
