"""The long runs, as plain generators of events (no Qt): pretrain, finetune, predict, cka, evaluate.

``from napari_vesuvius_pt.engine import pretrain`` gives the *function* ``pretrain`` and imports only
that run's module, on first use, so importing the package stays cheap and one run's module never
waits on another's.

Each run's module has the run's own name (``engine/pretrain.py`` defines ``pretrain``). Python binds a
submodule as an attribute of its package when it is first imported, which would make the package's
``pretrain`` the module or the function depending on import order; the package class below binds the
function in both cases. To reach a run's module itself use ``importlib.import_module(
"napari_vesuvius_pt.engine.pretrain")`` or ``from napari_vesuvius_pt.engine.pretrain import ...``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "pretrain": "napari_vesuvius_pt.engine.pretrain",
    "finetune": "napari_vesuvius_pt.engine.finetune",
    "predict": "napari_vesuvius_pt.engine.predict",
    "cka": "napari_vesuvius_pt.engine.cka",
    "evaluate": "napari_vesuvius_pt.engine.evaluate",
    "RunFolder": "napari_vesuvius_pt.engine.run_folder",
}

__all__ = sorted(_EXPORTS)


class _EnginePackage(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)  # the import system binding a run's module: bind its function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _EnginePackage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
