"""``vesuvius-pt evaluate``: F0.5 (best threshold of 0.10-0.95, and at 0.5), precision, recall and AUC of
each encoder's prediction against a fragment's ink labels."""

from __future__ import annotations

import argparse
import json

from napari_vesuvius_pt.engine.evaluation import evaluate, metrics_as_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score predictions against ink labels (F0.5, precision, recall, AUC)",
        description="Score each encoder's array in PRED.zarr against the segment's ink labels, inside its "
                    "mask (and region). Reduced-size predictions are scored on their own grid, with the "
                    "labels average-pooled to it and thresholded at 0.5.")
    p.add_argument("--prediction", required=True, metavar="PRED.zarr", help="what vesuvius-pt predict wrote")
    p.add_argument("--segment", required=True, metavar="PATH", help="the fragment predicted on (with ink labels)")
    p.add_argument("--region", metavar="FILE",
                   help="JSON or napari Shapes CSV polygons: score only there; 'validation_mask': inside the "
                        "segment's own validation mask")
    p.add_argument("--no-masks", dest="masks", action="store_false",
                   help="score without the segment's supervision and ignore masks (by default only supervised, "
                        "not ignored pixels count)")
    p.add_argument("--skip-empty", action="store_true", help="score only tiles with some ink (as the seed did)")
    p.add_argument("--name", action="append", metavar="NAME", help="score only these arrays (repeatable)")
    p.add_argument("--partial", action="store_true", help="score a stopped prediction on the part written")
    p.add_argument("--train-fragments", nargs="+", metavar="PATH",
                   help="labeled fragments the linear z-profile baseline trains on (with --region it also "
                        "trains on the segment outside the region)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="leave out the baseline rows (all ink; linear z-profile with --region or --train-fragments)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: {encoder: {f05, threshold, precision, recall, auc, ...}}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = evaluate(args.prediction, args.segment, region=args.region, skip_empty=args.skip_empty,
                       names=args.name, partial=args.partial, masks=args.masks)
    table = metrics_as_json(results)
    baselines = {}
    if args.baselines:
        from napari_vesuvius_pt.engine.evaluation import baseline_rows

        baselines = metrics_as_json(baseline_rows(args.prediction, args.segment, region=args.region,
                                                  skip_empty=args.skip_empty, train_fragments=args.train_fragments))
    if args.json:
        print(json.dumps(table if not baselines else {**table, "baselines": baselines}))
        return 0
    table.update({f"{k} (baseline)": v for k, v in baselines.items()})
    width = max(8, *(len(n) for n in table))
    print(f"{'encoder':<{width}}  {'F0.5':>6}  {'thresh':>6}  {'prec':>6}  {'recall':>6}  {'AUC':>6}  {'F0.5@.5':>7}")
    for name, m in table.items():
        print(f"{name:<{width}}  {m['f05']:6.3f}  {m['threshold']:6.2f}  {m['precision']:6.3f}  "
              f"{m['recall']:6.3f}  {m['auc']:6.3f}  {m['f05_at_05']:7.3f}")
    return 0
