"""One GPU, one script, one table (issue 14, "ready for the GPU"): the paths no CPU run measures.

    python bench/gpu.py                 # on one GPU, under 5 minutes; prints a markdown table
    python bench/gpu.py --tiny          # the same rows at toy sizes on the CPU (seconds): tests/test_bench_gpu.py

Rows:

- ``matmul peak``: bfloat16 TFLOP/s of a large square matmul (8192), the device's practical peak;
- ``VICReg step``: the seed configuration, ResNet-50 x1 at 16x128x128, two views through encoder and
  expander (8192-8192-8192 as the paper), VICReg loss, backward, SGD step, under bfloat16 autocast:
  samples/s, FLOP/s (counted by torch's FlopCounterMode on one step) and the fraction of the matmul peak;
- ``DDP smoke``: ``torchrun --standalone --nproc-per-node 1`` of this script's DDP child: the process
  group (NCCL on a GPU, gloo on the CPU), DistributedDataParallel steps of the encoder, an all-reduce
  checked for its value;
- ``predict``: a synthetic Kaggle-size fragment (65 x 8181 x 6330 uint8, fragment 1's plane; a real
  mask if ``--mask`` is given, else an ellipse) written as a zarr group on local disk first, then the
  engine's ``predict`` end to end, with the tile reading (I/O + decode + normalise) and the model timed
  apart on the first ``--sample`` tiles.

Nothing here is a test or a CI step; it needs only torch, zarr and this package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()


@dataclass
class Sizes:
    matmul: int
    encoder: str
    width: float
    depth: int
    tile: int
    batch: int
    expander: tuple[int, ...]
    steps: int
    fragment: tuple[int, int, int]
    predict_encoder: str
    predict_width: float
    predict_tile: int
    predict_depth: int
    predict_batch: int
    sample: int


FULL = Sizes(matmul=8192, encoder="resnet50", width=1.0, depth=16, tile=128, batch=16, expander=(8192, 8192, 8192),
             steps=10, fragment=(65, 8181, 6330), predict_encoder="resnet18", predict_width=1.0, predict_tile=64,
             predict_depth=16, predict_batch=64, sample=2048)
TINY = Sizes(matmul=1024, encoder="resnet10", width=0.25, depth=8, tile=32, batch=4, expander=(64, 64),
             steps=2, fragment=(20, 160, 224), predict_encoder="resnet10", predict_width=0.25, predict_tile=32,
             predict_depth=8, predict_batch=8, sample=16)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(rows: list[tuple[str, str, str, str]], name: str, value: str, unit: str, detail: str) -> None:
    rows.append((name, value, unit, detail))
    print(f"  {name}: {value} {unit} ({detail})", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- peak and the VICReg step


def matmul_peak(device, n: int, dtype) -> float:
    """FLOP/s of an ``n x n`` matmul (2 n^3 per product), best of a few after a warm-up."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    reps = 10 if device.type == "cuda" else 3
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2.0 * n ** 3 / best


