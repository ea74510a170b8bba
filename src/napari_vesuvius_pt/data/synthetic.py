"""Synthetic fragments and scroll segments that look like the real thing, for sample data, demo and tests.

A fragment is a papyrus sheet lying in a ``(z, y, x)`` surface volume: its recto surface follows a
height map ``z = f(y, x)`` that undulates through the layers, it is a few layers thick, it has crossed
fibres (horizontal on the recto, vertical below, as papyrus is laid), and the CT adds noise. Ink is a
faint, textured density increase in the layers at and just below the recto surface, in the shape of
rendered letters. Per voxel it is buried in the fibre texture and noise (not visible at a glance in one
layer); over a few layers and a neighbourhood, as a small 3D CNN sees it, it is learnable.

Scroll segments are the same sheet with another intensity distribution (higher background, lower
contrast, more noise), the shift between scroll segments and fragments that normalization has to
bridge. They carry ink too (letters on the sheet surface, the same density increase relative to the
scroll's own papyrus-air contrast) but no labels: what pretraining on the scrolls is meant to learn
from. ``fill_sheet`` writes lines of letters down to the bottom of the sheet (the scrolls always do;
the demo's fragments do, so that the seed's "lower 30% of fragment 2" holds ink).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

# Intensities (uint16) of the fragment-like distribution; the Kaggle fragments sit in this range.
_FRAGMENT_LEVELS = dict(air=11000.0, papyrus=31000.0, fibre=2600.0, noise=2600.0)
_SCROLL_LEVELS = dict(air=21000.0, papyrus=35000.0, fibre=2000.0, noise=3200.0)
DEFAULT_INK_STRENGTH = 0.3  # ink density increase as a fraction of the papyrus-air contrast


@dataclass
class SyntheticSegment:
    volume: np.ndarray  # uint16 (z, y, x)
    mask: np.ndarray  # uint8 0/1 (y, x)
    inklabels: np.ndarray | None  # uint8 0/1 (y, x), None for scroll segments
    name: str
    surface: np.ndarray | None = None  # float32 (y, x): z of the recto surface (ground truth for checks)
    ink: np.ndarray | None = None  # uint8 0/1 (y, x): where ink was written (ground truth, never written out)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-smoothed noise with features about ``scale`` pixels wide, standardized; made on a
    coarse grid and zoomed up, so it costs little at any size."""
    step = max(1, int(scale // 4))
    coarse = rng.standard_normal((shape[0] // step + 3, shape[1] // step + 3)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma=max(scale / step / 2.0, 0.5), mode="wrap")
    fine = ndimage.zoom(coarse, step, order=1)[: shape[0], : shape[1]]
    fine -= fine.mean()
    return fine / (fine.std() + 1e-6)


def _fibres(rng: np.random.Generator, shape: tuple[int, int], axis: int) -> np.ndarray:
    """Oriented noise: long along ``axis`` (1 = fibres along x), thin across it; standardized."""
    sigma = (0.8, 7.0) if axis == 1 else (7.0, 0.8)
    noise = rng.standard_normal(shape).astype(np.float32)
    tex = ndimage.gaussian_filter(noise, sigma=sigma, mode="wrap")
    tex -= tex.mean()
    return tex / (tex.std() + 1e-6)


def _blob_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An irregular fragment outline: a wobbly ellipse with ragged edges and a few bites out of it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - h / 2) / (0.46 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2)
    edge = 0.10 * _smooth_noise(rng, shape, max(h, w) / 6) + 0.03 * _smooth_noise(rng, shape, max(h, w) / 30)
    mask = r + edge < 1.0
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest piece, as a fragment is one piece
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask).astype(np.uint8)


def _text_labels(rng: np.random.Generator, shape: tuple[int, int], text: str | None, mask: np.ndarray,
                 fill_sheet: bool = False) -> np.ndarray:
    """Letters rendered with Pillow's built-in font in lines across the sheet; 0/1 uint8. With
    ``fill_sheet`` the lines run from the top to the bottom of the plane."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = shape
    size = max(10, int(min(h, w) / 7))
    font = ImageFont.load_default(size=size)
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    n_lines = max(1, int(h / (1.5 * size)) - 1)
    y = int(0.6 * size)
    if fill_sheet:
        y = int(0.3 * size)
        n_lines = max(1, int((h - y - 0.5 * size) // (1.5 * size)) + 1)
    chars = max(2, int(w / (0.75 * size)))
    alphabet = string.ascii_uppercase
    for line in range(n_lines):
        if text is None:
            words = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), chars))
        else:
            words = text.splitlines()[line % len(text.splitlines())] if text.strip() else ""
        draw.text((int(0.1 * w), y), words, fill=1, font=font, stroke_width=max(1, size // 14), stroke_fill=1)
        y += int(1.5 * size)
    labels = np.asarray(img, dtype=np.uint8)
    return (labels & mask).astype(np.uint8)


def _sheet(shape: tuple[int, int, int], levels: dict[str, float], ink: np.ndarray | None,
           ink_strength: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The uint16 volume and the recto surface height map."""
    depth, h, w = shape
    # recto surface: a smooth undulation through the layers, a few layers peak to peak
    surface = depth * 0.42 + (depth * 0.12) * _smooth_noise(rng, (h, w), max(h, w) / 2.5) \
        + (depth * 0.04) * _smooth_noise(rng, (h, w), max(h, w) / 10)
    surface = surface.astype(np.float32)
    thickness = max(3.0, depth * 0.28)
    z = np.arange(depth, dtype=np.float32)[:, None, None]
    d = z - surface[None]  # layers below the recto surface (negative: air above the sheet)
    # papyrus occupancy with soft edges (the CT's point spread)
    occupancy = 1.0 / (1.0 + np.exp(-2.0 * d)) * (1.0 / (1.0 + np.exp(2.0 * (d - thickness))))
    # crossed fibres: horizontal in the recto half, vertical in the verso half
    recto = (d < thickness / 2).astype(np.float32)
    fibres = recto * _fibres(rng, (h, w), axis=1)[None] + (1 - recto) * _fibres(rng, (h, w), axis=0)[None]
    contrast = levels["papyrus"] - levels["air"]
    vol = levels["air"] + occupancy * (contrast + levels["fibre"] * fibres)
    if ink is not None and ink_strength > 0:
        # carbon ink: denser at the surface and the layer below it, patchy (textured), with soft edges
        grain = np.clip(1.0 + 0.5 * _smooth_noise(rng, (h, w), 3.0), 0.0, None)
        ink_soft = ndimage.gaussian_filter(ink.astype(np.float32), 0.8) * grain
        ink_depth = np.exp(-0.5 * ((d - 1.0) / 1.0) ** 2)
        vol += (ink_strength * contrast) * ink_depth * ink_soft[None]
    vol += levels["noise"] * rng.standard_normal(shape, dtype=np.float32)
    np.clip(vol, 0, 65535, out=vol)
    return vol.astype(np.uint16), surface


def make_fragment(shape: tuple[int, int, int] = (24, 256, 256), seed: int = 0,
                  ink_strength: float = DEFAULT_INK_STRENGTH, text: str | None = None,
                  fill_sheet: bool = False) -> SyntheticSegment:
    """A labeled fragment: sheet, fibres, noise, an irregular mask and letters in ink (deterministic by seed).

    ``text``: lines of letters to write (newline-separated); default random capitals. ``fill_sheet``:
    lines down to the bottom of the sheet (default: the upper two thirds or so).
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    mask = _blob_mask(rng, shape[1:])
    labels = _text_labels(rng, shape[1:], text, mask, fill_sheet)
    volume, surface = _sheet(shape, _FRAGMENT_LEVELS, labels, float(ink_strength), rng)
    volume[:, mask == 0] = _outside(rng, volume[:, mask == 0], _FRAGMENT_LEVELS)
    return SyntheticSegment(volume, mask, labels, f"synthetic-fragment-{seed}", surface, labels)


def make_scroll_segment(shape: tuple[int, int, int] = (24, 256, 256), seed: int = 0,
                        ink_strength: float = DEFAULT_INK_STRENGTH, text: str | None = None) -> SyntheticSegment:
    """An unlabeled scroll segment with a shifted intensity distribution (brighter, flatter, noisier)
    that holds ink: letters over the whole sheet, ``ink_strength`` of the scroll's own papyrus-air
    contrast (0: a blank sheet). No ink labels; ``.ink`` keeps where the ink is, for checks."""
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    mask = _blob_mask(rng, shape[1:])
    ink = _text_labels(rng, shape[1:], text, mask, fill_sheet=True) if ink_strength > 0 else None
    volume, surface = _sheet(shape, _SCROLL_LEVELS, ink, float(ink_strength), rng)
    volume[:, mask == 0] = _outside(rng, volume[:, mask == 0], _SCROLL_LEVELS)
    return SyntheticSegment(volume, mask, None, f"synthetic-segment-{seed}", surface, ink)


def _outside(rng: np.random.Generator, values: np.ndarray, levels: dict[str, float]) -> np.ndarray:
    """Outside the mask there is only air and noise (where the fragment has broken away)."""
    noise = levels["noise"] * rng.standard_normal(values.shape, dtype=np.float32)
    return np.clip(levels["air"] + noise, 0, 65535).astype(np.uint16)


def _check_shape(shape) -> tuple[int, int, int]:
    from napari_vesuvius_pt.errors import ConfigError

    try:
        z, y, x = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic shape must be three integers (z, y, x), got {shape!r}") from None
    if z < 4 or y < 32 or x < 32:
        raise ConfigError(f"synthetic shape {(z, y, x)} is too small: need at least 4 layers of 32x32")
    return z, y, x


def write_segment(synth: SyntheticSegment, out: str | Path, layout: str = "kaggle") -> Path:
    """Write ``synth`` as a segment folder and return it.

    layout ``kaggle``: ``surface_volume/NN.tif`` (uint16), ``mask.png``, ``inklabels.png`` (0/1);
    layout ``layers``: ``layers/NN.tif``, ``<name>_mask.png``, ``<name>_inklabels.png`` (scroll segment).
    The folder is written beside its final place and renamed, so a half-written one never looks complete.
    """
    import os
    import shutil

    import tifffile
    from PIL import Image

    from napari_vesuvius_pt.errors import ConfigError

    if layout not in ("kaggle", "layers"):
        raise ConfigError(f"unknown segment layout {layout!r}; use 'kaggle' or 'layers'")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    layer_dir = tmp / ("surface_volume" if layout == "kaggle" else "layers")
    layer_dir.mkdir(parents=True)
    width = max(2, len(str(synth.volume.shape[0] - 1)))
    for i, layer in enumerate(synth.volume):
        tifffile.imwrite(layer_dir / f"{i:0{width}d}.tif", np.ascontiguousarray(layer, dtype=np.uint16))
    prefix = "" if layout == "kaggle" else f"{out.name}_"
    Image.fromarray(synth.mask.astype(np.uint8)).save(tmp / f"{prefix}mask.png")
    if synth.inklabels is not None:
        Image.fromarray(synth.inklabels.astype(np.uint8)).save(tmp / f"{prefix}inklabels.png")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
