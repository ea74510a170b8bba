"""Segments on disk opened lazily: a ``(z, y, x)`` volume that reads only the tiles asked for, with
its mask, ink labels and infrared image.

Formats (``Segment.fmt``):

- ``kaggle-folder``: ``surface_volume/00.tif ...``, ``mask.png``, ``inklabels.png``, ``ir.png``;
- ``layers-folder``: ``layers/00.tif ...``, ``<id>_mask.png``, ``<id>_inklabels.png`` (scroll segments);
- ``tiff``: one multi-page TIFF (``<stem>_mask.png`` / ``<stem>_inklabels.png`` beside it, optional);
- ``zarr``: a zarr array, or a zarr group with a ``volume`` array and optional ``mask`` / ``inklabels`` /
  ``ir`` arrays (what ``vesuvius-pt convert`` writes);
- ``ome-zarr``: level 0 of the multiscales; the other levels are in ``Segment.levels`` for display.

Reading: uncompressed TIFF layers are memory-mapped (``tifffile.memmap``); compressed or tiled ones
are read through tifffile's zarr store, which decodes only the strips or tiles a read touches; zarr
reads only the chunks it touches. No read decodes more than the region asked for (plus the rest of
the strips/chunks it falls in).

Options applied at open time, in this order: ``z_range`` ([start, stop) in the file's layer indices),
``reverse`` (flip the depth axis of that range), ``downsample`` (integer in-plane factor).

Downsampling the volume is a block mean (like ``cv2.resize(..., INTER_AREA)`` at an integer factor),
not striding: striding aliases the fibre texture and keeps all the noise of the skipped pixels'
neighbours, while the mean is what a lower-resolution scan would have recorded. It stays lazy: a tile
of ``size`` pixels reads the ``size * factor`` pixels under it and nothing else. The plane shape is
``floor(shape / factor)``; the remainder rows/columns at the far edges are dropped. Mask and ink labels
are reduced by majority (a pixel is set when at least half of its block is), the IR image by block mean.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from napari_vesuvius_pt.errors import SegmentError

if TYPE_CHECKING:
    from napari_vesuvius_pt.config import DataConfig

FORMATS = ("kaggle-folder", "layers-folder", "tiff", "zarr", "ome-zarr")
_TIFF_SUFFIXES = (".tif", ".tiff")
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_PARTIAL_SUFFIX = ".partial"


# ---------------------------------------------------------------- sources: raw (Z, Y, X) readers


class _Source:
    """A raw ``(Z, Y, X)`` array in file order. ``read(zs, ys, xs)`` returns ``(len(zs), ny, nx)``.

    Sources hold paths and open files lazily, so a Segment can be pickled to a DataLoader worker
    (started with spawn) and re-opens its files there.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    storage: str  # how it is stored, for `info`

    def read(self, zs: Sequence[int], ys: slice, xs: slice) -> np.ndarray:
        raise NotImplementedError


class _TiffLayers(_Source):
    """One TIFF file per layer."""

    def __init__(self, paths: list[Path], plane: tuple[int, int], dtype: np.dtype, memmappable: list[bool],
                 compression: str):
        self.paths = paths
        self.shape = (len(paths), *plane)
        self.dtype = np.dtype(dtype)
        self.memmappable = memmappable
        n_mm = sum(memmappable)
        if n_mm == len(paths):
            self.storage = f"{len(paths)} uncompressed TIFF layers (memory-mapped)"
        else:
            self.storage = f"{len(paths)} TIFF layers ({compression}; read by strip/tile)"
        self._open: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _layer(self, i: int):
        arr = self._open.get(i)
        if arr is None:
            with self._lock:
                arr = self._open.get(i)
                if arr is None:
                    arr = _open_tiff_array(self.paths[i], self.memmappable[i])
                    self._open[i] = arr
        return arr

    def read(self, zs, ys, xs):
        out = np.empty((len(zs), ys.stop - ys.start, xs.stop - xs.start), dtype=self.dtype)
        for k, z in enumerate(zs):
            out[k] = self._layer(z)[ys, xs]
        return out


