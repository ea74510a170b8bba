"""Predictions on disk: one zarr group per segment, one 2D array per encoder.

Layout of ``PRED.zarr``::

    PRED.zarr/            group attrs: format, segment {name, path, shape, plane, downsample}, encoders
      <encoder>/          (y, x) array at the model's output grid (or full resolution), chunked in row
                          bands; attrs: checkpoint, run config, tile, data, output_stride, scale,
                          translate, plane_scale, encoding, chunk_rows, done_chunk_rows, complete

Values (``encoding``): ``float16`` holds probabilities in [0, 1]; ``uint8`` holds
``round(probability * 255)``. ``probabilities()`` decodes both to float32 in [0, 1]. Pixels no tile
reached (outside the mask or region) hold 0.

Writes are crash-safe: zarr's local store writes every chunk and every metadata file to a temporary
file and renames it, so no chunk is ever half-written; ``done_chunk_rows`` is updated only after a band
of chunk rows is fully written, so a stopped prediction resumes from the first band not recorded.

Scale and placement: one stored pixel covers ``plane_scale`` pixels of the plane the model read (the
segment after its in-plane ``downsample``), i.e. ``scale = plane_scale * downsample`` pixels of the
segment's full-resolution files; ``translate`` puts each stored pixel's centre over the centre of the
block it covers. Give both to a napari Image layer (see ``layer_kwargs``) and it lies in place over
the full-resolution segment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.errors import ConfigError, SegmentError

PREDICTION_FORMAT = "napari-vesuvius-pt/prediction/1"
ENCODINGS = {
    "float16": "probability in [0, 1] as float16",
    "uint8": "round(probability * 255) as uint8; divide by 255 for the probability",
}


def encode(probabilities: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return probabilities.astype(np.float16)
    if dtype == "uint8":
        return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ConfigError(f"unknown prediction dtype {dtype!r}; use one of {', '.join(ENCODINGS)}")


def decode(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    return raw.astype(np.float32)


@dataclass(frozen=True)
class SegmentInfo:
    """What identifies the segment a prediction belongs to."""

    name: str
    path: str
    shape: tuple[int, int, int]  # (z, y, x) of the volume the model read
    downsample: int = 1

    @property
    def plane(self) -> tuple[int, int]:
        return (int(self.shape[1]), int(self.shape[2]))

    @classmethod
    def from_segment(cls, segment: Any) -> SegmentInfo:
        return cls(str(segment.name), str(segment.path), tuple(int(s) for s in segment.shape),
                   int(getattr(segment, "downsample", 1) or 1))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["plane"] = list(self.plane)
        return d


def _differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))


class ArrayWriter:
    """Writes one encoder's array band by band and records how far it got."""

    def __init__(self, array: Any):
        self.array = array
        attrs = array.attrs.asdict()
        self.chunk_rows = int(attrs["chunk_rows"])
        self.done_chunk_rows = int(attrs.get("done_chunk_rows", 0))
        self.complete = bool(attrs.get("complete", False))

    @property
    def n_chunk_rows(self) -> int:
        return -(-self.array.shape[0] // self.chunk_rows)

    def write_band(self, block: np.ndarray) -> None:
        """Write the next chunk rows (``block`` starts at row ``done_chunk_rows * chunk_rows`` and holds
        whole chunk rows, or runs to the array's end), then record them as done."""
        row0 = self.done_chunk_rows * self.chunk_rows
        rows = block.shape[0]
        end = row0 + rows
        if rows == 0:
            return
        if end != self.array.shape[0] and rows % self.chunk_rows:
            raise ValueError(f"band of {rows} rows is not whole chunk rows of {self.chunk_rows}")
        self.array[row0:end, :] = block
        self.done_chunk_rows = -(-end // self.chunk_rows)
        self.array.attrs.update({"done_chunk_rows": self.done_chunk_rows})

    def finish(self) -> None:
        self.complete = True
        self.array.attrs.update({"done_chunk_rows": self.n_chunk_rows, "complete": True})


class PredictionStore:
    """A prediction zarr group: open it for reading (napari, evaluate) or for writing (predict)."""

    def __init__(self, path: str | Path, group: Any):
        self.path = Path(path)
        self.group = group

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> PredictionStore:
        import zarr

        path = Path(path)
        if not path.exists():
            raise SegmentError(f"prediction {path} not found; write one with `vesuvius-pt predict --out {path}`")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # zarr raises several types for "not a group"
            raise SegmentError(f"{path} is not a prediction zarr group ({type(exc).__name__}: {exc})") from None
        if group.attrs.get("format") != PREDICTION_FORMAT:
            raise SegmentError(f"{path} is a zarr group but not a napari-vesuvius-pt prediction "
                               f"(attrs format={group.attrs.get('format')!r})")
        return cls(path, group)

    @classmethod
    def create(cls, path: str | Path, segment: SegmentInfo) -> PredictionStore:
        """Open ``path`` for writing predictions of ``segment``, creating it if needed; a store that
        already holds another segment's predictions is refused."""
        import zarr

        path = Path(path)
        if path.exists():
            store = cls.open(path, mode="a")
            store.check_segment(segment.name, segment.plane)
            return store
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w")
        group.attrs.update({"format": PREDICTION_FORMAT, "segment": segment.to_dict(), "encoders": []})
        return cls(path, group)

    # ------------------------------------------------------------------ reading
    @property
    def segment(self) -> dict[str, Any]:
        return dict(self.group.attrs["segment"])

    @property
    def names(self) -> list[str]:
        present = set(self.group.array_keys())
        return [n for n in self.group.attrs.get("encoders", []) if n in present]

    def array(self, name: str) -> Any:
        if name not in self.names:
            have = ", ".join(self.names) or "none"
            raise ConfigError(f"{self.path} has no prediction named {name!r}; it has: {have}")
        return self.group[name]

    def info(self, name: str) -> dict[str, Any]:
        return self.array(name).attrs.asdict()

    def probabilities(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """Stored rows ``rows`` of ``name`` as float32 probabilities in [0, 1]."""
        return decode(np.asarray(self.array(name)[rows, :]))

    def done_rows(self, name: str) -> int:
        """Rows of ``name`` written so far (all of them once it is complete)."""
        info = self.info(name)
        n_rows = self.array(name).shape[0]
        if info.get("complete"):
            return n_rows
        return min(n_rows, int(info.get("done_chunk_rows", 0)) * int(info["chunk_rows"]))

    def layer_kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments for a napari Image layer showing ``name`` in place over the segment."""
        info = self.info(name)
        limits = [0, 255] if info.get("encoding") == "uint8" else [0.0, 1.0]
        return {"name": name, "scale": info["scale"], "translate": info["translate"], "contrast_limits": limits}

    def check_segment(self, name: str, plane: tuple[int, int], path: str | Path | None = None) -> None:
        """Refuse to mix segments: the store must hold predictions of a segment called ``name`` with
        this ``(y, x)`` plane."""
        seg = self.segment
        if seg.get("name") != name or tuple(seg.get("plane", ())) != tuple(plane):
            where = f" ({path})" if path else ""
            raise SegmentError(
                f"{self.path} holds predictions of segment {seg.get('name')!r} ({seg.get('path')}, plane "
                f"{tuple(seg.get('plane', ()))}), not of {name!r}{where} with plane {tuple(plane)}; "
                f"use the segment it was predicted on, or predict this one into another --out")

    # ------------------------------------------------------------------ writing
    def start_array(self, name: str, shape: tuple[int, int], chunks: tuple[int, int], dtype: str,
                    attrs: dict[str, Any], run: dict[str, Any], resume: bool = True) -> ArrayWriter:
        """An ``ArrayWriter`` for ``name``: the existing array when ``resume`` and it was made with the
        same ``run`` settings, else a new empty one."""
        encoding = ENCODINGS.get(dtype)
        if encoding is None:
            raise ConfigError(f"unknown prediction dtype {dtype!r}; use one of {', '.join(ENCODINGS)}")
        if resume and name in set(self.group.array_keys()):
            array = self.group[name]
            recorded = array.attrs.asdict().get("run", {})
            changed = _differences(recorded, run)
            if changed:
                raise ConfigError(
                    f"{self.path}/{name} was predicted with other settings (differs in {', '.join(changed)}); "
                    f"predict again with resume off (--no-resume) to start it over, or choose another --out")
            if tuple(array.shape) == tuple(shape) and tuple(array.chunks) == tuple(chunks):
                return ArrayWriter(array)
        array = self.group.create_array(
            name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0, overwrite=True,
            config={"write_empty_chunks": False}, dimension_names=("y", "x"),
        )
        array.attrs.update({**attrs, "run": run, "encoding": dtype, "encoding_description": encoding,
                            "chunk_rows": int(chunks[0]), "done_chunk_rows": 0, "complete": False})
        encoders = list(self.group.attrs.get("encoders", []))
        if name not in encoders:
            self.group.attrs.update({"encoders": encoders + [name]})
        return ArrayWriter(array)


def open_prediction(path: str | Path) -> PredictionStore:
    """Open a prediction zarr for reading (napari, evaluate)."""
    return PredictionStore.open(path, mode="r")
