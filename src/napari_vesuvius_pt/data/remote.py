"""Remote segments: zarr and OME-Zarr arrays or groups at ``https://`` and ``s3://`` URLs (anonymous
read), opened through fsspec (what zarr and ScrollPrize's ``vesuvius`` package use), with an on-disk
chunk cache shared by all runs and capped in size.

The cache. Every object zarr reads (metadata and chunks, as stored: compressed bytes) goes through
:class:`CachingStore`, a zarr store wrapper around zarr's own ``FsspecStore``:

- a hit is read from ``<cache>/<hash of the URL>/<key>`` and never touches the network; a miss is
  fetched once, then written atomically (a temporary file, then ``os.replace``), so an interrupted
  download leaves no half chunk: a rerun fetches what is missing and keeps what is there;
- objects the server does not have (chunks never written because they hold only the fill value) are
  remembered too (``<cache>/<hash>/.absent/<key>``), so a cached segment opens offline;
- the cache is capped (``--cache-size``, ``VESUVIUS_PT_CACHE_SIZE``, default 20G): past the cap, the
  least recently used files (a hit refreshes a file's modification time) are deleted until the cache
  is under 90 % of the cap. The cap is for the whole folder, all URLs together.

Why a store wrapper and not fsspec's ``filecache`` / ``simplecache``: those have no size cap (and
``filecache`` keeps a JSON index that concurrent runs rewrite), they cache whole files by the
filesystem path rather than zarr's keys, and they do not remember absent chunks, so an offline
re-open would still try the network. One cache file per zarr object, named by its key, also makes
``prefetch`` exact (it asks for exactly the keys of the chunks a region needs).

Where it is: ``--cache DIR`` on every command that takes a segment, else ``VESUVIUS_PT_CACHE``, else
``$XDG_CACHE_HOME/vesuvius-pt`` (``~/.cache/vesuvius-pt``). :func:`configure` sets the environment
variables, so DataLoader workers (spawned processes) use the same cache; the openers also carry the
values with them when pickled.

S3: anonymous reads (the Vesuvius Challenge bucket is public). Another endpoint (a local s3 server,
another provider) with ``--s3-endpoint URL`` or ``VESUVIUS_PT_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL``
(the variable botocore itself honours).

Metadata and chunks are cached as first read: a segment re-written on the server under the same URL needs
its cache folder deleted (``<cache>/<hash>/.url`` names the URL of each folder).

Layers folders over https (``.../layers/00.tif``, where the server lists files) are read through
fsspec's directory listing; each layer file is downloaded whole into the same cache on first use (a
TIFF layer has to be read whole or strip by strip; caching the file makes it memory-mappable).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

from napari_vesuvius_pt.errors import ConfigError, SegmentError

URL_SCHEMES = ("http", "https", "s3")
CACHE_ENV = "VESUVIUS_PT_CACHE"
CACHE_SIZE_ENV = "VESUVIUS_PT_CACHE_SIZE"
S3_ENDPOINT_ENV = "VESUVIUS_PT_S3_ENDPOINT"
DEFAULT_CACHE_SIZE = "20G"
ABSENT_DIR = ".absent"
URL_FILE = ".url"
TMP_MARK = ".tmp-"
COMPLETE_FILE = ".complete"
CONNECT_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 120.0


class RemoteError(SegmentError):
    """A remote segment cannot be read: unreachable host, access denied, not found, not a zarr, a download
    that broke off."""


# ---------------------------------------------------------------- URLs and settings


def is_url(path: Any) -> bool:
    """True for ``http://``, ``https://`` and ``s3://`` strings (what this module opens)."""
    if not isinstance(path, str):
        return False
    return re.match(r"^(https?|s3)://[^/]", path.strip(), flags=re.IGNORECASE) is not None


def location_key(path: str | Path) -> str:
    """What identifies a segment's location: a URL as written (without a trailing /), a path absolute
    and resolved; two spellings of one segment get one key."""
    if is_url(path):
        return str(path).strip().rstrip("/")
    p = Path(path).expanduser()
    try:
        return str(p.resolve())
    except OSError:
        return str(p.absolute())


