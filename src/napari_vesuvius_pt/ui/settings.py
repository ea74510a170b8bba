"""Widget settings remembered from one napari launch to the next.

One small JSON file, ``{widget key: {field: value}}``, in napari's user config folder
(``<napari config dir>/napari-vesuvius-pt/widgets.json``, the folder of napari's own ``settings.yaml``,
which honours ``NAPARI_CONFIG``). ``NAPARI_VESUVIUS_PT_SETTINGS=FILE`` puts it elsewhere (tests do);
when napari itself is told not to save settings (``NAPARI_CONFIG=""``) nothing is saved.

A widget binds its form fields once::

    self.remembered = remember("Pretrain", {"epochs": self.epochs, "device": self.device, ...})

which restores the saved values now and saves every change. A value that no longer fits (a combo entry
that is gone, a number out of range) is skipped. A damaged file is ignored, with a warning in the log.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from napari_vesuvius_pt._atomic import atomic_write_text

log = logging.getLogger(__name__)
ENV_VAR = "NAPARI_VESUVIUS_PT_SETTINGS"
_LOCK = threading.Lock()


def settings_path() -> Path | None:
    """The settings file, or None when settings are not to be saved."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    napari_config = os.environ.get("NAPARI_CONFIG")
    if napari_config is not None:
        if not napari_config:
            return None
        return Path(napari_config).expanduser().parent / "napari-vesuvius-pt" / "widgets.json"
    from napari.settings import get_settings

    config_path = get_settings().config_path
    if config_path is None:
        return None
    return Path(config_path).parent / "napari-vesuvius-pt" / "widgets.json"


def _read_all(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable widget settings %s (%s)", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring widget settings %s: not a JSON object", path)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def load_settings(key: str) -> dict[str, Any]:
    """The saved values of widget ``key`` (empty when there are none)."""
    return dict(_read_all(settings_path()).get(key, {}))


def save_settings(key: str, values: dict[str, Any]) -> None:
    """Merge ``values`` into widget ``key``'s saved values (other widgets' values are kept)."""
    path = settings_path()
    if path is None:
        return
    with _LOCK:
        data = _read_all(path)
        data[key] = {**data.get(key, {}), **values}
        try:
            atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
        except (OSError, TypeError, ValueError) as exc:  # a read-only home must not break a widget
            log.warning("could not save widget settings to %s (%s)", path, exc)


# ---------------------------------------------------------------- binding Qt fields


def _accessors(field: Any):
    """(get, set, change signal) of a form field: Qt inputs, the PathField/DeviceChoice style
    (``text``/``set_text`` or ``value``/``set_value`` with a ``changed`` signal) and magicgui widgets."""
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

    if isinstance(field, QAbstractButton) and field.isCheckable():
        return field.isChecked, lambda v: field.setChecked(bool(v)), field.toggled
    if isinstance(field, QSpinBox):
        return field.value, lambda v: _set_number(field, int(v)), field.valueChanged
    if isinstance(field, QDoubleSpinBox):
        return field.value, lambda v: _set_number(field, float(v)), field.valueChanged
    if isinstance(field, QComboBox) and not hasattr(field, "set_value"):
        return lambda: _combo_value(field), lambda v: _set_combo(field, v), field.currentIndexChanged
    if isinstance(field, QLineEdit):
        return field.text, lambda v: field.setText(str(v)), field.textChanged
    if hasattr(field, "set_text") and hasattr(field, "changed"):
        return field.text, lambda v: field.set_text(str(v)), field.changed
    if hasattr(field, "changed") and isinstance(getattr(type(field), "value", None), property):  # magicgui
        return lambda: field.value, lambda v: setattr(field, "value", v), field.changed
    if hasattr(field, "set_value") and hasattr(field, "value"):
        signal = getattr(field, "changed", None) or getattr(field, "currentIndexChanged", None)
        return field.value, field.set_value, signal
    raise TypeError(f"cannot remember a {type(field).__name__}: no known value accessors")


def _set_number(box: Any, value: float) -> None:
    if box.minimum() <= value <= box.maximum():
        box.setValue(value)


def _combo_value(box: Any) -> Any:
    data = box.currentData()
    return box.currentText() if data is None else data


def _set_combo(box: Any, value: Any) -> None:
    index = box.findData(value)
    if index < 0:
        index = box.findText(str(value))
    if index >= 0:
        box.setCurrentIndex(index)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class Remembered:
    """Fields of one widget bound to its saved settings."""

    def __init__(self, key: str, fields: dict[str, Any]):
        self.key = key
        self._fields = {name: (field, *_accessors(field)) for name, field in fields.items()}
        self._restoring = False

    def restore(self) -> list[str]:
        """Set the fields to their saved values; returns the names restored."""
        saved = load_settings(self.key)
        restored = []
        self._restoring = True
        try:
            for name, (_field, _get, set_, _signal) in self._fields.items():
                if name not in saved:
                    continue
                try:
                    set_(saved[name])
                except (TypeError, ValueError):
                    log.info("skipping saved %s.%s=%r: it no longer fits", self.key, name, saved[name])
                    continue
                restored.append(name)
        finally:
            self._restoring = False
        return restored

    def values(self) -> dict[str, Any]:
        return {name: _jsonable(get()) for name, (_field, get, _set, _signal) in self._fields.items()}

    def save(self) -> None:
        if not self._restoring:
            save_settings(self.key, self.values())

    def connect(self) -> None:
        # a partial, not the bound method: Qt holds bound methods weakly, and the binding must live as long
        # as the fields do even when the caller keeps no reference to it
        for _name, (_field, _get, _set, signal) in self._fields.items():
            if signal is not None:
                signal.connect(functools.partial(Remembered._changed, self))

    def _changed(self, *_args: Any) -> None:
        self.save()


def remember(key: str, fields: dict[str, Any]) -> Remembered:
    """Restore ``fields`` from the settings saved under ``key`` and save them whenever one changes."""
    bound = Remembered(key, fields)
    bound.restore()
    bound.connect()
    return bound
