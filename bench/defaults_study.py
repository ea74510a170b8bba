"""Why the old fine-tuning defaults did not learn ink, and whether the new ones do (docs/defaults-study.md).

Each run: a synthetic fragment (``data/synthetic.make_fragment``) of a given shape and ink strength,
written as a Kaggle folder; validation is the lower 30% of the fragment's inked rows, down to its edge (a polygon, so the same split as
``vesuvius-pt finetune --val-region``); a fine-tuning from a random encoder with ``FinetuneConfig()``'s
defaults plus the variant's overrides; F0.5 (best threshold) and AUC of its last epoch. Beside it, the
per-pixel linear baseline: a linear discriminant (closed form, pooled covariance) on each pixel's
5x5-smoothed z-profile, fitted on the training band and scored on the same validation band.

    python bench/defaults_study.py --shape 24x256x256 --ink 0.15 --variants old default
    python bench/defaults_study.py --list            # the variants and their overrides

Prints one Markdown row per run and appends them as JSON lines to ``--out``/results.jsonl.
Single-threaded torch unless ``--threads``. Each row gives the wall-clock seconds and the CPU seconds
(user + system, all threads) of the fine-tuning: on a shared machine the second is what the run costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

# The defaults before this study (napari-vesuvius-pt before issue 12), spelled out so they stay reproducible.
OLD = {
    "encoder": {"name": "resnet18", "widen_factor": 1.0},
    "tile": {"depth": 16, "size": 64, "stride": 32, "min_mask_fraction": 0.5},
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 1.0},
    "encoder_lr_scale": 0.1,
    "depth_pooling": "mean",
    "epochs": 5,
    "batch_size": 8,
    "data": {"normalization": "kaggle"},
}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


# name -> overrides of FinetuneConfig() (None: the current defaults as they are)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "old": OLD,
    "old+max": _with(OLD, depth_pooling="max"),
    "old+attention": _with(OLD, depth_pooling="attention"),
    "old+enc_lr1": _with(OLD, encoder_lr_scale=1.0),
    "old+lr3e-3": _with(OLD, optim={"lr": 3e-3}),
    "old+stride16": _with(OLD, tile={"stride": 16}),
    "old+zscore": _with(OLD, data={"normalization": "zscore"}),
    "old+keep_depth": _with(OLD, encoder={"keep_depth": True}),
    "old+tile48": _with(OLD, tile={"size": 48, "stride": 16}),
    "old+demo": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5}, tile={"size": 48, "stride": 16},
                      optim={"lr": 3e-3, "warmup_epochs": 0.5}, data={"normalization": "zscore"}),
    "old+demo+max": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5}, tile={"size": 48, "stride": 16},
                          optim={"lr": 3e-3, "warmup_epochs": 0.5}, data={"normalization": "zscore"},
                          depth_pooling="max"),
    "old+all": _with(OLD, tile={"stride": 16}, optim={"lr": 3e-3, "warmup_epochs": 0.5}, encoder_lr_scale=1.0,
                     depth_pooling="max"),
    "demo+max-r18": _with(OLD, tile={"size": 48, "stride": 16}, optim={"lr": 3e-3, "warmup_epochs": 0.5},
                          data={"normalization": "zscore"}, depth_pooling="max"),
    "demo+max-tile64": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5},
                             optim={"lr": 3e-3, "warmup_epochs": 0.5}, data={"normalization": "zscore"},
                             depth_pooling="max"),
    "demo+max-kaggle": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5}, tile={"size": 48, "stride": 16},
                             optim={"lr": 3e-3, "warmup_epochs": 0.5}, depth_pooling="max"),
    "demo+max-lr1e-3": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5}, tile={"size": 48, "stride": 16},
                             data={"normalization": "zscore"}, depth_pooling="max"),
    "demo+max+enc_lr1": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5}, tile={"size": 48, "stride": 16},
                              optim={"lr": 3e-3, "warmup_epochs": 0.5}, data={"normalization": "zscore"},
                              depth_pooling="max", encoder_lr_scale=1.0),
    "demo+attention": _with(OLD, encoder={"name": "resnet10", "widen_factor": 0.5}, tile={"size": 48, "stride": 16},
                            optim={"lr": 3e-3, "warmup_epochs": 0.5}, data={"normalization": "zscore"},
                            depth_pooling="attention"),
    "default+mean": {"depth_pooling": "mean"},
    "default+attention": {"depth_pooling": "attention"},
    "default+enc_lr0.1": {"encoder_lr_scale": 0.1},
    "default+lr1e-3": {"optim": {"lr": 1e-3}},
    "default+stride32": {"tile": {"stride": 32}},
    "default+kaggle": {"data": {"normalization": "kaggle"}},
}


def parse_shape(text: str) -> tuple[int, int, int]:
    d, h, w = (int(v) for v in text.lower().split("x"))
    return d, h, w


def make_case(root: Path, shape: tuple[int, int, int], ink: float, seed: int) -> tuple[Path, Path, Any]:
    """The fragment folder, the validation polygon (lower 30%) and the synthetic fragment itself."""
    from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment

    synth = make_fragment(shape, seed=seed, ink_strength=ink)
    frag = write_segment(synth, root / f"fragment-{seed}")
    h, w = shape[1:]
    y0 = val_from(synth.inklabels)
    region = root / "val_region.json"
    region.write_text(json.dumps({"polygons": [[[y0, 0], [y0, w], [h, w], [h, 0]]]}))
    return frag, region, synth


def val_from(labels: np.ndarray) -> int:
    """First row of the validation band: the lower 30% of the rows that hold ink (the generator writes its
    lines of letters in the upper part of the sheet, so "the lower 30% of the fragment" may hold none)."""
    rows = np.nonzero(labels.any(axis=1))[0]
    return int(round(rows[0] + 0.7 * (rows[-1] - rows[0])))


def linear_baseline(volume: np.ndarray, mask: np.ndarray, labels: np.ndarray, val_from: int,
                    smooth: int = 5, max_train: int = 200_000, seed: int = 0) -> dict[str, float]:
    """LDA on 5x5-smoothed z-profiles: fit on mask pixels above row ``val_from``, score those below."""
    from napari_vesuvius_pt.analysis.metrics import fbeta_sweep

    vol = volume.astype(np.float32)
    vol = (vol - vol[:, mask > 0].mean()) / (vol[:, mask > 0].std() + 1e-6)
    feats = np.stack([ndimage.uniform_filter(layer, smooth) for layer in vol], axis=-1)  # (y, x, z)
    rows = np.arange(mask.shape[0])[:, None]
    train = (mask > 0) & (rows < val_from)
    val = (mask > 0) & (rows >= val_from)
    X, y = feats[train], labels[train] > 0
    if len(X) > max_train:
        keep = np.random.default_rng(seed).choice(len(X), max_train, replace=False)
        X, y = X[keep], y[keep]
    mu0, mu1 = X[~y].mean(0), X[y].mean(0)
    cov = (np.cov(X[~y], rowvar=False) * (~y).sum() + np.cov(X[y], rowvar=False) * y.sum()) / len(X)
    w = np.linalg.solve(cov + 1e-6 * np.eye(len(cov)), mu1 - mu0)
    b = -w @ (mu0 + mu1) / 2 + np.log(y.mean() / (1 - y.mean()))
    probs = 1.0 / (1.0 + np.exp(-(feats @ w + b)))
    m = fbeta_sweep(probs.astype(np.float32), labels > 0, beta=0.5, mask=val,
                    thresholds=np.linspace(0.0, 1.0, 1001)[1:-1])
    return {"f05": float(m.f05), "auc": float(m.auc), "prevalence": float(m.prevalence)}


def finetune_config(variant: str, frag: Path, region: Path, out: Path, seed: int, extra: dict[str, Any]):
    from napari_vesuvius_pt.config import FinetuneConfig, from_dict, to_dict

    overrides = VARIANTS[variant]
    base = to_dict(FinetuneConfig())
    for key, value in {**(overrides or {}), **extra}.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value
    base.update(fragments=[str(frag)], val_region=str(region), val_fragment=None, out=str(out), seed=seed,
                encoder_origin="random", device="cpu")
    return from_dict(FinetuneConfig, base, where=variant)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, all its threads: what the run costs, whatever else the
    machine runs (wall-clock seconds on a shared machine are not)."""
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_variant(variant: str, frag: Path, region: Path, out: Path, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    from napari_vesuvius_pt.engine.events import EpochDone, Failed, Finished
    from napari_vesuvius_pt.engine.finetuning import finetune

    cfg = finetune_config(variant, frag, region, out, seed, extra)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    curve = []
    for event in finetune(cfg):
        if isinstance(event, EpochDone):
            curve.append(round(float(event.metrics.get("f05", float("nan"))), 3))
        elif isinstance(event, Failed):
            raise SystemExit(f"{variant}: run failed: {event.message}")
        elif isinstance(event, Finished):
            break
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"f05": last.get("f05"), "auc": last.get("auc"), "seconds": seconds, "cpu_seconds": cpu, "curve": curve,
            "steps": last.get("step"), "config": dataclasses.asdict(cfg)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="24x256x256", help="DEPTHxHEIGHTxWIDTH of the synthetic fragment")
    p.add_argument("--ink", type=float, nargs="+", default=[0.15], help="ink strength(s); the generator's default is 0.3")
    p.add_argument("--variants", nargs="+", default=["old", "default"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fragment and training seeds")
    p.add_argument("--epochs", type=int, help="override the variant's epochs")
    p.add_argument("--steps-per-epoch", type=int, help="override the variant's steps per epoch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for runs and results.jsonl (default: a temporary one)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for name, ov in VARIANTS.items():
            print(f"{name}: {json.dumps(ov) if ov is not None else 'FinetuneConfig() defaults'}")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; see --list")
    extra: dict[str, Any] = {}
    if args.epochs:
        extra["epochs"] = args.epochs
    if args.steps_per_epoch:
        extra["steps_per_epoch"] = args.steps_per_epoch
    root = Path(args.out or tempfile.mkdtemp(prefix="defaults-study-"))
    root.mkdir(parents=True, exist_ok=True)
    shape = parse_shape(args.shape)
    print("| shape | ink | seed | variant | F0.5 | AUC | LDA F0.5 | LDA AUC | all-ink F0.5 | wall s | CPU s | F0.5 per epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ink in args.ink:
        for seed in args.seeds:
            case = root / f"{args.shape}-ink{ink}-seed{seed}"
            frag, region, synth = make_case(case, shape, ink, seed)
            base = linear_baseline(synth.volume, synth.mask, synth.inklabels, val_from(synth.inklabels))
            p_ = base["prevalence"]
            all_ink = 1.25 * p_ / (0.25 * p_ + 1)
            for variant in args.variants:
                r = run_variant(variant, frag, region, case / f"run-{variant}", seed, extra)
                row = {"shape": args.shape, "ink": ink, "seed": seed, "variant": variant, **r,
                       "lda_f05": base["f05"], "lda_auc": base["auc"], "all_ink_f05": all_ink, "extra": extra}
                with open(root / "results.jsonl", "a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
                print(f"| {args.shape} | {ink} | {seed} | {variant} | {r['f05']:.3f} | {r['auc']:.3f} | "
                      f"{base['f05']:.3f} | {base['auc']:.3f} | {all_ink:.3f} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                      f"{' '.join(f'{v:.2f}' for v in r['curve'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
