"""Our checkpoints (written atomically, read with ``weights_only=True``) and encoders by source.

An encoder source is parsed by :func:`napari_vesuvius_pt.models.sources.parse_source`:

- ``random`` or ``random:resnet50``: a fresh encoder (the spec given, or the default);
- ``k700:FILE`` (also ``k400:FILE``, ``kinetics:FILE``): a 3D-ResNets-PyTorch Kinetics checkpoint;
- a run folder: its ``last.pt``, else its newest ``checkpoints/epoch_*.pt``;
- a checkpoint or weights file: ours are rebuilt from their ``encoder_spec``; anything else is read
  as a Kinetics or plain state dict.

The format tag lives in ``models.weights`` (``CHECKPOINT_FORMAT``) and the run folder's checkpoint
finder in ``models.sources`` (``checkpoint_in_run``); both are importable from here as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from napari_vesuvius_pt._atomic import atomic_torch_save
from napari_vesuvius_pt.config import EncoderConfig, from_dict, to_dict
from napari_vesuvius_pt.errors import ConfigError, WeightsError
from napari_vesuvius_pt.models.encoder import ARCHITECTURES, Encoder, encoder_from_spec
from napari_vesuvius_pt.models.head import InkModel
from napari_vesuvius_pt.models.sources import KINETICS_PREFIXES, checkpoint_in_run, parse_source
from napari_vesuvius_pt.models.weights import (
    CHECKPOINT_FORMAT,
    FORMAT_OURS,
    check_checkpoint_format,
    describe_architecture,
    extract_state_dict,
    is_our_checkpoint,
    load_state_into,
    read_weights_file,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "KINETICS_PREFIXES",
    "checkpoint_in_run",
    "encoder_from_source",
    "ink_model_from_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

_SAFE_SCALARS = (str, int, float, bool, type(None))  # exact types: numpy's float64 subclasses float but is refused
_SAFE_OBJECTS = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def _check_loadable(obj: Any, where: str = "payload") -> None:
    """Refuse, at save time, what ``torch.load(weights_only=True)`` would refuse at load time."""
    if type(obj) in _SAFE_SCALARS or isinstance(obj, _SAFE_OBJECTS):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if type(k) not in _SAFE_SCALARS:
                raise TypeError(f"checkpoint {where}: key {k!r} of type {type(k).__name__} cannot be saved safely")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint {where} is a {type(obj).__name__}; store plain numbers, strings, lists, dicts or tensors "
        "(a weights_only load would refuse it)"
    )


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (format stamped in) atomically: a reader never sees half a file."""
    payload = {**payload, "format": CHECKPOINT_FORMAT}
    _check_loadable(payload)
    path = Path(path)
    atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """One of our checkpoints as a dict; :class:`WeightsError` if missing, corrupt or not ours."""
    obj = read_weights_file(path)
    if not isinstance(obj, dict) or not is_our_checkpoint(obj):
        raise WeightsError(
            f"{path} is not a napari-vesuvius-pt checkpoint (it has no 'format' entry of ours); "
            "for Kinetics weights use the source k700:FILE"
        )
    check_checkpoint_format(obj, str(path))
    return obj


def _spec_from_payload(payload: Mapping[str, Any], where: str) -> EncoderConfig:
    spec = payload.get("encoder_spec")
    if not isinstance(spec, Mapping):
        raise WeightsError(f"{where} has no encoder_spec; it cannot be rebuilt")
    try:
        return from_dict(EncoderConfig, dict(spec), where=f"{where}: encoder_spec")
    except ConfigError as exc:
        raise WeightsError(str(exc)) from None


def _spec_from_state(state: Mapping[str, torch.Tensor], where: str) -> EncoderConfig:
    """Infer depth and width from a trunk state dict (a Kinetics file named without a spec)."""
    desc = describe_architecture(state) or ""
    name = desc.split(" ")[0]
    if name not in ARCHITECTURES:
        raise WeightsError(
            f"{where} holds {desc or 'no 3D ResNet trunk'}, not one of {', '.join(ARCHITECTURES)}; "
            "name the encoder depth to load it into"
        )
    width = state["conv1.weight"].shape[0] / 64
    return EncoderConfig(name=name, widen_factor=float(width), in_channels=1)


def _encoder_from_file(path: Path, spec: EncoderConfig | None, origin: str) -> tuple[Encoder, dict[str, Any]]:
    obj = read_weights_file(path)
    fmt, state, meta = extract_state_dict(obj, where=str(path))
    info: dict[str, Any] = {"source": str(path), "checkpoint": str(path), "format": fmt}
    if fmt == FORMAT_OURS:
        spec = _spec_from_payload(obj, str(path))
        info.update(origin=obj.get("kind") or "checkpoint", epoch=obj.get("epoch"))
    else:
        spec = spec if spec is not None else _spec_from_state(state, str(path))
        info.update(origin=origin, arch=meta.get("arch"))
    encoder = encoder_from_spec(spec)
    report = load_state_into(encoder, state, fmt, where=str(path))
    info.update(spec=to_dict(encoder.spec), report=report.as_dict(), summary=report.summary())
    return encoder, info


def encoder_from_source(source: str, spec: EncoderConfig | None = None) -> tuple[Encoder, dict[str, Any]]:
    """Build an encoder from an origin string; ``info`` says what was loaded (for logs and the UI).

    ``spec`` chooses depth and width for ``random`` and for Kinetics files (inferred from the file
    when None). Our checkpoints rebuild the encoder they were trained with; ``spec`` is then ignored.
    """
    parsed = parse_source(source)
    if parsed.kind == "random":
        spec = spec if spec is not None else EncoderConfig()
        if parsed.arch:
            spec = EncoderConfig(name=parsed.arch, widen_factor=spec.widen_factor, in_channels=spec.in_channels)
        encoder = encoder_from_spec(spec)
        return encoder, {"origin": "random", "source": parsed.text, "spec": to_dict(encoder.spec)}
    if parsed.kind == "kinetics":
        return _encoder_from_file(parsed.path, spec, origin=parsed.label)
    if parsed.kind == "run":
        encoder, info = _encoder_from_file(checkpoint_in_run(parsed.path), spec, origin="checkpoint")
        info["run"] = str(parsed.path)
        return encoder, info
    if parsed.kind == "file":
        return _encoder_from_file(parsed.path, spec, origin="weights")
    raise WeightsError(
        f"encoder origin {parsed.text!r} is neither random, k700:FILE, an existing run folder nor a checkpoint file"
    )


def ink_model_from_checkpoint(path: str | os.PathLike) -> tuple[InkModel, dict[str, Any]]:
    """The fine-tuned InkModel in a checkpoint (file or run folder), in eval mode, and its payload."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = checkpoint_in_run(path)
    payload = load_checkpoint(path)
    if payload.get("kind") != "finetune" or not isinstance(payload.get("head"), Mapping):
        raise WeightsError(
            f"{path} is a {payload.get('kind', 'unknown')!r} checkpoint without an ink head; "
            "predict with a fine-tuning checkpoint (vesuvius-pt finetune writes them)"
        )
    spec = _spec_from_payload(payload, str(path))
    stride = int(payload.get("output_stride", 4))
    head_state = payload["head"]
    laterals = [v for k, v in head_state.items() if k.startswith("lateral.") and k.endswith(".weight")]
    channels = laterals[0].shape[0] if laterals else 64
    try:
        pooling = str(payload.get("depth_pooling") or "mean")  # checkpoints before the option pooled by mean
        model = InkModel(encoder_from_spec(spec), output_stride=stride, decoder_channels=int(channels),
                         depth_pooling=pooling)
    except ConfigError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    load_state_into(model.encoder, payload["encoder"], FORMAT_OURS, where=str(path))
    try:
        model.head.load_state_dict(head_state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WeightsError(f"{path}: the ink head does not fit output stride {stride}: {first}") from None
    model.eval()
    return model, payload
