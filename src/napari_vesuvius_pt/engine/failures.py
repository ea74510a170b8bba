"""The ways a training run fails that a user can act on: the device running out of memory, and a loss
or gradient becoming NaN or infinite; each with the message that says what to change."""

from __future__ import annotations

import torch

from napari_vesuvius_pt.config import TrainingConfig
from napari_vesuvius_pt.errors import ConfigError


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def out_of_memory_message(device: torch.device, cfg: TrainingConfig) -> str:
    """What to change when a step of ``cfg``'s run does not fit on ``device``."""
    batch_size, accumulate, tile = cfg.batch_size, int(cfg.optim.accumulate), cfg.tile
    smaller = max(1, batch_size // 2)
    more = max(2, accumulate * 2)
    return (
        f"{device} ran out of memory with batch size {batch_size} and {tile.depth}x{tile.size}x{tile.size} tiles; "
        f"try --batch-size {smaller} "
        f"(with accumulate {more} in the config to keep the effective batch), a narrower encoder or smaller tiles"
    )


def nonfinite_message(what: str, epoch: int, step: int, lr: float) -> str:
    return (
        f"the {what} became NaN or infinite at epoch {epoch}, step {step} (learning rate {lr:.3g}); the run stopped "
        "and its last good checkpoint is kept; lower the learning rate (--lr), raise warmup_epochs, or check the "
        "data's normalization, then resume or start again"
    )


# ---------------------------------------------------------------- before the first step: will a step fit?

ACTIVATION_FACTOR = 1.5  # forward outputs kept for backward (~1x, measured by RSS on CPU) plus gradients, augmentation copies


def activation_elements(encoder: torch.nn.Module, depth: int, size: int) -> int:
    """Elements of every module output in one forward pass of one ``depth x size x size`` tile (the
    activations a training step keeps per tile): one no-grad pass of a zero tile in eval mode, so the
    model's state (batch-norm statistics, RNG) is untouched."""
    total = [0]

    def count(module, inputs, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel()

    param = next(encoder.parameters())
    channels = int(getattr(getattr(encoder, "spec", None), "in_channels", 1) or 1)
    hooks = [m.register_forward_hook(count) for m in encoder.modules() if not list(m.children())]
    training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, channels, depth, size, size, device=param.device, dtype=param.dtype))
    finally:
        encoder.train(training)
        for h in hooks:
            h.remove()
    return int(total[0] + depth * size * size)


def step_bytes(per_tile_elements: int, n_params: int, batch_size: int, views: int) -> int:
    """A rough upper estimate of one training step's memory: activations of ``views`` forward passes of
    ``batch_size`` tiles (float32) and the weights with their gradients and two optimizer moments."""
    per_tile = per_tile_elements * 4
    return int(ACTIVATION_FACTOR * per_tile * batch_size * views + 16 * n_params)


def available_bytes(device: torch.device) -> int | None:
    """Memory a run on ``device`` can still take: free GPU memory, or the host's available memory within
    this process's cgroup limit; None where it cannot be told."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except RuntimeError:
            return None
    if device.type != "cpu":
        return None
    limits: list[int] = []
    try:
        import psutil

        limits.append(int(psutil.virtual_memory().available))
    except ImportError:
        pass
    for path, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = open(path).read().strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                limits.append(int(limit) - int(open(used).read().strip()))
            break
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_batch(cfg: TrainingConfig, n_tiles: int, world_size: int = 1) -> None:
    """A batch larger than the tiles there are would repeat tiles inside one batch: refused."""
    if cfg.batch_size * world_size > n_tiles:
        per = "" if world_size == 1 else f" x {world_size} processes"
        raise ConfigError(
            f"batch size {cfg.batch_size}{per} is larger than the {n_tiles} tiles available: a batch would repeat "
            f"tiles; use --batch-size {max(1, n_tiles // world_size)} or less (or more data, a smaller stride)"
        )


def check_step_fits(cfg: TrainingConfig, model: torch.nn.Module, encoder: torch.nn.Module, device: torch.device,
                    views: int = 1, available: int | None = None) -> int:
    """Refuse a step that cannot fit in ``device``'s memory before its batch is allocated; returns the
    estimate in bytes. ``available`` defaults to :func:`available_bytes` (unknown: not checked)."""
    n_params = sum(p.numel() for p in model.parameters())
    per_tile = activation_elements(encoder, cfg.tile.depth, cfg.tile.size)
    need = step_bytes(per_tile, n_params, cfg.batch_size, views)
    free = available_bytes(device) if available is None else available
    if free is not None and need > free:
        per_sample = max(1, (need - 16 * n_params) // max(1, cfg.batch_size))
        fits = max(0, int((free - 16 * n_params) // per_sample))
        hint = (f"use --batch-size {fits} or less" if fits >= 1 else "use smaller tiles or a narrower encoder")
        raise ConfigError(
            f"a training step with batch size {cfg.batch_size} of {cfg.tile.depth}x{cfg.tile.size}x{cfg.tile.size} "
            f"tiles needs about {_gib(need)} but {device} has {_gib(free)} available; {hint} "
            f"(with accumulate in the config to keep the effective batch), or smaller tiles / --width"
        )
    return need


def from_worker(exc: BaseException) -> BaseException:
    """A user error raised in a DataLoader worker comes back with the worker's traceback in its message
    (``Caught SegmentError in DataLoader worker process 0. Original Traceback ...``): the same error with
    its own one-line message again."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name = type(exc).__name__
    message = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    try:
        return type(exc)(message.strip())
    except TypeError:
        return exc
