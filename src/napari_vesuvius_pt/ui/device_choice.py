"""A combo box of the devices a job can run on: auto, the CPU, each CUDA device by name, and MPS."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QWidget

from napari_vesuvius_pt.engine.device import auto_device_name, device_label, list_devices


class DeviceChoice(QComboBox):
    """``value()`` is what the run configs take: ``auto``, ``cpu``, ``cuda:N`` or ``mps``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        devices = list_devices()
        best = device_label(auto_device_name())  # what resolve_device('auto') picks: cuda:0, else mps, else CPU
        self.addItem(f"auto ({best})", "auto")
        for value, label in devices:
            self.addItem(label, value)
        self.setToolTip("Where the job runs. 'auto' takes the first CUDA device when there is one, else Apple's MPS, else the CPU.")

    def value(self) -> str:
        return str(self.currentData())

    def set_value(self, value: str) -> bool:
        """Select ``value``; False (and 'auto' selected) if this machine has no such device."""
        index = self.findData(value)
        if index < 0:
            self.setCurrentIndex(0)
            return False
        self.setCurrentIndex(index)
        return True
