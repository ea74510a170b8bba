"""Ink model: output sizes per stride, frozen encoder (no grads, frozen batch norm), learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_vesuvius_pt.errors import ConfigError, RunError
from napari_vesuvius_pt.models.encoder import build_encoder
from napari_vesuvius_pt.models.head import InkModel


def tiny_model(stride: int = 4, seed: int = 0) -> InkModel:
    torch.manual_seed(seed)
    return InkModel(build_encoder("resnet10", widen_factor=0.25), output_stride=stride)


def _blob_tiles(corners: list[tuple[int, int]], depth: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise tiles with a bright square (ink) in layers 3-4 at each corner, and its full-size label."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(len(corners), 1, depth, size, size, generator=g)
    labels = torch.zeros(len(corners), 1, size, size)
    side = 10 * size // 32
    for i, (y, xx) in enumerate(corners):
        labels[i, 0, y:y + side, xx:xx + side] = 1
        x[i, 0, 3:5, y:y + side, xx:xx + side] += 1.0
    return x, labels


@pytest.mark.parametrize("stride, depth, size", [(1, 8, 32), (2, 11, 32), (4, 16, 64), (8, 8, 64)])
def test_output_is_the_reduced_ink_map(stride, depth, size):
    """Output pixel (i, j) at stride s is the ink of input pixels [s i, s (i + 1)) x [s j, s (j + 1)): after
    a short fit on ink at some places, ink at places never seen lights up its own output pixels (a head
    that flipped, transposed or shifted the map by a tile fraction would light up elsewhere)."""
    k = size // 32
    train = [(k * y, k * x) for y, x in [(2, 2), (2, 20), (20, 2), (20, 20), (11, 11), (6, 15), (15, 6), (4, 12)]]
    unseen = [(k * y, k * x) for y, x in [(3, 17), (18, 4)]]  # mirrored or transposed: off the ink
    model = tiny_model(stride)
    x, labels = _blob_tiles(train, depth, size, seed=0)
    target = F.avg_pool2d(labels, stride)  # ink fraction per output pixel
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, labels = _blob_tiles(unseen, depth, size, seed=1)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1, size // stride, size // stride)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    ink = F.avg_pool2d(labels, stride)[:, 0]
    for i, (y, xx) in enumerate(unseen):
        peak = divmod(int(logits[i, 0].argmax()), size // stride)
        assert ink[i][peak] > 0, f"the strongest ink prediction {peak} is off the ink at {(y // stride, xx // stride)}"
        assert logits[i, 0][ink[i] > 0].mean() > logits[i, 0][ink[i] == 0].mean() + 1.0


def test_bad_strides_sizes_and_inputs():
    with pytest.raises(ConfigError, match="output_stride"):
        tiny_model(3)
    model = tiny_model(8).eval()
    with pytest.raises(ConfigError, match="multiple of the output stride 8"):
        model(torch.randn(1, 1, 8, 36, 36))
    with pytest.raises(ConfigError, match="channel"):
        model(torch.randn(1, 2, 8, 32, 32))
    x = torch.randn(2, 1, 8, 32, 32)
    x[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(RunError, match="NaN or infinite"):
        model(x)


def test_frozen_encoder_gets_no_gradients_and_keeps_its_batch_norm_statistics():
    model = tiny_model()
    model.freeze_encoder(True)
    model.train()  # a training loop calls this every epoch: the encoder must stay in eval mode
    assert model.training and model.head.training and not model.encoder.training
    assert all(not m.training for m in model.encoder.modules())
    stats = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    out = model(torch.randn(2, 1, 8, 32, 32) * 3 + 1)
    out.mean().backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.head_parameters())
    assert all(torch.equal(stats[k], v) for k, v in model.encoder.state_dict().items())

    model.freeze_encoder(False)
    model.train()
    assert model.encoder.training
    model(torch.randn(2, 1, 8, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in model.encoder_parameters())
    assert not torch.equal(stats["bn1.running_mean"], model.encoder.bn1.running_mean)


def test_parameter_groups_split_the_model():
    model = tiny_model()
    enc, head = list(model.encoder_parameters()), list(model.head_parameters())
    assert {id(p) for p in enc}.isdisjoint({id(p) for p in head})
    assert len(enc) + len(head) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("encoder.") for p in enc)
    assert all(names[id(p)].startswith("head.") for p in head)


def test_learns_where_the_ink_is():
    """A few steps fit a batch whose ink is a bright blob in some layers: the loss falls and the
    logits come out higher on ink than beside it."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(4, 1, 8, 32, 32, generator=g)
    labels = torch.zeros(4, 1, 32, 32)
    for i, (y, xx) in enumerate([(4, 4), (16, 8), (8, 20), (20, 20)]):
        labels[i, 0, y:y + 10, xx:xx + 10] = 1
        x[i, 0, 3:5, y:y + 10, xx:xx + 10] += 1.0
    model = tiny_model(4)
    target = F.avg_pool2d(labels, 4)  # ink fraction per output pixel
    params = list(model.parameters())
    losses = []
    for _ in range(15):
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p -= 0.2 * gr
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits[target > 0.9].mean() > logits[target == 0].mean() + 0.5
