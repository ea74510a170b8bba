"""Import a job's engine modules in a background thread when its dock opens.

The first Start of a session used to import the engine (MONAI, the models, the data readers: 2.4 s)
and, at its first optimizer, ``torch._dynamo`` (1.0 s) in the job's worker thread; imports hold the
interpreter lock in long stretches (up to 125 ms each, measured) while C extensions initialise, and the
viewer stalled 0.33 s as the first training job began. The first matplotlib figure drawn (its fonts
loaded and rasterised: 0.39 s, 81 ms of it in one stretch) did the same in the plots' render thread.
Done while the user fills the form, the first job starts like every later one.

Then the heap is frozen (``gc.freeze``): napari, Qt, torch and MONAI leave about a million long-lived
objects, and each full collection of Python's cyclic garbage collector walked all of them, holding the
interpreter lock for 0.31 s (measured in whichever thread happened to allocate: the plots' render
thread, the job, the GUI), which stalled the viewer mid-run. Frozen objects are skipped by the
collector (they are still freed by reference counting), so a full collection walks only what was
made since. A module another thread is importing at the same moment is
waited for by Python's import lock, so a job started at once is still correct.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading

log = logging.getLogger(__name__)
_started: set[str] = set()
_lock = threading.Lock()


PLOT_FONTS = "matplotlib fonts"  # a warm-up that draws a small figure with text, off screen
FIRST_OPTIMIZER = "torch._dynamo"  # what torch imports when a run builds its first optimizer (1.0 s)


def warm_up(*modules: str) -> threading.Thread | None:
    """Import ``modules`` (those not imported or warmed yet; ``PLOT_FONTS`` draws a figure) in a daemon
    thread; returns it, or None."""
    with _lock:
        todo = [m for m in modules if m and m not in sys.modules and m not in _started]
        _started.update(todo)
    if not todo:
        return None
    thread = threading.Thread(target=_run_all, args=(todo,), daemon=True, name="vesuvius-warm-up")
    thread.start()
    return thread


def _draw_text_figure() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3, 2), dpi=100)
    ax = figure.add_subplot()
    ax.plot([0, 1], [1, 0], label="loss")
    ax.set_title("warm-up")
    ax.set_xlabel("step")
    ax.legend()
    FigureCanvasAgg(figure).draw()


def _run_all(modules: list[str]) -> None:
    for name in modules:
        try:
            if name == PLOT_FONTS:
                _draw_text_figure()
            else:
                importlib.import_module(name)
        except Exception as exc:  # the job's own import reports it, with the job's error handling
            log.debug("warm-up of %s failed: %s", name, exc)
    # no gc.collect() first: a full pass holds the interpreter lock 0.3 s, the very stall this avoids
    # (it landed in a job started 1.5 s after the dock opened); freezing is a list splice
    gc.freeze()
