"""2D images of a segment (mask, ink labels, IR): PNG files, or arrays stored with a zarr segment.

Masks and ink labels are read as bool: palette images go through their palette; 0/1 images (as Kaggle
ships them) and full-range 0/255 ones are both understood (see ``binarize``). The real Kaggle masks
(up to 14830 x 9506) are above Pillow's decompression-bomb limit: it is lifted for one known-size PNG
at a time, never for good.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.errors import SegmentError

_PIL_LIMIT_LOCK = threading.Lock()


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG header, without decoding; None when it is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


@contextlib.contextmanager
def pixel_limit_at_least(pixels: int):
    """Let Pillow open one known-size image above its decompression-bomb limit, restoring the limit after.

    The real Kaggle masks (up to 14830 x 9506) are above Pillow's default; raising the global for good
    would silently disable the check for every other image the process opens.
    """
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        if old is not None and pixels > old:
            Image.MAX_IMAGE_PIXELS = pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def read_image_2d(path: Path, what: str, binary: bool = False) -> np.ndarray:
    """A 2D grayscale image (IR) as a numpy array, or with ``binary`` a bool mask (mask, ink labels).

    Palette images go through their palette. Binary images may hold 0/1 (as Kaggle ships them) or use
    their full range (0/255): when any value is above 1 the threshold is half the range, so the
    anti-aliased edges of a resized 0/255 label fall on the right side.
    """
    from PIL import Image, UnidentifiedImageError

    size = png_size(path)
    pixels = size[0] * size[1] if size else 0
    try:
        with pixel_limit_at_least(pixels), Image.open(path) as im:
            if im.mode == "P":
                arr = _palette_image(im, binary)
            elif im.mode in ("1", "L", "I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im)
            else:  # RGB(A), LA, ...: the luminance
                arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SegmentError(f"{what} {path} is not a readable image ({exc}); expected an 8-bit PNG") from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - only for non-PNG giants
        raise SegmentError(f"{what} {path} is too large to read as an image: {exc}") from None
    if arr.ndim != 2:
        raise SegmentError(f"{what} {path} has shape {arr.shape}; expected a 2D grayscale image")
    return binarize(arr) if binary else arr


def _palette_image(im, binary: bool) -> np.ndarray:
    idx = np.asarray(im)
    palette = np.asarray(im.getpalette() or [], np.float64)
    gray = np.zeros(256)
    if palette.size >= 3:
        rgb = palette[: (palette.size // 3) * 3].reshape(-1, 3)[:256]
        gray[: len(rgb)] = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
    if not binary:
        return gray.astype(np.uint8)[idx]
    last = int(idx.max(initial=0))  # entries 0..last cover the used ones (a full count would cost seconds)
    top = gray[: last + 1].max()
    on = gray > 0 if top <= 1 else gray >= 128
    if not on[0] and on[1: last + 1].all():
        return idx != 0  # the usual case (index 0 black, the others set): no lookup over the image
    return on[idx]


def binarize(arr: np.ndarray) -> np.ndarray:
    """A mask or label image as bool: 0/1 images by ``> 0``; otherwise integers from half their dtype's
    range up, floats from half their maximum up."""
    if arr.dtype == bool:
        return arr
    top = arr.max(initial=0)
    if top <= 1:
        return arr > 0
    if np.issubdtype(arr.dtype, np.integer):
        return arr >= (int(np.iinfo(arr.dtype).max) + 1) // 2
    return arr >= 0.5 * float(top)


def load_plane_image(ref: Any, kind: str) -> np.ndarray | None:
    """The full-resolution image: bool for mask and labels, raw for IR; None when absent."""
    binary = kind != "ir"
    if ref is None:
        return None
    if isinstance(ref, Path):
        if not ref.is_file():
            return None
        return read_image_2d(ref, kind, binary=binary)
    arr = np.asarray(ref[...])  # a zarr array stored with the segment
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise SegmentError(f"{kind} array has shape {arr.shape}; expected a 2D (y, x) image")
    return binarize(arr) if binary else arr
