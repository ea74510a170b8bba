"""Damaged data, hostile files, unwritable folders and impossible settings through the CLI: each ends in one
line on stderr and exit status 2, names what to fix, and leaves nothing half-written. Tiny models."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.cli import main

TINY = ["--arch", "resnet10", "--width", "0.25", "--tile", "16x32x32", "--stride", "32", "--device", "cpu", "--quiet"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def ink_run(fragment_dir, fragment2_dir, tmp_path_factory) -> Path:
    """A one-step fine-tuning run (a checkpoint to predict with)."""
    out = tmp_path_factory.mktemp("faults-data") / "ink"
    assert main(["finetune", "--fragments", str(fragment_dir), "--val-fragment", str(fragment2_dir), "--out", str(out),
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", *TINY]) == 0
    return out


# ---------------------------------------------------------------- damaged data


def test_truncated_tiff_layer_is_named_at_open(scroll_dir, tmp_path, capsys):
    seg = tmp_path / "seg"
    shutil.copytree(scroll_dir, seg)
    layer = seg / "layers" / "05.tif"
    os.truncate(layer, layer.stat().st_size // 2)
    assert main(["info", str(seg)]) == 2
    line = _one_line(capsys)
    assert str(layer) in line and "truncated" in line, line
    assert main(["pretrain", "--segments", str(seg), "--out", str(tmp_path / "run"), "--encoder", "resnet10",
                 "--width", "0.25", "--tile", "16x32x32", "--device", "cpu", "--quiet"]) == 2
    assert str(layer) in _one_line(capsys)
    assert main(["convert", str(seg), str(tmp_path / "seg.zarr"), "--quiet"]) == 2
    assert str(layer) in _one_line(capsys)


def test_corrupt_zarr_chunk_is_named_with_the_tile_read(fragment_dir, ink_run, tmp_path, capsys):
    z = tmp_path / "frag.zarr"
    assert main(["convert", str(fragment_dir), str(z), "--chunks", "8", "32", "32", "--quiet"]) == 0
    capsys.readouterr()
    chunk = z / "volume" / "c" / "1" / "2" / "2"  # layers 8..15, the middle of the plane: inside the mask
    data = bytearray(chunk.read_bytes())
    data[8:-4] = b"\x07" * (len(data) - 12)
    chunk.write_bytes(bytes(data))
    assert main(["convert", str(z), str(tmp_path / "copy.zarr"), "--quiet"]) == 2
    line = _one_line(capsys)
    assert f"cannot read {z}/volume" in line and "chunk indices" in line and "layers" in line, line
    assert not (tmp_path / "copy.zarr").exists()
    assert main(["predict", "--checkpoint", str(ink_run), "--segment", str(z), "--out", str(tmp_path / "p.zarr"),
                 "--device", "cpu", "--quiet"]) == 2
    line = _one_line(capsys)
    assert f"{z}/volume" in line and "rows" in line and "columns" in line, line


def test_nan_volume_under_fitted_normalizations_says_nan():
    from napari_vesuvius_pt.data.normalize import fit_normalizer
    from napari_vesuvius_pt.errors import SegmentError

    volume = np.random.default_rng(0).random((8, 64, 64)).astype(np.float32)
    volume[:, 10:40, 10:40] = np.nan
    for name in ("minmax", "zscore"):
        with pytest.raises(SegmentError, match="NaN or infinite") as info:
            fit_normalizer(name, volume)
        assert "constant" not in str(info.value)


# ---------------------------------------------------------------- pickles that would run code


class _Payload:
    """Unpickling this (outside weights_only) creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payloads_never_run(ink_run, fragment_dir, fragment2_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-vesuvius-pt/1", "kind": "finetune", "encoder": _Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    evil_run = tmp_path / "evil-run"
    (evil_run / "checkpoints").mkdir(parents=True)
    shutil.copy(evil, evil_run / "last.pt")
    shutil.copy(ink_run / "config.yaml", evil_run / "config.yaml")

    calls = []
    for source in (str(evil), f"k700:{evil}", str(evil_run)):
        calls.append(["finetune", "--fragments", str(fragment_dir), "--val-fragment", str(fragment2_dir),
                      "--encoder", source, "--out", str(tmp_path / "ft"), "--epochs", "1", *TINY])
        calls.append(["cka", source, "random", "--segment", str(fragment_dir), "--out", str(tmp_path / "cka"),
                      "--tiles", "16", "--device", "cpu", "--quiet"])
    for source in (str(evil), str(evil_run)):
        calls.append(["predict", "--checkpoint", source, "--segment", str(fragment_dir),
                      "--out", str(tmp_path / "p.zarr"), "--device", "cpu", "--quiet"])
    calls.append(["finetune", "--resume", str(evil_run), "--quiet"])
    for argv in calls:
        assert main(argv) == 2, argv
        _one_line(capsys)
        assert not marker.exists(), f"{argv[:4]} ran the payload"


# ---------------------------------------------------------------- settings no run can use


def test_oversized_batch_refused_before_the_first_step(scroll_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--segments", str(scroll_dir), "--out", str(out), "--encoder", "resnet10", "--width",
                 "0.25", "--tile", "16x32x32", "--stride", "32", "--mask-erosion", "0", "--batch-size", "100000",
                 "--device", "cpu", "--quiet"]) == 2
    line = _one_line(capsys)
    assert "batch size 100000 is larger than the" in line and "--batch-size" in line, line
    assert not list(out.rglob("*.pt"))


