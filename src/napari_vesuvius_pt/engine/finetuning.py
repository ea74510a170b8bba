"""Ink fine-tuning on labeled fragments as a generator of events.

    for event in finetune(cfg): ...

The encoder comes from ``random``, ``k700:FILE``, a pretraining run folder or a checkpoint, frozen or
trained with its own (smaller) learning rate, under an :class:`InkModel` head that predicts ink at
``1 / output_stride`` of the tile size. Training tiles lie inside the fragments' masks; validation is a
whole fragment (``val_fragment``) or polygons on a training fragment (``val_region``; the one its file
names, else the first): tiles
whose centre is inside a polygon validate, tiles touching a polygon or a validation tile otherwise are
dropped, so no pixel both trains and validates.

Loss: ``bce_weight * BCE + (1 - bce_weight) * Dice`` on the reduced-size logits against the labels
averaged to that size (optionally label-smoothed for the BCE). Training masks (villa's layout, see
``data.layouts``): only pixels inside a fragment's supervision mask and outside its ignore mask count in
the loss and the validation scores (``supervision_masks`` / ``ignore_masks`` turn them off); tiles with
no counted pixel are dropped; ``val_mask`` validates on the first fragment's validation mask, split
like polygons. Each epoch the validation tiles are
predicted, stitched (overlaps averaged) over the validation bounding box and scored at the segment's
resolution: F0.5 at the best threshold, the threshold, precision, recall, AUC. A ``PreviewReady`` event
carries the stitched prediction. Stopping, resuming and failures behave as in pretraining.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_vesuvius_pt.config import FinetuneConfig, to_dict
from napari_vesuvius_pt.data.augment import augment_batch
from napari_vesuvius_pt.data.tiles import (
    load_regions,
    region_owner,
    save_regions,
    scale_polygons,
    split_by_mask,
    split_by_regions,
)
from napari_vesuvius_pt.engine.datasets import (
    ValidationTiles,
    InkTiles,
    TileSource,
    open_source,
    tile_index,
)
from napari_vesuvius_pt.engine.device import release_device_memory
from napari_vesuvius_pt.engine.distributed import DistContext, run_distributed, unwrap, wrap_ddp
from napari_vesuvius_pt.engine.events import Event, PreviewReady
from napari_vesuvius_pt.engine.failures import is_out_of_memory, out_of_memory_message
from napari_vesuvius_pt.engine.loop import (
    EpochFailed,
    hold_run,
    open_run,
    prepare_training,
    train_epochs,
    validate_training,
)
from napari_vesuvius_pt.engine.precision import Precision
from napari_vesuvius_pt.engine.rng import seed_everything
from napari_vesuvius_pt.errors import ConfigError

REGION_COPY = "val_region.json"  # the validation polygons, copied into the run folder
PREVIEW_MAX_PIXELS = 16_000_000  # larger previews are sent at the model's output resolution, with a scale


def validate_finetune_config(cfg: FinetuneConfig) -> None:
    if not cfg.fragments:
        raise ConfigError("no training fragments; give one or more with --fragments PATH ...")
    given = [flag for flag, on in (("--val-fragment", cfg.val_fragment), ("--val-region", cfg.val_region),
                                   ("--val-mask", cfg.val_mask)) if on]
    if len(given) > 1:
        raise ConfigError(f"give either {' or '.join(given)}, not {'both' if len(given) == 2 else 'all three'}: "
                          "one kind of validation data (a fragment, regions, or the fragment's validation mask)")
    if not given:
        raise ConfigError("no validation data: give --val-fragment PATH, --val-region FILE (polygons on the first "
                          "fragment) or --val-mask (the first fragment's own validation mask)")
    validate_training(cfg)
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}")
    if not 0.0 <= cfg.bce_weight <= 1.0:
        raise ConfigError(f"bce_weight must lie in [0, 1], got {cfg.bce_weight}")
    if cfg.encoder_lr_scale < 0:
        raise ConfigError(f"encoder_lr_scale must be 0 or more, got {cfg.encoder_lr_scale}")
    if cfg.region_margin < 0:
        raise ConfigError(f"region_margin must be 0 or more pixels, got {cfg.region_margin}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must lie in [0, 1), got {cfg.label_smoothing}")
    if cfg.tile.size % cfg.output_stride:
        raise ConfigError(
            f"tile size {cfg.tile.size} is not a multiple of the output stride {cfg.output_stride}; "
            f"use a tile size divisible by {cfg.output_stride}"
        )


def ink_loss(logits: Tensor, labels: Tensor, bce_weight: float, label_smoothing: float,
             weight: Tensor | None = None) -> dict[str, Tensor]:
    """BCE + Dice of ``(B, 1, s, s)`` logits against ``(B, 1, S, S)`` 0/1 labels averaged to ``s``.

    ``weight`` ``(B, 1, S, S)`` (1: the pixel counts, 0: it does not; supervision and ignore masks): each
    output pixel then weighs the fraction of its block that counts, and its target is the mean label of
    those pixels only; output pixels with nothing counted leave both terms."""
    logits = logits.float()
    probs = torch.sigmoid(logits)
    if weight is None:
        target = F.adaptive_avg_pool2d(labels.float(), logits.shape[-2:])
        smooth = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
        bce = F.binary_cross_entropy_with_logits(logits, smooth)
        w = None
    else:
        w = F.adaptive_avg_pool2d(weight.float(), logits.shape[-2:])
        counted = F.adaptive_avg_pool2d(labels.float() * weight.float(), logits.shape[-2:])
        target = torch.where(w > 0, counted / w.clamp_min(1e-6), torch.zeros_like(w))
        smooth = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
        per_pixel = F.binary_cross_entropy_with_logits(logits, smooth, reduction="none")
        bce = (per_pixel * w).sum() / w.sum().clamp_min(1e-6)
        probs, target = probs * w, target * w
    inter = (probs * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (probs.sum() + target.sum() + 1.0)
    return {"loss": bce_weight * bce + (1.0 - bce_weight) * dice, "bce": bce, "dice": dice}


# ---------------------------------------------------------------- data


def _has_ink(source: TileSource, size: int) -> np.ndarray:
    ink = source.segment.inklabels
    return np.array([bool(np.any(ink[y:y + size, x:x + size])) for y, x in source.grid.positions], dtype=bool)


def _subset(source: TileSource, index: np.ndarray) -> TileSource:
    return dataclasses.replace(source, grid=source.grid.subset(index))


def _apply_mask_choices(cfg: FinetuneConfig, source: TileSource) -> TileSource:
    """Drop the segment's supervision / ignore masks the run does not honour."""
    if not cfg.supervision_masks:
        source.segment.supervision_mask = None
    if not cfg.ignore_masks:
        source.segment.ignore_mask = None
    return source


