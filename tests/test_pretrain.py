"""VICReg pretraining engine and CLI on tiny encoders and synthetic segments: the loss goes down, the
checkpoint loads, a stop leaves a resumable checkpoint, resume equals an uninterrupted run, NaN and OOM
end the run with a clear Failed event."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.config import (
    EncoderConfig,
    OptimConfig,
    PretrainConfig,
    TileConfig,
    VICRegConfig,
    load_config,
)
from napari_vesuvius_pt.engine import pretrain
from napari_vesuvius_pt.engine.events import EpochDone, Failed, Finished, Started, StepDone
from napari_vesuvius_pt.errors import ConfigError, RunError
from napari_vesuvius_pt.models.checkpoint import encoder_from_source, load_checkpoint

pretrain_module = importlib.import_module("napari_vesuvius_pt.engine.pretraining")


def tiny_config(segments, out, **kw) -> PretrainConfig:
    base = dict(
        segments=[str(s) for s in segments],
        out=str(out),
        encoder=EncoderConfig("resnet10", widen_factor=0.125),
        tile=TileConfig(depth=16, size=32, stride=16),
        vicreg=VICRegConfig(expander=[64, 64]),
        optim=OptimConfig(name="sgd", lr=0.05, warmup_epochs=0.0),
        epochs=2,
        batch_size=8,
        steps_per_epoch=3,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return PretrainConfig(**base)


def run_all(gen) -> list:
    return list(gen)


def encoder_state(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["encoder"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, scroll_dir, fragment_dir):
    """Three epochs of pretraining on a scroll segment and a fragment (labels ignored)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = tiny_config([scroll_dir, fragment_dir], out, epochs=3, steps_per_epoch=4)
    events = run_all(pretrain(cfg))
    return cfg, events


def fixed_batch_loss(cfg: PretrainConfig, encoder, expander) -> float:
    """VICReg loss on fixed, augmented view pairs (batch statistics, as in training)."""
    from napari_vesuvius_pt.data.augment import augment_batch
    from napari_vesuvius_pt.engine.datasets import PretrainViews, open_source, tile_index

    sources = [open_source(p, cfg.data, cfg.tile, cfg.augment.max_z_shift) for p in cfg.segments]
    index = tile_index(sources)
    picks = np.random.default_rng(123).choice(len(index), 32, replace=False)
    views = PretrainViews(sources, index, cfg.tile.depth, cfg.tile.size, cfg.augment.max_z_shift, False)
    pairs = [views[(int(i), 1000 + k)] for k, i in enumerate(picks)]
    v1 = torch.stack([p[0] for p in pairs])[:, None]
    v2 = torch.stack([p[1] for p in pairs])[:, None]
    g = torch.Generator().manual_seed(7)
    v1, _ = augment_batch(v1, None, cfg.augment, g)
    v2, _ = augment_batch(v2, None, cfg.augment, g)
    net = pretrain_module.VICRegNet(encoder, expander).train()
    with torch.no_grad():
        _, _, z1, z2 = net(v1, v2)
        return float(pretrain_module.vicreg_loss(z1, z2, cfg.vicreg.sim_coeff, cfg.vicreg.std_coeff, cfg.vicreg.cov_coeff).total)


def test_pretraining_lowers_the_loss_and_writes_loadable_checkpoints(trained_run):
    cfg, events = trained_run
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    steps = [e for e in events if isinstance(e, StepDone)]
    epochs = [e for e in events if isinstance(e, EpochDone)]
    assert len(steps) == 12 and [e.epoch for e in epochs] == [1, 2, 3]
    assert set(steps[0].losses) == {"loss", "invariance", "variance", "covariance"}
    assert all(np.isfinite(s.losses["loss"]) and s.samples_per_s > 0 and 0 <= s.data_wait <= 1 for s in steps)

    run_path = Path(cfg.out)
    last = load_checkpoint(run_path / "last.pt")
    assert last["kind"] == "pretrain" and last["epoch"] == 3 and last["step"] == 0
    for key in ("encoder", "expander", "optimizer", "scheduler", "rng", "config", "data", "tile", "encoder_spec"):
        assert last[key] is not None, key
    assert last["config"]["epochs"] == 3 and last["tile"]["size"] == 32
    assert sorted(p.name for p in (run_path / "checkpoints").iterdir()) == [f"epoch_{i:03d}.pt" for i in (1, 2, 3)]

    lines = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    for key in ("loss", "invariance", "variance", "covariance", "embedding_std", "effective_rank", "lr"):
        assert all(np.isfinite(line[key]) for line in lines), key
    assert all(1.0 <= line["effective_rank"] <= 64 for line in lines)

    # the loss on a fixed batch is lower with the trained weights than with the starting ones
    from napari_vesuvius_pt.engine.rng import seed_everything
    from napari_vesuvius_pt.models.encoder import build_encoder
    from napari_vesuvius_pt.models.vicreg import Expander

    seed_everything(cfg.seed)
    enc0 = build_encoder(cfg.encoder.name, 1, cfg.encoder.widen_factor)
    exp0 = Expander(enc0.embedding_dim, cfg.vicreg.expander)
    before = fixed_batch_loss(cfg, enc0, exp0)
    encoder, info = encoder_from_source(str(run_path))  # the run folder loads as an encoder source
    assert info["epoch"] == 3
    expander = Expander(encoder.embedding_dim, cfg.vicreg.expander)
    expander.load_state_dict(last["expander"])
    after = fixed_batch_loss(cfg, encoder, expander)
    assert after < before - 0.25, (before, after)
    assert lines[-1]["loss"] < lines[0]["loss"]

    # the saved config reproduces the run's settings
    saved = load_config(PretrainConfig, run_path / "config.yaml")
    assert saved == dataclasses.replace(cfg, resume=None)


