"""The plugin's docks share one tabbed panel, so all of them fit a 1000 px-high screen.

napari's Plugins menu adds a dock without ``tabify``: each new dock would split the right-hand column
again, and five of them push the window past the screen. ``tabify_on_show(widget)`` is called when a
plugin widget is first shown in its dock: if another of the plugin's docks is in the same area (their
widgets' object names start with ``vesuvius-``), the new dock joins it as a tab and is raised.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

PREFIX = "vesuvius-"


def _dock_of(widget: QWidget) -> QDockWidget | None:
    w = widget.parent()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parent()
    return w


def _is_ours(dock: QDockWidget) -> bool:
    inner = dock.widget()
    if inner is None:
        return False
    found = [inner] + inner.findChildren(QWidget)
    return any(w.objectName().startswith(PREFIX) for w in found[:50])


def tabify_now(widget: QWidget) -> bool:
    """Put ``widget``'s dock into a tab beside another of the plugin's docks; True when it did."""
    dock = _dock_of(widget)
    if dock is None or dock.isFloating():
        return False
    window = dock.parent()
    if not isinstance(window, QMainWindow):
        return False
    area = window.dockWidgetArea(dock)
    for other in window.findChildren(QDockWidget):
        if other is dock or other.isFloating() or not other.isVisible() or window.dockWidgetArea(other) != area:
            continue
        if not _is_ours(other):
            continue
        if dock in window.tabifiedDockWidgets(other):
            return True
        window.tabifyDockWidget(other, dock)
        dock.show()
        dock.raise_()
        return True
    return False


def tabify_on_show(widget: QWidget) -> None:
    """Tabify once, after the dock has been placed (the next turn of the event loop)."""
    if getattr(widget, "_vesuvius_tabified", False):
        return
    widget._vesuvius_tabified = True
    QTimer.singleShot(0, lambda: _safe(widget))


def _safe(widget: QWidget) -> None:
    try:
        tabify_now(widget)
    except RuntimeError:  # the widget was deleted before the timer fired
        pass
