"""CKA between checkpoints: is pretraining still changing the representation?

``cka(cfg)`` reads one fixed probe set of tiles from ``cfg.segment`` (``cka_sources``), computes each
source's features at ``cfg.layer`` (``feature_store``) and fills the checkpoint x checkpoint matrices of
linear and RBF CKA, one row per source, yielding ``MatrixUpdated`` after each.

``OUT/cka.json`` keeps the matrix with the sources' feature keys. Running again after a new epoch
computes that epoch's features and its one new row only. Pass ``--out RUN/cka`` to keep the cache inside
the run folder.

Outputs, written atomically after each new row: ``linear.csv``, ``rbf.csv`` (square, names as the
header row and first column; ``analysis.cka_io``) and ``cka.json`` ({"names", "linear", "rbf", "layer",
"tiles", "debiased", ...}; undefined entries are null); ``cka.png`` (the two heatmaps) at the end of the
run and at most every ``FIGURE_INTERVAL_S`` during it, since drawing it costs more than a row. A source
whose features are NaN (a diverged checkpoint) or constant (a collapsed representation) gets undefined
(NaN) entries and a note instead of stopping the run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vesuvius_pt._atomic import atomic_write_text
from napari_vesuvius_pt.analysis.cka_io import write_matrix_csv
from napari_vesuvius_pt.analysis.cka_plot import save_cka_png
from napari_vesuvius_pt.config import CKAConfig, EncoderConfig
from napari_vesuvius_pt.engine.cka_sources import (
    MIN_TILES,
    CKASource,
    ProbeSet,
    expand_sources,
    make_probe_set,
    resolve_settings,
)
from napari_vesuvius_pt.engine.device import describe_device, release_device_memory, resolve_device
from napari_vesuvius_pt.engine.events import Event, Finished, MatrixUpdated, Started, TilesDone
from napari_vesuvius_pt.engine.feature_store import (
    LAYERS,
    STAGE_POOL,
    FeatureStore,
    GramCache,
    feature_key,
    layer_features,
)
from napari_vesuvius_pt.errors import ConfigError

KERNELS = ("linear", "rbf")
FIGURE_INTERVAL_S = 30.0  # cka.png is redrawn at most this often during a run, and always at its end
FILES = {"linear_csv": "linear.csv", "rbf_csv": "rbf.csv", "json": "cka.json", "png": "cka.png"}

__all__ = ["FILES", "KERNELS", "LAYERS", "MIN_TILES", "cka", "validate", "write_outputs"]


def _build_encoder(source: CKASource, random_spec: EncoderConfig | None, seed: int):
    """Our checkpoints rebuild their own architecture and Kinetics files are inferred from their weights;
    ``random`` takes the first checkpoint's architecture and the same seeded weights every run."""
    from napari_vesuvius_pt.models.checkpoint import encoder_from_source

    if source.path is not None:
        return encoder_from_source(source.origin)[0]
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        return encoder_from_source(source.origin, random_spec)[0]


# ------------------------------------------------------------------ matrices


