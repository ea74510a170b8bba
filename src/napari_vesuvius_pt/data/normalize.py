"""Intensity normalizations by name: how tiles of raw uint8/uint16 layers become float32 model input.

Scroll segments and fragments differ in intensity distribution; choosing the normalization (and, for
``minmax`` and ``zscore``, fitting it on each segment) is how a run bridges that. The name and the fitted
parameters go into every run's config (``DataConfig.normalization`` / ``normalization_params``), so a
prediction or a resumed run normalizes exactly as training did.

- ``none``: the raw values as float32.
- ``kaggle``: what every reference pipeline of the Kaggle ink-detection challenge did, mostly without
  saying so: ``cv2.imread(path, 0)`` on the 16-bit TIFF layers silently converts them to 8 bits by
  dropping the low byte (``value >> 8``); the pipelines then clip to 0..200 and divide by 255. Here it is
  one explicit function, :func:`kaggle_normalize`. uint8 input skips the shift (it is already 8-bit).
  The result lies in [0, 200/255].
- ``minmax``: ``(x - low) / (high - low)`` clipped to [0, 1], with low and high the 1st and 99th
  percentiles of voxels inside the mask, from a sample of tiles.
- ``zscore``: ``(x - mean) / std`` with mean and std of voxels inside the mask, from a sample of tiles.
- ``instance``: each tile by its own mean and std (no fitted parameters).
- ``div255``: the seed's input: 8-bit values (uint16 layers ``>> 8`` first, as ``kaggle``) divided by
  255 without clipping, in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_vesuvius_pt.config import NORMALIZATIONS
from napari_vesuvius_pt.errors import ConfigError, SegmentError

if TYPE_CHECKING:
    from napari_vesuvius_pt.config import DataConfig

PERCENTILES = (1.0, 99.0)  # minmax's low and high
_FITTED_PARAMS = {"minmax": ("low", "high"), "zscore": ("mean", "std")}
_EPS = 1e-6


def kaggle_normalize(tile: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by ``>> 8`` (as ``cv2.imread(path, 0)`` did implicitly), clip to 0..200, / 255."""
    tile = np.asarray(tile)
    if tile.dtype == np.uint16:
        eight_bit = (tile >> 8).astype(np.uint8)
    elif tile.dtype == np.uint8:
        eight_bit = tile
    else:
        raise SegmentError(f"the kaggle normalization needs uint8 or uint16 layers, got {tile.dtype}; "
                           "use minmax or zscore for other types")
    return np.minimum(eight_bit, 200).astype(np.float32) / np.float32(255.0)


def div255_normalize(tile: np.ndarray) -> np.ndarray:
    """8-bit values / 255, no clipping (the seed's input); uint16 layers are ``>> 8`` first."""
    tile = np.asarray(tile)
    if tile.dtype == np.uint16:
        tile = (tile >> 8).astype(np.uint8)
    elif tile.dtype != np.uint8:
        raise SegmentError(f"the div255 normalization needs uint8 or uint16 layers, got {tile.dtype}; "
                           "use minmax or zscore for other types")
    return tile.astype(np.float32) / np.float32(255.0)


