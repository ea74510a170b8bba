"""Device choice without the hardware: ``auto`` picks CUDA, then Apple's MPS, then the CPU (the backends'
availability monkeypatched), asking for a device the machine lacks is a one-line error, and runs and the
device combo box name the device they use."""

from __future__ import annotations

import pytest
import torch

from napari_vesuvius_pt.cli import main
from napari_vesuvius_pt.engine import device as dev
from napari_vesuvius_pt.errors import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """Set which backends this "machine" has: ``machine(cuda=..., mps=...)``."""

    def set_backends(cuda: bool, mps: bool, cuda_count: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_backends


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, True, "cuda:0"),  # CUDA first, even on a machine that also has MPS
    (True, False, "cuda:0"),
    (False, True, "mps"),
    (False, False, "cpu"),
])
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert dev.auto_device_name() == expected
    assert dev.resolve_device("auto") == torch.device(expected)
    assert dev.resolve_device("") == torch.device(expected)  # an empty field means auto


def test_mps_is_listed_chosen_and_described_when_present(machine):
    machine(cuda=False, mps=True)
    assert dev.resolve_device("mps") == torch.device("mps")
    assert dev.resolve_device(" MPS ") == torch.device("mps")
    assert ("mps", "mps (Apple GPU)") in dev.list_devices()
    assert dev.describe_device(torch.device("mps")) == "mps (Apple GPU)"
    assert dev.device_label(dev.auto_device_name()) == "mps (Apple GPU)"


def test_devices_the_machine_lacks_are_config_errors(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(ConfigError, match="no Apple MPS"):
        dev.resolve_device("mps")
    with pytest.raises(ConfigError, match="no CUDA"):
        dev.resolve_device("cuda")
    assert [v for v, _ in dev.list_devices()] == ["cpu"]
    machine(cuda=True, mps=False, cuda_count=1)
    with pytest.raises(ConfigError, match="only 1 CUDA"):
        dev.resolve_device("cuda:1")
    assert [v for v, _ in dev.list_devices()] == ["cpu", "cuda:0"]
    with pytest.raises(ConfigError, match="unsupported device"):
        dev.resolve_device("xpu")


def test_cli_says_one_line_for_a_missing_mps(machine, tmp_path, capsys, fragment_dir):
    machine(cuda=False, mps=False)
    code = main(["pretrain", "--segments", str(fragment_dir), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--width", "0.125", "--tile", "8x32x32", "--device", "mps", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "no Apple MPS" in err and err.startswith("vesuvius-pt pretrain: error:")


def test_device_choice_names_what_auto_picks(machine, qtbot):
    from napari_vesuvius_pt.ui.device_choice import DeviceChoice

    machine(cuda=False, mps=True)
    box = DeviceChoice()
    qtbot.addWidget(box)
    assert box.itemText(0) == "auto (mps (Apple GPU))"
    assert box.set_value("mps") and box.value() == "mps"
    machine(cuda=True, mps=True)
    box = DeviceChoice()
    qtbot.addWidget(box)
    assert box.itemText(0) == "auto (cuda:0 (Fake GPU))"
    machine(cuda=False, mps=False)
    box = DeviceChoice()
    qtbot.addWidget(box)
    assert box.itemText(0) == "auto (CPU)"
    assert not box.set_value("mps") and box.value() == "auto"
