"""vesuvius-pt info / synth / convert, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_vesuvius_pt.cli import main


def _json(capsys, *argv) -> dict:
    assert main(["info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_and_text(fragment_dir, capsys):
    info = _json(capsys, str(fragment_dir))
    mask = np.asarray(Image.open(fragment_dir / "mask.png")) > 0
    labels = np.asarray(Image.open(fragment_dir / "inklabels.png"))
    assert info["shape"] == [20, 192, 192] and info["dtype"] == "uint16"
    assert info["has_mask"] is True and info["has_inklabels"] is True
    assert info["ink_fraction"] == pytest.approx(labels[mask].mean())
    assert info["format"] == "kaggle-folder" and info["z_range"] == [0, 20]

    sub = _json(capsys, str(fragment_dir), "--z-range", "2", "18", "--reverse", "--downsample", "2")
    assert sub["shape"] == [16, 96, 96] and sub["z_range"] == [2, 18] and sub["reverse"] is True

    assert main(["info", str(fragment_dir)]) == 0
    text = capsys.readouterr().out
    assert "20 x 192 x 192" in text and "uint16" in text and "memory-mapped" in text
    assert f"ink on {info['ink_fraction']:.1%} of the papyrus" in text


def test_info_on_unlabeled_segment(scroll_dir, capsys):
    info = _json(capsys, str(scroll_dir))
    assert info["has_mask"] is True and info["has_inklabels"] is False and info["ink_fraction"] is None


def test_info_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vesuvius-pt info: error: folder") and "is empty" in err[0]


def test_synth_then_convert_then_info(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "frag"), "--seed", "3", "--shape", "8", "64", "96", "--ink-strength", "0.2"]) == 0
    assert main(["synth", str(tmp_path / "seg"), "--kind", "segment", "--shape", "8", "64", "64", "--layout", "layers"]) == 0
    capsys.readouterr()
    frag = _json(capsys, str(tmp_path / "frag"))
    assert frag["shape"] == [8, 64, 96] and frag["has_inklabels"] is True and frag["ink_fraction"] > 0
    seg = _json(capsys, str(tmp_path / "seg"))
    assert seg["format"] == "layers-folder" and seg["has_inklabels"] is False

    assert main(["convert", str(tmp_path / "frag"), str(tmp_path / "frag.zarr"), "--chunks", "4", "32", "32", "--quiet"]) == 0
    capsys.readouterr()
    conv = _json(capsys, str(tmp_path / "frag.zarr"))
    assert conv["format"] == "zarr" and "chunks (4, 32, 32)" in conv["storage"]
    assert conv["shape"] == frag["shape"] and conv["ink_fraction"] == pytest.approx(frag["ink_fraction"])
    assert conv["converted_from"] == str((tmp_path / "frag").resolve())
    # converting onto an existing output is refused with one line
    assert main(["convert", str(tmp_path / "frag"), str(tmp_path / "frag.zarr"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
