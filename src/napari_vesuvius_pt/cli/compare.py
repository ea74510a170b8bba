"""``vesuvius-pt compare``: encoders' ink probes trained with several seeds on one split, predicted and
scored; mean ± sd per encoder, paired differences with 95% intervals, the baselines as rows.

Encoders are ``SOURCE`` or ``NAME=SOURCE`` (random, random:resnet50, k700:FILE, a pretraining run
folder, a checkpoint). The split is a named protocol over the Kaggle fragments 1-4 in order
(``--protocol fragment2-lower30 --fragments F1 F2 F3 F4``), or ``--val-region`` polygons on a training
fragment (the one the file names, else the first), or a whole ``--val-fragment``. ``--config`` takes a sectioned file (``resources/configs/
laptop.yaml``: the probe from its ``finetune:`` section, the edge from ``predict:``, the comparison
from ``compare:`` when it has one), a fine-tuning run's ``config.yaml`` (the probe) or a comparison's
``compare.yaml``; flags override it. Writes OUT/compare.json and OUT/compare.md.
"""

from __future__ import annotations

import argparse
import json

from napari_vesuvius_pt.config import (
    BASELINE_METHODS,
    ENCODER_NAMES,
    NORMALIZATIONS,
    OPTIMIZERS,
    PROTOCOLS,
    SECTIONS,
    CompareConfig,
    FinetuneConfig,
    PredictConfig,
    load_config,
    merge,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare encoders: probes with several seeds, mean ± sd, paired differences",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", metavar="[NAME=]SOURCE",
                   help="frozen-encoder probes to compare (default: random); e.g. random vicreg=RUN k700=k700:FILE")
    p.add_argument("--unfrozen", nargs="+", metavar="[NAME=]SOURCE",
                   help="also fine-tune these with the encoder trained (named NAME-finetuned)")
    p.add_argument("--fragments", nargs="+", metavar="PATH", help="labeled fragments (with --protocol: 1 2 3 4 in order)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--protocol", choices=PROTOCOLS, help="the seed's splits of the Kaggle fragments 1-4")
    val.add_argument("--val-region", metavar="FILE", help="validation polygons on the fragment the file names (else the first)")
    val.add_argument("--val-fragment", metavar="PATH", help="a whole labeled fragment for validation")
    p.add_argument("--seeds", type=int, metavar="K", help="probe seeds per encoder (default 3)")
    p.add_argument("--first-seed", type=int, metavar="N", help="seeds are N, N+1, ... (default 0)")
    p.add_argument("--unfrozen-seeds", type=int, metavar="K", help="seeds of the --unfrozen runs (default: --seeds)")
    p.add_argument("--skip-empty", action="store_true", default=None, help="score only tiles with some ink (as the seed did)")
    p.add_argument("--baseline", choices=BASELINE_METHODS, help="the linear z-profile baseline's model (default lda)")
    p.add_argument("--bootstrap", type=int, metavar="N", help="bootstrap resamples of validation tiles (0: none)")
    p.add_argument("--edge", type=int, metavar="PX", help="prediction: pixels dropped at each side of a tile")
    p.add_argument("--config", metavar="YAML", help="sectioned config, a fine-tuning config.yaml or a compare.yaml")
    g = p.add_argument_group("probe settings (each run of the comparison)")
    g.add_argument("--arch", choices=ENCODER_NAMES, metavar="NAME", help="encoder depth for random or Kinetics sources")
    g.add_argument("--width", type=float, metavar="F", help="encoder widen factor")
    g.add_argument("--tile", metavar="DxSxS", help="tile depth x size x size, e.g. 16x64x64")
    g.add_argument("--stride", type=int, metavar="N")
    g.add_argument("--epochs", type=int, metavar="N")
    g.add_argument("--steps-per-epoch", type=int, metavar="N")
    g.add_argument("--batch-size", type=int, metavar="N")
    g.add_argument("--lr", type=float, metavar="F")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--normalization", choices=NORMALIZATIONS)
    p.add_argument("--out", metavar="DIR", help="the comparison's folder (runs, predictions, compare.json/.md)")
    p.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.add_argument("--json", action="store_true", help="print compare.json's content")
    p.set_defaults(func=run)


def _from_file(path: str) -> CompareConfig:
    from napari_vesuvius_pt.config import read_config_mapping

    data = read_config_mapping(path)
    if data and set(data) <= set(SECTIONS):
        cfg = load_config(CompareConfig, path) if "compare" in data else CompareConfig()
        if "finetune" in data:
            cfg = merge(cfg, probe=merge(load_config(FinetuneConfig, path), freeze_encoder=True))
        if "predict" in data and "edge" in (data["predict"] or {}):
            cfg = merge(cfg, edge=load_config(PredictConfig, path).edge)
        return cfg
    if "probe" in data or "encoders" in data:
        return load_config(CompareConfig, path)
    return CompareConfig(probe=merge(load_config(FinetuneConfig, path), freeze_encoder=True))


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    from napari_vesuvius_pt.cli._training import parse_tile

    cfg = _from_file(args.config) if args.config else CompareConfig()
    probe = cfg.probe
    tile = parse_tile(args.tile, probe.tile) or probe.tile
    if args.stride is not None:
        tile = merge(tile, stride=args.stride)
    probe = merge(probe, tile=tile, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                  batch_size=args.batch_size, optim=merge(probe.optim, lr=args.lr, name=args.optimizer),
                  data=merge(probe.data, normalization=args.normalization),
                  encoder=merge(probe.encoder, name=args.arch, widen_factor=args.width))
    cfg = merge(cfg, probe=probe, encoders=args.encoders, unfrozen=args.unfrozen, fragments=args.fragments,
                seeds=args.seeds, first_seed=args.first_seed, unfrozen_seeds=args.unfrozen_seeds,
                skip_empty=args.skip_empty, baseline=args.baseline, bootstrap=args.bootstrap, edge=args.edge,
                out=args.out, device=args.device)
    if args.protocol or args.val_region or args.val_fragment:  # the flag's split replaces the file's
        cfg = merge(cfg, protocol=args.protocol, val_region=args.val_region, val_fragment=args.val_fragment)
        cfg.protocol, cfg.val_region, cfg.val_fragment = args.protocol, args.val_region, args.val_fragment
    return cfg


def run(args: argparse.Namespace) -> int:
    from napari_vesuvius_pt.cli._progress import drive
    from napari_vesuvius_pt.engine.compare import comparison_markdown, compare

    finished = drive(compare(config_from_args(args)), "compare", quiet=args.quiet)
    if finished is None:
        return 130
    summary = finished.summary
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print()
        print(comparison_markdown(summary))
        print(f"written: {summary['report']} and compare.json ({summary['seconds']:.0f} s)")
    return 0
