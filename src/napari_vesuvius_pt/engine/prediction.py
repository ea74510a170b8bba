"""Tiled inference over whole segments, streamed to a zarr store, resumable.

``predict(cfg)`` slides each checkpoint's tile over the segment inside its mask (or a region), keeps
the centre of each tile's prediction (``edge`` pixels dropped at each side; the segment's own border is
padded by reflection), blends overlaps (mean, or Gaussian weights normalized by their sum), and writes
each band of output chunk rows as soon as no later tile touches it. Memory holds one band of output
rows, one block of input read for a stretch of a tile row (at most ``_TileReader.BLOCK_VOXELS``) and two
batches of tiles, whatever the segment's size (plus the segment's 2D mask, which ``open_segment``
holds). Several checkpoints give one array each in the same group (see ``prediction_store``), named
after their run folder or file (a repeated name gets ``-2``, ``-3``: ``naming.unique_names``).

Mean or Gaussian? With the default stride (``size - 2 edge``) every pixel lies in exactly one kept
centre and the two are the same. Where kept centres overlap, Gaussian weights (normalized by their sum)
did better on the synthetic fragment (``bench/bench_predict.py --weighting-fragment``; a resnet10 x0.5
fine-tuned for 6 short epochs, 32-pixel tiles, output stride 4, scored on an unseen fragment):

    edge  stride  mean F0.5  gaussian F0.5
       8      16     0.767          (same)
       8       8     0.768          0.777
       0      16     0.754          0.770

Dropping the edges gains about as much as the Gaussian does; both together are best, at four times the
tiles of the default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vesuvius_pt.config import (
    PREDICT_DIRECTIONS,
    PREDICT_FORMATS,
    DataConfig,
    PredictConfig,
    TileConfig,
    from_dict,
    to_dict,
)
from napari_vesuvius_pt.engine.device import (
    describe_device,
    release_device_memory,
    resolve_device,
)
from napari_vesuvius_pt.engine.events import Event, Failed, Finished, Started, TilesDone
from napari_vesuvius_pt.engine.precision import use_autocast
from napari_vesuvius_pt.engine.prediction_store import (
    ENCODINGS,
    PredictionStore,
    export_tiff,
    write_mean,
    SegmentInfo,
    encode,
)
from napari_vesuvius_pt.engine.tiling import (
    WEIGHTINGS,
    RowBandAccumulator,
    TileLayout,
    make_layout,
    plan_tiles,
    read_padded,
    region_mask,
    weight_map,
)
from napari_vesuvius_pt.errors import ConfigError, SegmentError
from napari_vesuvius_pt.models.sources import checkpoint_in_run
from napari_vesuvius_pt.naming import unique_names


@dataclass
class InkPredictor:
    """A model ready to predict: maps ``(B, 1, depth, size, size)`` tiles to ``(B, 1, size/r, size/r)``
    ink logits, with the tile and data settings it was trained with."""

    name: str
    model: torch.nn.Module
    output_stride: int
    tile: TileConfig
    data: DataConfig
    checkpoint: str = ""


def checkpoint_label(path: str | Path) -> str:
    """A short name for a checkpoint: its run folder's name (``RUN/last.pt``, ``RUN/checkpoints/x.pt``,
    ``RUN/``), else the file's stem."""
    p = Path(path)
    if p.is_dir():
        label = p.resolve().name
    elif p.parent.name == "checkpoints" and p.parent.parent.name:
        label = p.parent.parent.name
    elif p.name == "last.pt" and p.parent.name:
        label = p.resolve().parent.name
    else:
        label = p.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "prediction"


