"""CKA between checkpoints: is pretraining still changing the representation?

``cka(cfg)`` reads one fixed probe set of tiles from ``cfg.segment`` (seeded positions inside the mask,
no augmentation, the layers centred in the segment's depth, normalized as the first checkpoint was
trained), computes each source's features at ``cfg.layer`` and fills the checkpoint x checkpoint
matrices of linear and RBF CKA, one row per source, yielding ``MatrixUpdated`` after each.

Sources: run folders (every ``checkpoints/epoch_*.pt`` in epoch order; ``last.pt`` when there are none),
checkpoint files, ``random`` / ``random:resnet50`` (the first checkpoint's architecture unless named;
initialized from ``cfg.seed``, so it is the same encoder every time), and ``k700:FILE``.

Layers: ``pooled`` is the encoder's embedding (global average of layer4). ``layer1`` .. ``layer4`` are
stage maps average-pooled to ``STAGE_POOL`` = (1, 2, 2) (depth averaged, the plane in quadrants) and
flattened, channels x 4 features: coarse spatial layout is kept, and the features stay small enough to
cache.

Caching, so that a run can be checked every epoch: features are stored in ``OUT/features/`` as ``.npy``
keyed by the checkpoint's path, modification time and size, the layer and a hash of the probe set
(segment, data options, normalization, tile positions); ``OUT/cka.json`` keeps the matrix with the
same keys. Running again after a new epoch computes that epoch's features and its one new row only.
Pass ``--out RUN/cka`` to keep the cache inside the run folder.

Outputs, written atomically after each new row: ``linear.csv``, ``rbf.csv`` (square, names as the
header row and first column) and ``cka.json`` ({"names", "linear", "rbf", "layer", "tiles", "debiased",
...}; undefined entries are null); ``cka.png`` (the two heatmaps) at the end of the run and at most every
``FIGURE_INTERVAL_S`` during it, since drawing it costs more than a row. A source whose features are NaN (a diverged
checkpoint) or constant (a collapsed representation) gets undefined (NaN) entries and a note instead of
stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vesuvius_pt._atomic import atomic_open, atomic_write_text
from napari_vesuvius_pt.analysis import AnalysisInputError
from napari_vesuvius_pt.analysis.cka import centered_gram
from napari_vesuvius_pt.analysis.cka_plot import save_cka_png
from napari_vesuvius_pt.config import CKAConfig, DataConfig, EncoderConfig, TileConfig, from_dict, to_dict
from napari_vesuvius_pt.engine.device import describe_device, release_device_memory, resolve_device
from napari_vesuvius_pt.engine.events import Event, Finished, MatrixUpdated, Started, TilesDone
from napari_vesuvius_pt.errors import ConfigError, RunError, WeightsError

LAYERS = ("pooled", "layer1", "layer2", "layer3", "layer4")
STAGE_POOL = (1, 2, 2)
KERNELS = ("linear", "rbf")
MIN_TILES = 4  # the debiased estimator's minimum; fewer makes no sense for either
TILE_CACHE_BYTES = 512 * 2**20  # probe tiles kept in memory between sources up to this size
GRAM_CACHE_BYTES = 1024 * 2**20  # centred Gram matrices kept in memory up to this size
FIGURE_INTERVAL_S = 30.0  # cka.png is redrawn at most this often during a run, and always at its end
FILES = {"linear_csv": "linear.csv", "rbf_csv": "rbf.csv", "json": "cka.json", "png": "cka.png"}


# ------------------------------------------------------------------ sources


@dataclass(frozen=True)
class CKASource:
    """One encoder to compare: its label, what ``encoder_from_source`` gets, and its cache identity."""

    name: str
    origin: str  # random[:name] | k700:FILE | a checkpoint path
    path: Path | None  # the weights file, None for random
    identity: str  # resolved path + mtime + size, or random + spec + seed


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


def _unique_names(sources: list[CKASource]) -> list[CKASource]:
    """Short names (``epoch_003``); prefixed with the run folder only where two would collide."""
    counts: dict[str, int] = {}
    for s in sources:
        counts[s.name] = counts.get(s.name, 0) + 1
    out = []
    for s in sources:
        name = s.name
        if counts[name] > 1 and s.path is not None:
            parent = s.path.parent.parent if s.path.parent.name == "checkpoints" else s.path.parent
            name = f"{parent.name}/{name}"
        out.append(CKASource(name, s.origin, s.path, s.identity))
    seen: dict[str, int] = {}
    final = []
    for s in out:
        seen[s.name] = seen.get(s.name, 0) + 1
        name = s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}"
        final.append(CKASource(name, s.origin, s.path, s.identity))
    return final


def expand_sources(sources: Sequence[str], random_spec: EncoderConfig | None = None, seed: int = 0) -> list[CKASource]:
    """Run folders become their epoch checkpoints, in order; exact duplicates are dropped."""
    from napari_vesuvius_pt.engine.run_folder import RunFolder
    from napari_vesuvius_pt.models.checkpoint import KINETICS_PREFIXES

    if not sources:
        raise ConfigError("no sources to compare; give run folders, checkpoint files, random or k700:FILE")
    found: list[CKASource] = []
    for raw in sources:
        text = str(raw).strip()
        if text == "random" or text.startswith("random:"):
            spec = random_spec or EncoderConfig()
            arch = text.partition(":")[2] or spec.name
            identity = f"random|{arch}|{spec.widen_factor}|{spec.in_channels}|seed={seed}"
            found.append(CKASource(text, text, None, identity))
            continue
        prefix = next((p for p in KINETICS_PREFIXES if text.lower().startswith(p)), None)
        if prefix:
            path = Path(text[len(prefix):]).expanduser()
            if not path.is_file():
                raise ConfigError(f"{text}: weights file {path} not found")
            found.append(CKASource(prefix[:-1].lower(), text, path, _file_identity(path)))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            run = RunFolder(path)
            checkpoints = run.epoch_checkpoints() or ([run.last_path] if run.last_path.is_file() else [])
            if not checkpoints:
                raise ConfigError(
                    f"run folder {path} holds no checkpoints/epoch_*.pt or last.pt yet; "
                    "wait for the first epoch to finish, or give checkpoint files"
                )
            for ckpt in checkpoints:
                found.append(CKASource(ckpt.stem, str(ckpt), ckpt, _file_identity(ckpt)))
        elif path.is_file():
            found.append(CKASource(path.stem, str(path), path, _file_identity(path)))
        else:
            raise ConfigError(
                f"CKA source {text!r} is neither a run folder, a checkpoint file, random[:resnetNN] nor k700:FILE"
            )
    unique: list[CKASource] = []
    identities = set()
    for s in found:
        if s.identity not in identities:
            identities.add(s.identity)
            unique.append(s)
    return _unique_names(unique)


def _first_payload(sources: Sequence[CKASource]) -> dict[str, Any] | None:
    """The payload of the first of our checkpoints among the sources (its data, tile and encoder spec)."""
    from napari_vesuvius_pt.models.checkpoint import load_checkpoint

    for s in sources:
        if s.path is not None and s.origin == str(s.path):
            try:
                return load_checkpoint(s.path)
            except WeightsError:
                continue  # a plain weights file: no run settings in it
    return None


# ------------------------------------------------------------------ probe set


@dataclass
class ProbeSet:
    """Fixed tiles of one segment: the same positions, layers and normalization for every source."""

    segment: Any
    normalizer: Any
    positions: np.ndarray  # (n, 2) int (y, x)
    z0: int
    depth: int
    size: int
    key: str  # hash of everything that decides the tiles' content
    _raw: list[np.ndarray] | None = field(default=None, repr=False)
    _raw_batch: int = 0

    def __len__(self) -> int:
        return len(self.positions)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """(B, 1, depth, size, size) float32 normalized tiles. The raw tiles of a complete pass are kept in
        memory when they fit ``TILE_CACHE_BYTES``, so the next source does not read the segment again."""
        if self._raw is not None and self._raw_batch == batch_size:
            for raw in self._raw:
                yield self.normalizer(raw)[:, None].astype(np.float32, copy=False)
            return
        n = len(self.positions)
        keep = n * self.depth * self.size * self.size * np.dtype(self.segment.dtype).itemsize <= TILE_CACHE_BYTES
        collected: list[np.ndarray] = []
        for start in range(0, n, batch_size):
            raw = np.stack([self.segment.read_tile(self.z0, int(y), int(x), self.depth, self.size)
                            for y, x in self.positions[start:start + batch_size]])
            if keep:
                collected.append(raw)
            yield self.normalizer(raw)[:, None].astype(np.float32, copy=False)
        if keep:
            self._raw, self._raw_batch = collected, batch_size


def make_probe_set(cfg: CKAConfig, data: DataConfig, tile: TileConfig) -> tuple[ProbeSet, list[str]]:
    from napari_vesuvius_pt.data.normalize import normalizer_from_config
    from napari_vesuvius_pt.data.segment import open_from_config
    from napari_vesuvius_pt.data.tiles import TileGrid

    notes: list[str] = []
    if not cfg.segment:
        raise ConfigError("no probe segment given; pass --segment PATH "
                          "(a segment or fragment the encoders never saw is best)")
    segment = open_from_config(cfg.segment, data)
    layers = int(segment.shape[0])
    depth, size = int(tile.depth), int(tile.size)
    if depth > layers:
        raise ConfigError(
            f"the encoders read tiles of {depth} layers, but {segment.name} has {layers} layers "
            f"(z range {data.z_range or 'all'}); use a segment with at least {depth} layers"
        )
    mask = segment.papyrus_mask()
    grid = TileGrid.from_mask(mask, size, int(tile.stride), min_fraction=float(tile.min_mask_fraction))
    if len(grid) < cfg.tiles and tile.stride > max(1, size // 4):
        grid = TileGrid.from_mask(mask, size, max(1, size // 4), min_fraction=float(tile.min_mask_fraction))
    if len(grid) < MIN_TILES:
        raise ConfigError(
            f"only {len(grid)} tiles of {size}x{size} fit inside {segment.name}'s mask "
            f"(at least {MIN_TILES} are needed); use a larger segment or a smaller tile size"
        )
    n = min(int(cfg.tiles), len(grid))
    if n < cfg.tiles:
        notes.append(f"only {n} distinct tiles fit inside the mask; using {n} probe tiles instead of {cfg.tiles}")
    rng = np.random.default_rng(cfg.seed)
    positions = grid.positions[np.sort(rng.choice(len(grid), size=n, replace=False))]
    normalizer = normalizer_from_config(data, segment)
    z0 = (layers - depth) // 2
    identity = {
        "segment": str(Path(cfg.segment).expanduser().resolve()),
        "data": {k: v for k, v in to_dict(data).items() if k != "normalization_params"},
        "normalizer": normalizer.to_dict(),
        "z0": z0, "depth": depth, "size": size,
        "positions": hashlib.sha1(np.ascontiguousarray(positions, dtype=np.int64).tobytes()).hexdigest(),
    }
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return ProbeSet(segment, normalizer, positions, z0, depth, size, key), notes


# ------------------------------------------------------------------ features


def layer_features(encoder: torch.nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """(B, d) features of a batch at ``layer`` (see the module docstring)."""
    embedding, stages = encoder(x, return_features=True)
    if layer == "pooled":
        return embedding.flatten(1)
    return torch.nn.functional.adaptive_avg_pool3d(stages[layer], STAGE_POOL).flatten(1)


def _feature_key(source: CKASource, layer: str, probe_key: str) -> str:
    text = f"{source.identity}|{layer}|{STAGE_POOL}|{probe_key}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "source"


class FeatureStore:
    """``OUT/features/<name>-<key>.npy``; the key alone identifies the features."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find(self, key: str) -> Path | None:
        hits = sorted(self.folder.glob(f"*-{key}.npy")) if self.folder.is_dir() else []
        return hits[0] if hits else None

    def valid(self, key: str, n: int) -> bool:
        """A readable (n, d) feature file exists (only its header is read)."""
        path = self.find(key)
        if path is None:
            return False
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        return arr.ndim == 2 and arr.shape[0] == n

    def load(self, key: str) -> np.ndarray:
        path = self.find(key)
        if path is None:
            raise RunError(f"cached features {key} vanished from {self.folder} during the run; run again")
        return np.load(path, allow_pickle=False)

    def save(self, name: str, key: str, features: np.ndarray) -> Path:
        path = self.folder / f"{_safe(name)}-{key}.npy"
        with atomic_open(path, "wb") as fh:
            np.save(fh, features, allow_pickle=False)
        return path


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


