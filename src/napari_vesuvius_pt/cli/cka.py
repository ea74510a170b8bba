"""``vesuvius-pt cka``: linear and RBF CKA between checkpoints on a fixed probe set of tiles.

Run it after every pretraining epoch with the same ``--out``: cached features mean each new epoch
costs one feature pass and one new row of the matrix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from napari_vesuvius_pt.cli._progress import drive
from napari_vesuvius_pt.config import CKA_LAYERS, CKAConfig, load_config, merge
from napari_vesuvius_pt.engine.cka_run import cka
from napari_vesuvius_pt.engine.events import Event, TilesDone
from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cka", help="CKA between checkpoints: is pretraining still changing the representation?",
        description="Compare the representations of checkpoints (every epoch of a run folder, checkpoint files, "
                    "random, k700:FILE) with linear and RBF CKA on a fixed, seeded probe set of tiles from one "
                    "segment. Writes linear.csv, rbf.csv, cka.json and cka.png (the two heatmaps) into --out, "
                    "and caches features there, so running again after a new epoch adds one row.")
    p.add_argument("sources", nargs="*", metavar="RUN_OR_CKPT",
                   help="run folders, checkpoint files, random[:resnetNN], k700:FILE")
    p.add_argument("--segment", metavar="PATH", help="the segment the probe tiles come from")
    p.add_argument("--out", metavar="DIR", help="output folder (e.g. RUN/cka, to keep the cache in the run)")
    p.add_argument("--tiles", type=int, metavar="N", help="probe tiles (default 256)")
    p.add_argument("--layer", choices=CKA_LAYERS, help="pooled embedding (default) or a stage's map, pooled to 1x2x2")
    p.add_argument("--debiased", action="store_true", default=None,
                   help="the unbiased HSIC estimator (use it when features outnumber probe tiles)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="RBF bandwidth as a fraction of the median distance (default 0.5)")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--seed", type=int, metavar="S", help="probe positions and random encoders (default 0)")
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)")
    p.add_argument("--config", metavar="YAML", help="a CKAConfig file; flags override it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CKAConfig:
    cfg = load_config(CKAConfig, args.config) if args.config else CKAConfig()
    cfg = merge(cfg, sources=args.sources or None, segment=args.segment, out=args.out, tiles=args.tiles,
                layer=args.layer, debiased=args.debiased, threshold=args.threshold, batch_size=args.batch_size,
                seed=args.seed, device=args.device)
    if not cfg.sources:
        raise ConfigError("give at least one RUN_OR_CKPT (a run folder, checkpoint file, random or k700:FILE)")
    if not cfg.segment:
        raise ConfigError("give --segment PATH (the probe tiles come from it)")
    if not args.out and not args.config:
        raise ConfigError("give --out DIR (matrices, figure and the feature cache go there)")
    return cfg


def format_matrix(names: list[str], matrix: list[list[float | None]]) -> str:
    width = max(len(n) for n in names)
    cols = [max(len(n), 6) for n in names]
    lines = [" " * width + "  " + " ".join(f"{n:>{c}}" for n, c in zip(names, cols))]
    for name, row in zip(names, matrix):
        cells = " ".join(f"{v:{c}.3f}" if v is not None else f"{'n/a':>{c}}" for v, c in zip(row, cols))
        lines.append(f"{name:>{width}}  {cells}")
    return "\n".join(lines)


def _without_progress(events: Iterator[Event]) -> Iterator[Event]:
    try:
        for event in events:
            if not isinstance(event, TilesDone):
                yield event
    finally:
        events.close()


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    events = cka(cfg)
    # drive(quiet=True) trips over TilesDone (a disabled tqdm bar has no .desc); without a bar there is
    # nothing to show for them anyway
    finished = drive(_without_progress(events) if args.quiet else events, "cka", quiet=args.quiet)
    if finished is None:
        return 130
    s = finished.summary
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    cached = len(s["names"]) - len(s["computed"])
    print(f"CKA at {s['layer']} on {s['tiles']} probe tiles of {s['segment']}"
          f"{' (debiased)' if s['debiased'] else ''}: features computed for {len(s['computed'])}, "
          f"{cached} from the cache")
    for kernel in ("linear", "rbf"):
        print(f"\n{kernel} CKA")
        print(format_matrix(s["names"], s[kernel]))
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print("\nwrote " + ", ".join(s["files"].values()))
    return 0
