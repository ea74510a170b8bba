"""Tiled inference: our streaming engine against MONAI's ``sliding_window_inference``, side by side.

On the same model (a fine-tuning checkpoint; by default a tiny random InkModel: the cost of tiling
shows most beside a cheap model) and the same synthetic volume, stored as a chunked zarr:

- throughput in voxels of the segment per second. MONAI gets the whole volume as a float tensor in
  memory (its way of working); its time is reported without and with loading that volume. Both use the
  same tile, batch size and overlap (our stride ``size - 2 edge`` is MONAI's ``overlap = 2 edge / size``),
  and the segments have full masks so both predict the same tiles;
- peak RSS (``ru_maxrss``) of a segment and of one 4x larger (2x each side), each run in its own
  subprocess. The goal for the engine is under 1.2x growth; MONAI's whole-volume approach grows with
  the volume.

    python bench/bench_predict.py --quick            # 16 x 384 x 384 and 16 x 768 x 768
    python bench/bench_predict.py                    # 32 x 1024 x 1024 and 32 x 2048 x 2048
    python bench/bench_predict.py --checkpoint RUN   # a trained model instead of the random tiny one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- data and model (parent process)


def make_segment(workdir: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """A synthetic fragment with a full mask, converted to a chunked zarr (what users predict on)."""
    from napari_vesuvius_pt.data.convert import convert_segment
    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment

    out = workdir / f"fragment_{shape[0]}x{shape[1]}x{shape[2]}.zarr"
    if out.exists():
        return out
    synth = make_fragment(shape, seed=seed)
    synth.mask[:] = 1  # both engines predict every tile
    folder = write_segment(synth, workdir / f"fragment_{shape[0]}x{shape[1]}x{shape[2]}")
    convert_segment(open_segment(folder), out)
    shutil.rmtree(folder)
    return out


def make_checkpoint(workdir: Path, depth: int, size: int, stride: int) -> Path:
    import torch

    from napari_vesuvius_pt.config import DataConfig, TileConfig, to_dict
    from napari_vesuvius_pt.models import InkModel, build_encoder, save_checkpoint

    torch.manual_seed(0)
    encoder = build_encoder("resnet10", widen_factor=0.25)
    model = InkModel(encoder, output_stride=stride, decoder_channels=16)
    payload = {
        "kind": "finetune", "encoder_spec": to_dict(encoder.spec), "encoder": model.encoder.state_dict(),
        "head": model.head.state_dict(), "output_stride": stride, "tile": to_dict(TileConfig(depth=depth, size=size)),
        "data": to_dict(DataConfig(normalization="kaggle")), "config": {}, "epoch": 1, "metrics": {},
    }
    return save_checkpoint(workdir / "tiny_random" / "last.pt", payload)


# ---------------------------------------------------------------- one measurement (child process)


def set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def child_engine(args: argparse.Namespace) -> dict:
    set_threads(args)
    from napari_vesuvius_pt.config import PredictConfig
    from napari_vesuvius_pt.engine.events import Finished
    from napari_vesuvius_pt.engine.prediction import load_predictor, predict

    import napari_vesuvius_pt.data.normalize  # noqa: F401  imported before the clock starts, as for MONAI
    import napari_vesuvius_pt.data.segment  # noqa: F401
    import napari_vesuvius_pt.data.tiles  # noqa: F401

    predictor = load_predictor(args.checkpoint)  # model loaded before the baseline, as for MONAI
    baseline = rss_mb()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cfg = PredictConfig(segment=args.segment, out=str(out), edge=args.edge, batch_size=args.batch_size,
                        device="cpu")
    from _memory import PeakMemory

    t0, c0 = time.perf_counter(), cpu_seconds()
    finished = None
    with PeakMemory() as mem:
        for event in predict(cfg, [predictor]):
            if isinstance(event, Finished):
                finished = event
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert finished is not None
    tiles = finished.summary["encoders"][predictor.name]["tiles"]
    return {"seconds": seconds, "cpu": cpu, "load_seconds": 0.0, "load_cpu": 0.0, "tiles": tiles,
            "baseline_mb": baseline, "peak_mb": rss_mb(), "anon_mb": mem.peak_anon_mb - mem.start_anon_mb,
            "file_mb": mem.peak_file_mb - mem.start_file_mb}


def child_monai(args: argparse.Namespace) -> dict:
    set_threads(args)
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from napari_vesuvius_pt.data.normalize import normalizer_from_config
    from napari_vesuvius_pt.data.segment import open_from_config
    from napari_vesuvius_pt.engine.prediction import load_predictor

    predictor = load_predictor(args.checkpoint)
    model = predictor.model.eval()
    baseline = rss_mb()
    depth, size = predictor.tile.depth, predictor.tile.size
    from _memory import PeakMemory

    mem = PeakMemory().__enter__()
    t0, c0 = time.perf_counter(), cpu_seconds()
    segment = open_from_config(args.segment, predictor.data)
    normalizer = normalizer_from_config(predictor.data, segment)
    z0 = (segment.shape[0] - depth) // 2
    volume = torch.from_numpy(normalizer(np.asarray(segment.volume[z0:z0 + depth])))[None, None]
    t1, c1 = time.perf_counter(), cpu_seconds()
    tiles = 0

    def run(x):
        nonlocal tiles
        tiles += x.shape[0]
        return model(x)[:, :, None]  # (B, 1, 1, S/r, S/r): MONAI infers the zoom from the shapes

    with torch.inference_mode():
        out = torch.sigmoid(sliding_window_inference(
            volume, roi_size=(depth, size, size), sw_batch_size=args.batch_size, predictor=run,
            overlap=2 * args.edge / size, mode="constant"))
    t2, c2 = time.perf_counter(), cpu_seconds()
    mem.__exit__(None, None, None)
    assert torch.isfinite(out).all()
    return {"seconds": t2 - t1, "cpu": c2 - c1, "load_seconds": t1 - t0, "load_cpu": c1 - c0, "tiles": tiles,
            "baseline_mb": baseline, "peak_mb": rss_mb(), "anon_mb": mem.peak_anon_mb - mem.start_anon_mb,
            "file_mb": mem.peak_file_mb - mem.start_file_mb}


def run_child(argv: list[str], raw: bool = False):
    proc = subprocess.run([sys.executable, str(HERE), *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last) if not raw else json.loads(last)["text"]


def measure(kind: str, segment: Path, checkpoint: Path, args: argparse.Namespace, out: Path) -> dict:
    return run_child(["--child", kind, "--segment", str(segment), "--checkpoint", str(checkpoint),
                      "--edge", str(args.edge), "--batch-size", str(args.batch_size), "--out", str(out),
                      "--threads", str(args.threads)])


# ---------------------------------------------------------------- the comparison


def child_weighting(args: argparse.Namespace) -> dict:
    lines = weighting_check(Path(args.checkpoint), Path(args.segment), Path(args.workdir), args.edge, args.batch_size)
    return {"text": "\n".join(lines)}


def weighting_check(checkpoint: Path, fragment: Path, workdir: Path, edge: int, batch_size: int) -> list[str]:
    """F0.5 of mean vs Gaussian blending, same model and fragment: with the kept centres tiling the plane
    (where the two are the same by construction), and overlapping by half (edge kept, and edge 0)."""
    from napari_vesuvius_pt.config import PredictConfig
    from napari_vesuvius_pt.engine.evaluation import evaluate
    from napari_vesuvius_pt.engine.prediction import load_predictor, predict

    predictor = load_predictor(checkpoint)
    size, r = predictor.tile.size, predictor.output_stride

    def half(n: int) -> int:
        return max(r, (n // 2) // r * r)

    runs = [(edge, size - 2 * edge, "mean"), (edge, half(size - 2 * edge), "mean"),
            (edge, half(size - 2 * edge), "gaussian"), (0, half(size), "mean"), (0, half(size), "gaussian")]
    lines = [f"weighting on {fragment.name} ({checkpoint}): tile {size}, output stride {r}",
             "| edge | stride | weighting | F0.5 | threshold | F0.5 at 0.5 | AUC |", "|---|---|---|---|---|---|---|"]
    for e, stride, weighting in runs:
        out = workdir / f"weighting_{e}_{stride}_{weighting}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cfg = PredictConfig(segment=str(fragment), out=str(out), edge=e, stride=stride, weighting=weighting,
                            batch_size=batch_size, device="cpu")
        for _ in predict(cfg, [predictor]):
            pass
        m = evaluate(out, fragment)[predictor.name]
        lines.append(f"| {e} | {stride} | {weighting} | {m.f05:.4f} | {m.threshold:.2f} | {m.f05_at_05:.4f} "
                     f"| {m.auc:.4f} |")
    return lines


def child_prepare(args: argparse.Namespace) -> dict:
    """Segments and model, made in a child so that the parent stays small: a child's ru_maxrss starts
    from its parent's at fork time."""
    import torch

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    small = tuple(json.loads(args.shape))
    large = (small[0], small[1] * 2, small[2] * 2)
    checkpoint = args.checkpoint or str(make_checkpoint(workdir, depth=small[0], size=64, stride=4))
    set_threads(args)
    return {"1x": str(make_segment(workdir, small, 0)), "4x": str(make_segment(workdir, large, 1)),
            "checkpoint": checkpoint, "small": small, "large": large, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 busy CPU cores)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per method, best kept")
    parser.add_argument("--workdir", default="/tmp/vesuvius-pt-bench-predict")
    parser.add_argument("--checkpoint", help="fine-tuning checkpoint or run folder (default: tiny random model)")
    parser.add_argument("--weighting-fragment", help="a labeled fragment to compare mean vs gaussian on "
                                                     "(needs a trained --checkpoint)")
    parser.add_argument("--edge", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in both (0: torch's default); 1 gives steadier numbers on a busy machine")
    parser.add_argument("--child", choices=("prepare", "engine", "monai", "weighting"), help=argparse.SUPPRESS)
    parser.add_argument("--segment", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child = {"prepare": child_prepare, "engine": child_engine, "monai": child_monai,
                 "weighting": child_weighting}[args.child]
        print(json.dumps(child(args)))
        return 0

    workdir = Path(args.workdir)
    small = (16, 384, 384) if args.quick else (32, 1024, 1024)
    prep = run_child(["--child", "prepare", "--workdir", str(workdir), "--shape", json.dumps(small),
                      "--threads", str(args.threads)]
                     + (["--checkpoint", args.checkpoint] if args.checkpoint else []))
    checkpoint = Path(prep["checkpoint"])
    small, large = tuple(prep["small"]), tuple(prep["large"])

    results: dict[tuple[str, str], dict] = {}
    for size in ("1x", "4x"):
        for _ in range(max(1, args.repeats)):  # alternate the methods, keep each one's least disturbed run
            for kind in ("engine", "monai"):
                r = measure(kind, Path(prep[size]), checkpoint, args, workdir / f"pred_{kind}_{size}.zarr")
                best = results.get((kind, size))
                if best is None:
                    results[kind, size] = r
                else:  # fastest wall time, least CPU time, highest peak
                    results[kind, size] = {**(r if r["seconds"] < best["seconds"] else best),
                                           "cpu": min(r["cpu"], best["cpu"]),
                                           "peak_mb": max(r["peak_mb"], best["peak_mb"])}

    def voxels(size: str) -> int:
        shape = small if size == "1x" else large
        return shape[0] * shape[1] * shape[2]

    print("# tiled inference: engine vs MONAI sliding_window_inference")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {prep['torch']} ({prep['threads']} threads); "
          f"model {checkpoint}; tile edge {args.edge}, batch {args.batch_size}; best of {args.repeats} runs each")
    print(f"segments: 1x = {'x'.join(map(str, small))}, 4x = {'x'.join(map(str, large))} (zarr, full mask)")
    print()
    print("| size | method | tiles | wall s | Mvoxel/s | Mvoxel/s incl. load | CPU s | Mvoxel/CPU-s | peak RSS MB "
          "| over baseline MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in ("1x", "4x"):
        for kind in ("engine", "monai"):
            r = results[kind, size]
            v = voxels(size) / 1e6
            print(f"| {size} | {kind} | {r['tiles']} | {r['seconds']:.1f} | {v / r['seconds']:.2f} | "
                  f"{v / (r['seconds'] + r['load_seconds']):.2f} | {r['cpu']:.1f} | {v / r['cpu']:.2f} | "
                  f"{r['peak_mb']:.0f} | {r['peak_mb'] - r['baseline_mb']:.0f} |")
    print()
    for size in ("1x", "4x"):
        e, m = results["engine", size], results["monai", size]
        print(f"throughput {size}: engine / MONAI = {m['seconds'] / e['seconds']:.2f} by wall time "
              f"({(m['seconds'] + m['load_seconds']) / e['seconds']:.2f} counting MONAI's loading of the volume), "
              f"{m['cpu'] / e['cpu']:.2f} by CPU time")
    for kind in ("engine", "monai"):
        a, b = results[kind, "1x"], results[kind, "4x"]
        print(f"peak RSS growth 1x -> 4x, {kind}: {b['peak_mb'] / a['peak_mb']:.3f}x "
              f"(+{b['peak_mb'] - a['peak_mb']:.0f} MB; above baseline {a['peak_mb'] - a['baseline_mb']:.0f} -> "
              f"{b['peak_mb'] - b['baseline_mb']:.0f} MB)")
    if args.weighting_fragment:
        print()
        print(run_child(["--child", "weighting", "--checkpoint", str(checkpoint), "--segment", args.weighting_fragment,
                         "--workdir", str(workdir), "--edge", str(args.edge), "--batch-size", str(args.batch_size)],
                        raw=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