def has_training_masks(sources: list[TileSource]) -> bool:
    """Whether any source has a supervision or ignore mask (the loss is then weighted per pixel)."""
    return any(s.segment.supervision_mask is not None or s.segment.ignore_mask is not None for s in sources)


def _counted_tiles(source: TileSource, size: int) -> np.ndarray:
    """Indices of the tiles with at least one pixel that counts (supervision and ignore masks)."""
    scored = source.segment.scored_mask()
    return np.nonzero([bool(scored[y:y + size, x:x + size].any()) for y, x in source.grid.positions])[0]


def prepare_data(cfg: FinetuneConfig, run_dir: Path | None,
                 saved_norm: dict[str, dict[str, float]] | None = None) -> tuple[list[TileSource], TileSource, dict[str, Any]]:
    """Training sources, the validation source (its grid holds exactly the validation tiles) and a
    description of the split."""
    saved_norm = saved_norm or {}
    max_shift = int(cfg.augment.max_z_shift)

    def params(path: str) -> dict[str, float]:
        return saved_norm.get(str(path)) or cfg.data.normalization_params

    train = [_apply_mask_choices(cfg, open_source(p, cfg.data, cfg.tile, max_shift, 0, params(p), need_labels=True))
             for p in cfg.fragments]
    info: dict[str, Any] = {}
    if cfg.val_mask:
        first = train[0]
        region = first.segment.validation_mask
        if region is None:
            raise ConfigError(f"{first.name} ({first.path}) has no validation mask (<id>_validation_mask.png or "
                              ".zarr beside it); give --val-region or --val-fragment instead")
        train_idx, val_idx = split_by_mask(first.grid, region, cfg.region_margin)
        val = _apply_mask_choices(cfg, open_source(first.path, cfg.data, cfg.tile, 0, 0, params(first.path),
                                                   need_labels=True))
        val = _subset(val, val_idx)
        train[0] = _subset(first, train_idx)
        info.update(region="validation mask", dropped_tiles=int(len(first.grid) - len(train_idx) - len(val_idx)))
    elif cfg.val_region:
        polygons_full = load_regions(cfg.val_region)
        polygons = scale_polygons(polygons_full, cfg.data.downsample)
        at = region_owner(train, cfg.val_region)
        first = train[at]
        h, w = first.grid.shape
        for poly in polygons:
            if poly[:, 0].max() < 0 or poly[:, 1].max() < 0 or poly[:, 0].min() > h - 1 or poly[:, 1].min() > w - 1:
                raise ConfigError(
                    f"a validation polygon of {cfg.val_region} lies outside {first.name} ({h}x{w} pixels "
                    f"at downsample {cfg.data.downsample}); polygons are (y, x) in full-resolution pixels"
                )
        train_idx, val_idx = split_by_regions(first.grid, polygons, cfg.tile.size, cfg.region_margin)
        val = _apply_mask_choices(cfg, open_source(first.path, cfg.data, cfg.tile, 0, 0, params(first.path),
                                                   need_labels=True))
        val = _subset(val, val_idx)
        train[at] = _subset(first, train_idx)
        info.update(region=str(cfg.val_region), region_fragment=first.name, polygons=len(polygons),
                    dropped_tiles=int(len(first.grid) - len(train_idx) - len(val_idx)))
        if run_dir is not None:
            save_regions(run_dir / REGION_COPY, polygons_full, fragment=first.name, fragment_path=first.path)
    else:
        val = _apply_mask_choices(cfg, open_source(str(cfg.val_fragment), cfg.data, cfg.tile, 0, 0,
                                                   params(str(cfg.val_fragment)), need_labels=True))
    if has_training_masks(train):  # tiles where no pixel counts teach nothing
        train = [_subset(s, _counted_tiles(s, cfg.tile.size)) for s in train]
    if has_training_masks([val]):
        val = _subset(val, _counted_tiles(val, cfg.tile.size))
        info.update(masks=True)
    if cfg.only_ink_tiles:
        train = [_subset(s, np.nonzero(_has_ink(s, cfg.tile.size))[0]) for s in train]
    if cfg.skip_empty_eval:
        val = _subset(val, np.nonzero(_has_ink(val, cfg.tile.size))[0])
    n_train = sum(len(s.grid) for s in train)
    if n_train == 0:
        raise ConfigError(
            "no training tiles are left (inside the masks"
            + (", outside the validation regions" if cfg.val_region else "")
            + (", with ink" if cfg.only_ink_tiles else "")
            + "); use smaller tiles, a lower min_mask_fraction or smaller validation regions"
        )
    if len(val.grid) == 0:
        raise ConfigError(
            "no validation tiles: no tile centre lies inside the validation "
            + ("regions" if cfg.val_region else "fragment's mask")
            + (" among tiles with ink" if cfg.skip_empty_eval else "")
            + "; draw larger regions or use smaller tiles"
        )
    warning = check_validation_labels(val, cfg.tile.size, "regions" if cfg.val_region else "fragment")
    if warning:
        info["notes"] = [warning]
    info.update(train_tiles=n_train, val_tiles=len(val.grid))
    return train, val, info


