"""The run machinery pretraining and fine-tuning share: opening (or resuming) a run folder, planning the
steps, restoring the training state, and the epoch/step loop with its accumulation, NaN/OOM handling,
mid-epoch stop, checkpoints and events.

What differs between runs is a :class:`RunSteps` (the batch -> losses function, extra per-epoch state,
the epoch-end metrics and the model's own checkpoint fields); the loop never looks inside the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from napari_vesuvius_pt.config import TileConfig, to_dict
from napari_vesuvius_pt.engine.datasets import (
    EpochBatches,
    close_batches,
    iterate_batches,
    make_loader,
)
from napari_vesuvius_pt.engine.device import describe_device, release_device_memory
from napari_vesuvius_pt.engine.events import (
    EpochDone,
    Event,
    Failed,
    Finished,
    Started,
    StepDone,
)
from napari_vesuvius_pt.engine.run_folder import RunFolder
from napari_vesuvius_pt.engine.training import (
    DistContext,
    Meter,
    Precision,
    WarmupCosine,
    capture_rng,
    is_out_of_memory,
    maybe_no_sync,
    mix_seed,
    nonfinite_message,
    out_of_memory_message,
    restore_rng,
    setup_distributed,
    to_cpu,
    unwrap,
)
from napari_vesuvius_pt.errors import ConfigError, RunError


class EpochFailed(Exception):
    """Raised by :meth:`RunSteps.evaluate` to end the run with a ``Failed`` event carrying this message."""


class RunSteps(Protocol):
    """What one kind of run supplies to :func:`train_epochs`."""

    loss_name: str  # in the NaN message: "the {loss_name} became NaN ..."
    term_names: tuple[str, ...]  # keys of :meth:`losses`, "loss" first: the StepDone losses and the metrics

    def start_epoch(self, partial: dict[str, Any] | None) -> None:
        """Before an epoch's first step; ``partial`` is the state saved by a stop inside this epoch."""

    def losses(self, batch: Any, aug_gen: torch.Generator) -> dict[str, Tensor]:
        """One micro-batch from the loader -> loss terms (``"loss"`` is the one backpropagated)."""

    def partial_state(self) -> dict[str, Any]:
        """Epoch state beyond the meter to save when a run stops inside an epoch."""

    def train_metrics(self) -> dict[str, float]:
        """Metrics from the epoch's training steps, listed right after the loss terms' means."""

    def evaluate(self, epoch: int, metrics: dict[str, float]) -> list[Event]:
        """Add the epoch's evaluation metrics to ``metrics``; the events to send before ``EpochDone``."""

    def model_fields(self, model: nn.Module) -> dict[str, Any]:
        """The checkpoint's first fields (``kind``, the model's weights and description)."""


def run_distributed(device_name: str, body: Callable[[DistContext], Iterator[Event]]) -> Iterator[Event]:
    """``body`` in this process's torchrun place; the process group and device memory released after."""
    ctx = setup_distributed(device_name)
    try:
        yield from body(ctx)
    finally:
        ctx.close()
        release_device_memory(ctx.device)


def open_run(cfg: Any, kind: str, check_resumable: Callable[[Any, dict[str, Any], Path], None]
             ) -> tuple[RunFolder, dict[str, Any] | None, Any]:
    """The run folder, the checkpoint to resume from (None for a new run) and the config to save."""
    run = RunFolder(cfg.resume or cfg.out)
    payload: dict[str, Any] | None = None
    if cfg.resume:
        ckpt_path, payload = run.load_latest(kind)
        check_resumable(cfg, payload, ckpt_path)
    return run, payload, dataclasses.replace(cfg, out=str(run.path), resume=None)


