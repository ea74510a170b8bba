"""The speed options of issue 14: the thread count chosen from the cores, bfloat16 autocast on the CPU,
and test-time augmentation in predict (off by default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_vesuvius_pt.cli import main as cli_main
from napari_vesuvius_pt.config import DataConfig, PredictConfig, TileConfig
from napari_vesuvius_pt.engine import threads
from napari_vesuvius_pt.engine.device import describe_device, resolve_device
from napari_vesuvius_pt.engine.precision import Precision, cpu_has_native_bf16
from napari_vesuvius_pt.engine.prediction import InkPredictor, predict, tta_probabilities
from napari_vesuvius_pt.engine.prediction_store import open_prediction
from napari_vesuvius_pt.errors import ConfigError

RAW = DataConfig(normalization="none")


# ---------------------------------------------------------------- threads


def test_thread_choice_follows_cores_quota_and_local_processes(monkeypatch):
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(cpus=8, quota=None, local_world=1).threads == 8
    capped = threads.choose_threads(cpus=8, quota=2.5, local_world=1)
    assert capped.threads == 2 and "quota 2.5" in capped.reason
    shared = threads.choose_threads(cpus=8, quota=None, local_world=4)
    assert shared.threads == 2 and "4 local processes" in shared.reason
    assert threads.choose_threads(cpus=2, quota=None, local_world=4).threads == 1
    monkeypatch.setenv(threads.ENV_THREADS, "3")
    assert threads.choose_threads(cpus=8).describe() == f"3 torch threads ({threads.ENV_THREADS}=3)"


def test_bad_thread_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(threads.ENV_THREADS, "many")
    with pytest.raises(ConfigError, match="whole number"):
        threads.choose_threads()


def test_cgroup_quota_is_read(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(f) == 1.5
    f.write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(f) is None
    assert threads.cgroup_cpu_quota(tmp_path / "missing") is None


def test_runs_cap_threads_but_never_raise_them_and_report_the_count(monkeypatch):
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the caller's choice stays
        resolve_device("cpu")
        assert torch.get_num_threads() == 1
        assert "1 torch thread" in describe_device(torch.device("cpu"))
        monkeypatch.setenv(threads.ENV_THREADS, "2")  # an explicit setting is applied exactly
        resolve_device("cpu")
        assert torch.get_num_threads() == 2
        assert describe_device(torch.device("cpu")) == f"cpu, 2 torch threads ({threads.ENV_THREADS}=2)"
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- bfloat16 on the CPU


def test_cpu_bf16_autocast_is_opt_in():
    cpu = torch.device("cpu")
    assert not Precision(cpu, amp=True).enabled  # amp alone means CUDA only, as before
    p = Precision(cpu, amp=True, cpu_bf16=True)
    assert p.enabled == cpu_has_native_bf16()
    conv = torch.nn.Conv3d(1, 2, 3)
    with p.autocast():
        out = conv(torch.randn(1, 1, 4, 8, 8))
    assert out.dtype == (torch.bfloat16 if p.enabled else torch.float32)
    assert p.scaler is None  # bfloat16 needs no gradient scaler


# ---------------------------------------------------------------- test-time augmentation


class Corner(torch.nn.Module):
    """Not rotation-equivariant: the output favours the tile's top-left (a fixed ramp), so TTA changes it."""

    def __init__(self, r: int = 4):
        super().__init__()
        self.r = r

    def forward(self, x):
        m = F.avg_pool2d(x.mean(dim=2) / 65535.0, self.r)
        s = m.shape[-1]
        ramp = torch.linspace(1.0, 0.0, s)
        return torch.logit(m.clamp(1e-4, 1 - 1e-4)) + 2.0 * (ramp[None, :] + ramp[:, None])[None, None]


def test_tta_is_equivariant_and_leaves_a_symmetric_model_alone():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 32, 32) * 65535
    model = Corner(4)
    tta = tta_probabilities(model, x)
    assert tta.shape == (2, 1, 8, 8)
    plain = torch.sigmoid(model(x))
    assert not torch.allclose(tta, plain, atol=1e-3)  # the ramp is averaged away
    # a rotated (and flipped) tile gives the rotated (flipped) TTA prediction
    rotated = tta_probabilities(model, torch.rot90(x, 1, dims=(-2, -1)).flip(-1))
    torch.testing.assert_close(rotated, torch.rot90(tta, 1, dims=(-2, -1)).flip(-1), atol=1e-5, rtol=1e-5)

    class Symmetric(torch.nn.Module):
        def forward(self, x):
            return torch.logit(F.avg_pool2d(x.mean(dim=2) / 65535.0, 4).clamp(1e-4, 1 - 1e-4))

    torch.testing.assert_close(tta_probabilities(Symmetric(), x), torch.sigmoid(Symmetric()(x)), atol=1e-5, rtol=1e-5)


def _predict(fragment_dir, out, tta):
    pred = InkPredictor("corner", Corner(4), 4, TileConfig(depth=16, size=32), RAW)
    cfg = PredictConfig(segment=str(fragment_dir), out=str(out), device="cpu", edge=8, chunk=32, tta=tta)
    list(predict(cfg, [pred]))
    store = open_prediction(out)
    return np.asarray(store.array("corner")[:], dtype=np.float32), store.info("corner")


def test_predict_tta_is_off_by_default_and_changes_the_prediction(fragment_dir, tmp_path):
    assert PredictConfig().tta is False
    plain, info = _predict(fragment_dir, tmp_path / "plain.zarr", tta=False)
    tta, info_tta = _predict(fragment_dir, tmp_path / "tta.zarr", tta=True)
    assert plain.shape == tta.shape
    assert np.abs(plain - tta).max() > 0.05  # the corner bias of each tile is averaged out
    assert info_tta["config"]["tta"] is True and info["config"]["tta"] is False
    # a stored prediction without TTA is never resumed with TTA: the user is told to start it over
    with pytest.raises(ConfigError, match="differs in tta"):
        _predict(fragment_dir, tmp_path / "plain.zarr", tta=True)


def test_cli_predict_has_tta_flag(fragment_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["predict", "--help"])
    parser_help = capsys.readouterr().out
    assert "--tta" in parser_help and "--cpu-bf16" in parser_help
