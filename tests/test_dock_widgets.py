"""Every dock as the Plugins menu opens it (``add_plugin_dock_widget``, without tabify): they share one
tabbed panel, so all of them fit a 1000 px-high window."""

from __future__ import annotations

PLUGIN = "napari-vesuvius-pt"
DOCKS = ("Segments", "Pretrain", "Fine-tune", "Predict & compare", "CKA", "Embedding explorer")


def test_all_docks_open_from_the_plugins_menu_as_tabs_of_one_panel(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    docks = []
    for name in DOCKS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert type(widget.viewer).__name__ == "PublicOnlyProxy"
        docks.append(dock)
        qtbot.wait(20)
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(docks[0])) == len(DOCKS) - 1, timeout=5000)
    ours = [d for d in window.findChildren(QDockWidget) if d in docks]
    assert len(ours) == len(DOCKS)
    assert window.height() <= 1000
    # one panel: the shown tab (the last dock opened, raised) fits inside the window
    shown = [d for d in docks if d.geometry().top() >= 0]
    assert shown == [docks[-1]] and 0 < shown[0].geometry().bottom() <= window.height()