def url_name(url: str) -> str:
    """The last path part of a URL without ``.zarr`` (the segment's name)."""
    part = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or urlsplit(url).netloc
    return part[: -len(".zarr")] if part.endswith(".zarr") else part


def parse_size(text: str | int) -> int:
    """``"20G"``, ``"500M"``, ``"1.5T"``, ``"4096"`` (bytes) into bytes; ConfigError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text), flags=re.IGNORECASE)
        if not m:
            raise ConfigError(f"cache size {text!r}: expected a size like 20G, 500M or 1T")
        value = int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))
    if value <= 0:
        raise ConfigError(f"cache size {text!r} must be positive")
    return value


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "vesuvius-pt"


def default_cache_size() -> int:
    return parse_size(os.environ.get(CACHE_SIZE_ENV) or DEFAULT_CACHE_SIZE)


def default_s3_endpoint() -> str | None:
    return os.environ.get(S3_ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None


def configure(cache: str | Path | None = None, cache_size: str | int | None = None,
              s3_endpoint: str | None = None) -> None:
    """Set the cache folder, its cap and the s3 endpoint for this process and the processes it starts
    (environment variables); None leaves a setting as it is."""
    if cache is not None and str(cache).strip():
        os.environ[CACHE_ENV] = str(Path(str(cache)).expanduser())
    if cache_size is not None and str(cache_size).strip():
        parse_size(cache_size)  # fail early on a bad value
        os.environ[CACHE_SIZE_ENV] = str(cache_size)
    if s3_endpoint is not None and str(s3_endpoint).strip():
        os.environ[S3_ENDPOINT_ENV] = str(s3_endpoint)


@dataclass(frozen=True)
class RemoteSettings:
    """What an opener needs to reach a URL again in another process (picklable)."""

    cache_dir: str
    cache_size: int
    s3_endpoint: str | None

    @classmethod
    def current(cls) -> "RemoteSettings":
        return cls(str(default_cache_dir()), default_cache_size(), default_s3_endpoint())


# ---------------------------------------------------------------- the on-disk cache


class ChunkCache:
    """Files under ``root``: ``<hash(url)>/<key>`` per object, LRU-evicted past ``max_bytes``."""

    _totals: dict[str, int] = {}  # per root, this process's running estimate of the cache's size
    _lock = threading.Lock()

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)

    def entry(self, url: str) -> Path:
        """The folder of one URL's objects (created, with a ``.url`` file naming it)."""
        folder = self.root / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24]
        if not (folder / URL_FILE).is_file():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _atomic_write(folder / URL_FILE, url.encode())
            except OSError as exc:
                raise RemoteError(f"cannot write the chunk cache in {self.root} ({exc}); pick another with "
                                  f"--cache DIR or {CACHE_ENV}") from None
        return folder

    @staticmethod
    def _file(folder: Path, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or parts[0] in (ABSENT_DIR, URL_FILE) or any(p in (".", "..") or TMP_MARK in p for p in parts):
            raise RemoteError(f"refusing to cache an object with key {key!r}")
        return folder.joinpath(*parts)

    def lookup(self, folder: Path, key: str) -> bytes | None | bool:
        """The cached bytes; False when the object is known to be absent; None when not cached."""
        path = self._file(folder, key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if (folder / ABSENT_DIR).joinpath(*key.split("/")).is_file():
                return False
            return None
        try:
            os.utime(path)  # most recently used
        except OSError:
            pass
        return data

    def store(self, folder: Path, key: str, data: bytes | None) -> None:
        """Keep ``data`` for ``key`` (None: the object is absent); atomically; then evict if over the cap."""
        path = self._file(folder, key) if data is not None else (folder / ABSENT_DIR).joinpath(*key.split("/"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, data or b"")
        except (IsADirectoryError, NotADirectoryError):
            return  # a key that is also a prefix of others cannot be a file: read it from the server each time
        except OSError as exc:
            raise RemoteError(f"cannot write the chunk cache in {self.root} ({exc}); free space, pick another "
                              f"folder with --cache DIR or lower --cache-size") from None
        self._grow(len(data or b""))

    def _grow(self, n: int) -> None:
        key = str(self.root)
        with self._lock:
            total = self._totals.get(key)
            total = self.size() if total is None else total + n  # a first scan already counts the new file
            self._totals[key] = total
            if total <= self.max_bytes:
                return
            self._totals[key] = self.evict(int(self.max_bytes * 0.9))

    def files(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every cached object (not the bookkeeping files)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ABSENT_DIR]
            for name in filenames:
                if name in (URL_FILE, COMPLETE_FILE):
                    continue
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if TMP_MARK in name and time.time() - st.st_mtime > 3600:
                    p.unlink(missing_ok=True)  # left by a download killed over an hour ago
                    continue
                out.append((st.st_mtime, st.st_size, p))
        return out

    def size(self) -> int:
        return sum(s for _, s, _ in self.files())

    def evict(self, target: int) -> int:
        """Delete least recently used objects until the cache holds at most ``target`` bytes; the new size."""
        files = sorted(self.files())
        total = sum(s for _, s, _ in files)
        for _, size, path in files:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
        return total


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + TMP_MARK)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- fsspec filesystems and errors


def filesystem(url: str, settings: RemoteSettings):
    """An async fsspec filesystem for ``url`` (anonymous s3, http with timeouts)."""
    import fsspec

    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        client_kwargs = {"endpoint_url": settings.s3_endpoint} if settings.s3_endpoint else {}
        return fsspec.filesystem("s3", anon=True, asynchronous=True, client_kwargs=client_kwargs,
                                 config_kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
                                                "retries": {"max_attempts": 2}})
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
    return fsspec.filesystem("http", asynchronous=True, client_kwargs={"timeout": timeout})


def fs_path(url: str) -> str:
    """The path an fsspec filesystem takes for ``url`` (s3 without the scheme, http as is)."""
    return url[len("s3://"):] if url.lower().startswith("s3://") else url


def explain(exc: BaseException, url: str, reached: bool) -> RemoteError:
    """One line for a failed remote read: access denied, unreachable, or a download that broke off."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    host = urlsplit(url).netloc
    if isinstance(exc, PermissionError) or status in (401, 403):
        return RemoteError(f"access to {url} denied (403): the segment is not public, or the URL is wrong ({text})")
    if status == 404:
        return RemoteError(f"{url} not found (404): check the URL")
    if reached:
        return RemoteError(f"download from {url} interrupted ({text}); chunks already downloaded are kept in the "
                           "cache: run the same command again to resume")
    return RemoteError(f"cannot reach {host} for {url} ({text}); check the address and your connection "
                       "(offline, only chunks already in the cache can be read: `vesuvius-pt prefetch` them while online)")


# ---------------------------------------------------------------- the caching zarr store


def _slice(data: bytes, byte_range) -> bytes:
    if byte_range is None:
        return data
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix:] if byte_range.suffix else b""
    raise TypeError(f"unknown byte range {byte_range!r}")


def caching_store(url: str, settings: RemoteSettings | None = None):
    """A read-only zarr store for the zarr at ``url`` whose objects go through the on-disk cache."""
    from zarr.storage import FsspecStore, WrapperStore

    settings = settings or RemoteSettings.current()
    url = url.rstrip("/")

    class CachingStore(WrapperStore):
        """zarr's FsspecStore with every object kept in a :class:`ChunkCache` folder."""

        def __init__(self, store):
            super().__init__(store)
            self.url = url
            self.cache = ChunkCache(settings.cache_dir, settings.cache_size)
            self.folder = self.cache.entry(url)
            self.reached = False  # has the server answered once (then a failure is an interruption)
            self.fetched = 0  # objects downloaded by this store
            self.bytes_fetched = 0
            self.hits = 0

        def _with_store(self, store):
            return CachingStore(store)

        async def fetch(self, key: str, recheck_absent: bool = False) -> bytes | None:
            """The whole object ``key``: from the cache, else the server (then cached); None if absent.
            ``recheck_absent``: ask the server again about an object remembered as absent (None offline)."""
            cached = self.cache.lookup(self.folder, key)
            if cached is False and not recheck_absent:
                return None
            if cached is not None and cached is not False:
                self.hits += 1
                return cached  # type: ignore[return-value]
            from zarr.core.buffer import default_buffer_prototype

            try:
                buf = await self._store.get(key, default_buffer_prototype())
            except RemoteError:
                raise
            except Exception as exc:  # aiohttp, botocore and OS errors: one line
                error = explain(exc, f"{self.url}/{key}", self.reached)
                if cached is False and "cannot reach" in str(error):
                    return None  # offline: keep believing the cache
                raise error from None
            self.reached = True
            data = None if buf is None else buf.to_bytes()
            self.cache.store(self.folder, key, data)
            self.fetched += 1
            self.bytes_fetched += len(data or b"")
            return data

        async def get(self, key, prototype, byte_range=None):
            data = await self.fetch(key)
            return None if data is None else prototype.buffer.from_bytes(_slice(data, byte_range))

        async def get_partial_values(self, prototype, key_ranges):
            return [await self.get(k, prototype, r) for k, r in key_ranges]

        async def exists(self, key: str) -> bool:
            return (await self.fetch(key)) is not None

        async def is_empty(self, prefix: str) -> bool:
            return False

        def __repr__(self) -> str:
            return f"CachingStore({self.url!r}, cache={self.folder})"

    fs = filesystem(url, settings)
    return CachingStore(FsspecStore(fs, read_only=True, path=fs_path(url)))


# ---------------------------------------------------------------- zarr arrays and groups by URL


class RemoteZarrOpener:
    """The zarr array ``name`` of the group at ``url`` (``name`` None: the array at ``url``); picklable, so a
    DataLoader worker re-opens it with the same cache."""

    def __init__(self, url: str, name: str | None, settings: RemoteSettings):
        self.url, self.name, self.settings = url, name, settings

    def __call__(self):
        node = open_zarr_node(self.url, self.settings)
        return node if self.name is None else node[self.name]


def open_zarr_node(url: str, settings: RemoteSettings | None = None):
    """The zarr array or group at ``url`` (through the cache); RemoteError with one line when it is not one."""
    settings = settings or RemoteSettings.current()
    store = caching_store(url, settings)
    if not _has_zarr_marker(store):
        if not _exists(url, settings):
            raise RemoteError(f"{url} not found (404): check the URL")
        raise RemoteError(f"{url} is not a zarr (no zarr.json, .zarray or .zgroup there): give the URL of a zarr or "
                          "OME-Zarr array or group, or of a segment folder with layers/ on a server that lists files")
    return _open_store(url, store)


def _has_zarr_marker(store) -> bool:
    """Is there zarr metadata at the store's root? Markers remembered as absent are asked about again
    (a URL opened before its zarr was uploaded must not stay "not found")."""
    markers = ("zarr.json", ".zarray", ".zgroup")
    if any(zarr_sync(store.fetch(m)) is not None for m in markers):
        return True
    return any(zarr_sync(store.fetch(m, recheck_absent=True)) is not None for m in markers)


def _open_store(url: str, store):
    import zarr

    try:
        return zarr.open(store=store, mode="r")
    except RemoteError:
        raise
    except Exception as exc:
        raise RemoteError(f"{url} is not a readable zarr ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def _exists(url: str, settings: RemoteSettings) -> bool:
    fs = filesystem(url, settings)
    try:
        return bool(zarr_sync(fs._exists(fs_path(url))))
    except Exception as exc:
        raise explain(exc, url, reached=False) from None


def zarr_sync(coro):
    import zarr.core.sync

    return zarr.core.sync.sync(coro)


def locate_url(url: str):
    """The segment at ``url`` as a :class:`~napari_vesuvius_pt.data.layouts.Located` (zarr, OME-Zarr, or a
    layers folder over https)."""
    from napari_vesuvius_pt.data.layouts import zarr_located
    from napari_vesuvius_pt.data.sources import array_source

    url = url.strip().rstrip("/")
    settings = RemoteSettings.current()
    http = urlsplit(url).scheme.lower() in ("http", "https")
    if http and (cached := _cached_layers(url, settings)) is not None:
        return cached  # a layers folder downloaded before: no network
    store = caching_store(url, settings)
    if _has_zarr_marker(store):
        node = _open_store(url, store)
    elif http and (layers := _remote_layers(url, settings)) is not None:
        return layers
    else:
        node = open_zarr_node(url, settings)  # says whether the URL is missing or not a zarr

    def source_for(name: str | None, arr: Any, label: str):
        where = f"{url}/{name}" if name else url
        return array_source(RemoteZarrOpener(url, name, settings), arr, f"remote {label} ({urlsplit(url).scheme})", where)

    return zarr_located(url, node, url_name(url), source_for, images={})


# ---------------------------------------------------------------- layers folders over https


def _remote_layers(url: str, settings: RemoteSettings):
    """A segment folder over https whose server lists files: ``layers/`` (or ``surface_volume/``) of
    numbered TIFFs, downloaded into the cache; None when ``url`` has no such folder."""
    fs = filesystem(url, settings)
    names: list[str] = []
    for sub in ("layers", "surface_volume"):
        try:
            listing = zarr_sync(fs._ls(f"{url}/{sub}/", detail=False))
        except FileNotFoundError:
            continue
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                continue
            raise explain(exc, url, reached=False) from None
        names = sorted({n.rstrip("/").rsplit("/", 1)[-1] for n in listing})
        names = [n for n in names if re.fullmatch(r"\d+\.tiff?", n, flags=re.IGNORECASE)]
        if names:
            break
    if not names:
        return None
    from napari_vesuvius_pt.data.layouts import IMAGE_KINDS

    cache = ChunkCache(settings.cache_dir, settings.cache_size)
    folder = cache.entry(url)
    local = folder / "files" / sub
    local.mkdir(parents=True, exist_ok=True)
    for n in names:
        _download(fs, f"{url}/{sub}/{n}", local / n, cache, reached=True)
    seg_name = url_name(url)
    for kind in IMAGE_KINDS:
        for candidate in (f"{seg_name}_{kind}.png", f"{kind}.png"):
            if _download(fs, f"{url}/{candidate}", folder / "files" / candidate, cache, reached=True, optional=True):
                break
    _atomic_write(folder / "files" / COMPLETE_FILE, sub.encode())  # every layer is there: opens offline from now on
    return _cached_layers(url, settings)


def _cached_layers(url: str, settings: RemoteSettings):
    """The layers folder of ``url`` as downloaded into the cache before, or None."""
    from napari_vesuvius_pt.data.layouts import IMAGE_KINDS, Located
    from napari_vesuvius_pt.data.sources import tiff_layers_source

    folder = ChunkCache(settings.cache_dir, settings.cache_size).entry(url) / "files"
    try:
        sub = (folder / COMPLETE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    local = folder / sub
    seg_name = url_name(url)
    images: dict[str, Any] = {}
    for kind in IMAGE_KINDS:
        found = [folder / c for c in (f"{seg_name}_{kind}.png", f"{kind}.png") if (folder / c).is_file()]
        images[kind] = found[0] if found else None
    try:
        source = tiff_layers_source(local)
    except SegmentError:
        return None  # layers evicted from the cache since: download again
    source.storage = f"{source.storage}; downloaded from {url} into the cache"
    fmt = "kaggle-folder" if sub == "surface_volume" else "layers-folder"
    return Located(seg_name, url, fmt, source, images)  # type: ignore[arg-type]


def _download(fs, url: str, target: Path, cache: ChunkCache, reached: bool, optional: bool = False) -> bool:
    """``url`` into ``target`` (atomically) unless it is there; False when optional and absent."""
    if target.is_file():
        os.utime(target)
        return True
    absent = target.parent / (ABSENT_DIR + "-" + target.name)
    if optional and absent.is_file():
        return False
    try:
        data = zarr_sync(fs._cat_file(fs_path(url)))
    except FileNotFoundError:
        if optional:
            _atomic_write(absent, b"")
            return False
        raise RemoteError(f"{url} not found (404): check the URL") from None
    except Exception as exc:
        raise explain(exc, url, reached) from None
    _atomic_write(target, data)
    cache._grow(len(data))
    return True


# ---------------------------------------------------------------- prefetch


@dataclass
class PrefetchPlan:
    """The objects a region and layer window need: ``(array name in the group or None, chunk key)``."""

    url: str
    keys: list[str]  # store keys relative to the URL
    arrays: dict[str, int]  # label -> number of keys


def chunk_keys(arr: Any, prefix: str, z: tuple[int, int], plane_blocks: Callable[[tuple[int, int]], Iterable[tuple[int, int]]],
               lead: int) -> list[str]:
    """Keys of the stored chunks (shards, when sharded) of ``arr`` that layers ``z`` and the in-plane
    blocks from ``plane_blocks(block shape)`` touch."""
    block = tuple(arr.shards or arr.chunks)
    bz, by, bx = block[lead:]
    zc = range(z[0] // bz, (z[1] - 1) // bz + 1)
    keys = []
    for cy, cx in plane_blocks((by, bx)):
        for cz in zc:
            coords = (0,) * lead + (cz, cy, cx)
            keys.append(prefix + arr.metadata.encode_chunk_key(coords))
    return keys


def plan_prefetch(url: str, layers: tuple[int, int] | None = None, region: str | Path | None = None) -> PrefetchPlan:
    """Open the segment at ``url`` (its metadata, mask and labels land in the cache) and list the level-0
    chunks that layers ``[A, B)`` inside ``region`` (polygons; default: the mask, else the whole plane) need."""
    import numpy as np

    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.data.sources import ArraySource
    from napari_vesuvius_pt.data.tiles import load_regions, rasterize_polygons

    segment = open_segment(url, z_range=layers)
    source = segment.volume.source if hasattr(segment.volume, "source") else None
    if not isinstance(source, ArraySource) or not isinstance(source._opener, RemoteZarrOpener):
        raise RemoteError(f"{url} is not a remote zarr: prefetch downloads zarr chunks (a layers folder is "
                          "downloaded whole when it is opened)")
    opener = source._opener
    arr = opener()  # the zarr array itself (source.array may wrap it in a cache of decoded chunks)
    lead = len(source._lead)
    h, w = source.shape[1:]
    if region is not None:
        where = rasterize_polygons(load_regions(region), (h, w))
        if not where.any():
            raise RemoteError(f"region {region} covers no pixel of {url} ({h}x{w})")
    elif segment.mask is not None:
        where = np.asarray(segment.mask, dtype=bool)
    else:
        where = None

    def blocks(shape: tuple[int, int]) -> Iterator[tuple[int, int]]:
        by, bx = shape
        ny, nx = -(-h // by), -(-w // bx)
        if where is None:
            for cy in range(ny):
                for cx in range(nx):
                    yield cy, cx
            return
        padded = np.zeros((ny * by, nx * bx), dtype=bool)
        padded[:h, :w] = where
        hit = padded.reshape(ny, by, nx, bx).any(axis=(1, 3))
        for cy, cx in zip(*np.nonzero(hit)):
            yield int(cy), int(cx)

    prefix = f"{opener.name}/" if opener.name else ""
    keys = chunk_keys(arr, prefix, segment.z_range, blocks, lead)
    return PrefetchPlan(url.rstrip("/"), keys, {opener.name or url_name(url): len(keys)})


def prefetch(plan: PrefetchPlan, concurrency: int = 8) -> Iterator[tuple[int, int, int, int]]:
    """Download the plan's objects into the cache; yields ``(done, total, downloaded, bytes downloaded)``
    as they arrive (objects already cached count as done without a download)."""
    store = caching_store(plan.url)
    total = len(plan.keys)
    done = 0
    yield 0, total, 0, 0

    async def batch(keys: list[str]) -> None:
        await asyncio.gather(*(store.fetch(k) for k in keys))

    for i in range(0, total, concurrency):
        keys = plan.keys[i:i + concurrency]
        zarr_sync(batch(keys))
        done += len(keys)
        yield done, total, store.fetched, store.bytes_fetched
