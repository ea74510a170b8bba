"""Stopped and doubled runs, as a careless or unlucky user makes them: the CLI in a subprocess killed with
SIGKILL or SIGTERM mid-epoch and mid-checkpoint-write, then resumed; a second run into a folder a first
one holds; resumes with changed settings. Tiny models (resnet10 at width 0.25, 16x32x32 tiles)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_vesuvius_pt.cli import main

HARNESS = Path(__file__).with_name("faults_harness.py")
EPOCHS = 3


def _args(segment: Path, out: Path | None = None, **extra) -> list[str]:
    args = ["pretrain", "--segments", str(segment), "--encoder", "resnet10", "--width", "0.25", "--tile", "16x32x32",
            "--stride", "32", "--mask-erosion", "0", "--batch-size", "4", "--steps-per-epoch", "3",
            "--epochs", str(EPOCHS), "--device", "cpu", "--seed", "1", "--quiet"]
    if out is not None:
        args += ["--out", str(out)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _start(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.Popen([sys.executable, str(HARNESS), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {path.name}: {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {path}")
        time.sleep(0.05)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run / "last.pt", weights_only=True)
    assert payload["epoch"] == EPOCHS and payload["step"] == 0
    return {**{f"encoder.{k}": v for k, v in payload["encoder"].items()},
            **{f"expander.{k}": v for k, v in payload["expander"].items()}}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def _debris(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.is_file())


def _epochs_in_metrics(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def reference(scroll_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    assert main(_args(scroll_dir, out)) == 0
    assert _epochs_in_metrics(out) == [1, 2, 3]
    return _weights(out)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(scroll_dir, tmp_path, reference, capsys):
    run = tmp_path / "run"
    mark = tmp_path / "mark"
    proc = _start(_args(scroll_dir, run), {"FAULT_MODE": "step", "FAULT_STEP": "2,2", "FAULT_MARK": str(mark)})
    _wait_for(mark, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".vesuvius-pt.lock").exists()  # the killed holder's lock stays behind: stale now
    assert main(["pretrain", "--resume", str(run), "--quiet"]) == 0
    _assert_same(_weights(run), reference)
    assert _epochs_in_metrics(run) == [1, 2, 3]
    assert _debris(run) == []


def test_sigkill_mid_checkpoint_write_then_resume_equals_uninterrupted(scroll_dir, tmp_path, reference):
    """Killed in the rename of epoch 2's last.pt: epoch_002.pt is complete, last.pt still holds epoch 1 and
    its temporary file lies beside it. The resume takes the newer epoch file and removes the temporary."""
    run = tmp_path / "run"
    mark = tmp_path / "mark"
    proc = _start(_args(scroll_dir, run), {"FAULT_MODE": "write", "FAULT_FILE": "last.pt", "FAULT_COUNT": "2",
                                           "FAULT_MARK": str(mark)})
    _wait_for(mark, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert any(p.name.startswith(".last.pt.") and p.name.endswith(".tmp") for p in run.iterdir())
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert (run / "checkpoints" / "epoch_002.pt").is_file()
    assert _epochs_in_metrics(run) == [1, 2]  # the metrics line went in with the epoch's commit
    assert main(["pretrain", "--resume", str(run), "--quiet"]) == 0
    _assert_same(_weights(run), reference)
    assert _epochs_in_metrics(run) == [1, 2, 3]
    assert _debris(run) == []


def test_second_run_refused_while_first_holds_folder_then_sigterm_and_resume(scroll_dir, tmp_path, reference, capsys):
    run = tmp_path / "run"
    mark = tmp_path / "mark"
    proc = _start(_args(scroll_dir, run), {"FAULT_MODE": "step", "FAULT_STEP": "2,2", "FAULT_MARK": str(mark)})
    try:
        _wait_for(mark, proc)
        config_before = (run / "config.yaml").read_text()
        epoch1 = (run / "checkpoints" / "epoch_001.pt").read_bytes()
        # a second run into the same folder, other seed: refused, nothing of the first touched
        capsys.readouterr()
        assert main(_args(scroll_dir, run, seed=2)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "in use by another run" in line and f"pid {proc.pid}" in line, line
        # its resume too
        assert main(["pretrain", "--resume", str(run), "--quiet"]) == 2
        assert "in use by another run" in _one_error_line(capsys.readouterr().err)
        assert (run / "config.yaml").read_text() == config_before
        assert (run / "checkpoints" / "epoch_001.pt").read_bytes() == epoch1
        proc.send_signal(signal.SIGTERM)  # mid-epoch: finishes the step, writes last.pt there
    finally:
        (tmp_path / "mark.go").touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = torch.load(run / "last.pt", weights_only=True)
    assert (stopped["epoch"], stopped["step"]) == (1, 2)
    assert not (run / ".vesuvius-pt.lock").exists()  # released on the way out
    assert main(["pretrain", "--resume", str(run), "--quiet"]) == 0
    _assert_same(_weights(run), reference)
    assert _epochs_in_metrics(run) == [1, 2, 3]
    assert _debris(run) == []


@pytest.fixture(scope="module")
def finished_run(scroll_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "short"
    args = _args(scroll_dir, out)
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--steps-per-epoch") + 1] = "1"
    assert main(args) == 0
    return out


@pytest.mark.parametrize("flags, setting", [
    (["--lr", "1e12"], "optim.lr"),
    (["--seed", "7"], "seed"),
    (["--normalization", "zscore"], "data.normalization"),
    (["--batch-size", "2"], "batch_size"),
    (["--tile", "8x32x32"], "tile.depth"),
    (["--width", "0.5"], "encoder.widen_factor"),
    (["--steps-per-epoch", "2"], "steps_per_epoch"),
    (["--accumulate", "2"], "optim.accumulate"),
    (["--optimizer", "adamw"], "optim.name"),
])
def test_resume_with_a_result_changing_setting_is_refused(finished_run, flags, setting, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()}
    assert main(["pretrain", "--resume", str(finished_run), "--epochs", "2", "--quiet", *flags]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{setting}=" in line and "cannot resume" in line, line
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()} == before


def test_resume_refuses_changed_segments_and_out(finished_run, fragment_dir, tmp_path, capsys):
    assert main(["pretrain", "--resume", str(finished_run), "--segments", str(fragment_dir), "--quiet"]) == 2
    assert "segments=" in _one_error_line(capsys.readouterr().err)
    assert main(["pretrain", "--resume", str(finished_run), "--out", str(tmp_path / "elsewhere"), "--quiet"]) == 2
    assert "--out" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "elsewhere").exists()


def test_resume_from_yaml_with_a_changed_lr_is_refused(finished_run, tmp_path, capsys):
    """The issue's case: a config whose lr is 1.0e6 (a YAML 1.2 float, read as a number now)."""
    text = (finished_run / "config.yaml").read_text().replace("lr: 0.05", "lr: 1.0e6")
    assert "lr: 1.0e6" in text
    (tmp_path / "changed.yaml").write_text(text)
    assert main(["pretrain", "--config", str(tmp_path / "changed.yaml"), "--resume", str(finished_run), "--quiet"]) == 2
    assert "optim.lr=1000000.0" in _one_error_line(capsys.readouterr().err)


