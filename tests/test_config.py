"""Run configs: choice lists defined once as Literal types and checked when a config is read, the shared
training fields in one base class, the YAML round trip and field order, the default run folders."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from napari_vesuvius_pt import config as C
from napari_vesuvius_pt.config import (
    FinetuneConfig,
    PretrainConfig,
    TrainingConfig,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from napari_vesuvius_pt.errors import ConfigError


def test_each_choice_list_is_its_fields_literal_type():
    hints = {cls: typing.get_type_hints(cls) for cls in (C.OptimConfig, C.DataConfig, C.EncoderConfig,
                                                            C.FinetuneConfig, C.PredictConfig, C.CKAConfig, C.DemoConfig)}
    assert typing.get_args(hints[C.OptimConfig]["name"]) == C.OPTIMIZERS == ("sgd", "adamw", "lars")
    assert typing.get_args(hints[C.DataConfig]["normalization"]) == C.NORMALIZATIONS
    assert typing.get_args(hints[C.EncoderConfig]["name"]) == C.ENCODER_NAMES
    assert typing.get_args(hints[C.FinetuneConfig]["output_stride"]) == C.OUTPUT_STRIDES == (1, 2, 4, 8)
    assert typing.get_args(hints[C.PredictConfig]["weighting"]) == C.WEIGHTINGS
    assert typing.get_args(hints[C.PredictConfig]["dtype"]) == C.PREDICT_DTYPES
    assert typing.get_args(hints[C.CKAConfig]["layer"]) == C.CKA_LAYERS
    assert typing.get_args(hints[C.DemoConfig]["scale"]) == C.DEMO_SCALES


def test_the_modules_that_check_a_choice_use_the_config_lists():
    from napari_vesuvius_pt.data import normalize
    from napari_vesuvius_pt.engine import tiling
    from napari_vesuvius_pt.engine.prediction_store import ENCODINGS
    from napari_vesuvius_pt.models import encoder, head

    assert normalize.NORMALIZATIONS is C.NORMALIZATIONS
    assert encoder.ENCODER_NAMES is C.ENCODER_NAMES
    assert head.OUTPUT_STRIDES is C.OUTPUT_STRIDES
    assert tiling.WEIGHTINGS is C.WEIGHTINGS
    assert tuple(ENCODINGS) == C.PREDICT_DTYPES


@pytest.mark.parametrize("data, message", [
    ({"optim": {"name": "rmsprop"}}, "config.optim.name: 'rmsprop' is not one of sgd, adamw, lars"),
    ({"data": {"normalization": "Kaggle"}}, "config.data.normalization: 'Kaggle' is not one of none, kaggle, minmax"),
    ({"encoder": {"name": "resnet101"}}, "config.encoder.name: 'resnet101' is not one of resnet10, resnet18"),
    ({"output_stride": 3}, "config.output_stride: 3 is not one of 1, 2, 4, 8"),
    ({"output_stride": "4"}, "config.output_stride: '4' is not one of 1, 2, 4, 8"),
    ({"output_stride": True}, "config.output_stride: True is not one of 1, 2, 4, 8"),
])
def test_a_value_outside_its_choices_is_refused(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        from_dict(FinetuneConfig, data)


def test_choices_in_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("layer: layer3\nweighting_unused: 1\n")
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(C.CKAConfig, path)
    path.write_text("layer: layer9\n")
    with pytest.raises(ConfigError, match=r"layer: 'layer9' is not one of pooled, layer1"):
        load_config(C.CKAConfig, path)
    path.write_text("weighting: gaussian\ndtype: uint8\n")
    cfg = load_config(C.PredictConfig, path)
    assert (cfg.weighting, cfg.dtype) == ("gaussian", "uint8")


def test_training_runs_share_one_base_and_keep_their_own_defaults():
    shared = {"out", "encoder", "data", "tile", "augment", "optim", "epochs", "batch_size", "steps_per_epoch",
              "device", "amp", "cpu_bf16", "num_workers", "prefetch", "seed", "resume"}
    assert {f for f in TrainingConfig.__dataclass_fields__} == shared
    assert issubclass(PretrainConfig, TrainingConfig) and issubclass(FinetuneConfig, TrainingConfig)
    pre, ft = PretrainConfig(), FinetuneConfig()
    assert (pre.tile.min_mask_fraction, pre.optim.name, pre.optim.lr, pre.epochs) == (1.0, "sgd", 0.05, 3)
    assert (ft.tile.min_mask_fraction, ft.optim.name, ft.optim.lr, ft.optim.weight_decay, ft.epochs) == (0.5, "adamw", 3e-3, 1e-4, 5)  # docs/defaults-study.md


def test_yaml_round_trip_with_the_runs_own_fields_first(tmp_path):
    for cfg, first in ((PretrainConfig(segments=["a", "b"], epochs=7), ["segments", "vicreg", "mask_erosion", "probe_fragment",
                                                                    "probe_region", "probe_every", "probe_tiles", "out"]),
                       (FinetuneConfig(fragments=["f"], val_region="r.json", output_stride=8), ["fragments", "val_fragment"])):
        keys = list(to_dict(cfg))
        assert keys[:len(first)] == first and keys[-1] == "resume"
        assert from_dict(type(cfg), to_dict(cfg)) == cfg
        save_config(cfg, tmp_path / "c.yaml")
        assert load_config(type(cfg), tmp_path / "c.yaml") == cfg
        text = (tmp_path / "c.yaml").read_text()
        assert text.index(f"{first[0]}:") < text.index("out:") < text.index("resume:")


def test_default_run_folders_are_outside_the_checkout(tmp_path):
    assert C.DEFAULT_RUNS_DIR.is_absolute()
    assert PretrainConfig().out == str(C.DEFAULT_RUNS_DIR / "pretrain")
    assert FinetuneConfig().out == str(C.DEFAULT_RUNS_DIR / "finetune")
    code = "from napari_vesuvius_pt.config import PretrainConfig; print(PretrainConfig().out)"
    out = subprocess.run([sys.executable, "-c", code], env={"VESUVIUS_PT_RUNS": str(tmp_path / "runs"), "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(tmp_path / "runs" / "pretrain")


def test_config_imports_no_torch():
    code = "import sys, napari_vesuvius_pt.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
