"""One convention for telling apart things that would share a name: ``name``, ``name-2``, ``name-3``, ...

Used for prediction arrays of several checkpoints, CKA matrix labels and new run folders. No Qt, no
torch: importable anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

SEPARATOR = "-"


def numbered(name: str, n: int) -> str:
    """``name`` for ``n`` == 1, else ``name-n``."""
    return name if n == 1 else f"{name}{SEPARATOR}{n}"


def strip_number(name: str) -> str:
    """``run-3`` -> ``run``; a name without a ``-N`` suffix is returned as is."""
    base, sep, tail = name.rpartition(SEPARATOR)
    return base if sep and base and tail.isdigit() else name


def unique_names(names: Iterable[str]) -> list[str]:
    """Each name kept where it first appears; a repeat becomes ``name-2``, ``name-3``, ... skipping
    any number already taken (by an earlier result or by a name given as is)."""
    names = list(names)
    given = set(names)
    used: set[str] = set()
    out = []
    for name in names:
        if name in used:
            n = 2
            while numbered(name, n) in used or numbered(name, n) in given:
                n += 1
            name = numbered(name, n)
        used.add(name)
        out.append(name)
    return out


def next_free(name: str, taken: Callable[[str], bool]) -> str:
    """``name`` if not ``taken``, else the first free ``base-2``, ``base-3``, ... where ``base`` is
    ``name`` without its ``-N`` suffix (so ``run-2`` taken gives ``run-3``, not ``run-2-2``)."""
    if not taken(name):
        return name
    base = strip_number(name)
    n = 2
    while taken(numbered(base, n)):
        n += 1
    return numbered(base, n)
