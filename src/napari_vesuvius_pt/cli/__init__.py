"""``vesuvius-pt``: the headless front end. Each sub-command lives in its own module with
``register(subparsers)``; this module only dispatches and turns user errors into one line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from napari_vesuvius_pt import __version__
from napari_vesuvius_pt.errors import VesuviusError

# sub-command modules, in the order `--help` lists them
COMMANDS = ("demo", "info", "synth", "convert", "pretrain", "finetune", "predict", "evaluate", "cka")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands, or only ``only``: a command's module may import torch and the engine, which
    ``vesuvius-pt info`` should not pay for."""
    parser = argparse.ArgumentParser(
        prog="vesuvius-pt",
        description="Pretrain on scroll segments with VICReg, check with CKA, find ink on fragments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        importlib.import_module(f"napari_vesuvius_pt.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VesuviusError as exc:
        print(f"vesuvius-pt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vesuvius-pt {args.command}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
