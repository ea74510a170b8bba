"""What a CKA run compares, and on which tiles: its sources and its probe set.

Sources (parsed by ``models.sources.parse_source``): run folders (every ``checkpoints/epoch_*.pt`` in
epoch order; ``last.pt`` when there are none), checkpoint files, ``random`` / ``random:resnet50`` (the
first checkpoint's architecture unless named; initialized from ``cfg.seed``, so it is the same encoder
every time), and ``k700:FILE``. Exact duplicates are dropped; names are the checkpoints' stems, prefixed
with their run folder only where two would collide, then told apart with ``-2``, ``-3`` (``naming``).

The probe set: one fixed set of tiles from ``cfg.segment`` (seeded positions inside the mask, no
augmentation, the layers centred in the segment's depth, normalized as the first checkpoint was
trained), the same for every source. Its ``key`` hashes everything that decides the tiles' content.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.config import CKAConfig, DataConfig, EncoderConfig, TileConfig, from_dict, to_dict
from napari_vesuvius_pt.errors import ConfigError, WeightsError
from napari_vesuvius_pt.models.sources import epoch_checkpoints, latest_checkpoint, parse_source
from napari_vesuvius_pt.naming import unique_names

MIN_TILES = 4  # the debiased estimator's minimum; fewer makes no sense for either
TILE_CACHE_BYTES = 512 * 2**20  # probe tiles kept in memory between sources up to this size


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


def _label(sources: list[CKASource]) -> list[CKASource]:
    """Short names (``epoch_003``); prefixed with the run folder only where two would collide, then
    made unique with ``-2``, ``-3``."""
    counts = Counter(s.name for s in sources)
    names = []
    for s in sources:
        name = s.name
        if counts[name] > 1 and s.path is not None:
            parent = s.path.parent.parent if s.path.parent.name == "checkpoints" else s.path.parent
            name = f"{parent.name}/{name}"
        names.append(name)
    return [replace(s, name=name) for s, name in zip(sources, unique_names(names))]


def expand_sources(sources: Sequence[str], random_spec: EncoderConfig | None = None, seed: int = 0) -> list[CKASource]:
    """Run folders become their epoch checkpoints, in order; exact duplicates are dropped."""
    if not sources:
        raise ConfigError("no sources to compare; give run folders, checkpoint files, random or k700:FILE")
    found: list[CKASource] = []
    for raw in sources:
        src = parse_source(raw)
        if src.kind == "random":
            spec = random_spec or EncoderConfig()
            arch = src.arch or spec.name
            identity = f"random|{arch}|{spec.widen_factor}|{spec.in_channels}|seed={seed}"
            found.append(CKASource(src.text, src.text, None, identity))
        elif src.kind == "kinetics":
            if not src.path.is_file():
                raise ConfigError(f"{src.text}: weights file {src.path} not found")
            found.append(CKASource(src.label, src.text, src.path, _file_identity(src.path)))
        elif src.kind == "run":
            checkpoints = epoch_checkpoints(src.path)
            if not checkpoints and (latest := latest_checkpoint(src.path)) is not None:
                checkpoints = [latest]  # last.pt of a run stopped inside its first epoch
            if not checkpoints:
                raise ConfigError(
                    f"run folder {src.path} holds no checkpoints/epoch_*.pt or last.pt yet; "
                    "wait for the first epoch to finish, or give checkpoint files"
                )
            for ckpt in checkpoints:
                found.append(CKASource(ckpt.stem, str(ckpt), ckpt, _file_identity(ckpt)))
        elif src.kind == "file":
            found.append(CKASource(src.path.stem, str(src.path), src.path, _file_identity(src.path)))
        else:
            raise ConfigError(
                f"CKA source {src.text!r} is neither a run folder, a checkpoint file, random[:resnetNN] nor k700:FILE"
            )
    unique: list[CKASource] = []
    identities = set()
    for s in found:
        if s.identity not in identities:
            identities.add(s.identity)
            unique.append(s)
    return _label(unique)


def first_payload(sources: Sequence[CKASource]) -> dict[str, Any] | None:
    """The payload of the first of our checkpoints among the sources (its data, tile and encoder spec)."""
    from napari_vesuvius_pt.models.checkpoint import load_checkpoint

    for s in sources:
        if s.path is not None and s.origin == str(s.path):
            try:
                return load_checkpoint(s.path)
            except WeightsError:
                continue  # a plain weights file: no run settings in it
    return None


def resolve_settings(cfg: CKAConfig,
                     sources: Sequence[CKASource]) -> tuple[DataConfig, TileConfig, EncoderConfig | None]:
    """Data and tile settings: the config's, else the first checkpoint's (what the encoders were trained
    with), else the defaults; and that checkpoint's encoder spec (for ``random``)."""
    payload = first_payload(sources)
    data, tile, spec = cfg.data, cfg.tile, None
    if payload is not None:
        if data is None and isinstance(payload.get("data"), dict):
            data = from_dict(DataConfig, payload["data"], where="checkpoint data")
        if tile is None and isinstance(payload.get("tile"), dict):
            tile = from_dict(TileConfig, payload["tile"], where="checkpoint tile")
        if isinstance(payload.get("encoder_spec"), dict):
            spec = from_dict(EncoderConfig, payload["encoder_spec"], where="checkpoint encoder_spec")
    return data or DataConfig(), tile or TileConfig(), spec


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
