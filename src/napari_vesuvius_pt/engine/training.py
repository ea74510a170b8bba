"""Pieces both training loops share: optimizers, the learning-rate schedule, mixed precision, gradient
clipping, RNG state, torchrun/DDP set-up, and the messages for the ways a run can fail.

A plain PyTorch loop on purpose: no trainer framework, no signal handlers, so the same code runs in the
CLI's main thread, in napari's worker thread, and under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from napari_vesuvius_pt.config import OptimConfig
from napari_vesuvius_pt.engine.device import resolve_device
from napari_vesuvius_pt.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw", "lars")


# ---------------------------------------------------------------- optimizers


class LARS(torch.optim.Optimizer):
    """LARS as in the VICReg reference code: SGD with momentum whose step is scaled per weight tensor by
    ``eta * |w| / |update|``. Biases and batch-norm parameters (1-D tensors) get neither weight decay
    nor the scaling."""

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(u_norm > 0, group["eta"] * p_norm / u_norm, one), one)
                    update = update.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def build_optimizer(param_groups: list[dict[str, Any]], optim: OptimConfig) -> torch.optim.Optimizer:
    """``param_groups``: dicts with ``params`` and optionally ``lr_scale`` (e.g. a slower encoder).

    Each group's starting learning rate is ``optim.lr * lr_scale``; the schedule scales from there.
    """
    name = optim.name.lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optim.name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not optim.lr > 0 or not math.isfinite(optim.lr):
        raise ConfigError(f"the learning rate must be a positive number, got {optim.lr}")
    groups = []
    for group in param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        if not params:
            continue
        scale = float(group.get("lr_scale", 1.0))
        groups.append({"params": params, "lr": optim.lr * scale, "base_lr": optim.lr * scale, "lr_scale": scale})
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.momentum > 0,
                               weight_decay=optim.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    return LARS(groups, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum)


class WarmupCosine:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine decay to ``min_lr_ratio``.

    The learning rate is a function of the global step alone, so a resumed run follows the same curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.min_lr_ratio = float(min_lr_ratio)
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        """The learning rate of the first (main) parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


# ---------------------------------------------------------------- precision and steps


class Precision:
    """Autocast on CUDA when asked (bfloat16 where the GPU has it, else float16 with a gradient scaler);
    float32 on the CPU."""

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.device = device
        self.enabled = bool(amp) and device.type == "cuda"
        self.dtype = torch.float32
        if self.enabled:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled and self.dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[Tensor], clip: float) -> tuple[float, bool]:
        """Unscale, clip, step. Returns (gradient norm, whether the step was taken).

        Without a scaler a non-finite gradient is not stepped and reported (the caller fails the run);
        with one, the scaler skips the step and lowers its scale, as float16 training expects.
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip and clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.cat(grads)) if grads else torch.zeros(())
        norm_value = float(norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
            return norm_value, math.isfinite(norm_value)
        if not math.isfinite(norm_value):
            return norm_value, False
        optimizer.step()
        return norm_value, True

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def out_of_memory_message(device: torch.device, batch_size: int, accumulate: int, tile: str) -> str:
    smaller = max(1, batch_size // 2)
    more = max(2, accumulate * 2)
    return (
        f"{device} ran out of memory with batch size {batch_size} and {tile} tiles; try --batch-size {smaller} "
        f"(with accumulate {more} in the config to keep the effective batch), a narrower encoder or smaller tiles"
    )


def nonfinite_message(what: str, epoch: int, step: int, lr: float) -> str:
    return (
        f"the {what} became NaN or infinite at epoch {epoch}, step {step} (learning rate {lr:.3g}); the run stopped "
        "and its last good checkpoint is kept; lower the learning rate (--lr), raise warmup_epochs, or check the "
        "data's normalization, then resume or start again"
    )


# ---------------------------------------------------------------- seeds and RNG state


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (run seed, epoch, step, rank), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def capture_rng() -> dict[str, Any]:
    """Global RNG states (torch, CUDA, numpy, random) in a form ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": [int(v) for v in py_state[1]],
                   "gauss": None if py_state[2] is None else float(py_state[2])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- collapse monitor


@torch.no_grad()
def embedding_stats(z: Tensor) -> dict[str, float]:
    """Collapse monitor on pooled embeddings ``(N, dim)``.

    ``embedding_std``: mean per-dimension standard deviation; ``embedding_std_norm``: the same on
    L2-normalized embeddings times sqrt(dim) (1 for well spread embeddings, 0 for a collapse);
    ``effective_rank``: exp of the entropy of the normalized singular values of the centred embeddings
    (RankMe; between 1 and min(N, dim)).
    """
    z = z.float()
    if z.shape[0] < 2:
        return {"embedding_std": float("nan"), "embedding_std_norm": float("nan"), "effective_rank": float("nan")}
    std = z.std(dim=0).mean()
    zn = torch.nn.functional.normalize(z, dim=1)
    std_norm = zn.std(dim=0).mean() * math.sqrt(z.shape[1])
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"embedding_std": float(std), "embedding_std_norm": float(std_norm), "effective_rank": float(torch.exp(entropy))}


# ---------------------------------------------------------------- torchrun / DDP


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


# ---------------------------------------------------------------- checkpoint helpers


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


class Meter:
    """Sums of per-step values over an epoch (and their count), restartable from a saved state."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.sums: dict[str, float] = dict((state or {}).get("sums", {}))
        self.count = int((state or {}).get("count", 0))

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def means(self, ctx: "DistContext | None" = None) -> dict[str, float]:
        keys = sorted(self.sums)
        values = [self.sums[k] for k in keys] + [float(self.count)]
        if ctx is not None:
            values = ctx.all_reduce_sum(values)
        count = max(values[-1], 1.0)
        return {k: v / count for k, v in zip(keys, values[:-1])}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}
