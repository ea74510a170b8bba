"""What an encoder learned, on the fragment: per-position features over a region, a PCA basis shared
by the encoders (so a colour means the same direction of feature space in every encoder's picture),
and the cosine similarity of every position to one clicked position.

``explore_features(cfg)`` is a plain generator (the embedding explorer dock runs it in a worker; the
CLI ``vesuvius-pt features`` drives it and writes a zarr): for each encoder it reads the region tile by
tile (``cfg.tile.size`` squares, the depth centred in the segment), runs the encoder, keeps the stage
``cfg.layer``'s map averaged over depth — one ``C``-vector per position, ``size / stride`` positions
per tile side — and yields ``TilesDone`` per batch. Then one PCA is fitted on the positions of all
encoders together and each encoder's features become an RGB image (the first three components, each
scaled by the 1st-99th percentile of all encoders' projections). Memory is bounded by the region:
``C × (region / stage stride)²`` floats per encoder, never the fragment.

Encoders: ``random`` (the architecture of the first encoder loaded from a file, weights seeded, so
the same each time), ``k700:FILE``, a run folder (its last checkpoint), ``RUN@EPOCH`` (that epoch's
checkpoint) or a checkpoint file. Their stage widths must agree for a shared basis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.config import FeaturesConfig
from napari_vesuvius_pt.engine.events import Event, Finished, Started, TilesDone
from napari_vesuvius_pt.errors import ConfigError, WeightsError

RGB_PERCENTILES = (1.0, 99.0)


def run_epoch_source(source: str) -> str:
    """``RUN@EPOCH`` -> that epoch's checkpoint file; other sources unchanged."""
    if "@" not in source or source.startswith(("random", "k700:", "k400:")):
        return source
    run, _, epoch = source.rpartition("@")
    if not epoch.isdigit():
        return source
    path = Path(run) / "checkpoints" / f"epoch_{int(epoch):03d}.pt"
    if not path.is_file():
        from napari_vesuvius_pt.models.sources import epoch_checkpoints

        have = ", ".join(p.stem for p in epoch_checkpoints(run)) if Path(run).is_dir() else "no such run folder"
        raise WeightsError(f"{run} has no checkpoint for epoch {epoch} ({path}); it has: {have or 'none'}")
    return str(path)


def source_label(source: str) -> str:
    if source.startswith("random"):
        return source
    if source.startswith(("k700:", "k400:")):
        return Path(source.split(":", 1)[1]).stem
    if "@" in source and source.rpartition("@")[2].isdigit():
        run, _, epoch = source.rpartition("@")
        return f"{Path(run).name}@{int(epoch)}"
    p = Path(source)
    return f"{p.parent.parent.name}/{p.stem}" if p.suffix == ".pt" and p.parent.name == "checkpoints" else p.name


@dataclass
class FeatureMap:
    """One encoder's per-position features over the region: ``(C, h, w)`` float32; a position covers
    ``scale`` full-resolution pixels and its centre lies at ``translate + scale * index``."""

    name: str
    source: str
    features: np.ndarray
    scale: tuple[float, float]
    translate: tuple[float, float]


