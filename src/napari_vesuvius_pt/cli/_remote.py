"""The options every command that takes a segment shares for remote segments (``https://``, ``s3://``):
the chunk cache's folder and cap, and another s3 endpoint. See :mod:`napari_vesuvius_pt.data.remote`."""

from __future__ import annotations

import argparse

from napari_vesuvius_pt.data.remote import CACHE_ENV, CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE, S3_ENDPOINT_ENV, configure


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote segments (https://, s3://)")
    group.add_argument("--cache", metavar="DIR",
                       help=f"on-disk chunk cache shared by all runs (default: ${CACHE_ENV}, else ~/.cache/vesuvius-pt)")
    group.add_argument("--cache-size", metavar="SIZE",
                       help=f"cap of the cache, e.g. 50G; least recently used chunks go first "
                            f"(default: ${CACHE_SIZE_ENV}, else {DEFAULT_CACHE_SIZE})")
    group.add_argument("--s3-endpoint", metavar="URL",
                       help=f"s3 endpoint other than AWS (default: ${S3_ENDPOINT_ENV}, else $AWS_ENDPOINT_URL)")


def apply_remote_options(args: argparse.Namespace) -> None:
    """Make the options the process's defaults (environment variables, so DataLoader workers inherit them)."""
    configure(getattr(args, "cache", None), getattr(args, "cache_size", None), getattr(args, "s3_endpoint", None))
