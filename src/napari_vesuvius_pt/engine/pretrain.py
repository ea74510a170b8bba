"""VICReg pretraining on scroll segments (and unlabeled fragments) as a generator of events.

    for event in pretrain(cfg): ...

Tiles come from a grid inside each segment's (eroded) mask; each is read as two views at independent
z-shifts, augmented on the training device, encoded, expanded and compared by the VICReg loss. Every
epoch writes ``checkpoints/epoch_NNN.pt`` and ``last.pt`` and appends a line to ``metrics.jsonl``.

Stopping: closing the generator (``gen.close()``, Ctrl-C in the CLI, Stop in napari) finishes the
optimizer step under way and writes ``last.pt`` holding the step reached inside the current epoch (or,
at an epoch's last step, completes that epoch); ``--resume`` continues from there with the same data
order, augmentations and learning rates as a run that was never stopped. Completed epochs' files are
never touched by a stop. A NaN or infinite loss yields ``Failed`` and keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from napari_vesuvius_pt.config import PretrainConfig, to_dict
from napari_vesuvius_pt.data.augment import augment_batch
from napari_vesuvius_pt.engine.datasets import (
    EpochBatches,
    PretrainViews,
    close_batches,
    iterate_batches,
    make_loader,
    open_source,
    tile_index,
)
from napari_vesuvius_pt.engine.device import describe_device, release_device_memory
from napari_vesuvius_pt.engine.events import EpochDone, Event, Failed, Finished, Started, StepDone
from napari_vesuvius_pt.engine.run_folder import RunFolder
from napari_vesuvius_pt.engine.training import (
    DistContext,
    Meter,
    Precision,
    WarmupCosine,
    build_optimizer,
    capture_rng,
    embedding_stats,
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
from napari_vesuvius_pt.models.encoder import build_encoder
from napari_vesuvius_pt.models.vicreg import Expander, vicreg_loss

MONITOR_ROWS = 1024  # pooled embeddings kept per epoch for the collapse monitor


class VICRegNet(nn.Module):
    """Encoder + expander over both views in one call (one DDP forward per micro-batch)."""

    def __init__(self, encoder: nn.Module, expander: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.expander = expander

    def forward(self, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y1, y2 = self.encoder(v1), self.encoder(v2)
        return y1, y2, self.expander(y1), self.expander(y2)


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    if not cfg.segments:
        raise ConfigError("no segments to pretrain on; give one or more with --segments PATH ...")
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        raise ConfigError(f"VICReg needs a batch of at least 2 tiles to measure variance, got batch size {cfg.batch_size}")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be at least 1 (or empty for one pass over the tiles), got {cfg.steps_per_epoch}")
    if cfg.optim.accumulate < 1:
        raise ConfigError(f"optim.accumulate must be at least 1, got {cfg.optim.accumulate}")
    if cfg.tile.depth < 1 or cfg.tile.size < 16:
        raise ConfigError(f"tiles must have at least 1 layer and 16 pixels a side, got {cfg.tile.depth}x{cfg.tile.size}x{cfg.tile.size}")
    if cfg.augment.max_z_shift < 0:
        raise ConfigError(f"augment.max_z_shift must be 0 or more, got {cfg.augment.max_z_shift}")


def _check_resumable(cfg: PretrainConfig, payload: dict[str, Any], where: Path) -> None:
    saved = payload.get("config") or {}
    if payload.get("step"):  # stopped inside an epoch: the rest of that epoch needs the same batches
        for key, now_value in (("batch_size", cfg.batch_size), ("steps_per_epoch", cfg.steps_per_epoch)):
            if key in saved and saved[key] != now_value:
                raise RunError(
                    f"cannot resume {where} inside epoch {int(payload['epoch']) + 1} with {key}={now_value!r}: it was "
                    f"stopped there with {key}={saved[key]!r}; keep the run's own value"
                )
    for key, now in (("encoder", to_dict(cfg.encoder)), ("tile", to_dict(cfg.tile)),
                     ("vicreg", {"expander": list(cfg.vicreg.expander)})):
        before = saved.get(key) or {}
        diff = [k for k in now if k in before and before[k] != now[k]]
        if diff:
            raise RunError(
                f"cannot resume {where}: it was trained with {key} "
                + ", ".join(f"{k}={before[k]!r}" for k in diff)
                + f", not {', '.join(f'{k}={now[k]!r}' for k in diff)}; resume with the run's own config.yaml"
            )


def pretrain(cfg: PretrainConfig) -> Iterator[Event]:
    """Run (or resume, with ``cfg.resume``) a VICReg pretraining; see the module docstring."""
    validate_pretrain_config(cfg)
    ctx = setup_distributed(cfg.device)
    try:
        yield from _pretrain(cfg, ctx)
    finally:
        ctx.close()
        release_device_memory(ctx.device)


def _pretrain(cfg: PretrainConfig, ctx: DistContext) -> Iterator[Event]:
    device = ctx.device
    run = RunFolder(cfg.resume or cfg.out)
    payload: dict[str, Any] | None = None
    if cfg.resume:
        ckpt_path, payload = run.load_latest("pretrain")
        _check_resumable(cfg, payload, ckpt_path)
    cfg_run = dataclasses.replace(cfg, out=str(run.path), resume=None)

    # ---- data
    max_shift = int(cfg.augment.max_z_shift)
    saved_norm = (payload or {}).get("normalization") or {}
    sources = [
        open_source(p, cfg.data, cfg.tile, max_shift, cfg.mask_erosion, saved_norm.get(str(p)) or cfg.data.normalization_params)
        for p in cfg.segments
    ]
    index = tile_index(sources)
    if len(index) == 0:
        raise ConfigError(
            f"no {cfg.tile.size}x{cfg.tile.size} tile lies inside the masks of the segments (min_mask_fraction "
            f"{cfg.tile.min_mask_fraction}, mask_erosion {cfg.mask_erosion}); use smaller tiles or a lower min_mask_fraction"
        )
    accumulate = int(cfg.optim.accumulate)
    steps = int(cfg.steps_per_epoch or max(1, len(index) // (cfg.batch_size * accumulate * ctx.world_size)))
    total_steps = steps * cfg.epochs
    data_filled = dataclasses.replace(cfg.data, normalization_params=dict(sources[0].normalizer.params))
    normalization = {s.path: dict(s.normalizer.params) for s in sources}

    # ---- model and optimizer
    seed_everything(cfg.seed)
    encoder = build_encoder(cfg.encoder.name, cfg.encoder.in_channels, cfg.encoder.widen_factor)
    expander = Expander(encoder.embedding_dim, cfg.vicreg.expander)
    net = VICRegNet(encoder, expander).to(device)
    optimizer = build_optimizer([{"params": list(net.parameters())}], cfg.optim)
    schedule = WarmupCosine(optimizer, total_steps, round(cfg.optim.warmup_epochs * steps), cfg.optim.min_lr_ratio)
    precision = Precision(device, cfg.amp)
    first_epoch, skip, partial = 0, 0, None
    if payload is not None:
        encoder.load_state_dict(payload["encoder"])
        expander.load_state_dict(payload["expander"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
        precision.load_state_dict(payload.get("scaler"))
        restore_rng(payload.get("rng"))
        first_epoch, skip = int(payload["epoch"]), int(payload.get("step") or 0)
        partial = payload.get("partial")
    model = wrap_ddp(net, ctx)
    params = [p for p in net.parameters() if p.requires_grad]

    if ctx.is_main:
        run.create(cfg_run, fresh=payload is None)
        if payload is not None:
            run.truncate_metrics(first_epoch)

    def make_payload(epoch: int, step: int, metrics: dict[str, float], partial_state: dict | None) -> dict[str, Any]:
        inner = unwrap(model)
        return to_cpu({
            "kind": "pretrain",
            "encoder_spec": to_dict(inner.encoder.spec),
            "encoder": inner.encoder.state_dict(),
            "expander": inner.expander.state_dict(),
            "expander_widths": list(cfg.vicreg.expander),
            "head": None,
            "output_stride": None,
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
    dataset = PretrainViews(sources, index, cfg.tile.depth, cfg.tile.size, max_shift, cfg.augment.same_z_shift)
    loader = make_loader(dataset, batches, cfg.num_workers, pin_memory=device.type == "cuda")
    aug_gen = torch.Generator()
    tile_text = f"{cfg.tile.depth}x{cfg.tile.size}x{cfg.tile.size}"
    samples_per_step = cfg.batch_size * accumulate * ctx.world_size
    last_metrics: dict[str, float] = {}
    t_run = time.perf_counter()

    def summary() -> dict[str, Any]:
        out = {"epochs": cfg.epochs, "seconds": time.perf_counter() - t_run, **{f"final_{k}": v for k, v in last_metrics.items()}}
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
        monitor: list[Tensor] = [t for t in ((partial or {}).get("monitor") or [])]
        step = skip
        epoch_wait = 0.0
        t_epoch = time.perf_counter()
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
                step_terms = {"loss": 0.0, "invariance": 0.0, "variance": 0.0, "covariance": 0.0}
                try:
                    for micro in range(accumulate):
                        tw = time.perf_counter()
                        v1, v2 = next(it)
                        wait += time.perf_counter() - tw
                        v1 = v1.to(device, non_blocking=True)[:, None]
                        v2 = v2.to(device, non_blocking=True)[:, None]
                        aug_gen.manual_seed(mix_seed(cfg.seed, epoch, step, micro, ctx.rank))
                        v1, _ = augment_batch(v1, None, cfg.augment, aug_gen)
                        v2, _ = augment_batch(v2, None, cfg.augment, aug_gen)
                        with maybe_no_sync(model, micro < accumulate - 1):
                            with precision.autocast():
                                y1, _, z1, z2 = model(v1, v2)
                            terms = vicreg_loss(z1, z2, cfg.vicreg.sim_coeff, cfg.vicreg.std_coeff, cfg.vicreg.cov_coeff)
                            if ctx.any(not bool(torch.isfinite(terms.total))):
                                failure = nonfinite_message("VICReg loss", epoch, step, schedule.lr)
                                break
                            precision.backward(terms.total / accumulate)
                        for k, v in zip(("loss", "invariance", "variance", "covariance"), terms):
                            step_terms[k] += float(v.detach()) / accumulate
                        if sum(t.shape[0] for t in monitor) < MONITOR_ROWS:
                            monitor.append(y1.detach().float().cpu())
                    if failure is None:
                        _, stepped = precision.step(optimizer, params, cfg.optim.grad_clip)
                        if ctx.any(not stepped) and precision.scaler is None:
                            failure = nonfinite_message("gradient", epoch, step, schedule.lr)
                except RunError as exc:  # NaN/inf inputs or embeddings, found by the encoder or the loss
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
                elapsed = max(time.perf_counter() - t0, 1e-9)
                epoch_wait += wait
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
                run.save(make_payload(epoch - 1, step, last_metrics,
                                      {"meter": meter.state_dict(), "monitor": monitor}), completed_epoch=False)
            if stopped:
                ctx.announce_stop(True)
                return
            try:  # stopped by another rank: this consumer still hears how the run ended
                yield Finished(run.path if ctx.is_main else None, summary(), stopped=peer_stopped)
            except GeneratorExit:
                pass
            return

        # ---- the epoch is complete
        seconds = time.perf_counter() - t_epoch
        metrics = meter.means(ctx)
        if ctx.is_main and monitor:
            metrics.update(embedding_stats(torch.cat(monitor)[:MONITOR_ROWS]))
        metrics["lr"] = schedule.lr
        metrics["seconds"] = seconds
        metrics["samples_per_s"] = (steps - skip) * samples_per_step / max(seconds, 1e-9)
        metrics["data_wait"] = epoch_wait / max(seconds, 1e-9)
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
            yield EpochDone(epoch, cfg.epochs, metrics, checkpoint)
        except GeneratorExit:
            ctx.announce_stop(epoch < cfg.epochs)
            return

    try:
        yield Finished(run.path if ctx.is_main else None, summary())
    except GeneratorExit:
        return
