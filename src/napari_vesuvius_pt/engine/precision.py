"""Mixed precision for the training steps: autocast on CUDA (bfloat16 where the GPU has it, else float16
with a gradient scaler); on the CPU float32, or bfloat16 autocast when asked (``cpu_bf16``) and the CPU
computes it natively (AVX-512 BF16 / AMX: oneDNN; ``bench/bench_cpu.py`` measures it, 1.2-1.4x on such a
CPU); and the unscale-clip-step of one optimizer step."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX-512 BF16 or AMX); elsewhere it is emulated, slower."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_autocast(device: torch.device, amp: bool, cpu_bf16: bool = False) -> bool:
    """Autocast on this device: CUDA with ``amp``; the CPU with ``cpu_bf16`` where it has native bfloat16."""
    if device.type == "cuda":
        return bool(amp)
    return device.type == "cpu" and bool(cpu_bf16) and cpu_has_native_bf16()


class Precision:
    """Autocast on CUDA when asked (bfloat16 where the GPU has it, else float16 with a gradient scaler);
    on the CPU float32, or bfloat16 autocast with ``cpu_bf16`` where the CPU has it natively."""

    def __init__(self, device: torch.device, amp: bool, cpu_bf16: bool = False) -> None:
        self.device = device
        self.enabled = use_autocast(device, amp, cpu_bf16)
        self.dtype = torch.float32
        if self.enabled:
            cuda = device.type == "cuda"
            self.dtype = torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled and self.dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

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
