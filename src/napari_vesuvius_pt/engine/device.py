"""Device choice shared by every run: "auto", "cpu", "cuda", "cuda:N"."""

from __future__ import annotations

import torch

from napari_vesuvius_pt.errors import ConfigError


def list_devices() -> list[tuple[str, str]]:
    """(value, label) pairs for a device chooser: the CPU and each CUDA device by name."""
    devices = [("cpu", "CPU")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append((f"cuda:{i}", f"cuda:{i} ({torch.cuda.get_device_name(i)})"))
    return devices


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA device; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def release_device_memory(device: torch.device) -> None:
    """Give cached GPU memory back when a job ends, not only when napari exits."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
