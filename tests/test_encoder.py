"""Encoders: the 3D-ResNets-PyTorch layout on MONAI, tile shapes, features, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from napari_vesuvius_pt.errors import ConfigError, RunError
from napari_vesuvius_pt.models.encoder import ENCODER_NAMES, STAGES, build_encoder


TINY = 0.25


@pytest.fixture(scope="module")
def tiny10():
    torch.manual_seed(0)
    return build_encoder("resnet10", widen_factor=TINY).eval()


@pytest.mark.parametrize("name, expansion", [("resnet10", 1), ("resnet18", 1), ("resnet34", 1), ("resnet50", 4)])
def test_layout_channels_and_embedding(name, expansion):
    enc = build_encoder(name, widen_factor=TINY)
    assert name in ENCODER_NAMES
    assert enc.spec.name == name and enc.spec.widen_factor == TINY and enc.spec.in_channels == 1
    assert enc.stage_channels == {s: int(c * TINY) * expansion for s, c in zip(STAGES, (64, 128, 256, 512))}
    assert enc.embedding_dim == enc.stage_channels["layer4"]
    # the 3D-ResNets-PyTorch stem: (7, 7, 7) kernel, stride (1, 2, 2), max pool kept, no bias anywhere
    assert enc.conv1.kernel_size == (7, 7, 7) and enc.conv1.stride == (1, 2, 2) and enc.conv1.in_channels == 1
    assert not enc.no_max_pool and enc.fc is None
    shortcuts = [m for n, m in enc.named_modules() if n.endswith("downsample.0")]
    assert shortcuts and all(isinstance(m, torch.nn.Conv3d) and m.bias is None for m in shortcuts)
    assert not any(k.startswith("fc.") for k in enc.state_dict())
    if name in ("resnet10", "resnet50"):  # one basic-block and one bottleneck forward
        with torch.no_grad():
            emb = enc.eval()(torch.randn(2, 1, 8, 32, 32))
        assert emb.shape == (2, enc.embedding_dim)


@pytest.mark.parametrize("depth, size", [(11, 32), (65, 32), (16, 48)])
def test_tiles_of_any_depth_and_size(tiny10, depth, size):
    x = torch.randn(2, 1, depth, size, size)
    with torch.no_grad():
        emb, feats = tiny10(x, return_features=True)
    assert emb.shape == (2, tiny10.embedding_dim)
    assert list(feats) == list(STAGES)
    # in-plane strides 4, 8, 16, 32; depth strides 2, 4, 8, 16 (the stem keeps depth)
    for i, stage in enumerate(STAGES):
        f = feats[stage]
        assert f.shape[:2] == (2, tiny10.stage_channels[stage])
        assert f.shape[2] == _conv_out(depth, 2 ** (i + 1))
        assert f.shape[3] == f.shape[4] == _conv_out(size, 2 ** (i + 2))
    assert torch.allclose(emb, feats["layer4"].mean(dim=(2, 3, 4)), atol=1e-6)


def _conv_out(n: int, stride: int) -> int:
    for _ in range(int(math.log2(stride))):
        n = (n - 1) // 2 + 1  # kernel 3, padding 1, stride 2 (stem, max pool and stage convs alike)
    return n


def test_large_plane():
    """On a plane much larger than the receptive field, layer1 is a map of the input at 1/4: a change in
    one place moves the features around that place only, and shifting the input by 32 pixels shifts the
    map by 8, away from the borders."""
    enc = build_encoder("resnet10", widen_factor=TINY).eval()
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(1, 1, 8, 256, 288, generator=g)
    x = wide[..., :256].contiguous()
    with torch.no_grad():
        emb, feats = enc(x, return_features=True)
        changed = x.clone()
        changed[..., 126:130, 62:66] += 5.0  # a small change around (y, x) = (128, 64)
        emb2, feats2 = enc(changed, return_features=True)
        _, shifted = enc(wide[..., 32:].contiguous(), return_features=True)
    a, b = feats["layer1"], feats2["layer1"]
    assert a.shape[-2:] == (64, 64)
    assert not torch.allclose(emb, emb2)  # the embedding sees the change
    touched = (a - b).abs().amax(dim=(0, 1, 2)) > 1e-6  # (64, 64) layer1 pixels the change reached
    ys, xs = torch.nonzero(touched, as_tuple=True)
    assert touched[32, 16]  # the change's own place, at 1/4
    assert ys.min() >= 32 - 4 and ys.max() <= 32 + 4 and xs.min() >= 16 - 4 and xs.max() <= 16 + 4
    # layer1's receptive field is 27 pixels: columns 8 or more from either border do not see the padding
    torch.testing.assert_close(shifted["layer1"][..., 8:48], a[..., 16:56], atol=1e-5, rtol=1e-5)


def test_depth_is_kept_where_a_change_happens():
    """The stem keeps depth (stride 1 in z), so layer1 still resolves depth at 1/2: a change in the top
    layers of a 32-layer tile reaches the top of layer1's map and not its bottom, and the embedding."""
    enc = build_encoder("resnet10", widen_factor=TINY).eval()
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    changed = x.clone()
    changed[:, :, :2] += 5.0  # layers 0 and 1 only
    with torch.no_grad():
        emb, feats = enc(x, return_features=True)
        emb2, feats2 = enc(changed, return_features=True)
    per_depth = (feats["layer1"] - feats2["layer1"]).abs().amax(dim=(0, 1, 3, 4))  # (16,) layer1 depths
    assert per_depth.shape == (16,)
    assert per_depth[0] > 0.1
    assert torch.all(per_depth[6:] == 0)  # input layers 12 and deeper: untouched
    assert not torch.allclose(emb, emb2)


def test_training_step_reaches_the_stem():
    enc = build_encoder("resnet10", widen_factor=TINY).train()
    emb = enc(torch.randn(2, 1, 11, 32, 32))
    emb.square().mean().backward()
    grad = enc.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert enc.bn1.num_batches_tracked.item() == 1


def test_bad_input_is_refused_clearly(tiny10):
    with pytest.raises(ConfigError, match=r"add the channel axis"):
        tiny10(torch.randn(2, 16, 32, 32))
    with pytest.raises(ConfigError, match=r"takes 1 input channel"):
        tiny10(torch.randn(2, 3, 16, 32, 32))
    with pytest.raises(ConfigError, match="floating point"):
        tiny10(torch.zeros(2, 1, 16, 32, 32, dtype=torch.uint8))
    x = torch.randn(2, 1, 16, 32, 32)
    x[1, 0, 3, 4, 5] = float("nan")
    with pytest.raises(RunError, match="NaN"):
        tiny10(x)


def test_bad_specs_are_refused():
    with pytest.raises(ConfigError, match="resnet10, resnet18"):
        build_encoder("resnet99")
    with pytest.raises(ConfigError, match="widen_factor"):
        build_encoder("resnet10", widen_factor=0.001)
    three = build_encoder("resnet10", in_channels=3, widen_factor=TINY)
    assert three.conv1.in_channels == 3 and three.eval()(torch.randn(1, 3, 8, 32, 32)).shape == (1, 128)
