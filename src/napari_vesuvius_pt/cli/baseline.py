"""``vesuvius-pt baseline``: what an ink model must beat on a split. A linear model (a linear
discriminant, or a logistic regression) on each pixel's smoothed z-profile, fitted on the training
fragments' pixels and scored on the validation pixels like every model (F0.5 at the best threshold,
AUC), beside the all-ink F0.5 = 1.25 p / (0.25 p + 1). A CNN that does not beat the linear row finds
nothing a linear model would not.
"""

from __future__ import annotations

import argparse
import json

from napari_vesuvius_pt.config import BASELINE_METHODS, NORMALIZATIONS, PROTOCOLS, DataConfig
from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "baseline", help="the per-pixel linear z-profile and all-ink baselines on a split",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fragments", nargs="+", required=True, metavar="PATH",
                   help="labeled training fragments (with --protocol: the Kaggle fragments 1 2 3 4 in order)")
    val = p.add_mutually_exclusive_group(required=True)
    val.add_argument("--val-region", metavar="FILE", help="validation polygons on the fragment the file names (else the first)")
    val.add_argument("--val-fragment", metavar="PATH", help="a whole labeled fragment for validation")
    val.add_argument("--protocol", choices=PROTOCOLS, help="the seed's splits of the Kaggle fragments 1-4")
    p.add_argument("--method", choices=BASELINE_METHODS, default="lda",
                   help="lda: linear discriminant, closed form, every training pixel; logistic: on a sample")
    p.add_argument("--smooth", type=int, default=5, metavar="PX", help="in-plane box filter side (default 5)")
    p.add_argument("--depth", type=int, metavar="N", help="layers of the profile, centred (default: all the segments share)")
    p.add_argument("--z-range", type=int, nargs=2, metavar=("START", "STOP"), help="layers to read from each segment")
    p.add_argument("--downsample", type=int, default=1, metavar="F", help="in-plane downsampling of every segment")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="zscore",
                   help="per-segment intensity normalization (default zscore: fragments differ)")
    p.add_argument("--skip-empty", action="store_true", help="score only tiles with some ink (as the seed did)")
    p.add_argument("--tile", type=int, default=64, metavar="PX", help="tile side for --skip-empty (default 64)")
    p.add_argument("--margin", type=int, default=0, metavar="PX", help="extra pixels between validation and training pixels")
    p.add_argument("--max-samples", type=int, default=200_000, metavar="N", help="logistic: training pixels sampled")
    p.add_argument("--out", metavar="DIR", help="write the region file of a protocol here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from napari_vesuvius_pt.engine.baselines import linear_baseline
    from napari_vesuvius_pt.engine.protocols import Split, resolve_protocol

    if args.smooth < 1:
        raise ConfigError(f"--smooth must be at least 1 pixel, got {args.smooth}")
    data = DataConfig(z_range=list(args.z_range) if args.z_range else None, downsample=args.downsample,
                      normalization=args.normalization)
    with tempfile.TemporaryDirectory(prefix="vesuvius-baseline-") as tmp:
        if args.protocol:
            split = resolve_protocol(args.protocol, args.fragments, args.out or tmp)
        else:
            split = Split("custom", list(args.fragments), val_fragment=args.val_fragment, val_region=args.val_region)
        result = linear_baseline(split.train, val_fragment=split.val_fragment, val_region=split.val_region,
                                 data=data, method=args.method, smooth=args.smooth, depth=args.depth,
                                 skip_empty=args.skip_empty, tile=args.tile, margin=args.margin,
                                 max_samples=args.max_samples)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"baseline on {result.segment} ({result.train_pixels} training pixels, layers {result.z[0]}..{result.z[1]}, "
          f"{args.smooth}x{args.smooth} smoothing, {args.method})")
    print(f"{'baseline':<18}  {'F0.5':>6}  {'thresh':>6}  {'prec':>6}  {'recall':>6}  {'AUC':>6}  {'prev.':>6}")
    for name, m in summary["rows"].items():
        print(f"{name:<18}  {m['f05']:6.3f}  {m['threshold']:6.2f}  {m['precision']:6.3f}  {m['recall']:6.3f}  "
              f"{m['auc']:6.3f}  {m['prevalence']:6.3f}")
    return 0
