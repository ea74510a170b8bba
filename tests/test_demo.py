"""The demo: its sizes come from resources/configs (one source of truth), and a tiny run's report gives
mean ± sd over seeds, both baselines, the paired difference VICReg − random, and full-resolution
prediction pictures."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

import napari_vesuvius_pt
from napari_vesuvius_pt.config import FinetuneConfig, PretrainConfig, from_dict, load_config

CONFIGS = napari_vesuvius_pt.__file__.replace("__init__.py", "resources/configs")

TINY = """
demo: {segments: 1, fragments: 4, segment_shape: [12, 128, 128], fragment_shape: [12, 96, 96], seeds: 2, unfrozen_seeds: 1}
pretrain:
  encoder: {name: resnet10, widen_factor: 0.25}
  data: {normalization: zscore}
  tile: {depth: 8, size: 32, stride: 16}
  mask_erosion: 2
  epochs: 1
  steps_per_epoch: 2
  batch_size: 4
finetune:
  encoder: {name: resnet10, widen_factor: 0.25}
  data: {normalization: zscore}
  tile: {depth: 8, size: 32, stride: 16, min_mask_fraction: 0.5}
  epochs: 1
  steps_per_epoch: 2
  batch_size: 4
predict: {edge: 4, batch_size: 8}
cka: {tiles: 16, layer: pooled}
"""


@pytest.mark.parametrize("scale", ["quick", "laptop", "seed"])
def test_scales_are_read_from_the_resource_files(scale):
    from napari_vesuvius_pt.engine.demo import load_scale, scale_path

    path = scale_path(scale)
    assert path.parent.samefile(CONFIGS)
    raw = yaml.safe_load(path.read_text())
    s = load_scale(scale)
    assert s.demo.segments == raw["demo"]["segments"] and s.demo.fragments == 4
    assert list(s.demo.fragment_shape) == raw["demo"]["fragment_shape"]
    # the same file is what `vesuvius-pt pretrain|finetune --config` reads, section by section
    assert s.pretrain == from_dict(PretrainConfig, raw["pretrain"])
    assert load_config(FinetuneConfig, path) == s.finetune
    assert s.finetune.epochs == raw["finetune"]["epochs"]


def test_pretrain_cli_takes_a_sectioned_config(tmp_path):
    import argparse

    from napari_vesuvius_pt.cli.pretrain import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    path = f"{CONFIGS}/laptop.yaml"
    cfg = config_from_args(parser.parse_args(["pretrain", "--config", path, "--segments", "a", "--epochs", "1"]))
    raw = yaml.safe_load(open(path))["pretrain"]
    assert cfg.epochs == 1 and cfg.tile.size == raw["tile"]["size"] and cfg.encoder.name == raw["encoder"]["name"]


def test_unknown_scale_is_a_clear_error(monkeypatch, tmp_path):
    from napari_vesuvius_pt.engine import demo as demo_mod
    from napari_vesuvius_pt.errors import ConfigError

    monkeypatch.setattr(demo_mod, "CONFIGS", tmp_path)
    with pytest.raises(ConfigError, match="unknown demo scale"):
        demo_mod.load_scale("quick")


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from napari_vesuvius_pt.config import DemoConfig
    from napari_vesuvius_pt.engine import demo as demo_mod
    from napari_vesuvius_pt.engine.events import Finished

    configs = tmp_path_factory.mktemp("configs")
    (configs / "quick.yaml").write_text(TINY)
    mp = pytest.MonkeyPatch()
    mp.setattr(demo_mod, "CONFIGS", configs)
    out = tmp_path_factory.mktemp("demo") / "out"
    try:
        events = list(demo_mod.demo(DemoConfig(out=str(out), scale="quick", device="cpu")))
    finally:
        mp.undo()
    assert isinstance(events[-1], Finished)
    return out, events[-1].summary


def test_tiny_demo_report_has_spread_baselines_and_the_difference(tiny_demo):
    out, summary = tiny_demo
    report = (out / "report.md").read_text()
    for row in ("random (frozen) | 2 |", "VICReg (frozen) | 2 |", "encoder trained too",
                "linear model on 5×5-smoothed z-profiles (baseline)", "all ink (baseline"):
        assert row in report
    assert report.count("±") >= 4  # F0.5 and AUC of both probes
    assert "VICReg − random: F0.5" in report and "distinguishable from zero" in report
    assert summary["table"] in report  # the table the CLI prints for the README is the report's
    # the protocol: validate on the lower 30% of fragment 2; the scrolls hold ink but have no labels
    assert summary["fragments"][0].endswith("fragment-2") and (out / "validation_region.json").is_file()
    assert not list((out / "data" / "segment-1").glob("*inklabels*"))
    comparison = json.loads((out / "compare" / "compare.json").read_text())
    assert comparison["pairs"][0]["label"] == "vicreg − random"


def test_tiny_demo_pictures_are_full_resolution(tiny_demo):
    out, summary = tiny_demo
    img = Image.open(out / "figures" / "predictions.png")
    # the band is 96 pixels wide: every panel at least one picture pixel per plane pixel
    assert img.size[0] >= 96
    # middle layer, labels, random, VICReg, the fine-tune and the linear baseline, one above the other
    band_rows = 96 - round(96 * 0.7)
    assert img.size[1] >= 6 * band_rows
