"""Ink fine-tuning on labeled fragments as a generator of events.

    for event in finetune(cfg): ...

The encoder comes from ``random``, ``k700:FILE``, a pretraining run folder or a checkpoint, frozen or
trained with its own (smaller) learning rate, under an :class:`InkModel` head that predicts ink at
``1 / output_stride`` of the tile size. Training tiles lie inside the fragments' masks; validation is a
whole fragment (``val_fragment``) or polygons on the first training fragment (``val_region``): tiles
whose centre is inside a polygon validate, tiles touching a polygon or a validation tile otherwise are
dropped, so no pixel both trains and validates.

Loss: ``bce_weight * BCE + (1 - bce_weight) * Dice`` on the reduced-size logits against the labels
averaged to that size (optionally label-smoothed for the BCE). Each epoch the validation tiles are
predicted, stitched (overlaps averaged) over the validation bounding box and scored at the segment's
resolution: F0.5 at the best threshold, the threshold, precision, recall, AUC. A ``PreviewReady`` event
carries the stitched prediction. Stopping, resuming and failures behave as in pretraining.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_vesuvius_pt.config import FinetuneConfig, to_dict
from napari_vesuvius_pt.data.augment import augment_batch
from napari_vesuvius_pt.data.tiles import load_regions, save_regions, scale_polygons, split_by_regions
from napari_vesuvius_pt.engine.datasets import (
    EpochBatches,
    InkTiles,
    TileSource,
    close_batches,
    iterate_batches,
    make_loader,
    open_source,
    tile_index,
)
from napari_vesuvius_pt.engine.device import describe_device, release_device_memory
from napari_vesuvius_pt.engine.events import EpochDone, Event, Failed, Finished, PreviewReady, Started, StepDone
from napari_vesuvius_pt.engine.run_folder import RunFolder
from napari_vesuvius_pt.engine.training import (
    DistContext,
    Meter,
    Precision,
    WarmupCosine,
    build_optimizer,
    capture_rng,
    is_out_of_memory,
    maybe_no_sync,
    mix_seed,
    nonfinite_message,
    out_of_memory_message,
    restore_rng,
    seed_everything,
    setup_distributed,
    to_cpu,
    unwrap,
    wrap_ddp,
)
from napari_vesuvius_pt.errors import ConfigError, RunError

REGION_COPY = "val_region.json"  # the validation polygons, copied into the run folder
PREVIEW_MAX_PIXELS = 16_000_000  # larger previews are sent at the model's output resolution, with a scale


def validate_finetune_config(cfg: FinetuneConfig) -> None:
    if not cfg.fragments:
        raise ConfigError("no training fragments; give one or more with --fragments PATH ...")
    if cfg.val_fragment and cfg.val_region:
        raise ConfigError("give either a validation fragment (--val-fragment) or validation regions (--val-region), not both")
    if not cfg.val_fragment and not cfg.val_region:
        raise ConfigError("no validation data: give --val-fragment PATH or --val-region FILE (polygons on the first fragment)")
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be at least 1 (or empty for one pass over the tiles), got {cfg.steps_per_epoch}")
    if cfg.optim.accumulate < 1:
        raise ConfigError(f"optim.accumulate must be at least 1, got {cfg.optim.accumulate}")
    if not 0.0 <= cfg.bce_weight <= 1.0:
        raise ConfigError(f"bce_weight must lie in [0, 1], got {cfg.bce_weight}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must lie in [0, 1), got {cfg.label_smoothing}")
    if cfg.tile.size % cfg.output_stride:
        raise ConfigError(
            f"tile size {cfg.tile.size} is not a multiple of the output stride {cfg.output_stride}; "
            f"use a tile size divisible by {cfg.output_stride}"
        )


def ink_loss(logits: Tensor, labels: Tensor, bce_weight: float, label_smoothing: float) -> dict[str, Tensor]:
    """BCE + Dice of ``(B, 1, s, s)`` logits against ``(B, 1, S, S)`` 0/1 labels averaged to ``s``."""
    logits = logits.float()
    target = F.adaptive_avg_pool2d(labels.float(), logits.shape[-2:])
    smooth = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    bce = F.binary_cross_entropy_with_logits(logits, smooth)
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (probs.sum() + target.sum() + 1.0)
    return {"loss": bce_weight * bce + (1.0 - bce_weight) * dice, "bce": bce, "dice": dice}


# ---------------------------------------------------------------- data


def _has_ink(source: TileSource, size: int) -> np.ndarray:
    ink = source.segment.inklabels
    return np.array([bool(np.any(ink[y:y + size, x:x + size])) for y, x in source.grid.positions], dtype=bool)


def _subset(source: TileSource, index: np.ndarray) -> TileSource:
    return dataclasses.replace(source, grid=source.grid.subset(index))


def prepare_data(cfg: FinetuneConfig, run_dir: Path | None,
                 saved_norm: dict[str, dict[str, float]] | None = None) -> tuple[list[TileSource], TileSource, dict[str, Any]]:
    """Training sources, the validation source (its grid holds exactly the validation tiles) and a
    description of the split."""
    saved_norm = saved_norm or {}
    max_shift = int(cfg.augment.max_z_shift)

    def params(path: str) -> dict[str, float]:
        return saved_norm.get(str(path)) or cfg.data.normalization_params

    train = [open_source(p, cfg.data, cfg.tile, max_shift, 0, params(p), need_labels=True) for p in cfg.fragments]
    info: dict[str, Any] = {}
    if cfg.val_region:
        polygons_full = load_regions(cfg.val_region)
        polygons = scale_polygons(polygons_full, cfg.data.downsample)
        first = train[0]
        h, w = first.grid.shape
        for poly in polygons:
            if poly[:, 0].max() < 0 or poly[:, 1].max() < 0 or poly[:, 0].min() > h - 1 or poly[:, 1].min() > w - 1:
                raise ConfigError(
                    f"a validation polygon of {cfg.val_region} lies outside {first.name} ({h}x{w} pixels "
                    f"at downsample {cfg.data.downsample}); polygons are (y, x) in full-resolution pixels"
                )
        train_idx, val_idx = split_by_regions(first.grid, polygons, cfg.tile.size, cfg.region_margin)
        val = open_source(first.path, cfg.data, cfg.tile, 0, 0, params(first.path), need_labels=True)
        val = _subset(val, val_idx)
        train[0] = _subset(first, train_idx)
        info.update(region=str(cfg.val_region), polygons=len(polygons),
                    dropped_tiles=int(len(first.grid) - len(train_idx) - len(val_idx)))
        if run_dir is not None:
            save_regions(run_dir / REGION_COPY, polygons_full)
    else:
        val = open_source(str(cfg.val_fragment), cfg.data, cfg.tile, 0, 0, params(str(cfg.val_fragment)), need_labels=True)
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
    info.update(train_tiles=n_train, val_tiles=len(val.grid))
    return train, val, info


# ---------------------------------------------------------------- validation


@torch.no_grad()
def predict_tiles(model, val: TileSource, cfg: FinetuneConfig, device: torch.device, precision: Precision
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
    """Stitch the model's outputs over the validation tiles' bounding box.

    Returns (mean probability, coverage count) on a grid of ``cell``-pixel cells, the box origin
    (y, x) in segment pixels and ``cell``. Overlapping outputs are averaged.
    """
    size, stride = cfg.tile.size, cfg.output_stride
    positions = val.grid.positions
    origin = positions.min(axis=0)
    cell = math.gcd(stride, *(int(v) for v in np.unique(positions - origin)))  # output pixels land on cells
    extent = positions.max(axis=0) + size - origin
    total = np.zeros(tuple(int(e) // cell for e in extent), dtype=np.float32)
    count = np.zeros_like(total)
    dataset = InkTiles([val], tile_index([val]), cfg.tile.depth, size, 0)
    model.eval()
    up = stride // cell
    n = size // cell
    for start in range(0, len(dataset), cfg.batch_size):
        keys = range(start, min(start + cfg.batch_size, len(dataset)))
        tiles = torch.stack([dataset[(i, 0)][0] for i in keys]).to(device)[:, None]
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
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return mean, count, (int(origin[0]), int(origin[1])), cell


def score(mean: np.ndarray, count: np.ndarray, origin: tuple[int, int], cell: int, val: TileSource) -> dict[str, float]:
    """F0.5 (best threshold), threshold, precision, recall, AUC on the validation tiles' pixels inside the mask."""
    from napari_vesuvius_pt.analysis.metrics import fbeta_sweep

    h, w = mean.shape[0] * cell, mean.shape[1] * cell
    y0, x0 = origin
    probs = np.kron(mean.astype(np.float16), np.ones((cell, cell), dtype=np.float16)) if cell > 1 else mean.astype(np.float16)
    covered = np.kron(count > 0, np.ones((cell, cell), dtype=bool)) if cell > 1 else count > 0
    labels = np.asarray(val.segment.inklabels[y0:y0 + h, x0:x0 + w]) > 0
    inside = covered & np.asarray(val.segment.papyrus_mask()[y0:y0 + h, x0:x0 + w], dtype=bool)
    m = fbeta_sweep(probs, labels, beta=0.5, mask=inside)
    return {"f05": m.f05, "threshold": m.threshold, "precision": m.precision, "recall": m.recall, "auc": m.auc,
            "f05_at_05": m.f05_at_05, "prevalence": m.prevalence, "baseline_f05": all_ink_f05(m.prevalence)}


