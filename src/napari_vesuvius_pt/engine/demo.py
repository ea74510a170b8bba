"""``vesuvius-pt demo``: the seed experiment end to end on synthetic data, as one generator of events.

Stages: make synthetic scroll segments and fragments; pretrain with VICReg on the segments; CKA
between the epochs; a frozen-encoder ink probe per encoder (random, VICReg, Kinetics-700 when given),
trained on the fragments with a validation region on the first one (the seed's "lower 30% of
fragment 2"); tiled prediction of every probe over that fragment; evaluation; a report folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_vesuvius_pt._atomic import atomic_write_text
from napari_vesuvius_pt.config import (
    AugmentConfig,
    CKAConfig,
    DataConfig,
    DemoConfig,
    EncoderConfig,
    FinetuneConfig,
    OptimConfig,
    PredictConfig,
    PretrainConfig,
    TileConfig,
    save_config,
)
from napari_vesuvius_pt.engine.events import Event, Finished, Stage, StepDone
from napari_vesuvius_pt.errors import ConfigError


@dataclass(frozen=True)
class DemoScale:
    segments: int
    fragments: int
    segment_shape: tuple[int, int, int]
    fragment_shape: tuple[int, int, int]
    encoder: EncoderConfig
    tile: TileConfig
    pretrain_epochs: int
    pretrain_steps: int | None
    pretrain_batch: int
    finetune_epochs: int
    finetune_steps: int | None
    finetune_batch: int
    cka_tiles: int
    edge: int


SCALES: dict[str, DemoScale] = {
    # CI: a few minutes on 2 cores, still every stage for real
    "quick": DemoScale(2, 2, (20, 160, 160), (20, 192, 192), EncoderConfig("resnet10", 0.25),
                       TileConfig(depth=16, size=32, stride=16), 2, 12, 8, 3, 15, 16, 64, 4),
    # the README's main job: under 10 minutes on 2 CPU cores
    "laptop": DemoScale(3, 3, (24, 256, 256), (24, 256, 256), EncoderConfig("resnet10", 0.5),
                        TileConfig(depth=16, size=48, stride=16), 4, 40, 16, 6, 40, 16, 256, 8),
    # the seed's configuration, for a GPU: ResNet-50, 128x128 tiles
    "seed": DemoScale(6, 3, (40, 1024, 1024), (40, 1024, 1024), EncoderConfig("resnet50", 1.0),
                      TileConfig(depth=32, size=128, stride=32), 17, None, 64, 10, None, 32, 1000, 16),
}


def validation_region(inklabels: np.ndarray, mask: np.ndarray, fraction: float = 0.3) -> list[np.ndarray]:
    """One full-width rectangle over ``fraction`` of the plane's height, in (y, x) pixels, like the
    seed's "lower 30% of fragment 2". Synthetic letters need not reach the bottom, so the band is the
    one whose ink share inside the mask is closest to the whole fragment's: a representative hold-out."""
    h, w = inklabels.shape
    band = max(1, int(round(h * fraction)))
    ink = (inklabels > 0) & (mask > 0)
    rows_ink = np.concatenate([[0], np.cumsum(ink.sum(1))])
    rows_mask = np.concatenate([[0], np.cumsum((mask > 0).sum(1))])
    target = ink.sum() / max(1, (mask > 0).sum())
    best, best_y0 = np.inf, h - band
    for y0 in range(h - band, -1, -max(1, band // 8)):  # from the bottom up, as the seed's split
        area = rows_mask[y0 + band] - rows_mask[y0]
        if area < 0.5 * band * w * (rows_mask[-1] / (h * w)):
            continue
        share = (rows_ink[y0 + band] - rows_ink[y0]) / area
        if abs(share - target) < best - 1e-9:
            best, best_y0 = abs(share - target), y0
    y0, y1 = float(best_y0), float(best_y0 + band)
    return [np.array([[y0, 0.0], [y0, float(w)], [y1, float(w)], [y1, 0.0]])]


def _make_data(out: Path, scale: DemoScale, seed: int) -> tuple[list[str], list[str]]:
    from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment

    data = out / "data"
    segments, fragments = [], []
    for i in range(scale.segments):
        path = data / f"segment-{i + 1}"
        if not path.exists():
            write_segment(make_scroll_segment(scale.segment_shape, seed=seed + 100 + i), path, layout="layers")
        segments.append(str(path))
    for i in range(scale.fragments):
        path = data / f"fragment-{i + 1}"
        if not path.exists():
            write_segment(make_fragment(scale.fragment_shape, seed=seed + i), path)
        fragments.append(str(path))
    return segments, fragments


def demo(cfg: DemoConfig) -> Iterator[Event]:
    """Run every stage, forwarding each run's events after a ``Stage`` event. Stages whose results are
    already in ``cfg.out`` resume or are skipped, so a stopped demo continues where it was."""
    from napari_vesuvius_pt.data.tiles import save_regions
    from napari_vesuvius_pt.engine.cka_run import cka
    from napari_vesuvius_pt.engine.evaluation import evaluate, metrics_as_json
    from napari_vesuvius_pt.engine.finetuning import finetune
    from napari_vesuvius_pt.engine.prediction import predict
    from napari_vesuvius_pt.engine.pretraining import pretrain
    from napari_vesuvius_pt.engine.report import write_report

    if cfg.scale not in SCALES:
        raise ConfigError(f"unknown demo scale {cfg.scale!r}; use one of {', '.join(SCALES)}")
    if cfg.k700_weights and not Path(cfg.k700_weights).is_file():
        raise ConfigError(f"--k700-weights {cfg.k700_weights}: no such file")
    scale = SCALES[cfg.scale]
    encoder = scale.encoder
    if cfg.k700_weights and cfg.scale != "seed":
        # Kinetics weights exist for full-width trunks only
        encoder = dataclasses.replace(encoder, widen_factor=1.0)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    stages = 7 + (1 if cfg.k700_weights else 0)
    t0 = time.perf_counter()
    # scroll segments and fragments differ in intensity: z-scoring each from a sample bridges that
    data = DataConfig(normalization="zscore")

    yield Stage("synthetic scroll segments and fragments", 1, stages)
    segments, fragments = _make_data(out, scale, cfg.seed)
    from napari_vesuvius_pt.data.segment import open_segment

    first = open_segment(fragments[0])
    region = save_regions(out / "validation_region.json",
                          validation_region(np.asarray(first.inklabels), np.asarray(first.papyrus_mask())))

    yield Stage("VICReg pretraining on the scroll segments", 2, stages)
    pre_dir = out / "runs" / "vicreg"
    pre_cfg = PretrainConfig(
        segments=segments, out=str(pre_dir), encoder=encoder, data=data, tile=scale.tile,
        augment=AugmentConfig(), epochs=scale.pretrain_epochs, batch_size=scale.pretrain_batch,
        steps_per_epoch=scale.pretrain_steps, device=cfg.device, seed=cfg.seed,
        optim=OptimConfig(name="sgd", lr=0.05, weight_decay=5e-5, warmup_epochs=1.0),
        resume=str(pre_dir) if (pre_dir / "last.pt").exists() else None,
    )
    pretrain_steps: list[dict[str, float]] = []
    for event in pretrain(pre_cfg):
        if isinstance(event, StepDone):
            pretrain_steps.append({"epoch": event.epoch, "step": event.step, **event.losses})
        yield event

    yield Stage("CKA between the pretraining epochs", 3, stages)
    cka_dir = out / "cka"
    yield from cka(CKAConfig(sources=[str(pre_dir)], segment=fragments[0], out=str(cka_dir),
                             tiles=scale.cka_tiles, layer="pooled", device=cfg.device, seed=cfg.seed))

    origins = {"random": "random", "vicreg": str(pre_dir)}
    if cfg.k700_weights:
        origins["kinetics-700"] = f"k700:{cfg.k700_weights}"
    probes: dict[str, Path] = {}
    for i, (name, origin) in enumerate(origins.items()):
        yield Stage(f"frozen-encoder ink probe on the {name} encoder", 4 + i, stages)
        run_dir = out / "runs" / f"probe-{name}"
        ft_cfg = FinetuneConfig(
            fragments=fragments, val_region=str(region), out=str(run_dir), encoder_origin=origin,
            encoder=encoder, freeze_encoder=True, output_stride=4, data=data,
            tile=dataclasses.replace(scale.tile, min_mask_fraction=0.5),
            optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4, warmup_epochs=0.5),
            epochs=scale.finetune_epochs, batch_size=scale.finetune_batch,
            steps_per_epoch=scale.finetune_steps, device=cfg.device, seed=cfg.seed,
            resume=str(run_dir) if (run_dir / "last.pt").exists() else None,
        )
        yield from finetune(ft_cfg)
        probes[name] = run_dir

    yield Stage("tiled prediction over the validation fragment", stages - 1, stages)
    pred_path = out / "predictions.zarr"
    yield from predict(PredictConfig(
        checkpoints=[str(p) for p in probes.values()], segment=fragments[0], out=str(pred_path),
        edge=scale.edge, batch_size=scale.finetune_batch, device=cfg.device))

    yield Stage("evaluation and report", stages, stages)
    results = evaluate(pred_path, fragments[0], region=region)
    metrics = metrics_as_json(results)
    report = write_report(
        out, metrics=metrics, pretrain_dir=pre_dir, pretrain_steps=pretrain_steps, probes=probes,
        cka_dir=cka_dir, prediction=pred_path, fragment=fragments[0], region=region, demo=cfg,
        scale=dataclasses.asdict(scale),
    )
    summary = {"report": str(report), "metrics": metrics, "seconds": time.perf_counter() - t0,
               "segments": segments, "fragments": fragments, "prediction": str(pred_path),
               "cka": str(cka_dir), "pretrain": str(pre_dir), "probes": {k: str(v) for k, v in probes.items()}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    yield Finished(out, summary=summary)
