"""The "Segments" dock widget: open a segment with its z range, reverse, downsampling and normalization,
preview the normalized central layer, load it into the viewer with a role, and list what is loaded.

The list is the viewer's ``SegmentRegistry`` (``ui.segment_registry``), which the training widgets read.
Opening is lazy, but fitting a normalization and drawing the preview read samples of the volume, so they
run in a napari ``thread_worker``; a newer request makes older results stale (they are dropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledRangeSlider

from napari_vesuvius_pt._reader import layers_of_segment
from napari_vesuvius_pt.ui.layers import layers_showing, same_layer, show_only_segment
from napari_vesuvius_pt.config import NORMALIZATIONS
from napari_vesuvius_pt.data.display import display_limits
from napari_vesuvius_pt.data.remote import CACHE_ENV, CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE, configure, default_cache_dir, is_url
from napari_vesuvius_pt.data.preview import (
    PREVIEW_SIDE,
    OpenOptions,
    Preview,
    describe_normalized,
    make_preview,
    to_rgb8,
)
from napari_vesuvius_pt.errors import VesuviusError
from napari_vesuvius_pt.ui.fields import FILE_OR_FOLDER, FOLDER, PathField, combo, hrow, spin
from napari_vesuvius_pt.ui.notify import notify_error, reporting_errors
from napari_vesuvius_pt.ui.segment_registry import (
    PRETRAIN,
    ROLES,
    TRAIN,
    LoadedSegment,
    check_role,
    path_key,
    registry_for,
)
from napari_vesuvius_pt.ui.settings import load_settings, remember, save_settings

TITLE = "Segments"
COLUMNS = ("segment", "role")
SHORT_ROLE = {"pretraining segment": "pretrain", "training fragment": "train", "validation fragment": "validate"}


# ---------------------------------------------------------------- work done in a thread
# (the preview itself, Qt-free, is data.preview: OpenOptions, make_preview, to_rgb8, ...)


@dataclass
class _UserError:
    error: VesuviusError


def _user_errors_returned(func, *args: Any) -> Any:
    """``func(*args)``, or the ``VesuviusError`` it raised, wrapped and returned rather than raised (a worker
    treats a returned exception as raised, and napari would show a second notification with a traceback)."""
    try:
        return func(*args)
    except VesuviusError as exc:
        return _UserError(exc)


# ---------------------------------------------------------------- the widget


def _disconnecter(registry: Any, viewer: Any, refresh: Any, layer_removed: Any):
    """A slot for ``destroyed``: stop the registry and the viewer calling into a deleted widget."""

    def disconnect(*_args: Any) -> None:
        registry.changed.disconnect(refresh)
        try:
            viewer.layers.events.removed.disconnect(layer_removed)
        except (RuntimeError, TypeError, ValueError):  # the viewer went first
            pass

    return disconnect


class SegmentsWidget(QWidget):
    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("vesuvius-segments")  # ui.docks: the plugin's docks share one tabbed panel
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self._generation = 0  # newer requests make older preview results stale
        self._n_layers: int | None = None  # layers in the file at the current path
        self._preview: Preview | None = None
        self._requested: OpenOptions | None = None  # the options of the newest preview asked for
        self._role_chosen_by_user = False  # since the path changed
        self._suggesting_role = False
        self._load_requested = False  # Load was pressed before the preview for the options was ready
        self._workers: set[Any] = set()
        self._layers: dict[str, list[Any]] = {}  # registry key -> the layers shown for it

        # -- open
        self.path = PathField(FILE_OR_FOLDER, "segment folder, .tif, .zarr, https:// or s3:// URL",
                              title="Choose a segment")
        self.path.setToolTip("A Kaggle fragment folder (surface_volume/), a scroll segment folder (layers/), "
                             "a multi-page TIFF, or a zarr / OME-Zarr; also the https:// or s3:// URL of a "
                             "zarr / OME-Zarr (or of a layers folder on a server that lists files)")
        # -- the chunk cache of remote segments (data.remote), shared by all runs of this napari
        self._cache_env = {k: os.environ.get(k) for k in (CACHE_ENV, CACHE_SIZE_ENV)}  # restored when cleared
        self.cache = PathField(FOLDER, str(default_cache_dir()), title="Choose the chunk cache folder")
        self.cache.setToolTip("Remote segments (https://, s3://): where downloaded chunks are kept, shared by all "
                              f"runs (the CLI's --cache). Empty: ${CACHE_ENV}, else ~/.cache/vesuvius-pt")
        self.cache_size = QLineEdit()
        self.cache_size.setPlaceholderText(os.environ.get(CACHE_SIZE_ENV) or DEFAULT_CACHE_SIZE)
        self.cache_size.setToolTip("Cap of the chunk cache, e.g. 50G; least recently used chunks go first "
                                   "(the CLI's --cache-size)")
        self.info = QLabel("Choose a segment.")
        self.info.setWordWrap(True)
        # the layer window: superqt's labeled range slider, from the first layer read up to (not including)
        # the second handle's layer; its labels take typed values too
        self.z_window = QLabeledRangeSlider(Qt.Orientation.Horizontal)
        self.z_window.setRange(0, 1)
        self.z_window.setValue((0, 1))
        self.z_window.setToolTip("Layers to read: from the first handle's layer up to, not including, the second's")
        self.reverse = QCheckBox("reverse")
        self.reverse.setToolTip("Flip the depth axis: some published segments are stored reversed")
        self.downsample = spin(1, 16, 1, "In-plane downsampling factor (block mean); 2 halves the resolution")
        self.downsample.setPrefix("÷ ")
        self.normalization = combo(NORMALIZATIONS, "kaggle", "How layers become model input: see the preview")
        self.preview_image = QLabel()
        self.preview_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview_image.setMinimumHeight(120)
        self.preview_image.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.preview_text = QLabel("")
        self.preview_text.setWordWrap(True)
        self.role = combo(ROLES, PRETRAIN, "What the segment is for in the training widgets")
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Add the segment's layers to the viewer and to the list below")
        self.load_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        open_box = QGroupBox("Open")
        form = QFormLayout(open_box)
        form.addRow("path", self.path)
        form.addRow("", self.info)
        form.addRow("cache", hrow(self.cache, "max", self.cache_size))
        form.addRow("layers", self.z_window)
        form.addRow("downsample", hrow(self.downsample, self.reverse))
        form.addRow("normalize", self.normalization)
        form.addRow(self.preview_image)
        form.addRow(self.preview_text)
        form.addRow("role", self.role)
        form.addRow(self.load_button)
        form.addRow(self.status)

        # -- loaded segments
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(1, 112)  # the role combo box (column sizing ignores cell widgets)
        self.table.setMinimumHeight(120)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected segments and their layers")
        loaded_box = QGroupBox("Loaded segments")
        loaded = QVBoxLayout(loaded_box)
        loaded.addWidget(self.table)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.remove_button)
        loaded.addLayout(buttons)

        layout = QVBoxLayout(self)
        layout.addWidget(open_box)
        layout.addWidget(loaded_box)
        layout.addStretch(1)

        # -- behaviour
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self._request_preview)
        self.path.changed.connect(self._path_changed)
        self.cache.changed.connect(self._cache_changed)
        self.cache_size.textChanged.connect(self._cache_changed)
        self.downsample.valueChanged.connect(self._options_changed)
        self.z_window.valueChanged.connect(self._z_window_changed)
        self.reverse.toggled.connect(self._options_changed)
        self.normalization.currentIndexChanged.connect(self._options_changed)
        self.load_button.clicked.connect(self.load)
        self.role.currentIndexChanged.connect(self._role_changed)
        self.remove_button.clicked.connect(self.remove_selected)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.registry.changed.connect(self._refresh_table)
        self.viewer.layers.events.removed.connect(self._layer_removed)
        self.destroyed.connect(_disconnecter(self.registry, self.viewer, self._refresh_table, self._layer_removed))

        self.remembered = remember(TITLE, {"normalization": self.normalization, "downsample": self.downsample,
                                           "reverse": self.reverse, "cache": self.cache.edit,
                                           "cache_size": self.cache_size})
        last = load_settings(TITLE).get("path")
        if isinstance(last, str) and last and (is_url(last) or Path(last).exists()):
            self.path.set_text(last)
        self._refresh_table()

    # ---------------------------------------------------------------- options

    def showEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        from napari_vesuvius_pt.ui.docks import tabify_on_show

        tabify_on_show(self)
        super().showEvent(event)

    def options(self) -> OpenOptions:
        z_range = self.z_range() if self._n_layers else None
        return OpenOptions(self.path.text(), z_range, self.reverse.isChecked(), self.downsample.value(),
                           str(self.normalization.currentData()))

    def z_range(self) -> tuple[int, int]:
        """(start, stop) of the layer window, stop excluded (the config's ``z_range``)."""
        start, stop = (int(round(v)) for v in self.z_window.value())
        return start, stop

    def set_z_range(self, start: int, stop: int) -> None:
        self.z_window.setValue((int(start), int(stop)))

    def _set_z_limits(self, n_layers: int) -> None:
        self.z_window.blockSignals(True)
        self.z_window.setRange(0, n_layers)
        self.z_window.setValue((0, n_layers))
        self.z_window.blockSignals(False)

    def _z_window_changed(self, _value: tuple[int, int]) -> None:
        start, stop = self.z_range()
        if stop <= start:  # the handles met: keep at least one layer
            top = int(self.z_window.maximum())
            start, stop = (start, start + 1) if start < top else (top - 1, top)
            self.z_window.setValue((start, stop))  # re-enters with a valid window
            return
        self._options_changed()

    def _cache_changed(self, *_args: Any) -> None:
        """The cache fields become this process's defaults (what every run and worker reads)."""
        for key, value in self._cache_env.items():  # an empty field: back to the environment's value
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        try:
            configure(self.cache.text() or None, self.cache_size.text() or None)
        except VesuviusError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText("")

    def _role_changed(self, _index: int) -> None:
        if not self._suggesting_role:
            self._role_chosen_by_user = True

    def _path_changed(self, text: str) -> None:
        self._role_chosen_by_user = False
        self._n_layers = None
        self._preview = None
        self._load_requested = False
        self.load_button.setEnabled(bool(text.strip()))  # Load before the preview is ready loads when it is
        self.preview_image.clear()
        self.preview_text.setText("")
        if text.strip():
            save_settings(TITLE, {"path": text.strip()})
            self.info.setText("Reading…")
            self._debounce.start()
        else:
            self.info.setText("Choose a segment.")

    def _options_changed(self, *_args: Any) -> None:
        if self.path.text():
            self._debounce.start()

    # ---------------------------------------------------------------- background work

    def _start(self, func, *args, on_done) -> None:
        """Run ``func(*args)`` in a napari worker thread; ``on_done(result)`` in the GUI thread unless a newer
        request came meanwhile. A user error comes back as a value (one notification, ours); a bug goes to
        ``errored``, which napari reports with its traceback."""
        from napari.qt.threading import create_worker

        self._generation += 1
        generation = self._generation
        worker = create_worker(_user_errors_returned, func, *args, _start_thread=False, _connect={
            "returned": lambda result: self._finished(generation, result, on_done),
            "errored": lambda exc: self._failed(generation, exc, notify=False),
        })
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()

    @property
    def busy(self) -> bool:
        """Whether a preview or load is still being prepared."""
        return bool(self._workers) or self._debounce.isActive()

    @property
    def preview_is_current(self) -> bool:
        """Whether the preview shown is the one of the options as they are now."""
        return not self.busy and self._preview is not None and self._preview.options == self.options()

    def _request_preview(self) -> None:
        options = self.options()
        if not options.path:
            return
        self.status.setText("Preparing the preview…")
        self._requested = options
        self._start(make_preview, options, self._n_layers, on_done=self._show_preview)

    def _finished(self, generation: int, result: Any, on_done) -> None:
        if isinstance(result, _UserError):
            self._failed(generation, result.error)
        elif generation == self._generation:
            on_done(result)

    def _failed(self, generation: int, exc: BaseException, notify: bool = True) -> None:
        if generation != self._generation:
            return
        self._load_requested = False
        self.status.setText("")
        if self._preview is None:
            self.info.setText("Cannot open this path (see the notification).")
            self.preview_image.clear()
            self.preview_text.setText("")
        self.load_button.setEnabled(self._preview is not None)
        if notify:
            notify_error(exc, TITLE)

    def _show_preview(self, preview: Preview) -> None:
        segment = preview.segment
        if self._n_layers is None:  # first look at this path: all layers
            self._n_layers = preview.n_layers
            self._set_z_limits(preview.n_layers)
            if not self._role_chosen_by_user:  # suggest one, unless the user already chose
                self._suggesting_role = True
                self.role.setCurrentIndex(self.role.findData(TRAIN if segment.inklabels is not None else PRETRAIN))
                self._suggesting_role = False
            preview.options = self.options() if preview.options.z_range is None else preview.options
        self._preview = preview
        z, y, x = segment.shape
        has = ["mask" if segment.mask is not None else "no mask",
               "ink labels" if segment.inklabels is not None else "no ink labels"]
        self.info.setText(f"{segment.fmt} · {preview.n_layers} layers · {segment.dtype}\n"
                          f"read as {z}×{y}×{x} · {' · '.join(has)}")
        self.info.setToolTip(f"{segment.path}\n{segment.storage}")
        rgb = np.ascontiguousarray(to_rgb8(preview))
        h, w, _ = rgb.shape
        image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        pixmap = QPixmap.fromImage(image)
        if max(w, h) != PREVIEW_SIDE:  # enlarge small previews pixel by pixel, shrink large ones smoothly
            mode = (Qt.TransformationMode.FastTransformation if max(w, h) < PREVIEW_SIDE
                    else Qt.TransformationMode.SmoothTransformation)
            pixmap = pixmap.scaled(PREVIEW_SIDE, PREVIEW_SIDE, Qt.AspectRatioMode.KeepAspectRatio, mode)
        self.preview_image.setPixmap(pixmap)
        self.preview_image.setToolTip(f"normalized ({preview.normalizer.name}) layer {preview.layer}; "
                                      f"one preview pixel is {preview.factor}×{preview.factor} volume pixels")
        self.preview_text.setText(describe_normalized(preview))
        self.status.setText("")
        self.load_button.setEnabled(True)
        if self._load_requested and preview.options == self.options() and not self._debounce.isActive():
            self._load_requested = False
            self._add(preview)

    # ---------------------------------------------------------------- load and the list

    def load(self) -> None:
        """Add the segment, opened with the current options, to the viewer and the registry."""
        options = self.options()
        if self._preview is not None and self._preview.options == options and not self._debounce.isActive():
            self._add(self._preview)
            return
        if not options.path:
            notify_error("choose a segment first (a folder, .tif or .zarr)", TITLE)
            return
        self._load_requested = True  # added as soon as the preview for these options is ready
        self.load_button.setEnabled(False)
        if self._workers and self._requested == options and not self._debounce.isActive():
            return  # that preview is on its way
        self._debounce.stop()
        self._request_preview()

    def _add(self, preview: Preview) -> None:
        from napari.layers import Layer

        segment = preview.segment
        role = str(self.role.currentData())
        with reporting_errors(TITLE):
            entry = LoadedSegment(
                path=segment.path, name=segment.name, role=role, shape=tuple(segment.shape), dtype=str(segment.dtype),
                z_range=tuple(segment.z_range), reverse=segment.reverse, downsample=segment.downsample,
                normalization=preview.normalizer.name, normalization_params=dict(preview.normalizer.params),
                has_mask=segment.mask is not None, has_inklabels=segment.inklabels is not None, fmt=segment.fmt)
            check_role(role, entry.has_inklabels, segment.name)
            self._remove_layers(entry.key)
            for layer in layers_showing(self.viewer, segment.path):  # opened before (File › Open): same segment
                self.viewer.layers.remove(layer)
            limits = display_limits(preview.normalizer, segment.volume, segment.mask)
            layers = [self.viewer.add_layer(Layer.create(*data)) for data in layers_of_segment(segment, limits)]
            self._layers[entry.key] = layers
            entry = replace(entry, layer_names=tuple(layer.name for layer in layers))
            self.registry.add(entry)
            self.show_only(entry.path)
            self.status.setText(f"Loaded {segment.name} as a {role}.")

    def show_only(self, path: str | Path) -> None:
        """Show this segment's layers, hide the other loaded segments' (``ui.layers.show_only_segment``)."""
        show_only_segment(self.viewer, path, [e.path for e in self.registry])

    def _selection_changed(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        entries = list(self.registry)
        if len(rows) == 1 and rows[0] < len(entries):
            self.show_only(entries[rows[0]].path)

    def _remove_layers(self, key: str) -> None:
        for layer in self._layers.pop(key, []):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def _layer_removed(self, event: Any) -> None:
        """A segment whose volume layer the user deletes leaves the list too."""
        layer = event.value
        for key, layers in list(self._layers.items()):
            if layers and same_layer(layers[0], layer):
                self._layers.pop(key)
                self.registry.remove(key)

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True)
        entries = list(self.registry)
        for row in rows:
            if row < len(entries):
                key = entries[row].key
                self._remove_layers(key)
                self.registry.remove(key)

    def _refresh_table(self) -> None:
        entries = list(self.registry)
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            z, y, x = entry.shape
            has = [k for k, v in (("mask", entry.has_mask), ("ink", entry.has_inklabels)) if v]
            name = QTableWidgetItem(f"{entry.name}\n{z}×{y}×{x} · {' · '.join(has) or 'no mask'}")
            extra = f", layers {entry.z_range[0]}–{entry.z_range[1]}" + (", reversed" if entry.reverse else "")
            extra += f", ÷{entry.downsample}" if entry.downsample > 1 else ""
            name.setToolTip(f"{entry.path}\n{entry.fmt}{extra}, normalization {entry.normalization}")
            self.table.setItem(row, 0, name)
            role = QComboBox()
            for r in ROLES:
                role.addItem(SHORT_ROLE[r], r)
            role.setToolTip("The segment's role: " + ", ".join(ROLES))
            role.setCurrentIndex(role.findData(entry.role))
            role.currentIndexChanged.connect(lambda _i, box=role, key=entry.key: self._role_chosen(key, box))
            holder = QWidget()  # keeps the combo at its natural height in the taller two-line row
            cell = QVBoxLayout(holder)
            cell.setContentsMargins(2, 0, 2, 0)
            cell.addWidget(role)
            self.table.setCellWidget(row, 1, holder)
        self.table.resizeRowsToContents()

    def role_box(self, row: int) -> QComboBox:
        """The role combo box of the list's ``row``."""
        return self.table.cellWidget(row, 1).findChild(QComboBox)

    def _role_chosen(self, key: str, box: QComboBox) -> None:
        try:
            self.registry.set_role(key, str(box.currentData()))
        except VesuviusError as exc:
            notify_error(exc, TITLE)
            entry = self.registry.get(key)
            if entry is not None:
                box.blockSignals(True)
                box.setCurrentIndex(box.findData(entry.role))
                box.blockSignals(False)

    def entry_for(self, path: str | Path) -> LoadedSegment | None:
        return self.registry.get(path_key(path))
