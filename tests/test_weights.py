"""Weight import: Kinetics checkpoints in the 3D-ResNets-PyTorch layout, ours, plain; refusals."""

from __future__ import annotations

import pytest
import torch

from napari_vesuvius_pt.errors import WeightsError
from napari_vesuvius_pt.models.encoder import build_encoder
from napari_vesuvius_pt.models.weights import load_encoder_weights, load_state_into


INPLANES = (64, 128, 256, 512)
LAYOUTS = {"resnet10": ("basic", (1, 1, 1, 1)), "resnet18": ("basic", (2, 2, 2, 2)),
           "resnet50": ("bottleneck", (3, 4, 6, 3))}


def _bn(prefix: str, c: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_var": 0.5 + torch.rand(c, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(1000)}


def kinetics_state(arch: str, width: float = 1.0, classes: int = 700, seed: int = 0,
                   shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of kenshohara/3D-ResNets-PyTorch ``models/resnet.py``
    (``generate_model(model_depth, n_input_channels=3, shortcut_type='B', conv1_t_size=7)``),
    written from that code's layout, not from our encoder."""
    g = torch.Generator().manual_seed(seed)
    kind, blocks = LAYOUTS[arch]
    expansion = 4 if kind == "bottleneck" else 1
    planes_list = [int(p * width) for p in INPLANES]
    w = lambda *shape: torch.empty(shape) if shapes_only else 0.05 * torch.randn(*shape, generator=g)  # noqa: E731
    state = {"conv1.weight": w(planes_list[0], 3, 7, 7, 7), **_bn("bn1", planes_list[0], g)}
    in_planes = planes_list[0]
    for stage, (planes, n) in enumerate(zip(planes_list, blocks), start=1):
        stride = 1 if stage == 1 else 2
        for b in range(n):
            p = f"layer{stage}.{b}"
            if kind == "basic":
                state[f"{p}.conv1.weight"] = w(planes, in_planes, 3, 3, 3)
                state.update(_bn(f"{p}.bn1", planes, g))
                state[f"{p}.conv2.weight"] = w(planes, planes, 3, 3, 3)
                state.update(_bn(f"{p}.bn2", planes, g))
            else:
                state[f"{p}.conv1.weight"] = w(planes, in_planes, 1, 1, 1)
                state.update(_bn(f"{p}.bn1", planes, g))
                state[f"{p}.conv2.weight"] = w(planes, planes, 3, 3, 3)
                state.update(_bn(f"{p}.bn2", planes, g))
                state[f"{p}.conv3.weight"] = w(planes * expansion, planes, 1, 1, 1)
                state.update(_bn(f"{p}.bn3", planes * expansion, g))
            if b == 0 and (stride != 1 or in_planes != planes * expansion):
                state[f"{p}.downsample.0.weight"] = w(planes * expansion, in_planes, 1, 1, 1)  # no bias
                state.update(_bn(f"{p}.downsample.1", planes * expansion, g))
            in_planes = planes * expansion
    state["fc.weight"] = w(classes, in_planes)
    state["fc.bias"] = w(classes)
    return state


def kinetics_file(path, arch: str, width: float = 1.0, prefix: str = "module.") -> dict[str, torch.Tensor]:
    state = kinetics_state(arch, width)
    torch.save({"epoch": 200, "arch": f"resnet-{arch[6:]}", "state_dict": {prefix + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, path)
    return state


@pytest.fixture(scope="module")
def k700_resnet10(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "r3d10_K_200ep.pth"
    return path, kinetics_file(path, "resnet10")


@pytest.fixture(scope="module")
def k700_narrow(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "r3d10_narrow.pth"
    kinetics_file(path, "resnet10", width=0.25)
    return path


def test_kinetics_checkpoint_loads_every_trunk_key_and_folds_rgb(k700_resnet10):
    path, state = k700_resnet10
    enc = build_encoder("resnet10")
    report = load_encoder_weights(enc, path)
    own = enc.state_dict()
    assert report.source_format == "3d-resnets-pytorch"
    assert sorted(report.loaded) == sorted(own)  # every trunk key, num_batches_tracked included
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.folded == ["conv1.weight"]
    assert report.file_architecture.startswith("resnet10 (width 1")
    assert torch.allclose(own["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer4.0.downsample.1.running_var",
                "bn1.running_mean"):
        assert torch.equal(own[key], state[key]), key


def test_folded_grey_model_matches_rgb_model_on_replicated_grey(k700_narrow):
    """Summing the RGB kernels makes a grey tile give what the RGB network gives for that tile in
    all three colours, so the Kinetics batch-norm statistics still apply."""
    path = k700_narrow
    grey = build_encoder("resnet10", widen_factor=0.25).eval()
    rgb = build_encoder("resnet10", in_channels=3, widen_factor=0.25).eval()
    assert load_encoder_weights(grey, path).folded == ["conv1.weight"]
    assert load_encoder_weights(rgb, path).folded == []
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1, -1)), rtol=1e-4, atol=1e-5)
        # a mean instead of the sum would put the stem's activations a factor 3 off
        assert not torch.allclose(grey(x / 3), grey(x), rtol=1e-2)


def test_resnet50_trunk_keys_map_without_renaming():
    """A real-width ResNet-50 (construction only; the file's values are left uninitialized): bottleneck
    and shortcut names and shapes line up one to one with the 3D-ResNets-PyTorch layout."""
    enc = build_encoder("resnet50")
    state = kinetics_state("resnet50", shapes_only=True)
    report = load_state_into(enc, state, "3d-resnets-pytorch")
    assert sorted(report.loaded) == sorted(enc.state_dict()) and len(report.loaded) == 318
    assert report.folded == ["conv1.weight"] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.file_architecture.startswith("resnet50 (width 1")


def test_file_for_another_depth_or_width_is_refused_whole(k700_narrow, tmp_path):
    path = k700_narrow
    enc = build_encoder("resnet18", widen_factor=0.25)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(WeightsError, match=r"encoder resnet18 .*holds resnet10 \(width 0.25"):
        load_encoder_weights(enc, path)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # nothing half loaded

    with pytest.raises(WeightsError, match=r"width 0.5.*another shape"):
        load_encoder_weights(build_encoder("resnet10", widen_factor=0.5), path)

    # a deeper trunk of the same width holds every key of the shallower one: still refused
    deeper = tmp_path / "resnet34_plain.pt"
    torch.save(build_encoder("resnet34", widen_factor=0.25).state_dict(), deeper)
    with pytest.raises(WeightsError, match=r"holds resnet34.*does not have"):
        load_encoder_weights(build_encoder("resnet18", widen_factor=0.25), deeper)


def test_plain_state_dicts_with_or_without_prefixes(tmp_path):
    src = build_encoder("resnet10", widen_factor=0.25)
    torch.nn.init.normal_(src.layer3[0].conv2.weight)
    for name, state in {"plain.pt": src.state_dict(),
                        "ddp.pt": {f"module.{k}": v for k, v in src.state_dict().items()},
                        "model.pt": {**{f"encoder.{k}": v for k, v in src.state_dict().items()},
                                     "head.classifier.weight": torch.zeros(1, 64, 1, 1)}}.items():
        torch.save(state, tmp_path / name)
        dst = build_encoder("resnet10", widen_factor=0.25)
        report = load_encoder_weights(dst, tmp_path / name)
        assert report.source_format == "plain" and not report.missing and not report.unexpected
        assert torch.equal(dst.layer3[0].conv2.weight, src.layer3[0].conv2.weight)


def test_broken_files_are_weights_errors(tmp_path, k700_resnet10):
    enc = build_encoder("resnet10", widen_factor=0.25)
    with pytest.raises(WeightsError, match="not found"):
        load_encoder_weights(enc, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01not a checkpoint" * 50)
    with pytest.raises(WeightsError, match="cannot be read|not a plain"):
        load_encoder_weights(enc, junk)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(k700_resnet10[0].read_bytes()[:100_000])
    with pytest.raises(WeightsError):
        load_encoder_weights(enc, truncated)
    code = tmp_path / "code.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "hook": _Unsafe()}, code)
    with pytest.raises(WeightsError, match="not a plain PyTorch weights file"):
        load_encoder_weights(enc, code)
    text = tmp_path / "list.pth"
    torch.save([1, 2, 3], text)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_encoder_weights(enc, text)


class _Unsafe:
    """An arbitrary object: ``weights_only`` loading must refuse to rebuild it."""
