"""``vesuvius-pt features``: what encoders learned, over a region of a segment, as a zarr.

Per encoder: its per-position features (a stage's map averaged over depth), their colours in one PCA
basis shared by all the encoders, so colours compare between them; napari opens the ``rgb`` arrays
as RGB images. The embedding explorer dock computes the same with the same engine.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

from napari_vesuvius_pt.cli._progress import drive
from napari_vesuvius_pt.config import FEATURE_LAYERS, FeaturesConfig, TileConfig, load_config, merge
from napari_vesuvius_pt.engine.events import Event, TilesDone
from napari_vesuvius_pt.engine.features import explore_features
from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "features", help="encoders' per-position features over a region, with shared PCA colours (zarr)",
        description="For each encoder (random[:resnetNN], k700:FILE, a run folder, RUN@EPOCH or a checkpoint) read "
                    "the region tile by tile, keep a stage's feature map averaged over depth, fit one PCA on "
                    "all encoders' positions and write OUT.zarr with <encoder>/features (C, h, w) and "
                    "<encoder>/rgb (h, w, 3).")
    p.add_argument("encoders", nargs="*", metavar="ENCODER", help="random[:resnetNN], k700:FILE, RUN, RUN@EPOCH, CKPT")
    p.add_argument("--segment", metavar="PATH", help="the segment or fragment")
    p.add_argument("--region", metavar="Y0,X0,Y1,X1", help="full-resolution pixels (default: the whole plane)")
    p.add_argument("--layer", choices=FEATURE_LAYERS, help="the stage whose map is used (default layer2)")
    p.add_argument("--tile-size", type=int, metavar="N", help="in-plane tile size (default 64)")
    p.add_argument("--tile-depth", type=int, metavar="N", help="layers per tile (default 16), centred in depth")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--out", metavar="OUT.zarr", help="where the features go")
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--config", metavar="YAML", help="a FeaturesConfig file; flags override it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_region(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(float(v)) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--region takes Y0,X0,Y1,X1 (four numbers), got {text!r}")
    return values


def config_from_args(args: argparse.Namespace) -> FeaturesConfig:
    cfg = load_config(FeaturesConfig, args.config) if args.config else FeaturesConfig()
    tile = cfg.tile
    if args.tile_size or args.tile_depth:
        size = args.tile_size or tile.size
        tile = TileConfig(depth=args.tile_depth or tile.depth, size=size, stride=size)
    cfg = merge(cfg, encoders=args.encoders or None, segment=args.segment, region=parse_region(args.region),
                layer=args.layer, batch_size=args.batch_size, out=args.out, device=args.device)
    cfg.tile = tile
    if not cfg.segment:
        raise ConfigError("give --segment PATH")
    if not cfg.out:
        raise ConfigError("give --out OUT.zarr (the features and colours go there)")
    return cfg


def _events_only(events: Iterator, quiet: bool) -> Iterator[Event]:
    try:
        for event in events:
            if isinstance(event, Event) and not (quiet and isinstance(event, TilesDone)):
                yield event
    finally:
        events.close()


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    finished = drive(_events_only(explore_features(cfg), args.quiet), "features", quiet=args.quiet)
    if finished is None:
        return 130
    s = finished.summary
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    c, h, w = s["shape"]
    print(f"features of {', '.join(s['encoders'])}: {c} channels at {h} x {w} positions; shared PCA explains "
          + ", ".join(f"{v:.1%}" for v in s["explained"]) + f" (components 1-3); wrote {s['out']}")
    return 0