def test_damaged_last_and_newest_epoch_fall_back_to_the_newest_intact_checkpoint(scroll_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = _args(scroll_dir, run)
    args[args.index("--steps-per-epoch") + 1] = "1"
    assert main(args) == 0
    for damaged in (run / "last.pt", run / "checkpoints" / "epoch_003.pt"):
        damaged.write_bytes(damaged.read_bytes()[:200])
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "resumed from checkpoints/epoch_002.pt, the newest intact checkpoint" in err and "last.pt" in err, err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == EPOCHS
    assert _epochs_in_metrics(run) == [1, 2, 3]
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["checkpoint"].endswith("epoch_002.pt") and record["notes"]


@pytest.fixture
def live_holder():
    """A live process of this host, to name as a lock's holder."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write_lock(path: Path, pid: int) -> None:
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": time.time() - 1,
                                "command": "vesuvius-pt predict ..."}))


def test_predict_cka_and_demo_refuse_an_output_another_process_holds(live_holder, fragment_dir, tmp_path, capsys):
    from napari_vesuvius_pt.engine.run_lock import LOCK_NAME

    store = tmp_path / "pred.zarr"
    _write_lock(tmp_path / ".pred.zarr.lock", live_holder.pid)
    assert main(["predict", "--checkpoint", "random", "--segment", str(fragment_dir), "--out", str(store),
                 "--device", "cpu", "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"prediction store {store} is in use by another run (pid {live_holder.pid}" in line, line
    assert not store.exists()
    _write_lock(tmp_path / "cka" / LOCK_NAME, live_holder.pid)
    assert main(["cka", "random", "--segment", str(fragment_dir), "--out", str(tmp_path / "cka"), "--tiles", "16",
                 "--device", "cpu", "--quiet"]) == 2
    assert "CKA folder" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "cka").iterdir()) == [LOCK_NAME]
    _write_lock(tmp_path / "demo" / LOCK_NAME, live_holder.pid)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--scale", "quick", "--device", "cpu"]) == 2
    assert "demo folder" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [LOCK_NAME]


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    from napari_vesuvius_pt.engine.run_lock import folder_lock, hold

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = folder_lock(tmp_path / "run")
    _write_lock(lock.path, int(dead.stdout))
    with hold(lock):
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(Exception, match="in use by another run"):
            folder_lock(tmp_path / "run").acquire()
    assert not lock.path.exists()
