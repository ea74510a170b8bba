"""``vesuvius-pt demo``: the seed experiment end to end on synthetic data, as one generator of events.

Stages: make synthetic scroll segments (holding unlabeled ink) and four labeled fragments; pretrain
with VICReg on the segments (plus fragment 4, unlabeled, under the ``fragment4-holdout`` protocol);
CKA between the epochs; then ``engine.compare``: the frozen-encoder ink probe on each encoder (random,
VICReg, Kinetics-700 when given) with several seeds on the protocol's split, one fine-tune with the
encoder trained too, tiled prediction, scores with mean ± sd, the baselines and the paired
differences; a report folder.

Sizes and run settings come from ``resources/configs/<scale>.yaml`` (one source of truth, the same file
``vesuvius-pt pretrain|finetune --config`` reads): its ``demo:`` section sizes the synthetic data and
the seeds, ``pretrain:``, ``finetune:``, ``predict:`` and ``cka:`` are the runs' configs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari_vesuvius_pt
from napari_vesuvius_pt._atomic import atomic_write_text
from napari_vesuvius_pt.config import (
    CKAConfig,
    CompareConfig,
    DemoConfig,
    FinetuneConfig,
    PredictConfig,
    PretrainConfig,
    from_dict,
    load_config,
    read_config_mapping,
    save_config,
    to_dict,
)
from napari_vesuvius_pt.data.synthetic import DEFAULT_INK_STRENGTH
from napari_vesuvius_pt.engine.events import Event, Failed, Finished, Stage, StepDone
from napari_vesuvius_pt.errors import ConfigError

CONFIGS = Path(napari_vesuvius_pt.__file__).parent / "resources" / "configs"


@dataclass
class DemoData:
    """The ``demo:`` section of a scale's config: the synthetic data and the comparison's seeds."""

    segments: int = 3  # synthetic scroll segments (unlabeled, holding ink)
    fragments: int = 4  # synthetic labeled fragments: the protocols name fragments 1-4
    segment_shape: list[int] = field(default_factory=lambda: [24, 256, 256])
    fragment_shape: list[int] = field(default_factory=lambda: [24, 256, 256])
    ink_strength: float = DEFAULT_INK_STRENGTH  # fragments and scrolls alike, relative to their own contrast
    seeds: int = 3  # probe seeds per encoder
    unfrozen_seeds: int = 1  # seeds of the fine-tune with the encoder trained (shown beside the probes)


@dataclass
class DemoScale:
    name: str
    path: Path
    demo: DemoData
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    predict: PredictConfig
    cka: CKAConfig

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "demo": to_dict(self.demo),
                "pretrain": to_dict(self.pretrain), "finetune": to_dict(self.finetune),
                "predict": to_dict(self.predict), "cka": to_dict(self.cka)}


def scale_path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def load_scale(name: str) -> DemoScale:
    """``resources/configs/<name>.yaml`` as the demo's sizes and run configs."""
    path = scale_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise ConfigError(f"unknown demo scale {name!r}: no {path}; use one of {', '.join(known)}")
    sections = read_config_mapping(path)
    data = from_dict(DemoData, dict(sections.get("demo") or {}), where=f"{path}: demo")
    if data.fragments != 4:
        raise ConfigError(f"{path}: demo.fragments must be 4 (the protocols name the Kaggle fragments 1-4)")
    if data.segments < 1 or data.seeds < 1 or data.unfrozen_seeds < 0:
        raise ConfigError(f"{path}: demo needs at least one segment and one seed")
    return DemoScale(name, path, data, load_config(PretrainConfig, path), load_config(FinetuneConfig, path),
                     load_config(PredictConfig, path), load_config(CKAConfig, path))


def _make_data(out: Path, scale: DemoScale, seed: int) -> tuple[list[str], list[str]]:
    from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment

    d = scale.demo
    data = out / "data"
    segments, fragments = [], []
    for i in range(d.segments):
        path = data / f"segment-{i + 1}"
        if not path.exists():
            write_segment(make_scroll_segment(tuple(d.segment_shape), seed=seed + 100 + i, ink_strength=d.ink_strength),
                          path, layout="layers")
        segments.append(str(path))
    for i in range(d.fragments):
        path = data / f"fragment-{i + 1}"
        if not path.exists():
            write_segment(make_fragment(tuple(d.fragment_shape), seed=seed + i, ink_strength=d.ink_strength,
                                        fill_sheet=True), path)
        fragments.append(str(path))
    return segments, fragments


def demo(cfg: DemoConfig) -> Iterator[Event]:
    """Run every stage, forwarding each run's events after a ``Stage`` event. Stages whose results are
    already in ``cfg.out`` resume or are skipped, so a stopped demo continues where it was. The demo's
    folder is locked while it runs (a second demo there is refused)."""
    from napari_vesuvius_pt.engine.run_lock import folder_lock, hold

    with hold(folder_lock(cfg.out, f"demo folder {cfg.out}")):
        yield from _demo(cfg)


