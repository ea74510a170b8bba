"""A form built by magicgui from a config dataclass: one typed field per dataclass field.

The field's type picks the widget (bool: check box, int: spin box, float: decimal spin box, a Literal:
combo box); its default, help text and range come from the dataclass (``config.knob``), so the form,
the YAML config and the CLI never disagree about a setting. ``value()`` is a new dataclass instance:
the given base with the form's values in it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from magicgui.widgets import Container, create_widget
from magicgui.widgets.bases import ValueWidget

T = TypeVar("T")


def _step(low: float | None, high: float | None) -> float:
    if low is not None and high is not None and high - low <= 1:
        return 0.05
    return 1.0


class ConfigForm(Generic[T]):
    """The fields ``names`` (all, by default) of ``base``'s dataclass as magicgui widgets in a Container."""

    def __init__(self, base: T, names: Sequence[str] | None = None) -> None:
        if not dataclasses.is_dataclass(base) or isinstance(base, type):
            raise TypeError(f"ConfigForm needs a dataclass instance, got {base!r}")
        self.base = base
        hints = typing.get_type_hints(type(base))
        fields = {f.name: f for f in dataclasses.fields(base)}
        self.fields: dict[str, ValueWidget] = {}
        for name in names or list(fields):
            f = fields[name]
            options: dict[str, Any] = {}
            if f.metadata.get("help"):
                options["tooltip"] = f.metadata["help"]
            low, high = f.metadata.get("range", (None, None))
            if hints[name] in (int, float):
                if low is not None:
                    options["min"] = low
                if high is not None:
                    options["max"] = high
                options["step"] = 1 if hints[name] is int else _step(low, high)
            self.fields[name] = create_widget(value=getattr(base, name), annotation=hints[name], name=name,
                                              options=options)
        self.container = Container(widgets=list(self.fields.values()), labels=True)
        self.container.margins = (0, 0, 0, 0)

    @property
    def native(self) -> Any:
        """The Qt widget to put in a layout."""
        return self.container.native

    def value(self) -> T:
        return dataclasses.replace(self.base, **{name: w.value for name, w in self.fields.items()})

    def set_value(self, config: T) -> None:
        for name, w in self.fields.items():
            w.value = getattr(config, name)

    def remembered(self, prefix: str) -> dict[str, ValueWidget]:
        """The fields keyed for ``ui.settings.remember`` (``prefix.name``)."""
        return {f"{prefix}.{name}": w for name, w in self.fields.items()}
