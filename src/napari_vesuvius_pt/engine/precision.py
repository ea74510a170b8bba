"""Mixed precision for the training steps: autocast on CUDA (bfloat16 where the GPU has it, else float16
with a gradient scaler), float32 on the CPU; and the unscale-clip-step of one optimizer step."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor


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
