"""Random-tile read throughput: a TIFF-layer folder against its `vesuvius-pt convert` zarr, side by side.

Builds a synthetic segment (default 32 layers of 2048 x 2048 uint16, uncompressed TIFF layers as the
Kaggle fragments ship, plus a zlib-compressed copy as some scroll exports do), converts it to zarr with
(16, 128, 128) chunks, then reads the same N random (16, 128, 128) tiles from each, alternating, and
prints tiles/s, MB/s and the ratios. Two passes: warm (files in the page cache) and cold (the files'
pages dropped with posix_fadvise(DONTNEED) before the pass; no root needed, other files untouched).

    python bench/bench_tile_read.py [--layers 32] [--size 2048] [--tiles 400] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_vesuvius_pt.data import open_segment
from napari_vesuvius_pt.data.convert import convert_segment
from napari_vesuvius_pt.data.synthetic import make_fragment

DEPTH, SIZE = 16, 128


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


def drop_cache(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp folder)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_tile_read_"))
    try:
        t = time.perf_counter()
        tiff = build(work / "tiff", args.layers, args.size, None)
        tiff_zlib = build(work / "tiff_zlib", args.layers, args.size, "zlib")
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        zpath = convert_segment(open_segment(tiff), work / "seg.zarr", chunks=(DEPTH, SIZE, SIZE))
        t_convert = time.perf_counter() - t
        sources = {
            "TIFF folder (memmap)": (tiff, open_segment(tiff)),
            "TIFF folder (zlib strips)": (tiff_zlib, open_segment(tiff_zlib)),
            "zarr (16,128,128) blosc-lz4": (zpath, open_segment(zpath)),
        }
        nz, h, w = sources["TIFF folder (memmap)"][1].shape
        rng = np.random.default_rng(0)
        positions = np.stack([rng.integers(0, nz - DEPTH + 1, args.tiles), rng.integers(0, h - SIZE + 1, args.tiles),
                              rng.integers(0, w - SIZE + 1, args.tiles)], axis=1)
        tile_mb = DEPTH * SIZE * SIZE * 2 / 1e6
        disk = {name: sum(p.stat().st_size for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file()) / 1e6
                for name, (path, _) in sources.items()}
        print(f"segment {nz} x {h} x {w} uint16; {args.tiles} random ({DEPTH}, {SIZE}, {SIZE}) tiles of {tile_mb:.2f} MB; "
              f"build {t_build:.1f} s, convert {t_convert:.1f} s")
        for name in sources:
            print(f"  {name:28s} {disk[name]:8.1f} MB on disk  ({sources[name][1].storage})")
        for mode in ("warm", "cold"):
            seconds = {name: 0.0 for name in sources}
            for name, (path, seg) in sources.items():
                seg.read_tile(0, 0, 0, DEPTH, SIZE)  # open the files
                if mode == "warm":
                    for z0, y, x in positions:
                        seg.read_tile(int(z0), int(y), int(x), DEPTH, SIZE)
                else:
                    drop_cache(path)
            for z0, y, x in positions:  # alternate the sources tile by tile: same conditions for all
                for name, (_, seg) in sources.items():
                    t = time.perf_counter()
                    seg.read_tile(int(z0), int(y), int(x), DEPTH, SIZE)
                    seconds[name] += time.perf_counter() - t
            print(f"{mode} cache:")
            ref = seconds["TIFF folder (memmap)"]
            for name, s in seconds.items():
                rate = args.tiles / s
                print(f"  {name:28s} {rate:9.1f} tiles/s {rate * tile_mb:9.1f} MB/s   "
                      f"x{ref / s:5.2f} vs TIFF memmap")
            zr, zz = seconds["TIFF folder (zlib strips)"], seconds["zarr (16,128,128) blosc-lz4"]
            print(f"  zarr / TIFF-memmap throughput ratio {ref / zz:.2f};  zarr / TIFF-zlib ratio {zr / zz:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
