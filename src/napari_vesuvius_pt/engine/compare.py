"""``vesuvius-pt compare``: encoders compared with spread over probe seeds, as one generator of events.

For each encoder (and each unfrozen fine-tune) and each seed, the same ink run (``cfg.probe``: a
frozen-encoder probe, or the encoder trained too) is trained on the same split; every run is predicted
over the validation data (only the region, when the split has one) into one store, arrays named
``<encoder>-seed<k>``, and scored like ``evaluate`` scores them. The baselines (the all-ink F0.5 and the
per-pixel linear z-profile model) are scored on the same pixels.

The result, in ``OUT/compare.json`` and ``OUT/compare.md`` (and the ``Finished`` summary):

- per encoder: the mean ± sd over seeds of F0.5 and AUC, and each seed's values;
- per pair of encoders (each listed later minus each listed earlier, e.g. ``vicreg − random``): the
  paired difference of F0.5 and of AUC with a 95% t interval over seeds and a 95% paired bootstrap
  over validation tiles (``analysis.stats``), and a plain-words verdict: "distinguishable from zero"
  when both intervals exclude zero, else "not distinguishable from zero".

Runs already in ``OUT/runs`` resume (or are kept when finished), so a stopped comparison continues.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt._atomic import atomic_write_text
from napari_vesuvius_pt.config import CompareConfig, DataConfig, PredictConfig, save_config
from napari_vesuvius_pt.engine.events import Event, Failed, Finished, Stage
from napari_vesuvius_pt.engine.protocols import Split, resolve_protocol
from napari_vesuvius_pt.errors import ConfigError

RESULT_JSON = "compare.json"
RESULT_MD = "compare.md"
PREDICTIONS = "predictions.zarr"
BASELINE_MAP = "linear_baseline.npy"  # the linear baseline's probabilities over the validation segment
BASELINE_NAMES = ("linear z-profile", "all ink")


@dataclass(frozen=True)
class Contender:
    name: str  # a label safe for folder and array names
    origin: str  # random | random:NAME | k700:FILE | RUN | CKPT
    frozen: bool
    seeds: tuple[int, ...]

    def array(self, seed: int) -> str:
        return f"{self.name}-seed{seed}"


def _default_name(origin: str) -> str:
    if origin.split(":")[0] == "random":
        return "random"
    if origin.startswith(("k700:", "k400:", "kinetics")):
        return "kinetics-700"
    return Path(origin).name if Path(origin).is_dir() else Path(origin).stem


def parse_contender(text: str, frozen: bool, seeds: Sequence[int]) -> Contender:
    """``SOURCE`` or ``NAME=SOURCE`` (a name of letters, digits, ``.``, ``_``, ``-``)."""
    name, sep, origin = text.partition("=")
    if not sep:
        name, origin = "", text
    origin = origin.strip()
    if not origin:
        raise ConfigError(f"encoder {text!r}: give SOURCE or NAME=SOURCE (random, k700:FILE, a run folder)")
    name = name.strip() or _default_name(origin)
    if not frozen and not name.endswith("finetuned"):
        name = name if sep else f"{name}-finetuned"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"encoder name {name!r}: use letters, digits, '.', '_' and '-' (NAME=SOURCE)")
    return Contender(name, origin, frozen, tuple(int(s) for s in seeds))


def contenders(cfg: CompareConfig) -> list[Contender]:
    seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)
    unfrozen_seeds = range(cfg.first_seed, cfg.first_seed + (cfg.unfrozen_seeds or cfg.seeds))
    out = [parse_contender(e, True, seeds) for e in cfg.encoders]
    out += [parse_contender(e, False, unfrozen_seeds) for e in cfg.unfrozen]
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"encoder names must differ; {', '.join(dup)} repeat: name them NAME=SOURCE")
    return out


def resolve_split(cfg: CompareConfig, out: Path) -> Split:
    if cfg.protocol:
        if cfg.val_fragment or cfg.val_region:
            raise ConfigError("a protocol names its own validation data; drop --val-fragment/--val-region")
        return resolve_protocol(cfg.protocol, cfg.fragments, out)
    if not cfg.fragments:
        raise ConfigError("no fragments: give --fragments PATH ... (and --protocol, --val-region or --val-fragment)")
    if bool(cfg.val_fragment) == bool(cfg.val_region):
        raise ConfigError("give exactly one of --protocol, --val-fragment PATH or --val-region FILE")
    return Split("custom", [str(f) for f in cfg.fragments], val_fragment=cfg.val_fragment,
                 val_region=cfg.val_region, description="as given")


def validate_compare_config(cfg: CompareConfig) -> None:
    if cfg.seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {cfg.seeds}")
    if cfg.unfrozen_seeds is not None and cfg.unfrozen_seeds < 1:
        raise ConfigError(f"unfrozen seeds must be at least 1, got {cfg.unfrozen_seeds}")
    if not cfg.encoders and not cfg.unfrozen:
        raise ConfigError("nothing to compare: give --encoders SOURCE ... (random, k700:FILE, a run folder)")
    if cfg.bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0, got {cfg.bootstrap}")
    if cfg.edge < 0 or 2 * cfg.edge >= cfg.probe.tile.size:
        raise ConfigError(f"edge {cfg.edge} leaves nothing of a {cfg.probe.tile.size}-pixel tile; use a smaller --edge")


def _probe_config(cfg: CompareConfig, split: Split, c: Contender, seed: int, run_dir: Path):
    from napari_vesuvius_pt.config import FinetuneConfig

    base: FinetuneConfig = cfg.probe
    return dataclasses.replace(
        base, fragments=list(split.train), val_fragment=split.val_fragment, val_region=split.val_region,
        encoder_origin=c.origin, freeze_encoder=c.frozen, seed=seed, out=str(run_dir), device=cfg.device,
        skip_empty_eval=cfg.skip_empty or base.skip_empty_eval,
        resume=str(run_dir) if (run_dir / "last.pt").exists() else None)


def _run_finished(run_dir: Path, epochs: int) -> bool:
    """A run folder whose last epoch was completed (its metrics.jsonl holds epoch ``epochs``)."""
    path = run_dir / "metrics.jsonl"
    if not (run_dir / "last.pt").is_file() or not path.is_file():
        return False
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch") == epochs:
                return True
        except json.JSONDecodeError:
            continue
    return False


def compare(cfg: CompareConfig) -> Iterator[Event]:
    """Train, predict and score every contender and seed; see the module docstring."""
    from napari_vesuvius_pt.engine.finetuning import finetune
    from napari_vesuvius_pt.engine.prediction import predict

    validate_compare_config(cfg)
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    split = resolve_split(cfg, out)
    entrants = contenders(cfg)
    save_config(cfg, out / "compare.yaml")
    runs = [(c, s) for c in entrants for s in c.seeds]
    total = len(runs) + 2
    t0 = time.perf_counter()
    run_dirs: dict[str, Path] = {}
    for i, (c, seed) in enumerate(runs):
        kind = "frozen-encoder probe" if c.frozen else "fine-tune (encoder trained)"
        yield Stage(f"{kind} on the {c.name} encoder, seed {seed}", i + 1, total)
        run_dir = out / "runs" / c.array(seed)
        run_dirs[c.array(seed)] = run_dir
        if _run_finished(run_dir, cfg.probe.epochs):
            continue
        for event in finetune(_probe_config(cfg, split, c, seed, run_dir)):
            if isinstance(event, Finished):
                continue  # the comparison's own Finished comes last
            yield event
            if isinstance(event, Failed):
                return

    yield Stage("tiled prediction over the validation data", total - 1, total)
    pred = out / PREDICTIONS
    names = list(run_dirs)
    for event in predict(PredictConfig(
            checkpoints=[str(run_dirs[n]) for n in names], names=names, segment=split.val_segment,
            out=str(pred), region=split.val_region, edge=cfg.edge, batch_size=cfg.probe.batch_size,
            device=cfg.device)):
        if isinstance(event, Finished):
            continue
        yield event
        if isinstance(event, Failed):
            return

    yield Stage("scores, baselines and paired differences", total, total)
    result = score_comparison(cfg, split, entrants, pred)
    result.update(seconds=time.perf_counter() - t0, runs={k: str(v) for k, v in run_dirs.items()},
                  prediction=str(pred))
    atomic_write_text(out / RESULT_JSON, json.dumps(result, indent=2, default=_json_default))
    atomic_write_text(out / RESULT_MD, comparison_markdown(result))
    result["report"] = str(out / RESULT_MD)
    yield Finished(out, summary=result)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def score_comparison(cfg: CompareConfig, split: Split, entrants: Sequence[Contender], pred: Path) -> dict[str, Any]:
    """Scores per array, mean ± sd per contender, the baselines, and every pair's paired differences."""
    from napari_vesuvius_pt.analysis import stats
    from napari_vesuvius_pt.engine.baselines import linear_baseline
    from napari_vesuvius_pt.engine.evaluation import metrics_as_json, scored_planes

    from napari_vesuvius_pt.analysis.metrics import fbeta_sweep

    tile_px = int(cfg.probe.tile.size)
    per_array: dict[str, dict[str, float]] = {}
    counts: dict[str, stats.TileCounts] = {}
    for plane in scored_planes(pred, split.val_segment, split.val_region, cfg.skip_empty):
        m = fbeta_sweep(plane.raw, plane.ink, mask=plane.scored, scale=plane.scale)
        per_array[plane.name] = metrics_as_json({plane.name: m})[plane.name]
        probs = plane.raw.astype(np.float64) / plane.scale
        counts[plane.name] = stats.tile_counts(probs, plane.ink, plane.scored, max(1, tile_px // plane.grid))

    encoders: dict[str, Any] = {}
    for c in entrants:
        rows = [per_array[c.array(s)] for s in c.seeds]
        f, a = stats.mean_sd([r["f05"] for r in rows]), stats.mean_sd([r["auc"] for r in rows])
        encoders[c.name] = {"origin": c.origin, "frozen": c.frozen, "seeds": list(c.seeds),
                            "f05": dataclasses.asdict(f), "auc": dataclasses.asdict(a),
                            "per_seed": {str(s): per_array[c.array(s)] for s in c.seeds}}

    data = cfg.probe.data
    base = linear_baseline(split.train, val_fragment=split.val_fragment, val_region=split.val_region,
                           data=DataConfig(z_range=data.z_range, reverse=data.reverse, downsample=data.downsample,
                                           normalization="zscore"),
                           method=cfg.baseline, skip_empty=cfg.skip_empty, tile=tile_px)
    baselines = metrics_as_json(base.rows)
    baseline_map = pred.parent / BASELINE_MAP
    np.save(baseline_map, base.probabilities.astype(np.float16))

    pairs = []
    for j, b in enumerate(entrants):
        for a in entrants[:j]:
            if a.seeds != b.seeds:
                continue
            boot = None
            if cfg.bootstrap:
                boot = stats.bootstrap_difference([counts[b.array(s)] for s in b.seeds],
                                                  [counts[a.array(s)] for s in a.seeds],
                                                  samples=cfg.bootstrap, seed=cfg.first_seed)
            entry = {"a": b.name, "b": a.name, "label": f"{b.name} − {a.name}"}
            for metric in ("f05", "auc"):
                diff = stats.paired_difference(
                    b.name, a.name, [per_array[b.array(s)][metric] for s in b.seeds],
                    [per_array[a.array(s)][metric] for s in a.seeds], metric=metric,
                    tiles=None if boot is None else getattr(boot, metric))
                entry[metric] = {"mean": diff.mean, "seeds": _interval(diff.seeds), "tiles": _interval(diff.tiles),
                                 "distinguishable": diff.distinguishable, "verdict": diff.verdict,
                                 "sentence": diff.sentence(entry["label"])}
            pairs.append(entry)
    return {"split": {"protocol": split.protocol, "description": split.description, "train": split.train,
                      "val_fragment": split.val_fragment, "val_region": split.val_region,
                      "skip_empty": cfg.skip_empty},
            "encoders": encoders, "baselines": baselines, "baseline_method": cfg.baseline,
            "baseline_map": str(baseline_map),
            "pairs": pairs, "per_array": per_array, "bootstrap": cfg.bootstrap}


def _interval(i: Any) -> dict[str, Any] | None:
    return None if i is None else {"low": i.low, "high": i.high, "method": i.method}


# ------------------------------------------------------------------ the markdown table


def _pm(d: dict[str, Any]) -> str:
    return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d["n"] > 1 else f"{d['mean']:.3f}"


def _ci(i: dict[str, Any] | None) -> str:
    return "–" if i is None else f"{i['low']:+.3f} to {i['high']:+.3f}"


def encoder_table(result: dict[str, Any]) -> str:
    """Per encoder mean ± sd over seeds, then the baselines as rows: a markdown table."""
    rows = ["| encoder | seeds | F0.5 (mean ± sd) | AUC (mean ± sd) | F0.5 per seed |", "|---|---:|---:|---:|---|"]
    for name, e in result["encoders"].items():
        label = name + ("" if e["frozen"] else " (encoder trained)")
        per = ", ".join(f"{v:.3f}" for v in e["f05"]["values"])
        rows.append(f"| {label} | {e['f05']['n']} | {_pm(e['f05'])} | {_pm(e['auc'])} | {per} |")
    for name in BASELINE_NAMES:
        m = result["baselines"].get(name)
        if m is not None:
            extra = f"prevalence {m['prevalence']:.3f}" if name == "all ink" else result.get("baseline_method", "")
            rows.append(f"| {name} (baseline) | – | {m['f05']:.3f} | {m['auc']:.3f} | {extra} |")
    return "\n".join(rows)


def pairs_table(result: dict[str, Any]) -> str:
    if not result["pairs"]:
        return "(no pairs: encoders need the same seeds to be paired)"
    rows = ["| difference | ΔF0.5 | 95% over seeds | 95% over tiles | ΔAUC | 95% over seeds | 95% over tiles | F0.5 verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in result["pairs"]:
        f, a = p["f05"], p["auc"]
        rows.append(f"| {p['label']} | {f['mean']:+.3f} | {_ci(f['seeds'])} | {_ci(f['tiles'])} | {a['mean']:+.3f} | "
                    f"{_ci(a['seeds'])} | {_ci(a['tiles'])} | {f['verdict'].split(' (')[0]} |")
    return "\n".join(rows)


def comparison_markdown(result: dict[str, Any]) -> str:
    split = result["split"]
    lines = [
        "# Encoder comparison",
        "",
        f"Split: {split['protocol']}: {split['description']}"
        + (" (scored only on tiles that hold ink)" if split.get("skip_empty") else "") + ".",
        "",
        "F0.5 at the best threshold of the 0.10-0.95 sweep and ROC AUC on the validation pixels, mean ± sd",
        "(sample sd) over probe seeds; the baselines are scored on the same pixels.",
        "",
        encoder_table(result),
        "",
        "## Paired differences",
        "",
        "Seed k of each encoder starts its head alike and sees the same batches; the t interval is over",
        "the per-seed differences, the bootstrap resamples validation tiles (the same for both).",
        "",
        pairs_table(result),
        "",
    ]
    lines += [f"- {p['f05']['sentence']}" for p in result["pairs"]]
    lines += [f"- {p['auc']['sentence']}" for p in result["pairs"]]
    return "\n".join(lines) + "\n"