def test_stop_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, scroll_dir):
    full = tiny_config([scroll_dir], tmp_path / "full")
    run_all(pretrain(full))

    part = tiny_config([scroll_dir], tmp_path / "part")
    gen = pretrain(part)
    seen = []
    for event in gen:
        seen.append(event)
        if isinstance(event, StepDone) and (event.epoch, event.step) == (1, 2):
            gen.close()  # as the UI's Stop or the CLI's Ctrl-C do
            break
    last = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (last["epoch"], last["step"]) == (0, 2)
    assert not list((tmp_path / "part" / "checkpoints").glob("epoch_*.pt"))

    resumed = run_all(pretrain(dataclasses.replace(part, resume=str(tmp_path / "part"))))
    assert isinstance(resumed[0], Started) and resumed[0].first_epoch == 0
    first_step = next(e for e in resumed if isinstance(e, StepDone))
    assert (first_step.epoch, first_step.step) == (1, 3)
    assert isinstance(resumed[-1], Finished)

    a = encoder_state(tmp_path / "full" / "last.pt")
    b = encoder_state(tmp_path / "part" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    part_lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(full_lines) == len(part_lines) == 2
    assert json.loads(full_lines[1])["loss"] == pytest.approx(json.loads(part_lines[1])["loss"], rel=1e-6)

    # stopping after a completed epoch keeps it; resume then starts the next epoch
    again = tiny_config([scroll_dir], tmp_path / "again", epochs=3)
    gen = pretrain(again)
    for event in gen:
        if isinstance(event, EpochDone):
            gen.close()
            break
    events = run_all(pretrain(dataclasses.replace(again, resume=str(tmp_path / "again"))))
    assert events[0].first_epoch == 1
    assert [e.epoch for e in events if isinstance(e, EpochDone)] == [2, 3]


def test_augmenting_in_the_read_ahead_thread_changes_nothing(tmp_path, scroll_dir, monkeypatch):
    """On the CPU the views are augmented in the read-ahead thread, beside the training step; each batch's
    augmentation is seeded by its step, so the run equals one that reads and augments in the loop."""
    import threading

    threads = []
    real = pretrain_module.augment_batch

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "augment_batch", recording)
    two = OptimConfig(name="sgd", lr=0.05, warmup_epochs=0.0, accumulate=2)  # 2 micro-batches a step
    ahead = tiny_config([scroll_dir], tmp_path / "ahead", prefetch=2, optim=two)
    run_all(pretrain(ahead))
    assert threads and set(threads) == {"tile-prefetch"}
    threads.clear()
    in_loop = tiny_config([scroll_dir], tmp_path / "in_loop", prefetch=0, optim=two)
    run_all(pretrain(in_loop))
    assert set(threads) == {threading.main_thread().name}
    a, b = encoder_state(tmp_path / "ahead" / "last.pt"), encoder_state(tmp_path / "in_loop" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretraining_sources_hold_no_full_size_planes(tmp_path, fragment_dir):
    """Memory flat in the number of segments: once the tile grid is built, a pretraining segment keeps
    its lazy volume and drops its mask and ink labels (2 bytes a pixel for the whole run)."""
    cfg = tiny_config([fragment_dir], tmp_path / "run")
    (source,) = pretrain_module._open_sources(cfg, {})
    assert len(source.grid) > 0
    assert source.segment.mask is None and source.segment.inklabels is None
    with pytest.raises(RuntimeError, match="released"):
        source.segment.papyrus_mask()  # never silently "all papyrus" after the release
    assert source.segment.read_tile(0, 0, 0, 4, 8).shape == (4, 8, 8)


def test_nan_loss_fails_and_keeps_the_last_good_checkpoint(tmp_path, scroll_dir, monkeypatch):
    real = pretrain_module.vicreg_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 4:  # epoch 2, step 2
            return terms._replace(total=terms.total * float("nan"))
        return terms

    monkeypatch.setattr(pretrain_module, "vicreg_loss", poisoned)
    events = run_all(pretrain(tiny_config([scroll_dir], tmp_path / "run")))
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert "NaN" in failed.message and "epoch 2, step 2" in failed.message and "learning rate" in failed.message
    assert failed.checkpoint == tmp_path / "run" / "last.pt"
    kept = load_checkpoint(failed.checkpoint)
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["encoder"].values() if v.is_floating_point())


