"""Is pretraining learning ink? A cheap frozen probe scored every N epochs of a pretraining run.

With ``probe_fragment`` (a labeled fragment) and ``probe_region`` (validation polygons on it), every
``probe_every`` epochs (and at the last one) the encoder, frozen and in eval mode, encodes up to
``probe_tiles`` non-overlapping training tiles (outside the polygons) and as many validation tiles
(centre inside them). Each tile's ``layer1`` and ``layer2`` maps are max-pooled over depth and put side
by side at stride 4 (``layer2`` repeated to that grid); a linear discriminant (closed form, pooled
covariance with a little shrinkage: no steps, no randomness) is fitted on the training positions
against the ink fraction at each output pixel (> 0.5 is ink), and gives each validation pixel a
probability, scored at full resolution like any model: F0.5 at the best threshold and AUC.
``probe_f05``, ``probe_auc`` and ``probe_prevalence`` go into the epoch's metrics (``metrics.jsonl``).

It is a monitor, not the comparison: the seed's "freeze the encoder and see" as a curve beside the loss.
``plot_probe`` draws it for the Pretrain widget and the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_vesuvius_pt.config import PretrainConfig, TileConfig
from napari_vesuvius_pt.data.tiles import load_regions, scale_polygons, split_by_regions
from napari_vesuvius_pt.engine.datasets import TileSource, open_source
from napari_vesuvius_pt.errors import ConfigError

PROBE_STRIDE = 4  # output pixels of the probe: layer1's in-plane stride
PROBE_KEYS = ("probe_f05", "probe_auc")
_SHRINK = 1e-2  # covariance shrinkage towards its mean eigenvalue


def validate_probe_config(cfg: PretrainConfig) -> None:
    if bool(cfg.probe_fragment) != bool(cfg.probe_region):
        raise ConfigError("the online probe needs both a labeled fragment (--probe-fragment) and validation "
                          "regions on it (--probe-region); give both or neither")
    if cfg.probe_every < 1:
        raise ConfigError(f"probe_every must be at least 1 epoch, got {cfg.probe_every}")
    if cfg.probe_tiles < 2:
        raise ConfigError(f"probe_tiles must be at least 2, got {cfg.probe_tiles}")
    if cfg.tile.size % PROBE_STRIDE:
        raise ConfigError(f"the online probe needs a tile size divisible by {PROBE_STRIDE}, got {cfg.tile.size}")


def _spread(index: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``index``, evenly spread (deterministic)."""
    if len(index) <= n:
        return index
    return index[np.linspace(0, len(index) - 1, n).round().astype(np.int64)]


@dataclass
class ProbeData:
    """The probe's tiles, normalized, with their full-resolution labels and masks (read once)."""

    train_tiles: Tensor  # (N, D, S, S) float32
    train_labels: np.ndarray  # (N, S, S) float32 0/1
    train_masks: np.ndarray  # (N, S, S) bool
    val_tiles: Tensor
    val_labels: np.ndarray
    val_masks: np.ndarray


