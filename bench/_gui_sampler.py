"""Where the GUI thread spends a stall: a sampling thread records the GUI thread's stack every few
milliseconds, and the stacks seen during a heartbeat gap are summed by the deepest frame of our own code
(or napari's, vispy's, matplotlib's when ours is not on the stack).

Python's GIL means a sample is only taken when the sampler gets the interpreter; a worker that holds it
(a C extension that does not release it) shows as a gap with the GUI thread idle in the event loop, which
is reported as such.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter

OURS = ("napari_vesuvius_pt",)
THEIRS = ("napari", "vispy", "matplotlib", "superqt", "magicgui", "torch", "numpy")


def _where(frames: list[traceback.FrameSummary]) -> str:
    for prefixes in (OURS, THEIRS):
        for frame in reversed(frames):
            path = frame.filename.replace("\\", "/")
            if any(f"/{p}/" in path for p in prefixes):
                short = path.split("/site-packages/")[-1].split("/src/")[-1]
                return f"{short}:{frame.lineno} {frame.name}"
    last = frames[-1] if frames else None
    return f"{last.filename}:{last.lineno} {last.name}" if last else "?"


class GuiSampler:
    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval = interval_s
        self.thread_id = threading.main_thread().ident
        self.samples: list[tuple[float, str, str]] = []  # (time, deepest of ours, outermost of ours)
        self.others: list[tuple[float, tuple[str, ...]]] = []  # (time, where each other thread was)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = sys._current_frames().get(self.thread_id)
            if frame is not None:
                frames = traceback.extract_stack(frame)
                ours = [f for f in frames if "napari_vesuvius_pt" in f.filename]
                top = f"{ours[0].filename.split('/')[-1]}:{ours[0].lineno} {ours[0].name}" if ours else "-"
                self.samples.append((time.perf_counter(), _where(frames), top))
            names = {t.ident: t.name for t in threading.enumerate()}
            others = tuple(f"{names.get(ident, ident)}: {_where(traceback.extract_stack(f))}"
                           for ident, f in sys._current_frames().items()
                           if ident not in (self.thread_id, threading.get_ident()))
            self.others.append((time.perf_counter(), others))
            time.sleep(self.interval)

    def other_threads(self, start: float, end: float, n: int = 3) -> str:
        """Where the other threads were during a gap and at the first sample after it (a thread that held
        the GIL through the gap is usually still at, or just past, the call that held it)."""
        seen = Counter(w for ts, ws in self.others if start <= ts <= end + 0.05 for w in ws
                       if "wait" not in w and "sleep" not in w and "_worker" not in w)
        return "; ".join(f"{w} x{c}" for w, c in seen.most_common(n)) or "-"

    def during(self, start: float, end: float, n: int = 4) -> str:
        inside = [(w, t) for ts, w, t in self.samples if start <= ts <= end]
        if not inside:
            return "no sample (the GIL was held elsewhere)"
        counts = Counter(inside)
        return "; ".join(f"{w} [in {t}] x{c}" for (w, t), c in counts.most_common(n))
