"""The seed's two evaluation protocols as named splits of the Kaggle fragments 1-4.

A user names the fragments in Kaggle order (``--protocol NAME --fragments F1 F2 F3 F4``):

- ``fragment2-lower30``: train on fragments 1, 3, 4 and the upper 70% of fragment 2, validate on the
  lower 30% of fragment 2 (a full-width band of its plane, written as a region file);
- ``fragment4-holdout``: pretrain on the scroll segments plus fragment 4 unlabeled, fine-tune on
  fragments 1, 2, 3, validate on fragment 4 (optionally scoring only tiles that hold ink, as the
  seed did: ``skip_empty``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_vesuvius_pt.config import PROTOCOLS
from napari_vesuvius_pt.errors import ConfigError

LOWER_FRACTION = 0.3
REGION_FILE = "val_region_fragment2_lower30.json"


@dataclass(frozen=True)
class Split:
    """Training fragments (the region's fragment first when there is a region), the validation
    fragment or region, and the fragments a protocol adds to pretraining unlabeled."""

    protocol: str
    train: list[str]
    val_fragment: str | None = None
    val_region: str | None = None
    pretrain_extra: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def val_segment(self) -> str:
        """The fragment whose pixels validate."""
        return self.val_fragment if self.val_fragment is not None else self.train[0]


def lower_band(plane: tuple[int, int], fraction: float = LOWER_FRACTION) -> np.ndarray:
    """The lower ``fraction`` of a plane as one full-width rectangle, (y, x) in full-resolution pixels."""
    h, w = (float(v) for v in plane)
    y0 = round(h * (1.0 - fraction))
    return np.array([[y0, 0.0], [y0, w], [h, w], [h, 0.0]])


def resolve_protocol(name: str, fragments: Sequence[str | Path], out: str | Path) -> Split:
    """The split ``name`` makes of ``fragments`` (Kaggle fragments 1-4, in order); the
    fragment2-lower30 band is written to ``out/val_region_fragment2_lower30.json``."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    frags = [str(f) for f in fragments]
    if len(frags) != 4:
        raise ConfigError(f"protocol {name} names the Kaggle fragments 1-4: give four, in order "
                          f"(--fragments F1 F2 F3 F4), not {len(frags)}")
    if len(set(frags)) != 4:
        raise ConfigError(f"protocol {name}: the four fragments must be different paths")
    f1, f2, f3, f4 = frags
    if name == "fragment2-lower30":
        from napari_vesuvius_pt.data.segment import open_segment
        from napari_vesuvius_pt.data.tiles import save_regions

        plane = open_segment(f2).shape[1:]  # full resolution: polygons are in full-resolution pixels
        region = save_regions(Path(out) / REGION_FILE, [lower_band(plane)])
        return Split(name, [f2, f1, f3, f4], val_region=str(region),
                     description="train on fragments 1, 3, 4 and the upper 70% of fragment 2; "
                                 "validate on the lower 30% of fragment 2")
    return Split(name, [f1, f2, f3], val_fragment=f4, pretrain_extra=[f4],
                 description="pretrain on the scroll segments and fragment 4 (unlabeled); fine-tune on "
                             "fragments 1, 2, 3; validate on fragment 4")
