"""``vesuvius-pt convert PATH OUT.zarr``: a chunked zarr copy for fast random tile reads."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from napari_vesuvius_pt.cli.info import add_open_options
from napari_vesuvius_pt.config import ZARR_CODECS
from napari_vesuvius_pt.data.convert import DEFAULT_CHUNKS, iter_convert
from napari_vesuvius_pt.data.segment import open_segment


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="copy a segment to a chunked zarr",
                              description="Copy a segment (with mask and labels) to a zarr chunked for tile reads, "
                                          "streaming block by block; written to OUT.partial and renamed when done.")
    p.add_argument("path", help="segment folder, multi-page TIFF or zarr")
    p.add_argument("out", help="output .zarr folder")
    p.add_argument("--chunks", nargs=3, type=int, metavar=("D", "S", "S"), default=DEFAULT_CHUNKS,
                   help="chunk shape (depth, rows, columns); default %(default)s")
    p.add_argument("--codec", choices=ZARR_CODECS, default="blosc-lz4",
                   help="chunk compression: blosc-lz4 (default) or none (larger; bench/bench_tile_read.py compares them)")
    add_open_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    seg = open_segment(args.path, z_range=args.z_range, reverse=args.reverse, downsample=args.downsample)
    with tqdm(desc=f"convert {seg.name}", unit="block", file=sys.stderr, disable=args.quiet, leave=False) as bar:
        for done, total in iter_convert(seg, args.out, tuple(args.chunks), overwrite=args.overwrite,
                                        codec=args.codec):
            bar.total = total
            bar.update(done - bar.n)
    print(f"wrote {args.out} ({' x '.join(map(str, seg.shape))} {seg.dtype}, chunks {tuple(args.chunks)})")
    return 0
