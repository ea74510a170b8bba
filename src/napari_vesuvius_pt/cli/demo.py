"""``vesuvius-pt demo``: the seed experiment on synthetic data; ``--gui`` opens napari with the results."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_vesuvius_pt.config import DEMO_SCALES, DemoConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the seed experiment end to end on synthetic data, with a report",
                       description=__doc__)
    p.add_argument("--out", default="vesuvius-demo", help="report folder (default: %(default)s)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="scale",
                      help="CI size: a few minutes on 2 cores")
    size.add_argument("--scale", choices=DEMO_SCALES, default="laptop",
                      help="laptop (default, under 10 minutes on 2 CPU cores) or seed (ResNet-50, 128x128 tiles, for a GPU)")
    p.add_argument("--k700-weights", metavar="FILE",
                   help="a local Kinetics-700 checkpoint of 3D-ResNets-PyTorch (e.g. r3d18_K_200ep.pth) to compare too")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gui", action="store_true", help="open napari with the plugin's widgets and the demo's results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_vesuvius_pt.cli._progress import drive
    from napari_vesuvius_pt.engine.demo import demo
    from napari_vesuvius_pt.engine.report import metrics_table

    cfg = DemoConfig(out=args.out, scale=args.scale or "laptop", k700_weights=args.k700_weights,
                     device=args.device, seed=args.seed)
    finished = drive(demo(cfg), "demo")
    if finished is None:
        return 130
    print()
    print(metrics_table(finished.summary["metrics"]))
    print(f"\nreport: {finished.summary['report']}  ({finished.summary['seconds']:.0f} s)")
    if args.gui:
        from napari_vesuvius_pt.ui.demo_viewer import show_demo

        show_demo(Path(args.out), finished.summary)
    return 0
