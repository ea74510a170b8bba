"""One writer per output: a lock file that a run, a CKA job, the demo or a prediction holds while it writes.

Two runs into one run folder used to interleave their checkpoints silently. Now every writer takes
:func:`hold` around its work: the lock file (``RUN/.vesuvius-pt.lock``, or ``.NAME.lock`` beside a
prediction store) is created exclusively and holds the holder's pid, host, command and start time. A
second writer is refused with a one-line :class:`~napari_vesuvius_pt.errors.RunError` naming the holder.
A lock whose holder is gone (a ``kill -9``, a crash, a power cut) is stale: on the same host a dead pid
(or a pid now running a process that started after the lock was written) is detected and the lock taken
over; a lock from another host is never guessed at, the message says how to remove it.

Under ``torchrun`` only rank 0 takes the lock (the other ranks write nothing into the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_vesuvius_pt.errors import RunError

LOCK_NAME = ".vesuvius-pt.lock"
_UNREADABLE_GRACE_S = 10.0  # an empty lock file younger than this is being written by its holder


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _process_start(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), where /proc tells; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` still runs the process that wrote the lock at ``since``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = _process_start(pid)
    if started is not None and since is not None and started > since + 2.0:
        return False  # the pid was reused by a process started after the lock was written
    return True


class RunLock:
    """The lock file at ``path`` for the output ``what`` (a run folder, a prediction store)."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        """The lock's record, ``{}`` when it exists but cannot be read, None when there is no lock."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            record = json.loads(text)
            return record if isinstance(record, dict) else {}
        except ValueError:
            return {}

    def _stale(self, record: dict[str, Any]) -> bool:
        if not record:  # empty or garbled: the writer died between creating and filling it, or is filling it now
            try:
                return time.time() - self.path.stat().st_mtime > _UNREADABLE_GRACE_S
            except FileNotFoundError:
                return True
        if record.get("host") != socket.gethostname():
            return False
        return not _alive(int(record.get("pid") or 0), record.get("started"))

    def acquire(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create {self.path.parent} for {self.what}: {exc.strerror or exc}") from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile: try again
                if self._stale(holder):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise RunError(self._busy_message(holder)) from None
            except OSError as exc:
                raise RunError(f"cannot write into {self.path.parent} ({self.what}): {exc.strerror or exc}; "
                               "choose a folder you can write to") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return
        raise RunError(f"cannot take the lock {self.path} for {self.what}: another process keeps taking it")

    def _busy_message(self, holder: dict[str, Any]) -> str:
        if not holder:
            return (f"{self.what} is being written by another process (its lock {self.path} is being created); "
                    "wait for it to finish, or choose another output")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started") or 0)))
        where = f"pid {holder.get('pid')} on {holder.get('host')}"
        tail = ("wait for it to finish or stop it, or choose another output"
                if holder.get("host") == socket.gethostname() else
                f"if that run is no longer running, delete {self.path}")
        return f"{self.what} is in use by another run ({where}, since {when}: {holder.get('command', '?')}); {tail}"

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError, PermissionError):
                self.path.unlink()


def folder_lock(folder: str | Path, what: str | None = None) -> RunLock:
    """The lock of a run or output folder (inside it)."""
    folder = Path(folder).expanduser()
    return RunLock(folder / LOCK_NAME, what or f"run folder {folder}")


def store_lock(store: str | Path, what: str | None = None) -> RunLock:
    """The lock of a store that its own library rewrites (a zarr group): a hidden file beside it."""
    store = Path(store).expanduser()
    return RunLock(store.parent / f".{store.name}.lock", what or f"prediction store {store}")


@contextlib.contextmanager
def hold(lock: RunLock) -> Iterator[RunLock]:
    """Hold ``lock`` for the block (rank 0 only under torchrun); released however the block ends."""
    if _rank() != 0:
        yield lock
        return
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
