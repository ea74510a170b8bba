"""The online probe: during pretraining, a frozen linear probe scores ink on a labeled fragment's region
every N epochs, into metrics.jsonl, and is plotted beside the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import EncoderConfig, OptimConfig, PretrainConfig, TileConfig, VICRegConfig
from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment
from napari_vesuvius_pt.engine.online_probe import due, plot_probe, prepare_probe, probe_curve, run_probe
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.models.encoder import build_encoder


def _band(tmp_path, labels: np.ndarray) -> str:
    rows = np.nonzero(labels.any(axis=1))[0]
    y0 = int(rows[0] + 0.6 * (rows[-1] - rows[0]))
    h, w = labels.shape
    path = tmp_path / "probe_region.json"
    path.write_text(json.dumps({"polygons": [[[y0, 0], [y0, w], [h, w], [h, 0]]]}))
    return str(path)


def _config(tmp_path, scroll_dir, fragment: str, region: str, **kw) -> PretrainConfig:
    return PretrainConfig(
        segments=[str(scroll_dir)], out=str(tmp_path / "pre"), encoder=EncoderConfig("resnet10", widen_factor=0.25),
        tile=TileConfig(depth=16, size=32, stride=16), vicreg=VICRegConfig(expander=[32, 32]),
        optim=OptimConfig(name="sgd", lr=0.01), batch_size=4, steps_per_epoch=2, device="cpu",
        probe_fragment=fragment, probe_region=region, probe_tiles=24, **kw)


def test_the_probe_sees_ink_where_there_is_ink_and_not_where_there_is_none(tmp_path):
    scores = {}
    for ink in (1.0, 0.0):
        synth = make_fragment((20, 160, 160), seed=3, ink_strength=ink)
        frag = write_segment(synth, tmp_path / f"frag-{ink}")
        cfg = _config(tmp_path, "unused", str(frag), _band(tmp_path, synth.inklabels))
        data = prepare_probe(cfg)
        torch.manual_seed(0)  # the same random encoder for both
        scores[ink] = run_probe(build_encoder("resnet10", widen_factor=0.25).eval(), data, "cpu", 8)
    strong, none = scores[1.0], scores[0.0]
    assert 0.0 < strong["probe_prevalence"] < 1.0
    print(scores)
    # random features carry strong ink linearly; without ink in the volume only the letters' layout (no
    # letters near the fragment's edge) is left to find
    assert strong["probe_auc"] > 0.7, scores
    assert strong["probe_auc"] > none["probe_auc"] + 0.1, scores
    assert strong["probe_f05"] > none["probe_f05"] + 0.1, scores


def test_pretraining_writes_the_probe_every_n_epochs(tmp_path, scroll_dir):
    from napari_vesuvius_pt.engine import pretrain
    from napari_vesuvius_pt.engine.events import EpochDone

    synth = make_fragment((20, 160, 160), seed=4, ink_strength=0.6)
    frag = write_segment(synth, tmp_path / "frag")
    cfg = _config(tmp_path, scroll_dir, str(frag), _band(tmp_path, synth.inklabels), epochs=3, probe_every=2)
    done = [e for e in pretrain(cfg) if isinstance(e, EpochDone)]
    assert [("probe_f05" in e.metrics) for e in done] == [False, True, True]  # epoch 2, and the last
    records = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in records if "probe_f05" in r]
    assert [r["epoch"] for r in probed] == [2, 3]
    for r in probed:
        assert 0.0 <= r["probe_f05"] <= 1.0 and 0.0 <= r["probe_auc"] <= 1.0
    assert probe_curve(records)["epoch"] == [2.0, 3.0]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert plot_probe(ax, records) is True
    assert len(ax.lines) == 2
    assert plot_probe(ax, [{"epoch": 1, "loss": 3.0}]) is False
    plt.close(fig)


def test_probe_options_are_checked(tmp_path, scroll_dir):
    from napari_vesuvius_pt.engine.pretraining import validate_pretrain_config

    with pytest.raises(ConfigError, match="both"):
        validate_pretrain_config(_config(tmp_path, scroll_dir, str(tmp_path), None))
    with pytest.raises(ConfigError, match="probe_every"):
        validate_pretrain_config(_config(tmp_path, scroll_dir, "f", "r", probe_every=0))
    assert due(3, 10, 3) and not due(4, 10, 3) and due(10, 10, 3)
