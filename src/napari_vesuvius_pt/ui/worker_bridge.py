"""Run an engine generator in a napari worker thread and hand its events to the GUI thread.

napari's ``GeneratorWorker.quit()`` only breaks the worker's loop: the engine generator stays
suspended at its last ``yield`` and is closed later by the garbage collector, in whatever thread drops
it, or never. The engine writes its checkpoint when it is closed, so that is not good enough. Here the
engine generator is wrapped in a generator that checks a stop flag each time the engine yields and
calls ``close()`` on it in the worker thread; ``quit()`` (which napari calls when the viewer closes or
the activity dock cancels a task) sets that flag instead of abandoning the generator.

Pause is napari's own (``pause()``/``resume()``, the ``paused``/``resumed`` signals): the worker's loop
pauses between two events. A stop must still reach the wrapper's check, so a worker that pauses while a
stop is asked for resumes at once (see ``_EngineWorker``).

Errors never escape as tracebacks: a ``VesuviusError`` shows its message as a notification, anything
else shows its type and message (and is logged with the traceback), and the widget gets a
``JobOutcome`` either way, so it can return to a ready state.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_vesuvius_pt.engine.events import EpochDone, Event, Failed, Finished, Started
from napari_vesuvius_pt.errors import RunError, VesuviusError
from napari_vesuvius_pt.ui.notify import error_text, notify_error

log = logging.getLogger(__name__)

IDLE, RUNNING, PAUSED, STOPPING = "idle", "running", "paused", "stopping"


@dataclass(frozen=True)
class _Stopped:
    """Yielded by the wrapper after the engine generator was closed on request."""


@dataclass(frozen=True)
class _Raised:
    """Yielded by the wrapper when the engine raised; carries the exception to the GUI thread."""

    error: BaseException


@dataclass
class JobOutcome:
    """How a job ended, for the widget's last word on it."""

    status: str  # finished | stopped | failed | error
    message: str = ""
    run_dir: Path | None = None
    checkpoint: Path | None = None  # the last checkpoint the run reported
    finished: Finished | None = None
    error: BaseException | None = None
    device: str | None = None  # as the Started event described it
    seconds: float = 0.0


def release_device(device: str, collect: bool = False) -> None:
    """Give the device's cached memory back. ``collect`` first frees reference cycles (the closed run's
    model and optimizer can sit in one); only from the GUI thread, since collecting there may delete
    Qt objects, which must die in their own thread. A full collection takes 0.1-0.4 s of the GUI
    thread with napari loaded, so it is done only where cached accelerator memory is at stake: on the
    CPU, Python's own collector frees the cycle in time and nothing is held back."""
    from napari_vesuvius_pt.engine.device import release_device_memory, resolve_device

    try:
        torch_device = resolve_device(device)
    except VesuviusError:
        return
    if collect and torch_device.type != "cpu":
        gc.collect()
    release_device_memory(torch_device)


def drive_events(
    make_events: Callable[[], Iterator[Any]],
    stop: threading.Event,
    done: threading.Event,
    device: str = "auto",
) -> Iterator[Any]:
    """The generator the worker thread runs: the engine's events, then how it ended.

    After each event the worker hands on, ``stop`` is checked; when set, the engine generator is closed
    here, in the worker thread, so its ``GeneratorExit`` handler writes the checkpoint before the job ends.
    """
    events: Iterator[Any] | None = None
    try:
        if stop.is_set():
            yield _Stopped()
            return
        events = make_events()
        for event in events:
            yield event
            if stop.is_set():
                close = getattr(events, "close", None)
                if close is not None:
                    close()
                yield _Stopped()
                return
    except GeneratorExit:
        # the worker itself is being torn down without a stop request: still close the engine here
        close = getattr(events, "close", None)
        if close is not None:
            close()
        raise
    except VesuviusError as exc:  # the user's to fix: its message says how
        yield _Raised(exc)
    except Exception as exc:  # a bug: shown with its type, logged with the traceback
        log.error("job failed", exc_info=exc)
        yield _Raised(exc)
    finally:
        events = None
        try:
            release_device(device)
        finally:
            done.set()


class _EngineWorker(GeneratorWorker):
    """A napari GeneratorWorker whose ``quit()`` asks the engine to stop at its next yield.

    ``resume()`` only acts on a worker that has paused. A pause asked for but not taken yet (Pause
    pressed while the engine is inside a step, or before the worker's loop began) is taken after
    ``quit()``, and a paused worker never reaches the stop check. So ``paused`` is also handled in the
    worker thread, as it is emitted (``is_paused`` is true by then): with a stop asked for, it resumes.
    """

    _job_stop: threading.Event | None = None

    def watch_for_stop(self, stop: threading.Event) -> None:
        """Let ``quit()`` mean "stop at the next yield" (``stop`` is the flag ``drive_events`` checks)."""
        self._job_stop = stop
        self.paused.connect(self._resume_if_stopping, Qt.ConnectionType.DirectConnection)

    def _resume_if_stopping(self) -> None:
        if self._job_stop is not None and self._job_stop.is_set():
            self.resume()

    def quit(self) -> None:
        if self._job_stop is None:  # not started through JobRunner
            super().quit()
            return
        self._job_stop.set()
        self.resume()  # a paused worker must run on to reach the check (one pausing later: see above)

    def _relay_error(self, exc: Exception) -> None:
        # drive_events turns engine errors into _Raised; anything reaching here is a bridge bug, which
        # JobRunner reports through its own notification, so napari's second one is not wanted
        log.error("worker error", exc_info=exc)


_LIVE: set[JobRunner] = set()  # runners whose worker is still running, even if their widget is gone


