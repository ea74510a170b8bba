"""Real-size benchmarks (issue 14, items 1 and 3), on synthetic volumes with the real Kaggle masks.

    python bench/bench_real.py --labels /work/shared/kaggle-labels        # all parts
    python bench/bench_real.py --labels DIR --only predict,open,validation

- ``predict``: the engine's tiled inference against MONAI's ``sliding_window_inference`` at equal
  settings (same tiny model, 16x64x64 tiles, edge 8 = overlap 0.25, batch 8), MONAI handed the
  normalised slab in memory with its loading counted; on 16x2048x2048 with a full mask (equal tile
  counts) and on fragment 3's shape (30x7606x5249, uint16 TIFF layers) with its real mask (the engine
  skips tiles outside the mask, MONAI cannot: compare tiles/s and wall). Wall and CPU time, tiles/s,
  peak anonymous memory and mapped file pages (``bench/bench_predict.py``'s children).
- ``open``: a 65-layer uint8 fragment of fragment 2's size (14830x9506, its real mask; 9.2 GB of
  TIFF layers on local disk, written once): opening it, fitting the normaliser, building the tile grid
  from the mask (finetune: no erosion; pretrain: erosion 8), splitting off a validation region.
- ``validation``: fine-tuning on fragment 3's volume with a validation region (the lower 30%): the
  seconds of each epoch's training steps and of its validation (a fixed 512-tile subsample each epoch,
  all tiles at the last), and the share validation takes of an epoch of one pass over the training tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def predict_part(work: Path, labels: Path, threads: int, plane: int = 2048, fragment3: bool = True) -> list[str]:
    import numpy as np
    from _big_fragment import load_mask, write_big_fragment

    from bench_predict import make_checkpoint

    ckpt = make_checkpoint(work, depth=16, size=64, stride=4)
    square = write_big_fragment(work / f"plane{plane}", 16, np.ones((plane, plane), bool))
    segments = [(f"16x{plane}x{plane}, full mask", square)]
    if fragment3:
        frag3 = write_big_fragment(work / "fragment3", 30, load_mask(labels / "3" / "mask.png"), seed=3)
        segments.append(("fragment 3: 30x7606x5249, real mask", frag3))
    lines = [f"checkpoint {ckpt} (resnet10 x0.25, tiles 16x64x64, output stride 4); edge 8, batch 8; "
             f"{threads} torch thread(s) each", "",
             "| segment | method | tiles | wall s | tiles/s | wall incl. load s | CPU s | anon peak MB | file pages MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for n, (label, seg) in enumerate(segments):
        res = {}
        layers = sorted((Path(seg) / "surface_volume").glob("*.tif"))
        z0 = (len(layers) - 16) // 2
        for f in layers[z0:z0 + 16]:  # the layers both read, into the page cache first: both read warm
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        kinds = ("engine", "monai", "engine", "monai") if n == 0 else ("engine", "monai")
        for kind in kinds:  # alternated: a change of load slows both alike; the faster run of each is kept
            cmd = [sys.executable, str(HERE.parent / "bench_predict.py"), "--child", kind, "--segment", str(seg),
                   "--checkpoint", str(ckpt), "--edge", "8", "--batch-size", "8", "--out", str(work / f"pred_{kind}.zarr"),
                   "--threads", str(threads)]
            note = load()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                lines.append(f"| {label} | {kind} | FAILED: {proc.stderr.strip().splitlines()[-1][:200]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if kind not in res or r["seconds"] < res[kind]["seconds"]:
                res[kind] = r
            lines.append(f"| {label} | {kind} ({note}) | {r['tiles']} | {r['seconds']:.1f} | {r['tiles'] / r['seconds']:.0f} | "
                         f"{r['seconds'] + r['load_seconds']:.1f} | {r['cpu'] + r['load_cpu']:.1f} | {r['anon_mb']:.0f} | "
                         f"{r['file_mb']:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
        if len(res) == 2:
            e, m = res["engine"], res["monai"]
            summary.append(
                f"{label}: engine / MONAI = {(m['seconds'] + m['load_seconds']) / e['seconds']:.2f} by wall time "
                f"(MONAI's load counted; {m['seconds'] / e['seconds']:.2f} without), "
                f"{(m['cpu'] + m['load_cpu']) / e['cpu']:.2f} by CPU time; tiles/s engine {e['tiles'] / e['seconds']:.0f}, "
                f"MONAI {m['tiles'] / (m['seconds'] + m['load_seconds']):.0f} incl. load "
                f"({(e['tiles'] / e['seconds']) / (m['tiles'] / (m['seconds'] + m['load_seconds'])):.2f}x)")
    return lines + [""] + summary


def open_part(work: Path, labels: Path) -> list[str]:
    import numpy as np
    from _big_fragment import load_mask, write_big_fragment

    from napari_vesuvius_pt.config import DataConfig, TileConfig
    from napari_vesuvius_pt.data.normalize import normalizer_from_config
    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.data.tiles import TileGrid, split_by_regions

    t0 = time.perf_counter()
    mask = load_mask(labels / "2" / "mask.png")
    path = write_big_fragment(work / "fragment2", 65, mask, dtype=np.uint8, seed=2)
    written = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (path / "surface_volume").glob("*.tif")) / 1e9
    rows = []

    def timed(name, fn):
        note = load()
        t = time.perf_counter()
        out = fn()
        rows.append(f"| {name} | {time.perf_counter() - t:.2f} | {note} |")
        return out

    seg = timed("open_segment (65 TIFF layers memory-mapped, mask.png and inklabels.png decoded)", lambda: open_segment(path))
    data = DataConfig(normalization="kaggle")
    timed("fit the normaliser (kaggle percentiles, sampled tiles)", lambda: normalizer_from_config(data, seg))
    tile = TileConfig(depth=16, size=64, stride=32, min_mask_fraction=0.5)
    grid = timed("tile grid from the mask (finetune: stride 32, no erosion)",
                 lambda: TileGrid.from_mask(seg.papyrus_mask(), tile.size, tile.stride, tile.min_mask_fraction, 0))
    timed("tile grid from the mask (pretrain: stride 32, erosion 8, fully inside)",
          lambda: TileGrid.from_mask(seg.papyrus_mask(), tile.size, tile.stride, 1.0, 8))
    h, w = seg.shape[1:]
    poly = [np.array([[0.7 * h, 0], [0.7 * h, w], [h, w], [h, 0]])]
    timed("split off a validation region (lower 30%)", lambda: split_by_regions(grid, poly, tile.size, 0))
    head = [f"fragment 2's size: 65x{h}x{w} uint8, {size:.1f} GB of TIFF layers (written in {written:.0f} s, "
            f"or found); {len(grid)} finetune tiles", "", "| step | seconds | load |", "|---|---|---|"]
    return head + rows


def validation_part(work: Path, labels: Path, steps: int, threads: int) -> list[str]:
    import numpy as np
    import torch
    from _big_fragment import load_mask, write_big_fragment

    torch.set_num_threads(threads)
    from napari_vesuvius_pt.config import (
        AugmentConfig,
        DataConfig,
        EncoderConfig,
        FinetuneConfig,
        OptimConfig,
        TileConfig,
    )
    from napari_vesuvius_pt.engine import finetune
    from napari_vesuvius_pt.engine.events import EpochDone, Finished, Started, StepDone

    frag3 = write_big_fragment(work / "fragment3", 30, load_mask(labels / "3" / "mask.png"), seed=3)
    from PIL import Image

    h, w = np.asarray(Image.open(frag3 / "mask.png")).shape
    region = work / "fragment3_lower30.json"
    region.write_text(json.dumps({"polygons": [[[0.7 * h, 0], [0.7 * h, w], [h, w], [h, 0]]]}))
    cfg = FinetuneConfig(fragments=[str(frag3)], val_region=str(region), out=str(work / "ft_run"),
                         encoder=EncoderConfig("resnet10", widen_factor=0.25),
                         tile=TileConfig(depth=16, size=64, stride=32, min_mask_fraction=0.5),
                         data=DataConfig(normalization="kaggle"), augment=AugmentConfig(),
                         optim=OptimConfig(name="adamw", lr=1e-4), epochs=3, steps_per_epoch=steps, batch_size=8,
                         device="cpu", val_subsample=512)
    import shutil

    shutil.rmtree(cfg.out, ignore_errors=True)
    t0 = time.perf_counter()
    started = None
    epochs, step_times = [], []
    summary = {}
    run = finetune(cfg)
    for e in run:
        if isinstance(e, Started):
            started = time.perf_counter() - t0
        elif isinstance(e, StepDone):
            step_times.append(cfg.batch_size / e.samples_per_s)
        elif isinstance(e, EpochDone):
            epochs.append(e.metrics)
            if len(epochs) == 2:  # two subsampled epochs; the last epoch's full pass is left out (see below)
                run.close()
                break
        elif isinstance(e, Finished):
            summary = e.summary
    total = time.perf_counter() - t0
    from napari_vesuvius_pt.engine.finetuning import prepare_data

    _, val_src, split = prepare_data(cfg, None)
    summary = {**split, **summary}
    n_train = int(summary.get("train_tiles", 0))
    step_s = float(np.median(step_times[1:]))
    pass_steps = max(1, n_train // cfg.batch_size)
    lines = [f"fragment 3's shape, 30 layers uint16, real mask; validation region: the lower 30% "
             f"({summary.get('val_tiles')} tiles), {n_train} training tiles; resnet10 x0.25, 16x64x64, batch 8, "
             f"{steps} steps per epoch; {threads} thread(s); {load()} at the end", "",
             "| epoch | validation tiles | training s | validation s | validation share (this short epoch) | "
             "share of an epoch of one pass |", "|---|---|---|---|---|---|"]
    for i, m in enumerate(epochs, 1):
        share = m["val_seconds"] / (m["seconds"] + m["val_seconds"])
        full_epoch = pass_steps * step_s
        lines.append(f"| {i} | {int(m['val_tiles'])} | {m['seconds']:.1f} | {m['val_seconds']:.1f} | {share:.0%} | "
                     f"{m['val_seconds'] / (full_epoch + m['val_seconds']):.1%} ({pass_steps} steps x {step_s:.3f} s) |")
    per_tile = epochs[-1]["val_seconds"] / max(1, epochs[-1]["val_tiles"])
    n_val = int(summary.get("val_tiles", 0))
    lines += ["", f"opening the data, fitting, the grid and the split before the first step: {started:.1f} s; "
              f"two epochs {total:.1f} s. The last epoch's full pass over all {n_val} validation tiles was not run "
              f"here: at this run's {1 / per_tile:.0f} tiles/s it would take ~{n_val * per_tile:.0f} s, once per run"]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", default="/work/shared/kaggle-labels", help="folder with 2/mask.png and 3/mask.png")
    p.add_argument("--workdir", default="/tmp/vesuvius-pt-bench-real")
    p.add_argument("--only", default="predict,open,validation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps per epoch in the validation part")
    p.add_argument("--plane", type=int, default=2048, help="side of the full-mask plane in the predict part")
    p.add_argument("--no-fragment3", action="store_true", help="predict part: only the full-mask plane")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    labels = Path(args.labels)
    parts = set(args.only.split(","))
    print(f"# real-size benchmarks ({load()} at start, {os.cpu_count()} CPUs)")
    for name, fn in (("predict", lambda: predict_part(work, labels, args.threads, args.plane, not args.no_fragment3)),
                     ("open", lambda: open_part(work, labels)),
                     ("validation", lambda: validation_part(work, labels, args.steps, args.threads))):
        if name in parts:
            t0 = time.perf_counter()
            print(f"\n## {name}\n")
            for line in fn():
                print(line, flush=True)
            print(f"\n({time.perf_counter() - t0:.0f} s)")
    print(f"\n`python bench/bench_real.py --only {args.only} --threads {args.threads}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
