"""Volume sources: the raw ``(Z, Y, X)`` arrays of segments in file order, read region by region.

A source is what :class:`~napari_vesuvius_pt.data.lazy_volume.LazyVolume` reads from. It has

- ``shape`` ``(Z, Y, X)``, ``dtype``, and ``storage`` (one line on how it is stored, for ``info``);
- ``read(zs, ys, xs)``: the layers ``zs`` (file indices, any order) of the in-plane slices ``ys``, ``xs``
  (``step`` 1), as a new ``(len(zs), ny, nx)`` array; it decodes no more than the strips, tiles or chunks
  the region falls in;
- pickling by path: it holds paths (or URLs) and opens files lazily, so a Segment can be sent to a
  DataLoader worker (started with spawn) and re-opens its files there.

Kinds here:

- :class:`TiffLayers`: one TIFF file per layer (Kaggle ``surface_volume/``, scroll ``layers/``);
  uncompressed layers are memory-mapped, compressed or tiled ones read through tifffile's zarr store;
- :class:`ArraySource`: any 3D array an *opener* returns: a multi-page TIFF (:class:`TiffOpener`), a zarr
  array (:class:`ZarrOpener`). Leading singleton axes (OME-Zarr ``t``, ``c``) are dropped.

Adding a source: for another array store write a picklable opener (``__call__`` returns an array with
``shape``, ``dtype``, ``chunks`` and numpy indexing) and build an ``ArraySource`` from it with
:func:`array_source`; for anything else subclass :class:`VolumeSource` and implement ``read``. Then teach
:func:`~napari_vesuvius_pt.data.segment.open_segment` / :func:`~napari_vesuvius_pt.data.layouts.locate` to
recognise its paths. The opener must pickle by value and re-open in a fresh process: DataLoader workers
are started with spawn, so a Segment travels to them as pickles of its sources and nothing opened
(file handles, sessions, event loops) may be in its state; open lazily in ``__call__``.

The worked example is :mod:`~napari_vesuvius_pt.data.remote`: ``RemoteZarrOpener(url, name, settings)``
holds a URL, the array's key in its group and the cache settings (plain values), and ``__call__`` opens
the zarr through the on-disk chunk cache; ``locate_url`` builds the ``Located`` with
:func:`~napari_vesuvius_pt.data.layouts.zarr_located` and ``array_source``; ``open_segment`` sends every
``https://`` / ``s3://`` path there (``remote.is_url``).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from napari_vesuvius_pt.data.chunk_cache import cached
from napari_vesuvius_pt.errors import SegmentError

TIFF_SUFFIXES = (".tif", ".tiff")


class VolumeSource:
    """A raw ``(Z, Y, X)`` array in file order. ``read(zs, ys, xs)`` returns ``(len(zs), ny, nx)``."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    storage: str  # how it is stored, for `info`

    def read(self, zs: Sequence[int], ys: slice, xs: slice) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------- TIFF


def open_tiff_array(path: Path, memmap: bool, series: int | None = None):
    """A TIFF's series as an array: memory-mapped when it is uncompressed and contiguous, else a zarr array
    over tifffile's store (decodes only the strips or tiles a read touches)."""
    import tifffile
    import zarr

    if memmap:
        return tifffile.memmap(path, mode="r", series=series or 0)
    store = tifffile.imread(path, aszarr=True, series=series or 0)
    return zarr.open(store, mode="r")


def _check_size(path: Path, tif, series, memmappable: bool) -> None:
    """SegmentError when the file is shorter than its TIFF header says (a cut download or copy): checked
    against the contiguous data's end, or the last page's strips/tiles (cheap: no pixel is read)."""
    size = path.stat().st_size
    if memmappable:
        end = int(series.dataoffset) + int(series.nbytes)
    else:
        page = series.pages[-1] if len(series.pages) else tif.pages[0]
        page = page.keyframe if page is None else page
        ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)]
        end = max(ends) if ends else 0
    if end > size:
        raise SegmentError(f"{path} is truncated: its TIFF header places image data up to byte {end} but the file "
                           f"has {size} bytes; re-copy or re-download it")


