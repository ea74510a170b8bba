"""Test-time augmentation (``predict --tta``): its cost and its F0.5 effect on the demo's fragment.

    python bench/bench_tta.py --demo DEMO_OUT      # a finished ``vesuvius-pt demo`` folder
    python bench/bench_tta.py --quick              # runs ``vesuvius-pt demo --scale quick`` first

For every probe of the demo (``DEMO/runs/probe-*``), the demo's first fragment is predicted with and
without TTA (the 8 flips/rotations of each tile averaged) at the demo's settings, alternately, and scored
on the demo's validation region (``DEMO/validation_region.json``): F0.5 at the best threshold, AUC, and
the wall time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", help="a finished demo folder (default: run the quick demo into --workdir)")
    p.add_argument("--quick", action="store_true", help="run the quick demo when --demo is not given")
    p.add_argument("--workdir", default="/tmp/vesuvius-pt-bench-tta")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_vesuvius_pt.config import DemoConfig, PredictConfig, load_config
    from napari_vesuvius_pt.engine.evaluation import evaluate
    from napari_vesuvius_pt.engine.prediction import load_predictor, predict

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    demo = Path(args.demo) if args.demo else work / "demo"
    if not (demo / "runs").is_dir():
        from napari_vesuvius_pt.engine.demo import demo as run_demo

        t0 = time.perf_counter()
        for _ in run_demo(DemoConfig(out=str(demo), scale="quick", device="cpu")):
            pass
        print(f"(ran the quick demo into {demo} in {time.perf_counter() - t0:.0f} s)")
    scale = "?"
    if (demo / "demo.yaml").is_file():
        scale = load_config(DemoConfig, demo / "demo.yaml").scale
    fragment = sorted((demo / "data").glob("fragment-*"))[0]
    region = demo / "validation_region.json"
    probes = sorted((demo / "runs").glob("probe-*"))
    edge = 4 if scale == "quick" else 8
    print(f"TTA on {fragment.name} of the {scale} demo ({demo}); region {region.name}; edge {edge}; "
          f"torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}")
    print()
    print("| probe | TTA | F0.5 | threshold | AUC | wall s | time vs no TTA |")
    print("|---|---|---|---|---|---|---|")
    for probe in probes:
        predictor = load_predictor(probe)
        rows = {}
        for repeat in range(2):  # alternate, keep the faster run of each
            for tta in (False, True):
                out = work / f"{probe.name}_{'tta' if tta else 'plain'}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                cfg = PredictConfig(segment=str(fragment), out=str(out), edge=edge, device="cpu", tta=tta)
                t0 = time.perf_counter()
                for _ in predict(cfg, [predictor]):
                    pass
                seconds = time.perf_counter() - t0
                if tta not in rows or seconds < rows[tta][1]:
                    m = evaluate(out, fragment, region=region)[predictor.name]
                    rows[tta] = (m, seconds)
        base = rows[False][1]
        for tta in (False, True):
            m, seconds = rows[tta]
            print(f"| {probe.name} | {'on' if tta else 'off'} | {m.f05:.4f} | {m.threshold:.2f} | {m.auc:.4f} | "
                  f"{seconds:.2f} | {seconds / base:.2f}x |")
        d = rows[True][0].f05 - rows[False][0].f05
        print(f"|  | effect | {d:+.4f} |  | {rows[True][0].auc - rows[False][0].auc:+.4f} |  |  |")
    print(f"\n`python bench/bench_tta.py{' --demo ' + str(args.demo) if args.demo else ' --quick'}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
