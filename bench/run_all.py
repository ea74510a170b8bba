"""Run every benchmark in bench/ and write one markdown results table.

    python bench/run_all.py [--quick] [--out bench/RESULTS.md] [--only tile_read,predict]

Each benchmark is a script that measures its ratios side by side in one run and prints a table; this
runner adds the machine's description and gathers their output. On a GPU machine the same command also
runs the ResNet-50 seed configuration (bench_models.py and bench_pretrain.py pick CUDA up themselves).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("tile_read", "models", "pretrain", "predict", "cka")
ONLY_WHEN_NAMED = {"real"}  # bench_real.py writes ~12 GB and runs for many minutes: run it with --only real


def machine_description() -> str:
    import torch

    lines = [f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
             f"- python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}",
             f"- CPU cores: {os.cpu_count()} ({platform.processor() or 'unknown processor'})"]
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        lines.append(f"- memory: {mem:.0f} GiB")
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"- GPU {i}: {torch.cuda.get_device_name(i)}")
    else:
        lines.append("- GPU: none")
    return "\n".join(lines)


def scripts(only: set[str] | None) -> list[Path]:
    found = {p.stem.removeprefix("bench_"): p for p in HERE.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    return [found[n] for n in names if (n in only if only else n not in ONLY_WHEN_NAMED)]


def run_one(script: Path, quick: bool, timeout: int) -> tuple[str, int, float]:
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    cmd = [sys.executable, str(script)] + (["--quick"] if quick and "--quick" in help_text else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + ("\n" + proc.stderr[-2000:] if proc.returncode else ""), proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), -1
        out += f"\n(timed out after {timeout} s)"
    return out.strip(), rc, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick size")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--only", help="comma-separated names: " + ", ".join(ORDER))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    parts = ["# Benchmark results", "", "Machine:", "", machine_description(), "",
             f"Command: `python bench/run_all.py{' --quick' if args.quick else ''}`. Ratios are measured "
             "side by side in one run; absolute numbers depend on the machine and its load.", ""]
    failed = 0
    for script in scripts(only):
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        out, rc, seconds = run_one(script, args.quick, args.timeout)
        failed += rc != 0
        status = "" if rc == 0 else f" — FAILED (exit {rc})"
        parts += [f"## {script.stem}{status}", "", f"({seconds:.0f} s)", "", "```", out, "```", ""]
        print(out, file=sys.stderr)
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
