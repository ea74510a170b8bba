"""The warm-up + cosine learning-rate schedule (a LambdaLR): its curve, per-group starting rates, and a
resume from its state that continues the curve exactly, in isolation and in a pretraining run."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import pytest
import torch

from napari_vesuvius_pt.config import EncoderConfig, OptimConfig, PretrainConfig, TileConfig, VICRegConfig
from napari_vesuvius_pt.engine.events import StepDone
from napari_vesuvius_pt.engine.optim import build_optimizer, current_lr, warmup_cosine

TOTAL, WARMUP, MIN_RATIO = 20, 5, 0.05


def two_groups(optim: OptimConfig) -> torch.optim.Optimizer:
    """A main group and one at a tenth of its rate (as fine-tuning's encoder)."""
    return build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(3))]},
                            {"params": [torch.nn.Parameter(torch.zeros(3))], "lr_scale": 0.1}], optim)


def expected_factor(step: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / (TOTAL - WARMUP))
    return MIN_RATIO + (1.0 - MIN_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress))


def group_lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


def scheduled(optim: OptimConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = two_groups(optim)
    return opt, warmup_cosine(opt, TOTAL, WARMUP, MIN_RATIO)


def follow(opt: torch.optim.Optimizer, schedule, steps: int) -> list[list[float]]:
    """Each group's rate at each of ``steps`` steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(group_lrs(opt))
        opt.step()  # no gradients: a no-op, in the order a run calls them
        schedule.step()
    return lrs


def test_the_curve_is_a_linear_warmup_then_a_cosine_for_every_group():
    opt, schedule = scheduled(OptimConfig(name="adamw", lr=0.4))
    assert isinstance(schedule, torch.optim.lr_scheduler.LambdaLR)
    for step in range(TOTAL + 3):  # past the end it stays at the minimum
        f = expected_factor(step)
        assert group_lrs(opt) == pytest.approx([0.4 * f, 0.04 * f], rel=1e-12), step
        assert current_lr(opt) == group_lrs(opt)[0]
        opt.step()  # no gradients: a no-op, in the order a run calls them
        schedule.step()
    assert current_lr(opt) == pytest.approx(0.4 * MIN_RATIO)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
@pytest.mark.parametrize("stop_at", [2, WARMUP, 13])  # in the warm-up, at its end, in the cosine
def test_a_schedule_restored_mid_run_gives_the_uninterrupted_rates(name, stop_at):
    optim = OptimConfig(name=name, lr=0.3)
    uninterrupted = follow(*scheduled(optim), TOTAL)
    opt, schedule = scheduled(optim)
    resumed = follow(opt, schedule, stop_at)
    saved = {"optimizer": opt.state_dict(), "scheduler": schedule.state_dict()}
    # through a checkpoint file, as a run saves and loads them
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    opt, schedule = scheduled(optim)  # a new process: fresh optimizer and schedule, then their states
    opt.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["scheduler"])
    resumed += follow(opt, schedule, TOTAL - stop_at)
    assert resumed == uninterrupted  # exactly, not approximately


def test_a_resumed_pretraining_follows_the_uninterrupted_lr_curve(tmp_path, scroll_dir):
    from napari_vesuvius_pt.engine import pretrain

    def config(out) -> PretrainConfig:  # warm-up over the first 1.5 epochs, then a cosine
        return PretrainConfig(
            segments=[str(scroll_dir)], out=str(out), encoder=EncoderConfig("resnet10", widen_factor=0.125),
            tile=TileConfig(depth=16, size=32, stride=16), vicreg=VICRegConfig(expander=[32, 32]),
            optim=OptimConfig(name="lars", lr=0.2, warmup_epochs=1.5, min_lr_ratio=0.1), epochs=3, batch_size=4,
            steps_per_epoch=2, device="cpu")

    full = [e.lr for e in pretrain(config(tmp_path / "full")) if isinstance(e, StepDone)]
    assert len(full) == 6 and full[:3] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])

    part = config(tmp_path / "part")
    seen = []
    gen = pretrain(part)
    for event in gen:
        if isinstance(event, StepDone):
            seen.append(event.lr)
            if (event.epoch, event.step) == (2, 1):  # inside the warm-up's last epoch
                gen.close()
    seen += [e.lr for e in pretrain(dataclasses.replace(part, resume=str(tmp_path / "part")))
             if isinstance(e, StepDone)]
    assert seen == full

    def metric_lrs(run) -> list[float]:
        return [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert metric_lrs(tmp_path / "part") == metric_lrs(tmp_path / "full")
    assert len(metric_lrs(tmp_path / "full")) == 3
