"""Benchmark: VICReg pretraining throughput and the share of each step spent waiting for data.

    python bench/bench_pretrain.py --quick            # about a minute on a laptop CPU
    python bench/bench_pretrain.py                     # more steps; on a GPU also the seed configuration

Runs the real engine (``engine.pretraining``) on synthetic scroll segments stored as TIFF layer folders,
side by side in one process, with three loader settings: the default (no worker processes, batches read
ahead by a background thread), reading inside the training loop (``prefetch: 0``), and two spawned
DataLoader workers. For each it prints training samples per second (both views of a tile count as one
sample) and the fraction of each step spent waiting for the next batch (``StepDone.data_wait``), after
warm-up steps. The goal for the default settings is a data wait under 10% on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_vesuvius_pt.config import EncoderConfig, OptimConfig, PretrainConfig, TileConfig, VICRegConfig
from napari_vesuvius_pt.data.synthetic import make_scroll_segment, write_segment
from napari_vesuvius_pt.engine.device import describe_device, resolve_device
from napari_vesuvius_pt.engine.events import Failed, StepDone
from napari_vesuvius_pt.engine.pretraining import pretrain

GOAL = 0.10  # data wait share with the default loader settings


@dataclass
class Setup:
    label: str
    encoder: str
    width: float
    depth: int
    size: int
    batch: int
    num_workers: int = 0
    prefetch: int = 2


@dataclass
class Result:
    setup: Setup
    samples_per_s: float
    data_wait: float
    step_s: float


def parse_tile(text: str) -> tuple[int, int]:
    d, y, x = (int(v) for v in text.lower().split("x"))
    if y != x:
        raise argparse.ArgumentTypeError("tiles are square: DEPTHxSIZExSIZE")
    return d, y


def measure(setup: Setup, segments: list[str], out: Path, device: str, warmup: int, steps: int) -> Result:
    cfg = PretrainConfig(
        segments=segments, out=str(out), device=device,
        encoder=EncoderConfig(setup.encoder, setup.width),
        tile=TileConfig(depth=setup.depth, size=setup.size, stride=setup.size // 2),
        vicreg=VICRegConfig(expander=[512, 256, 512] if setup.width >= 1 else [256, 256]),
        optim=OptimConfig(lr=0.01), epochs=1, batch_size=setup.batch, steps_per_epoch=warmup + steps,
        num_workers=setup.num_workers, prefetch=setup.prefetch,
    )
    waits, times = [], []
    for event in pretrain(cfg):
        if isinstance(event, Failed):
            raise SystemExit(f"{setup.label}: {event.message}")
        if isinstance(event, StepDone) and event.step > warmup:
            times.append(setup.batch / event.samples_per_s)
            waits.append(event.data_wait)
    total = sum(times)
    return Result(setup, setup.batch * len(times) / total, sum(w * t for w, t in zip(waits, times)) / total,
                  statistics.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, small segments")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder", default="resnet10")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--tile", type=parse_tile, default=(16, 64), metavar="DxSxS", help="default 16x64x64")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 6 quick, 20)")
    parser.add_argument("--seed-tile", type=parse_tile, default=(16, 128), metavar="DxSxS",
                        help="tile of the seed configuration (GPU only; default 16x128x128)")
    args = parser.parse_args()
    steps = args.steps or (6 if args.quick else 20)
    warmup = 2
    device = resolve_device(args.device)
    depth, size = args.tile

    setups = [
        Setup("default: in-process, thread read-ahead", args.encoder, args.width, depth, size, args.batch_size),
        Setup("read inside the loop (prefetch 0)", args.encoder, args.width, depth, size, args.batch_size, prefetch=0),
        Setup("2 DataLoader workers (spawn)", args.encoder, args.width, depth, size, args.batch_size, num_workers=2),
    ]
    if device.type == "cuda":
        sd, ss = args.seed_tile
        setups.append(Setup("seed configuration (resnet50, default loader)", "resnet50", 1.0, sd, ss, 150 if not args.quick else 32))

    plane = 256 if args.quick else 512
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layers = max(depth, args.seed_tile[0]) + 6
        segments = [str(write_segment(make_scroll_segment((layers, plane, plane), seed=i), root / f"segment{i}", layout="layers"))
                    for i in range(2)]
        print(f"device: {describe_device(device)}; torch threads: {torch.get_num_threads()}; "
              f"2 synthetic segments {layers}x{plane}x{plane} (uint16 TIFF layers); {warmup} warm-up + {steps} timed steps")
        results = []
        for i, setup in enumerate(setups):
            t0 = time.perf_counter()
            results.append(measure(setup, segments, root / f"run{i}", str(device), warmup, steps))
            print(f"  measured {setup.label} in {time.perf_counter() - t0:.0f} s", flush=True)

    base = results[0].samples_per_s
    header = f"| {'loader':<46} | {'model, tile, batch':<28} | samples/s | vs default | data wait | step (s) |"
    print()
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        s = r.setup
        model = f"{s.encoder} x{s.width:g}, {s.depth}x{s.size}x{s.size}, {s.batch}"
        ratio = f"{r.samples_per_s / base:.2f}x" if s.encoder == results[0].setup.encoder else "-"
        print(f"| {s.label:<46} | {model:<28} | {r.samples_per_s:9.1f} | {ratio:>10} | {100 * r.data_wait:8.1f}% | {r.step_s:8.3f} |")
    verdict = "met" if results[0].data_wait < GOAL else "NOT met"
    print(f"\ngoal: data wait under {100 * GOAL:.0f}% of each step with the default loader settings: {verdict} "
          f"({100 * results[0].data_wait:.1f}%)")


if __name__ == "__main__":
    main()
