"""Encoder sources as users write them, and where a run folder keeps its checkpoints (no torch, no Qt).

A source is one of:

- ``random`` or ``random:resnet50``: a fresh encoder (the spec given, or the default; the name after
  the colon chooses the depth);
- ``k700:FILE`` (also ``k400:FILE``, ``kinetics:FILE``): a 3D-ResNets-PyTorch Kinetics checkpoint;
- a run folder (``last.pt``, ``checkpoints/epoch_NNN.pt``);
- a checkpoint or weights file.

:func:`parse_source` is the one parser of that syntax; ``models.checkpoint.encoder_from_source`` (one
encoder) and ``engine.cka_sources.expand_sources`` (every epoch of a run) both build on it. A path that
is neither a folder nor a file parses as ``missing``, so that each caller can say what it expected.

:func:`latest_checkpoint` is the one finder of a run's newest checkpoint (``engine.run_folder.RunFolder``
delegates to it): ``last.pt``, else the highest ``checkpoints/epoch_NNN.pt``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from napari_vesuvius_pt.errors import ConfigError, WeightsError

RANDOM = "random"
KINETICS_PREFIXES = ("k700:", "k400:", "kinetics:")
SOURCE_KINDS = ("random", "kinetics", "run", "file", "missing")

LAST = "last.pt"
CHECKPOINTS = "checkpoints"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


@dataclass(frozen=True)
class EncoderSource:
    """A parsed source string.

    ``kind``: one of :data:`SOURCE_KINDS`. ``text``: the string as given (stripped). ``path``: the
    weights file (``kinetics``, ``file``; a Kinetics file is not checked to exist), the folder (``run``),
    the path that does not exist (``missing``), None for ``random``. ``arch``: the depth named after
    ``random:`` ("" when none). ``label``: ``k700`` / ``k400`` / ``kinetics`` for a Kinetics source.
    """

    kind: str
    text: str
    path: Path | None = None
    arch: str = ""
    label: str = ""


def parse_source(source: str | os.PathLike) -> EncoderSource:
    """Classify ``source``; :class:`ConfigError` only when it is empty."""
    text = str(source).strip()
    if not text:
        raise ConfigError("no encoder source given; use random, k700:FILE, a run folder or a checkpoint file")
    if text == RANDOM or text.startswith(RANDOM + ":"):
        return EncoderSource("random", text, arch=text.partition(":")[2])
    for prefix in KINETICS_PREFIXES:
        if text.lower().startswith(prefix):
            return EncoderSource("kinetics", text, Path(text[len(prefix):]).expanduser(), label=prefix[:-1].lower())
    path = Path(text).expanduser()
    if path.is_dir():
        return EncoderSource("run", text, path)
    if path.is_file():
        return EncoderSource("file", text, path)
    return EncoderSource("missing", text, path)


# ------------------------------------------------------------------ run folder checkpoints


def epoch_checkpoints(run: str | os.PathLike) -> list[Path]:
    """A run folder's ``checkpoints/epoch_NNN.pt`` files in epoch order (none when there is no folder)."""
    folder = Path(run).expanduser() / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: str | os.PathLike) -> Path | None:
    """``last.pt`` (the newest state, possibly mid-epoch), else the newest epoch file, else None."""
    last = Path(run).expanduser() / LAST
    if last.is_file():
        return last
    epochs = epoch_checkpoints(run)
    return epochs[-1] if epochs else None


def checkpoint_in_run(run: str | os.PathLike) -> Path:
    """:func:`latest_checkpoint`, or :class:`WeightsError` when the folder holds none."""
    path = latest_checkpoint(run)
    if path is None:
        raise WeightsError(f"run folder {run} holds no checkpoint (no last.pt, no checkpoints/epoch_*.pt)")
    return path
