"""``vesuvius-pt pretrain``: VICReg pretraining of a 3D ResNet on scroll segments (and unlabeled fragments).

Flags override the ``--config`` YAML; the run folder's ``config.yaml`` reproduces the run
(``vesuvius-pt pretrain --config RUN/config.yaml --out NEW``). Ctrl-C (or SIGTERM, as torchrun sends)
finishes the current step and writes a checkpoint there; ``--resume RUN`` continues it. Under ``torchrun
--nproc-per-node N`` the same command trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse

from napari_vesuvius_pt.cli._training import ENCODER_HELP, add_training_arguments, run_training, training_config
from napari_vesuvius_pt.config import ENCODER_NAMES, PretrainConfig
from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="VICReg pretraining of a 3D ResNet on scroll segments",
        description="Pretrain a 3D ResNet encoder with VICReg on tiles inside the masks of scroll segments "
                    "(and fragments, whose labels are ignored). Writes RUN/config.yaml, "
                    "RUN/checkpoints/epoch_NNN.pt, RUN/last.pt and RUN/metrics.jsonl.")
    p.add_argument("--segments", nargs="+", metavar="PATH", help="segments to pretrain on")
    p.add_argument("--encoder", choices=ENCODER_NAMES, metavar="NAME", help=ENCODER_HELP)
    p.add_argument("--mask-erosion", type=int, metavar="PX", help="erode the masks by this many pixels first")
    p.add_argument("--probe-fragment", metavar="PATH",
                   help="a labeled fragment for the online probe (F0.5/AUC of a frozen linear probe per epoch)")
    p.add_argument("--probe-region", metavar="FILE", help="validation polygons (JSON or Shapes CSV) on the probe fragment")
    p.add_argument("--probe-every", type=int, metavar="N", help="epochs between online probes (default 1)")
    add_training_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    cfg = training_config(PretrainConfig, args, arch=args.encoder, segments=args.segments, mask_erosion=args.mask_erosion,
                          probe_fragment=args.probe_fragment, probe_region=args.probe_region,
                          probe_every=args.probe_every)
    if not cfg.segments:
        raise ConfigError("give the segments to pretrain on: --segments PATH [PATH ...]")
    return cfg


def run(args: argparse.Namespace) -> int:
    from napari_vesuvius_pt.engine.pretraining import pretrain

    return run_training("pretrain", pretrain(config_from_args(args)), args)