class _GramCache:
    """Unit-norm centred Gram matrices by (feature key, kernel), least recently used dropped first.

    An entry is a string instead when CKA is undefined for those features (NaN, constant, collapsed).
    """

    def __init__(self, budget: int = GRAM_CACHE_BYTES) -> None:
        self.budget = budget
        self.items: OrderedDict[tuple[str, str], np.ndarray | str] = OrderedDict()
        self.bytes = 0

    def get(self, key: str, kernel: str, features: Callable[[], np.ndarray], threshold: float,
            debiased: bool) -> np.ndarray | str:
        item = self.items.get((key, kernel))
        if item is not None:
            self.items.move_to_end((key, kernel))
            return item
        try:
            item = centered_gram(features(), kernel, threshold=threshold, debiased=debiased)
        except AnalysisInputError as exc:
            item = str(exc).removeprefix("X: ")
        self.items[(key, kernel)] = item
        self.bytes += item.nbytes if isinstance(item, np.ndarray) else 0
        while self.bytes > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes if isinstance(old, np.ndarray) else 0
        return item


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


def _write_csv(path: Path, names: Sequence[str], m: np.ndarray) -> None:
    def cell(name: str) -> str:
        return f'"{name}"' if any(c in name for c in ',"\n') else name

    lines = ["name," + ",".join(cell(n) for n in names)]
    for name, row in zip(names, m):
        lines.append(cell(name) + "," + ",".join(f"{v:.6f}" if math.isfinite(v) else "nan" for v in row))
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_outputs(out: Path, names: Sequence[str], keys: Sequence[str], linear: np.ndarray, rbf: np.ndarray,
                  info: dict[str, Any], figure: bool = True) -> dict[str, Path]:
    """Write the CSVs and the JSON, and with ``figure`` the PNG (rendering takes ~0.5 s); returns what was written."""
    files = {k: out / v for k, v in FILES.items()}
    _write_csv(files["linear_csv"], names, linear)
    _write_csv(files["rbf_csv"], names, rbf)
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


