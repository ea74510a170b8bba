"""Predictions as OME-Zarr: one NGFF image per encoder with a pyramid, full resolution by default, that
napari opens with our reader and with its builtin zarr reader; a stopped prediction resumes to the same
image; ``--direction both`` keeps both depth directions and their mean; ``--format tiff`` writes a
tiled BigTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
import zarr

from napari_vesuvius_pt.config import DataConfig, PredictConfig, TileConfig
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.engine.events import Finished, TilesDone
from napari_vesuvius_pt.engine.prediction import InkPredictor, predict
from napari_vesuvius_pt.engine.prediction_store import decode, halve, open_prediction

RAW = DataConfig(normalization="none")


class DepthSlope(torch.nn.Module):
    """Ink logits from a depth-weighted mean of the tile: reading the layers the other way round gives
    another answer (as a real model's does)."""

    output_stride = 4

    def forward(self, x):
        w = torch.linspace(0.0, 2.0, x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
        m = (x / 65535.0 * w).mean(dim=2)
        return F.avg_pool2d(m, self.output_stride) * 8.0 - 2.0


def _predictor(name="slope"):
    return InkPredictor(name, DepthSlope(), 4, TileConfig(depth=8, size=32), RAW)


def _run(cfg, predictors):
    return list(predict(cfg, predictors))


def _config(fragment_dir, out, **kw):
    base = dict(segment=str(fragment_dir), out=str(out), device="cpu", batch_size=4, edge=4, chunk=32)
    base.update(kw)
    return PredictConfig(**base)


def test_prediction_is_an_ome_zarr_image_with_a_pyramid(fragment_dir, tmp_path):
    out = tmp_path / "pred.zarr"
    _run(_config(fragment_dir, out, dtype="uint8"), [_predictor()])
    seg = open_segment(fragment_dir)
    image = zarr.open_group(str(out / "slope"), mode="r")
    ome = image.attrs["ome"]
    datasets = ome["multiscales"][0]["datasets"]
    assert ome["version"] == "0.5" and [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]  # 192 -> 96 -> 48 (a level under 32 pixels is not made)
    assert image["0"].shape == seg.shape[1:]  # full resolution by default: the 1/4 output upsampled
    assert image["1"].shape == (96, 96) and image["2"].shape == (48, 48)
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    assert datasets[1]["coordinateTransformations"][1]["translation"] == [0.5, 0.5]  # centre of a 2x2 block
    level0 = decode(np.asarray(image["0"][...]))
    np.testing.assert_allclose(decode(np.asarray(image["1"][...])), halve(level0), atol=0.6 / 255)
    # the reduced output, upsampled: constant over each 4 x 4 block
    assert (level0[:, ::4].repeat(4, axis=1) == level0).all() and level0.max() > 0
    store = open_prediction(out)
    assert store.info("slope")["complete"] and len(store.levels("slope")) == 3


def test_model_grid_on_request(fragment_dir, tmp_path):
    out = tmp_path / "pred.zarr"
    _run(_config(fragment_dir, out, full_resolution=False), [_predictor()])
    store = open_prediction(out)
    assert store.array("slope").shape == (48, 48) and store.layer_kwargs("slope")["scale"] == [4.0, 4.0]


def test_napari_opens_the_prediction_with_both_readers(fragment_dir, tmp_path, make_napari_viewer):
    out = tmp_path / "pred.zarr"
    _run(_config(fragment_dir, out), [_predictor()])
    viewer = make_napari_viewer()
    ours = viewer.open(str(out), plugin="napari-vesuvius-pt")
    assert [layer.name for layer in ours] == ["slope"]
    assert ours[0].multiscale and [tuple(d.shape) for d in ours[0].data] == [(192, 192), (96, 96), (48, 48)]
    builtin = viewer.open(str(out / "slope"), plugin="napari")  # napari's own zarr reader: the levels as a pyramid
    assert builtin[0].multiscale and [tuple(d.shape) for d in builtin[0].data] == [(192, 192), (96, 96), (48, 48)]
    np.testing.assert_array_equal(np.asarray(builtin[0].data[0]), np.asarray(ours[0].data[0]))


def test_stopped_prediction_resumes_to_the_same_image(fragment_dir, tmp_path):
    whole = tmp_path / "whole.zarr"
    _run(_config(fragment_dir, whole), [_predictor()])
    part = tmp_path / "part.zarr"
    gen = predict(_config(fragment_dir, part), [_predictor()])
    for event in gen:
        if isinstance(event, TilesDone) and event.done >= 40:
            break
    gen.close()
    stopped = open_prediction(part)
    assert not stopped.info("slope")["complete"] and 0 < stopped.done_rows("slope") < 192
    assert len(stopped.levels("slope")) == 1  # no pyramid before level 0 is whole
    events = _run(_config(fragment_dir, part), [_predictor()])
    summary = next(e for e in events if isinstance(e, Finished)).summary["encoders"]["slope"]
    assert summary["resumed_at"] > 0
    a, b = open_prediction(whole), open_prediction(part)
    for la, lb in zip(a.levels("slope"), b.levels("slope"), strict=True):
        np.testing.assert_array_equal(np.asarray(la[...]), np.asarray(lb[...]))


def test_direction_both_keeps_each_direction_and_the_mean(fragment_dir, tmp_path):
    out = tmp_path / "both.zarr"
    events = _run(_config(fragment_dir, out, direction="both"), [_predictor()])
    store = open_prediction(out)
    assert store.names == ["slope-forward", "slope-reverse", "slope-mean"]
    fwd, rev, mean = (store.probabilities(n) for n in store.names)
    assert not np.allclose(fwd, rev)  # the depth direction matters to this model
    np.testing.assert_allclose(mean, (fwd + rev) / 2, atol=1e-3)
    assert store.info("slope-reverse")["data"]["reverse"] is True and store.info("slope-forward")["data"]["reverse"] is False
    alone = tmp_path / "fwd.zarr"
    _run(_config(fragment_dir, alone), [_predictor()])
    np.testing.assert_array_equal(open_prediction(alone).probabilities("slope"), fwd)  # forward is the default
    assert set(next(e for e in events if isinstance(e, Finished)).summary["arrays"]) == set(store.names)


def test_format_tiff_writes_a_tiled_bigtiff(fragment_dir, tmp_path):
    out = tmp_path / "pred.zarr"
    events = _run(_config(fragment_dir, out, format="tiff", dtype="uint8"), [_predictor()])
    path = tmp_path / "pred_slope.tif"
    assert next(e for e in events if isinstance(e, Finished)).summary["tiff"] == {"slope": str(path)}
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        np.testing.assert_array_equal(page.asarray(), np.asarray(open_prediction(out).array("slope")[...]))
        assert len(page.pages) == 2  # the pyramid levels as sub-resolutions
    assert not (tmp_path / "pred_slope.tif.partial").exists()


@pytest.mark.parametrize("flags, error", [(["--direction", "sideways"], "invalid choice"),
                                          (["--format", "png"], "invalid choice")])
def test_cli_refuses_unknown_choices(flags, error, capsys):
    from napari_vesuvius_pt.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["predict", "--checkpoint", "x", "--segment", "y", *flags])
    assert exc.value.code == 2 and error in capsys.readouterr().err
