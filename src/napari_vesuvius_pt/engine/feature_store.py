"""A CKA run's features: what they are, their cache on disk, and their Gram matrices in memory.

Layers: ``pooled`` is the encoder's embedding (global average of layer4). ``layer1`` .. ``layer4`` are
stage maps average-pooled to ``STAGE_POOL`` = (1, 2, 2) (depth averaged, the plane in quadrants) and
flattened, channels x 4 features: coarse spatial layout is kept, and the features stay small enough to
cache.

Caching, so that a run can be checked every epoch: features are stored in ``OUT/features/`` as ``.npy``
keyed (:func:`feature_key`) by the checkpoint's path, modification time and size, the layer and the
probe set's hash (segment, data options, normalization, tile positions). :class:`GramCache` keeps each
source's unit-norm centred Gram matrix per kernel while it fits ``GRAM_CACHE_BYTES``, so a new row costs
one Gram matrix and k dot products.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_vesuvius_pt._atomic import atomic_open
from napari_vesuvius_pt.analysis.cka import centered_gram
from napari_vesuvius_pt.config import CKA_LAYERS as LAYERS
from napari_vesuvius_pt.errors import AnalysisInputError, RunError

STAGE_POOL = (1, 2, 2)
GRAM_CACHE_BYTES = 1024 * 2**20  # centred Gram matrices kept in memory up to this size


def layer_features(encoder: torch.nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """(B, d) features of a batch at ``layer`` (see the module docstring)."""
    embedding, stages = encoder(x, return_features=True)
    if layer == "pooled":
        return embedding.flatten(1)
    return torch.nn.functional.adaptive_avg_pool3d(stages[layer], STAGE_POOL).flatten(1)


def feature_key(identity: str, layer: str, probe_key: str) -> str:
    """The cache key of one source's features: its identity (``CKASource.identity``), layer and probe set."""
    text = f"{identity}|{layer}|{STAGE_POOL}|{probe_key}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "source"


class FeatureStore:
    """``OUT/features/<name>-<key>.npy``; the key alone identifies the features."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find(self, key: str) -> Path | None:
        hits = sorted(self.folder.glob(f"*-{key}.npy")) if self.folder.is_dir() else []
        return hits[0] if hits else None

    def valid(self, key: str, n: int) -> bool:
        """A readable (n, d) feature file exists (only its header is read)."""
        path = self.find(key)
        if path is None:
            return False
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        return arr.ndim == 2 and arr.shape[0] == n

    def load(self, key: str) -> np.ndarray:
        path = self.find(key)
        if path is None:
            raise RunError(f"cached features {key} vanished from {self.folder} during the run; run again")
        return np.load(path, allow_pickle=False)

    def save(self, name: str, key: str, features: np.ndarray) -> Path:
        path = self.folder / f"{_safe(name)}-{key}.npy"
        with atomic_open(path, "wb") as fh:
            np.save(fh, features, allow_pickle=False)
        return path


class GramCache:
    """Unit-norm centred Gram matrices by (feature key, kernel), least recently used dropped first.

    An entry is a string instead when CKA is undefined for those features (NaN, constant, collapsed).
    """

    def __init__(self, budget: int = GRAM_CACHE_BYTES) -> None:
        self.budget = budget
        self.items: OrderedDict[tuple[str, str], np.ndarray | str] = OrderedDict()
        self.bytes = 0

    def get(self, key: str, kernel: str, features: Callable[[], np.ndarray], threshold: float,
            debiased: bool) -> np.ndarray | str:
        item = self.items.get((key, kernel))
        if item is not None:
            self.items.move_to_end((key, kernel))
            return item
        try:
            item = centered_gram(features(), kernel, threshold=threshold, debiased=debiased)
        except AnalysisInputError as exc:
            item = str(exc).removeprefix("X: ")
        self.items[(key, kernel)] = item
        self.bytes += item.nbytes if isinstance(item, np.ndarray) else 0
        while self.bytes > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes if isinstance(old, np.ndarray) else 0
        return item
