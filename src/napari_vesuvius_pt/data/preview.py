"""The Segments widget's preview, without Qt: open a segment with the options asked for, fit its
normalization, and reduce its normalized central layer to a thumbnail (run in a worker thread)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vesuvius_pt.data.blocks import block_reduce
from napari_vesuvius_pt.data.display import DISPLAY_RANGE, MASK_COLOR, hex_rgb
from napari_vesuvius_pt.data.normalize import Normalizer, fit_normalizer
from napari_vesuvius_pt.data.segment import Segment, open_segment

PREVIEW_SIDE = 260  # pixels of the preview's longer side (small previews are enlarged on screen)


@dataclass(frozen=True)
class OpenOptions:
    path: str
    z_range: tuple[int, int] | None
    reverse: bool
    downsample: int
    normalization: str


@dataclass
class Preview:
    options: OpenOptions
    segment: Segment
    n_layers: int  # layers in the file (before the z range)
    normalizer: Normalizer
    layer: int  # the volume layer shown
    image: np.ndarray  # float32 (h, w), normalized, reduced to the preview size
    mask: np.ndarray | None  # bool (h, w) at the preview size
    factor: int  # preview pixel = factor x factor volume pixels


def central_layer_thumbnail(volume: Any, max_side: int = PREVIEW_SIDE,
                            band_rows: int = 512) -> tuple[np.ndarray, int, int]:
    """The central layer of ``volume`` reduced by block means to at most ``max_side`` pixels, in the raw
    dtype (integers rounded half to even); read in bands of rows, so memory holds one band, never the whole
    layer at full resolution. Returns (thumbnail, layer index, factor)."""
    nz, h, w = volume.shape
    z = nz // 2
    f = max(1, math.ceil(max(h, w) / max_side))
    th, tw = h // f, w // f
    out = np.empty((th, tw), dtype=volume.dtype)
    step = f * max(1, band_rows // f)
    for y0 in range(0, th * f, step):
        y1 = min(y0 + step, th * f)
        band = np.asarray(volume[z, y0:y1, 0:tw * f], dtype=np.float64)
        blocks = block_reduce(band, f, "mean")
        if np.issubdtype(out.dtype, np.integer):
            blocks = np.rint(blocks)
        out[y0 // f:y1 // f] = blocks.astype(out.dtype)
    return out, z, f


def make_preview(options: OpenOptions, n_layers: int | None = None) -> Preview:
    """Open the segment as asked, fit its normalization and normalize a thumbnail of its central layer."""
    if n_layers is None or options.z_range is None:
        full = open_segment(options.path, reverse=options.reverse, downsample=options.downsample)
        n_layers = full.shape[0]
        if options.z_range is None:
            segment = full
        else:
            segment = open_segment(options.path, options.z_range, options.reverse, options.downsample)
    else:
        segment = open_segment(options.path, options.z_range, options.reverse, options.downsample)
    normalizer = fit_normalizer(options.normalization, segment.volume, segment.mask)
    raw, z, f = central_layer_thumbnail(segment.volume)
    mask = None
    if segment.mask is not None:
        th, tw = raw.shape
        mask = block_reduce(segment.mask[: th * f, : tw * f], f, "majority")
    return Preview(options, segment, n_layers, normalizer, z, normalizer(raw), mask, f)


def to_rgb8(preview: Preview) -> np.ndarray:
    """The normalized thumbnail as (h, w, 3) uint8: gray over the normalization's output range, the mask
    outline drawn in the mask colour."""
    img = preview.image
    span = DISPLAY_RANGE.get(preview.normalizer.name)
    if span is None:
        inside = img[preview.mask] if preview.mask is not None and preview.mask.any() else img
        span = tuple(float(v) for v in np.percentile(inside, (0.5, 99.5)))
    low, high = span
    gray = np.clip((img - low) / max(high - low, 1e-12), 0.0, 1.0)
    rgb = np.repeat((gray * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    if preview.mask is not None:
        from scipy import ndimage

        edge = preview.mask & ~ndimage.binary_erosion(preview.mask, border_value=0)
        rgb[edge] = hex_rgb(MASK_COLOR)
    return rgb


def describe_normalized(preview: Preview) -> str:
    """One line on the normalized values inside the mask, and the fitted parameters."""
    img = preview.image
    inside = img[preview.mask] if preview.mask is not None and preview.mask.any() else img.ravel()
    p1, p99 = np.percentile(inside, (1, 99))
    text = (f"normalized layer {preview.layer}: mean {inside.mean():.3g} ± {inside.std():.3g}, "
            f"p1–p99 {p1:.3g}…{p99:.3g}")
    params = ", ".join(f"{k} {v:.0f}" if abs(v) >= 1000 else f"{k} {v:.4g}"
                       for k, v in preview.normalizer.params.items())
    return f"{text}\nfitted: {params}" if params else text
