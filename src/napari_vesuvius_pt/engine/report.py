"""The demo's report folder: the comparison (mean ± sd over probe seeds per encoder, the baselines,
the paired differences in plain words), loss curves, CKA heatmaps, and the predictions next to the ink
labels at full resolution, as report.md with PNGs beside it.

``results_table(comparison)`` is the markdown table the README's "What the demo shows" pastes (the
demo prints it at the end).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt._atomic import atomic_write_text

PAIR_OF_INTEREST = ("vicreg", "random")  # the seed's question: does VICReg pretraining beat a random encoder?
LABELS = {"random": "random (frozen)", "vicreg": "VICReg (frozen)", "kinetics-700": "Kinetics-700 (frozen)",
          "random-finetuned": "random, encoder trained too (fine-tune)"}


def encoder_label(name: str) -> str:
    return LABELS.get(name, name)


def _pm(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d["n"] > 1 else f"{d['mean']:.3f} (1 seed)"


def results_table(comparison: Mapping[str, Any]) -> str:
    """A markdown table: per encoder F0.5 and AUC as mean ± sd over seeds, then both baselines."""
    rows = ["| encoder | seeds | F0.5 | AUC |", "|---|---:|---:|---:|"]
    for name, e in comparison["encoders"].items():
        rows.append(f"| {encoder_label(name)} | {e['f05']['n']} | {_pm(e['f05'])} | {_pm(e['auc'])} |")
    base = comparison["baselines"]
    if "linear z-profile" in base:
        m = base["linear z-profile"]
        rows.append(f"| linear model on 5×5-smoothed z-profiles (baseline) | – | {m['f05']:.3f} | {m['auc']:.3f} |")
    if "all ink" in base:
        m = base["all ink"]
        rows.append(f"| all ink (baseline, prevalence {m['prevalence']:.3f}) | – | {m['f05']:.3f} | 0.500 |")
    return "\n".join(rows)


def pair_of_interest(comparison: Mapping[str, Any]) -> dict[str, Any] | None:
    a, b = PAIR_OF_INTEREST
    return next((p for p in comparison.get("pairs", []) if p["a"] == a and p["b"] == b), None)


def difference_words(comparison: Mapping[str, Any]) -> str:
    """The paired difference VICReg − random in plain words (F0.5 and AUC)."""
    p = pair_of_interest(comparison)
    if p is None:
        return "No paired difference VICReg − random (the encoders do not share their probe seeds)."
    f, a = p["f05"], p["auc"]
    words = "is" if f["distinguishable"] else "is not"
    return (f"VICReg − random: F0.5 {f['mean']:+.3f}, AUC {a['mean']:+.3f} (means of the per-seed "
            f"differences). The F0.5 difference {words} distinguishable from zero: "
            + "; ".join(f"95% interval {_ci(i)}" for i in (f["seeds"], f["tiles"]) if i is not None) + ".")


def _ci(i: Mapping[str, Any]) -> str:
    return f"{i['low']:+.3f} to {i['high']:+.3f} ({i['method']})"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_pretraining(steps: Sequence[Mapping[str, float]], epochs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from napari_vesuvius_pt.engine.online_probe import plot_probe, probe_curve

    probed = bool(probe_curve(epochs)["epoch"])  # the online probe's curve beside the loss, when it ran
    fig, (ax_loss, ax_mon, *ax_probe) = plt.subplots(1, 2 + probed, figsize=(11 + 4.5 * probed, 3.8),
                                                     constrained_layout=True)
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
    if ax_probe:
        plot_probe(ax_probe[0], epochs)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _full_resolution(arr: np.ndarray, scale: int, shape: tuple[int, int]) -> np.ndarray:
    """A reduced-size prediction brought to the plane's pixels: bilinear between the stored values'
    centres (each stored value covers a ``scale x scale`` block)."""
    from scipy import ndimage

    arr = np.nan_to_num(np.asarray(arr, dtype=np.float32))
    if scale > 1:
        arr = ndimage.zoom(arr, scale, order=1, mode="nearest", grid_mode=True)
    out = np.zeros(shape, dtype=np.float32)
    h, w = min(shape[0], arr.shape[0]), min(shape[1], arr.shape[1])
    out[:h, :w] = arr[:h, :w]
    return out


def plot_predictions(prediction: Path, fragment: str | Path, region: Path | None, path: Path,
                     arrays: Mapping[str, str] | None = None, extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """The fragment's middle layer, its ink labels, each prediction (``arrays``: title -> array name;
    default every array) and ``extra`` probability maps (title -> (y, x) array), one above the other at
    full resolution (at least 1 figure pixel per plane pixel; small planes are enlarged 2-3x), cropped
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
    mask = np.asarray(seg.papyrus_mask())[y0:y1, x0:x1]
    panels = [("middle layer", layer, "gray"), ("ink labels", np.asarray(seg.inklabels)[y0:y1, x0:x1], "gray")]
    arrays = dict(arrays) if arrays is not None else {encoder_label(n): n for n in store.names}
    for title, name in arrays.items():
        info = store.info(name)
        scale = int(info.get("plane_scale", 1))
        values = decode(np.asarray(store.array(name)[...]))
        stride = int(info.get("output_stride", 1) or 1)
        if scale < stride and stride % scale == 0:
            # written at full resolution: each model output repeated over its block; undo the repeat so
            # the picture interpolates between the outputs instead of showing blocks
            from napari_vesuvius_pt.data.blocks import block_mean

            values, scale = block_mean(np.nan_to_num(values), stride // scale), stride
        full = _full_resolution(values, scale, (h, w))
        panels.append((title, full[y0:y1, x0:x1] * mask, "magma"))
    for title, img in (extra or {}).items():
        panels.append((title, np.asarray(img, dtype=np.float32)[y0:y1, x0:x1] * mask, "magma"))
    ph, pw = y1 - y0, x1 - x0
    zoom = max(1, min(3, 768 // max(1, pw)))
    dpi = 100
    title_in = 0.3
    fig_w = pw * zoom / dpi
    fig_h = len(panels) * (ph * zoom / dpi + title_in)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    panel_h = 1.0 / len(panels)
    for i, (title, img, cmap) in enumerate(panels):
        bottom = 1.0 - (i + 1) * panel_h
        ax = fig.add_axes((0.0, bottom, 1.0, panel_h * (ph * zoom / dpi) / (ph * zoom / dpi + title_in)))
        kw = {"vmin": 0, "vmax": 1} if cmap == "magma" else {}
        ax.imshow(np.nan_to_num(img), cmap=cmap, interpolation="nearest", aspect="auto", **kw)
        ax.set_title(title, fontsize=9, pad=2)
        ax.axis("off")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_report(out: Path, *, comparison: Mapping[str, Any], pretrain_dir: Path,
                 pretrain_steps: Sequence[Mapping[str, float]], cka_dir: Path, demo: Any,
                 scale: Mapping[str, Any], baseline_map: np.ndarray | None = None) -> Path:
    """report.md (and figures/) for a demo run; ``comparison`` is ``engine.compare``'s result."""
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    epochs = [e for e in _read_jsonl(Path(pretrain_dir) / "metrics.jsonl") if "epoch" in e]
    plot_pretraining(pretrain_steps, epochs, figs / "pretraining.png")
    split = comparison["split"]
    fragment = split["val_fragment"] or split["train"][0]
    region = Path(split["val_region"]) if split.get("val_region") else None
    first = {encoder_label(n): f"{n}-seed{e['seeds'][0]}" for n, e in comparison["encoders"].items()}
    extra = {"linear z-profile baseline": baseline_map} if baseline_map is not None else None
    plot_predictions(Path(comparison["prediction"]), fragment, region, figs / "predictions.png", first, extra)
    if (Path(cka_dir) / "cka.png").is_file():
        shutil.copyfile(Path(cka_dir) / "cka.png", figs / "cka.png")
    from napari_vesuvius_pt.engine.compare import pairs_table
    from napari_vesuvius_pt.models.vicreg import collapse_warning

    pairs = "\n".join(f"- {p['f05']['sentence']}\n- {p['auc']['sentence']}" for p in comparison["pairs"])
    enc = scale["finetune"]["encoder"]
    tile = scale["finetune"]["tile"]
    text = f"""# napari-vesuvius-pt demo report

The seed experiment in miniature, on synthetic data: VICReg pretraining of a 3D ResNet on unlabeled
scroll segments (which hold ink, unlabeled), CKA between the pretraining epochs, then the same
frozen-encoder ink probe on each encoder, trained with {scale['demo']['seeds']} seeds on the same split,
predicted tile by tile (outer edges dropped) and scored on the validation pixels; a fine-tune with
the encoder trained too is shown beside the probes.

Scale `{getattr(demo, 'scale', '')}` (`resources/configs/{getattr(demo, 'scale', '')}.yaml`): encoder
{enc['name']} (width {enc['widen_factor']}), tiles {tile['depth']}×{tile['size']}×{tile['size']},
{scale['pretrain']['epochs']} pretraining epochs, {scale['finetune']['epochs']} probe epochs.
Split `{split['protocol']}`: {split['description']}.

## Ink detection on the validation pixels

{results_table(comparison)}

F0.5 is the Kaggle metric (precision weighted over recall) at the best threshold of a 0.10–0.95
sweep, AUC the ROC AUC; mean ± sd (sample sd) over probe seeds. The baselines are what a model must
beat: a per-pixel linear discriminant on each pixel's 5×5-smoothed z-profile, fitted on the training
pixels, and calling every pixel ink.

{difference_words(comparison)}

### Paired differences (seed k of each encoder starts its head alike and sees the same batches)

{pairs_table(comparison)}

{pairs}

![predictions](figures/predictions.png)

## VICReg pretraining

![pretraining](figures/pretraining.png)

{collapse_warning(epochs) or "The collapse monitor shows no collapse: the effective rank stayed above half its peak and the embedding std above a quarter of its peak (models.vicreg.collapse_warning)."}

## CKA between the pretraining epochs

Linear (left) and RBF (right) CKA of the pooled embeddings of a fixed probe set; values below 1 away
from the diagonal mean the representation kept changing between epochs.

![cka](figures/cka.png)

## Runs

- pretraining: `{pretrain_dir}`
- comparison: `{Path(comparison['prediction']).parent}` (`compare.md`, `compare.json`, one run folder
  per encoder and seed in `runs/`)
- predictions: `{comparison['prediction']}` (open it in napari, or `vesuvius-pt demo --gui --out {out}`)
- CKA: `{cka_dir}`

Reproduce any run with its saved config, e.g. `vesuvius-pt pretrain --config {Path(pretrain_dir) / 'config.yaml'}`.
"""
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "metrics.json", json.dumps(comparison.get("per_array", {}), indent=2))
    return out / "report.md"