class _ArraySource(_Source):
    """A 3D array: a memory-mapped or tifffile-zarr multi-page TIFF, or a zarr array (path-based)."""

    def __init__(self, opener, shape, dtype, storage: str, lead: int = 0):
        self._opener = opener  # a picklable callable returning the array
        self.shape = tuple(int(s) for s in shape[lead:])  # type: ignore[assignment]
        self.dtype = np.dtype(dtype)
        self.storage = storage
        self._lead = (0,) * lead  # leading singleton axes (OME-Zarr t, c)
        self._arr = None
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arr"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def array(self):
        if self._arr is None:
            with self._lock:
                if self._arr is None:
                    self._arr = self._opener()
        return self._arr

    def read(self, zs, ys, xs):
        zs = list(zs)
        lo, hi = min(zs), max(zs) + 1
        if hi - lo <= 2 * len(zs):  # one read of the span (chunked stores decode each chunk once), then pick
            block = self.array[(*self._lead, slice(lo, hi), ys, xs)]
            if zs == list(range(lo, hi)):
                # a copy, never a read-only view into a memory map
                return np.array(block) if isinstance(block, np.memmap) else np.asarray(block)
            return np.asarray(block)[np.asarray(zs) - lo]
        out = np.empty((len(zs), ys.stop - ys.start, xs.stop - xs.start), dtype=self.dtype)
        for k, z in enumerate(zs):
            out[k] = self.array[(*self._lead, z, ys, xs)]
        return out


class _TiffOpener:
    def __init__(self, path: Path, memmap: bool, series: int | None = None):
        self.path, self.memmap, self.series = path, memmap, series

    def __call__(self):
        return _open_tiff_array(self.path, self.memmap, self.series)


class _ZarrOpener:
    def __init__(self, path: Path, name: str | None):
        self.path, self.name = path, name

    def __call__(self):
        import zarr

        node = zarr.open(str(self.path), mode="r")
        return node if self.name is None else node[self.name]


def _open_tiff_array(path: Path, memmap: bool, series: int | None = None):
    import tifffile
    import zarr

    if memmap:
        return tifffile.memmap(path, mode="r", series=series or 0)
    store = tifffile.imread(path, aszarr=True, series=series or 0)
    return zarr.open(store, mode="r")


# ---------------------------------------------------------------- the lazy volume


def _block_sum(a: np.ndarray, factor: int, dtype) -> np.ndarray:
    """Sum over ``factor x factor`` blocks of the last two axes (already trimmed to multiples of factor).

    ``factor**2`` strided adds: one pass over the data, several times faster than a reshape-sum.
    """
    total = None
    for i in range(factor):
        for j in range(factor):
            part = a[..., i::factor, j::factor]
            if total is None:
                total = part.astype(dtype)
            else:
                total += part
    return total