@dataclass
class PCABasis:
    mean: np.ndarray  # (C,)
    components: np.ndarray  # (3, C)
    low: np.ndarray  # (3,) percentile of the projections (all encoders), for the colour scale
    high: np.ndarray  # (3,)
    explained: np.ndarray  # (3,) fraction of the variance each component explains

    def project(self, features: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` -> ``(h, w, 3)`` projections onto the basis."""
        c, h, w = features.shape
        flat = features.reshape(c, -1).T - self.mean
        return (flat @ self.components.T).reshape(h, w, 3)

    def rgb(self, features: np.ndarray) -> np.ndarray:
        """``(h, w, 3)`` uint8 colours on the shared scale."""
        x = (self.project(features) - self.low) / np.maximum(self.high - self.low, 1e-12)
        return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


@dataclass
class FeaturesReady:
    """The explorer's result: every encoder's map, the shared basis and each encoder's RGB image."""

    maps: dict[str, FeatureMap]
    basis: PCABasis
    rgb: dict[str, np.ndarray]


def fit_shared_pca(maps: list[np.ndarray], components: int = 3, max_positions: int = 200_000,
                   seed: int = 0) -> PCABasis:
    """One PCA over the positions of every map together (each ``(C, h, w)``, the same ``C``)."""
    channels = {m.shape[0] for m in maps}
    if len(channels) != 1:
        raise ConfigError(f"the encoders' features have different widths ({sorted(channels)} channels); a shared "
                          "colour basis needs encoders of one architecture and width")
    rng = np.random.default_rng(seed)
    rows = []
    per_map = max(1, max_positions // len(maps))
    for m in maps:
        flat = m.reshape(m.shape[0], -1).T
        if flat.shape[0] > per_map:
            flat = flat[rng.choice(flat.shape[0], per_map, replace=False)]
        rows.append(flat.astype(np.float64))
    x = np.concatenate(rows)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(components, vt.shape[0])
    comp = np.zeros((3, x.shape[1]))
    comp[:k] = vt[:k]
    for i in range(k):  # a sign convention, so the colours do not flip between runs
        j = np.argmax(np.abs(comp[i]))
        comp[i] *= np.sign(comp[i, j]) or 1.0
    var = s ** 2
    explained = np.zeros(3)
    explained[:k] = var[:k] / max(var.sum(), 1e-12)
    proj = (x - mean) @ comp.T
    low, high = np.percentile(proj, RGB_PERCENTILES, axis=0)
    return PCABasis(mean.astype(np.float32), comp.astype(np.float32), low, high, explained)


def cosine_similarity(features: np.ndarray, position: tuple[int, int], centre: bool = True) -> np.ndarray:
    """``(h, w)`` cosine similarity of every position's feature vector to the one at ``position``.

    ``centre``: subtract the region's mean feature vector first. Post-ReLU features are all positive,
    so raw cosines are high everywhere; centred, they say which positions look alike *here*."""
    c, h, w = features.shape
    y, x = position
    if not (0 <= y < h and 0 <= x < w):
        raise ConfigError(f"position {position} is outside the feature map ({h} x {w})")
    flat = features.reshape(c, -1).astype(np.float64)
    if centre:
        flat = flat - flat.mean(axis=1, keepdims=True)
        features = flat.reshape(c, h, w)
    ref = features[:, y, x]
    norms = np.linalg.norm(flat, axis=0) * max(float(np.linalg.norm(ref)), 1e-12)
    return (ref @ flat / np.maximum(norms, 1e-12)).reshape(h, w).astype(np.float32)


def position_of(fmap: FeatureMap, world_yx: tuple[float, float]) -> tuple[int, int] | None:
    """The feature-map index under a full-resolution ``(y, x)`` point (None outside the map)."""
    idx = np.rint((np.asarray(world_yx, float) - np.asarray(fmap.translate)) / np.asarray(fmap.scale)).astype(int)
    h, w = fmap.features.shape[1:]
    if 0 <= idx[0] < h and 0 <= idx[1] < w:
        return int(idx[0]), int(idx[1])
    return None


def _region(cfg: FeaturesConfig, plane: tuple[int, int], downsample: int) -> tuple[int, int, int, int]:
    h, w = plane
    if cfg.region is None:
        return 0, 0, h, w
    if len(cfg.region) != 4:
        raise ConfigError(f"region must be [y0, x0, y1, x1], got {cfg.region}")
    y0, x0, y1, x1 = (int(round(v / downsample)) for v in cfg.region)
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
    if y1 <= y0 or x1 <= x0:
        raise ConfigError(f"region {cfg.region} lies outside the segment's plane ({h * downsample} x "
                          f"{w * downsample} full-resolution pixels)")
    return y0, x0, y1, x1


def _load_encoders(sources: list[str]) -> list[tuple[str, str, Any]]:
    from napari_vesuvius_pt.models.checkpoint import encoder_from_source

    import torch

    resolved = [run_epoch_source(s) for s in sources]
    loaded: dict[int, Any] = {}
    spec = None
    for i, src in enumerate(resolved):
        if not src.startswith("random"):
            loaded[i], _ = encoder_from_source(src)
            spec = spec or loaded[i].spec
    for i, src in enumerate(resolved):
        if src.startswith("random"):
            torch.manual_seed(0)
            loaded[i], _ = encoder_from_source(src, spec)
    from napari_vesuvius_pt.naming import unique_names

    names = unique_names([source_label(s) for s in sources])
    return [(names[i], sources[i], loaded[i]) for i in range(len(sources))]


def explore_features(cfg: FeaturesConfig) -> Iterator[Event | FeaturesReady]:
    """Per-position features of each of ``cfg.encoders`` over ``cfg.region`` of ``cfg.segment``."""
    import torch

    from napari_vesuvius_pt.data.normalize import normalizer_from_config
    from napari_vesuvius_pt.data.segment import open_from_config
    from napari_vesuvius_pt.engine.device import resolve_device

    if not cfg.encoders:
        raise ConfigError("no encoder chosen: add random, a Kinetics-700 file, a run or a checkpoint")
    if not cfg.segment:
        raise ConfigError("no segment chosen: choose the segment or fragment to explore")
    device = resolve_device(cfg.device)
    segment = open_from_config(cfg.segment, cfg.data)
    normalize = normalizer_from_config(cfg.data, segment)
    depth, size = int(cfg.tile.depth), int(cfg.tile.size)
    zs = segment.shape[0]
    if depth > zs:
        raise ConfigError(f"tile depth {depth} exceeds the segment's {zs} layers; choose a depth <= {zs}")
    z0 = (zs - depth) // 2
    ds = int(segment.downsample)
    y0, x0, y1, x1 = _region(cfg, tuple(segment.shape[1:]), ds)
    origins = [(y, x) for y in range(y0, y1, size) for x in range(x0, x1, size)]
    margin = max(size // 2, 32)  # context read around each tile and cropped away: fewer seams where tiles meet
    encoders = _load_encoders(list(cfg.encoders))
    yield Started(run_dir=None, device=str(device), total_steps=len(origins) * len(encoders))
    maps: dict[str, FeatureMap] = {}
    for name, source, encoder in encoders:
        encoder = encoder.to(device).eval()
        out = None
        t0 = time.monotonic()
        for b in range(0, len(origins), max(1, cfg.batch_size)):
            batch = origins[b:b + cfg.batch_size]
            tiles = np.stack([normalize(segment.read_tile(z0, y - margin, x - margin, depth, size + 2 * margin))
                              for y, x in batch])
            with torch.inference_mode():
                _, feats = encoder.forward_features(torch.from_numpy(tiles[:, None]).to(device))
            full = feats[cfg.layer].float().mean(dim=2).cpu().numpy()  # (B, C, S, S): depth averaged
            stride = (size + 2 * margin) / full.shape[-1]
            crop = int(round(margin / stride))
            fmap = full[..., crop:full.shape[-2] - crop, crop:full.shape[-1] - crop]
            s = fmap.shape[-1]
            if out is None:
                h = int(np.ceil((y1 - y0) / stride))
                w = int(np.ceil((x1 - x0) / stride))
                out = np.zeros((fmap.shape[1], h, w), np.float32)
            for (y, x), f in zip(batch, fmap):
                iy, ix = int((y - y0) / stride), int((x - x0) / stride)
                hh, ww = min(s, out.shape[1] - iy), min(s, out.shape[2] - ix)
                out[:, iy:iy + hh, ix:ix + ww] = f[:, :hh, :ww]
            done = min(b + len(batch), len(origins))
            yield TilesDone(name, done, len(origins), done / max(time.monotonic() - t0, 1e-9))
        scale = (stride * ds, stride * ds)
        translate = (y0 * ds + (scale[0] - 1) / 2, x0 * ds + (scale[1] - 1) / 2)
        maps[name] = FeatureMap(name, source, out, scale, translate)
        encoder.to("cpu")
    basis = fit_shared_pca([m.features for m in maps.values()])
    result = FeaturesReady(maps, basis, {n: basis.rgb(m.features) for n, m in maps.items()})
    if cfg.out:
        write_features(cfg.out, result, cfg)
    yield result
    yield Finished(run_dir=Path(cfg.out) if cfg.out else None,
                   summary={"encoders": list(maps), "explained": basis.explained.round(4).tolist(),
                            "shape": list(next(iter(maps.values())).features.shape), "out": cfg.out})


def write_features(path: str | Path, result: FeaturesReady, cfg: FeaturesConfig | None = None) -> Path:
    """A zarr group: per encoder ``<name>/features`` (C, h, w) float32 and ``<name>/rgb`` (h, w, 3) uint8,
    with scale/translate attrs; the shared basis in the group attrs."""
    import zarr

    from napari_vesuvius_pt.config import to_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(str(path), mode="w")
    b = result.basis
    root.attrs.update({"format": "napari-vesuvius-pt/features/1", "encoders": list(result.maps),
                       "pca_mean": b.mean.tolist(), "pca_components": b.components.tolist(),
                       "pca_low": b.low.tolist(), "pca_high": b.high.tolist(), "explained": b.explained.tolist(),
                       "config": to_dict(cfg) if cfg is not None else {}})
    for name, m in result.maps.items():
        g = root.create_group(name)
        g.create_array("features", data=m.features, chunks=(m.features.shape[0], min(256, m.features.shape[1]),
                                                                 min(256, m.features.shape[2])))
        g.create_array("rgb", data=result.rgb[name])
        g.attrs.update({"source": m.source, "scale": list(m.scale), "translate": list(m.translate)})
    return path