def test_step_that_cannot_fit_in_memory_is_refused_with_what_to_lower():
    from napari_vesuvius_pt.config import EncoderConfig, PretrainConfig, TileConfig
    from napari_vesuvius_pt.engine.failures import check_step_fits
    from napari_vesuvius_pt.errors import ConfigError
    from napari_vesuvius_pt.models.encoder import build_encoder

    encoder = build_encoder("resnet10", 1, 0.25)
    cfg = PretrainConfig(encoder=EncoderConfig("resnet10", 0.25), tile=TileConfig(16, 32, 32), batch_size=64)
    need = check_step_fits(cfg, encoder, encoder, torch.device("cpu"), views=2, available=1 << 40)
    half = check_step_fits(PretrainConfig(tile=TileConfig(16, 32, 32), batch_size=32), encoder, encoder,
                           torch.device("cpu"), views=2, available=1 << 40)
    assert 1.8 < need / half < 2.0  # activations scale with the batch, the weights do not
    with pytest.raises(ConfigError, match=r"--batch-size (\d+) or less") as info:
        check_step_fits(cfg, encoder, encoder, torch.device("cpu"), views=2, available=need // 3)
    suggested = int(re.search(r"--batch-size (\d+) or less", str(info.value)).group(1))
    assert 1 <= suggested < 64
    assert check_step_fits(PretrainConfig(tile=TileConfig(16, 32, 32), batch_size=suggested), encoder, encoder,
                           torch.device("cpu"), views=2, available=need // 3) <= need // 3


@pytest.mark.parametrize("command", ["pretrain", "finetune", "cka"])
def test_negative_seed_refused(command, scroll_dir, fragment_dir, fragment2_dir, tmp_path, capsys):
    argv = {
        "pretrain": ["pretrain", "--segments", str(scroll_dir), "--out", str(tmp_path / "r")],
        "finetune": ["finetune", "--fragments", str(fragment_dir), "--val-fragment", str(fragment2_dir),
                     "--out", str(tmp_path / "r")],
        "cka": ["cka", "random", "--segment", str(fragment_dir), "--out", str(tmp_path / "r")],
    }[command]
    assert main([*argv, "--seed", "-1", "--device", "cpu", "--quiet"]) == 2
    assert "seed must be 0 or more, got -1" in _one_line(capsys)


@pytest.mark.parametrize("flags, what", [
    (["--encoder-lr-scale", "-0.5"], "encoder_lr_scale"),
    (["--region-margin", "-3"], "region_margin"),
])
def test_negative_finetune_settings_refused(flags, what, fragment_dir, fragment2_dir, tmp_path, capsys):
    assert main(["finetune", "--fragments", str(fragment_dir), "--val-fragment", str(fragment2_dir),
                 "--out", str(tmp_path / "r"), *flags, "--device", "cpu", "--quiet"]) == 2
    assert what in _one_line(capsys)


def test_negative_mask_erosion_and_warmup_refused(scroll_dir, tmp_path, capsys):
    assert main(["pretrain", "--segments", str(scroll_dir), "--out", str(tmp_path / "r"), "--mask-erosion", "-1",
                 "--quiet"]) == 2
    assert "mask_erosion" in _one_line(capsys)
    (tmp_path / "c.yaml").write_text("optim:\n  warmup_epochs: -1\n")
    assert main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--segments", str(scroll_dir),
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "warmup_epochs" in _one_line(capsys)


def test_yaml_numbers_as_users_write_them_and_malformed_yaml_in_one_line(tmp_path, capsys):
    from napari_vesuvius_pt.config import FinetuneConfig, load_config

    (tmp_path / "ok.yaml").write_text("optim:\n  lr: 1.0e6\n  weight_decay: 1e-4\n  momentum: .9\nepochs: 2\n")
    cfg = load_config(FinetuneConfig, tmp_path / "ok.yaml")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum, cfg.epochs) == (1e6, 1e-4, 0.9, 2)
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: [0.1\nepochs: 2\n")
    assert main(["pretrain", "--config", str(tmp_path / "bad.yaml"), "--segments", "x", "--quiet"]) == 2
    line = _one_line(capsys)
    assert "bad.yaml is not valid YAML" in line and "line 3" in line, line


# ---------------------------------------------------------------- folders the user may not write to

_UNPRIVILEGED = r"""
import contextlib, io, json, sys
import torch
torch.set_num_threads(1)
from napari_vesuvius_pt.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    results.append({"argv": argv, "rc": rc, "err": err.getvalue()})
print(json.dumps(results))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None or sys.platform != "linux", reason="needs util-linux setpriv")
def test_read_only_folders_give_one_line(ink_run, fragment_dir, scroll_dir, tmp_path):
    """Run as a process without CAP_DAC_OVERRIDE (CI runs as root, which writes anywhere otherwise)."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    store = tmp_path / "store.zarr"  # a prediction store that became read-only; its folder stays writable
    assert main(["predict", "--checkpoint", str(ink_run), "--segment", str(fragment_dir), "--out", str(store),
                 "--device", "cpu", "--quiet"]) == 0
    run = tmp_path / "run-ro"
    shutil.copytree(ink_run, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(ink_run), str(run)))
    for p in [ro, *store.rglob("*"), store, *run.rglob("*"), run]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    calls = [
        ["predict", "--checkpoint", str(ink_run), "--segment", str(fragment_dir), "--out", str(ro / "p.zarr"),
         "--device", "cpu", "--quiet"],
        ["predict", "--checkpoint", str(ink_run), "--name", "again", "--segment", str(fragment_dir),
         "--out", str(store), "--device", "cpu", "--quiet"],
        ["convert", str(fragment_dir), str(ro / "f.zarr"), "--quiet"],
        ["synth", str(ro / "synthetic"), "--shape", "4", "32", "32"],
        ["pretrain", "--segments", str(scroll_dir), "--out", str(ro / "run"), "--quiet"],
        ["finetune", "--resume", str(run), "--epochs", "2", "--quiet"],
        ["cka", "random", "--segment", str(fragment_dir), "--out", str(ro / "cka"), "--quiet"],
    ]
    try:
        proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c",
                               _UNPRIVILEGED, json.dumps(calls)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        for p in [ro, store, *store.rglob("*"), run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for result in json.loads(proc.stdout.strip().splitlines()[-1]):
        lines = [line for line in result["err"].strip().splitlines() if line.strip()]
        assert result["rc"] == 2 and len(lines) == 1 and "Traceback" not in result["err"], result
        assert "error:" in lines[0]
    assert not list(ro.iterdir())


def test_diverging_finetune_stops_with_the_training_loops_nan_message(fragment_dir, fragment2_dir, tmp_path, capsys):
    assert main(["finetune", "--fragments", str(fragment_dir), "--val-fragment", str(fragment2_dir), "--out",
                 str(tmp_path / "r"), "--lr", "1e6", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 *TINY]) == 2
    line = _one_line(capsys)
    assert "became NaN or infinite" in line and "--lr" in line and "predictions hold" not in line, line


@pytest.mark.parametrize("ink, words", [(0, "holds no ink"), (1, "holds only ink")])
def test_validation_without_ink_or_background_is_warned_about(ink, words):
    from types import SimpleNamespace

    from napari_vesuvius_pt.engine.finetuning import check_validation_labels

    labels = np.zeros((64, 64), np.uint8)
    labels[40:, 40:] = 1  # ink outside the validation tiles only
    if ink:
        labels[:32, :32] = 1
    val = SimpleNamespace(segment=SimpleNamespace(inklabels=labels, papyrus_mask=lambda: np.ones((64, 64), bool)),
                          grid=SimpleNamespace(positions=np.array([[0, 0]])))
    assert words in check_validation_labels(val, 32, "fragment")
    labels[5, 5] = 1 - ink  # one pixel of the other class: scores mean something again
    assert check_validation_labels(val, 32, "fragment") is None
