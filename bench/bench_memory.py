"""Peak memory of predict, finetune and pretrain as the segments grow (issue 14, item 4).

    python bench/bench_memory.py --quick     # planes 768^2, 1536^2, 2304^2 (area 1x, 4x, 9x)
    python bench/bench_memory.py             # planes 1024^2, 2048^2, 3072^2
    python bench/bench_memory.py --segments 38 --kinds pretrain --planes 1024,2048   # many segments

Each run is its own process. Reported above the process's baseline (imports done, model built): the
peak of anonymous memory (``RssAnon``: what the run really holds) and the peak of mapped file pages
(``RssFile``: memory-mapped TIFF layers, which the kernel drops under pressure), sampled every 5 ms
(``bench/_memory.py``); and ``VmHWM``, the peak RSS that ``ru_maxrss`` and top show (their sum).
Predict: one segment, a tiny model over the whole plane. Finetune: 3 fragments, 3 steps, a small
validation region. Pretrain: 3 segments (``--segments``), 3 steps. Goal: anonymous peak flat in the
segment's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

LAYERS = 20


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(int(args.threads))
    from _memory import PeakMemory

    from napari_vesuvius_pt.config import (
        DataConfig,
        EncoderConfig,
        FinetuneConfig,
        OptimConfig,
        PredictConfig,
        PretrainConfig,
        TileConfig,
    )
    from napari_vesuvius_pt.engine import finetune, pretrain
    from napari_vesuvius_pt.engine.prediction import InkPredictor, predict
    from napari_vesuvius_pt.models.encoder import build_encoder
    from napari_vesuvius_pt.models.head import InkModel

    paths = json.loads(args.paths)
    out = Path(args.out)
    tile = TileConfig(depth=16, size=64, stride=32, min_mask_fraction=0.5)
    enc = EncoderConfig("resnet10", widen_factor=0.25)
    data = DataConfig(normalization="kaggle")
    torch.manual_seed(0)
    model = InkModel(build_encoder("resnet10", widen_factor=0.25), output_stride=4)
    with torch.no_grad():  # the autograd and oneDNN buffers of a first step are not the run's own
        model(torch.zeros(2, 1, 16, 64, 64))
    if args.kind == "predict":
        run = predict(PredictConfig(segment=paths[0], out=str(out), device="cpu", batch_size=8),
                      [InkPredictor("tiny", model, 4, tile, data)])
    elif args.kind == "finetune":
        region = out.parent / f"{out.name}_region.json"
        c = int(args.plane) // 2  # a 192-pixel square at the centre, inside the ellipse mask
        region.write_text(json.dumps({"polygons": [[[c - 96, c - 96], [c - 96, c + 96], [c + 96, c + 96], [c + 96, c - 96]]]}))
        run = finetune(FinetuneConfig(fragments=paths, val_region=str(region), out=str(out), encoder=enc, tile=tile,
                                      data=data, epochs=1, steps_per_epoch=3, batch_size=8, device="cpu",
                                      optim=OptimConfig(name="adamw", lr=1e-4)))
    else:
        run = pretrain(PretrainConfig(segments=paths, out=str(out), encoder=enc, tile=tile, data=data, epochs=1,
                                      steps_per_epoch=3, batch_size=8, device="cpu", mask_erosion=0))
    with PeakMemory() as m:
        for _ in run:
            pass
    return {"anon": m.peak_anon_mb - m.start_anon_mb, "file": m.peak_file_mb - m.start_file_mb, "hwm": m.hwm_mb,
            "base_anon": m.start_anon_mb, "base_file": m.start_file_mb}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default="/tmp/vesuvius-pt-bench-memory")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--planes", help="comma-separated plane sides instead (e.g. 256,384)")
    p.add_argument("--kinds", default="predict,finetune,pretrain", help="which runs (comma-separated)")
    p.add_argument("--segments", type=int, default=3, help="segments (fragments) that pretrain (finetune) open")
    p.add_argument("--child", choices=("predict", "finetune", "pretrain"), help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--plane", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.kind = args.child
        print(json.dumps(child(args)))
        return 0

    from _big_fragment import ellipse_mask, write_big_fragment

    work = Path(args.workdir)
    planes = (768, 1536, 2304) if args.quick else (1024, 2048, 3072)
    if args.planes:
        planes = tuple(int(v) for v in args.planes.split(","))
    print(f"peak memory above the baseline, MB; {LAYERS} layers uint16 (TIFF, memory-mapped), tiles 16x64x64, "
          f"resnet10 x0.25; load {os.getloadavg()[0]:.1f}")
    print()
    print("| run | plane | segments | anon peak MB | file pages peak MB | VmHWM MB | baseline anon / file MB |")
    print("|---|---|---|---|---|---|---|")
    results: dict[str, list[float]] = {}
    for plane in planes:
        mask = ellipse_mask(plane, plane)
        frags = [str(write_big_fragment(work / f"f{plane}_{i}", LAYERS, mask, seed=i)) for i in range(args.segments)]
        for kind in args.kinds.split(","):
            paths = frags[:1] if kind == "predict" else frags
            shutil.rmtree(work / f"out_{kind}_{plane}", ignore_errors=True)  # a fresh run each time
            cmd = [sys.executable, str(HERE), "--child", kind, "--paths", json.dumps(paths),
                   "--out", str(work / f"out_{kind}_{plane}"), "--threads", str(args.threads), "--plane", str(plane)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"| {kind} | {plane}^2 | FAILED: {proc.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(kind, []).append(r["anon"])
            print(f"| {kind} | {plane}x{plane} | {len(paths)} | {r['anon']:.0f} | {r['file']:.0f} | {r['hwm']:.0f} | "
                  f"{r['base_anon']:.0f} / {r['base_file']:.0f} |", flush=True)
    print()
    area = (planes[-1] / planes[0]) ** 2
    for kind, anon in results.items():
        if len(anon) == len(planes):
            print(f"{kind}: anonymous peak {anon[0]:.0f} -> {anon[-1]:.0f} MB for {area:.0f}x the area "
                  f"({anon[-1] / max(anon[0], 1.0):.2f}x)")
    flags = " ".join(a for a in sys.argv[1:])
    print(f"\nload {os.getloadavg()[0]:.1f}; `python bench/bench_memory.py {flags}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
