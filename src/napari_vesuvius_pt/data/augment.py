"""Batched augmentations on the training device, the seed's recipe, seeded and reproducible.

``augment_batch`` works on ``(batch, 1, z, y, x)`` float tensors (any channel count works: every op
acts on each layer of the plane alike). Per-sample parameters are drawn on the CPU from the given
``torch.Generator``; the pixel work runs on the tensor's device with no host synchronization.

Order: geometry (flips, 90 degree rotations, shift/scale/rotate and grid distortion, composed into
one sampling grid, so the tile is resampled once) -> brightness/contrast -> gamma -> Gaussian or
motion blur -> Gaussian noise -> cut-out holes through all layers. Ink labels ``(batch, 1, y, x)``
get the same sampling grid (bilinear, then >= 0.5) and nothing else.

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


def _affine_matrices(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(b, 2, 3) maps from output to input coordinates, in grid_sample's normalized units."""
    flip_x = _chance(g, b, 0.5 if cfg.flip else 0.0)
    flip_y = _chance(g, b, 0.5 if cfg.flip else 0.0)
    quarter = torch.randint(0, 4, (b,), generator=g) if cfg.rotate90 else torch.zeros(b, dtype=torch.long)
    if h != w:
        quarter = quarter - quarter % 2  # a quarter turn would change a non-square tile's shape
    ssr = _chance(g, b, cfg.shift_scale_rotate)
    angle = torch.deg2rad(_uniform(g, b, -cfg.max_rotate_deg, cfg.max_rotate_deg)) * ssr
    scale = 1.0 + _uniform(g, b, -cfg.max_scale, cfg.max_scale) * ssr
    shift = torch.stack([_uniform(g, b, -cfg.max_shift, cfg.max_shift) for _ in range(2)], 1) * 2.0 * ssr[:, None]

    # The linear part acts in pixel units (so rotations stay rotations on non-square tiles):
    # M = S^-1 (R(angle) * scale) R90^k Flip S, with S = diag(w/2, h/2) from normalized units to pixels.
    flip = torch.zeros(b, 2, 2, dtype=torch.float64)
    flip[:, 0, 0] = 1.0 - 2.0 * flip_x.double()
    flip[:, 1, 1] = 1.0 - 2.0 * flip_y.double()
    total = angle + quarter.double() * (math.pi / 2)
    cos, sin = torch.cos(total), torch.sin(total)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) * scale[:, None, None]
    to_pix = torch.diag(torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64))
    to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64))
    linear = to_norm @ rot @ flip @ to_pix
    # round away float dust so exact flips and quarter turns land exactly on pixel centres
    linear = torch.where(linear.abs() < 1e-12, torch.zeros_like(linear), linear)
    return torch.cat([linear, shift[:, :, None]], dim=2)


def _distortion_maps(cfg: AugmentConfig, b: int, n: int, g: torch.Generator) -> Tensor:
    """(b, n) piecewise-linear, monotone remaps of one axis's normalized coordinates (grid distortion).

    As albumentations' GridDistortion: the axis is cut into ``grid_steps`` cells whose sizes change by
    up to ``grid_limit``; the ends stay in place. Identity for samples not drawn.
    """
    steps = max(int(cfg.grid_steps), 1)
    use = _chance(g, b, cfg.grid_distortion)
    sizes = 1.0 + _uniform(g, b * steps, -cfg.grid_limit, cfg.grid_limit).view(b, steps) * use[:, None]
    bounds = torch.cat([torch.zeros(b, 1, dtype=torch.float64), sizes.cumsum(1)], 1)
    bounds = bounds / bounds[:, -1:] * 2.0 - 1.0  # (b, steps + 1) in [-1, 1]
    centres = (torch.arange(n, dtype=torch.float64) * 2 + 1) / n - 1.0
    t = (centres + 1.0) / 2.0 * steps
    cell = t.floor().clamp(0, steps - 1).long()
    frac = t - cell
    lo, hi = bounds[:, cell], bounds[:, cell + 1]
    return lo + frac * (hi - lo)


