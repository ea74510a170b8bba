"""One run on disk: ``config.yaml``, ``checkpoints/epoch_NNN.pt``, ``last.pt``, ``metrics.jsonl``.

Every file is written atomically (a temporary file beside it, then a rename), so a crash or a stop
never leaves half a checkpoint. ``checkpoints/epoch_NNN.pt`` holds each completed epoch and is never
overwritten by a later stop; ``last.pt`` is the newest state: the last completed epoch, or the step a
stopped run reached inside the next one (its payload's ``step`` > 0), from which ``--resume`` continues.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from napari_vesuvius_pt._atomic import atomic_write_text
from napari_vesuvius_pt.config import save_config
from napari_vesuvius_pt.errors import RunError, WeightsError
from napari_vesuvius_pt.models.sources import CHECKPOINTS, LAST, epoch_checkpoints, latest_checkpoint

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESUMES = "resumes.jsonl"  # one line per resume: when, from which checkpoint, which safe settings changed


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.notes: list[str] = []  # what a resume should tell the user (a damaged checkpoint skipped)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def last_path(self) -> Path:
        return self.path / LAST

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def epoch_path(self, epoch: int) -> Path:
        return self.path / CHECKPOINTS / f"epoch_{int(epoch):03d}.pt"

    # ------------------------------------------------------------ writing

    def create(self, config: Any, fresh: bool = True) -> None:
        """Make the folder and write ``config.yaml``. A fresh run refuses a folder that already holds one."""
        if fresh and (self.last_path.exists() or self.epoch_checkpoints()):
            raise RunError(
                f"run folder {self.path} already holds checkpoints; choose another --out, "
                f"or continue it with --resume {self.path}"
            )
        try:
            (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the run folder {self.path}: {exc.strerror or exc}") from None
        save_config(config, self.config_path)
        if fresh and self.metrics_path.exists():
            self.metrics_path.unlink()

    def clean_stale_temporaries(self) -> list[Path]:
        """Remove the temporary files a killed run left (``.last.pt.XXXX.tmp``); only while holding the lock."""
        removed = []
        for folder in (self.path, self.path / CHECKPOINTS):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise RunError(f"cannot remove the stale temporary file {p}: {exc.strerror or exc}") from None
        return removed

    def save(self, payload: dict[str, Any], completed_epoch: bool, metrics: dict[str, Any] | None = None) -> Path:
        """Write ``payload`` as ``last.pt``, and as ``checkpoints/epoch_NNN.pt`` for a completed epoch.

        ``metrics`` (a completed epoch's line) is appended first: a crash before the checkpoints leaves a
        line for an epoch that a resume redoes, and :meth:`truncate_metrics` drops it then; a crash after
        them cannot leave the epoch without its line. Returns the epoch file for a completed epoch, else
        ``last.pt``.
        """
        from napari_vesuvius_pt.models.checkpoint import save_checkpoint

        if metrics is not None:
            self.truncate_metrics(int(payload["epoch"]) - 1)
            self.append_metrics(metrics)
        target = self.last_path
        if completed_epoch:
            target = save_checkpoint(self.epoch_path(int(payload["epoch"])), payload)
        save_checkpoint(self.last_path, payload)
        return target

    def record_resume(self, checkpoint: Path, payload: dict[str, Any], changes: dict[str, tuple[Any, Any]]) -> None:
        """One line in ``resumes.jsonl``: when, from where, and the (safe) settings that changed."""
        path = self.path / RESUMES
        lines = path.read_text().splitlines() if path.exists() else []
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint),
                  "epoch": int(payload.get("epoch") or 0), "step": int(payload.get("step") or 0),
                  "changed": {k: {"before": b, "now": a} for k, (b, a) in changes.items()},
                  "notes": list(self.notes)}
        lines.append(json.dumps(_jsonable(record)))
        atomic_write_text(path, "\n".join(lines) + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (rewritten atomically, so a crash never leaves half a line)."""
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        lines.append(json.dumps(_jsonable(record)))
        atomic_write_text(self.metrics_path, "\n".join(lines) + "\n")

    def truncate_metrics(self, after_epoch: int) -> None:
        """Keep only the metric lines of epochs up to ``after_epoch`` (resuming from an earlier checkpoint)."""
        records = self.metrics()
        kept = [r for r in records if int(r.get("epoch", 0)) <= after_epoch]
        if len(kept) != len(records):
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------ reading

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def epoch_checkpoints(self) -> list[Path]:
        """``checkpoints/epoch_NNN.pt`` files in epoch order."""
        return epoch_checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        """``last.pt`` (the newest state, possibly mid-epoch), else the newest epoch file, else None."""
        return latest_checkpoint(self.path)

    def load_latest(self, kind: str) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint and its payload, for ``--resume``; RunError when there is none to resume."""
        from napari_vesuvius_pt.models.checkpoint import load_checkpoint

        if not self.path.is_dir():
            raise RunError(f"cannot resume: run folder {self.path} does not exist")
        path = self.latest_checkpoint()
        if path is None:
            raise RunError(
                f"cannot resume: {self.path} holds no checkpoint yet (no last.pt, no checkpoints/epoch_*.pt); "
                "start a new run instead"
            )
        # the candidates newest first: last.pt, then the epoch files; an epoch file newer than last.pt
        # (a crash between writing the two) comes first
        epochs = self.epoch_checkpoints()
        candidates = ([self.last_path] if self.last_path.is_file() else []) + epochs[::-1]
        damaged: list[str] = []
        payload = None
        for candidate in candidates:
            try:
                payload = load_checkpoint(candidate)
            except WeightsError as exc:
                damaged.append(f"{candidate.name} ({str(exc)[:120]})")
                continue
            path = candidate
            break
        if payload is None:
            raise RunError(f"cannot resume {self.path}: no intact checkpoint: " + "; ".join(damaged)
                           + "; start a new run") from None
        if path == self.last_path and epochs:
            newest = epochs[-1]
            try:
                newest_epoch = int(newest.stem.split("_")[-1])
            except ValueError:
                newest_epoch = -1
            if newest_epoch > int(payload.get("epoch") or 0):
                try:
                    payload, path = load_checkpoint(newest), newest
                except WeightsError as exc:
                    damaged.append(f"{newest.name} ({str(exc)[:120]})")
        if damaged:
            self.notes.append(f"resumed from {path.relative_to(self.path)}, the newest intact checkpoint; "
                              f"skipped damaged {', '.join(damaged)}")
        if payload.get("kind") != kind:
            raise RunError(
                f"cannot resume: {path} is a {payload.get('kind')!r} checkpoint, not a {kind!r} one"
            )
        return path, payload
