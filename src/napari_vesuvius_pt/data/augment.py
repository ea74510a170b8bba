"""Batched augmentations on the training device, the seed's recipe, seeded and reproducible.

``augment_batch`` works on ``(batch, 1, z, y, x)`` float tensors (any channel count works: every op
acts on each layer of the plane alike). Per-sample parameters are drawn on the CPU from the given
``torch.Generator``; the pixel work runs on the tensor's device with no host synchronization.

Order: flips and 90 degree rotations (exact pixel indexing) -> shift/scale/rotate and grid
distortion (composed into one sampling grid, so a tile is resampled at most once) ->
brightness/contrast -> gamma -> Gaussian or motion blur -> Gaussian noise -> cut-out holes through
all layers. Ink labels ``(batch, 1, y, x)`` get the same flips, rotations and sampling grid
(bilinear, then >= 0.5) and nothing else. A sample that did not draw an op keeps its values exactly.

Intensities stay floats throughout: nothing wraps around or clips as 8-bit pipelines do.

``read_shifted_views`` is the z-translation: both views of a tile are read from the volume at
independent offsets of 0..max_shift layers below ``z0`` (never padded).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_vesuvius_pt.config import AugmentConfig
from napari_vesuvius_pt.errors import ConfigError

BLUR_KERNEL = 7  # the largest Gaussian (sigma up to 1.4) and motion (length up to 7) kernel
GAUSS_SIGMA = (0.8, 1.4)  # what albumentations' GaussianBlur derives from kernel sizes 3..7
MOTION_LENGTHS = (3, 5, 7)
NOISE_STD_RANGE = (0.2, 1.0)  # noise std drawn in this fraction of cfg.noise_std
HOLE_SIZE_RANGE = (0.5, 1.0)  # each hole side drawn in this fraction of its maximum

Rows = Tensor | slice  # which samples an op works on: CPU indices, or all of them


# ---------------------------------------------------------------- random numbers


def _generators(generator: torch.Generator | None, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(CPU generator for parameters, generator on ``device`` for noise), both following ``generator``."""
    g = generator if generator is not None else torch.default_generator
    if g.device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        g = torch.Generator().manual_seed(seed)
    if device.type == "cpu":
        return g, g
    dev = torch.Generator(device=device)
    dev.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g).item()))
    return g, dev


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _chance(g: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


# ---------------------------------------------------------------- geometry


def _dihedral_indices(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> Tensor | None:
    """(b, h * w) source pixel of each output pixel for random flips and quarter turns; None if off.

    Done by exact indexing rather than resampling, so these lossless transforms stay lossless.
    """
    if not (cfg.flip or cfg.rotate90):
        return None
    flip_x = _chance(g, b, 0.5 if cfg.flip else 0.0)
    flip_y = _chance(g, b, 0.5 if cfg.flip else 0.0)
    quarter = torch.randint(0, 4, (b,), generator=g) if cfg.rotate90 else torch.zeros(b, dtype=torch.long)
    if h != w:
        quarter = quarter - quarter % 2  # a quarter turn would change a non-square tile's shape
    base = torch.arange(h * w).view(h, w)
    maps = []
    for fx, fy, k in zip(flip_x.tolist(), flip_y.tolist(), quarter.tolist()):
        m = base
        if fx:
            m = m.flip(1)
        if fy:
            m = m.flip(0)
        maps.append(torch.rot90(m, k, dims=(0, 1)).reshape(-1))
    return torch.stack(maps)


def _take(x: Tensor, index: Tensor) -> Tensor:
    """Per-sample pixel permutation of every layer: ``x`` (b, ..., h, w), ``index`` (b, h * w)."""
    planes = x.reshape(x.shape[0], -1, x.shape[-2] * x.shape[-1])
    out = planes.gather(2, index[:, None, :].expand(-1, planes.shape[1], -1))
    return out.reshape(x.shape)


def _affine_matrices(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(b, 2, 3) shift/scale/rotate maps from output to input coordinates in grid_sample's normalized
    units, and which samples drew one."""
    use = _chance(g, b, cfg.shift_scale_rotate)
    angle = torch.deg2rad(_uniform(g, b, -cfg.max_rotate_deg, cfg.max_rotate_deg)) * use
    scale = 1.0 + _uniform(g, b, -cfg.max_scale, cfg.max_scale) * use
    shift = torch.stack([_uniform(g, b, -cfg.max_shift, cfg.max_shift) for _ in range(2)], 1) * 2.0 * use[:, None]
    # The linear part acts in pixel units, so a rotation stays a rotation on non-square tiles:
    # M = S^-1 R(angle) scale S, with S = diag(w/2, h/2) from normalized units to pixels.
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) * scale[:, None, None]
    to_pix = torch.diag(torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64))
    to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64))
    linear = to_norm @ rot @ to_pix
    return torch.cat([linear, shift[:, :, None]], dim=2), use


def _distortion_maps(cfg: AugmentConfig, b: int, n: int, use: Tensor, g: torch.Generator) -> Tensor:
    """(b, n) piecewise-linear, monotone remaps of one axis's normalized coordinates (grid distortion).

    As albumentations' GridDistortion: the axis is cut into ``grid_steps`` cells whose sizes change by
    up to ``grid_limit``; the ends stay in place. Identity for samples not drawn.
    """
    steps = max(int(cfg.grid_steps), 1)
    sizes = 1.0 + _uniform(g, b * steps, -cfg.grid_limit, cfg.grid_limit).view(b, steps) * use[:, None]
    bounds = torch.cat([torch.zeros(b, 1, dtype=torch.float64), sizes.cumsum(1)], 1)
    bounds = bounds / bounds[:, -1:] * 2.0 - 1.0  # (b, steps + 1) in [-1, 1]
    centres = (torch.arange(n, dtype=torch.float64) * 2 + 1) / n - 1.0
    t = (centres + 1.0) / 2.0 * steps
    cell = t.floor().clamp(0, steps - 1).long()
    frac = t - cell
    lo, hi = bounds[:, cell], bounds[:, cell + 1]
    return lo + frac * (hi - lo)


def _draw_warp(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shift/scale/rotate matrices (b, 2, 3), grid-distortion remaps of x (b, w) and y (b, h), and
    which samples warp at all. Every parameter is drawn for every sample, so a seed gives the same
    augmentation whatever the probabilities."""
    matrices, use_affine = _affine_matrices(cfg, b, h, w, g)
    use_grid = _chance(g, b, cfg.grid_distortion)
    xs = _distortion_maps(cfg, b, w, use_grid, g)
    ys = _distortion_maps(cfg, b, h, use_grid, g)
    return matrices, xs, ys, use_affine | use_grid


def _warp_grid(matrices: Tensor, xs: Tensor, ys: Tensor, rows: Rows, device: torch.device) -> Tensor:
    """(k, h, w, 2) grid_sample grid of the chosen samples, built on ``device``: distortion, then affine."""
    m = matrices[rows].to(device, torch.float32, non_blocking=True)
    gx = xs[rows].to(device, torch.float32, non_blocking=True)[:, None, :]  # (k, 1, w)
    gy = ys[rows].to(device, torch.float32, non_blocking=True)[:, :, None]  # (k, h, 1)
    coef = m[:, :, :, None, None]  # (k, 2, 3, 1, 1)
    return (coef[:, :, 0] * gx[:, None] + coef[:, :, 1] * gy[:, None] + coef[:, :, 2]).permute(0, 2, 3, 1)


def _resample(x: Tensor, grid: Tensor, mode: str = "bilinear") -> Tensor:
    """Resample every layer of ``x`` (b, c, z, h, w) or (b, c, h, w) on one 2D grid per sample."""
    shape = x.shape
    planes = x.reshape(shape[0], -1, shape[-2], shape[-1])
    out = F.grid_sample(planes, grid.to(planes.dtype), mode=mode, padding_mode="reflection", align_corners=False)
    return out.reshape(shape)


# ---------------------------------------------------------------- blur


def _draw_blur(cfg: AugmentConfig, b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-sample blur parameters (b, 4): motion?, Gaussian sigma, motion length, motion angle; and
    which samples blur."""
    use = _chance(g, b, cfg.blur)
    motion = _chance(g, b, 0.5).double()
    sigma = _uniform(g, b, *GAUSS_SIGMA)
    length = torch.tensor(MOTION_LENGTHS, dtype=torch.float64)[torch.randint(0, len(MOTION_LENGTHS), (b,), generator=g)]
    theta = _uniform(g, b, 0.0, math.pi)
    return torch.stack([motion, sigma, length, theta], 1), use


def _blur_kernels(params: Tensor) -> Tensor:
    """(k, 7, 7) normalized kernels: Gaussian, or motion blur (an anti-aliased line through the centre)."""
    r = BLUR_KERNEL // 2
    coords = torch.arange(BLUR_KERNEL, dtype=torch.float64) - r
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    motion, sigma, length, theta = (params[:, i, None, None] for i in range(4))
    gauss = torch.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    ux, uy = torch.cos(theta), torch.sin(theta)
    half = (length - 1) / 2
    along = torch.minimum(torch.maximum(xx * ux + yy * uy, -half), half)
    line = (1.0 - torch.hypot(xx - along * ux, yy - along * uy)).clamp(min=0.0)
    kernels = torch.where(motion > 0.5, line, gauss)
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def _blur(x: Tensor, kernels: Tensor) -> Tensor:
    b = x.shape[0]
    planes = x.reshape(1, -1, x.shape[-2], x.shape[-1])  # (1, b * layers, h, w)
    layers = planes.shape[1] // b
    weight = kernels.to(x.device, x.dtype).repeat_interleave(layers, dim=0)[:, None]  # (b * layers, 1, k, k)
    r = kernels.shape[-1] // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    out = F.conv2d(F.pad(planes, (r, r, r, r), mode=mode), weight, groups=planes.shape[1])
    return out.reshape(x.shape)


# ---------------------------------------------------------------- intensity


def _gamma(x: Tensor, gamma: Tensor) -> Tensor:
    """Gamma on each tile's own [min, max] range, then back: defined for any float range, no clipping."""
    view = (x.shape[0],) + (1,) * (x.ndim - 1)
    lo, hi = torch.aminmax(x.flatten(1), dim=1)
    lo, span = lo.view(view), (hi.view(view) - lo.view(view)).clamp(min=1e-6)
    return (x - lo).div_(span).clamp_(min=0.0).pow_(gamma).mul_(span).add_(lo)


# ---------------------------------------------------------------- cut-out


def _hole_rects(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(b, holes, 4) rectangles y0, y1, x0, x1 (empty when a hole is not drawn)."""
    rects = []
    for count, frac in ((int(cfg.holes), cfg.hole_size), (int(cfg.big_holes), cfg.big_hole_size)):
        if count <= 0 or frac <= 0:
            continue
        drawn = torch.randint(0, count + 1, (b, 1), generator=g)
        on = (torch.arange(count)[None, :] < drawn).long()  # (b, count)
        hh = (_uniform(g, b * count, *HOLE_SIZE_RANGE).view(b, count) * frac * h).round().clamp(min=1).long()
        ww = (_uniform(g, b * count, *HOLE_SIZE_RANGE).view(b, count) * frac * w).round().clamp(min=1).long()
        y0 = (torch.rand(b, count, generator=g, dtype=torch.float64) * (h - hh + 1)).floor().long()
        x0 = (torch.rand(b, count, generator=g, dtype=torch.float64) * (w - ww + 1)).floor().long()
        rects.append(torch.stack([y0, y0 + hh * on, x0, x0 + ww * on], 2))
    if not rects:
        return torch.zeros(b, 0, 4, dtype=torch.long)
    return torch.cat(rects, 1)


def _hole_mask(rects: Tensor, h: int, w: int, device: torch.device) -> Tensor:
    """(b, h, w) bool, True inside any hole."""
    rects = rects.to(device)
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    in_y = (ys[None, None, :] >= rects[..., 0:1]) & (ys[None, None, :] < rects[..., 1:2])  # (b, holes, h)
    in_x = (xs[None, None, :] >= rects[..., 2:3]) & (xs[None, None, :] < rects[..., 3:4])  # (b, holes, w)
    return (in_y[..., :, None] & in_x[..., None, :]).any(dim=1)


# ---------------------------------------------------------------- the batch


def _on_samples(x: Tensor, chosen: Tensor, fn) -> Tensor:
    """``fn(samples, rows)`` applied to the samples ``chosen`` (a CPU bool mask) only, the others kept
    exactly; ``x`` must be a tensor this module owns (it may be updated in place). The mask lives on
    the CPU, so choosing costs no device synchronization, and work is spent only on the samples that
    drew the op."""
    if not bool(chosen.any()):
        return x
    if bool(chosen.all()):
        return fn(x, slice(None))
    rows = chosen.nonzero().squeeze(1)
    dev_rows = rows.to(x.device, non_blocking=True)
    x[dev_rows] = fn(x[dev_rows], rows)  # advanced indexing: much faster than index_select on CPU
    return x


def _rows(t: Tensor, rows: Rows) -> Tensor:
    """The per-sample parameters ``t`` of the chosen samples, on ``t``'s device."""
    return t if isinstance(rows, slice) else t[rows.to(t.device, non_blocking=True)]


def _check_batch(x: Tensor, labels: Tensor | None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"augment_batch needs a (batch, 1, z, y, x) tensor, got {shape}")
    if not x.is_floating_point():
        raise ConfigError(f"augment_batch needs normalized float tiles, got {x.dtype}; normalize before augmenting")
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.ndim != 4 or labels.shape[0] != x.shape[0] \
                or tuple(labels.shape[-2:]) != tuple(x.shape[-2:]):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ConfigError(
                f"ink labels must be (batch, 1, y, x) matching the tiles {tuple(x.shape)}, got {shape}"
            )


def augment_batch(
    x: Tensor,
    labels: Tensor | None = None,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Augment a batch of tiles (and their ink labels, geometrically in lockstep); returns new tensors."""
    cfg = cfg if cfg is not None else AugmentConfig()
    _check_batch(x, labels)
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    g, dev_g = _generators(generator, x.device)

    index = _dihedral_indices(cfg, b, h, w, g)
    matrices, xs, ys, warp = _draw_warp(cfg, b, h, w, g)
    if labels is not None:
        labels_dtype = labels.dtype
        labels = labels if labels.is_floating_point() else labels.float()
    if index is not None:
        index = index.to(x.device, non_blocking=True)
        x = _take(x, index)
        labels = _take(labels, index) if labels is not None else None
    else:  # the ops below may work in place: never on the caller's tensors
        x = x.clone()
        labels = labels.clone() if labels is not None else None
    if bool(warp.any()):  # samples that drew no warp keep their pixels exactly
        rows = slice(None) if bool(warp.all()) else warp.nonzero().squeeze(1)
        grid = _warp_grid(matrices, xs, ys, rows, x.device)
        x = _on_samples(x, warp, lambda t, _: _resample(t, grid))
        if labels is not None:
            labels = _on_samples(labels, warp, lambda t, _: (_resample(t, grid) >= 0.5).to(t.dtype))
    if labels is not None:
        labels = labels.to(labels_dtype)

    # Intensity. Per-sample parameters are drawn on the CPU and moved in one (b, 4) table. Cheap ops
    # run on the whole batch with neutral parameters (contrast 1, brightness 0, no hole) for the
    # samples that did not draw them, which leaves those exactly as they were; costly ones (gamma,
    # blur, noise) run on the chosen samples only.
    use_bc = _chance(g, b, cfg.brightness_contrast).double()
    alpha = 1.0 + _uniform(g, b, -cfg.max_contrast, cfg.max_contrast) * use_bc
    beta = _uniform(g, b, -cfg.max_brightness, cfg.max_brightness) * use_bc
    use_gamma = _chance(g, b, cfg.gamma)
    gamma = _uniform(g, b, 1.0 - cfg.max_gamma, 1.0 + cfg.max_gamma)
    use_noise = _chance(g, b, cfg.noise) & (cfg.noise_std > 0)
    noise_std = _uniform(g, b, *NOISE_STD_RANGE) * cfg.noise_std
    blur_params, use_blur = _draw_blur(cfg, b, g)
    rects = _hole_rects(cfg, b, h, w, g)
    view = (b,) + (1,) * (x.ndim - 1)
    table = torch.stack([alpha, beta, gamma, noise_std], 1).to(x.device, x.dtype, non_blocking=True)
    alpha_t, beta_t, gamma_t, noise_t = (table[:, i].reshape(view) for i in range(4))

    if bool(use_bc.any()):
        x = torch.addcmul(beta_t, x, alpha_t)
    x = _on_samples(x, use_gamma, lambda t, r: _gamma(t, _rows(gamma_t, r)))
    x = _on_samples(x, use_blur, lambda t, r: _blur(t, _blur_kernels(blur_params[r])))
    x = _on_samples(x, use_noise, lambda t, r: torch.addcmul(
        t, _rows(noise_t, r), torch.randn(t.shape, generator=dev_g, device=t.device, dtype=t.dtype)))
    if rects.shape[1] and bool((rects[..., 1] > rects[..., 0]).any()):
        x = x.masked_fill_(_hole_mask(rects, h, w, x.device)[:, None, None], 0.0)  # through all layers
    return x, labels


# ---------------------------------------------------------------- z-shifted views


def read_shifted_views(
    segment: Any,
    z0: int,
    y: int,
    x: int,
    depth: int,
    size: int,
    max_shift: int = 2,
    same_shift: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(depth, size, size)`` views of the tile at ``(z0, y, x)``, each starting 0..max_shift layers
    deeper (independently, unless ``same_shift``); read from the volume in one read, never padded."""
    if max_shift < 0:
        raise ConfigError(f"max z-shift must be 0 or more, got {max_shift}")
    layers = int(segment.shape[0])
    if z0 < 0 or z0 + depth + max_shift > layers:
        raise ConfigError(
            f"a tile of {depth} layers from layer {z0} shifted by up to {max_shift} needs layers "
            f"{z0}..{z0 + depth + max_shift}, but the segment has {layers}; lower tile.depth or "
            "augment.max_z_shift, start the tiles lower, or widen data.z_range"
        )
    rng = rng if rng is not None else np.random.default_rng()
    s1 = int(rng.integers(0, max_shift + 1))
    s2 = s1 if same_shift else int(rng.integers(0, max_shift + 1))
    lo, hi = min(s1, s2), max(s1, s2)
    block = np.asarray(segment.read_tile(z0 + lo, y, x, depth + hi - lo, size))
    return block[s1 - lo:s1 - lo + depth].copy(), block[s2 - lo:s2 - lo + depth].copy()