class JobRunner:
    """One job at a time for one widget: start, pause/resume, stop, and a ``JobOutcome`` at the end.

    ``on_event`` gets every engine event in the GUI thread; ``on_state`` gets idle/running/paused/stopping;
    ``on_done`` gets the outcome after the worker thread has ended and device memory was released.
    """

    def __init__(
        self,
        label: str,
        on_event: Callable[[Event], None],
        on_done: Callable[[JobOutcome], None],
        on_state: Callable[[str], None] | None = None,
        notify: bool = True,
    ) -> None:
        self.label = label
        self._on_event = on_event
        self._on_done = on_done
        self._on_state = on_state
        self._notify = notify
        self._worker: _EngineWorker | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._state = IDLE
        self._outcome: JobOutcome | None = None
        self._t0 = 0.0
        self._device = "auto"
        self.last_outcome: JobOutcome | None = None

    # ---------------------------------------------------------------- state

    @property
    def state(self) -> str:
        return self._state

    @property
    def busy(self) -> bool:
        return self._state != IDLE

    @property
    def worker(self) -> GeneratorWorker | None:
        return self._worker

    def _set_state(self, state: str) -> None:
        self._state = state
        if self._on_state is not None:
            self._on_state(state)

    # ---------------------------------------------------------------- control

    def start(self, make_events: Callable[[], Iterator[Any]], device: str = "auto") -> GeneratorWorker:
        """Run ``make_events()`` (called in the worker thread) and stream its events to ``on_event``."""
        if self.busy:
            raise RunError(f"{self.label} is already running; stop it or wait for it to finish")
        self._stop = threading.Event()
        self._done = threading.Event()
        self._outcome = JobOutcome(status="finished")
        self._t0 = time.monotonic()
        self._device = device
        worker = create_worker(
            drive_events,
            make_events,
            self._stop,
            self._done,
            device,
            _worker_class=_EngineWorker,
            _start_thread=False,
            _connect={
                "yielded": self._dispatch,
                "errored": self._errored,
                "finished": self._finished,
                "paused": lambda: self._set_state(PAUSED) if self._state != STOPPING else None,
                "resumed": lambda: self._set_state(RUNNING) if self._state != STOPPING else None,
            },
        )
        worker.watch_for_stop(self._stop)
        self._worker = worker
        _LIVE.add(self)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._stop_before_quit)
        self._set_state(RUNNING)
        worker.start()
        return worker

    def toggle_pause(self) -> None:
        if self._worker is not None and self._state in (RUNNING, PAUSED):
            self._worker.toggle_pause()

    def stop(self) -> None:
        """Ask the engine to stop at its next yield; it writes its checkpoint and the job ends."""
        if self._worker is None or self._state == IDLE:
            return
        self._set_state(STOPPING)
        self._worker.quit()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker thread has finished (the checkpoint is on disk); True if it has."""
        return self._done.wait(timeout)

    def detach(self) -> None:
        """Drop the widget's callbacks (its widget is going away); the job itself is stopped, not killed."""
        self._on_event = lambda event: None
        self._on_done = lambda outcome: None
        self._on_state = None
        self._notify = False
        self.stop()

    def _stop_before_quit(self) -> None:
        self.stop()
        self.wait(120.0)

    # ---------------------------------------------------------------- signals (GUI thread)

    def _dispatch(self, item: Any) -> None:
        outcome = self._outcome
        if outcome is None:
            return
        if isinstance(item, _Stopped):
            outcome.status = "stopped"
            return
        if isinstance(item, _Raised):
            outcome.status = "error"
            outcome.error = item.error
            outcome.message = error_text(item.error)
            return
        if isinstance(item, Started):
            outcome.run_dir = item.run_dir
            outcome.device = item.device
        elif isinstance(item, EpochDone) and item.checkpoint is not None:
            outcome.checkpoint = item.checkpoint
        elif isinstance(item, Failed):
            outcome.status = "failed"
            outcome.message = item.message
            if item.checkpoint is not None:
                outcome.checkpoint = item.checkpoint
        elif isinstance(item, Finished):
            outcome.finished = item
            if item.run_dir is not None:
                outcome.run_dir = item.run_dir
            if item.stopped:
                outcome.status = "stopped"
        try:
            self._on_event(item)
        except Exception as exc:  # a widget bug must not take the job down with it
            log.exception("%s: handling %s failed", self.label, type(item).__name__)
            if self._notify:
                notify_error(exc, f"{self.label}: could not show {type(item).__name__}")

    def _errored(self, exc: Exception) -> None:
        if self._outcome is not None:
            self._outcome.status = "error"
            self._outcome.error = exc
            self._outcome.message = error_text(exc)

    def _finished(self) -> None:
        outcome = self._outcome or JobOutcome(status="error", message="the job ended without a result")
        outcome.seconds = time.monotonic() - self._t0
        self._outcome = None
        self._worker = None
        _LIVE.discard(self)
        app = QApplication.instance()
        if app is not None:
            try:
                app.aboutToQuit.disconnect(self._stop_before_quit)
            except (TypeError, RuntimeError):
                pass
        self.last_outcome = outcome
        release_device(self._device, collect=True)
        self._set_state(IDLE)
        if self._notify:
            if outcome.status == "error":
                notify_error(outcome.message, self.label)
            elif outcome.status == "failed":
                where = f" (last good checkpoint: {outcome.checkpoint})" if outcome.checkpoint else ""
                notify_error(f"{outcome.message}{where}", self.label)
        try:
            self._on_done(outcome)
        except Exception as exc:  # a widget bug at the end of a job must not take the viewer down
            log.exception("%s: finishing the job failed", self.label)
            if self._notify:
                notify_error(exc, f"{self.label}: could not show the result")