def all_ink_f05(prevalence: float) -> float:
    """F0.5 of calling every pixel ink (precision = prevalence p, recall = 1): 1.25 p / (0.25 p + 1)."""
    p = float(prevalence)
    return 1.25 * p / (0.25 * p + 1.0) if p > 0 else 0.0


def preview(mean: np.ndarray, origin: tuple[int, int], cell: int, downsample: int, epoch: int) -> PreviewReady:
    """The stitched prediction in full-resolution pixels (translate/scale place it over the fragment)."""
    f = int(downsample)
    if mean.size * cell * cell <= PREVIEW_MAX_PIXELS:
        array = np.kron(mean, np.ones((cell, cell), dtype=np.float32)) if cell > 1 else mean.copy()
        step = 1
    else:
        array, step = mean.copy(), cell
    # segment pixel i covers full-resolution pixels i*f .. i*f + f - 1 (centre i*f + (f - 1) / 2)
    translate = tuple(float(o * f + (step * f - 1) / 2.0) for o in origin)
    return PreviewReady(epoch, "validation prediction", array.astype(np.float32), translate, (float(step * f), float(step * f)))


# ---------------------------------------------------------------- the run


def _check_resumable(cfg: FinetuneConfig, payload: dict[str, Any], where: Path) -> None:
    saved = payload.get("config") or {}
    if payload.get("step"):  # stopped inside an epoch: the rest of that epoch needs the same batches
        for key, now_value in (("batch_size", cfg.batch_size), ("steps_per_epoch", cfg.steps_per_epoch)):
            if key in saved and saved[key] != now_value:
                raise RunError(
                    f"cannot resume {where} inside epoch {int(payload['epoch']) + 1} with {key}={now_value!r}: it was "
                    f"stopped there with {key}={saved[key]!r}; keep the run's own value"
                )
    now = {"tile": to_dict(cfg.tile), "output_stride": cfg.output_stride, "freeze_encoder": cfg.freeze_encoder,
           "fragments": list(cfg.fragments)}
    diff = [k for k in now if k in saved and saved[k] != now[k]]
    if diff:
        raise RunError(
            f"cannot resume {where}: it was trained with " + ", ".join(f"{k}={saved[k]!r}" for k in diff)
            + "; resume with the run's own config.yaml"
        )