def _resolve_settings(cfg: CKAConfig,
                      sources: Sequence[CKASource]) -> tuple[DataConfig, TileConfig, EncoderConfig | None]:
    """Data and tile settings: the config's, else the first checkpoint's (what the encoders were trained
    with), else the defaults; and that checkpoint's encoder spec (for ``random``)."""
    payload = _first_payload(sources)
    data, tile, spec = cfg.data, cfg.tile, None
    if payload is not None:
        if data is None and isinstance(payload.get("data"), dict):
            data = from_dict(DataConfig, payload["data"], where="checkpoint data")
        if tile is None and isinstance(payload.get("tile"), dict):
            tile = from_dict(TileConfig, payload["tile"], where="checkpoint tile")
        if isinstance(payload.get("encoder_spec"), dict):
            spec = from_dict(EncoderConfig, payload["encoder_spec"], where="checkpoint encoder_spec")
    return data or DataConfig(), tile or TileConfig(), spec


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


def cka(cfg: CKAConfig) -> Iterator[Event]:
    """Yield Started, TilesDone while features are computed, one MatrixUpdated per source, Finished."""
    validate(cfg)
    out = Path(cfg.out).expanduser()
    device = resolve_device(cfg.device)
    data, tile, spec = _resolve_settings(cfg, expand_sources(cfg.sources, seed=cfg.seed))
    sources = expand_sources(cfg.sources, random_spec=spec, seed=cfg.seed)  # random: the checkpoints' architecture
    probe, notes = make_probe_set(cfg, data, tile)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    store = FeatureStore(out / "features")
    keys = [_feature_key(s, cfg.layer, probe.key) for s in sources]
    previous = _previous_values(out / FILES["json"], cfg.layer, bool(cfg.debiased), float(cfg.threshold))
    grams = _GramCache()
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


def _pair_cka(grams: _GramCache, keys: Sequence[str], features_of: Callable[[int], np.ndarray], i: int, j: int,
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
