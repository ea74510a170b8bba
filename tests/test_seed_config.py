"""The seed's configuration (resources/configs/seed.yaml), point by point, and the encoder and schedule
options it needs: the depth-keeping stem, max pooling, the fc embedding, InstanceNorm input, div255,
the x10 warm-up stepped per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import EncoderConfig, FinetuneConfig, OptimConfig, PretrainConfig, load_config
from napari_vesuvius_pt.data.normalize import Normalizer
from napari_vesuvius_pt.engine.optim import schedule_for
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.models.encoder import Encoder, build_encoder
from napari_vesuvius_pt.models.head import InkModel

SEED_YAML = Path(__file__).resolve().parents[1] / "src" / "napari_vesuvius_pt" / "resources" / "configs" / "seed.yaml"


def test_seed_yaml_holds_the_seed_settings():
    pre = load_config(PretrainConfig, SEED_YAML)
    assert pre.encoder == EncoderConfig(name="resnet50", widen_factor=1.0, in_channels=1, keep_depth=True,
                                        pooling="max", embedding=512, input_norm=True)
    assert pre.data.z_range == [14, 36] and pre.data.normalization == "div255"  # layers 14..35, 8-bit / 255
    assert (pre.tile.depth, pre.tile.size, pre.tile.stride) == (20, 128, 32)  # 20 of the 22 layers after a 0-2 offset
    assert pre.augment.max_z_shift == 2 and pre.augment.same_z_shift is True  # one offset for both views
    assert (pre.vicreg.sim_coeff, pre.vicreg.std_coeff, pre.vicreg.cov_coeff) == (25.0, 25.0, 5.0)
    assert pre.vicreg.expander == [512, 256, 512]
    o = pre.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.5, 0.9, 5e-5)
    assert o.warmup_start == pytest.approx(0.1) and o.schedule_unit == "epoch"
    assert o.lr * o.min_lr_ratio == pytest.approx(1e-4)
    assert (o.grad_clip, o.accumulate, pre.batch_size, pre.epochs, pre.amp) == (1.0, 2, 150, 35, True)
    fine = load_config(FinetuneConfig, SEED_YAML)
    assert fine.encoder == pre.encoder and fine.data.normalization == "div255"
    assert fine.tile.size == 128 and fine.depth_pooling == "max"


def test_seed_encoder_keeps_depth_through_the_stem_and_embeds_to_512():
    spec = EncoderConfig(name="resnet10", widen_factor=0.25, keep_depth=True, pooling="max", embedding=32,
                         input_norm=True)
    enc = Encoder(spec).eval()
    plain = build_encoder("resnet10", widen_factor=0.25).eval()
    x = torch.randn(2, 1, 20, 32, 32)
    emb, feats = enc(x, return_features=True)
    _, plain_feats = plain(x, return_features=True)
    assert emb.shape == (2, 32) and enc.embedding_dim == 32
    assert feats["layer1"].shape[2] == 20  # depth kept by the (1, 3, 3) / (1, 2, 2) stem pool
    assert plain_feats["layer1"].shape[2] == 10  # the plain stem pool halves it
    assert feats["layer1"].shape[-2:] == plain_feats["layer1"].shape[-2:]  # in-plane the same
    assert isinstance(enc.avgpool, torch.nn.AdaptiveMaxPool3d)
    # the global pooling is a max: the embedding before the fc equals the max of layer4
    trunk = enc.avgpool(feats["layer4"]).flatten(1)
    assert torch.allclose(trunk, feats["layer4"].amax(dim=(2, 3, 4)))
    # InstanceNorm input: a tile's offset and scale do not change the embedding
    assert torch.allclose(enc(x * 3.0 + 7.0), emb, atol=1e-4)
    assert not torch.allclose(plain(x * 3.0 + 7.0), plain(x), atol=1e-3)
    # the options add no keys under the 3D-ResNets-PyTorch names but the embedding's own
    extra = set(enc.state_dict()) - set(plain.state_dict())
    assert extra == {"embed.weight", "embed.bias"}


def test_encoder_options_are_checked():
    with pytest.raises(ConfigError, match="pooling"):
        Encoder(EncoderConfig(name="resnet10", widen_factor=0.25, pooling="median"))
    with pytest.raises(ConfigError, match="embedding"):
        Encoder(EncoderConfig(name="resnet10", widen_factor=0.25, embedding=-1))


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_ink_head_pools_over_depth(pooling):
    enc = build_encoder("resnet10", widen_factor=0.25)
    model = InkModel(enc, output_stride=4, depth_pooling=pooling).eval()
    out = model(torch.randn(2, 1, 16, 32, 32))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    pool = model.head.pool["layer1"]
    feats = torch.randn(2, 16, 5, 4, 4)
    if pooling == "max":
        assert torch.equal(pool(feats), feats.amax(dim=2))
    elif pooling == "mean":
        assert torch.allclose(pool(feats), feats.mean(dim=2))
    else:  # a convex combination over depth: between the min and the max, weights learned
        pooled = pool(feats)
        assert (pooled <= feats.amax(dim=2) + 1e-5).all() and (pooled >= feats.amin(dim=2) - 1e-5).all()
        assert any(p.requires_grad for p in pool.parameters())


def test_div255_divides_eight_bit_values_without_clipping():
    n = Normalizer("div255")
    eight = np.array([0, 128, 255], dtype=np.uint8)
    assert np.allclose(n(eight), [0.0, 128 / 255, 1.0])  # the kaggle normalization would clip 255 to 200
    sixteen = np.array([0, 255 << 8, 65535], dtype=np.uint16)
    assert np.allclose(n(sixteen), [0.0, 1.0, 1.0])


def test_x10_warmup_then_cosine_stepped_per_epoch():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    cfg = OptimConfig(name="sgd", lr=0.5, warmup_epochs=1.0, warmup_start=0.1, min_lr_ratio=2e-4,
                      schedule_unit="epoch")
    steps_per_epoch, epochs = 4, 35
    sched = schedule_for(opt, cfg, steps_per_epoch, steps_per_epoch * epochs)
    rates = []
    for _ in range(steps_per_epoch * epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    per_epoch = [rates[e * steps_per_epoch:(e + 1) * steps_per_epoch] for e in range(epochs)]
    assert all(len(set(r)) == 1 for r in per_epoch)  # constant within an epoch
    firsts = [r[0] for r in per_epoch]
    assert firsts[0] == pytest.approx(0.5)  # the warm-up epoch ends at the peak: 0.1 + 0.9 * 1/1
    assert max(firsts) == pytest.approx(0.5)
    assert firsts[-1] < 0.01 and firsts == sorted(firsts, reverse=True)  # cosine down towards 1e-4
    # two epochs of warm-up from lr / 10: 0.05 + 0.45 / 2, then the peak
    sched2 = schedule_for(torch.optim.SGD([param], lr=0.5), OptimConfig(lr=0.5, warmup_epochs=2, warmup_start=0.1,
                                                                         schedule_unit="epoch"), 4, 40)
    assert sched2.lr_lambdas[0](0) == pytest.approx(0.1 + 0.9 * 0.5)
    assert sched2.lr_lambdas[0](3) == pytest.approx(0.1 + 0.9 * 0.5)
    assert sched2.lr_lambdas[0](4) == pytest.approx(1.0)


@pytest.mark.parametrize("pooling", ["max", "attention"])
def test_a_checkpoint_rebuilds_its_heads_depth_pooling(tmp_path, pooling):
    from napari_vesuvius_pt.config import TileConfig, to_dict
    from napari_vesuvius_pt.models.checkpoint import ink_model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    spec = EncoderConfig(name="resnet10", widen_factor=0.25, keep_depth=True, pooling="max", embedding=16)
    model = InkModel(Encoder(spec), output_stride=4, depth_pooling=pooling).eval()
    payload = {"kind": "finetune", "encoder_spec": to_dict(model.encoder.spec), "encoder": model.encoder.state_dict(),
               "head": model.head.state_dict(), "output_stride": 4, "depth_pooling": pooling,
               "tile": to_dict(TileConfig(depth=8, size=32)), "data": {"normalization": "zscore"}, "epoch": 1}
    save_checkpoint(tmp_path / "ft" / "last.pt", payload)
    loaded, _ = ink_model_from_checkpoint(tmp_path / "ft")
    assert loaded.depth_pooling == pooling and loaded.encoder.spec == spec
    x = torch.rand(2, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