def vicreg_step(device, s: Sizes, bf16: bool) -> tuple[float, float, float]:
    """(samples/s, FLOPs per step, peak device memory in GB) of the VICReg training step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_vesuvius_pt.models.encoder import build_encoder
    from napari_vesuvius_pt.models.vicreg import Expander, vicreg_loss

    torch.manual_seed(0)
    enc = build_encoder(s.encoder, widen_factor=s.width).to(device).train()
    exp = Expander(enc.embedding_dim, s.expander).to(device).train()
    for m in enc.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD([*enc.parameters(), *exp.parameters()], lr=1e-3, momentum=0.9, nesterov=True)
    shape = (s.batch, 1, s.depth, s.tile, s.tile)
    v1 = torch.rand(shape, device=device).contiguous(memory_format=torch.channels_last_3d)
    v2 = torch.rand(shape, device=device).contiguous(memory_format=torch.channels_last_3d)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = vicreg_loss(exp(enc(v1)), exp(enc(v2)), check_finite=False).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = float(counter.get_total_flops())
    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / s.steps
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return s.batch / seconds, flops, peak_gb


# ---------------------------------------------------------------- DDP smoke (child under torchrun)


def ddp_child(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from napari_vesuvius_pt.models.encoder import build_encoder

    s = TINY if args.tiny else FULL
    cuda = torch.cuda.is_available() and not args.tiny
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    t0 = time.perf_counter()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    backend = dist.get_backend()
    enc = build_encoder(s.encoder, widen_factor=s.width).to(device)
    model = DistributedDataParallel(enc, device_ids=[local] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(2, 1, s.depth, s.tile // 2 if not args.tiny else s.tile, s.tile // 2 if not args.tiny else s.tile,
                   device=device)
    for _ in range(3):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(x).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    value = torch.tensor([float(dist.get_rank() + 1)], device=device)
    dist.all_reduce(value)
    expected = dist.get_world_size() * (dist.get_world_size() + 1) / 2
    ok = bool(abs(float(value) - expected) < 1e-6 and torch.isfinite(loss).item())
    world = dist.get_world_size()
    dist.destroy_process_group()
    print(json.dumps({"backend": str(backend), "world": world, "ok": ok, "seconds": time.perf_counter() - t0,
                      "device": str(device)}))


def ddp_smoke(tiny: bool, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", str(HERE),
           "--child", "ddp"] + (["--tiny"] if tiny else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "backend": "?", "world": 0, "wall": wall, "error": proc.stderr.strip()[-300:]}
    return {**json.loads(lines[-1]), "wall": wall}


# ---------------------------------------------------------------- predict a Kaggle-size fragment


def ellipse_mask(h: int, w: int) -> "np.ndarray":  # noqa: F821
    import numpy as np

    yy, xx = np.ogrid[:h, :w]
    return (((yy - h / 2) / (0.48 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1.0).astype(np.uint8)


def write_fragment(out: Path, shape: tuple[int, int, int], mask_png: str | None) -> tuple[float, float, str]:
    """A zarr group (``volume`` uint8, chunks (16, 128, 128) Blosc LZ4; ``mask``) written band by band.
    Returns (seconds, GB on disk, where the mask came from)."""
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec

    z, h, w = shape
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    mask, source = None, "ellipse"
    if mask_png and Path(mask_png).is_file():
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        m = np.asarray(Image.open(mask_png).convert("L")) > 0
        if m.shape == (h, w):
            mask, source = m.astype(np.uint8), Path(mask_png).name
    if mask is None:
        mask = ellipse_mask(h, w)
    group = zarr.open_group(str(out), mode="w")
    vol = group.create_array("volume", shape=shape, chunks=(16, 128, 128), dtype="uint8", fill_value=0,
                             compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
    group.create_array("mask", shape=(h, w), chunks=(1024, 1024), dtype="uint8", fill_value=0)[:] = mask
    rng = np.random.default_rng(0)
    # fibre-like texture: a smooth random field per layer band plus noise, repeated along x in blocks
    block = rng.integers(60, 200, size=(z, 128, 1024), dtype=np.uint8)
    for y0 in range(0, h, 128):
        rows = min(128, h - y0)
        band = np.tile(block[:, :rows], (1, 1, -(-w // 1024)))[:, :, :w]
        vol[:, y0:y0 + rows, :] = band * mask[y0:y0 + rows][None]
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e9
    return seconds, size, source


def make_checkpoint(out: Path, s: Sizes) -> Path:
    import torch

    from napari_vesuvius_pt.config import DataConfig, TileConfig, to_dict
    from napari_vesuvius_pt.models import InkModel, build_encoder, save_checkpoint

    torch.manual_seed(0)
    encoder = build_encoder(s.predict_encoder, widen_factor=s.predict_width)
    model = InkModel(encoder, output_stride=4)
    payload = {
        "kind": "finetune", "encoder_spec": to_dict(encoder.spec), "encoder": model.encoder.state_dict(),
        "head": model.head.state_dict(), "output_stride": 4,
        "tile": to_dict(TileConfig(depth=s.predict_depth, size=s.predict_tile)),
        "data": to_dict(DataConfig(normalization="kaggle")), "config": {}, "epoch": 1, "metrics": {},
    }
    return save_checkpoint(out / "random_ink" / "last.pt", payload)


def predict_rows(rows: list, device, s: Sizes, workdir: Path, mask_png: str | None, bf16: bool) -> None:
    import numpy as np
    import torch

    from napari_vesuvius_pt.config import PredictConfig
    from napari_vesuvius_pt.engine import prediction as P
    from napari_vesuvius_pt.engine.events import Finished

    frag = workdir / "fragment.zarr"
    seconds, gb, source = write_fragment(frag, s.fragment, mask_png)
    shape = "x".join(map(str, s.fragment))
    _row(rows, "predict: write zarr", f"{seconds:.1f}", "s", f"{shape} uint8, mask {source}, {gb:.2f} GB on disk")
    ckpt = make_checkpoint(workdir, s)
    predictor = P.load_predictor(ckpt, "random_ink")
    cfg = PredictConfig(segment=str(frag), out=str(workdir / "pred.zarr"), batch_size=s.predict_batch,
                        device=str(device), amp=bf16, resume=False)

    # apart: reading (I/O, decode, normalise) and the model, each on the first `sample` tiles
    (seg, norm), = P._open_segments(cfg, [predictor])
    job = P._plan(cfg, predictor, seg, norm, None)
    n_tiles = len(job.positions)
    sample = job.positions[:min(s.sample, n_tiles)]
    reader = P._TileReader(job)
    t0 = time.perf_counter()
    batches = [reader.read(sample[i:i + s.predict_batch]) for i in range(0, len(sample), s.predict_batch)]
    read_s = time.perf_counter() - t0
    model = predictor.model.to(device).eval()
    size_out = job.layout.size_out
    with P._channels_last(model, device):
        P._launch_model(model, batches[0], device, bf16, size_out, "warm-up")
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            P._launch_model(model, b, device, bf16, size_out, "model").cpu()
        _sync(device)
        model_s = time.perf_counter() - t0
    k = len(sample)
    _row(rows, "predict: read + normalise", f"{k / read_s:.0f}", "tiles/s",
         f"{k} tiles of {s.predict_depth}x{s.predict_tile}x{s.predict_tile}, one reader thread, {read_s:.1f} s")
    _row(rows, "predict: model", f"{k / model_s:.0f}", "tiles/s",
         f"{s.predict_encoder} x{s.predict_width:g}, batch {s.predict_batch}, {'bf16' if bf16 else 'fp32'}, "
         f"{model_s:.1f} s incl. copy back")
    del batches
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    finished = None
    for event in P.predict(cfg, [predictor]):
        if isinstance(event, Finished):
            finished = event
    e2e = time.perf_counter() - t0
    assert finished is not None
    bound = "reading" if read_s > model_s else "the model"
    _row(rows, "predict: end to end", f"{n_tiles / e2e:.0f}", "tiles/s",
         f"{n_tiles} tiles in {e2e:.1f} s; apart: read {n_tiles / (k / read_s):.1f} s, model "
         f"{n_tiles / (k / model_s):.1f} s (extrapolated); bound by {bound}")
    from napari_vesuvius_pt.engine.prediction_store import open_prediction

    written = np.asarray(open_prediction(cfg.out).array("random_ink")[:256, :256], dtype=np.float32)
    if not np.isfinite(written).all():
        raise SystemExit("the prediction holds non-finite values")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (a smoke run for tests)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (--tiny: cpu)")
    p.add_argument("--workdir", default="/tmp/vesuvius-pt-bench-gpu", help="local disk for the zarr fragment")
    p.add_argument("--mask", help="a mask PNG of the fragment's plane (e.g. Kaggle fragment 1's mask.png)")
    p.add_argument("--skip", default="", help="comma-separated rows to skip: matmul,vicreg,ddp,predict")
    p.add_argument("--child", choices=("ddp",), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "ddp":
        ddp_child(args)
        return 0

    import torch

    from napari_vesuvius_pt.engine.device import describe_device, resolve_device
    from napari_vesuvius_pt.engine.precision import cpu_has_native_bf16

    s = TINY if args.tiny else FULL
    device = resolve_device("cpu" if args.tiny else args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    bf16 = cuda or cpu_has_native_bf16()
    skip = set(filter(None, args.skip.split(",")))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: list[tuple[str, str, str, str]] = []
    print(f"bench/gpu.py on {describe_device(device)}; torch {torch.__version__}; "
          f"{'tiny' if args.tiny else 'full'} sizes", file=sys.stderr, flush=True)

    peak = float("nan")
    if "matmul" not in skip:
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak = matmul_peak(device, s.matmul, dtype)
        _row(rows, "matmul peak", f"{peak / 1e12:.2f}", "TFLOP/s", f"{s.matmul}^2 {str(dtype).split('.')[-1]} matmul")
    if "vicreg" not in skip:
        rate, flops, mem = vicreg_step(device, s, bf16)
        tile = f"{s.depth}x{s.tile}x{s.tile}"
        achieved = flops * rate / s.batch
        _row(rows, "VICReg step", f"{rate:.1f}", "samples/s",
             f"{s.encoder} x{s.width:g}, {tile}, batch {s.batch}, expander {'-'.join(map(str, s.expander))}, "
             f"{'bf16 autocast' if bf16 else 'fp32'}" + (f", peak memory {mem:.1f} GB" if cuda else ""))
        _row(rows, "VICReg step FLOP/s", f"{achieved / 1e12:.2f}", "TFLOP/s",
             f"{flops / 1e9:.1f} GFLOP per step (FlopCounterMode)")
        _row(rows, "fraction of peak", f"{achieved / peak:.1%}" if peak == peak else "n/a", "",
             "VICReg step FLOP/s / matmul peak")
    if "ddp" not in skip:
        r = ddp_smoke(args.tiny, timeout=120 if args.tiny else 180)
        detail = (f"torchrun --standalone --nproc-per-node 1, {r['backend']}, world {r['world']}, "
                  f"3 DDP steps + all-reduce in {r.get('seconds', float('nan')):.1f} s ({r['wall']:.1f} s with start-up)")
        if not r["ok"]:
            detail += f"; error: {r.get('error', '')}"
        _row(rows, "DDP smoke", "ok" if r["ok"] else "FAILED", "", detail)
    if "predict" not in skip:
        predict_rows(rows, device, s, workdir, args.mask, bf16)

    print("| measurement | value | unit | detail |")
    print("|---|---|---|---|")
    for name, value, unit, detail in rows:
        print(f"| {name} | {value} | {unit} | {detail} |")
    print(f"\n{describe_device(device)}; torch {torch.__version__}; total {time.perf_counter() - t_start:.0f} s; "
          f"`python bench/gpu.py{' --tiny' if args.tiny else ''}`")
    return 0 if all(r[1] != "FAILED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
