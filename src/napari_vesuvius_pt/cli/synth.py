"""``vesuvius-pt synth OUT``: write a synthetic fragment (labeled) or scroll segment (unlabeled)."""

from __future__ import annotations

import argparse

from napari_vesuvius_pt.data.synthetic import DEFAULT_INK_STRENGTH, make_fragment, make_scroll_segment, write_segment


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic fragment or scroll segment",
                              description="Write a synthetic fragment (ink labels) or scroll segment (unlabeled, "
                                          "shifted intensities) as a segment folder.")
    p.add_argument("out", help="folder to create")
    p.add_argument("--kind", choices=("fragment", "segment"), default="fragment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), default=(24, 256, 256))
    p.add_argument("--ink-strength", type=float, default=DEFAULT_INK_STRENGTH,
                   help=f"ink density as a fraction of the papyrus contrast (default {DEFAULT_INK_STRENGTH})")
    p.add_argument("--layout", choices=("kaggle", "layers"), default="kaggle",
                   help="kaggle: surface_volume/ + mask.png; layers: layers/ + <name>_mask.png (scroll style)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kind == "fragment":
        synth = make_fragment(tuple(args.shape), seed=args.seed, ink_strength=args.ink_strength)
    else:
        synth = make_scroll_segment(tuple(args.shape), seed=args.seed)
    out = write_segment(synth, args.out, layout=args.layout)
    z, y, x = synth.shape
    print(f"wrote synthetic {args.kind} {out} ({z} x {y} x {x}, seed {args.seed})")
    return 0
