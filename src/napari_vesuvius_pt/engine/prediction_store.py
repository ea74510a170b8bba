"""Predictions on disk: one zarr group per segment, one OME-Zarr image per encoder.

Layout of ``PRED.zarr``::

    PRED.zarr/            group attrs: format, segment {name, path, shape, plane, downsample}, encoders
      <encoder>/          an OME-Zarr image (NGFF 0.5 ``ome.multiscales``: axes y, x; per level a scale
                          and translation in full-resolution segment pixels); attrs also: checkpoint,
                          run config, tile, data, output_stride, scale, translate, plane_scale, encoding,
                          chunk_rows, done_chunk_rows, pyramid_levels, complete
        0/                (y, x) at full resolution by default (the model's reduced output upsampled),
                          or at the model's output grid; chunked in row bands
        1/, 2/, ...       the pyramid: each level the 2x2 mean of the one above, written at the end

napari opens an encoder's group with its builtin zarr reader (``viewer.open(PRED.zarr/<encoder>,
plugin="napari")``: the levels as a multiscale image) and with this plugin's reader (every encoder, in
place over the segment, see ``_reader``). Stores of the first format (one plain array per encoder) are
still read.

Values (``encoding``): ``float16`` holds probabilities in [0, 1]; ``uint8`` holds
``round(probability * 255)``. ``probabilities()`` decodes both to float32 in [0, 1]. Pixels no tile
reached (outside the mask or region) hold 0.

Writes are crash-safe: zarr's local store writes every chunk and every metadata file to a temporary
file and renames it, so no chunk is ever half-written; ``done_chunk_rows`` is updated only after a band
of chunk rows is fully written, so a stopped prediction resumes from the first band not recorded. The
pyramid is built from level 0 after its last band (band by band, in bounded memory) and ``complete``
set only after it, so a run stopped while building it rebuilds it on resume.

Scale and placement: one stored pixel covers ``plane_scale`` pixels of the plane the model read (the
segment after its in-plane ``downsample``), i.e. ``scale = plane_scale * downsample`` pixels of the
segment's full-resolution files; ``translate`` puts each stored pixel's centre over the centre of the
block it covers. Give both to a napari Image layer (see ``layer_kwargs``) and it lies in place over
the full-resolution segment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_vesuvius_pt.errors import ConfigError, SegmentError

PREDICTION_FORMAT = "napari-vesuvius-pt/prediction/2"  # /2: OME-Zarr image per encoder
READABLE_FORMATS = ("napari-vesuvius-pt/prediction/1", PREDICTION_FORMAT)
NGFF_VERSION = "0.5"
PYRAMID_MIN_SIDE = 32  # no pyramid level whose longer side would fall below this
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


def pyramid_shapes(shape: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """Shapes of the levels below level 0: halved (rounded up) while the longer side stays >= ``min_side``."""
    out: list[tuple[int, int]] = []
    h, w = shape
    while max(-(-h // 2), -(-w // 2)) >= min_side:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def halve(values: np.ndarray) -> np.ndarray:
    """The 2x2 mean (float32) of ``values``; an odd last row or column averages what it has."""
    v = values.astype(np.float32)
    h, w = v.shape
    if h % 2:
        v = np.concatenate([v, v[-1:]], axis=0)
    if w % 2:
        v = np.concatenate([v, v[:, -1:]], axis=1)
    return v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2).mean(axis=(1, 3))


def ome_metadata(name: str, scale: float, translate: float, levels: int) -> dict[str, Any]:
    """NGFF 0.5 ``ome`` attributes of an encoder's image: level ``k`` covers ``scale * 2**k`` segment
    pixels per value, its first value centred over the block it covers."""
    datasets = []
    for k in range(levels):
        s = scale * 2 ** k
        t = translate + (s - scale) / 2.0  # centre of a 2^k block of level-0 pixels
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [s, s]}, {"type": "translation", "translation": [t, t]}]})
    return {"version": NGFF_VERSION, "multiscales": [{
        "name": name, "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": datasets}]}


class ArrayWriter:
    """Writes one encoder's level 0 band by band, records how far it got, then the pyramid."""

    def __init__(self, array: Any, node: Any | None = None):
        self.array = array
        self.node = node if node is not None else array  # where the attrs live: the encoder's group
        attrs = self.node.attrs.asdict()
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
        self.node.attrs.update({"done_chunk_rows": self.done_chunk_rows})

    def finish(self) -> None:
        """Record level 0 as done, build the pyramid from it, then mark the image complete."""
        self.node.attrs.update({"done_chunk_rows": self.n_chunk_rows})
        if self.node is not self.array:
            self._pyramid()
        self.complete = True
        self.node.attrs.update({"complete": True})

    def _pyramid(self) -> None:
        attrs = self.node.attrs.asdict()
        dtype = str(attrs.get("encoding", self.array.dtype))
        shapes = pyramid_shapes(tuple(self.array.shape))
        above = self.array
        band = max(2, self.chunk_rows - self.chunk_rows % 2)  # even: each band halves on its own
        for k, shape in enumerate(shapes, start=1):
            level = self.node.create_array(str(k), shape=shape, chunks=(min(band // 2, shape[0]), min(
                self.array.chunks[1], shape[1])), dtype=dtype, fill_value=0, overwrite=True,
                config={"write_empty_chunks": False}, dimension_names=("y", "x"))
            for r0 in range(0, above.shape[0], band):
                level[r0 // 2:r0 // 2 + -(-min(band, above.shape[0] - r0) // 2), :] = encode(
                    halve(decode(np.asarray(above[r0:r0 + band, :]))), dtype)
            above = level
            band = max(2, level.chunks[0] - level.chunks[0] % 2)
        scale = float((attrs.get("scale") or [1.0])[0])
        translate = float((attrs.get("translate") or [0.0])[0])
        self.node.attrs.update({"ome": ome_metadata(str(attrs.get("encoder", "")), scale, translate, len(shapes) + 1),
                                "pyramid_levels": len(shapes) + 1})


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
        if group.attrs.get("format") not in READABLE_FORMATS:
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
            if store.group.attrs.get("format") != PREDICTION_FORMAT:
                raise SegmentError(f"{path} is a prediction of an older format (plain arrays, not OME-Zarr); "
                                   "predict into another --out, or remove it to predict it again")
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
        present = set(self.group.array_keys()) | set(self.group.group_keys())
        return [n for n in self.group.attrs.get("encoders", []) if n in present]

    def _node(self, name: str) -> Any:
        if name not in self.names:
            have = ", ".join(self.names) or "none"
            raise ConfigError(f"{self.path} has no prediction named {name!r}; it has: {have}")
        return self.group[name]

    def array(self, name: str) -> Any:
        """Level 0 of ``name``: a (y, x) zarr array."""
        node = self._node(name)
        return node["0"] if not hasattr(node, "shape") else node

    def levels(self, name: str) -> list[Any]:
        """Level 0 and the pyramid levels written so far (coarser ones after it)."""
        node = self._node(name)
        if hasattr(node, "shape"):
            return [node]
        n = int(node.attrs.get("pyramid_levels", 1)) if node.attrs.get("complete") else 1
        return [node[str(k)] for k in range(n)]

    def info(self, name: str) -> dict[str, Any]:
        return self._node(name).attrs.asdict()

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
        if resume and name in set(self.group.group_keys()):
            node = self.group[name]
            array = node["0"]
            recorded = node.attrs.asdict().get("run", {})
            changed = _differences(recorded, run)
            if changed:
                raise ConfigError(
                    f"{self.path}/{name} was predicted with other settings (differs in {', '.join(changed)}); "
                    f"predict again with resume off (--no-resume) to start it over, or choose another --out")
            if tuple(array.shape) == tuple(shape) and tuple(array.chunks) == tuple(chunks):
                return ArrayWriter(array, node)
        node = self.group.create_group(name, overwrite=True)
        array = node.create_array(
            "0", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0, overwrite=True,
            config={"write_empty_chunks": False}, dimension_names=("y", "x"),
        )
        scale = float((attrs.get("scale") or [1.0])[0])
        translate = float((attrs.get("translate") or [0.0])[0])
        node.attrs.update({**attrs, "run": run, "encoding": dtype, "encoding_description": encoding,
                           "chunk_rows": int(chunks[0]), "done_chunk_rows": 0, "complete": False,
                           "pyramid_levels": 1, "ome": ome_metadata(name, scale, translate, 1)})
        encoders = list(self.group.attrs.get("encoders", []))
        if name not in encoders:
            self.group.attrs.update({"encoders": encoders + [name]})
        return ArrayWriter(array, node)


