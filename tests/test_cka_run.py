"""CKA runs on a tiny hand-made pretraining run folder: files, values, and one new row per new epoch."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_vesuvius_pt.analysis import linear_cka, rbf_cka
from napari_vesuvius_pt.cli import main
from napari_vesuvius_pt.config import CKAConfig, DataConfig, EncoderConfig, TileConfig, to_dict
from napari_vesuvius_pt.engine.cka_run import _build_encoder, cka
from napari_vesuvius_pt.engine.cka_sources import expand_sources
from napari_vesuvius_pt.engine.events import Finished, MatrixUpdated, Started, TilesDone
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.models.checkpoint import save_checkpoint
from napari_vesuvius_pt.models.encoder import build_encoder

TILE = TileConfig(depth=8, size=32, stride=16)
TILES = 16


def _save_epoch(run: Path, encoder: torch.nn.Module, epoch: int) -> Path:
    return save_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}.pt", {
        "kind": "pretrain", "encoder_spec": to_dict(encoder.spec), "encoder": encoder.state_dict(),
        "expander": None, "head": None, "output_stride": 4, "tile": to_dict(TILE), "data": to_dict(DataConfig()),
        "optimizer": {}, "scheduler": {}, "rng": {}, "config": {}, "epoch": epoch, "metrics": {},
    })


def _perturb(encoder: torch.nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A pretraining run folder with epochs 1 and 2 of a tiny resnet10 (each a random step from the last)."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet10", widen_factor=0.25)
    run = tmp_path / "run"
    for epoch in (1, 2):
        _perturb(encoder, 0.05, seed=epoch)
        _save_epoch(run, encoder, epoch)
    return run


def _config(run_dir: Path, segment: Path, out: Path, **kw) -> CKAConfig:
    return CKAConfig(sources=[str(run_dir), "random"], segment=str(segment), out=str(out), tiles=TILES,
                     batch_size=16, device="cpu", **kw)


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    names = rows[0][1:]
    assert [r[0] for r in rows[1:]] == names
    return names, np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def test_cka_run_writes_matrices_and_figure_then_adds_one_row_per_new_epoch(run_dir, fragment_dir, tmp_path):
    out = tmp_path / "cka"
    events = list(cka(_config(run_dir, fragment_dir, out)))

    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    updates = [e for e in events if isinstance(e, MatrixUpdated)]
    assert [u.names for u in updates] == [["epoch_001"], ["epoch_001", "epoch_002"],
                                          ["epoch_001", "epoch_002", "random"]]
    assert {e.name for e in events if isinstance(e, TilesDone)} == {"epoch_001", "epoch_002", "random"}
    assert all(e.total == TILES for e in events if isinstance(e, TilesDone))

    names, linear = _read_csv(out / "linear.csv")
    _, rbf = _read_csv(out / "rbf.csv")
    assert names == ["epoch_001", "epoch_002", "random"]
    for m in (linear, rbf):
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
        np.testing.assert_allclose(m, m.T, atol=1e-6)
        assert ((m > 0) & (m <= 1 + 1e-6)).all()
    # two nearby epochs resemble each other more than either resembles an unrelated random encoder
    assert linear[0, 1] < 0.9999
    assert linear[0, 1] > max(linear[0, 2], linear[1, 2])

    doc = json.loads((out / "cka.json").read_text())
    assert doc["names"] == names and doc["layer"] == "pooled" and doc["tiles"] == TILES and doc["debiased"] is False
    np.testing.assert_allclose(doc["linear"], linear, atol=1e-6)
    np.testing.assert_allclose(doc["rbf"], rbf, atol=1e-6)
    np.testing.assert_allclose(updates[-1].linear, linear, atol=1e-6)
    with Image.open(out / "cka.png") as png:
        assert png.format == "PNG" and png.width > 2 * png.height * 0.9 > 300

    # the engine's values are the library's CKA of the cached features
    feats = {p.name.split("-")[0]: np.load(p) for p in (out / "features").glob("*.npy")}
    assert sorted(feats) == ["epoch_001", "epoch_002", "random"]
    assert feats["epoch_001"].shape == (TILES, 128)  # resnet10 x 0.25: 128-d embedding
    assert linear[0, 1] == pytest.approx(linear_cka(feats["epoch_001"], feats["epoch_002"]), abs=1e-6)
    assert rbf[1, 2] == pytest.approx(rbf_cka(feats["epoch_002"], feats["random"]), abs=1e-6)

    # a third epoch: its features and its row are computed, nothing else
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    encoder = build_encoder("resnet10", widen_factor=0.25)
    encoder.load_state_dict(torch.load(run_dir / "checkpoints" / "epoch_002.pt", weights_only=True)["encoder"])
    _perturb(encoder, 0.05, seed=3)
    _save_epoch(run_dir, encoder, 3)
    events = list(cka(_config(run_dir, fragment_dir, out)))
    summary = events[-1].summary
    assert summary["computed"] == ["epoch_003"]
    assert sum(isinstance(e, TilesDone) and e.name != "epoch_003" for e in events) == 0
    assert summary["pairs_computed"] == 4  # epoch_003 with epochs 1, 2, itself and random: one new row
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir() if p.name in stamps} == stamps
    names2, linear2 = _read_csv(out / "linear.csv")
    assert names2 == ["epoch_001", "epoch_002", "epoch_003", "random"]
    np.testing.assert_allclose(linear2[np.ix_([0, 1, 3], [0, 1, 3])], linear, atol=1e-6)
    assert linear2[2, 1] > linear2[2, 0]  # epoch 3 is nearer to epoch 2 than to epoch 1

    # a checkpoint rewritten in place (new mtime) is recomputed
    path = run_dir / "checkpoints" / "epoch_001.pt"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert list(cka(_config(run_dir, fragment_dir, out)))[-1].summary["computed"] == ["epoch_001"]


def test_cli_cka_on_a_stage_map_with_the_debiased_estimator(run_dir, fragment_dir, tmp_path, capsys):
    out = tmp_path / "cka-layer2"
    ckpt = run_dir / "checkpoints" / "epoch_002.pt"
    rc = main(["cka", str(run_dir / "checkpoints" / "epoch_001.pt"), str(ckpt), "--segment", str(fragment_dir),
               "--tiles", str(TILES), "--layer", "layer2", "--debiased", "--out", str(out), "--device", "cpu",
               "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "linear CKA" in printed and "epoch_002" in printed and "cka.png" in printed
    doc = json.loads((out / "cka.json").read_text())
    assert (doc["layer"], doc["debiased"], doc["tiles"]) == ("layer2", True, TILES)
    assert doc["linear"][0][0] == pytest.approx(1.0) and doc["linear"][0][1] == pytest.approx(doc["linear"][1][0])
    (feature_file,) = [p for p in (out / "features").glob("epoch_002-*.npy")]
    assert np.load(feature_file).shape == (TILES, 32 * 4)  # layer2 of resnet10 x 0.25: 32 channels x (1, 2, 2)
    assert (out / "cka.png").stat().st_size > 10_000

    rc = main(["cka", str(tmp_path / "nowhere"), "--segment", str(fragment_dir), "--out", str(out)])
    assert rc == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_a_diverged_checkpoint_gets_undefined_entries_and_a_note(run_dir, fragment_dir, tmp_path):
    broken = build_encoder("resnet10", widen_factor=0.25)
    with torch.no_grad():
        broken.layer4[0].conv1.weight.fill_(float("nan"))
    bad = tmp_path / "diverged"
    _save_epoch(bad, broken, 1)
    shutil.move(bad / "checkpoints" / "epoch_001.pt", tmp_path / "diverged.pt")
    cfg = CKAConfig(sources=[str(run_dir / "checkpoints" / "epoch_001.pt"), str(tmp_path / "diverged.pt")],
                    segment=str(fragment_dir), out=str(tmp_path / "out"), tiles=8, device="cpu")
    finished = list(cka(cfg))[-1]
    assert finished.summary["linear"][0][0] == pytest.approx(1.0)
    assert finished.summary["linear"][0][1] is None and finished.summary["rbf"][1][1] is None
    assert any("diverged" in n and "NaN" in n for n in finished.summary["notes"])
    doc = json.loads((tmp_path / "out" / "cka.json").read_text())
    assert doc["linear"][1] == [None, None] and doc["notes"]
    rows = list(csv.reader((tmp_path / "out" / "rbf.csv").open()))
    assert rows[2][1:] == ["nan", "nan"] and not math.isnan(float(rows[1][1]))


def test_random_source_is_the_same_encoder_every_time_and_bad_settings_are_refused(run_dir, fragment_dir, tmp_path):
    tiny = EncoderConfig(name="resnet10", widen_factor=0.25)
    (random,) = expand_sources(["random"], random_spec=tiny)
    a, b = (_build_encoder(random, tiny, seed=0).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], _build_encoder(random, tiny, seed=1).state_dict()["conv1.weight"])
    state = torch.random.get_rng_state()
    _build_encoder(random, tiny, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone

    with pytest.raises(ConfigError, match="layer"):
        list(cka(_config(run_dir, fragment_dir, tmp_path / "x", layer="layer9")))
    with pytest.raises(ConfigError, match="at least 4 probe tiles"):
        list(cka(CKAConfig(sources=[str(run_dir)], segment=str(fragment_dir), out=str(tmp_path), tiles=3)))
    with pytest.raises(ConfigError, match="no checkpoints"):
        list(cka(CKAConfig(sources=[str(tmp_path)], segment=str(fragment_dir), out=str(tmp_path / "y"))))


def test_colliding_names_get_their_run_folder_then_a_number(run_dir, tmp_path):
    other = tmp_path / "elsewhere" / "other"
    shutil.copytree(run_dir, other)
    twin = tmp_path / "twin" / "run"  # a second run folder of the same name
    shutil.copytree(run_dir, twin)
    sources = expand_sources([str(run_dir / "checkpoints" / "epoch_001.pt"), str(other), str(twin),
                              "random", str(run_dir / "checkpoints" / "epoch_001.pt"), "random"])
    assert [s.name for s in sources] == ["run/epoch_001", "other/epoch_001", "other/epoch_002", "run/epoch_001-2",
                                         "run/epoch_002", "random"]
    assert len({s.identity for s in sources}) == len(sources)  # exact duplicates were dropped
