"""The run machinery pretraining and fine-tuning share, in the order a run uses it:

1. :func:`validate_training`: the shared config checks, before anything is opened;
2. :func:`open_run`: the run folder and the checkpoint a resume continues from;
3. (the run opens its data, builds its model and wraps it for DDP);
4. :func:`prepare_training`: the step plan, the optimizer, its schedule and the precision, restored from
   that checkpoint, in a :class:`Training`;
5. :func:`train_epochs`: the epoch/step loop with its accumulation, NaN/OOM handling, mid-epoch stop,
   checkpoints and events.

What differs between runs is a :class:`RunSteps` (the batch -> losses function, extra per-epoch state,
the epoch-end metrics and the model's own checkpoint fields); the loop never looks inside the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset

from napari_vesuvius_pt.config import DataConfig, TrainingConfig, to_dict
from napari_vesuvius_pt.engine.datasets import (
    EpochBatches,
    ThreadPrefetcher,
    close_batches,
    iterate_batches,
    make_loader,
)
from napari_vesuvius_pt.engine.device import describe_device, release_device_memory
from napari_vesuvius_pt.engine.distributed import DistContext, maybe_no_sync, unwrap
from napari_vesuvius_pt.engine.events import EpochDone, Event, Failed, Finished, Started, StepDone
from napari_vesuvius_pt.engine.failures import (
    check_batch,
    check_step_fits,
    from_worker,
    is_out_of_memory,
    nonfinite_message,
    out_of_memory_message,
)
from napari_vesuvius_pt.engine.optim import build_optimizer, current_lr, schedule_for
from napari_vesuvius_pt.engine.precision import Precision
from napari_vesuvius_pt.engine.rng import capture_rng, mix_seed, restore_rng
from napari_vesuvius_pt.engine.resume import resume_changes
from napari_vesuvius_pt.engine.run_folder import RunFolder
from napari_vesuvius_pt.engine.run_lock import folder_lock, hold
from napari_vesuvius_pt.errors import ConfigError, RunError, VesuviusError

C = TypeVar("C", bound=TrainingConfig)


class EpochFailed(Exception):
    """Raised by :meth:`RunSteps.evaluate` to end the run with a ``Failed`` event carrying this message."""


class RunSteps(Protocol):
    """What one kind of run supplies to :func:`train_epochs`."""

    loss_name: str  # in the NaN message: "the {loss_name} became NaN ..."
    term_names: tuple[str, ...]  # keys of :meth:`losses`, "loss" first: the StepDone losses and the metrics

    def start_epoch(self, partial: dict[str, Any] | None) -> None:
        """Before an epoch's first step; ``partial`` is the state saved by a stop inside this epoch."""

    def augment(self, batch: Any, aug_gen: torch.Generator) -> Any:
        """One micro-batch from the loader -> on the device, augmented (may run in the read-ahead thread)."""

    def losses(self, batch: Any) -> dict[str, Tensor]:
        """One augmented micro-batch -> loss terms (``"loss"`` is the one backpropagated)."""

    def partial_state(self) -> dict[str, Any]:
        """Epoch state beyond the meter to save when a run stops inside an epoch."""

    def train_metrics(self) -> dict[str, float]:
        """Metrics from the epoch's training steps, listed right after the loss terms' means."""

    def evaluate(self, epoch: int, metrics: dict[str, float]) -> list[Event]:
        """Add the epoch's evaluation metrics to ``metrics``; the events to send before ``EpochDone``."""

    def model_fields(self, model: nn.Module) -> dict[str, Any]:
        """The checkpoint's first fields (``kind``, the model's weights and description)."""


# ---------------------------------------------------------------- 1. checks


