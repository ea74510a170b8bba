"""Pretraining under DistributedDataParallel: two CPU processes under gloo, started the way torchrun
starts them (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank 1's consumer stops the
run in the second epoch, as Ctrl-C would; both ranks must stop at the same step."""

from __future__ import annotations

import importlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, segment: str, out: str, report: str) -> None:
    """One torchrun-like process: run the engine, then record what this rank saw and its weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from napari_vesuvius_pt.config import EncoderConfig, PretrainConfig, TileConfig, VICRegConfig
    from napari_vesuvius_pt.engine.events import EpochDone, StepDone

    module = importlib.import_module("napari_vesuvius_pt.engine.pretraining")
    wrapped = {}
    real_wrap = module.wrap_ddp

    def spy(net, ctx):  # keep a handle on this rank's model
        wrapped["model"] = real_wrap(net, ctx)
        return wrapped["model"]

    module.wrap_ddp = spy
    cfg = PretrainConfig(segments=[segment], out=out, encoder=EncoderConfig("resnet10", 0.125),
                         tile=TileConfig(16, 32, 16), vicreg=VICRegConfig(expander=[32, 32]), epochs=2, batch_size=4,
                         steps_per_epoch=2, device="cpu")
    gen = module.pretrain(cfg)
    events = []
    for event in gen:
        events.append(event)
        if rank == 1 and isinstance(event, StepDone) and (event.epoch, event.step) == (2, 1):
            gen.close()
    steps = [dict(e.losses, epoch=e.epoch, step=e.step) for e in events if isinstance(e, StepDone)]
    last = events[-1]
    torch.save(wrapped["model"].module.encoder.state_dict(), Path(report) / f"encoder_{rank}.pt")
    (Path(report) / f"rank_{rank}.json").write_text(json.dumps({
        "steps": steps, "last": type(last).__name__, "stopped": getattr(last, "stopped", None),
        "epochs_done": [e.epoch for e in events if isinstance(e, EpochDone)], "type": type(wrapped["model"]).__name__}))


def test_two_gloo_processes_train_one_model(tmp_path, scroll_dir):
    report = tmp_path / "report"
    report.mkdir()
    out = tmp_path / "run"
    mp.spawn(rank_main, args=(free_port(), str(scroll_dir), str(out), str(report)), nprocs=WORLD, join=True)

    ranks = [json.loads((report / f"rank_{r}.json").read_text()) for r in range(WORLD)]
    assert all(r["type"] == "DistributedDataParallel" and r["epochs_done"] == [1] for r in ranks)
    # rank 1 stopped after epoch 2, step 1; rank 0 stopped at the same step boundary and said so
    assert [(s["epoch"], s["step"]) for s in ranks[0]["steps"]] == [(1, 1), (1, 2), (2, 1)]
    assert [(s["epoch"], s["step"]) for s in ranks[1]["steps"]] == [(1, 1), (1, 2), (2, 1)]
    assert (ranks[0]["last"], ranks[0]["stopped"]) == ("Finished", True)
    assert ranks[1]["last"] == "StepDone"
    # each rank encodes its own share of the tiles (the invariance term is per process) ...
    assert ranks[0]["steps"][0]["invariance"] != ranks[1]["steps"][0]["invariance"]
    # ... while the variance and covariance terms see the embeddings gathered from both ranks
    for key in ("variance", "covariance"):
        assert ranks[0]["steps"][0][key] == pytest.approx(ranks[1]["steps"][0][key], rel=1e-5)

    # both ranks hold the same weights after their steps (batch-norm running statistics are per
    # process between DDP's buffer broadcasts, so only the trained parameters are compared)
    a = torch.load(report / "encoder_0.pt", weights_only=True)
    b = torch.load(report / "encoder_1.pt", weights_only=True)
    trained = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert any(k.endswith("conv1.weight") for k in trained)
    for k in trained:
        assert torch.equal(a[k], b[k]), k
    # rank 0 alone wrote the run folder, and its checkpoint holds the shared weights
    from napari_vesuvius_pt.models.checkpoint import load_checkpoint

    saved = load_checkpoint(out / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 1)  # resumable from the step both ranks reached
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_001.pt"]
    for k in trained:
        assert torch.equal(saved["encoder"][k], a[k]), k
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
