"""Our checkpoints and encoder origins: random, k700:FILE, run folders, checkpoint files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import EncoderConfig, TileConfig, to_dict
from napari_vesuvius_pt.errors import ConfigError, WeightsError
from napari_vesuvius_pt.models.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_in_run,
    encoder_from_source,
    ink_model_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from napari_vesuvius_pt.models.encoder import build_encoder
from napari_vesuvius_pt.models.head import InkModel
from napari_vesuvius_pt.models.sources import epoch_checkpoints, latest_checkpoint, parse_source

TINY = EncoderConfig(name="resnet10", widen_factor=0.25)


def pretrain_payload(encoder, epoch: int = 1) -> dict:
    return {"kind": "pretrain", "encoder_spec": to_dict(encoder.spec), "encoder": encoder.state_dict(),
            "expander": None, "head": None, "epoch": epoch, "metrics": {"loss": 1.5},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.05}]}, "rng": torch.get_rng_state(),
            "tile": to_dict(TileConfig()), "config": {"epochs": 3}}


def test_save_and_load_round_trip_atomically(tmp_path):
    enc = build_encoder("resnet10", widen_factor=0.25)
    path = save_checkpoint(tmp_path / "run" / "last.pt", pretrain_payload(enc, epoch=2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left
    payload = load_checkpoint(path)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["epoch"] == 2
    assert all(torch.equal(payload["encoder"][k], v) for k, v in enc.state_dict().items())


def test_payloads_a_safe_load_would_refuse_are_refused_at_save_time(tmp_path):
    enc = build_encoder("resnet10", widen_factor=0.25)
    for bad in ({"metrics": {"f05": np.float64(0.5)}}, {"config": {"out": tmp_path}}):
        with pytest.raises(TypeError, match="metrics|config"):
            save_checkpoint(tmp_path / "bad.pt", {**pretrain_payload(enc), **bad})
    assert not (tmp_path / "bad.pt").exists()


def test_load_checkpoint_refuses_what_is_not_ours(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(build_encoder("resnet10", widen_factor=0.25).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="not a napari-vesuvius-pt checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": "napari-vesuvius-pt/9", "encoder": {}}, tmp_path / "future.pt")
    with pytest.raises(WeightsError, match="napari-vesuvius-pt/9"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_checkpoint(tmp_path / "corrupt.pt")


def test_random_sources():
    enc, info = encoder_from_source("random", TINY)
    assert enc.spec == TINY and info["origin"] == "random"
    enc, info = encoder_from_source("random:resnet18", TINY)
    assert enc.spec.name == "resnet18" and enc.spec.widen_factor == 0.25
    with pytest.raises(ConfigError, match="unknown encoder"):
        encoder_from_source("random:resnet7")


def test_run_folder_prefers_last_then_the_newest_epoch(tmp_path):
    run = tmp_path / "run"
    encoders = {}
    for epoch in (2, 10):
        enc = build_encoder("resnet10", widen_factor=0.25)
        torch.nn.init.constant_(enc.conv1.weight, float(epoch))
        save_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}.pt", pretrain_payload(enc, epoch))
        encoders[epoch] = enc
    assert checkpoint_in_run(run).name == "epoch_010.pt"
    enc, info = encoder_from_source(str(run), EncoderConfig(name="resnet50"))  # the checkpoint's spec wins
    assert enc.spec == TINY and info["epoch"] == 10 and info["run"] == str(run)
    assert torch.all(enc.conv1.weight == 10.0)
    save_checkpoint(run / "last.pt", pretrain_payload(encoders[2], 2))
    enc, info = encoder_from_source(str(run))
    assert info["checkpoint"].endswith("last.pt") and torch.all(enc.conv1.weight == 2.0)
    assert info["report"]["source_format"] == "napari-vesuvius-pt" and not info["report"]["missing"]
    with pytest.raises(WeightsError, match="holds no checkpoint"):
        encoder_from_source(str(tmp_path))


def test_one_parser_and_one_finder_for_every_source(tmp_path):
    run = tmp_path / "run"
    for name in ("epoch_010.pt", "epoch_002.pt", "epoch_x.pt", "notes.txt"):
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / name).write_bytes(b"")
    assert [p.name for p in epoch_checkpoints(run)] == ["epoch_002.pt", "epoch_010.pt"]  # by epoch, not by name
    assert latest_checkpoint(run).name == "epoch_010.pt" and latest_checkpoint(tmp_path) is None
    (run / "last.pt").write_bytes(b"")
    assert latest_checkpoint(run).name == "last.pt"
    from napari_vesuvius_pt.engine.run_folder import RunFolder

    assert RunFolder(run).latest_checkpoint() == latest_checkpoint(run)  # the engine's run folder asks the same
    assert RunFolder(run).epoch_checkpoints() == epoch_checkpoints(run)

    cases = {
        " random ": ("random", "", None),
        "random:resnet50": ("random", "resnet50", None),
        f"K700:{tmp_path}/r3d.pth": ("kinetics", "", tmp_path / "r3d.pth"),
        str(run): ("run", "", run),
        str(run / "last.pt"): ("file", "", run / "last.pt"),
        str(tmp_path / "nowhere"): ("missing", "", tmp_path / "nowhere"),
    }
    for text, (kind, arch, path) in cases.items():
        src = parse_source(text)
        assert (src.kind, src.arch, src.path) == (kind, arch, path), text
    assert parse_source("kinetics:x.pth").label == "kinetics" and parse_source("k400:x.pth").label == "k400"
    with pytest.raises(ConfigError, match="no encoder source"):
        parse_source("  ")


def test_kinetics_source_infers_or_checks_the_architecture(tmp_path):
    rgb = build_encoder("resnet10", in_channels=3, widen_factor=0.25)
    state = {f"module.{k}": v for k, v in rgb.state_dict().items()}
    state.update({"module.fc.weight": torch.zeros(700, 128), "module.fc.bias": torch.zeros(700)})
    torch.save({"arch": "resnet-10", "epoch": 200, "state_dict": state}, tmp_path / "r3d10.pth")
    enc, info = encoder_from_source(f"k700:{tmp_path / 'r3d10.pth'}")
    assert enc.spec == TINY and info["origin"] == "k700" and info["arch"] == "resnet-10"
    assert info["report"]["folded"] == ["conv1.weight"] and "fc.weight" in info["report"]["unexpected"]
    assert torch.allclose(enc.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(WeightsError, match="resnet18"):
        encoder_from_source(f"k700:{tmp_path / 'r3d10.pth'}", EncoderConfig(name="resnet18", widen_factor=0.25))
    with pytest.raises(WeightsError, match="not found"):
        encoder_from_source(f"k700:{tmp_path / 'missing.pth'}", TINY)
    with pytest.raises(WeightsError, match="neither random"):
        encoder_from_source(str(tmp_path / "nowhere"))


def test_ink_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = InkModel(build_encoder("resnet10", widen_factor=0.25), output_stride=8).eval()
    payload = {"kind": "finetune", "encoder_spec": to_dict(model.encoder.spec), "encoder": model.encoder.state_dict(),
               "head": model.head.state_dict(), "output_stride": 8, "tile": to_dict(TileConfig(depth=8, size=32)),
               "data": {"normalization": "kaggle"}, "epoch": 1}
    save_checkpoint(tmp_path / "ft" / "last.pt", payload)
    loaded, got = ink_model_from_checkpoint(tmp_path / "ft")
    assert not loaded.training and loaded.output_stride == 8 and got["tile"]["size"] == 32
    x = torch.rand(2, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    save_checkpoint(tmp_path / "pre.pt", pretrain_payload(model.encoder))
    with pytest.raises(WeightsError, match="without an ink head"):
        ink_model_from_checkpoint(tmp_path / "pre.pt")
