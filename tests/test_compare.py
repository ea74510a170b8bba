"""``vesuvius-pt compare``: probes with several seeds on a protocol's split, mean ± sd, baselines, paired
differences; the protocols; the CLI's config handling."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment
from napari_vesuvius_pt.errors import ConfigError

TINY = ["--arch", "resnet10", "--width", "0.25", "--tile", "8x32x32", "--stride", "16", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "4", "--edge", "4", "--bootstrap", "200"]


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    return [str(write_segment(make_fragment((12, 96, 96), seed=s, fill_sheet=True), root / f"fragment{s + 1}"))
            for s in range(4)]


@pytest.fixture(scope="module")
def compared(kaggle, tmp_path_factory):
    """Two encoders that are the same (random, and random again under another name) with two seeds:
    every paired difference must be exactly zero."""
    from napari_vesuvius_pt.cli import main

    out = tmp_path_factory.mktemp("cmp") / "compare"
    rc = main(["compare", "--encoders", "random", "twin=random", "--protocol", "fragment2-lower30",
               "--fragments", *kaggle, "--seeds", "2", "--out", str(out), "--device", "cpu", "--quiet", *TINY])
    assert rc == 0
    return out


def test_compare_reports_mean_sd_baselines_and_paired_differences(compared, kaggle):
    result = json.loads((compared / "compare.json").read_text())
    assert set(result["encoders"]) == {"random", "twin"}
    for e in result["encoders"].values():
        assert e["f05"]["n"] == 2 and len(e["per_seed"]) == 2 and e["frozen"]
        vals = e["f05"]["values"]
        assert e["f05"]["mean"] == pytest.approx(np.mean(vals)) and e["f05"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert set(result["baselines"]) == {"all ink", "linear z-profile"}
    p = result["baselines"]["all ink"]["prevalence"]
    assert result["baselines"]["all ink"]["f05"] == pytest.approx(1.25 * p / (0.25 * p + 1))
    # the split: validate on the lower 30% of fragment 2, train on 2 (upper part), 1, 3, 4
    assert result["split"]["train"] == [kaggle[1], kaggle[0], kaggle[2], kaggle[3]]
    assert result["split"]["val_region"]
    (pair,) = result["pairs"]
    assert pair["label"] == "twin − random"
    for metric in ("f05", "auc"):
        d = pair[metric]
        assert d["mean"] == 0.0 and d["seeds"]["low"] == 0.0 == d["seeds"]["high"]
        assert d["tiles"]["low"] == 0.0 == d["tiles"]["high"]
        assert not d["distinguishable"] and d["verdict"].startswith("not distinguishable from zero")
    md = (compared / "compare.md").read_text()
    assert "±" in md and "linear z-profile (baseline)" in md and "all ink (baseline)" in md
    assert "twin − random, F0.5: +0.000" in md
    # one run folder and one prediction per encoder and seed
    assert sorted(p.name for p in (compared / "runs").iterdir()) == ["random-seed0", "random-seed1", "twin-seed0", "twin-seed1"]


def test_compare_resumes_finished_runs(compared, kaggle):
    """A second run over the same folder trains nothing again and gives the same result."""
    from napari_vesuvius_pt.cli._progress import drive
    from napari_vesuvius_pt.cli.compare import config_from_args, register
    from napari_vesuvius_pt.engine.events import EpochDone

    before = json.loads((compared / "compare.json").read_text())
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["compare", "--encoders", "random", "twin=random", "--protocol", "fragment2-lower30",
                              "--fragments", *kaggle, "--seeds", "2", "--out", str(compared), "--device", "cpu", *TINY])
    from napari_vesuvius_pt.engine.compare import compare

    events = list(compare(config_from_args(args)))
    assert not any(isinstance(e, EpochDone) for e in events)
    after = events[-1].summary
    assert after["per_array"] == before["per_array"]


def test_protocols(kaggle, tmp_path):
    from napari_vesuvius_pt.data.tiles import load_regions
    from napari_vesuvius_pt.engine.protocols import resolve_protocol

    lower = resolve_protocol("fragment2-lower30", kaggle, tmp_path)
    (poly,) = load_regions(lower.val_region)
    assert poly[:, 0].min() == round(96 * 0.7) and poly[:, 0].max() == 96 and poly[:, 1].max() == 96
    assert lower.val_segment == kaggle[1] and lower.pretrain_extra == []
    hold = resolve_protocol("fragment4-holdout", kaggle, tmp_path)
    assert hold.train == kaggle[:3] and hold.val_fragment == kaggle[3] and hold.pretrain_extra == [kaggle[3]]
    with pytest.raises(ConfigError, match="four"):
        resolve_protocol("fragment4-holdout", kaggle[:3], tmp_path)


def test_cli_reads_a_sectioned_config_and_rejects_bad_input(tmp_path, kaggle, capsys):
    from napari_vesuvius_pt.cli import main
    from napari_vesuvius_pt.cli.compare import config_from_args, register

    cfg_file = tmp_path / "scale.yaml"
    cfg_file.write_text("demo: {segments: 1}\nfinetune:\n  epochs: 7\n  tile: {depth: 8, size: 32, stride: 16}\n"
                        "predict: {edge: 3}\ncompare: {seeds: 5}\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = config_from_args(parser.parse_args(["compare", "--config", str(cfg_file), "--fragments", *kaggle,
                                              "--protocol", "fragment4-holdout", "--epochs", "2"]))
    assert cfg.probe.epochs == 2 and cfg.probe.tile.size == 32 and cfg.probe.freeze_encoder
    assert cfg.edge == 3 and cfg.seeds == 5 and cfg.protocol == "fragment4-holdout"
    rc = main(["compare", "--encoders", "random", "random", "--fragments", *kaggle, "--protocol",
               "fragment2-lower30", "--out", str(tmp_path / "x")])
    assert rc == 2 and "names must differ" in capsys.readouterr().err
    rc = main(["compare", "--fragments", *kaggle[:2], "--protocol", "fragment2-lower30", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "four" in err


def test_evaluate_prints_both_baselines_beside_the_encoders(compared, kaggle, capsys):
    from napari_vesuvius_pt.cli import main

    result = json.loads((compared / "compare.json").read_text())
    region = result["split"]["val_region"]
    assert main(["evaluate", "--prediction", str(compared / "predictions.zarr"), "--segment", kaggle[1],
                 "--region", region]) == 0
    out = capsys.readouterr().out
    assert "random-seed0" in out and "all ink (baseline)" in out and "linear z-profile (baseline)" in out
    assert main(["evaluate", "--prediction", str(compared / "predictions.zarr"), "--segment", kaggle[1],
                 "--region", region, "--json", "--train-fragments", kaggle[0], kaggle[2], kaggle[3]]) == 0
    table = json.loads(capsys.readouterr().out)
    # trained on the same fragments, scored on the same pixels: the baselines compare reported
    assert table["baselines"]["linear z-profile"]["f05"] == pytest.approx(result["baselines"]["linear z-profile"]["f05"])
