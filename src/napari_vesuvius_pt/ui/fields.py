"""Form pieces shared by the job widgets: a path with a Browse button, and a checkable list of paths."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_vesuvius_pt.naming import next_free

FILE, FOLDER, SAVE_FILE, FILE_OR_FOLDER = "file", "folder", "save-file", "file-or-folder"
_NARROW = "QAbstractSpinBox { min-width: 44px; }"  # napari's theme asks 90 px, too wide for three in a row


def _ask(parent: QWidget, mode: str, title: str, filter_: str, start: str) -> str:
    if mode == FOLDER:
        return QFileDialog.getExistingDirectory(parent, title, start)
    if mode == SAVE_FILE:
        return QFileDialog.getSaveFileName(parent, title, start, filter_)[0]
    return QFileDialog.getOpenFileName(parent, title, start, filter_)[0]


class PathField(QWidget):
    """A line edit for a path with a Browse button (file, folder, or a menu offering both)."""

    changed = Signal(str)

    def __init__(self, mode: str = FILE, placeholder: str = "", filter_: str = "", title: str = "Choose",
                 suggestions: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode = mode
        self._filter = filter_
        self._title = title
        self.combo: QComboBox | None = None
        if suggestions:  # an editable combo: type a path, or pick one of the loaded segments
            self.combo = QComboBox(self)
            self.combo.setEditable(True)
            self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
            self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            self.combo.setMinimumContentsLength(12)
            self.edit = self.combo.lineEdit()
        else:
            self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(placeholder)
        self.edit.textChanged.connect(self.changed.emit)
        self.button = QToolButton(self)
        self.button.setText("…")
        self.button.setToolTip("Browse")
        if mode == FILE_OR_FOLDER:
            menu = QMenu(self.button)
            menu.addAction("File…", lambda: self._browse(FILE))
            menu.addAction("Folder…", lambda: self._browse(FOLDER))
            self.button.setMenu(menu)
            self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
            self.button.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0px; }")
        else:
            self.button.clicked.connect(lambda: self._browse(mode))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo if self.combo is not None else self.edit, 1)
        layout.addWidget(self.button)

    def set_suggestions(self, entries: Iterable[tuple[str, str]]) -> None:
        """Offer ``(path, label)`` pairs in the drop-down (the typed text stays as it is)."""
        if self.combo is None:
            return
        text = self.text()
        self.combo.blockSignals(True)
        self.combo.clear()
        for path, label in entries:
            self.combo.addItem(str(path))
            self.combo.setItemData(self.combo.count() - 1, label, Qt.ItemDataRole.ToolTipRole)
        self.combo.setCurrentIndex(-1)
        self.edit.setText(text)
        self.combo.blockSignals(False)

    def suggestions(self) -> list[str]:
        if self.combo is None:
            return []
        return [self.combo.itemText(i) for i in range(self.combo.count())]

    def _browse(self, mode: str) -> None:
        chosen = _ask(self, mode, self._title, self._filter, self.text() or str(Path.home()))
        if chosen:
            self.set_text(chosen)

    def text(self) -> str:
        return self.edit.text().strip()

    def set_text(self, text: str) -> None:
        self.edit.setText(str(text))

    def setToolTip(self, tip: str) -> None:  # noqa: N802 (Qt naming)
        self.edit.setToolTip(tip)
        super().setToolTip(tip)


class PathList(QWidget):
    """Paths with check boxes (which ones the job uses), an Add button and a Remove button.

    Entries can be offered from elsewhere (the Segments widget's registry) with ``offer``; a user adds
    more with the Add button.
    """

    changed = Signal()

    def __init__(self, mode: str = FOLDER, title: str = "Add", filter_: str = "", checkable: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode = mode
        self._title = title
        self._filter = filter_
        self._checkable = checkable
        self.list = QListWidget(self)
        self.list.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.list.setMaximumHeight(80)
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.itemChanged.connect(lambda _item: self.changed.emit())
        self.add_button = QPushButton("Add…", self)
        self.remove_button = QPushButton("Remove", self)
        if mode == FILE_OR_FOLDER:
            menu = QMenu(self.add_button)
            menu.addAction("File…", lambda: self._browse(FILE))
            menu.addAction("Folder…", lambda: self._browse(FOLDER))
            self.add_button.setMenu(menu)
        else:
            self.add_button.clicked.connect(lambda: self._browse(mode))
        self.remove_button.clicked.connect(self._remove_selected)
        buttons = QVBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

    def _browse(self, mode: str) -> None:
        chosen = _ask(self, mode, self._title, self._filter, str(Path.home()))
        if chosen:
            self.add(chosen)

    def _find(self, path: str) -> QListWidgetItem | None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == path:
                return item
        return None

    def add(self, path: str | Path, checked: bool = True, label: str | None = None) -> None:
        """Add ``path`` (or re-check it when it is already listed)."""
        path = str(path)
        item = self._find(path)
        if item is None:
            item = QListWidgetItem(label or path)
            item.setData(Qt.ItemDataRole.UserRole, path)
            item.setToolTip(path)
            if self._checkable:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            self.list.addItem(item)
        if self._checkable:
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.changed.emit()

    def offer(self, entries: Iterable[tuple[str, str]], checked: bool = False) -> None:
        """Offer ``(path, label)`` pairs (ticked or not), keeping what is already listed as it is."""
        for path, label in entries:
            if self._find(str(path)) is None:
                self.add(path, checked=checked, label=label)

    def _remove_selected(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self.changed.emit()

    def clear(self) -> None:
        self.list.clear()
        self.changed.emit()

    def paths(self, checked_only: bool = True) -> list[str]:
        out = []
        for i in range(self.list.count()):
            item = self.list.item(i)
            if checked_only and self._checkable and item.checkState() != Qt.CheckState.Checked:
                continue
            out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    def all_paths(self) -> list[str]:
        return self.paths(checked_only=False)


def spin(minimum: int, maximum: int, value: int, tip: str = "", suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setButtonSymbols(QSpinBox.ButtonSymbols.NoButtons)  # napari's +/- buttons do not fit a dock row
    box.setStyleSheet(_NARROW)
    box.setRange(minimum, maximum)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    if tip:
        box.setToolTip(tip)
    return box


def dspin(minimum: float, maximum: float, value: float, decimals: int = 3, step: float = 0.1,
          tip: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
    box.setStyleSheet(_NARROW)
    box.setDecimals(decimals)
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    if tip:
        box.setToolTip(tip)
    return box


def combo(items, value: str | None = None, tip: str = "") -> QComboBox:
    box = QComboBox()
    for item in items:
        box.addItem(str(item), item)
    if value is not None:
        box.setCurrentIndex(max(0, box.findData(value)))
    if tip:
        box.setToolTip(tip)
    return box


def hrow(*widgets: QWidget | str) -> QWidget:
    """Widgets (and short labels) side by side, as one form field."""
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        if isinstance(w, str):
            label = QLabel(w)
            label.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Preferred)
            layout.addWidget(label)
        else:
            w.setMinimumWidth(40)
            layout.addWidget(w, 1)
    return holder


def next_free_folder(path: str | Path) -> Path:
    """``path`` if it holds no run yet, else ``path-2``, ``path-3``, … (a new run never overwrites one)."""
    path = Path(path)

    def used(p: Path) -> bool:
        return (p / "last.pt").exists() or (p / "checkpoints").is_dir() and any((p / "checkpoints").iterdir())

    if not used(path):
        return path
    return path.with_name(next_free(path.name, lambda name: used(path.with_name(name))))