def check_same_batches(cfg: Any, payload: dict[str, Any], where: Path) -> None:
    """A run stopped inside an epoch resumes only with the batches it was stopped with."""
    saved = payload.get("config") or {}
    if payload.get("step"):  # stopped inside an epoch: the rest of that epoch needs the same batches
        for key, now_value in (("batch_size", cfg.batch_size), ("steps_per_epoch", cfg.steps_per_epoch)):
            if key in saved and saved[key] != now_value:
                raise RunError(
                    f"cannot resume {where} inside epoch {int(payload['epoch']) + 1} with {key}={now_value!r}: it was "
                    f"stopped there with {key}={saved[key]!r}; keep the run's own value"
                )


def validate_steps(cfg: Any) -> None:
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be at least 1 (or empty for one pass over the tiles), got {cfg.steps_per_epoch}")
    if cfg.optim.accumulate < 1:
        raise ConfigError(f"optim.accumulate must be at least 1, got {cfg.optim.accumulate}")


def plan_steps(cfg: Any, n_tiles: int, world_size: int) -> tuple[int, int, int]:
    """(accumulate, optimizer steps per epoch, total steps)."""
    accumulate = int(cfg.optim.accumulate)
    steps = int(cfg.steps_per_epoch or max(1, n_tiles // (cfg.batch_size * accumulate * world_size)))
    return accumulate, steps, steps * cfg.epochs


def schedule_and_precision(optimizer: torch.optim.Optimizer, cfg: Any, steps: int, total_steps: int,
                           device: torch.device) -> tuple[WarmupCosine, Precision]:
    schedule = WarmupCosine(optimizer, total_steps, round(cfg.optim.warmup_epochs * steps), cfg.optim.min_lr_ratio)
    return schedule, Precision(device, cfg.amp)


def restore_training(payload: dict[str, Any] | None, optimizer: torch.optim.Optimizer, schedule: WarmupCosine,
                     precision: Precision) -> tuple[int, int, dict[str, Any] | None]:
    """Optimizer, schedule, scaler and RNG state from a checkpoint (the model's weights are the caller's);
    returns (epochs done, steps done inside the next epoch, that epoch's partial state)."""
    if payload is None:
        return 0, 0, None
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["scheduler"])
    precision.load_state_dict(payload.get("scaler"))
    restore_rng(payload.get("rng"))
    return int(payload["epoch"]), int(payload.get("step") or 0), payload.get("partial")


def tile_label(tile: TileConfig) -> str:
    return f"{tile.depth}x{tile.size}x{tile.size}"


@dataclass
class Training:
    """Everything :func:`train_epochs` drives, set up (and resumed) by the run."""

    cfg: Any  # PretrainConfig or FinetuneConfig
    cfg_run: Any  # the config as saved in the run folder
    ctx: DistContext
    run: RunFolder
    model: nn.Module  # wrapped for DDP under torchrun
    params: list[Tensor]  # the trained parameters (gradient clipping)
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    precision: Precision
    accumulate: int
    steps: int
    total_steps: int
    data_filled: Any  # the data config with the fitted normalization
    normalization: dict[str, dict[str, float]]
    first_epoch: int = 0
    skip: int = 0
    partial: dict[str, Any] | None = None
    summary_extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def train_epochs(t: Training, task: RunSteps, dataset: Dataset, n_tiles: int) -> Iterator[Event]:
    """Train from ``t.first_epoch`` to ``cfg.epochs``, yielding events; see the pretraining module's docstring
    for stopping, resuming and failures."""
    cfg, ctx, run, model, optimizer, schedule, precision = t.cfg, t.ctx, t.run, t.model, t.optimizer, t.schedule, t.precision
    device = ctx.device
    accumulate, steps = t.accumulate, t.steps
    first_epoch, skip, partial = t.first_epoch, t.skip, t.partial

    def make_payload(epoch: int, step: int, metrics: dict[str, float], partial_state: dict | None) -> dict[str, Any]:
        return to_cpu({
            **task.model_fields(unwrap(model)),
            "tile": to_dict(cfg.tile),
            "data": to_dict(t.data_filled),
            "normalization": t.normalization,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": precision.state_dict(),
            "rng": capture_rng(),
            "config": to_dict(t.cfg_run),
            "epoch": epoch,
            "step": step,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "partial": partial_state,
        })

    batches = EpochBatches(n_tiles, cfg.batch_size, steps, accumulate, cfg.seed, ctx.rank, ctx.world_size)
    loader = make_loader(dataset, batches, cfg.num_workers, pin_memory=device.type == "cuda")
    aug_gen = torch.Generator()
    tile_text = tile_label(cfg.tile)
    samples_per_step = cfg.batch_size * accumulate * ctx.world_size
    last_metrics: dict[str, float] = {}
    t_run = time.perf_counter()

    def summary() -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": cfg.epochs, "seconds": time.perf_counter() - t_run, **t.summary_extra}
        out.update({f"final_{k}": v for k, v in last_metrics.items()})
        if ctx.is_main and run.latest_checkpoint() is not None:
            out["checkpoint"] = str(run.latest_checkpoint())
        return out

    try:
        yield Started(run.path if ctx.is_main else None, describe_device(device), total_steps=t.total_steps, first_epoch=first_epoch)
    except GeneratorExit:
        ctx.announce_stop(first_epoch < cfg.epochs)
        return

    stopped = False  # this generator was closed
    peer_stopped = False  # another rank's was (under torchrun)
    for epoch in range(first_epoch + 1, cfg.epochs + 1):
        batches.set_epoch(epoch, skip)
        meter = Meter((partial or {}).get("meter"))
        task.start_epoch(partial)
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
                step_terms = {name: 0.0 for name in task.term_names}
                try:
                    for micro in range(accumulate):
                        tw = time.perf_counter()
                        batch = next(it)
                        wait += time.perf_counter() - tw
                        aug_gen.manual_seed(mix_seed(cfg.seed, epoch, step, micro, ctx.rank))
                        with maybe_no_sync(model, micro < accumulate - 1):
                            losses = task.losses(batch, aug_gen)
                            if ctx.any(not bool(torch.isfinite(losses["loss"]))):
                                failure = nonfinite_message(task.loss_name, epoch, step, schedule.lr)
                                break
                            precision.backward(losses["loss"] / accumulate)
                        for k in step_terms:
                            step_terms[k] += float(losses[k].detach()) / accumulate
                    if failure is None:
                        _, stepped = precision.step(optimizer, t.params, cfg.optim.grad_clip)
                        if ctx.any(not stepped) and precision.scaler is None:
                            failure = nonfinite_message("gradient", epoch, step, schedule.lr)
                except RunError as exc:  # NaN/inf inputs or embeddings, found by the model or the loss
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
                run.save(make_payload(epoch - 1, step, last_metrics, {"meter": meter.state_dict(), **task.partial_state()}),
                         completed_epoch=False)
            if stopped:
                ctx.announce_stop(True)
                return
            try:  # stopped by another rank: this consumer still hears how the run ended
                yield Finished(run.path if ctx.is_main else None, summary(), stopped=peer_stopped)
            except GeneratorExit:
                pass
            return

        # ---- the epoch is complete: evaluate, checkpoint, report
        seconds = time.perf_counter() - t_epoch
        metrics = meter.means(ctx)
        metrics.update(task.train_metrics())
        metrics["lr"] = schedule.lr
        metrics["seconds"] = seconds
        metrics["samples_per_s"] = (steps - skip) * samples_per_step / max(seconds, 1e-9)
        metrics["data_wait"] = epoch_wait / max(seconds, 1e-9)
        try:
            before_epoch_done = task.evaluate(epoch, metrics)
        except EpochFailed as exc:
            yield Failed(str(exc), run.latest_checkpoint() if ctx.is_main else None)
            return
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
            yield from before_epoch_done
            yield EpochDone(epoch, cfg.epochs, metrics, checkpoint)
        except GeneratorExit:
            ctx.announce_stop(epoch < cfg.epochs)
            return

    try:
        yield Finished(run.path if ctx.is_main else None, summary())
    except GeneratorExit:
        return