def _previous_values(path: Path, layer: str, debiased: bool,
                     threshold: float) -> dict[tuple[str, str], tuple[float, float]]:
    """Pairs already computed by an earlier run with the same settings: (key_i, key_j) -> (linear, rbf)."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
        if old.get("layer") != layer or bool(old.get("debiased")) != debiased or old.get("threshold") != threshold:
            return {}
        keys, lin, rbf = old["keys"], old["linear"], old["rbf"]
        values = {}
        for i, ki in enumerate(keys):
            for j, kj in enumerate(keys):
                a, b = lin[i][j], rbf[i][j]
                if a is not None and b is not None:
                    values[(ki, kj)] = (float(a), float(b))
        return values
    except (ValueError, KeyError, TypeError, IndexError):
        return {}  # unreadable or from another version: recompute


def _json_matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in m]

def write_outputs(out: Path, names: Sequence[str], keys: Sequence[str], linear: np.ndarray, rbf: np.ndarray,
                  info: dict[str, Any], figure: bool = True) -> dict[str, Path]:
    """Write the CSVs and the JSON, and with ``figure`` the PNG (rendering takes ~0.5 s); returns what was written."""
    files = {k: out / v for k, v in FILES.items()}
    write_matrix_csv(files["linear_csv"], names, linear)
    write_matrix_csv(files["rbf_csv"], names, rbf)
    doc = {"names": list(names), "linear": _json_matrix(linear), "rbf": _json_matrix(rbf), **info, "keys": list(keys)}
    # one line per key (a matrix row-major on one line): readable and diffable
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) + "\n}\n"
    atomic_write_text(files["json"], text)
    if not figure:
        del files["png"]
        return files
    title = f"CKA at {info['layer']}, {info['tiles']} probe tiles" + (", debiased" if info["debiased"] else "")
    save_cka_png(files["png"], names, linear, rbf, title=title)
    return files


# ------------------------------------------------------------------ the run

def validate(cfg: CKAConfig) -> None:
    if cfg.layer not in LAYERS:
        raise ConfigError(f"unknown layer {cfg.layer!r}; choose one of {', '.join(LAYERS)}")
    if cfg.tiles < MIN_TILES:
        raise ConfigError(f"CKA needs at least {MIN_TILES} probe tiles, got {cfg.tiles}; 256 or more is usual")
    if not cfg.threshold > 0:
        raise ConfigError(f"the RBF threshold must be > 0 (a fraction of the median distance), got {cfg.threshold}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}")
    if not cfg.out:
        raise ConfigError("no output folder given; pass --out DIR")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {cfg.seed}")


def cka(cfg: CKAConfig) -> Iterator[Event]:
    """Yield Started, TilesDone while features are computed, one MatrixUpdated per source, Finished.
    The output folder is locked while the job writes into it (a second job there is refused)."""
    from napari_vesuvius_pt.engine.run_lock import folder_lock, hold

    validate(cfg)
    with hold(folder_lock(cfg.out, f"CKA folder {cfg.out}")):
        yield from _cka(cfg)


def _cka(cfg: CKAConfig) -> Iterator[Event]:
    out = Path(cfg.out).expanduser()
    device = resolve_device(cfg.device)
    data, tile, spec = resolve_settings(cfg, expand_sources(cfg.sources, seed=cfg.seed))
    sources = expand_sources(cfg.sources, random_spec=spec, seed=cfg.seed)  # random: the checkpoints' architecture
    probe, notes = make_probe_set(cfg, data, tile)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    store = FeatureStore(out / "features")
    keys = [feature_key(s.identity, cfg.layer, probe.key) for s in sources]
    previous = _previous_values(out / FILES["json"], cfg.layer, bool(cfg.debiased), float(cfg.threshold))
    grams = GramCache()
    k = len(sources)
    linear, rbf = np.full((k, k), np.nan), np.full((k, k), np.nan)
    undefined: dict[int, dict[str, str]] = {}  # source index -> kernel -> why CKA is undefined
    computed: list[str] = []
    pairs_computed = 0
    timings = {"features_s": 0.0, "rows_s": 0.0}
    info = {"layer": cfg.layer, "tiles": len(probe), "debiased": bool(cfg.debiased), "threshold": float(cfg.threshold),
            "segment": str(Path(cfg.segment).expanduser().resolve()), "probe": probe.key, "z0": probe.z0,
            "depth": probe.depth, "size": probe.size,
            "stage_pool": list(STAGE_POOL)}
    fresh: dict[str, np.ndarray] = {}  # the features computed for the current source

    def features_of(index: int) -> np.ndarray:
        return fresh[keys[index]] if keys[index] in fresh else store.load(keys[index])

    yield Started(run_dir=out, device=describe_device(device), total_steps=k)
    files: dict[str, Path] = {}
    last_figure = time.monotonic()
    try:
        for i, source in enumerate(sources):
            fresh.clear()
            # 1. features, computed once per checkpoint version, layer and probe set
            if not store.valid(keys[i], len(probe)):
                t0 = time.perf_counter()
                feats = yield from _compute_features(source, spec, cfg, probe, device)
                store.save(source.name, keys[i], feats)
                fresh[keys[i]] = feats
                computed.append(source.name)
                timings["features_s"] += time.perf_counter() - t0
            # 2. its row: CKA with every earlier source and itself; pairs known from an earlier run are reused
            t0 = time.perf_counter()
            new_values = False
            for j in range(i + 1):
                pair = previous.get((keys[i], keys[j])) or previous.get((keys[j], keys[i]))
                if pair is None:
                    new_values = True
                    pairs_computed += 1
                    values = []
                    for kernel in KERNELS:
                        value, why = _pair_cka(grams, keys, features_of, i, j, kernel, cfg)
                        values.append(value)
                        for index, reason in why.items():
                            undefined.setdefault(index, {})[kernel] = reason
                    pair = (values[0], values[1])
                linear[i, j] = linear[j, i] = pair[0]
                rbf[i, j] = rbf[j, i] = pair[1]
            timings["rows_s"] += time.perf_counter() - t0
            # 3. files (when something changed, and always for the final matrix), then the event
            n_now = i + 1
            names = [s.name for s in sources[:n_now]]
            sub_lin, sub_rbf = linear[:n_now, :n_now].copy(), rbf[:n_now, :n_now].copy()
            written: dict[str, Path] = {}
            if new_values or n_now == k:
                doc = {**info, "sources": [s.origin for s in sources[:n_now]],
                       "notes": _notes(notes, undefined, names)}
                figure = n_now == k or time.monotonic() - last_figure > FIGURE_INTERVAL_S
                written = write_outputs(out, names, keys[:n_now], sub_lin, sub_rbf, doc, figure=figure)
                files.update(written)
                last_figure = time.monotonic() if figure else last_figure
            yield MatrixUpdated(names=names, linear=sub_lin, rbf=sub_rbf, files=written)
    finally:
        release_device_memory(device)
    names = [s.name for s in sources]
    yield Finished(
        run_dir=out,
        summary={
            "names": names,
            "linear": _json_matrix(linear),
            "rbf": _json_matrix(rbf),
            "computed": computed,  # sources whose features were computed (not found in the cache)
            "pairs_computed": pairs_computed,  # matrix entries (i <= j) not known from an earlier run
            "files": {name: str(path) for name, path in files.items()},
            "notes": _notes(notes, undefined, names),
            **info,
            **timings,
        },
    )


def _compute_features(source: CKASource, spec: EncoderConfig | None, cfg: CKAConfig, probe: ProbeSet,
                      device: torch.device) -> Iterator[Event]:
    """Yields TilesDone per batch; returns the (n, d) float32 features."""
    t0 = time.perf_counter()
    encoder = _build_encoder(source, spec, cfg.seed).to(device).eval()
    chunks, done = [], 0
    with torch.inference_mode():
        for batch in probe.batches(cfg.batch_size):
            x = torch.from_numpy(batch).to(device)
            chunks.append(layer_features(encoder, x, cfg.layer).float().cpu().numpy())
            done += len(batch)
            yield TilesDone(source.name, done, len(probe), done / max(time.perf_counter() - t0, 1e-9))
    return np.concatenate(chunks)


def _pair_cka(grams: GramCache, keys: Sequence[str], features_of: Callable[[int], np.ndarray], i: int, j: int,
              kernel: str, cfg: CKAConfig) -> tuple[float, dict[int, str]]:
    """(CKA, {source index: why undefined})."""
    why: dict[int, str] = {}
    mats = []
    for index in (i, j):
        m = grams.get(keys[index], kernel, lambda index=index: features_of(index), cfg.threshold, cfg.debiased)
        if isinstance(m, str):
            why[index] = m
        mats.append(m)
    if why:
        return float("nan"), why
    return float(np.vdot(mats[0], mats[1])), why


def _notes(notes: list[str], undefined: dict[int, dict[str, str]], names: Sequence[str]) -> list[str]:
    out = list(notes)
    for i, reasons in sorted(undefined.items()):
        if i >= len(names):
            continue
        by_reason: dict[str, list[str]] = {}
        for kernel, reason in reasons.items():
            by_reason.setdefault(reason, []).append(kernel)
        for reason, kernels in by_reason.items():
            out.append(f"{names[i]}: {' and '.join(kernels)} CKA undefined: {reason}")
    return out
