"""The demo's report folder: a table of metrics per encoder, loss curves, CKA heatmaps, and the
predictions next to the ink labels, as report.md with PNGs beside it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt._atomic import atomic_write_text

METRIC_COLUMNS = (("f05", "F0.5"), ("threshold", "threshold"), ("precision", "precision"),
                  ("recall", "recall"), ("auc", "AUC"), ("f05_at_05", "F0.5 @ 0.5"))


def encoder_label(array_name: str) -> str:
    return array_name.removeprefix("probe-")


def metrics_table(metrics: Mapping[str, Mapping[str, float]], prevalence_baseline: bool = True) -> str:
    """A markdown table, one row per encoder, with the all-ink baseline's F0.5 as the last row."""
    head = "| encoder | " + " | ".join(label for _, label in METRIC_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(METRIC_COLUMNS)
    rows = [head, rule]
    for name, m in metrics.items():
        rows.append(f"| {encoder_label(name)} | " + " | ".join(
            f"{m[key]:.3f}" if m.get(key) is not None else "–" for key, _ in METRIC_COLUMNS) + " |")
    if prevalence_baseline and metrics:
        p = float(next(iter(metrics.values())).get("prevalence", 0.0))
        f = 1.25 * p / (0.25 * p + 1.0)  # precision p, recall 1
        rows.append(f"| all ink (baseline, prevalence {p:.3f}) | {f:.3f} | – | {p:.3f} | 1.000 | 0.500 | {f:.3f} |")
    return "\n".join(rows)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_pretraining(steps: Sequence[Mapping[str, float]], epochs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_mon) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    # step losses when this process saw the run, else the per-epoch means from metrics.jsonl (a resumed demo)
    points, xlabel = (steps, "step") if steps else (epochs, "epoch")
    if points:
        x = np.arange(1, len(points) + 1) if steps else [p.get("epoch") for p in points]
        for key in ("loss", "invariance", "variance", "covariance"):
            if key in points[0]:
                ax_loss.plot(x, [p[key] for p in points], "-" if steps else "o-", label=key,
                             lw=1.6 if key == "loss" else 1.0)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel(xlabel)
        ax_loss.set_title("VICReg loss and its terms (unweighted)")
        ax_loss.legend(frameon=False, fontsize=8)
    ep = [e.get("epoch") for e in epochs]
    lines = []
    for key, style in (("embedding_std", "o-"), ("effective_rank", "s--")):
        vals = [e.get(key) for e in epochs]
        if any(v is not None for v in vals):
            target = ax_mon if key == "embedding_std" else ax_mon.twinx()
            lines += target.plot(ep, vals, style, label=key.replace("_", " "),
                                 color="C0" if key == "embedding_std" else "C3")
            target.set_ylabel(key.replace("_", " "))
    if lines:
        ax_mon.legend(lines, [ln.get_label() for ln in lines], frameon=False, fontsize=8)
    ax_mon.xaxis.get_major_locator().set_params(integer=True)
    ax_mon.set_xlabel("epoch")
    ax_mon.set_title("collapse monitor")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_predictions(prediction: Path, fragment: str | Path, region: Path | None, path: Path) -> Path:
    """The fragment's middle layer, its ink labels and each encoder's prediction, side by side, cropped
    to the validation region's bounding box when there is one."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.engine.prediction_store import decode, open_prediction

    store = open_prediction(prediction)
    seg = open_segment(fragment)
    h, w = seg.shape[1:]
    y0, y1, x0, x1 = 0, h, 0, w
    if region is not None:
        from napari_vesuvius_pt.data.tiles import load_regions

        pts = np.concatenate(load_regions(region))
        y0, x0 = np.clip(np.floor(pts.min(0)).astype(int), 0, None)
        y1, x1 = np.minimum(np.ceil(pts.max(0)).astype(int), (h, w))
    layer = np.asarray(seg.volume[seg.shape[0] // 2, y0:y1, x0:x1], dtype=np.float32)
    panels = [("middle layer", layer, "gray"), ("ink labels", np.asarray(seg.inklabels)[y0:y1, x0:x1], "gray")]
    for name in store.names:
        scale = int(store.info(name).get("plane_scale", 1))
        arr = decode(np.asarray(store.array(name)[...]))
        full = np.kron(arr, np.ones((scale, scale), dtype=np.float32))[:h, :w]
        panels.append((f"{encoder_label(name)} prediction", full[y0:y1, x0:x1], "magma"))
    aspect = (y1 - y0) / max(1, x1 - x0)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 * aspect + 0.5),
                             constrained_layout=True)
    for ax, (title, img, cmap) in zip(np.atleast_1d(axes), panels):
        kw = {"vmin": 0, "vmax": 1} if cmap == "magma" else {}
        ax.imshow(np.nan_to_num(img), cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, *, metrics: Mapping[str, Mapping[str, float]], pretrain_dir: Path,
                 pretrain_steps: Sequence[Mapping[str, float]], probes: Mapping[str, Path], cka_dir: Path,
                 prediction: Path, fragment: str, region: Path | None, demo: Any,
                 scale: Mapping[str, Any]) -> Path:
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    epochs = _read_jsonl(Path(pretrain_dir) / "metrics.jsonl")
    epochs = [e for e in epochs if "epoch" in e]
    plot_pretraining(pretrain_steps, epochs, figs / "pretraining.png")
    plot_predictions(Path(prediction), fragment, region, figs / "predictions.png")
    if (Path(cka_dir) / "cka.png").is_file():
        shutil.copyfile(Path(cka_dir) / "cka.png", figs / "cka.png")
    probe_lines = []
    for name, run in probes.items():
        last = [e for e in _read_jsonl(Path(run) / "metrics.jsonl") if "epoch" in e]
        if last:
            m = last[-1]
            probe_lines.append(f"- {name}: validation F0.5 during training {m.get('f05', float('nan')):.3f} "
                               f"after {m.get('epoch')} epochs (`{run}`)")
    text = f"""# napari-vesuvius-pt demo report

The seed experiment in miniature, on synthetic data: VICReg pretraining of a 3D ResNet on unlabeled
scroll segments, CKA between the pretraining epochs, then the same frozen-encoder ink probe on each
encoder, trained on the fragments with the lower 30% of the first fragment held out for validation,
predicted tile by tile (outer edges dropped) and scored there.

Scale `{getattr(demo, 'scale', '')}`: encoder {scale['encoder']['name']} (width {scale['encoder']['widen_factor']}), tiles
{scale['tile']['depth']}×{scale['tile']['size']}×{scale['tile']['size']}, {scale['pretrain_epochs']} pretraining epochs,
{scale['finetune_epochs']} probe epochs.

## Ink detection on the validation region

{metrics_table(metrics)}

F0.5 is the Kaggle metric (precision weighted over recall), at the best threshold of a 0.10–0.95 sweep;
the last row is what predicting ink everywhere scores.

![predictions](figures/predictions.png)

## VICReg pretraining

![pretraining](figures/pretraining.png)

## CKA between the pretraining epochs

Linear (left) and RBF (right) CKA of the pooled embeddings of a fixed probe set; values below 1 away
from the diagonal mean the representation kept changing between epochs.

![cka](figures/cka.png)

## Runs

- pretraining: `{pretrain_dir}`
{chr(10).join(probe_lines)}
- predictions: `{prediction}` (open it in napari, or `vesuvius-pt demo --gui --out {out}`)
- CKA: `{cka_dir}`

Reproduce any run with its saved config, e.g. `vesuvius-pt pretrain --config {Path(pretrain_dir) / 'config.yaml'}`.
"""
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return out / "report.md"
