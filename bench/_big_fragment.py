"""Large synthetic fragments for the real-size benchmarks, written fast: a Kaggle folder
(``surface_volume/NN.tif`` uncompressed, memory-mappable; ``mask.png``; ``inklabels.png``) whose layers
repeat a random texture block, masked by a real Kaggle mask when one is given (resized only if asked).

``data.synthetic.make_fragment`` draws letters and fibres, which takes minutes at these sizes; the
benchmarks measure reading, tiling and memory, for which texture statistics do not matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_mask(path: str | Path) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return np.asarray(Image.open(path).convert("L")) > 0


def ellipse_mask(h: int, w: int) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return ((yy - h / 2) / (0.48 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1.0


def write_big_fragment(out: Path, layers: int, mask: np.ndarray, dtype=np.uint16, inklabels: np.ndarray | None = None,
                       seed: int = 0) -> Path:
    """Write the folder (skipped when ``out/surface_volume`` already has ``layers`` layers)."""
    import tifffile
    from PIL import Image

    out = Path(out)
    vol_dir = out / "surface_volume"
    h, w = mask.shape
    if vol_dir.is_dir() and len(list(vol_dir.glob("*.tif"))) == layers:
        return out
    vol_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hi = 60000 if dtype == np.uint16 else 230
    block = rng.integers(hi // 4, hi, size=(256, 1024), dtype=dtype)
    plane = np.tile(block, (-(-h // 256), -(-w // 1024)))[:h, :w]
    plane *= mask.astype(dtype)
    width = max(2, len(str(layers - 1)))
    for z in range(layers):
        tifffile.imwrite(vol_dir / f"{z:0{width}d}.tif", np.roll(plane, z * 7, axis=1))
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(out / "mask.png")
    if inklabels is None:
        inklabels = np.zeros((h, w), np.uint8)
        inklabels[::97, :] = 1  # thin lines of "ink": every tile row has some
        inklabels &= mask.astype(np.uint8)
    Image.fromarray((inklabels > 0).astype(np.uint8) * 255).save(out / "inklabels.png")
    return out
