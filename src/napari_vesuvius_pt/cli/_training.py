"""What ``vesuvius-pt pretrain`` and ``vesuvius-pt finetune`` share: the training flags, the config they
build (``--config``, else the resumed run's ``config.yaml``, else the defaults; the flags over it), the
stop at a step boundary on Ctrl-C or SIGTERM, and driving the run to its summary.

Under ``torchrun`` only rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from napari_vesuvius_pt.config import (
    DEFAULT_RUNS_DIR,
    DEVICE_NAMES,
    ENCODER_NAMES,
    NORMALIZATIONS,
    OPTIMIZERS,
    TileConfig,
    TrainingConfig,
    load_config,
    merge,
)
from napari_vesuvius_pt.errors import ConfigError

C = TypeVar("C", bound=TrainingConfig)

ENCODER_HELP = " | ".join(ENCODER_NAMES)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Flags pretrain and finetune share (each also in the YAML config)."""
    p.add_argument("--out", metavar="RUN", help=f"run folder to create (default: one in {DEFAULT_RUNS_DIR})")
    p.add_argument("--config", metavar="YAML", help="a config file (e.g. a run's config.yaml); flags override it")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--width", type=float, metavar="F", help="encoder widen factor (e.g. 0.25 for a tiny encoder)")
    p.add_argument("--tile", metavar="DxSxS", help="tile depth x size x size, e.g. 16x64x64")
    p.add_argument("--stride", type=int, metavar="N", help="tile grid stride in pixels")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--steps-per-epoch", type=int, metavar="N", help="optimizer steps per epoch (default: one pass)")
    p.add_argument("--lr", type=float, metavar="F", help="learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--accumulate", type=int, metavar="N", help="gradient accumulation steps")
    p.add_argument("--normalization", choices=NORMALIZATIONS)
    p.add_argument("--num-workers", type=int, metavar="N", help="DataLoader worker processes (0: in-process)")
    p.add_argument("--device", metavar="DEV", help=" | ".join((*DEVICE_NAMES, "cuda:N")) + " (auto: CUDA, else MPS, else CPU)")
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--cpu-bf16", action="store_true", default=None,
                   help="bfloat16 autocast on the CPU, where it has it natively (faster; see bench/bench_cpu.py)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def training_config(cls: type[C], args: argparse.Namespace, arch: str | None = None, **fields: Any) -> C:
    """``cls`` from ``--config``, else the resumed run's config.yaml, else the defaults; the shared flags,
    then the command's own ``fields`` (those not None) and ``arch`` (the encoder's name) over it."""
    cfg = _base_config(cls, args)
    tile = parse_tile(args.tile, cfg.tile) or cfg.tile
    if args.stride is not None:
        tile = merge(tile, stride=args.stride)
    optim = merge(cfg.optim, lr=args.lr, name=args.optimizer, accumulate=args.accumulate)
    data = merge(cfg.data, normalization=args.normalization)
    cfg = merge(cfg, out=args.out, epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                num_workers=args.num_workers, device=args.device, seed=args.seed, tile=tile, optim=optim, data=data,
                cpu_bf16=getattr(args, "cpu_bf16", None))
    cfg = merge(cfg, encoder=merge(cfg.encoder, widen_factor=args.width, name=arch))
    return merge(cfg, **fields, resume=args.resume)


def _base_config(cls: type[C], args: argparse.Namespace) -> C:
    if args.config:
        return load_config(cls, args.config)
    if args.resume:
        saved = Path(args.resume).expanduser() / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {args.resume} has no config.yaml (is it a run folder?)")
        return load_config(cls, saved)
    return cls()


def parse_tile(text: str | None, base: TileConfig) -> TileConfig | None:
    """``DEPTHxSIZExSIZE`` (or ``DEPTHxSIZE``) into a TileConfig on top of ``base``."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise ConfigError(f"--tile {text!r}: expected DEPTHxSIZExSIZE, e.g. 16x64x64")
    depth, size, other = int(m.group(1)), int(m.group(2)), int(m.group(3) or m.group(2))
    if size != other:
        raise ConfigError(f"--tile {text!r}: tiles are square in the plane; use DEPTHx{size}x{size}")
    return TileConfig(depth=depth, size=size, stride=base.stride, min_mask_fraction=base.min_mask_fraction)


def run_training(label: str, events: Iterator, args: argparse.Namespace) -> int:
    """Drive a training run's ``events`` with a progress bar (rank 0, without ``--quiet``) and print its
    summary; 0 when it finished, 130 when it was stopped (its checkpoint is kept)."""
    from napari_vesuvius_pt.cli._progress import drive

    quiet = args.quiet or rank() != 0
    with StopAtStepBoundary(label) as stop:
        finished = drive(stop.wrap(events), label, quiet=quiet)
    if finished is not None and rank() == 0:
        print_summary(label, finished, args.json)
    return 0 if finished is not None else 130


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


class StopAtStepBoundary:
    """Ctrl-C (SIGINT) or SIGTERM (torchrun's stop, a cluster's pre-emption) finishes the step under way,
    then closes the run, which writes its checkpoint at that step boundary; a second signal stops at once.

    Without this, Ctrl-C would interrupt the training step itself, and the steps of the unfinished epoch
    would be lost (completed epochs are kept either way).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, label: str) -> None:
        self.label = label
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"{self.label}: stopping after the current step (again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopAtStepBoundary":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def wrap(self, events: Iterator) -> Iterator:
        """``events``, raising KeyboardInterrupt between two events once a stop was asked for; the run
        generator is then closed while it waits at a step boundary."""
        try:
            for event in events:
                yield event
                if self.requested:
                    raise KeyboardInterrupt
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()


def print_summary(label: str, finished, as_json: bool) -> None:
    summary = finished.summary
    if as_json:
        print(json.dumps({"run_dir": str(finished.run_dir), **summary}, default=str))
        return
    print(f"{label}: {summary.get('epochs')} epoch(s) in {summary.get('seconds', 0.0):.1f} s; run folder {finished.run_dir}")
    finals = {k[len("final_"):]: v for k, v in summary.items() if k.startswith("final_") and isinstance(v, float)}
    if finals:
        print("  last epoch: " + "  ".join(f"{k}={v:.4g}" for k, v in finals.items()))
    if summary.get("checkpoint"):
        print(f"  checkpoint: {summary['checkpoint']}")
    for note in summary.get("notes") or []:
        print(f"{label}: note: {note}", file=sys.stderr)
