"""VICReg loss and expander, as in Bardes, Ponce & LeCun (ICLR 2022) and facebookresearch/vicreg.

    invariance  = mse(z1, z2)                                       (on this process's batch)
    variance    = mean(relu(1 - sqrt(var(z1) + 1e-4))) / 2 + the same for z2
    covariance  = sum(offdiag(cov(z1))^2) / dim + the same for z2,  cov = zc^T zc / (N - 1)
    total       = sim * invariance + var * variance + cov * covariance

Under DDP the embeddings of all processes are gathered (with gradients) before the variance and
covariance terms, and N is the gathered batch size. Some public implementations drop the /2 of the
variance term; this one keeps it, as the paper and the reference code do.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from napari_vesuvius_pt.errors import ConfigError, RunError

VARIANCE_EPS = 1e-4


class VICRegTerms(NamedTuple):
    total: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def off_diagonal(m: Tensor) -> Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's rows.

    As ``FullGatherLayer`` in facebookresearch/vicreg. (``torch.distributed.nn.functional.all_gather``
    does the same but is deprecated in recent PyTorch.) Works on NCCL and gloo.
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        parts = [torch.zeros_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:  # type: ignore[override]
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(z: Tensor) -> Tensor:
    """Concatenate ``z`` over all processes, keeping gradients; ``z`` itself without a process group.

    Per-process batch sizes may differ (a last, short batch): the sizes are exchanged first and the
    rows padded to the largest for the collective, then trimmed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    world = dist.get_world_size()
    size = torch.tensor([z.shape[0]], device=z.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if z.shape[0] < longest:
        z = torch.cat([z, z.new_zeros(longest - z.shape[0], *z.shape[1:])], dim=0)
    parts = _GatherWithGrad.apply(z.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, counts)], dim=0)


def _variance_term(z: Tensor) -> Tensor:
    std = torch.sqrt(z.var(dim=0) + VARIANCE_EPS)
    return torch.relu(1.0 - std).mean()


def _covariance_term(zc: Tensor) -> Tensor:
    n, d = zc.shape
    cov = (zc.T @ zc) / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim: float = 25.0,
    var: float = 25.0,
    cov: float = 1.0,
    check_finite: bool = True,
) -> VICRegTerms:
    """VICReg on two batches of expanded embeddings ``(N, dim)``; float32 math even under autocast."""
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ConfigError(
            f"vicreg_loss needs two (batch, dim) embeddings of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = z1.float()
        z2 = z2.float()
        invariance = torch.nn.functional.mse_loss(z1, z2)
        g1 = gather_with_grad(z1)
        g2 = gather_with_grad(z2)
        if g1.shape[0] < 2:
            raise ConfigError(
                "vicreg_loss needs at least 2 embeddings per view (over all processes) to measure their "
                f"variance, got {g1.shape[0]}; raise the batch size"
            )
        if check_finite and not bool(torch.isfinite(g1).all() & torch.isfinite(g2).all()):
            raise RunError(
                "the embeddings hold NaN or infinite values (the input batch or the weights diverged); "
                "lower the learning rate, check the data's normalization, or resume from an earlier checkpoint"
            )
        g1 = g1 - g1.mean(dim=0)
        g2 = g2 - g2.mean(dim=0)
        variance = _variance_term(g1) / 2 + _variance_term(g2) / 2
        covariance = _covariance_term(g1) + _covariance_term(g2)
        total = sim * invariance + var * variance + cov * covariance
    return VICRegTerms(total, invariance, variance, covariance)


class Expander(nn.Module):
    """The VICReg expander: (Linear-BatchNorm-ReLU) for each hidden width, then a final Linear.

    The paper uses 8192-8192-8192 after ResNet-50's 2048-d embedding, the seed 512-256-512 after a
    512-d one. The last Linear has no bias, as in the reference code (a bias cancels in every term).
    """

    def __init__(self, in_dim: int, widths: Sequence[int] = (512, 256, 512)) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or in_dim < 1:
            raise ConfigError(f"expander widths must be positive integers, got {list(widths)} after a {in_dim}-d input")
        dims = [int(in_dim), *widths]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ---------------------------------------------------------------- collapse monitor


@torch.no_grad()
def embedding_stats(z: Tensor) -> dict[str, float]:
    """Collapse monitor on pooled embeddings ``(N, dim)``.

    ``embedding_std``: mean per-dimension standard deviation; ``embedding_std_norm``: the same on
    L2-normalized embeddings times sqrt(dim) (1 for well spread embeddings, 0 for a collapse);
    ``effective_rank``: exp of the entropy of the normalized singular values of the centred embeddings
    (RankMe; between 1 and min(N, dim)).
    """
    z = z.float()
    if z.shape[0] < 2:
        return {"embedding_std": float("nan"), "embedding_std_norm": float("nan"), "effective_rank": float("nan")}
    std = z.std(dim=0).mean()
    zn = torch.nn.functional.normalize(z, dim=1)
    std_norm = zn.std(dim=0).mean() * math.sqrt(z.shape[1])
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"embedding_std": float(std), "embedding_std_norm": float(std_norm), "effective_rank": float(torch.exp(entropy))}


# The collapse rule, in words for the report and the Pretrain widget. A representation collapses when
# its embeddings stop spreading over the dimensions (dimensional collapse: the effective rank falls) or
# over the samples (complete collapse: the spread falls). The thresholds are relative to the run's own
# best epoch, because the absolute values depend on the architecture and the data:
# - effective rank (RankMe) below half its peak: the embeddings use half as many directions as they did;
#   a VICReg run that is learning keeps or raises its rank (Garrido et al. 2023 relate a falling RankMe
#   to worse downstream accuracy), and noise between epochs of a healthy run stays well above 1/2;
# - embedding std (mean per-dimension standard deviation) below a quarter of its peak: VICReg's
#   variance term exists to keep it from shrinking; a fall by 4x means the term is losing.
COLLAPSE_RANK_FRACTION = 0.5
COLLAPSE_STD_FRACTION = 0.25


def collapse_warning(history: Sequence[dict[str, float]]) -> str | None:
    """A sentence when the collapse monitor shows the embedding collapsing, else None.

    ``history``: one dict per completed epoch, in order, with ``effective_rank`` and/or
    ``embedding_std`` (``embedding_stats``' keys; other keys are ignored)."""
    reasons = []
    for key, fraction, what in (("effective_rank", COLLAPSE_RANK_FRACTION, "effective rank"),
                                ("embedding_std", COLLAPSE_STD_FRACTION, "embedding std")):
        values = [(i + 1, float(h[key])) for i, h in enumerate(history)
                  if key in h and h[key] is not None and math.isfinite(float(h[key]))]
        if len(values) < 2:
            continue
        peak_epoch, peak = max(values, key=lambda v: v[1])
        last_epoch, last = values[-1]
        if peak > 0 and last_epoch > peak_epoch and last < fraction * peak:
            reasons.append(f"{what} fell from {peak:.3g} (epoch {peak_epoch}) to {last:.3g} (epoch {last_epoch}), "
                           f"below {fraction:.0%} of its peak")
    if not reasons:
        return None
    return ("The embedding is collapsing: " + "; ".join(reasons) + ". Raise the variance weight (VICReg var), "
            "lower the learning rate, or use the last epoch before the fall.")
