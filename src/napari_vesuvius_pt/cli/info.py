"""``vesuvius-pt info PATH``: what a segment holds (shape, type, layers, storage, mask, ink labels)."""

from __future__ import annotations

import argparse
import json

from napari_vesuvius_pt.data.segment import ink_fraction, open_segment


def add_open_options(parser: argparse.ArgumentParser) -> None:
    """The open-time options every command that reads a segment shares."""
    parser.add_argument("--z-range", nargs=2, type=int, metavar=("START", "STOP"), default=None,
                        help="layers [START, STOP) of the file (default: all)")
    parser.add_argument("--reverse", action="store_true", help="flip the depth axis")
    parser.add_argument("--downsample", type=int, default=1, metavar="N", help="in-plane downsampling factor")


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a segment or fragment",
                              description="Shape, dtype, z range, storage, mask and ink labels of a segment.")
    p.add_argument("path", help="segment folder, multi-page TIFF or zarr")
    add_open_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def describe(path, z_range=None, reverse=False, downsample=1) -> dict:
    seg = open_segment(path, z_range=z_range, reverse=reverse, downsample=downsample)
    fraction = ink_fraction(seg)
    mask = seg.papyrus_mask()
    return {
        "name": seg.name,
        "path": str(seg.path),
        "format": seg.fmt,
        "storage": seg.storage,
        "shape": list(seg.shape),
        "dtype": str(seg.dtype),
        "z_range": list(seg.z_range),
        "reverse": seg.reverse,
        "downsample": seg.downsample,
        "levels": [list(level.shape) for level in seg.levels],
        "has_mask": seg.mask is not None,
        "mask_fraction": float(mask.mean()),
        "has_inklabels": seg.inklabels is not None,
        "ink_fraction": fraction,
        "has_ir": seg.ir is not None,
        "converted_from": (seg.attrs.get("napari_vesuvius_pt") or {}).get("source"),
        **{f"{kind}_fraction": (float(getattr(seg, kind).mean()) if getattr(seg, kind, None) is not None else None)
           for kind in ("supervision_mask", "validation_mask", "ignore_mask")},
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.path, args.z_range, args.reverse, args.downsample)
    if args.json:
        print(json.dumps(info))
        return 0
    z0, z1 = info["z_range"]
    lines = [
        f"{info['name']}  ({info['format']}: {info['path']})",
        f"  shape      {' x '.join(map(str, info['shape']))} (z, y, x), {info['dtype']}",
        f"  layers     {z0}..{z1} of the file" + (", reversed" if info["reverse"] else "")
        + (f", downsampled x{info['downsample']}" if info["downsample"] > 1 else ""),
        f"  storage    {info['storage']}",
        "  mask       " + (f"yes, {info['mask_fraction']:.1%} of the plane" if info["has_mask"] else "no (all papyrus)"),
        "  ink labels " + (f"yes, ink on {info['ink_fraction']:.1%} of the papyrus" if info["has_inklabels"] else "no"),
    ]
    if info["converted_from"]:
        lines.append(f"  converted  from {info['converted_from']}")
    if info["has_ir"]:
        lines.append("  ir         yes")
    for kind, label in (("supervision_mask", "supervised"), ("validation_mask", "validation"),
                        ("ignore_mask", "ignored")):
        if info[f"{kind}_fraction"] is not None:
            lines.append(f"  {label:<10} {info[kind + '_fraction']:.1%} of the plane ({kind})")
    if len(info["levels"]) > 1:
        lines.append("  levels     " + ", ".join("x".join(map(str, s)) for s in info["levels"]))
    print("\n".join(lines))
    return 0
