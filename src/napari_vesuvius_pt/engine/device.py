"""Device choice shared by every run: "auto", "cpu", "cuda", "cuda:N", "mps" (Apple's Metal GPUs).

``auto`` takes the first CUDA device, else MPS, else the CPU (:func:`auto_device_name`); every run says
which one it uses (``Started.device``, from :func:`describe_device`) and the widgets' device choice
names it in its ``auto (...)`` entry.
"""

from __future__ import annotations

import torch

from napari_vesuvius_pt.errors import ConfigError


def mps_available() -> bool:
    """Apple's MPS backend is built into this torch and usable on this machine."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def auto_device_name() -> str:
    """What ``auto`` picks: ``cuda:0`` when CUDA is available, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda:0"
    if mps_available():
        return "mps"
    return "cpu"


def list_devices() -> list[tuple[str, str]]:
    """(value, label) pairs for a device chooser: the CPU, each CUDA device by name, and MPS."""
    devices = [("cpu", "CPU")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append((f"cuda:{i}", f"cuda:{i} ({torch.cuda.get_device_name(i)})"))
    if mps_available():
        devices.append(("mps", "mps (Apple GPU)"))
    return devices


def device_label(value: str) -> str:
    """The chooser's label of a device value (``cpu``, ``cuda:N``, ``mps``)."""
    return dict(list_devices()).get(value, value)


def resolve_device(name: str = "auto") -> torch.device:
    """The device a run asked for; also caps torch's CPU threads at the cores usable (engine.threads)."""
    from napari_vesuvius_pt.engine.threads import configure_threads

    configure_threads()
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device(auto_device_name())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA device; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        device = torch.device("cuda", index)
    elif device.type == "mps":
        if not mps_available():
            raise ConfigError(f"device {name!r} asked for, but this machine (or this torch build) has no Apple MPS "
                              "device; use --device cpu")
        device = torch.device("mps")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    from napari_vesuvius_pt.engine.threads import last_choice

    return f"cpu, {last_choice().describe()}"


def release_device_memory(device: torch.device) -> None:
    """Give cached GPU memory back when a job ends, not only when napari exits."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
