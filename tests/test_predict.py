"""Tiled prediction end to end on the synthetic fragment: an identity-like model comes back out
unchanged, a stopped prediction resumes to the same array, several checkpoints give one array each,
and bad input is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_vesuvius_pt.config import DataConfig, PredictConfig, TileConfig, to_dict
from napari_vesuvius_pt.data.blocks import block_fraction
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.data.tiles import save_regions
from napari_vesuvius_pt.engine.events import Finished, Started, TilesDone
from napari_vesuvius_pt.engine.prediction import InkPredictor, checkpoint_label, predict
from napari_vesuvius_pt.engine.prediction_store import open_prediction
from napari_vesuvius_pt.errors import ConfigError, SegmentError

RAW = DataConfig(normalization="none")  # the models below see raw uint16 values


class DepthMean(torch.nn.Module):
    """Identity-like: the mean over depth of the tile (scaled to [0, 1]), averaged to the output stride,
    returned as logits so that the engine's sigmoid gives it back."""

    def __init__(self, output_stride: int = 1):
        super().__init__()
        self.output_stride = output_stride

    def forward(self, x):
        m = x.mean(dim=2) / 65535.0
        if self.output_stride > 1:
            m = F.avg_pool2d(m, self.output_stride)
        return torch.logit(m.clamp(1e-6, 1 - 1e-6))


class SmallConv(torch.nn.Module):
    """A model whose output depends on where the tile lies (zero padding at the tile's own border), so a
    tile added twice or missed changes the blend."""

    def __init__(self, output_stride: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)
        self.output_stride = output_stride

    def forward(self, x):
        return F.avg_pool2d(self.conv(x / 65535.0 - 0.4).mean(dim=2), self.output_stride) * 4.0


def depth_mean(segment_path: Path, z0: int, depth: int) -> np.ndarray:
    seg = open_segment(segment_path)
    return np.asarray(seg.volume[z0:z0 + depth], dtype=np.float64).mean(0) / 65535.0


def run(cfg: PredictConfig, predictors) -> list:
    return list(predict(cfg, predictors))


@pytest.mark.parametrize("r,edge,stride,weighting,full", [
    (1, 8, None, "mean", False),
    (4, 8, 8, "gaussian", False),  # overlapping kept centres, Gaussian blend
    (4, 4, None, "mean", True),  # reduced output written at full resolution
])
def test_identity_like_model_reproduces_its_input_through_the_tiling(fragment_dir, tmp_path, r, edge, stride,
                                                                     weighting, full):
    depth = 16
    pred = InkPredictor("mean", DepthMean(r), r, TileConfig(depth=depth, size=32), RAW)
    cfg = PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "p.zarr"), edge=edge, stride=stride,
                        weighting=weighting, full_resolution=full, device="cpu", chunk=32, batch_size=16)
    events = run(cfg, [pred])
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    done = [e for e in events if isinstance(e, TilesDone)]
    assert done[-1].done == done[-1].total > 0

    seg = open_segment(fragment_dir)
    z0 = (seg.shape[0] - depth) // 2  # tiles are centred in depth
    expected = depth_mean(fragment_dir, z0, depth)
    mask = seg.papyrus_mask()
    store = open_prediction(tmp_path / "p.zarr")
    got = store.probabilities("mean")
    assert not np.isnan(got).any()
    if r > 1:
        expected = block_fraction(expected, r)
        mask = block_fraction(mask, r) > 0
        if full:
            expected = expected.repeat(r, 0).repeat(r, 1)[: seg.shape[1], : seg.shape[2]]
            mask = mask.repeat(r, 0).repeat(r, 1)[: seg.shape[1], : seg.shape[2]]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-3)  # float16 storage
    info = store.info("mean")
    grid = 1 if full else r
    assert info["plane_scale"] == grid and info["scale"] == [grid, grid]
    assert info["translate"] == [(grid - 1) / 2] * 2
    assert info["complete"] and info["segment"]["name"] == seg.name