def _block_mean(region: np.ndarray, factor: int, dtype: np.dtype) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of the last two axes, in the raw dtype (rounded half up)."""
    if factor == 1:
        return region
    area = factor * factor
    if np.issubdtype(dtype, np.integer):
        acc = np.uint32 if (np.dtype(dtype).itemsize <= 2 and not np.issubdtype(dtype, np.signedinteger)
                            and area <= 65536) else np.int64
        total = _block_sum(region, factor, acc)
        return ((total + area // 2) // area).astype(dtype)
    return (_block_sum(region, factor, np.float64) / area).astype(dtype)


def _axis_index(key: Any, n: int, axis: str) -> tuple[np.ndarray, bool]:
    """Selected indices along one axis, and whether the axis is dropped (an integer key)."""
    if isinstance(key, (int, np.integer)):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
        return np.array([i % n]), True
    if isinstance(key, slice):
        return np.arange(*key.indices(n)), False
    raise TypeError(f"LazyVolume indices must be integers or slices, got {type(key).__name__} for axis {axis}")


class LazyVolume:
    """A ``(z, y, x)`` view of a segment after z range, reverse and downsampling. Indexing with integers
    and slices reads only what is asked; ``np.asarray(volume)`` reads everything (explicitly)."""

    def __init__(self, source: _Source, z_range: tuple[int, int], reverse: bool = False, downsample: int = 1):
        self.source = source
        self.z_range = (int(z_range[0]), int(z_range[1]))
        self.reverse = bool(reverse)
        self.downsample = int(downsample)
        _, h, w = source.shape
        self.shape = (self.z_range[1] - self.z_range[0], h // self.downsample, w // self.downsample)
        self.dtype = source.dtype

    ndim = 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        extra = (", reversed" if self.reverse else "") + (f", downsample {self.downsample}" if self.downsample > 1 else "")
        return f"LazyVolume(shape={self.shape}, dtype={self.dtype}, layers {self.z_range[0]}..{self.z_range[1]}{extra})"

    def file_layers(self, zs: Sequence[int]) -> list[int]:
        """File layer indices of the volume's layers ``zs``."""
        start, stop = self.z_range
        return [stop - 1 - z if self.reverse else start + z for z in zs]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3D volume: {len(key)}")
        key = key + (slice(None),) * (3 - len(key))
        (zi, zdrop), (yi, ydrop), (xi, xdrop) = (
            _axis_index(k, n, a) for k, n, a in zip(key, self.shape, "zyx"))
        out_shape = (len(zi), len(yi), len(xi))
        if 0 in out_shape:
            out = np.zeros(out_shape, dtype=self.dtype)
        else:
            f = self.downsample
            y0, y1 = int(yi.min()), int(yi.max()) + 1
            x0, x1 = int(xi.min()), int(xi.max()) + 1
            region = self.source.read(self.file_layers(zi.tolist()), slice(y0 * f, y1 * f), slice(x0 * f, x1 * f))
            out = _block_mean(region, f, self.dtype)
            if len(yi) != y1 - y0 or yi[0] != y0:
                out = out[:, yi - y0]
            if len(xi) != x1 - x0 or xi[0] != x0:
                out = out[:, :, xi - x0]
        drop = tuple(i for i, d in enumerate((zdrop, ydrop, xdrop)) if d)
        return out.squeeze(axis=drop) if drop else out

    def __array__(self, dtype=None, copy=None):
        arr = self[:, :, :]
        return arr if dtype is None else arr.astype(dtype)


# ---------------------------------------------------------------- masks and labels (PNG)

_PIL_LIMIT_LOCK = threading.Lock()


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG header, without decoding; None when it is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


@contextlib.contextmanager
def _pixel_limit_at_least(pixels: int):
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

    size = _png_size(path)
    pixels = size[0] * size[1] if size else 0
    try:
        with _pixel_limit_at_least(pixels), Image.open(path) as im:
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
    return _binarize(arr) if binary else arr


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