def load_predictor(path: str | Path, name: str | None = None, data: DataConfig | None = None) -> InkPredictor:
    """An ``InkPredictor`` from a fine-tuning checkpoint (or run folder); ``data`` overrides the
    checkpoint's own data settings."""
    from napari_vesuvius_pt.models.checkpoint import ink_model_from_checkpoint

    model, payload = ink_model_from_checkpoint(path)
    tile = from_dict(TileConfig, dict(payload.get("tile") or {}), where=f"{path}: tile")
    own_data = from_dict(DataConfig, dict(payload.get("data") or {}), where=f"{path}: data")
    stride = int(payload.get("output_stride") or getattr(model, "output_stride", 1))
    return InkPredictor(name or checkpoint_label(path), model, stride, tile, data or own_data, str(path))


def _check(cfg: PredictConfig) -> None:
    if cfg.format not in PREDICT_FORMATS:
        raise ConfigError(f"unknown output format {cfg.format!r}; use one of {', '.join(PREDICT_FORMATS)}")
    if cfg.weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting {cfg.weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    if cfg.dtype not in ENCODINGS:
        raise ConfigError(f"unknown prediction dtype {cfg.dtype!r}; use one of {', '.join(ENCODINGS)}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.chunk < 1:
        raise ConfigError(f"chunk must be at least 1 pixel, got {cfg.chunk}")
    if not cfg.segment:
        raise ConfigError("no segment to predict on: give --segment PATH")


def _fingerprint(checkpoint: str) -> str:
    """The checkpoint file behind ``checkpoint`` with its size and time, so that resuming never mixes
    predictions of a checkpoint rewritten since (a run folder's last.pt after more epochs)."""
    if not checkpoint:
        return ""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = checkpoint_in_run(path)
    if not path.is_file():
        return checkpoint
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


@dataclass
class _Job:
    """One encoder's pass: its predictor, the segment read its way, and the tile plan."""

    predictor: InkPredictor
    segment: Any
    normalizer: Any
    layout: TileLayout
    positions: np.ndarray  # (N, 2) tile starts, row by row
    z0: int


def _open_segments(cfg: PredictConfig, predictors: Sequence[InkPredictor]) -> list[tuple[Any, Any]]:
    """(segment, normalizer) per predictor; predictors that read the segment alike share one."""
    from napari_vesuvius_pt.data.normalize import normalizer_from_config
    from napari_vesuvius_pt.data.segment import open_from_config

    cache: dict[str, Any] = {}
    out = []
    for p in predictors:
        key = json.dumps(to_dict(p.data), sort_keys=True)
        if key not in cache:
            cache[key] = open_from_config(cfg.segment, p.data)
        segment = cache[key]
        out.append((segment, normalizer_from_config(p.data, segment)))
    return out


def _where(cfg: PredictConfig, segment: Any, polygons: list[np.ndarray] | None) -> np.ndarray:
    where = np.asarray(segment.papyrus_mask(), dtype=bool)
    if polygons is not None:
        where = where & region_mask(polygons, where.shape, int(getattr(segment, "downsample", 1) or 1), segment.name)
        if not where.any():
            raise SegmentError(f"region {cfg.region} covers no papyrus of {segment.name}: it lies outside the "
                               f"segment's mask; draw it on the papyrus")
    elif not where.any():
        raise SegmentError(f"the mask of {segment.name} is empty: nothing to predict")
    return where


def _plan(cfg: PredictConfig, predictor: InkPredictor, segment: Any, normalizer: Any,
          polygons: list[np.ndarray] | None) -> _Job:
    depth, layers = int(predictor.tile.depth), int(segment.shape[0])
    if depth > layers:
        raise ConfigError(
            f"{predictor.name}: the checkpoint reads tiles of {depth} layers, but {segment.name} has {layers} "
            f"layers (z range {predictor.data.z_range or 'all'}); open it with at least {depth} layers "
            f"(data z_range) or use a checkpoint trained on {layers} layers or fewer")
    if cfg.z0 is None:
        z0 = (layers - depth) // 2
    elif 0 <= cfg.z0 <= layers - depth:
        z0 = int(cfg.z0)
    else:
        raise ConfigError(f"z0 {cfg.z0} puts a {depth}-layer tile outside {segment.name}'s {layers} layers; "
                          f"use 0..{layers - depth}")
    layout = make_layout(segment.shape[1:], predictor.tile.size, cfg.edge, cfg.stride, predictor.output_stride)
    positions = plan_tiles(layout, _where(cfg, segment, polygons))
    return _Job(predictor, segment, normalizer, layout, positions, z0)


def _chunk_rows_out(layout: TileLayout, up: int, target: int) -> int:
    """Output rows per chunk row: a whole number of tile-row strides, about ``target`` stored pixels,
    so with the default stride each band of tile rows finishes whole chunk rows."""
    step = layout.stride_out
    return max(1, round(target / (step * up))) * step


class _TileReader:
    """Reads a job's tiles in row order from blocks up to ``BLOCK_VOXELS`` large that span many tiles of
    a tile row, so each stored chunk is decoded about once per tile row, not once per tile, and memory
    holds one block whatever the segment's size."""

    BLOCK_VOXELS = 1 << 24  # 32 MiB of uint16

    def __init__(self, job: _Job):
        self.job = job
        self.depth, self.size = int(job.predictor.tile.depth), job.layout.size
        self.span = max(self.size, self.BLOCK_VOXELS // (self.depth * self.size))
        ys, xs = job.positions[:, 0], job.positions[:, 1]
        rows, first = np.unique(ys, return_index=True)  # positions run row by row, x increasing
        last = np.append(first[1:], len(ys)) - 1
        self.row_end = {int(y): int(x) + self.size for y, x in zip(rows, xs[last])}
        self.block: np.ndarray | None = None
        self.where = (0, 0, 0)  # (y0, x start, x stop) of the block

    def _tile(self, y0: int, x0: int) -> np.ndarray:
        by, bx0, bx1 = self.where
        if self.block is None or by != y0 or x0 < bx0 or x0 + self.size > bx1:
            job, z0, depth = self.job, self.job.z0, self.depth
            width = max(self.size, min(self.span, self.row_end[y0] - x0))
            self.block = read_padded(lambda ys, xs: job.segment.volume[z0:z0 + depth, ys, xs], y0, x0, self.size,
                                     job.layout.plane, width)
            self.where = (y0, x0, x0 + width)
            bx0 = x0
        return self.block[:, :, x0 - bx0:x0 - bx0 + self.size]

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Normalized ``(B, 1, depth, size, size)`` float32 tiles."""
        tiles = np.empty((len(positions), 1, self.depth, self.size, self.size), np.float32)
        for k, (y0, x0) in enumerate(positions):
            tiles[k, 0] = self.job.normalizer(self._tile(int(y0), int(x0)))
        return tiles


_CHANNELS_LAST_DEVICES = ("cpu", "cuda")


@contextmanager
def _channels_last(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Hold the model's 3D convolution weights channels-last while it predicts: on CPU (oneDNN) and CUDA
    the 3D convolutions and max-pooling of a tile batch run much faster so (about 1.6x for a small
    resnet10 on CPU), with the same results up to float rounding. Restored after, for whoever else uses
    the model."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    if device.type not in _CHANNELS_LAST_DEVICES or not convs:
        yield
        return
    for m in convs:
        m.to(memory_format=torch.channels_last_3d)
    try:
        yield
    finally:
        for m in convs:
            m.to(memory_format=torch.contiguous_format)


def tta_probabilities(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the mean ink probability over the 8 symmetries of the square tile plane
    (4 rotations, each with and without a flip: the "rotate + mirror" TTA villa's inference offers),
    each prediction mapped back before averaging. ``x`` is ``(B, 1, D, S, S)``; the output
    ``(B, 1, S/r, S/r)`` (a rotation of the tile rotates its ``r x r`` output blocks exactly)."""
    total = None
    memory_format = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) else None
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(x, k, dims=(-2, -1))
            t = t.flip(-1) if flip else t
            t = t.contiguous(memory_format=memory_format) if memory_format else t.contiguous()
            p = torch.sigmoid(model(t).float())
            p = torch.rot90(p.flip(-1) if flip else p, -k, dims=(-2, -1))
            total = p if total is None else total + p
    return total / 8.0


def _launch_model(model: torch.nn.Module, tiles: np.ndarray, device: torch.device, amp: bool,
                  size_out: int, name: str, tta: bool = False) -> torch.Tensor:
    """Start the model on a batch; on a GPU this returns before it is done (no sync), so the next
    batch is read from disk while it runs. ``amp``: bfloat16 autocast on this device; ``tta``: average
    the 8 flips/rotations (tta_probabilities)."""
    x = torch.from_numpy(tiles).to(device, non_blocking=True)
    if device.type in _CHANNELS_LAST_DEVICES:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        probs = tta_probabilities(model, x) if tta else torch.sigmoid(model(x).float())
    expected = (len(tiles), 1, size_out, size_out)
    if tuple(probs.shape) != expected:
        raise ConfigError(f"{name}: the model gave an output of shape {tuple(probs.shape)} for tiles "
                          f"{tuple(tiles.shape)}; expected {expected} (its output stride does not match)")
    return probs[:, 0]


def _run_job(cfg: PredictConfig, job: _Job, store: PredictionStore, device: torch.device,
             region_hash: str | None) -> Iterator[Event]:
    """Predict one encoder into its array; yields ``TilesDone`` per batch. Returns its summary."""
    p, layout = job.predictor, job.layout
    r = layout.out_stride
    up = r if cfg.full_resolution else 1
    h_out, w_out = layout.out_shape
    stored_shape = (layout.plane[0], layout.plane[1]) if up > 1 else (h_out, w_out)
    ch_out = _chunk_rows_out(layout, up, cfg.chunk)
    chunks = (min(ch_out * up, stored_shape[0]), min(cfg.chunk, stored_shape[1]))
    grid = 1 if up > 1 else r  # plane pixels per stored pixel
    ds = int(getattr(job.segment, "downsample", 1) or 1)
    scale = float(grid * ds)
    run = _jsonable({
        "checkpoint": _fingerprint(p.checkpoint), "tile": to_dict(p.tile), "data": to_dict(p.data),
        "output_stride": r, "edge": layout.edge, "stride": layout.stride, "weighting": cfg.weighting,
        "dtype": cfg.dtype, "full_resolution": bool(cfg.full_resolution), "z0": job.z0, "region": region_hash,
        "chunk": cfg.chunk, **({"tta": True} if cfg.tta else {}),
        **({"cpu_bf16": True} if cfg.cpu_bf16 and device.type == "cpu" else {}),
    })
    attrs = _jsonable({
        "encoder": p.name, "checkpoint": p.checkpoint, "config": to_dict(cfg), "tile": to_dict(p.tile),
        "data": to_dict(p.data), "output_stride": r, "plane_scale": grid, "scale": [scale, scale],
        "translate": [(scale - 1) / 2, (scale - 1) / 2], "tiles_total": len(job.positions),
        "segment": SegmentInfo.from_segment(job.segment).to_dict(),
    })
    writer = store.start_array(p.name, stored_shape, chunks, cfg.dtype, attrs, run, resume=cfg.resume)
    total = len(job.positions)
    summary = {"array": str(store.path / p.name), "tiles": total, "resumed_at": 0, "complete": False}
    if writer.complete:
        summary.update(resumed_at=total, complete=True)
        yield TilesDone(p.name, total, total)
        return summary

    tops = (job.positions[:, 0] + layout.edge) // r
    start_row = writer.done_chunk_rows * ch_out
    first = int(np.searchsorted(tops + layout.kept_out, start_row, side="right"))
    summary["resumed_at"] = first
    n_chunk_rows = -(-h_out // ch_out)
    acc = RowBandAccumulator(w_out, h_out, start=start_row)
    weights = weight_map(cfg.weighting, layout.kept_out)
    model = p.model.to(device).eval()
    batch = cfg.batch_size
    autocast = use_autocast(device, cfg.amp, cfg.cpu_bf16)  # bfloat16: CUDA with amp, CPU with cpu_bf16
    starts = list(range(first, total, batch))
    yield TilesDone(p.name, first, total)
    t0 = time.perf_counter()
    reader = _TileReader(job)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-read") as pool, \
            _channels_last(model, device):
        pending = pool.submit(reader.read, job.positions[first:first + batch]) if starts else None
        for b0 in starts:
            b1 = min(b0 + batch, total)
            tiles = pending.result()
            # read (and decode, normalize) the next batch in the background while the model runs on
            # this one: zarr/blosc and numpy release the GIL, so on CPU this overlaps with torch too
            pending = pool.submit(reader.read, job.positions[b1:b1 + batch]) if b1 < total else None
            probs = _launch_model(model, tiles, device, autocast, layout.size_out, p.name, cfg.tta).cpu().numpy()
            del tiles
            for (y0, x0), prob in zip(job.positions[b0:b1], probs):
                oy, ox = layout.kept_origin_out(int(y0), int(x0))
                acc.add(layout.crop_kept(prob), weights, oy, ox)
            finished = n_chunk_rows if b1 == total else int(tops[b1]) // ch_out
            if finished > writer.done_chunk_rows:
                values, _ = acc.pop(finished * ch_out)
                block = encode(values, cfg.dtype)
                if up > 1:
                    block = block.repeat(up, axis=0).repeat(up, axis=1)[:, :stored_shape[1]]
                    block = block[:max(0, stored_shape[0] - writer.done_chunk_rows * chunks[0])]
                writer.write_band(block)
            yield TilesDone(p.name, b1, total, (b1 - first) / max(time.perf_counter() - t0, 1e-9))
    writer.finish()
    summary["complete"] = True
    return summary


def predict(cfg: PredictConfig, predictors: Sequence[InkPredictor] | None = None) -> Iterator[Event]:
    """Run tiled inference of each checkpoint (or of ``predictors``, already loaded) over the segment.

    Yields ``Started``, ``TilesDone`` per batch (per encoder), then ``Finished`` with the store's path
    and each array's. Closing the generator stops between batches; what is written stays, and the next
    run with the same settings resumes after the last finished band. The output store is locked while
    this writes (a second prediction into it is refused).
    """
    from napari_vesuvius_pt.engine.prediction_store import writer_lock
    from napari_vesuvius_pt.engine.run_lock import hold

    _check(cfg)
    with hold(writer_lock(cfg.out)):
        yield from _predict(cfg, predictors)


def _predict(cfg: PredictConfig, predictors: Sequence[InkPredictor] | None) -> Iterator[Event]:
    device = resolve_device(cfg.device)
    if predictors is None:
        if not cfg.checkpoints:
            raise ConfigError("no checkpoint to predict with: give --checkpoint CKPT (one or more)")
        names = cfg.names or [checkpoint_label(c) for c in cfg.checkpoints]
        if len(names) != len(cfg.checkpoints):
            raise ConfigError(f"{len(names)} names given for {len(cfg.checkpoints)} checkpoints")
        predictors = [load_predictor(c, n, cfg.data) for c, n in zip(cfg.checkpoints, unique_names(names))]
    elif len({p.name for p in predictors}) != len(predictors):
        raise ConfigError(f"predictor names must differ: {[p.name for p in predictors]}")
    predictors, means = directed_predictors(predictors, cfg.direction)

    polygons = None
    region_hash = None
    if cfg.region:
        from napari_vesuvius_pt.data.tiles import load_regions

        polygons = [np.asarray(poly, dtype=np.float64) for poly in load_regions(cfg.region)]
        region_hash = hashlib.sha1(b"".join(poly.tobytes() for poly in polygons)).hexdigest()[:16]
    opened = _open_segments(cfg, predictors)
    planes = {tuple(seg.shape[1:]) for seg, _ in opened}
    if len(planes) > 1:
        raise ConfigError(f"the checkpoints read {cfg.segment} at different in-plane sizes {sorted(planes)} "
                          f"(different downsample); predict them into separate --out stores")
    jobs = [_plan(cfg, p, seg, norm, polygons) for p, (seg, norm) in zip(predictors, opened)]
    store = PredictionStore.create(cfg.out, SegmentInfo.from_segment(jobs[0].segment))

    yield Started(run_dir=Path(cfg.out), device=describe_device(device),
                  total_steps=sum(len(j.positions) for j in jobs))
    t0 = time.perf_counter()
    summaries: dict[str, Any] = {}
    try:
        for job in jobs:
            try:
                summaries[job.predictor.name] = yield from _run_job(cfg, job, store, device, region_hash)
            except torch.cuda.OutOfMemoryError:
                release_device_memory(device)
                yield Failed(f"{job.predictor.name}: out of GPU memory at batch size {cfg.batch_size}; "
                             f"try --batch-size {max(1, cfg.batch_size // 2)} (finished bands are kept: "
                             f"the next run resumes)")
                return
    except GeneratorExit:  # the consumer stopped: finished bands are written and recorded
        return
    finally:
        release_device_memory(device)
    for mean_name, pair in means.items():  # --direction both: the mean of the two directions
        write_mean(store, pair, mean_name, resume=cfg.resume)
        summaries[mean_name] = {"array": str(store.path / mean_name), "tiles": 0, "resumed_at": 0,
                                "complete": True, "mean_of": pair}
    tiffs = export_tiffs(store, list(summaries), cfg.out) if cfg.format == "tiff" else {}
    yield Finished(run_dir=Path(cfg.out), summary={
        "out": str(cfg.out), "segment": jobs[0].segment.name, "encoders": summaries,
        "arrays": {name: s["array"] for name, s in summaries.items()},
        "seconds": time.perf_counter() - t0, **({"tiff": tiffs} if tiffs else {}),
    })


def directed_predictors(predictors: Sequence[InkPredictor], direction: str
                        ) -> tuple[list[InkPredictor], dict[str, list[str]]]:
    """The predictors for ``direction`` and, for ``both``, the mean arrays to write after them.

    forward: as each checkpoint was trained (its data's ``reverse``); reverse: the depth axis flipped
    from that; both: ``<name>-forward`` and ``<name>-reverse``, then ``<name>-mean`` of the two (villa
    predicts both ways, since which way the ink reads varies from segment to segment)."""
    if direction not in PREDICT_DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}; use one of {', '.join(PREDICT_DIRECTIONS)}")

    def flipped(p: InkPredictor, name: str) -> InkPredictor:
        return dataclasses.replace(p, name=name, data=dataclasses.replace(p.data, reverse=not p.data.reverse))

    if direction == "forward":
        return list(predictors), {}
    if direction == "reverse":
        return [flipped(p, p.name) for p in predictors], {}
    out: list[InkPredictor] = []
    means: dict[str, list[str]] = {}
    for p in predictors:
        fwd, rev = f"{p.name}-forward", f"{p.name}-reverse"
        out += [dataclasses.replace(p, name=fwd), flipped(p, rev)]
        means[f"{p.name}-mean"] = [fwd, rev]
    return out, means


def export_tiffs(store: PredictionStore, names: Sequence[str], out: str | Path) -> dict[str, str]:
    """``--format tiff``: each array of ``names`` as a tiled BigTIFF ``<out stem>_<name>.tif`` beside
    ``out``."""
    base = Path(out)
    stem = base.name[:-len(".zarr")] if base.name.endswith(".zarr") else base.name
    return {n: str(export_tiff(store, n, base.with_name(f"{stem}_{n}.tif"))) for n in names}