def test_region_limits_the_prediction_and_covers_it(fragment_dir, tmp_path):
    seg = open_segment(fragment_dir)
    region = save_regions(tmp_path / "region.json", [np.array([[100, 60], [100, 130], [150, 130], [150, 60]])])
    pred = InkPredictor("mean", DepthMean(1), 1, TileConfig(depth=16, size=32), RAW)
    cfg = PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "r.zarr"), region=str(region), device="cpu")
    events = run(cfg, [pred])
    got = open_prediction(tmp_path / "r.zarr").probabilities("mean")
    inside = np.zeros(seg.shape[1:], bool)
    inside[100:151, 60:131] = True
    inside &= seg.papyrus_mask()
    expected = depth_mean(fragment_dir, 2, 16)
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-3)
    assert (got[:60] == 0).all() and (got[:, :30] == 0).all()  # far from the region: not predicted
    assert events[0].total_steps < 40  # the whole plane takes 144 tiles


def test_stopped_prediction_resumes_to_the_same_array(fragment_dir, tmp_path):
    def predictor():
        return InkPredictor("conv", SmallConv(4), 4, TileConfig(depth=8, size=32), RAW)

    def config(out):
        return PredictConfig(segment=str(fragment_dir), out=str(out), edge=4, stride=16, weighting="gaussian",
                             device="cpu", chunk=8, batch_size=8)

    run(config(tmp_path / "whole.zarr"), [predictor()])
    whole = open_prediction(tmp_path / "whole.zarr").probabilities("conv")

    gen = predict(config(tmp_path / "stopped.zarr"), [predictor()])
    batches = 0
    for event in gen:
        if isinstance(event, TilesDone) and event.done > 0:
            batches += 1
            if batches == 6:
                gen.close()  # what Ctrl-C in the CLI and Stop in the widget do
    stopped = open_prediction(tmp_path / "stopped.zarr")
    info = stopped.info("conv")
    assert not info["complete"] and 0 < info["done_chunk_rows"] < whole.shape[0] // info["chunk_rows"]
    rows = stopped.done_rows("conv")
    np.testing.assert_array_equal(stopped.probabilities("conv", slice(0, rows)), whole[:rows])

    events = run(config(tmp_path / "stopped.zarr"), [predictor()])
    first = next(e for e in events if isinstance(e, TilesDone))
    assert first.done > 0  # the finished bands' tiles are not predicted again
    np.testing.assert_array_equal(open_prediction(tmp_path / "stopped.zarr").probabilities("conv"), whole)

    # a finished prediction is not redone; other settings are refused instead of mixed in
    again = run(config(tmp_path / "stopped.zarr"), [predictor()])
    assert [e.done for e in again if isinstance(e, TilesDone)] == [first.total]
    changed = config(tmp_path / "stopped.zarr")
    changed.weighting = "mean"
    with pytest.raises(ConfigError, match="other settings.*weighting"):
        run(changed, [predictor()])
    changed.resume = False  # starting over is allowed
    assert isinstance(run(changed, [predictor()])[-1], Finished)


def _save_ink_checkpoint(run_dir: Path, seed: int) -> Path:
    from napari_vesuvius_pt.models import InkModel, build_encoder, save_checkpoint

    torch.manual_seed(seed)
    encoder = build_encoder("resnet10", widen_factor=0.25)
    model = InkModel(encoder, output_stride=4, decoder_channels=8)
    payload = {
        "kind": "finetune", "encoder_spec": to_dict(encoder.spec), "encoder": model.encoder.state_dict(),
        "head": model.head.state_dict(), "output_stride": 4, "tile": to_dict(TileConfig(depth=8, size=32)),
        "data": to_dict(DataConfig(normalization="kaggle")), "config": {}, "epoch": 1, "metrics": {},
    }
    return save_checkpoint(run_dir / "last.pt", payload)