def _demo(cfg: DemoConfig) -> Iterator[Event]:
    import numpy as np

    from napari_vesuvius_pt.engine.cka_run import cka
    from napari_vesuvius_pt.engine.compare import compare, contenders
    from napari_vesuvius_pt.engine.pretraining import pretrain
    from napari_vesuvius_pt.engine.protocols import resolve_protocol
    from napari_vesuvius_pt.engine.report import results_table, write_report

    scale = load_scale(cfg.scale)
    if cfg.k700_weights and not Path(cfg.k700_weights).is_file():
        raise ConfigError(f"--k700-weights {cfg.k700_weights}: no such file")
    seeds = int(cfg.seeds or scale.demo.seeds)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    pre_base, probe = scale.pretrain, scale.finetune
    if cfg.k700_weights and pre_base.encoder.widen_factor != 1.0:
        # Kinetics weights exist for full-width trunks only
        pre_base = dataclasses.replace(pre_base, encoder=dataclasses.replace(pre_base.encoder, widen_factor=1.0))
        probe = dataclasses.replace(probe, encoder=dataclasses.replace(probe.encoder, widen_factor=1.0))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    shutil.copyfile(scale.path, out / "scale.yaml")
    t0 = time.perf_counter()

    encoders = ["random", f"vicreg={out / 'runs' / 'vicreg'}"]
    if cfg.k700_weights:
        encoders.append(f"kinetics-700=k700:{cfg.k700_weights}")
    cmp_dir = out / "compare"
    cmp_cfg = CompareConfig(
        encoders=encoders, unfrozen=["random"] if scale.demo.unfrozen_seeds else [],
        fragments=[], protocol=cfg.protocol, seeds=seeds, first_seed=cfg.seed,
        unfrozen_seeds=scale.demo.unfrozen_seeds or None,
        probe=dataclasses.replace(probe, freeze_encoder=True, device=cfg.device),
        edge=scale.predict.edge, out=str(cmp_dir), device=cfg.device)
    n_runs = sum(len(c.seeds) for c in contenders(cmp_cfg))
    total = 3 + n_runs + 2 + 1

    yield Stage("synthetic scroll segments (with unlabeled ink) and fragments 1-4", 1, total)
    segments, fragments = _make_data(out, scale, cfg.seed)
    cmp_cfg = dataclasses.replace(cmp_cfg, fragments=fragments)
    split = resolve_protocol(cfg.protocol, fragments, cmp_dir)
    region_copy = out / "validation_region.json"
    if split.val_region:
        shutil.copyfile(split.val_region, region_copy)
    elif region_copy.exists():
        region_copy.unlink()

    yield Stage("VICReg pretraining on the scroll segments"
                + (" and fragment 4 (unlabeled)" if split.pretrain_extra else ""), 2, total)
    pre_dir = out / "runs" / "vicreg"
    pre_cfg = dataclasses.replace(
        pre_base, segments=[*segments, *split.pretrain_extra], out=str(pre_dir), device=cfg.device, seed=cfg.seed,
        resume=str(pre_dir) if (pre_dir / "last.pt").exists() else None)
    pretrain_steps: list[dict[str, float]] = []
    for event in pretrain(pre_cfg):
        if isinstance(event, StepDone):
            pretrain_steps.append({"epoch": event.epoch, "step": event.step, **event.losses})
        if isinstance(event, Finished):
            continue
        yield event
        if isinstance(event, Failed):
            return

    yield Stage("CKA between the pretraining epochs", 3, total)
    cka_dir = out / "cka"
    for event in cka(dataclasses.replace(scale.cka, sources=[str(pre_dir), "random"], segment=split.val_segment,
                                         out=str(cka_dir), device=cfg.device, seed=cfg.seed)):
        if isinstance(event, Finished):
            continue
        yield event

    comparison: dict[str, Any] | None = None
    for event in compare(cmp_cfg):
        if isinstance(event, Stage):
            yield Stage(event.name, 3 + event.index, total)
        elif isinstance(event, Finished):
            comparison = event.summary
        else:
            yield event
            if isinstance(event, Failed):
                return
    if comparison is None:
        return

    yield Stage("report", total, total)
    baseline_map = np.load(comparison["baseline_map"]) if comparison.get("baseline_map") else None
    report = write_report(out, comparison=comparison, pretrain_dir=pre_dir, pretrain_steps=pretrain_steps,
                          cka_dir=cka_dir, demo=cfg, scale=scale.describe(), baseline_map=baseline_map)
    val_first = [split.val_segment, *[f for f in fragments if f != split.val_segment]]
    summary = {"report": str(report), "table": results_table(comparison), "comparison": comparison,
               "seconds": time.perf_counter() - t0, "segments": segments, "fragments": val_first,
               "kaggle_fragments": fragments, "protocol": cfg.protocol, "prediction": comparison["prediction"],
               "cka": str(cka_dir), "pretrain": str(pre_dir), "runs": comparison["runs"],
               "scale": str(scale.path)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    yield Finished(out, summary=summary)
