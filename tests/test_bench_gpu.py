"""bench/gpu.py cannot rot: its --tiny run (CPU, toy sizes) prints every row of the GPU table with a
number, and the DDP smoke run under torchrun (gloo here) succeeds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
ROWS = ("matmul peak", "VICReg step", "VICReg step FLOP/s", "fraction of peak", "DDP smoke",
        "predict: write zarr", "predict: read + normalise", "predict: model", "predict: end to end")


def test_gpu_bench_tiny_prints_every_row(tmp_path):
    env = {**os.environ, "VESUVIUS_PT_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("measurement", "---"):
            table[cells[0]] = cells[1:]
    assert tuple(table) == ROWS
    for name in ROWS:
        value = table[name][0]
        if name == "DDP smoke":
            assert value == "ok" and "gloo" in table[name][2]
        else:
            assert re.fullmatch(r"\d+(\.\d+)?%?", value) and float(value.rstrip("%")) > 0, (name, value)
    assert "20x160x224" in table["predict: write zarr"][2]
    tiles = int(re.search(r"(\d+) tiles in", table["predict: end to end"][2]).group(1))
    assert tiles > 0