def test_two_checkpoints_give_one_array_each_from_the_cli(fragment_dir, tmp_path, capsys):
    from napari_vesuvius_pt.cli import main

    a = _save_ink_checkpoint(tmp_path / "vicreg_run", 0)
    b = _save_ink_checkpoint(tmp_path / "runs" / "random_run", 1)
    region = save_regions(tmp_path / "region.json", [np.array([[60, 60], [60, 120], [110, 120], [110, 60]])])
    out = tmp_path / "cmp.zarr"
    code = main(["predict", "--checkpoint", str(a.parent), "--checkpoint", str(b), "--segment", str(fragment_dir),
                 "--out", str(out), "--region", str(region), "--dtype", "uint8", "--device", "cpu", "--quiet",
                 "--no-full-resolution"])
    assert code == 0
    store = open_prediction(out)
    assert store.names == ["vicreg_run", "random_run"]
    seg = open_segment(fragment_dir)
    assert store.segment["name"] == seg.name and store.segment["shape"] == list(seg.shape)
    for name, ckpt in (("vicreg_run", a.parent), ("random_run", b)):
        info = store.info(name)
        assert info["checkpoint"] == str(ckpt) and info["encoding"] == "uint8"
        assert info["config"]["region"] == str(region) and info["tile"]["depth"] == 8
        assert store.array(name).dtype == np.uint8 and store.array(name).shape == (48, 48)
        assert store.layer_kwargs(name)["scale"] == [4.0, 4.0]
    # different weights, different predictions, over the same tiles
    pa, pb = store.probabilities("vicreg_run"), store.probabilities("random_run")
    assert ((pa > 0) == (pb > 0)).all() and not np.array_equal(pa, pb)

    capsys.readouterr()
    assert main(["evaluate", "--prediction", str(out), "--segment", str(fragment_dir), "--region", str(region),
                 "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    baselines = table.pop("baselines")
    assert set(table) == {"vicreg_run", "random_run"}
    assert "all ink" in baselines and baselines["all ink"]["recall"] == 1.0
    for metrics in table.values():
        assert {"f05", "threshold", "precision", "recall", "auc"} <= set(metrics)
        assert 0.0 <= metrics["f05"] <= 1.0 and 0.1 <= metrics["threshold"] <= 0.95


def test_checkpoint_labels_name_the_run():
    assert checkpoint_label("runs/vicreg_a/last.pt") == "vicreg_a"
    assert checkpoint_label("runs/vicreg_a/checkpoints/epoch_003.pt") == "vicreg_a"
    assert checkpoint_label("weights/my model.pt") == "my_model"


def test_bad_input_is_refused_with_a_clear_message(fragment_dir, fragment2_dir, tmp_path):
    deep = InkPredictor("deep", DepthMean(1), 1, TileConfig(depth=32, size=32), RAW)
    cfg = PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "a.zarr"), device="cpu")
    with pytest.raises(ConfigError, match="tiles of 32 layers.*has 20 layers"):
        run(cfg, [deep])

    ok = InkPredictor("mean", DepthMean(4), 4, TileConfig(depth=16, size=32), RAW)
    far = save_regions(tmp_path / "far.json", [np.array([[1000, 1000], [1000, 1100], [1100, 1100]])])
    with pytest.raises(SegmentError, match="lies outside"):
        run(PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "b.zarr"), region=str(far), device="cpu"), [ok])

    with pytest.raises(ConfigError, match="multiple of the model's output stride 4"):
        run(PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "c.zarr"), edge=6, device="cpu"), [ok])

    run(PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "d.zarr"), edge=8, device="cpu"), [ok])
    with pytest.raises(SegmentError, match="holds predictions of segment"):
        run(PredictConfig(segment=str(fragment2_dir), out=str(tmp_path / "d.zarr"), edge=8, device="cpu"), [ok])

    with pytest.raises(ConfigError, match="weighting"):
        run(PredictConfig(segment=str(fragment_dir), out=str(tmp_path / "e.zarr"), weighting="count"), [ok])
