"""A matplotlib Qt canvas whose figure is laid out and rendered off the GUI thread.

Drawing a figure with Agg (text layout, constrained layout, the CKA heatmaps' cell numbers) takes
100 ms to over a second on a busy 2-core machine; matplotlib's own ``FigureCanvasQTAgg`` does it in
``paintEvent`` on the GUI thread, which froze the viewer while plots updated. Here every change to
the figure is a function queued with ``change(fn)``; one render thread (shared by all canvases) runs
the queued functions and renders the figure into an image, and the GUI thread only paints the
finished image. Changes that arrive while a render runs are coalesced into the next one.

All access to the figure outside ``change`` must hold ``canvas.lock`` (``drawn()`` does this for
readers), since the render thread may be using it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import QWidget
from superqt.utils import ensure_main_thread

log = logging.getLogger(__name__)

FigureChange = Callable[[Figure], None]

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vesuvius-plot-render")
        return _POOL


class BackgroundCanvas(FigureCanvasQTAgg):
    """``FigureCanvasQTAgg`` with ``draw_idle`` and every figure change done in a render thread."""

    def __init__(self, figure: Figure) -> None:
        super().__init__(figure)
        self.lock = threading.RLock()  # held while the figure is changed or rendered
        self._queue_lock = threading.Lock()
        self._pending: list[FigureChange | None] = []
        self._scheduled = False
        self._idle = threading.Event()
        self._idle.set()
        self._image: QImage | None = None
        self.render_threads: set[int] = set()  # the threads that rendered this canvas (for tests)
        self.renders = 0

    # ---------------------------------------------------------------- any thread

    def change(self, fn: FigureChange | None = None) -> None:
        """Run ``fn(figure)`` on the render thread, then render; returns at once."""
        with self._queue_lock:
            self._pending.append(fn)
            self._idle.clear()
            if self._scheduled:
                return
            self._scheduled = True
        _pool().submit(self._render)

    def draw_idle(self, *args, **kwargs) -> None:
        self.change(None)

    def wait_drawn(self, timeout: float = 30.0) -> bool:
        """Block until every queued change is applied and rendered (tests, exports); True if so."""
        return self._idle.wait(timeout)

    def _render(self) -> None:
        with self._queue_lock:
            todo, self._pending = self._pending, []
            self._scheduled = False
        try:
            with self.lock:
                for fn in todo:
                    if fn is not None:
                        fn(self.figure)
                rgba = self._agg_render()
            self.render_threads.add(threading.get_ident())
            self.renders += 1
            self._show(rgba)
        except Exception:  # a plot bug must not kill the render thread or the job
            log.exception("rendering a plot failed")
        finally:
            with self._queue_lock:
                if not self._pending and not self._scheduled:
                    self._idle.set()

    def _agg_render(self) -> np.ndarray:
        # FigureCanvasAgg.draw's work without its call up to FigureCanvasQT.draw, which would touch
        # the widget (``update()``) from this thread
        self.renderer = self.get_renderer()
        self.renderer.clear()
        self.figure.draw(self.renderer)
        return np.array(self.buffer_rgba(), copy=True)

    # ---------------------------------------------------------------- GUI thread

    @ensure_main_thread
    def _show(self, rgba: np.ndarray) -> None:
        h, w = rgba.shape[:2]
        image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        try:
            image.setDevicePixelRatio(self.device_pixel_ratio)
            self._image = image
            self.update()
        except RuntimeError:  # the widget was deleted while its last render ran
            pass

    def draw(self) -> None:
        """A synchronous render (matplotlib calls it for toolbar actions); the plots use ``change``."""
        with self.lock:
            rgba = self._agg_render()
        self._show(rgba)

    def paintEvent(self, event) -> None:
        if self._image is None:
            return
        painter = QPainter(self)
        try:
            painter.eraseRect(event.rect())
            painter.drawImage(0, 0, self._image)
        finally:
            painter.end()

    def resizeEvent(self, event) -> None:
        ratio = self.device_pixel_ratio
        width, height = event.size().width() * ratio, event.size().height() * ratio
        QWidget.resizeEvent(self, event)
        if width > 0 and height > 0:
            self.change(lambda fig: fig.set_size_inches(width / fig.dpi, height / fig.dpi, forward=False))
