"""The long runs, as plain generators of events (no Qt).

Each run's module is named for what it does and defines the run's function: ``pretraining.pretrain``,
``finetuning.finetune``, ``prediction.predict``, ``cka_run.cka``, ``evaluation.evaluate``. The package
re-exports those functions lazily, so ``from napari_vesuvius_pt.engine import pretrain`` imports only
the pretraining module (and torch), on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pretrain": "napari_vesuvius_pt.engine.pretraining",
    "finetune": "napari_vesuvius_pt.engine.finetuning",
    "predict": "napari_vesuvius_pt.engine.prediction",
    "cka": "napari_vesuvius_pt.engine.cka_run",
    "evaluate": "napari_vesuvius_pt.engine.evaluation",
    "RunFolder": "napari_vesuvius_pt.engine.run_folder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
