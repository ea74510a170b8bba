"""torchrun and DistributedDataParallel: this process's place in the job (:class:`DistContext`), the
process group's set-up and tear-down around a run, and the DDP wrapper of the model.

A plain run is a job of one (``world_size == 1``): every call here is then a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from napari_vesuvius_pt.engine.device import release_device_memory, resolve_device
from napari_vesuvius_pt.engine.events import Event
from napari_vesuvius_pt.errors import ConfigError


@dataclass
class DistContext:
    """The process's place in a torchrun job; ``world_size == 1`` for a plain run."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run initialized the process group, so it destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank's ``flag`` is True."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def peer_stopped(self) -> bool:
        """Before each step: has another rank's consumer stopped the run? (one tiny all-reduce under DDP)

        A rank whose generator is closed calls :meth:`announce_stop` instead, which pairs with this call
        on the other ranks, so every rank stops at the same step boundary.
        """
        return self.distributed and self.any(False)

    def announce_stop(self, more_steps: bool) -> None:
        """Tell the other ranks this one stops; only when they would check before another step."""
        if self.distributed and more_steps:
            self.any(True)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device_name: str) -> DistContext:
    """A plain run, or one process of a torchrun job (env ``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``).

    Under torchrun each process takes ``cuda:LOCAL_RANK`` when the device is CUDA (or auto with CUDA
    available) and joins the process group: NCCL on GPUs, gloo on CPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(device=resolve_device(device_name))
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE is set but RANK is not; start distributed runs with torchrun") from None
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "give torchrun --nproc-per-node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
        owns = True
    return DistContext(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, owns_group=owns)


def run_distributed(device_name: str, body: Callable[[DistContext], Iterator[Event]]) -> Iterator[Event]:
    """``body`` in this process's torchrun place; the process group and device memory released after."""
    ctx = setup_distributed(device_name)
    try:
        yield from body(ctx)
    finally:
        ctx.close()
        release_device_memory(ctx.device)


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around ``module`` under torchrun (SyncBatchNorm on GPUs); the module itself otherwise."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if ctx.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[ctx.device.index])
    return DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) else module


@contextlib.contextmanager
def maybe_no_sync(module: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on the micro-batches before the last of an accumulation."""
    if skip_sync and isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield
