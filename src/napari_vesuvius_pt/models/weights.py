"""Load encoder weights from a file the user names; never download, never unpickle code.

Three kinds of file are recognized by their content:

- ``3d-resnets-pytorch``: the Kinetics-700/400 checkpoints of the 3D-ResNets-PyTorch project
  (``r3d50_K_200ep.pth`` and friends): ``{"state_dict": ..., "arch": ..., "optimizer": ...}`` with
  keys ``conv1.weight``, ``layer1.0.downsample.0.weight`` (no bias), ``fc.*``, possibly ``module.``-prefixed.
- ``napari-vesuvius-pt``: our own pretraining/fine-tuning checkpoints (the encoder under ``"encoder"``).
- ``plain``: a bare state dict (optionally the whole ``InkModel`` state dict, ``encoder.``-prefixed).

Our encoder subclasses MONAI's ResNet, whose module names are those of 3D-ResNets-PyTorch, so no
renaming is needed beyond stripping prefixes. A file for another depth or width is refused as a
whole rather than half loaded.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from napari_vesuvius_pt.errors import WeightsError

FORMAT_3D_RESNETS = "3d-resnets-pytorch"
FORMAT_OURS = "napari-vesuvius-pt"
FORMAT_PLAIN = "plain"
CHECKPOINT_FORMAT = "napari-vesuvius-pt/1"  # the version of our checkpoints this code reads and writes

_IGNORED_PREFIXES = ("fc.",)  # the Kinetics classifier: not part of the trunk
_OPTIONAL_SUFFIX = ".num_batches_tracked"  # absent from checkpoints older than PyTorch 0.4.1; harmless


@dataclass
class LoadReport:
    source_format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # encoder keys the file lacks (only num_batches_tracked may be)
    unexpected: list[str] = field(default_factory=list)  # file keys not loaded (the classifier, ``fc.*``)
    mismatched: list[str] = field(default_factory=list)  # "key: file shape -> encoder shape"
    folded: list[str] = field(default_factory=list)  # RGB convolutions summed into one input channel
    file_architecture: str | None = None  # what the file holds, e.g. "resnet50 (width 1.0)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from a {self.source_format} file"]
        if self.folded:
            parts.append(f"RGB folded into 1 channel for {', '.join(self.folded)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} ignored ({_abbrev(self.unexpected)})")
        if self.missing:
            parts.append(f"{len(self.missing)} left at defaults ({_abbrev(self.missing)})")
        return "; ".join(parts)


def _abbrev(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def read_weights_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU; every failure becomes a :class:`WeightsError`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"{path} is a folder, not a weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is not a plain PyTorch weights file (it needs code or objects that cannot be loaded "
            f"safely, or it is damaged): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} cannot be read as a PyTorch weights file (truncated or corrupt?): {first}"
        ) from None


def is_our_checkpoint(obj: Any) -> bool:
    """A loaded object carries our ``format`` tag (of any version)."""
    return isinstance(obj, Mapping) and str(obj.get("format", "")).startswith(FORMAT_OURS)


def check_checkpoint_format(obj: Mapping[str, Any], where: str) -> None:
    """Refuse one of our checkpoints written in another version of the format."""
    if obj["format"] != CHECKPOINT_FORMAT:
        raise WeightsError(f"{where} was written as {obj['format']!r}; this version reads {CHECKPOINT_FORMAT!r}")


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, where: str = "file") -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """(source_format, trunk state dict with prefixes removed, metadata) from a loaded weights object."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where} holds a {type(obj).__name__}, not a state dict or checkpoint")
    meta: dict[str, Any] = {}
    if is_our_checkpoint(obj):
        check_checkpoint_format(obj, where)
        state = obj.get("encoder")
        if not _is_state_dict(state):
            raise WeightsError(f"{where} is one of our checkpoints but holds no encoder weights")
        meta["encoder_spec"] = obj.get("encoder_spec")
        meta["kind"] = obj.get("kind")
        meta["epoch"] = obj.get("epoch")
        return FORMAT_OURS, dict(state), meta
    if "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        state = _strip_prefix(obj["state_dict"], "module.")
        if isinstance(obj.get("arch"), str):
            meta["arch"] = obj["arch"]
        return FORMAT_3D_RESNETS, state, meta
    if _is_state_dict(obj):
        state = _strip_prefix(obj, "module.")
        if "conv1.weight" not in state and any(k.startswith("encoder.") for k in state):
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        return FORMAT_PLAIN, state, meta
    raise WeightsError(
        f"{where} is neither a 3D-ResNets-PyTorch checkpoint (a dict with 'state_dict'), one of our "
        "checkpoints, nor a plain state dict of tensors"
    )


