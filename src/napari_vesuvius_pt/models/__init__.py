"""3D ResNet encoders, weight import, the ink head, VICReg and our checkpoints (no Qt).

Names are imported on first use, so ``import napari_vesuvius_pt.models.vicreg`` (a DDP worker, the
CLI's argument parsing) does not pay for importing MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CHECKPOINT_FORMAT": "checkpoint",
    "checkpoint_in_run": "checkpoint",
    "encoder_from_source": "checkpoint",
    "ink_model_from_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ENCODER_NAMES": "encoder",
    "STAGES": "encoder",
    "Encoder": "encoder",
    "build_encoder": "encoder",
    "encoder_from_spec": "encoder",
    "OUTPUT_STRIDES": "head",
    "InkModel": "head",
    "Expander": "vicreg",
    "VICRegTerms": "vicreg",
    "vicreg_loss": "vicreg",
    "LoadReport": "weights",
    "load_encoder_weights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
