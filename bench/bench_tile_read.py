"""Tile reads: a TIFF-layer folder against its `vesuvius-pt convert` zarr read several ways, side by side.

Builds a synthetic segment (default 32 layers of 2048 x 2048 uint16, uncompressed TIFF layers as the
Kaggle fragments ship), converts it to zarr with (16, 128, 128) chunks (Blosc LZ4, and uncompressed),
and reads the same tiles from each reader, alternating reader by reader, in two orders:

- random: N random (16, 128, 128) tiles anywhere in the volume (what training samples);
- grid: predict's order: one (16, 128, W) band per tile row, rows 112 pixels apart (a 128 tile with
  its 8-pixel edges dropped), the whole plane once.

Readers (the options issue 13 asked to measure before choosing):

- TIFF memmap: ``open_segment`` on the TIFF folder (the reference: ratios are against it);
- zarr-python: the converted zarr array read directly, default settings and with
  ``zarr.config async.concurrency`` raised to 64;
- zarr-python on the uncompressed copy (``convert --codec none``);
- tensorstore: the same zarr opened with tensorstore, without and with its cache pool;
- zarr-python behind the project's decoded-chunk cache (data/chunk_cache.py);
- ``open_segment`` on a zarr of just the 16 layers predict reads (``convert --z-range``: chunks aligned
  to the tile's layers; grid order only);
- ``open_segment(zarr)``: what the project reads with (tensorstore with its cache pool when tensorstore
  is installed, data/tensorstore_array.py; else zarr-python behind the chunk cache).

Each order runs ``--repeats`` times fresh and twice warm after each (the best time of each reader
counts: the machine may be shared). Fresh (every reader opened afresh, so no decoded chunk is cached; every file
read once before, so all readers find the OS page cache alike, as a second run of predict would) and
warm (the same pass again on the same readers). (A pass with the page cache dropped is not fair here:
the zarr readers share one set of files, so the first of them to touch a chunk pays the disk for all.)

    python bench/bench_tile_read.py [--layers 32] [--size 2048] [--tiles 400] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tifffile

from napari_vesuvius_pt.data import open_segment
from napari_vesuvius_pt.data.convert import convert_segment
from napari_vesuvius_pt.data.synthetic import make_fragment

DEPTH, SIZE, STRIDE = 16, 128, 112
REFERENCE = "TIFF folder (memmap)"
PROJECT = "open_segment(zarr) (what runs read)"


def build(root: Path, layers: int, size: int, compression: str | None) -> Path:
    """A (layers, size, size) segment made of a tiled 512 x 512 synthetic fragment, written layer by layer."""
    from PIL import Image

    base = make_fragment((layers, 512, 512), seed=0)
    reps = (size // 512 + 1, size // 512 + 1)
    (root / "surface_volume").mkdir(parents=True)
    for z in range(layers):
        layer = np.tile(base.volume[z], reps)[:size, :size]
        tifffile.imwrite(root / "surface_volume" / f"{z:02d}.tif", layer,
                         compression=compression, rowsperstrip=64 if compression else None)
    Image.fromarray(np.tile(base.mask, reps)[:size, :size]).save(root / "mask.png")
    Image.fromarray(np.tile(base.inklabels, reps)[:size, :size]).save(root / "inklabels.png")
    return root


def page_in(path: Path) -> None:
    """Read every file under ``path`` once, so that it sits in the OS page cache."""
    for f in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        with open(f, "rb") as fh:
            while fh.read(1 << 22):
                pass


Reader = Callable[[int, int, int, int, int], np.ndarray]  # (z0, y, x, depth, width) -> (depth, SIZE, width)


def _slicer(arr: Any, wrap: Callable[[Any], np.ndarray] = np.asarray) -> Reader:
    return lambda z0, y, x, d, w: wrap(arr[z0:z0 + d, y:y + SIZE, x:x + w])


def _zarr_reader(path: Path, concurrency: int | None = None) -> Reader:
    import zarr

    arr = zarr.open_group(str(path), mode="r")["volume"]
    if concurrency is None:
        return _slicer(arr)

    def read(z0, y, x, d, w):
        with zarr.config.set({"async.concurrency": concurrency}):
            return np.asarray(arr[z0:z0 + d, y:y + SIZE, x:x + w])
    return read


def _cached_zarr_reader(path: Path) -> Reader:
    import zarr

    from napari_vesuvius_pt.data.chunk_cache import CachedArray

    return _slicer(CachedArray(zarr.open_group(str(path), mode="r")["volume"]))


def _cached_tensorstore_reader(path: Path) -> Reader:
    from napari_vesuvius_pt.data.chunk_cache import CachedArray
    from napari_vesuvius_pt.data.tensorstore_array import TensorStoreArray

    return _slicer(CachedArray(TensorStoreArray(_open_tensorstore(path, 0))))


def _open_tensorstore(path: Path, cache_bytes: int) -> Any:
    import tensorstore as ts

    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "volume")}}
    if cache_bytes:
        spec["context"] = {"cache_pool": {"total_bytes_limit": cache_bytes}}
        spec["recheck_cached_data"] = "open"
    return ts.open(spec, read=True).result()


def _tensorstore_reader(path: Path, cache_bytes: int = 0) -> Reader:
    arr = _open_tensorstore(path, cache_bytes)
    return lambda z0, y, x, d, w: arr[z0:z0 + d, y:y + SIZE, x:x + w].read().result()


def _segment_reader(path: Path) -> Reader:
    seg = open_segment(path)
    return lambda z0, y, x, d, w: seg.read_tile(z0, y, x, d, SIZE) if w == SIZE else seg.volume[z0:z0 + d, y:y + SIZE, x:x + w]


WINDOW = "open_segment(zarr of the 16 layers read)"


def readers(paths: dict[str, Path], have_tensorstore: bool, cache_bytes: int,
            window_at: int | None = None) -> dict[str, tuple[Path, Reader]]:
    """Every reader opened afresh (no decoded chunk cached)."""
    from napari_vesuvius_pt.data import chunk_cache, tensorstore_array

    chunk_cache.shared_cache().clear()
    tensorstore_array._context = None  # a new shared cache pool for open_segment
    out = {
        REFERENCE: (paths["tiff"], _segment_reader(paths["tiff"])),
        "zarr-python, blosc-lz4": (paths["zarr"], _zarr_reader(paths["zarr"])),
        "zarr-python, async.concurrency 64": (paths["zarr"], _zarr_reader(paths["zarr"], 64)),
        "zarr-python + project chunk cache": (paths["zarr"], _cached_zarr_reader(paths["zarr"])),
        "zarr-python, uncompressed": (paths["raw"], _zarr_reader(paths["raw"])),
    }
    if have_tensorstore:
        out["tensorstore"] = (paths["zarr"], _tensorstore_reader(paths["zarr"]))
        out["tensorstore + its cache pool"] = (paths["zarr"], _tensorstore_reader(paths["zarr"], cache_bytes))
        out["tensorstore + project chunk cache"] = (paths["zarr"], _cached_tensorstore_reader(paths["zarr"]))
    out[PROJECT] = (paths["zarr"], _segment_reader(paths["zarr"]))
    if window_at is not None:  # chunks aligned to the layers predict reads (`convert --z-range`)
        window = _segment_reader(paths["window"])
        out[WINDOW] = (paths["window"], lambda z0, y, x, d, w: window(z0 - window_at, y, x, d, w))
    return out


def run_pass(opened: dict[str, tuple[Path, Reader]], reads: list[tuple[int, int, int, int]]) -> dict[str, float]:
    seconds = {name: 0.0 for name in opened}
    for z0, y, x, w in reads:  # alternate the readers read by read: same conditions for all
        for name, (_, read) in opened.items():
            t = time.perf_counter()
            read(z0, y, x, DEPTH, w)
            seconds[name] += time.perf_counter() - t
    return seconds


def report(title: str, seconds: dict[str, float], n: int, unit: str, mb: float) -> None:
    print(title)
    ref = seconds[REFERENCE]
    for name, s in seconds.items():
        rate = n / s
        print(f"  {name:36s} {rate:9.1f} {unit}/s {rate * mb:9.1f} MB/s   x{ref / s:5.2f} vs TIFF memmap")


def loopback_rows(work: Path, zarr_path: Path, tiff: Path, orders: list[tuple[str, list, str, float]]) -> dict[str, float]:
    """Rows "zarr over loopback http (cold / cached)": the converted zarr served by ``http.server`` on
    127.0.0.1 and opened by URL (``data/remote.py``), beside the TIFF memmap reference, in the same run.

    cold: an empty chunk cache (every chunk comes over the loopback, then is written to the cache);
    cached: the same URL opened afresh (decoded-chunk cache cleared) with the chunks in the on-disk cache,
    the server stopped (no request can reach it). The references (TIFF memmap, and zarr-python on the
    local copy without the decoded-chunk cache) run right before each remote pass.
    Returns the ratios (remote / TIFF memmap throughput) by row.
    """
    import functools
    import os
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from napari_vesuvius_pt.data import chunk_cache

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default listen backlog (5) drops concurrent connects: 1 s SYN retries

    ratios: dict[str, float] = {}
    for order, reads, unit, mb in orders:
        cache_dir = Path(tempfile.mkdtemp(prefix="cache_", dir=work))
        os.environ["VESUVIUS_PT_CACHE"] = str(cache_dir)
        server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(zarr_path.parent)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/{zarr_path.name}"
        seconds: dict[str, float] = {}
        try:
            for mode in ("cold", "cached"):
                if mode == "cached":
                    server.shutdown()
                    server.server_close()
                chunk_cache.shared_cache().clear()
                ref = {REFERENCE: (tiff, _segment_reader(tiff)), "local": (zarr_path, _zarr_reader(zarr_path))}
                for name, sec in run_pass(ref, reads).items():
                    seconds[f"{name} ({mode} pass)"] = sec
                remote = {f"zarr over loopback http ({mode})": (zarr_path, _segment_reader(url))}
                seconds.update(run_pass(remote, reads))
        finally:
            server.server_close()
            shutil.rmtree(cache_dir, ignore_errors=True)
        print(f"{order} order, zarr by URL over loopback http (data/remote.py):")
        for mode in ("cold", "cached"):
            ref_s, s = seconds[f"{REFERENCE} ({mode} pass)"], seconds[f"zarr over loopback http ({mode})"]
            local_s = seconds[f"local ({mode} pass)"]
            print(f"  {REFERENCE + ' (' + mode + ' pass)':36s} {len(reads) / ref_s:9.1f} {unit}/s")
            print(f"  {'zarr-python on the local copy':36s} {len(reads) / local_s:9.1f} {unit}/s "
                  f"{len(reads) / local_s * mb:9.1f} MB/s   x{ref_s / local_s:5.2f} vs TIFF memmap")
            print(f"  {'zarr over loopback http (' + mode + ')':36s} {len(reads) / s:9.1f} {unit}/s "
                  f"{len(reads) / s * mb:9.1f} MB/s   x{ref_s / s:5.2f} vs TIFF memmap")
            ratios[f"{order} {mode}"] = ref_s / s
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--chunk-depth", type=int, default=DEPTH,
                        help="layers per zarr chunk (in-plane 128 x 128); default %(default)s")
    parser.add_argument("--repeats", type=int, default=2,
                        help="fresh readers this many times, two warm passes each; the best time of each counts")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp folder)")
    args = parser.parse_args()
    try:
        import tensorstore  # noqa: F401

        have_ts = True
    except ImportError:
        have_ts = False
    from napari_vesuvius_pt.data.chunk_cache import shared_cache

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_tile_read_"))
    try:
        t = time.perf_counter()
        tiff = work / "tiff"
        if not tiff.exists():
            build(tiff, args.layers, args.size, None)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        paths = {"tiff": tiff,
                 "zarr": convert_segment(open_segment(tiff), work / "seg.zarr", chunks=(args.chunk_depth, SIZE, SIZE), overwrite=True),
                 "raw": convert_segment(open_segment(tiff), work / "raw.zarr", chunks=(args.chunk_depth, SIZE, SIZE), overwrite=True,
                                        codec="none")}
        t_convert = time.perf_counter() - t
        nz, h, w = open_segment(tiff).shape
        rng = np.random.default_rng(0)
        random_reads = [(int(z), int(y), int(x), SIZE) for z, y, x in zip(
            rng.integers(0, nz - DEPTH + 1, args.tiles), rng.integers(0, h - SIZE + 1, args.tiles),
            rng.integers(0, w - SIZE + 1, args.tiles))]
        z_mid = (nz - DEPTH) // 2
        paths["window"] = convert_segment(open_segment(tiff, z_range=(z_mid, z_mid + DEPTH)), work / "window.zarr",
                                          chunks=(DEPTH, SIZE, SIZE), overwrite=True)
        grid_reads = [(z_mid, y, 0, w) for y in range(0, h - SIZE + 1, STRIDE)]
        tile_mb = DEPTH * SIZE * SIZE * 2 / 1e6
        band_mb = DEPTH * SIZE * w * 2 / 1e6
        cache_bytes = shared_cache().max_bytes
        print(f"zarr chunks ({args.chunk_depth}, {SIZE}, {SIZE})")
        print(f"segment {nz} x {h} x {w} uint16; build {t_build:.1f} s, convert (2 copies) {t_convert:.1f} s; "
              f"decoded-chunk cache {cache_bytes / 2**20:.0f} MiB; tensorstore {'yes' if have_ts else 'not installed'}")
        print(f"random: {args.tiles} tiles ({DEPTH}, {SIZE}, {SIZE}) of {tile_mb:.2f} MB; grid: {len(grid_reads)} bands "
              f"({DEPTH}, {SIZE}, {w}) of {band_mb:.1f} MB, rows {STRIDE} apart")
        ratios: dict[str, float] = {}
        for order, reads, unit, mb in (("random", random_reads, "tiles", tile_mb), ("grid", grid_reads, "bands", band_mb)):
            cold: dict[str, float] = {}
            warm: dict[str, float] = {}
            for _ in range(args.repeats):  # the machine is shared: the best of several passes
                opened = readers(paths, have_ts, cache_bytes, z_mid if order == "grid" else None)
                for path in {p for p, _ in opened.values()}:
                    page_in(path)
                for name, sec in run_pass(opened, reads).items():
                    cold[name] = min(sec, cold.get(name, sec))
                for _ in range(2):
                    for name, sec in run_pass(opened, reads).items():
                        warm[name] = min(sec, warm.get(name, sec))
            report(f"{order} order, fresh readers (no decoded chunk cached):", cold, len(reads), unit, mb)
            report(f"{order} order, warm (same reads again):", warm, len(reads), unit, mb)
            for mode, sec in (("fresh", cold), ("warm", warm)):
                ratios[f"{order} {mode}"] = sec[REFERENCE] / sec[PROJECT]
                if WINDOW in sec:
                    ratios[f"{order} {mode}, chunks aligned to the layers read"] = sec[REFERENCE] / sec[WINDOW]
        print("open_segment(zarr) / TIFF memmap: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items())
              + "  (goals: random >= 0.25, grid >= 0.5)")
        remote = loopback_rows(work, paths["zarr"], tiff, [("random", random_reads, "tiles", tile_mb),
                                                          ("grid", grid_reads, "bands", band_mb)])
        print("zarr over loopback http / TIFF memmap: " + ", ".join(f"{k} x{v:.2f}" for k, v in remote.items()))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