def _read(source: TileSource, positions: np.ndarray, depth: int, size: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
    ink = source.segment.inklabels
    mask = source.segment.papyrus_mask()
    tiles, labels, masks = [], [], []
    for y, x in positions:
        tile = source.segment.read_tile(source.z0, int(y), int(x), depth, size)
        tiles.append(torch.from_numpy(source.normalizer(tile)))
        labels.append((np.asarray(ink[y:y + size, x:x + size]) > 0).astype(np.float32))
        masks.append(np.asarray(mask[y:y + size, x:x + size], dtype=bool))
    return torch.stack(tiles), np.stack(labels), np.stack(masks)


def prepare_probe(cfg: PretrainConfig) -> ProbeData | None:
    """The probe's tiles from ``cfg.probe_fragment`` split by ``cfg.probe_region``; None without a probe."""
    if not cfg.probe_fragment:
        return None
    size, depth = cfg.tile.size, cfg.tile.depth
    grid_tile = TileConfig(depth=depth, size=size, stride=size, min_mask_fraction=0.5)  # non-overlapping
    source = open_source(str(cfg.probe_fragment), cfg.data, grid_tile, 0, 0, None, need_labels=True)
    polygons = scale_polygons(load_regions(cfg.probe_region), cfg.data.downsample)
    train_idx, val_idx = split_by_regions(source.grid, polygons, size, 0)
    if len(train_idx) < 1 or len(val_idx) < 1:
        raise ConfigError(
            f"the online probe found {len(train_idx)} training and {len(val_idx)} validation tiles of "
            f"{size} pixels on {source.name}; draw regions that leave both (or use smaller tiles)")
    n = int(cfg.probe_tiles)
    positions = source.grid.positions
    tr = _read(source, positions[_spread(np.asarray(train_idx), n)], depth, size)
    va = _read(source, positions[_spread(np.asarray(val_idx), n)], depth, size)
    return ProbeData(*tr, *va)


@torch.no_grad()
def probe_features(encoder: torch.nn.Module, tiles: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """``(N, C, S/4, S/4)``: layer1 and layer2 max-pooled over depth, at stride 4."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(tiles), batch_size):
            x = tiles[start:start + batch_size].to(device)[:, None]
            _, feats = encoder.forward_features(x)
            l1 = feats["layer1"].float().amax(dim=2)
            l2 = feats["layer2"].float().amax(dim=2)
            l2 = F.interpolate(l2, size=l1.shape[-2:], mode="nearest")
            out.append(torch.cat([l1, l2], dim=1).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def _pixels(feats: Tensor) -> np.ndarray:
    n, c, h, w = feats.shape
    return feats.permute(0, 2, 3, 1).reshape(n * h * w, c).double().numpy()


def _targets(labels: np.ndarray, masks: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    n, size, _ = labels.shape
    k = size // s
    frac = labels.reshape(n, k, s, k, s).mean(axis=(2, 4)).reshape(-1)
    inside = masks.reshape(n, k, s, k, s).mean(axis=(2, 4)).reshape(-1) >= 0.5
    return frac > 0.5, inside


def fit_and_score(train_feats: Tensor, data: ProbeData) -> tuple[np.ndarray, np.ndarray]:
    """LDA weights and bias fitted on the training positions (standardized features)."""
    x = _pixels(train_feats)
    y, inside = _targets(data.train_labels, data.train_masks, PROBE_STRIDE)
    x, y = x[inside], y[inside]
    if y.all() or not y.any():
        raise ConfigError("the online probe's training tiles hold only ink or no ink at all; "
                          "draw the probe regions so that the rest of the fragment has both")
    mu0, mu1 = x[~y].mean(0), x[y].mean(0)
    xc = np.where(y[:, None], x - mu1, x - mu0)
    cov = xc.T @ xc / len(x)
    d = cov.shape[0]
    cov = (1 - _SHRINK) * cov + _SHRINK * (np.trace(cov) / d) * np.eye(d)
    w = np.linalg.solve(cov, mu1 - mu0)
    p = float(y.mean())
    b = -w @ (mu0 + mu1) / 2 + math.log(p / (1 - p))
    return w, np.asarray(b)


def run_probe(encoder: torch.nn.Module, data: ProbeData, device: torch.device, batch_size: int) -> dict[str, float]:
    """F0.5 (best threshold), AUC and ink prevalence of the frozen probe on the validation tiles."""
    from napari_vesuvius_pt.analysis.metrics import fbeta_sweep

    w, b = fit_and_score(probe_features(encoder, data.train_tiles, device, batch_size), data)
    vf = probe_features(encoder, data.val_tiles, device, batch_size)
    n, _, h, wd = vf.shape
    logits = np.clip(_pixels(vf) @ w + b, -60, 60)
    probs = (1.0 / (1.0 + np.exp(-logits))).reshape(n, h, wd).astype(np.float32)
    full = probs.repeat(PROBE_STRIDE, axis=1).repeat(PROBE_STRIDE, axis=2)
    m = fbeta_sweep(full, data.val_labels > 0, beta=0.5, mask=data.val_masks)
    return {"probe_f05": float(m.f05), "probe_auc": float(m.auc), "probe_prevalence": float(m.prevalence)}


def due(epoch: int, epochs: int, every: int) -> bool:
    """Probe after epoch ``epoch`` (1-based): every ``every`` epochs and at the last one."""
    return epoch % max(1, every) == 0 or epoch == epochs


# ---------------------------------------------------------------- plotting (matplotlib, no Qt)


def probe_curve(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """``epoch``, ``probe_f05``, ``probe_auc`` lists from metrics.jsonl records (epochs that were probed)."""
    rows = [r for r in records if r.get("probe_f05") is not None and r.get("epoch") is not None]
    return {"epoch": [float(r["epoch"]) for r in rows], **{k: [float(r[k]) for r in rows] for k in PROBE_KEYS}}


def plot_probe(ax, records: Sequence[dict[str, Any]], title: str | None = "online probe (frozen encoder)") -> bool:
    """Draw the probe's F0.5 and AUC per epoch on a matplotlib axes; False (nothing drawn) without probes."""
    curve = probe_curve(records)
    if not curve["epoch"]:
        return False
    ax.plot(curve["epoch"], curve["probe_f05"], "o-", label="probe F0.5")
    ax.plot(curve["epoch"], curve["probe_auc"], "s--", label="probe AUC")
    ax.set_xlabel("epoch")
    ax.set_ylim(0.0, 1.0)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title, fontsize="small")
    return True