def finetune(cfg: FinetuneConfig) -> Iterator[Event]:
    """Run (or resume, with ``cfg.resume``) an ink fine-tuning; see the module docstring."""
    validate_finetune_config(cfg)
    ctx = setup_distributed(cfg.device)
    try:
        yield from _finetune(cfg, ctx)
    finally:
        ctx.close()
        release_device_memory(ctx.device)


def _build_model(cfg: FinetuneConfig, payload: dict[str, Any] | None):
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
    model = InkModel(encoder, output_stride=cfg.output_stride)
    model.freeze_encoder(cfg.freeze_encoder)
    keep = {k: v for k, v in info.items() if k in ("origin", "source", "checkpoint", "epoch", "summary", "run")}
    return model, {k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v) for k, v in keep.items()}


def _finetune(cfg: FinetuneConfig, ctx: DistContext) -> Iterator[Event]:
    device = ctx.device
    run = RunFolder(cfg.resume or cfg.out)
    payload: dict[str, Any] | None = None
    if cfg.resume:
        ckpt_path, payload = run.load_latest("finetune")
        _check_resumable(cfg, payload, ckpt_path)
    cfg_run = dataclasses.replace(cfg, out=str(run.path), resume=None)
    if ctx.is_main:
        run.create(cfg_run, fresh=payload is None)  # the folder first: the region copy goes into it

    train, val, split = prepare_data(cfg, run.path if ctx.is_main else None, (payload or {}).get("normalization"))
    if cfg.val_region and ctx.is_main:
        cfg_run = dataclasses.replace(cfg_run, val_region=str(run.path / REGION_COPY))
        run.create(cfg_run, fresh=False)
    index = tile_index(train)
    accumulate = int(cfg.optim.accumulate)
    steps = int(cfg.steps_per_epoch or max(1, len(index) // (cfg.batch_size * accumulate * ctx.world_size)))
    total_steps = steps * cfg.epochs
    data_filled = dataclasses.replace(cfg.data, normalization_params=dict(train[0].normalizer.params))
    normalization = {s.path: dict(s.normalizer.params) for s in [*train, val]}

    model_inner, encoder_info = _build_model(cfg, payload)
    model_inner.to(device)
    groups = [{"params": list(model_inner.head_parameters()), "lr_scale": 1.0}]
    if not cfg.freeze_encoder:
        groups.append({"params": list(model_inner.encoder_parameters()), "lr_scale": cfg.encoder_lr_scale})
    optimizer = build_optimizer(groups, cfg.optim)
    schedule = WarmupCosine(optimizer, total_steps, round(cfg.optim.warmup_epochs * steps), cfg.optim.min_lr_ratio)
    precision = Precision(device, cfg.amp)
    first_epoch, skip, partial = 0, 0, None
    if payload is not None:
        model_inner.encoder.load_state_dict(payload["encoder"])
        model_inner.head.load_state_dict(payload["head"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
        precision.load_state_dict(payload.get("scaler"))
        restore_rng(payload.get("rng"))
        first_epoch, skip = int(payload["epoch"]), int(payload.get("step") or 0)
        partial = payload.get("partial")
        if ctx.is_main:
            run.truncate_metrics(first_epoch)
    model = wrap_ddp(model_inner, ctx)
    params = [p for p in model_inner.parameters() if p.requires_grad]

    def make_payload(epoch: int, step: int, metrics: dict[str, float], partial_state: dict | None) -> dict[str, Any]:
        inner = unwrap(model)
        return to_cpu({
            "kind": "finetune",
            "encoder_spec": to_dict(inner.encoder.spec),
            "encoder": inner.encoder.state_dict(),
            "encoder_info": encoder_info,
            "expander": None,
            "head": inner.head.state_dict(),
            "output_stride": int(cfg.output_stride),
            "tile": to_dict(cfg.tile),
            "data": to_dict(data_filled),
            "normalization": normalization,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": precision.state_dict(),
            "rng": capture_rng(),
            "config": to_dict(cfg_run),
            "epoch": epoch,
            "step": step,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "partial": partial_state,
        })

    batches = EpochBatches(len(index), cfg.batch_size, steps, accumulate, cfg.seed, ctx.rank, ctx.world_size)
    dataset = InkTiles(train, index, cfg.tile.depth, cfg.tile.size, int(cfg.augment.max_z_shift))
    loader = make_loader(dataset, batches, cfg.num_workers, pin_memory=device.type == "cuda")
    aug_gen = torch.Generator()
    tile_text = f"{cfg.tile.depth}x{cfg.tile.size}x{cfg.tile.size}"
    samples_per_step = cfg.batch_size * accumulate * ctx.world_size
    last_metrics: dict[str, float] = {}
    t_run = time.perf_counter()

    def summary() -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": cfg.epochs, "seconds": time.perf_counter() - t_run, **split}
        out.update({f"final_{k}": v for k, v in last_metrics.items()})
        if ctx.is_main and run.latest_checkpoint() is not None:
            out["checkpoint"] = str(run.latest_checkpoint())
        return out

    try:
        yield Started(run.path if ctx.is_main else None, describe_device(device), total_steps=total_steps, first_epoch=first_epoch)
    except GeneratorExit:
        ctx.announce_stop(first_epoch < cfg.epochs)
        return

    stopped = False  # this generator was closed
    peer_stopped = False  # another rank's was (under torchrun)
    for epoch in range(first_epoch + 1, cfg.epochs + 1):
        batches.set_epoch(epoch, skip)
        meter = Meter((partial or {}).get("meter"))
        step = skip
        epoch_wait = 0.0
        t_epoch = time.perf_counter()
        model.train()
        it = iterate_batches(loader, cfg.prefetch)
        failure: str | None = None
        try:
            while step < steps:
                if ctx.peer_stopped():
                    peer_stopped = True
                    break
                step += 1
                t0 = time.perf_counter()
                wait = 0.0
                optimizer.zero_grad(set_to_none=True)
                step_terms = {"loss": 0.0, "bce": 0.0, "dice": 0.0}
                try:
                    for micro in range(accumulate):
                        tw = time.perf_counter()
                        tiles, labels = next(it)
                        wait += time.perf_counter() - tw
                        tiles = tiles.to(device, non_blocking=True)[:, None]
                        labels = labels.to(device, non_blocking=True)[:, None]
                        aug_gen.manual_seed(mix_seed(cfg.seed, epoch, step, micro, ctx.rank))
                        tiles, labels = augment_batch(tiles, labels, cfg.augment, aug_gen)
                        with maybe_no_sync(model, micro < accumulate - 1):
                            with precision.autocast():
                                logits = model(tiles)
                            losses = ink_loss(logits, labels, cfg.bce_weight, cfg.label_smoothing)
                            if ctx.any(not bool(torch.isfinite(losses["loss"]))):
                                failure = nonfinite_message("ink loss", epoch, step, schedule.lr)
                                break
                            precision.backward(losses["loss"] / accumulate)
                        for k in step_terms:
                            step_terms[k] += float(losses[k].detach()) / accumulate
                    if failure is None:
                        _, stepped = precision.step(optimizer, params, cfg.optim.grad_clip)
                        if ctx.any(not stepped) and precision.scaler is None:
                            failure = nonfinite_message("gradient", epoch, step, schedule.lr)
                except RunError as exc:
                    failure = f"{exc} (epoch {epoch}, step {step}); the run stopped and its last good checkpoint is kept"
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    release_device_memory(device)
                    failure = out_of_memory_message(device, cfg.batch_size, accumulate, tile_text)
                if failure is not None:
                    break
                lr = schedule.lr
                schedule.step()
                meter.add(step_terms)
                epoch_wait += wait
                elapsed = max(time.perf_counter() - t0, 1e-9)
                try:
                    yield StepDone(epoch, step, steps, dict(step_terms), lr, samples_per_step / elapsed, min(1.0, wait / elapsed))
                except GeneratorExit:
                    stopped = True
                    break
        finally:
            close_batches(it)

        if failure is not None:
            yield Failed(failure, run.latest_checkpoint() if ctx.is_main else None)
            return

        if step < steps:  # stopped inside the epoch: keep the step reached, resume continues from it
            if ctx.is_main:
                run.save(make_payload(epoch - 1, step, last_metrics, {"meter": meter.state_dict()}), completed_epoch=False)
            if stopped:
                ctx.announce_stop(True)
                return
            try:  # stopped by another rank: this consumer still hears how the run ended
                yield Finished(run.path if ctx.is_main else None, summary(), stopped=peer_stopped)
            except GeneratorExit:
                pass
            return

        # ---- the epoch is complete: validate, checkpoint, report
        seconds = time.perf_counter() - t_epoch
        metrics = meter.means(ctx)
        metrics["lr"] = schedule.lr
        metrics["seconds"] = seconds
        metrics["samples_per_s"] = (steps - skip) * samples_per_step / max(seconds, 1e-9)
        metrics["data_wait"] = epoch_wait / max(seconds, 1e-9)
        preview_event = None
        if ctx.is_main:
            try:
                mean, count, origin, cell = predict_tiles(unwrap(model), val, cfg, device, precision)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                release_device_memory(device)
                yield Failed(out_of_memory_message(device, cfg.batch_size, accumulate, tile_text) + " (validation)",
                             run.latest_checkpoint())
                return
            metrics.update(score(mean, count, origin, cell, val))
            preview_event = preview(mean, origin, cell, cfg.data.downsample, epoch)
        last_metrics = metrics
        checkpoint = None
        if ctx.is_main:
            checkpoint = run.save(make_payload(epoch, 0, metrics, None), completed_epoch=True)
            run.append_metrics({"epoch": epoch, **metrics})
        skip, partial = 0, None
        if stopped:
            ctx.announce_stop(epoch < cfg.epochs)
            return
        try:
            if preview_event is not None:
                yield preview_event
            yield EpochDone(epoch, cfg.epochs, metrics, checkpoint)
        except GeneratorExit:
            ctx.announce_stop(epoch < cfg.epochs)
            return

    try:
        yield Finished(run.path if ctx.is_main else None, summary())
    except GeneratorExit:
        return

