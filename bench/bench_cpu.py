"""CPU training and inference settings, and the engine's training step against the bare model (issue 14).

    python bench/bench_cpu.py --quick       # demo size, and the seed size with fewer steps
    python bench/bench_cpu.py               # more steps

1. The thread count the engine picks from the cores (``engine.threads``).
2. bfloat16 autocast against float32, channels-last against contiguous weights, for the ink model's
   inference (a predict batch) and its training forward+backward, interleaved on the same batch.
3. The engine's training step (``pretrain`` / ``finetune`` generators, their ``StepDone`` times: data
   wait, augmentation, forward, loss, backward, clipping, optimizer step) against the bare model's
   forward+backward on a batch of the same shape (no data, no augmentation, no optimizer), measured
   alternately in one run, at the demo size (resnet10 x0.25, 16x64x64, batch 8) and the seed size
   (resnet50 x1, 32x128x128, batch 2). Goal: engine step >= 0.9x the bare model's speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def median_times(fns: dict, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def set_channels_last(model: torch.nn.Module, on: bool) -> None:
    fmt = torch.channels_last_3d if on else torch.contiguous_format
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.to(memory_format=fmt)


def precision_table(iters: int) -> list[str]:
    from napari_vesuvius_pt.models.encoder import build_encoder
    from napari_vesuvius_pt.models.head import InkModel

    lines = ["| model, tile, batch | pass | fp32 contiguous s | fp32 channels-last s | bf16 channels-last s | "
             "bf16 contiguous s | channels-last gain (fp32) | bf16 gain (on channels-last) |",
             "|---|---|---|---|---|---|---|---|"]
    import copy

    for name, width, depth, size, batch in (("resnet10", 0.25, 16, 64, 8), ("resnet18", 1.0, 16, 64, 4)):
        torch.manual_seed(0)
        contiguous = InkModel(build_encoder(name, widen_factor=width), output_stride=4)
        last = copy.deepcopy(contiguous)  # the same weights, held channels-last (as predict holds them)
        set_channels_last(last, True)
        x = torch.randn(batch, 1, depth, size, size)
        xl = x.contiguous(memory_format=torch.channels_last_3d)

        def infer(cl: bool, bf16: bool):
            model, inp = (last, xl) if cl else (contiguous, x)

            def run():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model(inp)
            return run

        def train(cl: bool, bf16: bool):
            model, inp = (last, xl) if cl else (contiguous, x)

            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(inp)
                out.float().mean().backward()
                model.zero_grad(set_to_none=True)
            return run

        for label, make in (("inference", infer), ("train fwd+bwd", train)):
            t = median_times({"c": make(False, False), "l": make(True, False), "b": make(True, True),
                              "cb": make(False, True)}, 1, iters)
            lines.append(f"| {name} x{width:g}, {depth}x{size}x{size}, {batch} | {label} | {t['c']:.3f} | {t['l']:.3f} | "
                         f"{t['b']:.3f} | {t['cb']:.3f} | {t['c'] / t['l']:.2f}x | {t['l'] / t['b']:.2f}x |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


# ---------------------------------------------------------------- engine step vs bare model


def engine_step_seconds(kind: str, data: dict, name: str, width: float, depth: int, size: int, batch: int,
                        steps: int, out: Path) -> float:
    """Median seconds of an engine training step (StepDone), the first step left out."""
    from napari_vesuvius_pt.config import (
        DataConfig,
        EncoderConfig,
        FinetuneConfig,
        OptimConfig,
        PretrainConfig,
        TileConfig,
        VICRegConfig,
    )
    from napari_vesuvius_pt.engine import finetune, pretrain
    from napari_vesuvius_pt.engine.events import StepDone

    common = dict(out=str(out), encoder=EncoderConfig(name, widen_factor=width),
                  tile=TileConfig(depth=depth, size=size, stride=size // 2, min_mask_fraction=0.5),
                  data=DataConfig(normalization="zscore"), epochs=1, steps_per_epoch=steps + 1, batch_size=batch,
                  device="cpu", prefetch=2)
    if kind == "pretrain":
        cfg = PretrainConfig(segments=data["segments"], vicreg=VICRegConfig(expander=[512, 256, 512]), mask_erosion=0,
                             **common)
        run = pretrain(cfg)
    else:
        cfg = FinetuneConfig(fragments=data["fragments"], val_fragment=data["fragments"][0], val_subsample=8,
                             optim=OptimConfig(name="adamw", lr=1e-4), **common)
        run = finetune(cfg)
    times = [batch / e.samples_per_s for e in run if isinstance(e, StepDone)]
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def bare_step_seconds(kind: str, name: str, width: float, depth: int, size: int, batch: int, steps: int
                      ) -> tuple[float, float]:
    """Median seconds of the bare model's forward+backward on a random batch of the same shape, and of
    the run's augmentation of that batch (both views for pretraining; tiles and labels for fine-tuning),
    timed alternately."""
    from napari_vesuvius_pt.config import AugmentConfig
    from napari_vesuvius_pt.data.augment import augment_batch

    from napari_vesuvius_pt.engine.finetuning import ink_loss
    from napari_vesuvius_pt.models.encoder import build_encoder
    from napari_vesuvius_pt.models.head import InkModel
    from napari_vesuvius_pt.models.vicreg import Expander, vicreg_loss

    torch.manual_seed(0)
    enc = build_encoder(name, widen_factor=width)
    x1 = torch.randn(batch, 1, depth, size, size)
    x2 = torch.randn_like(x1)
    if kind == "pretrain":
        exp = Expander(enc.embedding_dim, (512, 256, 512))

        def step():
            loss = vicreg_loss(exp(enc(x1)), exp(enc(x2)), check_finite=False).total
            loss.backward()
            enc.zero_grad(set_to_none=True)
            exp.zero_grad(set_to_none=True)

        def augment():
            augment_batch(x1, None, AugmentConfig(), gen)
            augment_batch(x2, None, AugmentConfig(), gen)
    else:
        model = InkModel(enc, output_stride=4)
        labels = (torch.rand(batch, 1, size, size) > 0.7).float()

        def step():
            ink_loss(model(x1), labels, 0.5, 0.0)["loss"].backward()
            model.zero_grad(set_to_none=True)

        def augment():
            augment_batch(x1, labels, AugmentConfig(), gen)

    gen = torch.Generator().manual_seed(0)
    t = median_times({"s": step, "a": augment}, 1, steps)
    return t["s"], t["a"]


def make_data(root: Path, depth: int, plane: int) -> dict:
    from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment

    layers = depth + 4
    seg = write_segment(make_scroll_segment((layers, plane, plane), seed=1), root / f"seg{depth}_{plane}", layout="layers")
    frag = write_segment(make_fragment((layers, plane, plane), seed=2), root / f"frag{depth}_{plane}")
    return {"segments": [str(seg)], "fragments": [str(frag)]}


def step_table(quick: bool, workdir: Path, sizes_wanted: set[str]) -> list[str]:
    lines = ["| run | model, tile, batch | engine step s | bare fwd+bwd s | engine / bare speed | goal >= 0.9 | "
             "augmentation s (same batch) | bare + augmentation / engine |", "|---|---|---|---|---|---|---|---|"]
    sizes = [("demo", "resnet10", 0.25, 16, 64, 8, 6 if quick else 12, 256),
             ("seed", "resnet50", 1.0, 32, 128, 2, 2 if quick else 4, 384)]
    for label, name, width, depth, size, batch, steps, plane in sizes:
        if label not in sizes_wanted:
            continue
        data = make_data(workdir, depth, plane)
        for kind in ("pretrain", "finetune"):
            engine, bare, aug = [], [], []
            for r in range(2):  # alternate: a load change slows both alike
                engine.append(engine_step_seconds(kind, data, name, width, depth, size, batch, steps,
                                                  workdir / f"{kind}_{label}_{r}"))
                b_s, a_s = bare_step_seconds(kind, name, width, depth, size, batch, steps)
                bare.append(b_s)
                aug.append(a_s)
            e, b, a = min(engine), min(bare), min(aug)
            ratio = b / e
            lines.append(f"| {kind} ({label}) | {name} x{width:g}, {depth}x{size}x{size}, {batch} | {e:.3f} | {b:.3f} | "
                         f"{ratio:.2f} | {'met' if ratio >= 0.9 else 'not met'} | {a:.3f} | {(b + a) / e:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-steps", action="store_true", help="only the thread and precision tables")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the timings (0: the engine's choice)")
    p.add_argument("--sizes", default="demo,seed", help="step table sizes: demo, seed or both")
    p.add_argument("--skip-precision", action="store_true", help="only the step table")
    args = p.parse_args(argv)
    from napari_vesuvius_pt.engine.precision import cpu_has_native_bf16
    from napari_vesuvius_pt.engine.threads import configure_threads

    choice = configure_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: {choice.describe()}; native bf16 on this CPU: {cpu_has_native_bf16()}; "
          f"torch {torch.__version__}; timings with {torch.get_num_threads()} thread(s); "
          f"load {os.getloadavg()[0]:.1f} (1 min) at start")
    print()
    if not args.skip_precision:
        for line in precision_table(3 if args.quick else 7):
            print(line, flush=True)
    if not args.skip_steps:
        print()
        with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
            for line in step_table(args.quick, Path(tmp), set(args.sizes.split(','))):
                print(line, flush=True)
    print(f"\nload {os.getloadavg()[0]:.1f} (1 min) at the end; `python bench/bench_cpu.py{' --quick' if args.quick else ''}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