def _sampling_grid(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(b, h, w, 2) float64 grid: distortion first, then the affine map."""
    matrices = _affine_matrices(cfg, b, h, w, g)
    xs = _distortion_maps(cfg, b, w, g)  # (b, w)
    ys = _distortion_maps(cfg, b, h, g)  # (b, h)
    gx = xs[:, None, :].expand(b, h, w)
    gy = ys[:, :, None].expand(b, h, w)
    points = torch.stack([gx, gy, torch.ones_like(gx)], -1)  # (b, h, w, 3)
    return torch.einsum("bij,bhwj->bhwi", matrices, points)


def _resample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Resample every layer of ``x`` (b, c, z, h, w) or (b, c, h, w) on one 2D grid per sample."""
    shape = x.shape
    planes = x.reshape(shape[0], -1, shape[-2], shape[-1])
    out = F.grid_sample(planes, grid.to(planes.dtype), mode=mode, padding_mode="reflection", align_corners=False)
    return out.reshape(shape)


# ---------------------------------------------------------------- blur


def _blur_kernels(cfg: AugmentConfig, b: int, g: torch.Generator) -> tuple[Tensor, bool]:
    """(b, k, k) kernels: Gaussian, motion (a line at a random angle) or identity; and whether any blurs."""
    k = BLUR_KERNEL
    r = k // 2
    coords = torch.arange(k, dtype=torch.float64) - r
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    use = _chance(g, b, cfg.blur)
    motion = _chance(g, b, 0.5)
    sigma = _uniform(g, b, *GAUSS_SIGMA)
    length = torch.tensor(MOTION_LENGTHS, dtype=torch.float64)[torch.randint(0, len(MOTION_LENGTHS), (b,), generator=g)]
    theta = _uniform(g, b, 0.0, math.pi)

    gauss = torch.exp(-(yy**2 + xx**2)[None] / (2 * sigma[:, None, None] ** 2))
    # motion: anti-aliased segment of the drawn length through the centre
    ux, uy = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    along = (xx[None] * ux + yy[None] * uy).clamp(-(length[:, None, None] - 1) / 2, (length[:, None, None] - 1) / 2)
    dist = torch.hypot(xx[None] - along * ux, yy[None] - along * uy)
    line = (1.0 - dist).clamp(min=0.0)
    kernels = torch.where(motion[:, None, None], line, gauss)
    kernels = kernels / kernels.sum(dim=(1, 2), keepdim=True)
    identity = torch.zeros(k, k, dtype=torch.float64)
    identity[r, r] = 1.0
    kernels = torch.where(use[:, None, None], kernels, identity)
    return kernels, bool(use.any())


def _blur(x: Tensor, kernels: Tensor) -> Tensor:
    b = x.shape[0]
    planes = x.reshape(1, -1, x.shape[-2], x.shape[-1])  # (1, b * layers, h, w)
    layers = planes.shape[1] // b
    weight = kernels.to(x.device, x.dtype).repeat_interleave(layers, dim=0)[:, None]  # (b * layers, 1, k, k)
    r = kernels.shape[-1] // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    out = F.conv2d(F.pad(planes, (r, r, r, r), mode=mode), weight, groups=planes.shape[1])
    return out.reshape(x.shape)


# ---------------------------------------------------------------- cut-out


def _hole_rects(cfg: AugmentConfig, b: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """(b, holes, 4) rectangles y0, y1, x0, x1 (empty when a hole is not drawn)."""
    rects = []
    for count, frac in ((cfg.holes, cfg.hole_size), (cfg.big_holes, cfg.big_hole_size)):
        count = int(count)
        if count <= 0 or frac <= 0:
            continue
        drawn = torch.randint(0, count + 1, (b,), generator=g)
        for i in range(count):
            hh = (_uniform(g, b, *HOLE_SIZE_RANGE) * frac * h).round().clamp(min=1).long()
            ww = (_uniform(g, b, *HOLE_SIZE_RANGE) * frac * w).round().clamp(min=1).long()
            y0 = (torch.rand(b, generator=g, dtype=torch.float64) * (h - hh + 1)).floor().long()
            x0 = (torch.rand(b, generator=g, dtype=torch.float64) * (w - ww + 1)).floor().long()
            on = (i < drawn).long()
            rects.append(torch.stack([y0, y0 + hh * on, x0, x0 + ww * on], 1))
    if not rects:
        return torch.zeros(b, 0, 4, dtype=torch.long)
    return torch.stack(rects, 1)


def _hole_mask(rects: Tensor, h: int, w: int, device: torch.device) -> Tensor:
    """(b, h, w) bool, True inside any hole."""
    rects = rects.to(device)
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    in_y = (ys[None, None, :] >= rects[..., 0:1]) & (ys[None, None, :] < rects[..., 1:2])  # (b, holes, h)
    in_x = (xs[None, None, :] >= rects[..., 2:3]) & (xs[None, None, :] < rects[..., 3:4])  # (b, holes, w)
    return (in_y[..., :, None] & in_x[..., None, :]).any(dim=1)


# ---------------------------------------------------------------- the batch


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

    grid = _sampling_grid(cfg, b, h, w, g).to(x.device, torch.float32, non_blocking=True)
    x = _resample(x, grid, mode="bilinear")
    if labels is not None:
        warped = _resample(labels if labels.is_floating_point() else labels.float(), grid, "bilinear")
        labels = (warped >= 0.5).to(labels.dtype)

    # intensity: one (b, 5) table of per-sample parameters, one transfer
    bc = _chance(g, b, cfg.brightness_contrast).double()
    alpha = 1.0 + _uniform(g, b, -cfg.max_contrast, cfg.max_contrast) * bc
    beta = _uniform(g, b, -cfg.max_brightness, cfg.max_brightness) * bc
    use_gamma = _chance(g, b, cfg.gamma)
    gamma = torch.where(use_gamma, _uniform(g, b, 1.0 - cfg.max_gamma, 1.0 + cfg.max_gamma), torch.ones(b, dtype=torch.float64))
    noise_std = _uniform(g, b, *NOISE_STD_RANGE) * cfg.noise_std * _chance(g, b, cfg.noise).double()
    kernels, any_blur = _blur_kernels(cfg, b, g)
    rects = _hole_rects(cfg, b, h, w, g)
    table = torch.stack([alpha, beta, gamma, noise_std], 1).to(x.device, x.dtype, non_blocking=True)
    view = (b,) + (1,) * (x.ndim - 1)
    alpha_t, beta_t, gamma_t, noise_t = (table[:, i].view(view) for i in range(4))

    x = x * alpha_t + beta_t
    if bool(use_gamma.any()):
        # gamma on the tile's own [min, max] range, then back: defined for any float range, no clipping
        flat = x.flatten(1)
        lo = flat.amin(1).view(view)
        span = (flat.amax(1).view(view) - lo).clamp(min=1e-6)
        x = ((x - lo) / span).clamp(min=0.0).pow(gamma_t) * span + lo
    if any_blur:
        x = _blur(x, kernels)
    if bool((noise_std > 0).any()):
        x = x + noise_t * torch.randn(x.shape, generator=dev_g, device=x.device, dtype=x.dtype)
    if rects.shape[1]:
        keep = ~_hole_mask(rects, h, w, x.device)
        x = x * keep[:, None, None].to(x.dtype)  # holes through all layers, filled with 0
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
