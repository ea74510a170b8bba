"""Ink fine-tuning engine and CLI on tiny encoders and synthetic fragments: a model beats the all-ink
baseline on a validation region, previews and checkpoints are usable, a frozen encoder stays frozen,
stop/resume matches an uninterrupted run, and bad input is refused clearly."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import (
    AugmentConfig,
    DataConfig,
    EncoderConfig,
    FinetuneConfig,
    OptimConfig,
    PretrainConfig,
    TileConfig,
    VICRegConfig,
    load_config,
)
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment
from napari_vesuvius_pt.data.tiles import TileGrid, split_by_regions
from napari_vesuvius_pt.engine import finetune, pretrain
from napari_vesuvius_pt.engine.events import EpochDone, Failed, Finished, PreviewReady, Started, StepDone
from napari_vesuvius_pt.errors import ConfigError, SegmentError
from napari_vesuvius_pt.models.checkpoint import ink_model_from_checkpoint, load_checkpoint

finetune_module = importlib.import_module("napari_vesuvius_pt.engine.finetuning")


NO_AUGMENT = AugmentConfig(max_z_shift=0, flip=False, rotate90=False, shift_scale_rotate=0.0, grid_distortion=0.0,
                           brightness_contrast=0.0, gamma=0.0, noise=0.0, blur=0.0, holes=0, big_holes=0)
INK_STRENGTH = 0.25  # the default (0.12) is learnable, but not by a width-0.125 ResNet-10 in 35 steps on 56 tiles


@pytest.fixture(scope="module")
def ink_fragment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ink")
    return write_segment(make_fragment((20, 192, 192), seed=0, ink_strength=INK_STRENGTH), root / "fragment")


@pytest.fixture(scope="module")
def right_region(tmp_path_factory) -> Path:
    """The right 40% of the fragment, as JSON polygons in full-resolution pixels."""
    path = tmp_path_factory.mktemp("regions") / "right.json"
    path.write_text(json.dumps({"polygons": [[[0, 115.2], [0, 192], [192, 192], [192, 115.2]]]}))
    return path


def tiny_config(fragments, out, **kw) -> FinetuneConfig:
    base = dict(
        fragments=[str(f) for f in fragments],
        out=str(out),
        encoder_origin="random",
        encoder=EncoderConfig("resnet10", widen_factor=0.125),
        encoder_lr_scale=1.0,
        tile=TileConfig(depth=16, size=32, stride=16, min_mask_fraction=0.5),
        data=DataConfig(normalization="zscore"),
        augment=NO_AUGMENT,
        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4, warmup_epochs=0.0),
        epochs=2,
        batch_size=8,
        device="cpu",
    )
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def region_run(tmp_path_factory, ink_fragment, right_region):
    out = tmp_path_factory.mktemp("finetune") / "run"
    cfg = tiny_config([ink_fragment], out, val_region=str(right_region), epochs=5)
    return cfg, list(finetune(cfg))


def test_finetuned_model_beats_the_all_ink_baseline_on_a_validation_region(region_run, ink_fragment, right_region):
    cfg, events = region_run
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    steps = [e for e in events if isinstance(e, StepDone)]
    assert set(steps[0].losses) == {"loss", "bce", "dice"}
    epochs = [e for e in events if isinstance(e, EpochDone)]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5]
    final = epochs[-1].metrics
    for key in ("f05", "threshold", "precision", "recall", "auc"):
        assert np.isfinite(final[key]), key

    # the baseline, computed here independently: ink prevalence over the validation tiles' pixels
    segment = open_segment(ink_fragment)
    grid = TileGrid.from_mask(segment.mask, 32, 16, 0.5)
    polygons = [np.array([[0, 115.2], [0, 192], [192, 192], [192, 115.2]])]
    _, val = split_by_regions(grid, polygons, 32)
    pixels = grid.footprint(val) & segment.mask.astype(bool)
    p = float(segment.inklabels[pixels].mean())
    baseline = 1.25 * p / (0.25 * p + 1.0)  # F0.5 of calling every pixel ink
    assert final["prevalence"] == pytest.approx(p)
    assert final["baseline_f05"] == pytest.approx(baseline)
    assert final["f05"] > baseline + 0.1, (final["f05"], baseline)
    assert final["auc"] > 0.6
    assert epochs[-1].metrics["loss"] < epochs[0].metrics["loss"]

    # a preview per epoch: the stitched validation prediction over the validation tiles' bounding box
    previews = [e for e in events if isinstance(e, PreviewReady)]
    assert len(previews) == 5
    y0, x0 = grid.positions[val].min(axis=0)
    y1, x1 = grid.positions[val].max(axis=0) + 32
    last = previews[-1]
    assert last.array.shape == (y1 - y0, x1 - x0) and last.translate == (float(y0), float(x0))
    assert last.scale == (1.0, 1.0)
    assert 0.0 <= last.array.min() and last.array.max() <= 1.0
    assert last.array[pixels[y0:y1, x0:x1]].std() > 0  # not a constant map


def test_finetune_checkpoint_rebuilds_the_model(region_run):
    cfg, events = region_run
    run = Path(cfg.out)
    payload = load_checkpoint(run / "last.pt")
    assert payload["kind"] == "finetune" and payload["epoch"] == 5 and payload["output_stride"] == 4
    assert payload["data"]["normalization"] == "zscore" and set(payload["data"]["normalization_params"]) == {"mean", "std"}
    model, _ = ink_model_from_checkpoint(run)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 16, 32, 32))
    assert out.shape == (2, 1, 8, 8)
    saved = load_config(FinetuneConfig, run / "config.yaml")
    assert Path(saved.val_region) == run / "val_region.json"  # the regions travel with the run
    assert json.loads((run / "val_region.json").read_text())["polygons"][0][1] == [0.0, 192.0]
    assert dataclasses.replace(saved, val_region=cfg.val_region) == dataclasses.replace(cfg, resume=None)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5] and "f05" in lines[0]


def test_frozen_pretrained_encoder_stays_frozen(tmp_path, scroll_dir, fragment_dir, fragment2_dir):
    pre = PretrainConfig(segments=[str(scroll_dir)], out=str(tmp_path / "pre"), encoder=EncoderConfig("resnet10", 0.125),
                         tile=TileConfig(16, 32, 16), vicreg=VICRegConfig(expander=[32, 32]), epochs=1, batch_size=4,
                         steps_per_epoch=2, device="cpu")
    list(pretrain(pre))
    cfg = tiny_config([fragment_dir], tmp_path / "ft", encoder_origin=str(tmp_path / "pre"), freeze_encoder=True,
                      val_fragment=str(fragment2_dir), epochs=1, steps_per_epoch=3,
                      encoder=EncoderConfig("resnet50", 1.0))  # ignored: the run's own encoder is loaded
    events = list(finetune(cfg))
    assert isinstance(events[-1], Finished), events[-1]
    before = load_checkpoint(tmp_path / "pre" / "last.pt")["encoder"]
    after = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert after["encoder_spec"]["name"] == "resnet10"
    for k, v in before.items():  # weights and batch-norm statistics
        assert torch.equal(v, after["encoder"][k]), k
    assert after["encoder_info"]["origin"] == "pretrain"


def test_stop_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, fragment_dir, fragment2_dir):
    kw = dict(val_fragment=str(fragment2_dir), steps_per_epoch=3, augment=AugmentConfig())
    list(finetune(tiny_config([fragment_dir], tmp_path / "full", **kw)))
    part = tiny_config([fragment_dir], tmp_path / "part", **kw)
    gen = finetune(part)
    for event in gen:
        if isinstance(event, StepDone) and (event.epoch, event.step) == (1, 2):
            gen.close()
    assert (load_checkpoint(tmp_path / "part" / "last.pt")["step"]) == 2
    events = list(finetune(dataclasses.replace(part, resume=str(tmp_path / "part"))))
    first = next(e for e in events if isinstance(e, StepDone))
    assert (first.epoch, first.step) == (1, 3)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for part_name in ("encoder", "head"):
        for k in a[part_name]:
            assert torch.equal(a[part_name][k], b[part_name][k]), (part_name, k)
    assert a["metrics"]["f05"] == b["metrics"]["f05"]


def test_nan_loss_fails(tmp_path, fragment_dir, fragment2_dir, monkeypatch):
    real = finetune_module.ink_loss

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        return {**losses, "loss": losses["loss"] * float("inf")}

    monkeypatch.setattr(finetune_module, "ink_loss", poisoned)
    events = list(finetune(tiny_config([fragment_dir], tmp_path / "run", val_fragment=str(fragment2_dir))))
    assert isinstance(events[-1], Failed)
    assert "ink loss became NaN or infinite at epoch 1, step 1" in events[-1].message
    assert events[-1].checkpoint is None  # no epoch completed: nothing good to keep


def test_cli_finetune_with_a_napari_shapes_csv(tmp_path, fragment_dir, capsys):
    napari_io = pytest.importorskip("napari_builtins.io")
    from napari_vesuvius_pt.cli import main

    lower = np.array([[134.0, 0.0], [134.0, 192.0], [192.0, 192.0], [192.0, 0.0]])  # the lower 30%
    csv = napari_io.napari_write_shapes(str(tmp_path / "regions.csv"), [lower], {"shape_type": ["rectangle"]})
    out = tmp_path / "cli-ft"
    argv = ["finetune", "--fragments", str(fragment_dir), "--val-region", csv, "--out", str(out), "--encoder", "random", "--arch", "resnet10",
            "--width", "0.125", "--tile", "16x32x32", "--stride", "16", "--output-stride", "8", "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "finetune: 1 epoch(s)" in text and "f05=" in text
    saved = load_config(FinetuneConfig, out / "config.yaml")
    assert (saved.output_stride, saved.encoder.name, saved.tile.size, saved.batch_size) == (8, "resnet10", 32, 4)
    assert main(["finetune", "--fragments", str(fragment_dir), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--val-fragment" in capsys.readouterr().err


def test_user_errors_are_clear(tmp_path, fragment_dir, fragment2_dir, scroll_dir):
    with pytest.raises(SegmentError, match="no ink labels"):
        next(finetune(tiny_config([scroll_dir], tmp_path / "a", val_fragment=str(fragment2_dir))))
    with pytest.raises(ConfigError, match="not both"):
        next(finetune(tiny_config([fragment_dir], tmp_path / "b", val_fragment=str(fragment2_dir), val_region="r.json")))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"polygons": [[[500, 500], [500, 600], [600, 600]]]}))
    with pytest.raises(ConfigError, match="outside"):
        next(finetune(tiny_config([fragment_dir], tmp_path / "c", val_region=str(outside))))
    sliver = tmp_path / "sliver.json"
    sliver.write_text(json.dumps({"polygons": [[[0, 0], [0, 3], [3, 3], [3, 0]]]}))
    with pytest.raises(ConfigError, match="no validation tiles"):
        next(finetune(tiny_config([fragment_dir], tmp_path / "d", val_region=str(sliver))))


def test_only_ink_tiles_and_skip_empty_eval_choose_tiles_with_ink(fragment_dir, fragment2_dir):
    from napari_vesuvius_pt.engine.finetuning import prepare_data

    base = tiny_config([fragment_dir], "unused", val_fragment=str(fragment2_dir))
    train_all, val_all, _ = prepare_data(base, None)
    train, val, info = prepare_data(dataclasses.replace(base, only_ink_tiles=True, skip_empty_eval=True), None)

    def with_ink(source) -> list[bool]:
        ink = source.segment.inklabels
        return [bool(ink[y:y + 32, x:x + 32].any()) for y, x in source.grid.positions]

    assert all(with_ink(train[0])) and all(with_ink(val))
    assert len(train[0].grid) == sum(with_ink(train_all[0])) < len(train_all[0].grid)
    assert len(val.grid) == sum(with_ink(val_all)) < len(val_all.grid)
    assert info["train_tiles"] == len(train[0].grid) and info["val_tiles"] == len(val.grid)


def test_validation_regions_on_the_second_fragment_split_that_fragment(tmp_path, fragment_dir, fragment2_dir):
    """A region file saved with a fragment's name validates on that fragment, whichever place it has in
    the list; the run keeps the name with its copy; a name that is no training fragment is refused."""
    from napari_vesuvius_pt.data.tiles import region_fragment, save_regions
    from napari_vesuvius_pt.engine.finetuning import prepare_data

    name2 = open_segment(fragment2_dir).name
    band = [np.array([[0, 100], [0, 192], [192, 192], [192, 100]], dtype=float)]
    region = save_regions(tmp_path / "band.json", band, fragment=name2)
    cfg = tiny_config([fragment_dir, fragment2_dir], tmp_path / "run", val_region=str(region))
    (untouched, split), val, info = prepare_data(cfg, tmp_path)
    full = [TileGrid.from_mask(open_segment(p).mask, 32, 16, 0.5) for p in (fragment_dir, fragment2_dir)]
    assert val.name == name2 and info["region_fragment"] == name2
    assert len(untouched.grid) == len(full[0])  # the first fragment trains whole
    train_idx, val_idx = split_by_regions(full[1], band, 32)
    assert len(split.grid) == len(train_idx) and len(val.grid) == len(val_idx)
    assert region_fragment(tmp_path / "val_region.json")[0] == name2  # the run's copy says where it was drawn

    # an old file without a fragment name, and a napari CSV: the first fragment, as before
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"polygons": [b.tolist() for b in band]}))
    _, val, info = prepare_data(dataclasses.replace(cfg, val_region=str(plain)), None)
    assert val.name == open_segment(fragment_dir).name

    elsewhere = save_regions(tmp_path / "elsewhere.json", band, fragment="fragment-9")
    with pytest.raises(ConfigError, match="'fragment-9', which is not a training fragment"):
        prepare_data(dataclasses.replace(cfg, val_region=str(elsewhere)), None)
    from napari_vesuvius_pt.cli import main

    assert main(["finetune", "--fragments", str(fragment_dir), str(fragment2_dir), "--val-region", str(elsewhere),
                 "--out", str(tmp_path / "cli"), "--quiet"]) == 2
