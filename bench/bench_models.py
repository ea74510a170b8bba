"""Benchmark: encoder forward+backward throughput and the share of a training step spent augmenting.

    python bench/bench_models.py --quick            # a few minutes on a laptop CPU
    python bench/bench_models.py --device cuda      # every encoder at both sizes on a GPU

Prints, for each encoder, training samples per second (forward + backward of one view) at the demo
tile size (tiny width) and at the seed size (full width), and the fraction of a VICReg step (two
views through encoder and expander, backward, SGD step) that ``augment_batch`` of both views takes,
measured side by side on the same device. The goal for that fraction is under 10%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from napari_vesuvius_pt.config import AugmentConfig
from napari_vesuvius_pt.data.augment import augment_batch
from napari_vesuvius_pt.engine.device import describe_device, resolve_device
from napari_vesuvius_pt.models.encoder import ENCODER_NAMES, build_encoder
from napari_vesuvius_pt.models.vicreg import Expander, vicreg_loss


@dataclass
class Size:
    depth: int
    size: int

    @classmethod
    def parse(cls, text: str) -> "Size":
        d, y, x = (int(v) for v in text.lower().split("x"))
        if y != x:
            raise argparse.ArgumentTypeError("tiles are square: DEPTHxSIZExSIZE")
        return cls(d, y)

    def __str__(self) -> str:
        return f"{self.depth}x{self.size}x{self.size}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median_time(fns: list, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Median seconds per call of each of ``fns``, called in turn (interleaved), so that a machine
    whose load changes during the run slows them alike and their ratio stays meaningful."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(iters, 1)):
        for fn, t in zip(fns, times):
            t.append(_timed(fn, device))
    return [statistics.median(t) for t in times]


def encoder_throughput(name: str, width: float, size: Size, batch: int, device: torch.device,
                       warmup: int, iters: int, amp: bool) -> float:
    """Training samples per second: forward + backward of one batch of tiles."""
    enc = build_encoder(name, widen_factor=width).to(device).train()
    x = torch.randn(batch, 1, size.depth, size.size, size.size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = enc(x).float().square().mean()
        loss.backward()
        enc.zero_grad(set_to_none=True)

    (seconds,) = _median_time([step], device, warmup, iters)
    return batch / seconds


def augment_share(name: str, width: float, size: Size, batch: int, device: torch.device,
                  warmup: int, iters: int, amp: bool) -> tuple[float, float]:
    """(seconds augmenting both views, seconds of the VICReg step) per batch, on ``device``."""
    enc = build_encoder(name, widen_factor=width).to(device).train()
    exp = Expander(enc.embedding_dim, (512, 256, 512)).to(device).train()
    opt = torch.optim.SGD(list(enc.parameters()) + list(exp.parameters()), lr=1e-3, momentum=0.9, nesterov=True)
    cfg = AugmentConfig()
    gen = torch.Generator().manual_seed(0)
    v1 = torch.rand(batch, 1, size.depth, size.size, size.size, device=device)
    v2 = torch.rand_like(v1)

    def augment() -> None:
        augment_batch(v1, None, cfg, gen)
        augment_batch(v2, None, cfg, gen)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            z1, z2 = exp(enc(v1)), exp(enc(v2))
            loss = vicreg_loss(z1, z2, check_finite=False).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    aug, step = _median_time([augment, train_step], device, warmup, iters)
    return aug, step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few iterations; on CPU, the seed size for resnet50 only")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--encoders", nargs="+", default=list(ENCODER_NAMES), choices=ENCODER_NAMES)
    p.add_argument("--demo-size", type=Size.parse, default=Size(16, 64), help="DEPTHxSIZExSIZE (default 16x64x64)")
    p.add_argument("--demo-width", type=float, default=0.25)
    p.add_argument("--seed-size", type=Size.parse, default=Size(32, 128), help="default 32x128x128")
    p.add_argument("--seed-width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=None,
                   help="default: 8 on CPU at the demo size, 2 at the seed size; 32 and 16 on a GPU")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (what the engine uses on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    warmup = 1
    iters = args.iters or (3 if args.quick else 7) * (1 if cpu else 4)
    demo_batch = args.batch or (8 if cpu else 32)
    seed_batch = args.batch or (2 if cpu else 16)
    seed_names = ["resnet50"] if (args.quick and cpu) else args.encoders
    seed_iters = (1 if args.quick else 3) if cpu else iters
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    print(f"device: {describe_device(device)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"amp {'bf16' if args.amp else 'off'}; {'quick' if args.quick else 'full'} run", flush=True)
    print(f"demo tile {args.demo_size} at width {args.demo_width}, batch {demo_batch}; "
          f"seed tile {args.seed_size} at width {args.seed_width}, batch {seed_batch}\n", flush=True)

    header = f"{'encoder':<10} {'tile':<12} {'width':>5} {'batch':>5} {'fwd+bwd samples/s':>18}"
    print(header)
    print("-" * len(header))
    for name in args.encoders:
        rows = [(args.demo_size, args.demo_width, demo_batch, iters)]
        if name in seed_names:
            rows.append((args.seed_size, args.seed_width, seed_batch, seed_iters))
        for size, width, batch, n in rows:
            rate = encoder_throughput(name, width, size, batch, device, warmup, n, args.amp)
            print(f"{name:<10} {str(size):<12} {width:>5g} {batch:>5} {rate:>18.2f}", flush=True)

    print()
    header = (f"{'VICReg step':<10} {'tile':<12} {'width':>5} {'batch':>5} {'augment s':>10} {'step s':>10} "
              f"{'augment share':>14}")
    print(header)
    print("-" * len(header))
    demo_names = ["resnet10", "resnet18"] if args.quick else args.encoders
    share_rows = [(name, args.demo_size, args.demo_width, demo_batch, iters) for name in demo_names]
    share_rows += [(name, args.seed_size, args.seed_width, seed_batch, seed_iters) for name in seed_names]
    for name, size, width, batch, n in share_rows:
        aug, step = augment_share(name, width, size, batch, device, warmup, n, args.amp)
        share = aug / (aug + step)
        flag = "" if share < 0.10 else "  (over the 10% goal)"
        print(f"{name:<10} {str(size):<12} {width:>5g} {batch:>5} {aug:>10.4f} {step:>10.4f} {share:>13.1%}{flag}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