def check_validation_labels(val: TileSource, size: int, what: str) -> str | None:
    """A warning when the validation pixels are all background or all ink: F0.5 there is 0 (or 1) whatever
    the model does, so the run's scores mean nothing (the run's summary carries it as a note)."""
    ink = np.asarray(val.segment.inklabels) > 0
    inside = np.zeros(ink.shape, dtype=bool)
    for y, x in val.grid.positions:
        inside[y:y + size, x:x + size] = True
    inside &= np.asarray(val.segment.papyrus_mask(), dtype=bool)
    n, n_ink = int(inside.sum()), int(ink[inside].sum())
    if n and n_ink in (0, n):
        kind, score = ("no ink", "0") if n_ink == 0 else ("only ink", "1")
        verb = "hold" if what.endswith("s") else "holds"
        return (f"the validation {what} {verb} {kind} ({n} labeled pixels): F0.5 there is {score} whatever the "
                "model predicts; choose validation data with both ink and background for scores that mean something")
    return None


# ---------------------------------------------------------------- validation


@torch.no_grad()
def predict_tiles(model, val: TileSource, cfg: FinetuneConfig, device: torch.device, precision: Precision,
                  read: Callable[[int, int], np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
    """Stitch the model's outputs over the validation tiles' bounding box.

    Returns (mean probability, coverage count) on a grid of ``cell``-pixel cells, the box origin
    (y, x) in segment pixels and ``cell``. Overlapping outputs are averaged. ``read(y, x)`` gives a
    normalized tile (``ValidationTiles.tile``, cached between epochs); the next batch is read in a
    background thread while the model runs on this one.
    """
    size, stride = cfg.tile.size, cfg.output_stride
    positions = val.grid.positions
    origin = positions.min(axis=0)
    cell = math.gcd(stride, *(int(v) for v in np.unique(positions - origin)))  # output pixels land on cells
    extent = positions.max(axis=0) + size - origin
    total = np.zeros(tuple(int(e) // cell for e in extent), dtype=np.float32)
    count = np.zeros_like(total)
    if read is None:
        dataset = InkTiles([val], tile_index([val]), cfg.tile.depth, size, 0)
        index = {(int(y), int(x)): i for i, (y, x) in enumerate(positions)}

        def read(y: int, x: int) -> np.ndarray:
            return dataset[(index[(y, x)], 0)][0].numpy()

    def read_batch(keys: range) -> torch.Tensor:
        return torch.from_numpy(np.stack([read(int(positions[i][0]), int(positions[i][1])) for i in keys]))

    model.eval()
    up = stride // cell
    n = size // cell
    starts = list(range(0, len(positions), cfg.batch_size))
    batches = [range(b, min(b + cfg.batch_size, len(positions))) for b in starts]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="val-read") as pool:
        pending = pool.submit(read_batch, batches[0]) if batches else None
        for j, keys in enumerate(batches):
            tiles = pending.result().to(device)[:, None]
            pending = pool.submit(read_batch, batches[j + 1]) if j + 1 < len(batches) else None
            _stitch(model, tiles, keys, positions, origin, cell, up, n, total, count, precision)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return mean, count, (int(origin[0]), int(origin[1])), cell


@torch.no_grad()
def _stitch(model, tiles: Tensor, keys: range, positions: np.ndarray, origin: np.ndarray, cell: int, up: int,
            n: int, total: np.ndarray, count: np.ndarray, precision: Precision) -> None:
    """Predict one batch of validation tiles and add it to the stitched sums."""
    with precision.autocast():
        logits = model(tiles)
    probs = torch.sigmoid(logits.float())[:, 0]
    if up > 1:
        probs = probs.repeat_interleave(up, dim=1).repeat_interleave(up, dim=2)
    probs = probs.cpu().numpy()
    for k, i in enumerate(keys):
        y, x = (positions[i] - origin) // cell
        total[y:y + n, x:x + n] += probs[k]
        count[y:y + n, x:x + n] += 1


def score(mean: np.ndarray, count: np.ndarray, origin: tuple[int, int], cell: int, val: TileSource) -> dict[str, float]:
    """F0.5 (best threshold), threshold, precision, recall, AUC on the validation tiles' pixels that count:
    inside the mask and the supervision mask, outside the ignore mask (``Segment.scored_mask``)."""
    from napari_vesuvius_pt.analysis.metrics import fbeta_sweep

    h, w = mean.shape[0] * cell, mean.shape[1] * cell
    y0, x0 = origin
    probs = np.kron(mean.astype(np.float16), np.ones((cell, cell), dtype=np.float16)) if cell > 1 else mean.astype(np.float16)
    covered = np.kron(count > 0, np.ones((cell, cell), dtype=bool)) if cell > 1 else count > 0
    labels = np.asarray(val.segment.inklabels[y0:y0 + h, x0:x0 + w]) > 0
    inside = covered & np.asarray(val.segment.scored_mask()[y0:y0 + h, x0:x0 + w], dtype=bool)
    m = fbeta_sweep(probs, labels, beta=0.5, mask=inside)
    return {"f05": m.f05, "threshold": m.threshold, "precision": m.precision, "recall": m.recall, "auc": m.auc,
            "f05_at_05": m.f05_at_05, "prevalence": m.prevalence, "baseline_f05": all_ink_f05(m.prevalence)}


def all_ink_f05(prevalence: float) -> float:
    """F0.5 of calling every pixel ink (precision = prevalence p, recall = 1): 1.25 p / (0.25 p + 1)."""
    p = float(prevalence)
    return 1.25 * p / (0.25 * p + 1.0) if p > 0 else 0.0


def preview(mean: np.ndarray, origin: tuple[int, int], cell: int, downsample: int, epoch: int,
            segment_path: str = "") -> PreviewReady:
    """The stitched prediction in full-resolution pixels (translate/scale place it over the fragment)."""
    f = int(downsample)
    if mean.size * cell * cell <= PREVIEW_MAX_PIXELS:
        array = np.kron(mean, np.ones((cell, cell), dtype=np.float32)) if cell > 1 else mean.copy()
        step = 1
    else:
        array, step = mean.copy(), cell
    # segment pixel i covers full-resolution pixels i*f .. i*f + f - 1 (centre i*f + (f - 1) / 2)
    translate = tuple(float(o * f + (step * f - 1) / 2.0) for o in origin)
    return PreviewReady(epoch, "validation prediction", array.astype(np.float32), translate, (float(step * f), float(step * f)),
                        str(segment_path))


# ---------------------------------------------------------------- the run


def finetune(cfg: FinetuneConfig) -> Iterator[Event]:
    """Run (or resume, with ``cfg.resume``) an ink fine-tuning; see the module docstring."""
    validate_finetune_config(cfg)
    with hold_run(cfg):  # one run at a time in a run folder
        yield from run_distributed(cfg.device, lambda ctx: _finetune(cfg, ctx))


def _build_model(cfg: FinetuneConfig, payload: dict[str, Any] | None):
    """The ink model on its encoder (from ``cfg.encoder_origin``, or the run's own when resuming, with
    the checkpoint's weights) and the description of that encoder kept in the checkpoints."""
    from napari_vesuvius_pt.models.checkpoint import encoder_from_source
    from napari_vesuvius_pt.models.encoder import encoder_from_spec
    from napari_vesuvius_pt.models.head import InkModel

    seed_everything(cfg.seed)
    if payload is not None:  # resuming: the run's own encoder, loaded below with the head
        encoder = encoder_from_spec(payload["encoder_spec"])
        info = dict(payload.get("encoder_info") or {})
    else:
        encoder, info = encoder_from_source(cfg.encoder_origin, cfg.encoder)
    seed_everything(cfg.seed)  # the head starts the same whatever the encoder's source consumed
    # a resumed run keeps the head it was trained with (runs before the option pooled by mean)
    pooling = (payload.get("depth_pooling") or "mean") if payload is not None else cfg.depth_pooling
    model = InkModel(encoder, output_stride=cfg.output_stride, depth_pooling=pooling)
    model.freeze_encoder(cfg.freeze_encoder)
    if payload is not None:
        model.encoder.load_state_dict(payload["encoder"])
        model.head.load_state_dict(payload["head"])
    keep = {k: v for k, v in info.items() if k in ("origin", "source", "checkpoint", "epoch", "summary", "run")}
    return model, {k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v) for k, v in keep.items()}


class _InkSteps:
    """The ink loss of a micro-batch of labeled tiles; validation, scores and the preview each epoch."""

    loss_name = "ink loss"
    term_names = ("loss", "bce", "dice")

    def __init__(self, cfg: FinetuneConfig, model: nn.Module, ctx: DistContext, precision: Precision,
                 val: TileSource, encoder_info: dict[str, Any]) -> None:
        self.cfg, self.model, self.ctx, self.precision = cfg, model, ctx, precision
        self.val, self.encoder_info = val, encoder_info
        # a fixed subsample each epoch, all tiles at the last; normalized tiles cached between epochs
        self.val_tiles = ValidationTiles(val, cfg.tile.depth, cfg.tile.size, cfg.val_subsample, cfg.seed)

    def start_epoch(self, partial: dict[str, Any] | None) -> None:
        self.model.train()

    def augment(self, batch: tuple[Tensor, ...], aug_gen: torch.Generator) -> tuple[Tensor, Tensor, bool]:
        cfg, device = self.cfg, self.ctx.device
        tiles, labels, *weight = batch
        tiles = tiles.to(device, non_blocking=True)[:, None]
        labels = labels.to(device, non_blocking=True)[:, None]
        if weight:  # the weights move with the labels: one more channel through the same augmentation
            labels = torch.cat([labels, weight[0].to(device, non_blocking=True)[:, None]], dim=1)
        tiles, labels = augment_batch(tiles, labels, cfg.augment, aug_gen)
        return tiles, labels, bool(weight)

    def losses(self, batch: tuple[Tensor, Tensor, bool]) -> dict[str, Tensor]:
        cfg = self.cfg
        tiles, labels, weighted = batch
        with self.precision.autocast():
            logits = self.model(tiles)
        if weighted:
            return ink_loss(logits, labels[:, :1], cfg.bce_weight, cfg.label_smoothing, labels[:, 1:])
        return ink_loss(logits, labels, cfg.bce_weight, cfg.label_smoothing)

    def partial_state(self) -> dict[str, Any]:
        return {}

    def train_metrics(self) -> dict[str, float]:
        return {}

    def evaluate(self, epoch: int, metrics: dict[str, float]) -> list[Event]:
        cfg, device = self.cfg, self.ctx.device
        if not self.ctx.is_main:
            return []
        val = self.val_tiles.for_epoch(epoch, cfg.epochs)
        t0 = time.perf_counter()
        try:
            mean, count, origin, cell = predict_tiles(unwrap(self.model), val, cfg, device, self.precision,
                                                      self.val_tiles.tile)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            release_device_memory(device)
            raise EpochFailed(out_of_memory_message(device, cfg) + " (validation)") from None
        if not np.isfinite(mean).all():  # the weights diverged in the epoch's last steps
            from napari_vesuvius_pt.engine.failures import nonfinite_message

            raise EpochFailed(nonfinite_message("model's output on the validation tiles", epoch, cfg.steps_per_epoch
                                                or 0, cfg.optim.lr).replace(", step 0", ", its last step"))
        metrics.update(score(mean, count, origin, cell, val))
        metrics.update(val_tiles=len(val.grid), val_seconds=time.perf_counter() - t0)
        return [preview(mean, origin, cell, cfg.data.downsample, epoch, str(val.path))]

    def model_fields(self, model: nn.Module) -> dict[str, Any]:
        return {
            "kind": "finetune",
            "encoder_spec": to_dict(model.encoder.spec),
            "encoder": model.encoder.state_dict(),
            "encoder_info": self.encoder_info,
            "expander": None,
            "head": model.head.state_dict(),
            "output_stride": int(self.cfg.output_stride),
            "depth_pooling": str(self.cfg.depth_pooling),
        }


def _finetune(cfg: FinetuneConfig, ctx: DistContext) -> Iterator[Event]:
    run, payload, cfg_run = open_run(cfg, "finetune")
    if ctx.is_main:
        run.create(cfg_run, fresh=payload is None)  # the folder first: the region copy goes into it

    train, val, split = prepare_data(cfg, run.path if ctx.is_main else None, (payload or {}).get("normalization"))
    if cfg.val_region and ctx.is_main:
        cfg_run = dataclasses.replace(cfg_run, val_region=str(run.path / REGION_COPY))
        run.create(cfg_run, fresh=False)
    index = tile_index(train)

    model_inner, encoder_info = _build_model(cfg, payload)
    model_inner.to(ctx.device)
    model = wrap_ddp(model_inner, ctx)
    groups = [{"params": list(model_inner.head_parameters()), "lr_scale": 1.0}]
    if not cfg.freeze_encoder:
        groups.append({"params": list(model_inner.encoder_parameters()), "lr_scale": cfg.encoder_lr_scale})
    training = prepare_training(
        cfg, cfg_run, ctx, run, payload, model, groups, len(index),
        data_filled=dataclasses.replace(cfg.data, normalization_params=dict(train[0].normalizer.params)),
        normalization={s.path: dict(s.normalizer.params) for s in [*train, val]},
        summary_extra=split,
    )
    dataset = InkTiles(train, index, cfg.tile.depth, cfg.tile.size, int(cfg.augment.max_z_shift),
                       weighted=has_training_masks(train))
    yield from train_epochs(training, _InkSteps(cfg, model, ctx, training.precision, val, encoder_info), dataset)
