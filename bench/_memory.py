"""Peak memory of this process, split as the kernel counts it: anonymous pages (``RssAnon``: numpy and
torch buffers, what the process really holds) and mapped file pages (``RssFile``: memory-mapped TIFF
layers and shared libraries, which the kernel can drop and re-read at any time).

``/proc/self/status`` keeps only the peak of their sum (``VmHWM``), so a thread samples both every few
milliseconds and keeps each one's maximum.
"""

from __future__ import annotations

import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")


def status_kb() -> dict[str, int]:
    """``RssAnon``, ``RssFile``, ``RssShmem``, ``VmRSS``, ``VmHWM`` in kB (Linux)."""
    out = {}
    for line in _STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.peak_anon_mb``, ``m.peak_file_mb``, ``m.hwm_mb``,
    and the same at the start (``m.start_anon_mb`` ...)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-memory")
        now = status_kb()
        self.start_anon_mb = now["RssAnon"] / 1024
        self.start_file_mb = now["RssFile"] / 1024
        self.peak_anon_mb = self.start_anon_mb
        self.peak_file_mb = self.start_file_mb
        self.hwm_mb = now["VmHWM"] / 1024

    def _sample(self) -> None:
        now = status_kb()
        self.peak_anon_mb = max(self.peak_anon_mb, now["RssAnon"] / 1024)
        self.peak_file_mb = max(self.peak_file_mb, now["RssFile"] / 1024)
        self.hwm_mb = now["VmHWM"] / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
