"""The warm-up a job dock starts when it opens: the engine imported and the heap frozen off the GUI thread."""

from __future__ import annotations

import gc
import sys
import threading

from napari_vesuvius_pt.ui.warm_up import PLOT_FONTS, warm_up


def test_warm_up_imports_in_a_thread_once_and_freezes_the_heap(tmp_path, monkeypatch):
    (tmp_path / "vesuvius_warm_probe.py").write_text("import threading\nTHREAD = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        thread = warm_up("vesuvius_warm_probe", "vesuvius_no_such_module", PLOT_FONTS)
        assert thread is not None and thread.name == "vesuvius-warm-up"
        thread.join(60)
        probe = sys.modules["vesuvius_warm_probe"]
        assert probe.THREAD == "vesuvius-warm-up" != threading.current_thread().name
        assert "vesuvius_no_such_module" not in sys.modules  # a failing import is left to the job to report
        assert gc.get_freeze_count() > 0  # the long-lived objects skip the collector's full passes
        assert warm_up("vesuvius_warm_probe", PLOT_FONTS) is None  # done once a session
    finally:
        sys.modules.pop("vesuvius_warm_probe", None)
        gc.unfreeze()