def _binarize(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr
    top = arr.max(initial=0)
    if top <= 1:
        return arr > 0
    if np.issubdtype(arr.dtype, np.integer):
        return arr >= (int(np.iinfo(arr.dtype).max) + 1) // 2
    return arr >= 0.5 * float(top)


def _reduce_majority(mask: np.ndarray, f: int, plane: tuple[int, int]) -> np.ndarray:
    if f == 1:
        return mask
    h, w = plane
    trimmed = mask[: h * f, : w * f].view(np.uint8)
    return _block_sum(trimmed, f, np.uint16 if f * f < 65536 else np.uint32) * 2 >= f * f


def _reduce_mean(img: np.ndarray, f: int, plane: tuple[int, int]) -> np.ndarray:
    if f == 1:
        return img
    h, w = plane
    return _block_mean(img[None, : h * f, : w * f], f, img.dtype)[0]


# ---------------------------------------------------------------- the segment


class Segment:
    """One segment as opened: a lazy volume after z range, reverse and downsample, with its 2D images."""

    def __init__(self, name: str, path: Path, fmt: str, volume: LazyVolume, mask: np.ndarray | None,
                 inklabels: np.ndarray | None, ir: np.ndarray | None, levels: list, storage: str,
                 attrs: dict | None = None):
        self.name = name
        self.path = Path(path)
        self.fmt = fmt
        self.volume = volume
        self.mask = mask
        self.inklabels = inklabels
        self.ir = ir
        self.levels = levels
        self.storage = storage  # e.g. "65 uncompressed TIFF layers (memory-mapped)" or zarr chunking
        self.attrs = dict(attrs or {})  # metadata stored with the segment (zarr attrs), else empty
        self._papyrus: np.ndarray | None = None

    @property
    def z_range(self) -> tuple[int, int]:
        return self.volume.z_range

    @property
    def reverse(self) -> bool:
        return self.volume.reverse

    @property
    def downsample(self) -> int:
        return self.volume.downsample

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.shape

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    def __repr__(self) -> str:
        parts = [f"{self.name!r}", self.fmt, f"shape={self.shape}", str(self.dtype), f"z {self.z_range[0]}..{self.z_range[1]}"]
        if self.reverse:
            parts.append("reversed")
        if self.downsample > 1:
            parts.append(f"downsample {self.downsample}")
        return f"Segment({', '.join(parts)})"

    def read_tile(self, z0: int, y: int, x: int, depth: int, size: int) -> np.ndarray:
        """A ``(depth, size, size)`` tile in the raw dtype. In-plane parts outside the volume are zeros
        (tiles at the edges); layers outside the volume are an error (a tile needs real layers)."""
        nz, h, w = self.shape
        if depth < 1 or size < 1:
            raise SegmentError(f"tile depth and size must be positive, got depth={depth}, size={size}")
        if z0 < 0 or z0 + depth > nz:
            raise SegmentError(
                f"{self.name}: a tile of {depth} layers from layer {z0} needs layers {z0}..{z0 + depth}, "
                f"but the volume has layers 0..{nz} (z range {self.z_range[0]}..{self.z_range[1]} of the file); "
                "use a smaller tile depth or a wider z range")
        y0, y1, x0, x1 = max(y, 0), min(y + size, h), max(x, 0), min(x + size, w)
        if y0 == y and x0 == x and y1 == y + size and x1 == x + size:
            return self.volume[z0:z0 + depth, y:y + size, x:x + size]
        tile = np.zeros((depth, size, size), dtype=self.dtype)
        if y0 < y1 and x0 < x1:
            tile[:, y0 - y:y1 - y, x0 - x:x1 - x] = self.volume[z0:z0 + depth, y0:y1, x0:x1]
        return tile

    def papyrus_mask(self) -> np.ndarray:
        """The mask, or all True when the segment has none."""
        if self.mask is not None:
            return self.mask
        if self._papyrus is None:
            self._papyrus = np.ones(self.shape[1:], dtype=bool)
        return self._papyrus


# ---------------------------------------------------------------- opening


def open_segment(path: str | Path, z_range: Sequence[int] | None = None, reverse: bool = False,
                 downsample: int = 1) -> Segment:
    """Open a segment lazily (see the module docstring for formats and options); raises SegmentError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SegmentError(f"segment not found: {path}")
    factor = _check_downsample(downsample)
    if path.is_dir() and path.name in ("surface_volume", "layers") and not _is_zarr(path):
        path = path.parent  # the user picked the layers folder itself
    if path.name.endswith(_PARTIAL_SUFFIX):
        raise SegmentError(f"{path} is a half-written conversion or segment (it ends in {_PARTIAL_SUFFIX}); "
                           "run the conversion again")
    if path.is_dir():
        if (path / "surface_volume").is_dir():
            return _open_folder(path, path / "surface_volume", "kaggle-folder", z_range, reverse, factor)
        if (path / "layers").is_dir():
            return _open_folder(path, path / "layers", "layers-folder", z_range, reverse, factor)
        if _is_zarr(path):
            return _open_zarr(path, z_range, reverse, factor)
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise SegmentError(f"folder {path} is empty: expected a segment folder with surface_volume/ or layers/ "
                               "of numbered TIFF layers, a multi-page TIFF, or a zarr")
        raise SegmentError(f"folder {path} is not a segment: it has no surface_volume/ or layers/ folder and is not "
                           "a zarr (no zarr.json, .zarray or .zgroup)")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return _open_multipage_tiff(path, z_range, reverse, factor)
    raise SegmentError(f"{path} is not a supported segment: open a folder with surface_volume/ or layers/, "
                       "a multi-page .tif/.tiff, or a .zarr")


def open_from_config(path: str | Path, data: "DataConfig") -> Segment:
    """Open ``path`` with a run's data options (z range, reverse, downsample)."""
    return open_segment(path, z_range=data.z_range, reverse=data.reverse, downsample=data.downsample)


def _check_downsample(downsample: Any) -> int:
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample < 1:
        raise SegmentError(f"downsample must be a whole number >= 1 (an in-plane factor), got {downsample!r}")
    return int(downsample)


def _check_z_range(z_range: Sequence[int] | None, n_layers: int, where: Path) -> tuple[int, int]:
    if z_range is None:
        return 0, n_layers
    try:
        start, stop = (int(v) for v in z_range)
        if any(float(v) != int(v) for v in z_range):
            raise ValueError
    except (TypeError, ValueError):
        raise SegmentError(f"z_range must be two whole numbers [start, stop), got {z_range!r}") from None
    if not 0 <= start < stop <= n_layers:
        raise SegmentError(f"z_range [{start}, {stop}) is outside the {n_layers} layers of {where} "
                           f"(need 0 <= start < stop <= {n_layers})")
    return start, stop


def _is_zarr(path: Path) -> bool:
    return any((path / m).is_file() for m in _ZARR_MARKERS)


def _layer_files(layer_dir: Path) -> list[Path]:
    """Numbered TIFF layers 0..N-1 in order; SegmentError for gaps, strays and an empty folder."""
    numbered: dict[int, Path] = {}
    for p in sorted(layer_dir.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in _TIFF_SUFFIXES:
            raise SegmentError(f"unexpected file {p.name} in {layer_dir}: a layer folder holds only numbered TIFF "
                               "layers (00.tif, 01.tif, ...); move it elsewhere")
        if not re.fullmatch(r"\d+", p.stem):
            raise SegmentError(f"layer file {p.name} in {layer_dir} is not numbered (expected names like 00.tif)")
        n = int(p.stem)
        if n in numbered:
            raise SegmentError(f"layer {n} appears twice in {layer_dir}: {numbered[n].name} and {p.name}")
        numbered[n] = p
    if not numbered:
        raise SegmentError(f"no layer files in {layer_dir}: expected numbered TIFF layers 00.tif, 01.tif, ...")
    last = max(numbered)
    missing = [i for i in range(last + 1) if i not in numbered]
    if missing:
        width = len(next(iter(numbered.values())).stem)
        shown = ", ".join(f"{i:0{width}d}.tif" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SegmentError(f"missing layer file(s) {shown} in {layer_dir}: layers must be numbered 0..{last} "
                           "without gaps")
    return [numbered[i] for i in range(last + 1)]


def _tiff_info(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, str]:
    """(shape, dtype, memory-mappable, compression name) of a TIFF's first series."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            memmappable = series.dataoffset is not None
            if "S" in series.axes:
                raise SegmentError(f"{path} holds colour samples (axes {series.axes}); segment layers must be "
                                   "grayscale: convert them to single-channel TIFFs")
            return tuple(series.shape), np.dtype(series.dtype), memmappable, page.compression.name.lower()
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as exc:
        raise SegmentError(f"{path} is not a readable TIFF image ({exc})") from None


def _open_folder(folder: Path, layer_dir: Path, fmt: str, z_range, reverse: bool, factor: int) -> Segment:
    paths = _layer_files(layer_dir)
    shape0, dtype0, _, comp0 = _tiff_info(paths[0])
    memmappable: list[bool] = []
    compression = comp0
    for p in paths:
        shape, dtype, mm, comp = _tiff_info(p)
        if len(shape) != 2:
            raise SegmentError(f"layer {p} has shape {shape}; each layer must be one 2D grayscale image")
        if shape != shape0:
            raise SegmentError(f"layers of different shapes in {layer_dir}: {paths[0].name} is {shape0[0]}x{shape0[1]} "
                               f"but {p.name} is {shape[0]}x{shape[1]}")
        if dtype != dtype0:
            raise SegmentError(f"layers of different types in {layer_dir}: {paths[0].name} is {dtype0} "
                               f"but {p.name} is {dtype}")
        memmappable.append(mm)
        if comp != "none":
            compression = comp
    source = _TiffLayers(paths, shape0, dtype0, memmappable, compression)
    if fmt == "kaggle-folder":
        images = {k: folder / f"{k}.png" for k in ("mask", "inklabels", "ir")}
    else:
        images = {k: _find_sidecar(folder, folder.name, k) for k in ("mask", "inklabels", "ir")}
    return _assemble(folder.name, folder, fmt, source, images, z_range, reverse, factor)


def _find_sidecar(folder: Path, stem: str, kind: str) -> Path | None:
    """``<stem>_<kind>.png``, else a single ``*_<kind>.png``, else ``<kind>.png``."""
    exact = folder / f"{stem}_{kind}.png"
    if exact.is_file():
        return exact
    candidates = sorted(p for p in folder.glob(f"*_{kind}.png") if not p.name.startswith("."))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise SegmentError(f"several {kind} images in {folder}: {', '.join(c.name for c in candidates)}; "
                           f"keep one, named {stem}_{kind}.png")
    plain = folder / f"{kind}.png"
    return plain if plain.is_file() else None


def _open_multipage_tiff(path: Path, z_range, reverse: bool, factor: int) -> Segment:
    shape, dtype, memmappable, comp = _tiff_info(path)
    if len(shape) != 3:
        raise SegmentError(f"{path} holds an image of shape {shape}; a multi-page TIFF segment must be "
                           "(z, y, x) grayscale layers")
    storage = "multi-page TIFF, " + ("uncompressed (memory-mapped)" if memmappable else f"{comp} (read by strip/tile)")
    source = _ArraySource(_TiffOpener(path, memmappable), shape, dtype, storage)
    images = {k: (path.parent / f"{path.stem}_{k}.png") for k in ("mask", "inklabels", "ir")}
    return _assemble(path.stem, path, "tiff", source, images, z_range, reverse, factor)


def _ome_multiscales(attrs: dict) -> list | None:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _zarr_source(path: Path, name: str | None, arr, fmt_label: str) -> _ArraySource:
    shape = tuple(arr.shape)
    lead = len(shape) - 3
    if lead < 0 or any(s != 1 for s in shape[:lead]):
        where = f"{path}/{name}" if name else str(path)
        raise SegmentError(f"zarr array {where} has shape {shape}; expected (z, y, x) (leading axes of size 1 allowed)")
    chunks = tuple(getattr(arr, "chunks", shape))[lead:]
    compressors = getattr(arr, "compressors", None) or ((getattr(arr, "compressor", None),) if getattr(arr, "compressor", None) else ())
    comp = ", ".join(type(c).__name__ for c in compressors if c is not None) or "uncompressed"
    storage = f"{fmt_label}, chunks {chunks}, {comp}"
    return _ArraySource(_ZarrOpener(path, name), shape, arr.dtype, storage, lead=lead)


def _open_zarr(path: Path, z_range, reverse: bool, factor: int) -> Segment:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise SegmentError(f"{path} is not a readable zarr ({type(exc).__name__}: {exc})") from None
    name = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    images: dict[str, Any] = {k: path.parent / f"{name}_{k}.png" for k in ("mask", "inklabels", "ir")}
    attrs = dict(node.attrs)
    if not hasattr(node, "shape"):  # a group
        group = node
        multiscales = _ome_multiscales(attrs)
        if multiscales is not None:
            datasets = [d["path"] for d in multiscales[0].get("datasets", [])]
            if not datasets:
                raise SegmentError(f"OME-Zarr {path} lists no datasets in its multiscales metadata")
            source = _zarr_source(path, datasets[0], group[datasets[0]], "OME-Zarr level 0")
            others = [_zarr_source(path, d, group[d], f"OME-Zarr level {i + 1}") for i, d in enumerate(datasets[1:])]
            fmt = "ome-zarr"
        elif "volume" in group:
            source = _zarr_source(path, "volume", group["volume"], "zarr")
            others = []
            fmt = "zarr"
        else:
            members = sorted(group.keys()) if hasattr(group, "keys") else []
            raise SegmentError(f"zarr group {path} has no 'volume' array and no OME-Zarr multiscales "
                               f"(members: {', '.join(members) or 'none'}); open the array itself")
        for kind in ("mask", "inklabels", "ir"):
            for key in (kind, f"labels/{kind}/0"):
                if key in group:
                    images[kind] = group[key]
                    break
        meta = attrs.get("napari_vesuvius_pt", {})
        if isinstance(meta, dict):
            if meta.get("complete") is False:
                raise SegmentError(f"{path} is an incomplete conversion (interrupted while writing); "
                                   "run the conversion again")
            name = meta.get("name", name)
    else:
        source = _zarr_source(path, None, node, "zarr")
        others = []
        fmt = "zarr"
    segment = _assemble(name, path, fmt, source, images, z_range, reverse, factor, attrs=attrs)
    for level in others:  # coarser levels for display, with the same z selection when their depth matches
        if level.shape[0] == source.shape[0] and level.shape[1] < segment.shape[1]:
            segment.levels.append(LazyVolume(level, segment.z_range, segment.reverse, 1))
    return segment


def _load_plane_image(ref: Any, kind: str) -> np.ndarray | None:
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
    return _binarize(arr) if binary else arr


def _assemble(name: str, path: Path, fmt: str, source: _Source, images: dict[str, Any], z_range, reverse: bool,
              factor: int, attrs: dict | None = None) -> Segment:
    n_layers, h, w = source.shape
    if h < factor or w < factor:
        raise SegmentError(f"downsample {factor} is larger than the layers of {path} ({h}x{w})")
    z = _check_z_range(z_range, n_layers, path)
    volume = LazyVolume(source, z, reverse, factor)
    plane = volume.shape[1:]
    loaded: dict[str, np.ndarray | None] = {}
    for kind in ("mask", "inklabels", "ir"):
        arr = _load_plane_image(images.get(kind), kind)
        if arr is not None and arr.shape != (h, w):
            where = images[kind] if isinstance(images[kind], Path) else f"{path} ({kind} array)"
            raise SegmentError(f"{kind} {where} is {arr.shape[0]}x{arr.shape[1]} but the layers are {h}x{w}; "
                               "the mask and labels must have the layers' size")
        loaded[kind] = arr
    mask = None
    if loaded["mask"] is not None:
        full = loaded["mask"]
        if not full.any():
            raise SegmentError(f"mask of {path} is empty (all zero): there is no papyrus to read; check the mask file")
        mask = _reduce_majority(full, factor, plane)
        if not mask.any():
            raise SegmentError(f"mask of {path} is empty after downsampling by {factor}; use a smaller factor")
    inklabels = None
    if loaded["inklabels"] is not None:
        inklabels = _reduce_majority(loaded["inklabels"], factor, plane).view(np.uint8)
    ir = None
    if loaded["ir"] is not None:
        ir = _reduce_mean(loaded["ir"], factor, plane)
    return Segment(name, path, fmt, volume, mask, inklabels, ir, [volume], source.storage, attrs)


def ink_fraction(segment: Segment) -> float | None:
    """Fraction of the papyrus (mask) that is ink; None without ink labels."""
    if segment.inklabels is None:
        return None
    papyrus = segment.papyrus_mask()
    n = int(papyrus.sum())
    return float(segment.inklabels[papyrus].sum()) / n if n else math.nan
