"""The ways a training run fails that a user can act on: the device running out of memory, and a loss
or gradient becoming NaN or infinite; each with the message that says what to change."""

from __future__ import annotations

import torch

from napari_vesuvius_pt.config import TrainingConfig


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
