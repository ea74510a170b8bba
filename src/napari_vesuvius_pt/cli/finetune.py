"""``vesuvius-pt finetune``: ink detection on labeled fragments, from a random, Kinetics-700 or VICReg
encoder, frozen or trained.

Validation is a whole fragment (``--val-fragment``) or polygons on a training fragment
(``--val-region``: JSON ``{"fragment": NAME, "polygons": [[[y, x], ...], ...]}`` in full-resolution
pixels, on the fragment it names or else the first, or the CSV a napari Shapes layer saves) or the first fragment's own validation mask (``--val-mask``, villa's
``<id>_validation_mask``). Supervision and ignore masks found beside a fragment are honoured in the loss
and the scores unless ``--no-supervision-masks`` / ``--no-ignore-masks``. Flags override the ``--config`` YAML; the run folder's ``config.yaml``
reproduces the run.
"""

from __future__ import annotations

import argparse

from napari_vesuvius_pt.cli._training import ENCODER_HELP, add_training_arguments, run_training, training_config
from napari_vesuvius_pt.config import DEPTH_POOLINGS, ENCODER_NAMES, OUTPUT_STRIDES, FinetuneConfig, merge
from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune (or probe with a frozen encoder) for ink detection on fragments",
        description="Train an ink head (at 1/output-stride of the tile size) on an encoder from random, "
                    "k700:FILE, a pretraining run folder or a checkpoint. Reports F0.5 at the best threshold, "
                    "precision, recall and AUC on the validation tiles every epoch.")
    p.add_argument("--fragments", nargs="+", metavar="PATH", help="labeled training fragments")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fragment", metavar="PATH", help="a whole labeled fragment for validation")
    val.add_argument("--val-region", metavar="FILE",
                     help="validation polygons (JSON or napari Shapes CSV) on the training fragment the JSON names "
                          "(\"fragment\": NAME), else the first")
    val.add_argument("--val-mask", action="store_true", default=None,
                     help="validate on the first training fragment's own validation mask (<id>_validation_mask)")
    p.add_argument("--no-supervision-masks", dest="supervision_masks", action="store_false", default=None,
                   help="ignore the fragments' supervision masks (by default only their pixels count)")
    p.add_argument("--no-ignore-masks", dest="ignore_masks", action="store_false", default=None,
                   help="ignore the fragments' ignore masks (by default their pixels leave loss and scores)")
    p.add_argument("--encoder", metavar="SOURCE",
                   help="random | random:resnet50 | k700:FILE | pretraining RUN folder | checkpoint file")
    p.add_argument("--arch", choices=ENCODER_NAMES, metavar="NAME",
                   help=f"encoder depth for random or Kinetics sources: {ENCODER_HELP}")
    p.add_argument("--freeze-encoder", action="store_true", default=None, help="train only the ink head")
    p.add_argument("--encoder-lr-scale", type=float, metavar="F", help="encoder lr = lr x F when not frozen")
    p.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, help="prediction at 1/stride of the tile size")
    p.add_argument("--depth-pooling", choices=DEPTH_POOLINGS,
                   help="how the ink head pools features over depth (default max; docs/defaults-study.md)")
    p.add_argument("--only-ink-tiles", action="store_true", default=None, help="train only on tiles with some ink")
    p.add_argument("--skip-empty-eval", action="store_true", default=None, help="validate only on tiles with some ink")
    p.add_argument("--val-tiles", type=int, metavar="N", dest="val_subsample",
                   help="validation tiles scored each epoch, a fixed subsample (default 512); the last epoch "
                        "scores all of them; 0: all, every epoch")
    p.add_argument("--label-smoothing", type=float, metavar="F")
    p.add_argument("--region-margin", type=int, metavar="PX", help="extra pixels between validation and training tiles")
    add_training_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    cfg = training_config(FinetuneConfig, args, arch=args.arch, fragments=args.fragments, encoder_origin=args.encoder,
                          freeze_encoder=args.freeze_encoder, encoder_lr_scale=args.encoder_lr_scale,
                          output_stride=args.output_stride, depth_pooling=args.depth_pooling,
                          only_ink_tiles=args.only_ink_tiles,
                          skip_empty_eval=args.skip_empty_eval, val_subsample=args.val_subsample, label_smoothing=args.label_smoothing,
                          region_margin=args.region_margin, supervision_masks=args.supervision_masks,
                          ignore_masks=args.ignore_masks)
    if args.val_fragment is not None:
        cfg = merge(cfg, val_fragment=args.val_fragment)
        cfg.val_region, cfg.val_mask = None, False
    if args.val_region is not None:
        cfg = merge(cfg, val_region=args.val_region)
        cfg.val_fragment, cfg.val_mask = None, False
    if args.val_mask:
        cfg = merge(cfg, val_mask=True)
        cfg.val_fragment = cfg.val_region = None
    if not cfg.fragments:
        raise ConfigError("give the labeled training fragments: --fragments PATH [PATH ...]")
    if not cfg.val_fragment and not cfg.val_region and not cfg.val_mask:
        raise ConfigError("give validation data: --val-fragment PATH, --val-region FILE or --val-mask")
    return cfg


def run(args: argparse.Namespace) -> int:
    from napari_vesuvius_pt.engine.finetuning import finetune

    return run_training("finetune", finetune(config_from_args(args)), args)