def validate_training(cfg: TrainingConfig) -> None:
    """The checks every training run makes (the runs check their own fields and the batch size)."""
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be at least 1 (or empty for one pass over the tiles), got {cfg.steps_per_epoch}")
    if cfg.optim.accumulate < 1:
        raise ConfigError(f"optim.accumulate must be at least 1, got {cfg.optim.accumulate}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {cfg.seed}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"the learning rate must be greater than 0, got {cfg.optim.lr}")
    if cfg.optim.warmup_epochs < 0:
        raise ConfigError(f"optim.warmup_epochs must be 0 or more, got {cfg.optim.warmup_epochs}")
    if cfg.num_workers < 0 or cfg.prefetch < 0:
        raise ConfigError(f"num_workers and prefetch must be 0 or more, got {cfg.num_workers} and {cfg.prefetch}")


@contextlib.contextmanager
def hold_run(cfg: TrainingConfig) -> Iterator[None]:
    """Hold the run folder's lock for a run (rank 0 under torchrun): a second run into the same folder is
    refused while this one lives; the temporary files a killed run left there are removed."""
    folder = Path(cfg.resume or cfg.out).expanduser()
    if cfg.resume and not folder.is_dir():
        raise RunError(f"cannot resume: run folder {folder} does not exist")
    with hold(folder_lock(folder)) as lock:
        if lock.held:
            RunFolder(folder).clean_stale_temporaries()
        yield


# ---------------------------------------------------------------- 2. the run folder


def open_run(cfg: C, kind: str) -> tuple[RunFolder, dict[str, Any] | None, C]:
    """The run folder, the checkpoint to resume from (None for a new run) and the config to save.

    A resume with any setting that changes the run's results is refused by
    :func:`~napari_vesuvius_pt.engine.resume.resume_changes` (batch size and steps per epoch included,
    so a run stopped inside an epoch continues with the batches it was stopped with).
    """
    run = RunFolder(cfg.resume or cfg.out)
    payload: dict[str, Any] | None = None
    if cfg.resume:
        ckpt_path, payload = run.load_latest(kind)
        changes = resume_changes(cfg, payload, ckpt_path, run.path)
        if changes or run.notes:
            run.record_resume(ckpt_path, payload, changes)
    return run, payload, dataclasses.replace(cfg, out=str(run.path), resume=None)


# ---------------------------------------------------------------- 4. optimizer, schedule, precision, resume


@dataclass
class Training:
    """Everything :func:`train_epochs` drives, set up (and resumed) by :func:`prepare_training`."""

    cfg: TrainingConfig  # a PretrainConfig or FinetuneConfig
    cfg_run: TrainingConfig  # the config as saved in the run folder
    ctx: DistContext
    run: RunFolder
    model: nn.Module  # wrapped for DDP under torchrun
    params: list[Tensor]  # the trained parameters (gradient clipping)
    optimizer: torch.optim.Optimizer
    schedule: LambdaLR
    precision: Precision
    accumulate: int
    steps: int  # optimizer steps per epoch
    total_steps: int
    n_tiles: int  # the dataset's size (the batch order draws from it)
    data_filled: DataConfig  # the data config with the fitted normalization
    normalization: dict[str, dict[str, float]]  # per segment path, saved for a resume
    first_epoch: int = 0  # epochs already done
    skip: int = 0  # steps already done inside the next epoch
    partial: dict[str, Any] | None = None  # that epoch's state saved at the stop
    summary_extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def plan_steps(cfg: TrainingConfig, n_tiles: int, world_size: int) -> tuple[int, int, int]:
    """(accumulate, optimizer steps per epoch, total steps)."""
    accumulate = int(cfg.optim.accumulate)
    steps = int(cfg.steps_per_epoch or max(1, n_tiles // (cfg.batch_size * accumulate * world_size)))
    return accumulate, steps, steps * cfg.epochs


def prepare_training(cfg: TrainingConfig, cfg_run: TrainingConfig, ctx: DistContext, run: RunFolder,
                     payload: dict[str, Any] | None, model: nn.Module, param_groups: list[dict[str, Any]],
                     n_tiles: int, data_filled: DataConfig, normalization: dict[str, dict[str, float]],
                     summary_extra: dict[str, Any] | None = None, views: int = 1) -> Training:
    """Plan the steps, build the optimizer over ``param_groups`` (see :func:`build_optimizer`), its
    warm-up + cosine schedule and the precision; when resuming (``payload``), restore them and the RNG
    state from the checkpoint and drop the run's metric lines after its epoch.

    ``model`` (wrapped for DDP) already holds the checkpoint's weights: loading them is the run's job.
    A batch larger than the tiles, or a step that cannot fit in the device's memory (``views`` forward
    passes per tile), is refused here, before the first batch is read.
    """
    check_batch(cfg, n_tiles, ctx.world_size)
    inner = unwrap(model)
    check_step_fits(cfg, inner, getattr(inner, "encoder", inner), ctx.device, views=views)
    accumulate, steps, total_steps = plan_steps(cfg, n_tiles, ctx.world_size)
    optimizer = build_optimizer(param_groups, cfg.optim)
    schedule = schedule_for(optimizer, cfg.optim, steps, total_steps)
    precision = Precision(ctx.device, cfg.amp, cfg.cpu_bf16)
    first_epoch, skip, partial = 0, 0, None
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["scheduler"])
        precision.load_state_dict(payload.get("scaler"))
        restore_rng(payload.get("rng"))
        first_epoch, skip, partial = int(payload["epoch"]), int(payload.get("step") or 0), payload.get("partial")
        if ctx.is_main:
            run.truncate_metrics(first_epoch)
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    return Training(cfg, cfg_run, ctx, run, model, params, optimizer, schedule, precision, accumulate, steps,
                    total_steps, n_tiles, data_filled, normalization, first_epoch, skip, partial, dict(summary_extra or {}))


# ---------------------------------------------------------------- 5. the loop


def train_epochs(t: Training, task: RunSteps, dataset: Dataset) -> Iterator[Event]:
    """Train from ``t.first_epoch`` to ``cfg.epochs``, yielding events; see the pretraining module's docstring
    for stopping, resuming and failures."""
    cfg, ctx, run = t.cfg, t.ctx, t.run
    steps, first_epoch, skip, partial = t.steps, t.first_epoch, t.skip, t.partial

    batches = EpochBatches(t.n_tiles, cfg.batch_size, steps, t.accumulate, cfg.seed, ctx.rank, ctx.world_size)
    loader = make_loader(dataset, batches, cfg.num_workers, pin_memory=ctx.device.type == "cuda")
    samples_per_step = cfg.batch_size * t.accumulate * ctx.world_size
    last_metrics: dict[str, float] = {}
    t_run = time.perf_counter()

    def summary() -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": cfg.epochs, "seconds": time.perf_counter() - t_run, **t.summary_extra}
        out.update({f"final_{k}": v for k, v in last_metrics.items()})
        if ctx.is_main and run.latest_checkpoint() is not None:
            out["checkpoint"] = str(run.latest_checkpoint())
        notes = [*t.summary_extra.get("notes", []), *run.notes]
        if notes:
            out["notes"] = notes
        return out

    try:
        yield Started(run.path if ctx.is_main else None, describe_device(ctx.device), total_steps=t.total_steps,
                      first_epoch=first_epoch)
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
        it = augmented_batches(task, loader, cfg, ctx, epoch, skip, t.accumulate)
        failure: str | None = None
        try:
            while step < steps:
                if ctx.peer_stopped():
                    peer_stopped = True
                    break
                step += 1
                t0 = time.perf_counter()
                step_terms, wait, failure = train_step(t, task, it, epoch, step)
                if failure is not None:
                    break
                lr = current_lr(t.optimizer)
                t.schedule.step()
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
                run.save(checkpoint_payload(t, task, epoch - 1, step, last_metrics,
                                            {"meter": meter.state_dict(), **task.partial_state()}),
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
        metrics["lr"] = current_lr(t.optimizer)
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
            # the metrics line is part of the epoch's commit (written first; see RunFolder.save)
            checkpoint = run.save(checkpoint_payload(t, task, epoch, 0, metrics, None), completed_epoch=True,
                                  metrics={"epoch": epoch, **metrics})
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


def augmented_batches(task: RunSteps, loader: Any, cfg: TrainingConfig, ctx: DistContext, epoch: int, skip: int,
                      accumulate: int) -> Iterator:
    """The epoch's micro-batches from ``loader``, augmented by ``task``, each with its own generator seeded
    from (seed, epoch, step, micro-batch, rank), so where and when a batch is augmented never changes it.

    On the CPU the augmentation runs in the read-ahead thread with the tile reads, overlapping the
    training step on another core (it was 8% of a demo step there); on an accelerator it stays on the
    training thread, next to the model, where it is cheap and asynchronous.
    """
    def augment(batches: Iterator) -> Iterator:
        gen = torch.Generator()
        try:
            for k, batch in enumerate(batches):
                gen.manual_seed(mix_seed(cfg.seed, epoch, skip + 1 + k // accumulate, k % accumulate, ctx.rank))
                yield task.augment(batch, gen)
        finally:
            close_batches(batches)

    if ctx.device.type == "cpu" and cfg.prefetch > 0:
        return ThreadPrefetcher(augment(iter(loader)), cfg.prefetch)
    return augment(iterate_batches(loader, cfg.prefetch))


def train_step(t: Training, task: RunSteps, it: Iterator, epoch: int, step: int
               ) -> tuple[dict[str, float], float, str | None]:
    """One optimizer step over ``t.accumulate`` augmented micro-batches from ``it``.

    Returns the loss terms averaged over the micro-batches, the seconds spent waiting for data, and the
    message to fail the run with (a NaN/inf loss or gradient, bad inputs, the device out of memory) or
    None. Every rank takes the same branch: the NaN checks are all-reduced.
    """
    cfg, ctx, precision, accumulate = t.cfg, t.ctx, t.precision, t.accumulate
    wait = 0.0
    failure: str | None = None
    t.optimizer.zero_grad(set_to_none=True)
    step_terms = {name: 0.0 for name in task.term_names}
    try:
        for micro in range(accumulate):
            tw = time.perf_counter()
            try:
                batch = next(it)
            except VesuviusError as exc:  # a damaged tile read in a DataLoader worker: its own message
                raise from_worker(exc) from None
            wait += time.perf_counter() - tw
            with maybe_no_sync(t.model, micro < accumulate - 1):
                losses = task.losses(batch)
                if ctx.any(not bool(torch.isfinite(losses["loss"]))):
                    failure = nonfinite_message(task.loss_name, epoch, step, current_lr(t.optimizer))
                    break
                precision.backward(losses["loss"] / accumulate)
            for k in step_terms:
                step_terms[k] += float(losses[k].detach()) / accumulate
        if failure is None:
            _, stepped = precision.step(t.optimizer, t.params, cfg.optim.grad_clip)
            if ctx.any(not stepped) and precision.scaler is None:
                failure = nonfinite_message("gradient", epoch, step, current_lr(t.optimizer))
    except RunError as exc:  # NaN/inf inputs or embeddings, found by the model or the loss
        failure = f"{exc} (epoch {epoch}, step {step}); the run stopped and its last good checkpoint is kept"
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release_device_memory(ctx.device)
        failure = out_of_memory_message(ctx.device, cfg)
    return step_terms, wait, failure


class Meter:
    """Sums of per-step values over an epoch (and their count), restartable from a saved state."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.sums: dict[str, float] = dict((state or {}).get("sums", {}))
        self.count = int((state or {}).get("count", 0))

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def means(self, ctx: DistContext | None = None) -> dict[str, float]:
        """Means over the steps of every rank (one all-reduce under DDP)."""
        keys = sorted(self.sums)
        values = [self.sums[k] for k in keys] + [float(self.count)]
        if ctx is not None:
            values = ctx.all_reduce_sum(values)
        count = max(values[-1], 1.0)
        return {k: v / count for k, v in zip(keys, values[:-1])}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}


# ---------------------------------------------------------------- checkpoints


def checkpoint_payload(t: Training, task: RunSteps, epoch: int, step: int, metrics: dict[str, float],
                       partial_state: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint after ``epoch`` epochs and ``step`` steps of the next (see docs/architecture.md)."""
    return to_cpu({
        **task.model_fields(unwrap(t.model)),
        "tile": to_dict(t.cfg.tile),
        "data": to_dict(t.data_filled),
        "normalization": t.normalization,
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.schedule.state_dict(),
        "scaler": t.precision.state_dict(),
        "rng": capture_rng(),
        "config": to_dict(t.cfg_run),
        "epoch": epoch,
        "step": step,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "partial": partial_state,
    })


def to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists of tensors with every tensor on the CPU (checkpoints load anywhere)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone() if obj.device.type != "cpu" else obj.detach().clone()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
