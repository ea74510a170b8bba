"""Default fine-tuning learns ink: on a small synthetic fragment with ink fainter than the generator's
default, ``FinetuneConfig()`` as it is (what ``vesuvius-pt finetune`` and the Fine-tune widget run
without tuning flags) beats the per-pixel linear baseline on the validation band.

No epochs or steps are passed: the defaults themselves must do it (5 epochs; about 20 s on 2 cores).
docs/defaults-study.md has the larger fragments and the controlled runs behind the defaults.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from napari_vesuvius_pt.analysis.baseline import TrainingVolume, fit_linear_baseline, predict_map, score_map
from napari_vesuvius_pt.config import FinetuneConfig
from napari_vesuvius_pt.data.synthetic import DEFAULT_INK_STRENGTH, make_fragment, write_segment
from napari_vesuvius_pt.engine.events import EpochDone, Finished
from napari_vesuvius_pt.engine.finetuning import finetune

INK = 0.2  # fainter than the generator's default


def _val_from(labels: np.ndarray) -> int:
    """The lower 30% of the inked rows (the generator writes its lines in the upper part of the sheet)."""
    rows = np.nonzero(labels.any(axis=1))[0]
    return int(round(rows[0] + 0.7 * (rows[-1] - rows[0])))


def test_default_finetuning_beats_the_linear_baseline_on_faint_ink(tmp_path):
    assert INK < DEFAULT_INK_STRENGTH
    torch.set_num_threads(min(2, torch.get_num_threads()))
    synth = make_fragment((24, 256, 256), seed=0, ink_strength=INK)
    frag = write_segment(synth, tmp_path / "fragment")
    h, w = synth.mask.shape
    y0 = _val_from(synth.inklabels)
    region = tmp_path / "val.json"
    region.write_text(json.dumps({"polygons": [[[y0, 0], [y0, w], [h, w], [h, 0]]]}))

    # the linear baseline: LDA on 5x5-smoothed z-profiles, fitted above the band, scored in it
    rows = np.arange(h)[:, None]
    inside = synth.mask > 0
    vol = synth.volume.astype(np.float32)
    mean, std = vol[:, inside].mean(), vol[:, inside].std()
    norm = lambda x: (np.asarray(x, dtype=np.float32) - mean) / std  # noqa: E731
    train = TrainingVolume(synth.volume, inside & (rows < y0), synth.inklabels, (0, 24), norm)
    model = fit_linear_baseline([train], method="lda", smooth=5)
    val_where = inside & (rows >= y0)
    linear = score_map(predict_map(model, synth.volume, val_where, (0, 24), 5, norm), synth.inklabels, val_where)

    defaults = FinetuneConfig()
    cfg = dataclasses.replace(defaults, fragments=[str(frag)], val_region=str(region), out=str(tmp_path / "run"),
                              device="cpu")
    curve = []
    finished = None
    for event in finetune(cfg):
        if isinstance(event, EpochDone):
            curve.append(event.metrics)
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None and len(curve) == defaults.epochs
    last = curve[-1]
    assert last["f05"] > linear.f05 + 0.05, (last, linear)
    assert last["auc"] > linear.auc, (last, linear)
    assert last["f05"] > last["baseline_f05"] + 0.1  # and well above calling everything ink
    # the run folder's config is the defaults (what the CLI and the widget would save)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "depth_pooling: max" in saved and "normalization: zscore" in saved


def test_the_finetune_widget_starts_from_the_same_defaults(make_napari_viewer, fragment_dir, fragment2_dir, tmp_path):
    """The widget's untouched form builds the defaults the CLI uses (and the run folder saves)."""
    from napari_vesuvius_pt.cli import build_parser
    from napari_vesuvius_pt.cli.finetune import config_from_args
    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.ui.segment_registry import TRAIN, VALIDATION, LoadedSegment, registry_for

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Fine-tune")
    for path, role in ((fragment_dir, TRAIN), (fragment2_dir, VALIDATION)):
        segment = open_segment(path)
        registry_for(viewer).add(LoadedSegment(
            path=path, name=segment.name, role=role, shape=segment.shape, dtype=str(segment.volume.dtype),
            z_range=(0, segment.shape[0]), has_mask=True, has_inklabels=True))
    widget.run_folder.set_text(str(tmp_path / "run"))
    from_widget = widget.build_config()
    args = build_parser().parse_args(["finetune", "--fragments", str(fragment_dir), "--val-fragment", str(fragment2_dir)])
    from_cli = config_from_args(args)
    d = FinetuneConfig()
    for cfg in (from_widget, from_cli):
        assert cfg.encoder == d.encoder and cfg.tile == d.tile and cfg.optim == d.optim
        assert cfg.data.normalization == d.data.normalization == "zscore"
        assert cfg.depth_pooling == d.depth_pooling == "max"
        assert (cfg.epochs, cfg.batch_size, cfg.encoder_lr_scale, cfg.output_stride, cfg.steps_per_epoch) == \
            (d.epochs, d.batch_size, d.encoder_lr_scale, d.output_stride, d.steps_per_epoch)
