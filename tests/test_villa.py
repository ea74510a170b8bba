"""villa's segment layout and the training masks: a villa folder (OME-Zarr surface volume, labels and
masks as PNG 0/255 or zarr 0/1) opens like the other layouts; the supervision and ignore masks decide
which pixels count in the fine-tuning loss and in the scores; a validation mask is a validation region.

The fixture's labels are wrong in one block (mislabeled pixels, as real hand labels are), and the ignore
mask covers that block: scored with the mask, a perfect prediction scores F0.5 = 1; without, it does not.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from napari_vesuvius_pt.config import AugmentConfig, DataConfig, EncoderConfig, FinetuneConfig, OptimConfig, TileConfig
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.data.synthetic import make_fragment
from napari_vesuvius_pt.engine import finetune
from napari_vesuvius_pt.engine.datasets import InkTiles, tile_index
from napari_vesuvius_pt.engine.evaluation import evaluate
from napari_vesuvius_pt.engine.events import EpochDone
from napari_vesuvius_pt.engine.prediction_store import PredictionStore, SegmentInfo
from napari_vesuvius_pt.errors import ConfigError

finetuning = importlib.import_module("napari_vesuvius_pt.engine.finetuning")

SHAPE = (20, 96, 96)
WRONG = (slice(8, 40), slice(60, 92))  # mislabeled block, inside the validation region
NO_AUGMENT = AugmentConfig(max_z_shift=0, flip=False, rotate90=False, shift_scale_rotate=0.0, grid_distortion=0.0,
                           brightness_contrast=0.0, gamma=0.0, noise=0.0, blur=0.0, holes=0, big_holes=0)


def _png(path, arr01):
    Image.fromarray((np.asarray(arr01, bool) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def villa(tmp_path_factory):
    """A villa folder; returns (folder, true labels, written labels, masks)."""
    frag = make_fragment(SHAPE, seed=0, ink_strength=0.25)
    folder = tmp_path_factory.mktemp("villa") / "20240101000000"
    folder.mkdir()
    name = folder.name
    group = zarr.open_group(str(folder / f"{name}.zarr"), mode="w")  # OME-Zarr: level 0 and a coarser one
    group.create_array("0", shape=SHAPE, chunks=(8, 32, 32), dtype=frag.volume.dtype)[...] = frag.volume
    group.create_array("1", shape=(SHAPE[0], 48, 48), chunks=(8, 32, 32), dtype=frag.volume.dtype)[...] = frag.volume[:, ::2, ::2]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                   "datasets": [{"path": "0"}, {"path": "1"}]}]
    truth = frag.inklabels > 0
    written = truth.copy()
    written[WRONG] = ~truth[WRONG]  # mislabeled
    _png(folder / f"{name}_inklabels.png", written)  # 0/255
    _png(folder / f"{name}_mask.png", frag.mask > 0)
    supervision = np.ones(SHAPE[1:], bool)
    supervision[:, :8] = False  # the left edge is not supervised
    _png(folder / f"{name}_supervision_mask.png", supervision)
    validation = np.zeros(SHAPE[1:], bool)
    validation[:, 58:] = True  # the right 40%
    _png(folder / f"{name}_validation_mask.png", validation)
    ignore = np.zeros(SHAPE[1:], np.uint8)
    ignore[WRONG] = 1  # 0/1, stored as zarr
    arr = zarr.open_array(str(folder / f"{name}_ignore_mask.zarr"), mode="w", shape=ignore.shape, chunks=(64, 64),
                          dtype="uint8")
    arr[...] = ignore
    return folder, truth, written, dict(mask=frag.mask > 0, supervision=supervision, validation=validation,
                                        ignore=ignore > 0)


def test_villa_folder_opens_with_labels_and_masks(villa):
    folder, truth, written, masks = villa
    seg = open_segment(folder)
    assert seg.fmt == "villa-folder" and seg.name == folder.name
    assert seg.shape == SHAPE and len(seg.levels) == 2  # level 1 of the OME-Zarr for display
    np.testing.assert_array_equal(seg.inklabels > 0, written)  # 0/255 PNG read as 0/1
    np.testing.assert_array_equal(seg.mask, masks["mask"])
    np.testing.assert_array_equal(seg.supervision_mask, masks["supervision"])
    np.testing.assert_array_equal(seg.validation_mask, masks["validation"])
    np.testing.assert_array_equal(seg.ignore_mask, masks["ignore"])  # 0/1 zarr
    np.testing.assert_array_equal(seg.scored_mask(), masks["mask"] & masks["supervision"] & ~masks["ignore"])
    # the volume is read lazily from the OME-Zarr's level 0
    np.testing.assert_array_equal(seg.read_tile(2, 10, 20, 8, 16), np.asarray(zarr.open_group(
        str(folder / f"{folder.name}.zarr"), mode="r")["0"][2:10, 10:26, 20:36]))


def test_masks_downsample_by_majority(villa):
    folder, *_ = villa
    seg = open_segment(folder, downsample=2)
    assert seg.ignore_mask.shape == seg.shape[1:] == (48, 48)
    assert seg.ignore_mask[4:20, 30:46].all() and not seg.ignore_mask[:4].any()


def test_mask_is_not_mistaken_for_supervision_mask(tmp_path):
    """``*_mask.png`` must not pick up ``*_supervision_mask.png`` (they share the suffix)."""
    from napari_vesuvius_pt.data.synthetic import write_segment

    seg_dir = write_segment(make_fragment((8, 32, 32), seed=1), tmp_path / "scroll1", layout="layers")
    sup = np.zeros((32, 32), bool)
    sup[:, :16] = True
    _png(seg_dir / "scroll1_supervision_mask.png", sup)
    seg = open_segment(seg_dir)
    assert seg.mask is not None and seg.mask.sum() > sup.sum()  # the papyrus mask, not the supervision one
    np.testing.assert_array_equal(seg.supervision_mask, sup)


def _perfect_prediction(path, seg, truth):
    store = PredictionStore.create(path, SegmentInfo.from_segment(seg))
    attrs = {"plane_scale": 1, "scale": [1.0, 1.0], "translate": [0.0, 0.0], "tile": {"size": 32}, "data": {}}
    writer = store.start_array("perfect", truth.shape, (32, 96), "uint8", attrs, run={})
    for r0 in range(0, truth.shape[0], 32):
        writer.write_band(truth[r0:r0 + 32].astype(np.uint8) * 255)
    writer.finish()
    return path


def test_ignore_mask_removes_mislabeled_pixels_from_the_score(villa, tmp_path):
    folder, truth, written, masks = villa
    seg = open_segment(folder)
    pred = _perfect_prediction(tmp_path / "pred.zarr", seg, truth)
    honoured = evaluate(pred, seg)["perfect"]
    plain = evaluate(pred, seg, masks=False)["perfect"]
    assert honoured.f05 == pytest.approx(1.0)  # the mislabeled block is ignored: the truth scores perfectly
    assert plain.f05 < 0.9  # scored against the wrong labels there, it loses
    assert honoured.n == int((masks["mask"] & masks["supervision"] & ~masks["ignore"]).sum())
    inside = evaluate(pred, seg, region="validation_mask")["perfect"]  # the validation mask as a region
    assert inside.n == int((masks["mask"] & masks["supervision"] & ~masks["ignore"] & masks["validation"]).sum())


def test_ink_loss_ignores_pixels_with_zero_weight():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    labels = (torch.rand(2, 1, 32, 32) > 0.5).float()
    weight = torch.ones_like(labels)
    weight[:, :, :16] = 0
    base = finetuning.ink_loss(logits, labels, 0.5, 0.0, weight)["loss"]
    flipped = labels.clone()
    flipped[:, :, :16] = 1 - flipped[:, :, :16]  # change only pixels that do not count
    assert finetuning.ink_loss(logits, flipped, 0.5, 0.0, weight)["loss"].item() == pytest.approx(base.item())
    flipped[:, :, 20:] = 1 - flipped[:, :, 20:]  # pixels that count
    assert finetuning.ink_loss(logits, flipped, 0.5, 0.0, weight)["loss"].item() != pytest.approx(base.item())


def _config(folder, out, **kw) -> FinetuneConfig:
    base = dict(fragments=[str(folder)], out=str(out), encoder_origin="random",
                encoder=EncoderConfig("resnet10", widen_factor=0.125), tile=TileConfig(depth=16, size=32, stride=16,
                                                                                      min_mask_fraction=0.5),
                data=DataConfig(normalization="zscore"), augment=NO_AUGMENT,
                optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4, warmup_epochs=0.0),
                epochs=1, steps_per_epoch=2, batch_size=4, device="cpu", val_mask=True)
    base.update(kw)
    return FinetuneConfig(**base)


def test_training_tiles_carry_the_mask_weights(villa, tmp_path):
    folder, truth, written, masks = villa
    train, val, info = finetuning.prepare_data(_config(folder, tmp_path / "run"), None)
    assert finetuning.has_training_masks(train)
    scored = masks["mask"] & masks["supervision"] & ~masks["ignore"]
    for y, x in train[0].grid.positions:  # no training tile lies in the validation mask, each has counted pixels
        assert not masks["validation"][y:y + 32, x:x + 32].any()
        assert scored[y:y + 32, x:x + 32].any()
    ds = InkTiles(train, tile_index(train), 16, 32, 0, weighted=True)
    for i in range(len(ds)):
        _, _, weight = ds[(i, 0)]
        _, y, x = ds.index[i]
        np.testing.assert_array_equal(weight.numpy() > 0, scored[y:y + 32, x:x + 32])


def test_finetune_on_villa_folder_scores_with_the_masks(villa, tmp_path):
    """Trains on a villa folder validated on its validation mask; the validation scores count only
    supervised, non-ignored pixels: with the ignore mask the mislabeled block leaves the ink prevalence."""
    folder, truth, written, masks = villa
    prevalence = {}
    for ignore in (True, False):
        cfg = _config(folder, tmp_path / f"run-{ignore}", ignore_masks=ignore)
        _, val, _ = finetuning.prepare_data(cfg, None)
        covered = val.grid.footprint()
        scored = covered & masks["mask"] & masks["supervision"] & (~masks["ignore"] if ignore else True)
        epochs = [e for e in finetune(cfg) if isinstance(e, EpochDone)]
        assert epochs, "the run finished no epoch"
        prevalence[ignore] = epochs[-1].metrics["prevalence"]
        assert prevalence[ignore] == pytest.approx(written[scored].mean(), abs=1e-6)
    assert prevalence[True] == pytest.approx(truth[val.grid.footprint() & masks["mask"] & masks["supervision"]
                                                   & ~masks["ignore"]].mean(), abs=1e-6)
    assert prevalence[True] != pytest.approx(prevalence[False])


def test_val_mask_needs_a_validation_mask(tmp_path, fragment_dir):
    with pytest.raises(ConfigError, match="no validation mask"):
        finetuning.prepare_data(_config(fragment_dir, tmp_path / "run"), None)


def test_cli_takes_the_mask_choices(villa, tmp_path, capsys):
    from napari_vesuvius_pt.cli import main

    folder, truth, written, masks = villa
    out = tmp_path / "cli-run"
    argv = ["finetune", "--fragments", str(folder), "--val-mask", "--no-ignore-masks", "--out", str(out),
            "--encoder", "random", "--arch", "resnet10", "--width", "0.125", "--tile", "16x32x32", "--stride", "16",
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    from napari_vesuvius_pt.config import FinetuneConfig, load_config

    saved = load_config(FinetuneConfig, out / "config.yaml")
    assert saved.val_mask and not saved.ignore_masks and saved.supervision_masks
    pred = _perfect_prediction(tmp_path / "pred.zarr", open_segment(folder), truth)
    capsys.readouterr()
    assert main(["evaluate", "--prediction", str(pred), "--segment", str(folder), "--json"]) == 0
    honoured = json.loads(capsys.readouterr().out)["perfect"]
    assert main(["evaluate", "--prediction", str(pred), "--segment", str(folder), "--no-masks", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["perfect"]
    assert honoured["f05"] == pytest.approx(1.0) and plain["f05"] < 0.9
    with pytest.raises(SystemExit) as exc:  # one kind of validation data
        main(["finetune", "--fragments", str(folder), "--val-mask", "--val-region", "x.json"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
