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


@pytest.mark.parametrize("stride, depth, size", [(1, 8, 32), (2, 11, 32), (4, 16, 64), (8, 8, 64)])
def test_output_is_the_reduced_ink_map(stride, depth, size):
    model = tiny_model(stride).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, depth, size, size))
    assert out.shape == (2, 1, size // stride, size // stride)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


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