def tiff_info(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, str]:
    """(shape, dtype, memory-mappable, compression name) of a TIFF's first series; SegmentError for a
    file that is not a TIFF or is shorter than its header says."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            memmappable = series.dataoffset is not None
            if "S" in series.axes:
                raise SegmentError(f"{path} holds colour samples (axes {series.axes}); segment layers must be "
                                   "grayscale: convert them to single-channel TIFFs")
            _check_size(path, tif, series, memmappable)
            return tuple(series.shape), np.dtype(series.dtype), memmappable, page.compression.name.lower()
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as exc:
        raise SegmentError(f"{path} is not a readable TIFF image ({exc})") from None


def layer_files(layer_dir: Path) -> list[Path]:
    """Numbered TIFF layers 0..N-1 in order; SegmentError for gaps, strays and an empty folder."""
    numbered: dict[int, Path] = {}
    for p in sorted(layer_dir.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in TIFF_SUFFIXES:
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


class TiffLayers(VolumeSource):
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
                    arr = open_tiff_array(self.paths[i], self.memmappable[i])
                    self._open[i] = arr
        return arr

    def read(self, zs, ys, xs):
        out = np.empty((len(zs), ys.stop - ys.start, xs.stop - xs.start), dtype=self.dtype)
        for k, z in enumerate(zs):
            try:
                out[k] = self._layer(z)[ys, xs]
            except (SegmentError, MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise read_error(str(self.paths[z]), [z], ys, xs, exc) from None
        return out


def tiff_layers_source(layer_dir: Path) -> TiffLayers:
    """The numbered TIFF layers of ``layer_dir`` as one source; SegmentError when they do not stack."""
    paths = layer_files(layer_dir)
    shape0, dtype0, _, comp0 = tiff_info(paths[0])
    memmappable: list[bool] = []
    compression = comp0
    for p in paths:
        shape, dtype, mm, comp = tiff_info(p)
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
    return TiffLayers(paths, shape0, dtype0, memmappable, compression)  # type: ignore[arg-type]


# ---------------------------------------------------------------- 3D arrays (multi-page TIFF, zarr)


class ArraySource(VolumeSource):
    """A 3D array: a memory-mapped or tifffile-zarr multi-page TIFF, or a zarr array (path-based)."""

    def __init__(self, opener: Callable[[], Any], shape, dtype, storage: str, lead: int = 0):
        self._opener = opener  # a picklable callable returning the array
        self.shape = tuple(int(s) for s in shape[lead:])  # type: ignore[assignment]
        self.dtype = np.dtype(dtype)
        self.storage = storage
        self._lead = (0,) * lead  # leading singleton axes (OME-Zarr t, c)
        self.where = getattr(opener, "where", None) or storage  # the file or URL, in read errors
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
                if self._arr is None:  # chunked arrays read through the decoded-chunk cache
                    self._arr = cached(self._opener())
        return self._arr

    def read(self, zs, ys, xs):
        try:
            return self._read(zs, ys, xs)
        except (SegmentError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            zs = list(zs)
            raise read_error(self.where, zs, ys, xs, exc, self._chunks()) from None

    def _chunks(self) -> tuple[int, ...] | None:
        chunks = getattr(self._arr, "chunks", None)
        try:
            return tuple(int(c) for c in chunks)[len(self._lead):] if chunks is not None else None
        except (TypeError, ValueError):
            return None

    def _read(self, zs, ys, xs):
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


def read_error(where: str, zs: Sequence[int], ys: slice, xs: slice, exc: BaseException,
               chunks: tuple[int, ...] | None = None) -> SegmentError:
    """A read that failed (a damaged chunk, a truncated file, a lost connection) as one line naming the file
    or array, the region (file layers and pixels) and, for chunked arrays, the chunks it falls in."""
    zs = list(zs)
    lo, hi = min(zs), max(zs)
    region = (f"layers {lo}..{hi}, rows {ys.start}..{ys.stop - 1}, columns {xs.start}..{xs.stop - 1}")
    chunk = ""
    if chunks and len(chunks) == 3:
        cz, cy, cx = chunks
        span = [(lo // cz, hi // cz), (ys.start // cy, (ys.stop - 1) // cy), (xs.start // cx, (xs.stop - 1) // cx)]
        chunk = ", chunk indices " + ", ".join(f"{axis} {a}" if a == b else f"{axis} {a}..{b}"
                                              for axis, (a, b) in zip("zyx", span))
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return SegmentError(f"cannot read {where} ({region}{chunk}): {type(exc).__name__}: {detail[:200]}; the file may "
                        "be damaged or truncated: re-copy, re-download or re-convert it")


class TiffOpener:
    def __init__(self, path: Path, memmap: bool, series: int | None = None):
        self.path, self.memmap, self.series = path, memmap, series
        self.where = str(path)

    def __call__(self):
        return open_tiff_array(self.path, self.memmap, self.series)


class ZarrOpener:
    """The zarr array at ``path`` (``name``: the array's key inside the group at ``path``)."""

    def __init__(self, path: Path, name: str | None):
        self.path, self.name = path, name
        self.where = f"{path}/{name}" if name else str(path)

    def __call__(self):
        import zarr

        from napari_vesuvius_pt.data.tensorstore_array import open_local_zarr

        fast = open_local_zarr(self.path, self.name)  # tensorstore when installed (bench_tile_read.py)
        if fast is not None:
            return fast
        node = zarr.open(str(self.path), mode="r")
        return node if self.name is None else node[self.name]


def multipage_tiff_source(path: Path) -> ArraySource:
    """A multi-page TIFF of ``(z, y, x)`` grayscale layers; SegmentError for anything else."""
    shape, dtype, memmappable, comp = tiff_info(path)
    if len(shape) != 3:
        raise SegmentError(f"{path} holds an image of shape {shape}; a multi-page TIFF segment must be "
                           "(z, y, x) grayscale layers")
    storage = "multi-page TIFF, " + ("uncompressed (memory-mapped)" if memmappable else f"{comp} (read by strip/tile)")
    return ArraySource(TiffOpener(path, memmappable), shape, dtype, storage)


def array_source(opener: Callable[[], Any], arr: Any, label: str, where: str) -> ArraySource:
    """An ``ArraySource`` over ``arr`` (already opened, for its shape, chunks and compressors), re-opened by
    ``opener`` when read; ``label`` starts its storage line, ``where`` names it in errors."""
    shape = tuple(arr.shape)
    lead = len(shape) - 3
    if lead < 0 or any(s != 1 for s in shape[:lead]):
        raise SegmentError(f"zarr array {where} has shape {shape}; expected (z, y, x) (leading axes of size 1 allowed)")
    chunks = tuple(getattr(arr, "chunks", shape))[lead:]
    compressors = getattr(arr, "compressors", None)
    if compressors is None:  # zarr 2 (zarr 3 has `compressors`, empty when uncompressed; `compressor` raises)
        compressors = (getattr(arr, "compressor", None),)
    comp = ", ".join(type(c).__name__ for c in compressors if c is not None) or "uncompressed"
    storage = f"{label}, chunks {chunks}, {comp}"
    src = ArraySource(opener, shape, arr.dtype, storage, lead=lead)
    src.where = where
    return src


def zarr_source(path: Path, name: str | None, arr: Any, label: str) -> ArraySource:
    """The local zarr array ``arr`` (at ``path``, key ``name`` in its group) as a source."""
    where = f"{path}/{name}" if name else str(path)
    return array_source(ZarrOpener(path, name), arr, label, where)
