"""Errors and news as napari notifications: the one place every widget reports through.

A ``VesuviusError`` is the user's to fix, so its message is shown as it is (it says what is wrong and what
to do). Anything else is a bug: it is shown with its type and logged with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from napari_vesuvius_pt.errors import VesuviusError

log = logging.getLogger(__name__)


def error_text(error: BaseException | str, where: str = "") -> str:
    """The line shown for ``error``: ``where: message`` (with the type for errors that are not a user's)."""
    if isinstance(error, str):
        message = error
    elif isinstance(error, VesuviusError):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    return f"{where}: {message}" if where else message


def notify_error(error: BaseException | str, where: str = "") -> str:
    """Show ``error`` as a napari error notification; returns the text shown."""
    from napari.utils.notifications import show_error

    text = error_text(error, where)
    if isinstance(error, BaseException) and not isinstance(error, VesuviusError):
        log.error(text, exc_info=error)
    show_error(text)
    return text


def notify_info(message: str, where: str = "") -> str:
    from napari.utils.notifications import show_info

    text = error_text(message, where)
    show_info(text)
    return text


@contextlib.contextmanager
def reporting_errors(where: str = "") -> Iterator[None]:
    """Run a block from a button or a signal: a ``VesuviusError`` becomes a notification instead of a
    traceback, and the widget goes on. Other exceptions propagate (they are bugs)."""
    try:
        yield
    except VesuviusError as exc:
        notify_error(exc, where)
