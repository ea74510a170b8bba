"""How many CPU threads torch uses in a run: chosen from the cores this process may really use, and
reported (the ``Started`` event's device text says what was picked and why).

torch's own default is the machine's core count, which ignores a container's CPU quota (cgroup
``cpu.max``) and the processes torchrun starts beside this one; both oversubscribe the cores, and a
3D convolution with more threads than cores runs several times slower. The choice, in order:

1. ``VESUVIUS_PT_THREADS`` if set (a positive integer), else ``OMP_NUM_THREADS`` if set;
2. otherwise at most the CPUs this process may run on (``os.sched_getaffinity``), capped by the cgroup quota,
   divided among torchrun's local processes (``LOCAL_WORLD_SIZE``), at least 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_vesuvius_pt.errors import ConfigError

ENV_THREADS = "VESUVIUS_PT_THREADS"
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # what decided it, for the report

    def describe(self) -> str:
        return f"{self.threads} torch thread{'s' if self.threads != 1 else ''} ({self.reason})"


def cgroup_cpu_quota(path: Path = _CGROUP_CPU_MAX) -> float | None:
    """CPUs the cgroup quota allows (e.g. 1.5), or None when there is no quota or no cgroup v2."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number of threads; set it to 1 or more, or unset it") from None
    if value < 1:
        raise ConfigError(f"{name}={value} must be at least 1 thread; unset it to let the run choose")
    return value


def choose_threads(cpus: int | None = None, quota: float | None = None, local_world: int | None = None) -> ThreadChoice:
    """The thread count for this process (see the module docstring); arguments override what is read
    from the machine (for tests)."""
    for name in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = _env_int(name)
        if value is not None:
            return ThreadChoice(value, f"{name}={value}")
    cpus = usable_cpus() if cpus is None else int(cpus)
    quota = cgroup_cpu_quota() if quota is None else quota
    parts = [f"{cpus} usable CPU{'s' if cpus != 1 else ''}"]
    n = cpus
    if quota is not None and quota < n:
        n = max(1, math.floor(quota))
        parts.append(f"cgroup quota {quota:g} CPUs")
    if local_world is None:
        local_world = _env_int("LOCAL_WORLD_SIZE") or 1
    if local_world > 1:
        n = max(1, n // local_world)
        parts.append(f"shared by {local_world} local processes")
    return ThreadChoice(max(1, n), ", ".join(parts))


def configure_threads() -> ThreadChoice:
    """Cap torch's intra-op threads at :func:`choose_threads` and return what is used.

    An environment variable sets the count exactly; otherwise the count is only ever lowered (torch's
    default oversubscribes a CPU quota or torchrun's processes), never raised above what the caller set
    with ``torch.set_num_threads``.
    """
    global _last
    _last = _configure()
    return _last


_last: ThreadChoice | None = None


def last_choice() -> ThreadChoice:
    """What :func:`configure_threads` picked last (torch's current count when it has not run)."""
    if _last is not None and _last.threads == torch.get_num_threads():
        return _last
    return ThreadChoice(torch.get_num_threads(), "torch's setting")


def _configure() -> ThreadChoice:
    choice = choose_threads()
    current = torch.get_num_threads()
    explicit = choice.reason.startswith((ENV_THREADS, "OMP_NUM_THREADS"))
    if explicit or current > choice.threads:
        if current != choice.threads:
            torch.set_num_threads(choice.threads)
        return choice
    if current < choice.threads:
        return ThreadChoice(current, f"set by the caller; {choice.reason} allow {choice.threads}")
    return choice