@dataclass
class Normalizer:
    name: str
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {self.name!r}; choose one of {', '.join(NORMALIZATIONS)}")
        needed = _FITTED_PARAMS.get(self.name, ())
        missing = [k for k in needed if k not in self.params]
        if missing:
            raise ConfigError(f"normalization {self.name!r} needs parameters {', '.join(needed)}; "
                              f"missing {', '.join(missing)} (leave normalization_params empty to fit them)")
        self.params = {k: float(v) for k, v in self.params.items()}
        if self.name == "minmax" and not self.params["high"] > self.params["low"]:
            raise ConfigError(f"minmax needs high > low, got low={self.params['low']}, high={self.params['high']}")
        if self.name == "zscore" and not self.params["std"] > 0:
            raise ConfigError(f"zscore needs std > 0, got {self.params['std']}")

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """float32, same shape. ``instance`` normalizes each tile over its last three axes (so a batch
        ``(B, D, S, S)`` gets one mean/std per tile), or over the whole array when it has fewer."""
        if self.name == "kaggle":
            return kaggle_normalize(tile)
        if self.name == "div255":
            return div255_normalize(tile)
        x = np.asarray(tile, dtype=np.float32)
        if self.name == "none":
            return x.copy() if x is tile else x
        if self.name == "minmax":
            low, high = self.params["low"], self.params["high"]
            return np.clip((x - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
        if self.name == "zscore":
            return (x - np.float32(self.params["mean"])) / np.float32(self.params["std"])
        axes = tuple(range(max(0, x.ndim - 3), x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        return (x - mean) / (std + np.float32(_EPS))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalizer":
        if not isinstance(data, dict) or "name" not in data:
            raise ConfigError(f"a normalizer is a mapping with 'name' and 'params', got {data!r}")
        return cls(str(data["name"]), dict(data.get("params") or {}))


def sample_voxels(volume, mask: np.ndarray | None = None, samples: int = 32, seed: int = 0,
                  size: int = 64, max_depth: int = 64) -> np.ndarray:
    """Voxels (1D float32) of ``samples`` random tiles whose centre lies inside ``mask``, masked pixels only.

    A tile spans up to ``max_depth`` central layers (all of them for usual segments), so the sample
    follows the whole depth profile (air, papyrus, air) the model sees.
    """
    nz, h, w = volume.shape
    rng = np.random.default_rng(seed)
    size = int(min(size, h, w))
    depth = int(min(nz, max_depth))
    z0 = (nz - depth) // 2
    plane = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    if plane.shape != (h, w):
        raise SegmentError(f"mask shape {plane.shape} does not match the volume's plane {(h, w)}")
    ys, xs = _sample_centres(rng, plane, samples)
    values = []
    for cy, cx in zip(ys, xs):
        y0 = int(np.clip(cy - size // 2, 0, h - size))
        x0 = int(np.clip(cx - size // 2, 0, w - size))
        tile = np.asarray(volume[z0:z0 + depth, y0:y0 + size, x0:x0 + size], dtype=np.float32)
        inside = plane[y0:y0 + size, x0:x0 + size]
        values.append(tile[:, inside].ravel())
    return np.concatenate(values) if values else np.empty(0, np.float32)


def _sample_centres(rng: np.random.Generator, plane: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random pixels inside ``plane`` by rejection (no index list of a huge mask), falling back to an
    exhaustive list when the mask is a sliver."""
    h, w = plane.shape
    found_y: list[np.ndarray] = []
    found_x: list[np.ndarray] = []
    count = 0
    for _ in range(20):
        ys = rng.integers(0, h, 8 * n + 64)
        xs = rng.integers(0, w, 8 * n + 64)
        keep = plane[ys, xs]
        found_y.append(ys[keep])
        found_x.append(xs[keep])
        count += int(keep.sum())
        if count >= n:
            break
    ys, xs = np.concatenate(found_y)[:n], np.concatenate(found_x)[:n]
    if len(ys) < n:
        iy, ix = np.nonzero(plane)
        if len(iy) == 0:
            raise SegmentError("the mask is empty: no papyrus to sample intensities from")
        pick = rng.integers(0, len(iy), n)
        ys, xs = iy[pick], ix[pick]
    return ys, xs


def fit_normalizer(name: str, volume, mask: np.ndarray | None = None, samples: int = 32, seed: int = 0) -> Normalizer:
    """A normalizer of kind ``name``, with parameters fitted on a sample of ``volume`` when it needs any."""
    if name not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {name!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if name not in _FITTED_PARAMS:
        return Normalizer(name, {})
    values = sample_voxels(volume, mask, samples=samples, seed=seed)
    if values.size == 0:
        raise SegmentError("no voxels to fit the normalization on (empty volume or mask)")
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - finite.sum())
        raise SegmentError(
            f"cannot fit {name}: {bad} of {values.size} sampled voxels inside the mask are NaN or infinite; "
            "the volume holds non-finite values: clean it (e.g. replace NaN by 0 and convert again), mask those "
            "regions out, or give normalization_params"
        )
    if name == "minmax":
        low, high = np.percentile(values, PERCENTILES)
        if not high > low:
            raise SegmentError(f"cannot fit minmax: the sampled intensities are constant ({low}) inside the mask")
        return Normalizer("minmax", {"low": float(low), "high": float(high)})
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    if not std > 0:
        raise SegmentError(f"cannot fit zscore: the sampled intensities are constant ({mean}) inside the mask")
    return Normalizer("zscore", {"mean": mean, "std": std})


def normalizer_from_config(data: "DataConfig", segment) -> Normalizer:
    """The run's normalizer: ``data.normalization_params`` when set, else fitted on ``segment`` (the engine
    stores the fitted ``params`` back into the run's config)."""
    name = data.normalization
    if data.normalization_params and name in _FITTED_PARAMS:
        return Normalizer(name, dict(data.normalization_params))
    return fit_normalizer(name, segment.volume, segment.mask)