def open_prediction(path: str | Path) -> PredictionStore:
    """Open a prediction zarr for reading (napari, evaluate)."""
    return PredictionStore.open(path, mode="r")


def writer_lock(path: str | Path):
    """The lock ``predict`` holds while it writes into the store at ``path`` (a file beside it, since
    zarr owns the folder): a second prediction into the same store is refused while the first runs."""
    from napari_vesuvius_pt.engine.run_lock import store_lock

    return store_lock(path, f"prediction store {path}")


# ---------------------------------------------------------------- derived outputs


def write_mean(store: PredictionStore, names: list[str], out_name: str, resume: bool = True) -> ArrayWriter:
    """``out_name``: the mean probability of the complete arrays ``names`` (the two depth directions of
    ``predict --direction both``), band by band, with its pyramid; attrs from the first, and
    ``mean_of``."""
    arrays = [store.array(n) for n in names]
    first = store.info(names[0])
    if not all(store.info(n).get("complete") for n in names):
        raise ConfigError(f"cannot average {', '.join(names)}: not all of them are complete")
    if len({tuple(a.shape) for a in arrays}) != 1:
        raise ConfigError(f"cannot average {', '.join(names)}: their shapes differ")
    keep = {k: v for k, v in first.items() if k not in (
        "run", "encoding", "encoding_description", "chunk_rows", "done_chunk_rows", "complete", "pyramid_levels", "ome")}
    run = {"mean_of": {n: store.info(n).get("run", {}) for n in names}}
    dtype = str(first.get("encoding", "float16"))
    writer = store.start_array(out_name, tuple(arrays[0].shape), tuple(arrays[0].chunks), dtype,
                               {**keep, "encoder": out_name, "mean_of": list(names)}, run, resume=resume)
    if writer.complete:
        return writer
    rows = writer.chunk_rows
    for r0 in range(writer.done_chunk_rows * rows, arrays[0].shape[0], rows):
        values = np.mean([decode(np.asarray(a[r0:r0 + rows, :])) for a in arrays], axis=0)
        writer.write_band(encode(values, dtype))
    writer.finish()
    return writer


