"""The segments loaded in one viewer, each with its role in the workflow; training widgets read it.

One registry per viewer (``registry_for(viewer)``). It is evented with psygnal (napari ships it):
``changed`` fires after every change; ``added`` / ``removed`` carry the entry; ``role_changed`` carries
the entry (with its new role) and the old role. Entries are keyed by the segment's resolved path: loading
a path again replaces its entry.

A widget that offers segments for a job reads ``registry.paths(role)`` and follows ``changed``::

    reg = registry_for(viewer)
    reg.changed.connect(lambda: my_list.offer((e.key, e.label) for e in reg.with_role(PRETRAIN)))

Each entry also records how the segment was opened (z range, reverse, downsample) and the normalization
chosen in the Segments widget, so a job can start from the same settings (``entry.data_config()``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from psygnal import Signal

from napari_vesuvius_pt.config import DataConfig
from napari_vesuvius_pt.data.remote import location_key
from napari_vesuvius_pt.errors import ConfigError

PRETRAIN = "pretraining segment"
TRAIN = "training fragment"
VALIDATION = "validation fragment"
ROLES = (PRETRAIN, TRAIN, VALIDATION)
LABELED_ROLES = (TRAIN, VALIDATION)  # roles that need ink labels


path_key = location_key  # the registry's key of a segment path (data.remote.location_key)


@dataclass(frozen=True)
class LoadedSegment:
    """One loaded segment: where it is, how it was opened, its role and the layers that show it."""

    path: Path
    name: str
    role: str
    shape: tuple[int, int, int]  # (z, y, x) after z range, reverse and downsample
    dtype: str
    z_range: tuple[int, int]
    reverse: bool = False
    downsample: int = 1
    normalization: str = "kaggle"
    normalization_params: dict[str, float] = field(default_factory=dict)
    has_mask: bool = False
    has_inklabels: bool = False
    layer_names: tuple[str, ...] = ()
    fmt: str = ""

    @property
    def key(self) -> str:
        return path_key(self.path)

    @property
    def label(self) -> str:
        """A short description for lists: ``name (z × y × x, role)``."""
        z, y, x = self.shape
        return f"{self.name} ({z}×{y}×{x}, {self.role})"

    def data_config(self, base: DataConfig | None = None) -> DataConfig:
        """``base`` (or the defaults) with this segment's z range, reverse, downsample and normalization."""
        base = base or DataConfig()
        return replace(base, z_range=list(self.z_range), reverse=self.reverse, downsample=self.downsample,
                       normalization=self.normalization, normalization_params=dict(self.normalization_params))


def check_role(role: str, has_inklabels: bool, name: str = "this segment") -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    if role in LABELED_ROLES and not has_inklabels:
        raise ConfigError(f"{name} has no ink labels, so it cannot be a {role}; give it ink labels "
                          f"(inklabels.png beside its layers) or use it as a {PRETRAIN}")


class SegmentRegistry:
    """The loaded segments of one viewer, in the order they were loaded."""

    changed = Signal()
    added = Signal(object)  # LoadedSegment
    removed = Signal(object)  # LoadedSegment
    role_changed = Signal(object, str)  # LoadedSegment (new role), old role

    def __init__(self) -> None:
        self._entries: dict[str, LoadedSegment] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LoadedSegment]:
        return iter(list(self._entries.values()))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, Path)) and path_key(path) in self._entries

    def get(self, path: str | Path) -> LoadedSegment | None:
        return self._entries.get(path_key(path))

    def name_of(self, path: str | Path) -> str:
        """The name the engine knows the segment at ``path`` by: its entry's, else the folder's (nothing
        is opened, so this is safe on the GUI thread)."""
        entry = self.get(path)
        return entry.name if entry is not None else Path(str(path).rstrip("/")).name

    def add(self, entry: LoadedSegment) -> LoadedSegment:
        """Add ``entry``, replacing the entry of the same path if there is one; ConfigError for a role the
        segment cannot have."""
        check_role(entry.role, entry.has_inklabels, entry.name)
        old = self._entries.pop(entry.key, None)
        if old is not None:
            self.removed.emit(old)
        self._entries[entry.key] = entry
        self.added.emit(entry)
        self.changed.emit()
        return entry

    def remove(self, path: str | Path) -> LoadedSegment | None:
        entry = self._entries.pop(path_key(path), None)
        if entry is not None:
            self.removed.emit(entry)
            self.changed.emit()
        return entry

    def set_role(self, path: str | Path, role: str) -> LoadedSegment:
        key = path_key(path)
        entry = self._entries.get(key)
        if entry is None:
            raise ConfigError(f"{path} is not loaded; load it in the Segments widget first")
        check_role(role, entry.has_inklabels, entry.name)
        if role == entry.role:
            return entry
        new = replace(entry, role=role)
        self._entries[key] = new
        self.role_changed.emit(new, entry.role)
        self.changed.emit()
        return new

    def clear(self) -> None:
        for key in list(self._entries):
            self.remove(key)

    def with_role(self, role: str) -> list[LoadedSegment]:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        return [e for e in self._entries.values() if e.role == role]

    def paths(self, role: str | None = None) -> list[str]:
        """Paths of the entries with ``role`` (all entries when None), as strings."""
        entries = self._entries.values() if role is None else self.with_role(role)
        return [str(e.path) for e in entries]


_REGISTRIES: dict[int, SegmentRegistry] = {}


def _unwrap(viewer: Any) -> Any:
    """The viewer itself behind napari's PublicOnlyProxy (plugin widgets may get a proxy each)."""
    while hasattr(type(viewer), "__wrapped__") or "__wrapped__" in type(viewer).__dict__:
        viewer = viewer.__wrapped__
    return viewer


def registry_for(viewer: Any) -> SegmentRegistry:
    """The registry of ``viewer`` (created on first use); it lives as long as the viewer."""
    viewer = _unwrap(viewer)
    key = id(viewer)
    registry = _REGISTRIES.get(key)
    if registry is None:
        registry = _REGISTRIES[key] = SegmentRegistry()
        weakref.finalize(viewer, _REGISTRIES.pop, key, None)
    return registry
