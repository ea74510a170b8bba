"""How close `engine.failures.step_bytes` (the estimate a training run checks before its first step) is
to a real step's memory on the CPU: one VICReg-like step (two views through the encoder, backward, AdamW)
and the growth of the process's peak RSS, side by side in one run.

    python bench/bench_step_memory.py resnet18 1.0 16 64 8     # NAME WIDTH DEPTH SIZE BATCH

Prints the estimate, the measured growth and their ratio (> 1: the check errs on the safe side).
"""

from __future__ import annotations

import resource
import sys

import torch

from napari_vesuvius_pt.engine.failures import activation_elements, step_bytes
from napari_vesuvius_pt.models.encoder import build_encoder


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    name, width, d, s, b = argv[0], float(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    enc = build_encoder(name, 1, width)
    n_params = sum(p.numel() for p in enc.parameters())
    est = step_bytes(activation_elements(enc, d, s), n_params, b, 2)
    opt = torch.optim.AdamW(enc.parameters())
    x1, x2 = torch.randn(b, 1, d, s, s), torch.randn(b, 1, d, s, s)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = enc(x1).pow(2).mean() + enc(x2).pow(2).mean()
    loss.backward()
    opt.step()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(f"{name} width {width} {d}x{s}x{s} batch {b}: estimate {est / 2**20:.0f} MiB, measured peak RSS growth "
          f"{grown / 2**20:.0f} MiB, ratio {est / max(grown, 1):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet18", "1.0", "16", "64", "8"])