TIFF_TILE = 256


def export_tiff(store: PredictionStore, name: str, path: str | Path) -> Path:
    """Level 0 of ``name`` as a tiled BigTIFF (``TIFF_TILE`` tiles, zlib; the pyramid levels as
    sub-resolutions), streamed tile row by tile row and written atomically (``path.partial``, renamed)."""
    import os

    import tifffile

    path = Path(path)
    levels = store.levels(name)
    info = store.info(name)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)

    def tiles(arr):
        h, w = arr.shape
        for r0 in range(0, h, TIFF_TILE):
            band = np.asarray(arr[r0:r0 + TIFF_TILE, :])
            for c0 in range(0, w, TIFF_TILE):
                tile = np.zeros((TIFF_TILE, TIFF_TILE), band.dtype)
                part = band[:, c0:c0 + TIFF_TILE]
                tile[:part.shape[0], :part.shape[1]] = part
                yield tile

    meta = {"encoder": name, "encoding": info.get("encoding"), "scale": info.get("scale"),
            "translate": info.get("translate"), "segment": store.segment.get("name")}
    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        top = levels[0]
        tif.write(tiles(top), shape=tuple(top.shape), dtype=top.dtype, tile=(TIFF_TILE, TIFF_TILE),
                  compression="zlib", subifds=len(levels) - 1, description=json.dumps(meta), metadata=None)
        for level in levels[1:]:
            tif.write(tiles(level), shape=tuple(level.shape), dtype=level.dtype, tile=(TIFF_TILE, TIFF_TILE),
                      compression="zlib", subfiletype=1, metadata=None)
    os.replace(partial, path)
    return path