def test_huge_learning_rate_is_caught(tmp_path, scroll_dir):
    cfg = tiny_config([scroll_dir], tmp_path / "run", optim=OptimConfig(lr=1e12, warmup_epochs=0.0, grad_clip=0.0),
                      epochs=1, steps_per_epoch=6)
    events = run_all(pretrain(cfg))
    assert isinstance(events[-1], Failed), events[-1]
    assert "NaN or infinite" in events[-1].message


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, scroll_dir, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pretrain_module, "vicreg_loss", oom)
    events = run_all(pretrain(tiny_config([scroll_dir], tmp_path / "run")))
    assert isinstance(events[-1], Failed)
    assert "out of memory" in events[-1].message and "--batch-size 4" in events[-1].message


def test_user_errors_are_clear(tmp_path, scroll_dir):
    with pytest.raises(ConfigError, match="--segments"):
        next(pretrain(tiny_config([], tmp_path / "a")))
    with pytest.raises(ConfigError, match="layers"):
        next(pretrain(tiny_config([scroll_dir], tmp_path / "b", tile=TileConfig(depth=40, size=32, stride=16))))
    with pytest.raises(RunError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        next(pretrain(tiny_config([scroll_dir], tmp_path / "c", resume=str(tmp_path / "empty"))))


def test_cli_pretrain_and_resume(tmp_path, scroll_dir, capsys):
    from napari_vesuvius_pt.cli import main

    out = tmp_path / "cli-run"
    argv = ["pretrain", "--segments", str(scroll_dir), "--out", str(out), "--encoder", "resnet10", "--width", "0.125",
            "--tile", "16x32x32", "--stride", "16", "--batch-size", "4", "--steps-per-epoch", "2", "--epochs", "1",
            "--lr", "0.01", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "pretrain: 1 epoch(s)" in text and str(out) in text
    saved = load_config(PretrainConfig, out / "config.yaml")
    assert (saved.encoder.name, saved.encoder.widen_factor, saved.tile.depth, saved.tile.size) == ("resnet10", 0.125, 16, 32)
    assert (saved.batch_size, saved.optim.lr, saved.steps_per_epoch) == (4, 0.01, 2)
    assert main(["pretrain", "--resume", str(out), "--epochs", "2", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["checkpoint"].endswith("last.pt")
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert main(["pretrain", "--segments", str(scroll_dir), "--out", str(out), "--tile", "16x32x48", "--quiet"]) == 2
    assert "square" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_sgd_and_adamw_descend(name):
    from napari_vesuvius_pt.engine.optim import build_optimizer

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = build_optimizer([{"params": layer.parameters()}], OptimConfig(name=name, lr=0.05))
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["weight_decay"] == 5e-5
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer([{"params": layer.parameters()}], OptimConfig(name="rmsprop"))


def test_lars_scales_weight_steps_by_the_trust_ratio():
    from napari_vesuvius_pt.engine.optim import build_optimizer

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = build_optimizer([{"params": layer.parameters()}], OptimConfig(name="lars", lr=2.0, weight_decay=0.0))
    layer(torch.randn(16, 8)).pow(2).mean().backward()
    gb = layer.bias.grad.clone()
    opt.step()
    # weights move by lr * eta * |w| whatever the gradient's size; biases take a plain SGD step
    assert float((layer.weight.detach() - w0).norm()) == pytest.approx(2.0 * 0.001 * float(w0.norm()), rel=1e-5)
    assert torch.allclose(layer.bias.detach(), b0 - 2.0 * gb)


def test_warmup_then_cosine_schedule():
    from napari_vesuvius_pt.engine.optim import build_optimizer, current_lr, warmup_cosine

    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.1}], OptimConfig(lr=1.0))
    schedule = warmup_cosine(opt, total_steps=10, warmup_steps=4, min_lr_ratio=0.01)
    lrs = []
    for _ in range(10):
        lrs.append(current_lr(opt))
        opt.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert current_lr(opt) == pytest.approx(0.01)  # the end of the cosine
    assert opt.param_groups[1]["lr"] == pytest.approx(0.001)  # a scaled group follows the same curve
    # restored as a run restores it: the optimizer's state (which holds the rates), then the schedule's
    fresh = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.1}], OptimConfig(lr=1.0))
    again = warmup_cosine(fresh, total_steps=10, warmup_steps=4, min_lr_ratio=0.01)
    fresh.load_state_dict(opt.state_dict())
    again.load_state_dict(schedule.state_dict())
    assert current_lr(fresh) == pytest.approx(0.01)


def test_ctrl_c_in_the_cli_finishes_the_step_and_keeps_it(tmp_path, scroll_dir):
    import os
    import signal

    from napari_vesuvius_pt.cli._training import StopAtStepBoundary

    cfg = tiny_config([scroll_dir], tmp_path / "run", steps_per_epoch=4)
    seen = []
    inherited = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    with pytest.raises(KeyboardInterrupt):
        with StopAtStepBoundary("pretrain") as stop:
            for event in stop.wrap(pretrain(cfg)):
                seen.append(event)
                if isinstance(event, StepDone) and event.step == 2:
                    os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C on the terminal
    assert isinstance(seen[-1], StepDone) and seen[-1].step == 2
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["epoch"], last["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is inherited  # restored, whatever pytest started with
