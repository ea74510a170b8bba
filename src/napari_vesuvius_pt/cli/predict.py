"""``vesuvius-pt predict``: tiled ink prediction of one or more checkpoints over a segment, into one zarr.

Ctrl-C stops between batches; the bands written so far stay, and the same command resumes after them.
"""

from __future__ import annotations

import argparse
import json

from napari_vesuvius_pt.cli._progress import drive
from napari_vesuvius_pt.config import (
    PREDICT_DIRECTIONS,
    PREDICT_DTYPES,
    PREDICT_FORMATS,
    WEIGHTINGS,
    PredictConfig,
    load_config,
    merge,
)
from napari_vesuvius_pt.engine.prediction import predict
from napari_vesuvius_pt.engine.prediction_store import open_prediction
from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="tiled ink prediction over a segment, one array per checkpoint",
        description="Slide each checkpoint's tile over the segment (inside its mask or a region), keep the "
                    "centre of each tile's prediction, and stream the result into one zarr group with one "
                    "array per checkpoint (float16 probabilities, or uint8 = probability x 255). A stopped "
                    "prediction resumes where it stopped.")
    p.add_argument("--checkpoint", action="append", metavar="CKPT", default=None,
                   help="fine-tuning checkpoint or run folder; repeat to compare encoders")
    p.add_argument("--name", action="append", metavar="NAME", default=None,
                   help="array name per --checkpoint, in order (default: run folder name or file stem)")
    p.add_argument("--segment", metavar="PATH", help="segment folder, multi-page TIFF or zarr")
    p.add_argument("--out", metavar="PRED.zarr", help="output zarr group (default prediction.zarr)")
    p.add_argument("--region", metavar="FILE", help="JSON or napari Shapes CSV polygons: predict only there")
    p.add_argument("--stride", type=int, metavar="N", help="tile stride (default: tile size - 2 x edge)")
    p.add_argument("--edge", type=int, metavar="M", help="pixels dropped at each side of a tile's prediction "
                                                         "(full resolution; default 8)")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--weighting", choices=WEIGHTINGS, help="blend overlaps by mean (default) or Gaussian weights")
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--full-resolution", action="store_true", default=None,
                     help="upsample the reduced-size output to the segment's resolution when writing (default)")
    res.add_argument("--no-full-resolution", dest="full_resolution", action="store_false",
                     help="write at the model's output grid (1/output-stride of the plane)")
    p.add_argument("--direction", choices=PREDICT_DIRECTIONS,
                   help="depth direction: forward (as trained; default), reverse (layers flipped), or both: "
                        "one array each and their mean (<name>-forward, <name>-reverse, <name>-mean)")
    p.add_argument("--format", choices=PREDICT_FORMATS,
                   help="ome-zarr (default: an OME-Zarr image per array in --out) or tiff: also a tiled "
                        "BigTIFF per array beside --out (<out>_<name>.tif)")
    p.add_argument("--dtype", choices=PREDICT_DTYPES, help="float16 probabilities (default) or uint8 x 255")
    p.add_argument("--z0", type=int, metavar="Z", help="first layer of each tile (default: centred)")
    p.add_argument("--tta", action="store_true", default=None,
                   help="test-time augmentation: average each tile's 8 flips and rotations (8x the compute)")
    p.add_argument("--cpu-bf16", action="store_true", default=None,
                   help="bfloat16 autocast on the CPU, where it has it natively (faster; see bench/bench_cpu.py)")
    p.add_argument("--no-resume", dest="resume", action="store_false", default=None,
                   help="start over instead of resuming an interrupted prediction in --out")
    p.add_argument("--config", metavar="YAML", help="a PredictConfig file; flags override it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PredictConfig:
    cfg = load_config(PredictConfig, args.config) if args.config else PredictConfig()
    cfg = merge(cfg, checkpoints=args.checkpoint, names=args.name, segment=args.segment, out=args.out,
                region=args.region, stride=args.stride, edge=args.edge, batch_size=args.batch_size,
                weighting=args.weighting, device=args.device, full_resolution=args.full_resolution,
                dtype=args.dtype, z0=args.z0, resume=args.resume, tta=args.tta,
                cpu_bf16=args.cpu_bf16, direction=args.direction, format=args.format)
    if not cfg.checkpoints:
        raise ConfigError("give at least one --checkpoint CKPT (a fine-tuning checkpoint or run folder)")
    if not cfg.segment:
        raise ConfigError("give --segment PATH")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    finished = drive(predict(cfg), "predict", quiet=args.quiet)
    if finished is None:
        return 130
    if args.json:
        print(json.dumps(finished.summary, default=str))
        return 0
    store = open_prediction(cfg.out)
    print(f"wrote {cfg.out} ({finished.summary['segment']}, {finished.summary['seconds']:.1f} s)")
    for path in (finished.summary.get("tiff") or {}).values():
        print(f"  tiled BigTIFF: {path}")
    for name in finished.summary["encoders"]:
        info = store.info(name)
        shape = " x ".join(map(str, store.array(name).shape))
        print(f"  {name}: {shape} {info['encoding']}, {info['scale'][0]:g} segment pixels per value, "
              f"{info['tiles_total']} tiles  <- {info['checkpoint']}")
    return 0
