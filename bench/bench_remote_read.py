"""Tile reads from a zarr opened by URL over loopback http (cold cache / on-disk cache), beside memory-mapped
TIFF layers, in one run: only the loopback rows of ``bench_tile_read.py`` (which prints them too, after its
local rows), for a quicker run.

The same synthetic segment as ``bench_tile_read.py`` (default 32 x 2048 x 2048 uint16, TIFF layers), one
``convert`` copy (Blosc LZ4, (16, 128, 128) chunks) served by ``http.server`` on 127.0.0.1 and opened by
its URL (``data/remote.py``); random tiles and predict's grid-order bands, as there.

    python bench/bench_remote_read.py [--quick] [--layers 32] [--size 2048] [--tiles 400] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tile_read import DEPTH, SIZE, STRIDE, build, loopback_rows, page_in  # noqa: E402

from napari_vesuvius_pt.data import open_segment  # noqa: E402
from napari_vesuvius_pt.data.convert import convert_segment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="a 32 x 1024 x 1024 segment, 200 tiles")
    args = parser.parse_args()
    if args.quick:
        args.size, args.tiles = 1024, 200
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_remote_read_"))
    try:
        t = time.perf_counter()
        tiff = work / "tiff"
        if not tiff.exists():
            build(tiff, args.layers, args.size, None)
        zarr_path = work / "seg.zarr"
        if not zarr_path.exists():
            convert_segment(open_segment(tiff), zarr_path, chunks=(DEPTH, SIZE, SIZE))
        nz, h, w = open_segment(tiff).shape
        print(f"segment {nz} x {h} x {w} uint16, zarr chunks ({DEPTH}, {SIZE}, {SIZE}) blosc-lz4; "
              f"built and converted in {time.perf_counter() - t:.1f} s")
        rng = np.random.default_rng(0)
        random_reads = [(int(z), int(y), int(x), SIZE) for z, y, x in zip(
            rng.integers(0, nz - DEPTH + 1, args.tiles), rng.integers(0, h - SIZE + 1, args.tiles),
            rng.integers(0, w - SIZE + 1, args.tiles))]
        grid_reads = [((nz - DEPTH) // 2, y, 0, w) for y in range(0, h - SIZE + 1, STRIDE)]
        page_in(tiff)
        page_in(zarr_path)
        ratios = loopback_rows(work, zarr_path, tiff, [
            ("random", random_reads, "tiles", DEPTH * SIZE * SIZE * 2 / 1e6),
            ("grid", grid_reads, "bands", DEPTH * SIZE * w * 2 / 1e6)])
        print("zarr over loopback http / TIFF memmap: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
