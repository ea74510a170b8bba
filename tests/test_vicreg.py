"""VICReg loss: the paper's formula on hand-computed examples, collapse, precision, DDP gathering."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from napari_vesuvius_pt.errors import ConfigError, RunError
from napari_vesuvius_pt.models.vicreg import Expander, embedding_stats, vicreg_loss


def test_hand_computed_two_samples():
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    t = vicreg_loss(z1, z2)
    # invariance: squared differences 0, 0, 0, 4 -> mean 1
    assert t.invariance.item() == pytest.approx(1.0)
    # variance: z1's columns have variance 2 (std > 1: no penalty); z2's second column is constant:
    # std = sqrt(0 + 1e-4) = 0.01 -> relu(1 - 0.01) = 0.99, mean over 2 dims 0.495, halved per branch
    assert t.variance.item() == pytest.approx(0.99 / 2 / 2)
    # covariance: z1 centred [[-1,-1],[1,1]] -> cov [[2,2],[2,2]] / (2-1); off-diagonal squares 8 / dim 2 = 4
    assert t.covariance.item() == pytest.approx(4.0)
    assert t.total.item() == pytest.approx(25 * 1.0 + 25 * 0.2475 + 1 * 4.0)


def test_covariance_divides_by_batch_minus_one_and_dim():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])  # zero mean, Z^T Z = [[2,1],[1,2]]
    t = vicreg_loss(z, z.clone(), sim=25.0, var=25.0, cov=5.0)
    # cov = [[1, .5], [.5, 1]]: off-diagonal squares 0.5, / dim 2 = 0.25 per branch, two branches
    assert t.covariance.item() == pytest.approx(0.5)
    assert t.invariance.item() == 0.0
    assert t.variance.item() == 0.0  # per-dimension variance 1 -> std sqrt(1.0001) > 1
    assert t.total.item() == pytest.approx(5.0 * 0.5)


def test_collapsed_embeddings_cost_much_more_than_spread_ones():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(256, 32, generator=g)
    healthy = vicreg_loss(spread, spread + 0.01 * torch.randn(256, 32, generator=g))
    collapsed_point = torch.ones(256, 32)
    point = vicreg_loss(collapsed_point, collapsed_point.clone())
    assert point.variance.item() == pytest.approx(0.99, abs=1e-6)
    assert point.total.item() > 20 * healthy.total.item()
    # dimensional collapse: every dimension the same signal -> covariance about dim - 1 per branch
    line = torch.randn(256, 1, generator=g).repeat(1, 32)
    dim_collapse = vicreg_loss(line, line.clone())
    assert dim_collapse.covariance.item() > 40  # ~ 2 * 31
    assert healthy.covariance.item() < 1


def test_gradient_descent_on_the_loss_spreads_collapsed_embeddings():
    g = torch.Generator().manual_seed(1)
    z = (0.01 * torch.randn(64, 8, generator=g)).requires_grad_()
    first = None
    for _ in range(40):
        t = vicreg_loss(z, z)
        first = first if first is not None else t.total.item()
        (grad,) = torch.autograd.grad(t.total, z)
        with torch.no_grad():
            z -= 0.5 * grad
    assert t.total.item() < 0.5 * first
    assert z.detach().std(0).mean().item() > 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_terms_are_float32_and_finite_under_autocast_and_half_inputs(dtype):
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(16, 32)
    x1, x2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    with torch.autocast("cpu", dtype=dtype):
        z1, z2 = lin(x1), lin(x2)
        assert z1.dtype == dtype
        t = vicreg_loss(z1, z2)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in t)
    ref = vicreg_loss(z1.float(), z2.float())
    assert t.total.item() == pytest.approx(ref.total.item(), rel=1e-5)
    t.total.backward()
    assert torch.isfinite(lin.weight.grad).all()

    # large half-precision embeddings: in fp16 their covariance overflows (max 65504); float32 math does not
    big1 = (300 * torch.randn(64, 8, generator=g)).to(dtype)
    big2 = (300 * torch.randn(64, 8, generator=g)).to(dtype)
    if dtype == torch.float16:
        assert not torch.isfinite(big1.T @ big1).all()  # what fp16 math would have given
    t = vicreg_loss(big1, big2)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in t)
    assert t.total.item() == pytest.approx(vicreg_loss(big1.float(), big2.float()).total.item(), rel=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="same|one shape"):
        vicreg_loss(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ConfigError, match="batch, dim"):
        vicreg_loss(torch.randn(4, 8, 1), torch.randn(4, 8, 1))
    with pytest.raises(ConfigError, match="at least 2"):
        vicreg_loss(torch.randn(1, 8), torch.randn(1, 8))
    z = torch.randn(4, 8)
    z[1, 2] = math.nan
    with pytest.raises(RunError, match="NaN"):
        vicreg_loss(z, torch.randn(4, 8))


def test_expander_layout_and_widths():
    e = Expander(64, (32, 16, 24))
    kinds = [type(m).__name__ for m in e.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert e.net[-1].bias is None and e.net[-1].out_features == 24 == e.out_dim
    assert e(torch.randn(5, 64)).shape == (5, 24)
    with pytest.raises(ConfigError):
        Expander(64, (32, 0))


def test_collapse_monitor_tells_spread_from_collapsed_embeddings():
    torch.manual_seed(0)
    spread = embedding_stats(torch.randn(512, 16))
    assert spread["embedding_std"] == pytest.approx(1.0, abs=0.1)
    assert spread["embedding_std_norm"] == pytest.approx(1.0, abs=0.1)
    assert 14.0 < spread["effective_rank"] <= 16.0
    collapsed = embedding_stats(torch.randn(1, 16).repeat(512, 1) + 1e-6 * torch.randn(512, 16))
    assert collapsed["embedding_std"] < 1e-5 and collapsed["embedding_std_norm"] < 1e-4
    line = embedding_stats(torch.randn(512, 1) * torch.randn(1, 16))  # every embedding on one direction
    assert line["effective_rank"] == pytest.approx(1.0, abs=0.05)
    assert all(math.isnan(v) for v in embedding_stats(torch.randn(1, 16)).values())


# ---------------------------------------------------------------- DDP: gather with gradients


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_CASES = [([4, 4], 25.0), ([3, 5], 0.0)]  # equal per-process batches; a short last batch


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for case, (sizes, sim) in enumerate(DDP_CASES):
            full1, full2 = _case_embeddings(sizes)
            start = sum(sizes[:rank])
            z1 = full1[start:start + sizes[rank]].clone().requires_grad_()
            z2 = full2[start:start + sizes[rank]].clone().requires_grad_()
            t = vicreg_loss(z1, z2, sim=sim)
            t.total.backward()
            queue.put((case, rank, t.variance.item(), t.covariance.item(), z1.grad.tolist(), z2.grad.tolist()))
    finally:
        dist.destroy_process_group()


def _case_embeddings(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    n = sum(sizes)
    return torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)


def test_ddp_gathers_embeddings_with_gradients():
    """Two gloo processes see the variance and covariance of the whole batch, and (after DDP's
    gradient averaging, i.e. dividing by the world size) the same gradients as one process would;
    also when one process's batch is shorter (the invariance term is then weighted per process, as
    in the reference code, so that case checks the variance and covariance terms alone)."""
    world = 2
    queue = mp.get_context("forkserver").SimpleQueue()
    mp.start_processes(_ddp_worker, args=(world, _free_port(), queue), nprocs=world, join=True,
                       start_method="forkserver")
    results = sorted(queue.get() for _ in range(world * len(DDP_CASES)))
    for case, (sizes, sim) in enumerate(DDP_CASES):
        full1, full2 = (t.requires_grad_() for t in _case_embeddings(sizes))
        ref = vicreg_loss(full1, full2, sim=sim)
        ref.total.backward()
        start = 0
        for _, rank, variance, covariance, g1, g2 in (r for r in results if r[0] == case):
            assert variance == pytest.approx(ref.variance.item(), rel=1e-5)
            assert covariance == pytest.approx(ref.covariance.item(), rel=1e-5)
            stop = start + sizes[rank]
            assert torch.allclose(torch.tensor(g1) / world, full1.grad[start:stop], rtol=1e-4, atol=1e-6)
            assert torch.allclose(torch.tensor(g2) / world, full2.grad[start:stop], rtol=1e-4, atol=1e-6)
            start = stop
