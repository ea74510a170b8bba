"""``vesuvius-pt``: the headless front end. Each sub-command lives in its own module with
``register(subparsers)``; this module only dispatches and turns user errors into one line."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from napari_vesuvius_pt import __version__
from napari_vesuvius_pt.errors import VesuviusError

# sub-command modules, in the order `--help` lists them
COMMANDS = ("demo", "info", "synth", "convert", "pretrain", "finetune", "predict", "evaluate", "baseline", "compare",
            "cka", "features", "prefetch")
# commands that take a segment path or URL: they get the remote-segment options (cli/_remote.py)
SEGMENT_COMMANDS = ("info", "convert", "pretrain", "finetune", "predict", "evaluate", "baseline", "cka", "features",
                    "prefetch")


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
        if name in SEGMENT_COMMANDS:
            from napari_vesuvius_pt.cli._remote import add_remote_options

            add_remote_options(sub.choices[name])
    return parser


USER_OS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def os_error_message(exc: OSError) -> str:
    """``[Errno 13] Permission denied: 'x'`` as what a user reads and does."""
    target = exc.filename or ""
    what = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some space or choose another output folder",
            errno.EDQUOT: "free some space or choose another output folder",
            errno.EROFS: "the file system is read-only; choose another output folder"}.get(
        exc.errno, "check the folder's permissions or choose another output folder")
    return f"{what.lower()}: {target}; {hint}" if target else f"{what.lower()}; {hint}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command in SEGMENT_COMMANDS:
            from napari_vesuvius_pt.cli._remote import apply_remote_options

            apply_remote_options(args)
        return int(args.func(args) or 0)
    except VesuviusError as exc:
        print(f"vesuvius-pt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a folder the user may not write to, a full or read-only disk: one line, as for our own errors
        if exc.errno not in USER_OS_ERRORS:
            raise
        print(f"vesuvius-pt {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vesuvius-pt {args.command}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
