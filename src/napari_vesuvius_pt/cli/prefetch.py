"""``vesuvius-pt prefetch URL``: download the chunks a region and layer window of a remote segment need
into the chunk cache, so that the same URL opens (and trains) offline afterwards."""

from __future__ import annotations

import argparse
import re
import sys

from tqdm import tqdm

from napari_vesuvius_pt.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prefetch", help="download a remote segment's chunks into the cache, for offline work",
        description="Open a remote zarr or OME-Zarr segment (https:// or s3://) and download exactly the level-0 "
                    "chunks that the layers --layers A:B inside --region need (default: inside the segment's mask, "
                    "else all), with its metadata, mask and labels, into the chunk cache. A rerun downloads only "
                    "what is missing.")
    p.add_argument("url", help="https:// or s3:// URL of a zarr or OME-Zarr segment")
    p.add_argument("--region", metavar="FILE", help="polygons (JSON or a napari Shapes CSV) in level-0 pixels")
    p.add_argument("--layers", metavar="A:B", help="layers [A, B) of the file (default: all)")
    p.add_argument("--jobs", type=int, default=8, metavar="N", help="downloads at a time (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_layers(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--layers {text!r}: expected A:B with A < B, e.g. 20:45 (layers A to B-1)")
    return int(m.group(1)), int(m.group(2))


def run(args: argparse.Namespace) -> int:
    from napari_vesuvius_pt.data.remote import default_cache_dir, is_url, plan_prefetch, prefetch

    if not is_url(args.url):
        raise ConfigError(f"{args.url} is not an https:// or s3:// URL: a local segment needs no prefetch")
    if args.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    plan = plan_prefetch(args.url, parse_layers(args.layers), args.region)
    downloaded = nbytes = total = 0
    with tqdm(desc="prefetch", unit="chunk", file=sys.stderr, disable=args.quiet, leave=False) as bar:
        for done, total, downloaded, nbytes in prefetch(plan, args.jobs):
            bar.total = total
            bar.set_postfix_str(f"{nbytes / 2**20:.1f} MiB downloaded")
            bar.update(done - bar.n)
    print(f"prefetched {total} chunk(s) of {args.url}: {downloaded} fetched from the server ({nbytes / 2**20:.1f} MiB), "
          f"{total - downloaded} already in the cache {default_cache_dir()}")
    return 0