def describe_architecture(state: Mapping[str, Tensor]) -> str | None:
    """Guess "resnet50 (width 1.0)" from a trunk state dict, for error messages; None if it is no ResNet."""
    from napari_vesuvius_pt.models.encoder import ARCHITECTURES, ResNetBottleneck

    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 5:
        return None
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(idx))
    bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.weight$", k) for k in state)
    width = conv1.shape[0] / 64
    name = None
    for arch, (block, layers) in ARCHITECTURES.items():
        if tuple(blocks) == layers and (block is ResNetBottleneck) == bottleneck:
            name = arch
    if name is None:
        kind = "bottleneck" if bottleneck else "basic"
        name = f"a ResNet with {kind} blocks {blocks}"
        if bottleneck and tuple(blocks) == (3, 4, 23, 3):
            name = "resnet101"
        elif bottleneck and tuple(blocks) == (3, 8, 36, 3):
            name = "resnet152"
        elif bottleneck and tuple(blocks) == (3, 24, 36, 3):
            name = "resnet200"
    return f"{name} (width {width:g}, {conv1.shape[1]} input channel(s))"


def _fold_rgb(weight: Tensor, target_in: int) -> Tensor | None:
    """Fold a 3-channel (RGB) first convolution into ``target_in`` == 1 channel, else None.

    We sum rather than average over the colour axis: a grey tile fed to the folded convolution gives
    exactly the activations the RGB model gives for that tile replicated into R, G and B, so the
    batch-norm running statistics learnt on Kinetics stay valid. A mean would scale every activation
    of the stem by 1/3 and put them off those statistics.
    """
    if weight.ndim == 5 and weight.shape[1] == 3 and target_in == 1:
        return weight.sum(dim=1, keepdim=True)
    return None


def load_state_into(
    encoder: torch.nn.Module, state: Mapping[str, Tensor], source_format: str, where: str = "file"
) -> LoadReport:
    """Check that ``state`` is this encoder's trunk, then load it (all or nothing)."""
    own = encoder.state_dict()
    report = LoadReport(source_format=source_format, file_architecture=describe_architecture(state))
    new_state: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_IGNORED_PREFIXES) or key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            folded = _fold_rgb(value, target.shape[1]) if key == "conv1.weight" else None
            if folded is not None and folded.shape == target.shape:
                value = folded
                report.folded.append(key)
            else:
                report.mismatched.append(f"{key}: {tuple(value.shape)} in the file, {tuple(target.shape)} here")
                continue
        new_state[key] = value.to(dtype=target.dtype)
    report.missing = [k for k in own if k not in state]
    trunk_unexpected = [k for k in report.unexpected if not k.startswith(_IGNORED_PREFIXES)]
    # the optional fc embedding (EncoderConfig.embedding) is not part of a Kinetics trunk: it starts fresh
    required_missing = [k for k in report.missing if not k.endswith(_OPTIONAL_SUFFIX) and not k.startswith("embed.")]
    if report.mismatched or required_missing or trunk_unexpected:
        spec = getattr(encoder, "spec", None)
        here = (
            f"{spec.name} (width {spec.widen_factor:g}, {spec.in_channels} input channel(s))" if spec is not None
            else type(encoder).__name__
        )
        problems = []
        if report.mismatched:
            problems.append(f"{len(report.mismatched)} tensor(s) of another shape, e.g. {report.mismatched[0]}")
        if required_missing:
            problems.append(f"{len(required_missing)} trunk tensor(s) missing ({_abbrev(required_missing)})")
        if trunk_unexpected:
            problems.append(
                f"{len(trunk_unexpected)} tensor(s) this encoder does not have ({_abbrev(trunk_unexpected)})"
            )
        holds = report.file_architecture or "no 3D ResNet trunk this package knows"
        raise WeightsError(
            f"{where} does not fit the encoder {here}: the file holds {holds}; "
            + "; ".join(problems)
            + ". Build the encoder with the depth and width of the file, or choose a file made for this encoder."
        )
    if not new_state:
        raise WeightsError(f"{where} holds no tensors for this encoder")
    encoder.load_state_dict(new_state, strict=False)
    report.loaded = sorted(new_state)
    return report


def load_encoder_weights(encoder: torch.nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a weights file into ``encoder``; which kind of file it is is read from its content."""
    obj = read_weights_file(path)
    fmt, state, meta = extract_state_dict(obj, where=str(path))
    spec = getattr(encoder, "spec", None)
    ours_spec = meta.get("encoder_spec")
    if fmt == FORMAT_OURS and spec is not None and isinstance(ours_spec, Mapping):
        if (ours_spec.get("name"), float(ours_spec.get("widen_factor", 1.0))) != (spec.name, float(spec.widen_factor)):
            raise WeightsError(
                f"{path} holds a {ours_spec.get('name')} encoder at width {ours_spec.get('widen_factor')}, but "
                f"the encoder asked for is {spec.name} at width {spec.widen_factor:g}; build it from the "
                "checkpoint's encoder_spec (use the checkpoint as the encoder origin) or choose another file."
            )
    return load_state_into(encoder, state, fmt, where=str(path))
