"""What is at a path: the segment formats and their layouts on disk, as a volume source and the places
of its 2D images (mask, ink labels, IR).

Formats (``Segment.fmt``):

- ``kaggle-folder``: ``surface_volume/00.tif ...``, ``mask.png``, ``inklabels.png``, ``ir.png``;
- ``layers-folder``: ``layers/00.tif ...``, ``<id>_mask.png``, ``<id>_inklabels.png`` (scroll segments);
- ``tiff``: one multi-page TIFF (``<stem>_mask.png`` / ``<stem>_inklabels.png`` beside it, optional);
- ``zarr``: a zarr array, or a zarr group with a ``volume`` array and optional ``mask`` / ``inklabels`` /
  ``ir`` arrays (what ``vesuvius-pt convert`` writes);
- ``ome-zarr``: level 0 of the multiscales; the other levels are coarser sources for display.

:func:`locate` reads only metadata (TIFF headers, zarr attributes); the images are read by
:func:`~napari_vesuvius_pt.data.segment.open_segment`, which also applies the open-time options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_vesuvius_pt.data.sources import (
    TIFF_SUFFIXES,
    ArraySource,
    VolumeSource,
    multipage_tiff_source,
    tiff_layers_source,
    zarr_source,
)
from napari_vesuvius_pt.errors import SegmentError

FORMATS = ("kaggle-folder", "layers-folder", "tiff", "zarr", "ome-zarr")
IMAGE_KINDS = ("mask", "inklabels", "ir")
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
PARTIAL_SUFFIX = ".partial"


@dataclass
class Located:
    """A segment found at ``path``: its volume source and where its 2D images are.

    ``images`` maps ``mask`` / ``inklabels`` / ``ir`` to a PNG path (that may not exist), a zarr array
    stored with the segment, or None. ``levels`` are coarser sources of the same volume (OME-Zarr).
    """

    name: str
    path: Path
    fmt: str
    source: VolumeSource
    images: dict[str, Any]
    attrs: dict | None = None
    levels: list[VolumeSource] = field(default_factory=list)


def is_zarr(path: Path) -> bool:
    return any((path / m).is_file() for m in ZARR_MARKERS)


def locate(path: Path) -> Located:
    """The segment at an existing ``path`` (see the module docstring); raises SegmentError."""
    if path.is_dir() and path.name in ("surface_volume", "layers") and not is_zarr(path):
        path = path.parent  # the user picked the layers folder itself
    if path.name.endswith(PARTIAL_SUFFIX):
        raise SegmentError(f"{path} is a half-written conversion or segment (it ends in {PARTIAL_SUFFIX}); "
                           "run the conversion again")
    if path.is_dir():
        if (path / "surface_volume").is_dir():
            return _folder(path, path / "surface_volume", "kaggle-folder")
        if (path / "layers").is_dir():
            return _folder(path, path / "layers", "layers-folder")
        if is_zarr(path):
            return _zarr(path)
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise SegmentError(f"folder {path} is empty: expected a segment folder with surface_volume/ or layers/ "
                               "of numbered TIFF layers, a multi-page TIFF, or a zarr")
        raise SegmentError(f"folder {path} is not a segment: it has no surface_volume/ or layers/ folder and is not "
                           "a zarr (no zarr.json, .zarray or .zgroup)")
    if path.suffix.lower() in TIFF_SUFFIXES:
        source = multipage_tiff_source(path)
        images = {k: (path.parent / f"{path.stem}_{k}.png") for k in IMAGE_KINDS}
        return Located(path.stem, path, "tiff", source, images)
    raise SegmentError(f"{path} is not a supported segment: open a folder with surface_volume/ or layers/, "
                       "a multi-page .tif/.tiff, or a .zarr")


# ---------------------------------------------------------------- folders of TIFF layers


def _folder(folder: Path, layer_dir: Path, fmt: str) -> Located:
    source = tiff_layers_source(layer_dir)
    if fmt == "kaggle-folder":
        images: dict[str, Any] = {k: folder / f"{k}.png" for k in IMAGE_KINDS}
    else:
        images = {k: find_sidecar(folder, folder.name, k) for k in IMAGE_KINDS}
    return Located(folder.name, folder, fmt, source, images)


def find_sidecar(folder: Path, stem: str, kind: str) -> Path | None:
    """``<stem>_<kind>.png``, else a single ``*_<kind>.png``, else ``<kind>.png``."""
    exact = folder / f"{stem}_{kind}.png"
    if exact.is_file():
        return exact
    candidates = sorted(p for p in folder.glob(f"*_{kind}.png") if not p.name.startswith("."))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise SegmentError(f"several {kind} images in {folder}: {', '.join(c.name for c in candidates)}; "
                           f"keep one, named {stem}_{kind}.png")
    plain = folder / f"{kind}.png"
    return plain if plain.is_file() else None


# ---------------------------------------------------------------- zarr and OME-Zarr


def ome_multiscales(attrs: dict) -> list | None:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _zarr(path: Path) -> Located:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise SegmentError(f"{path} is not a readable zarr ({type(exc).__name__}: {exc})") from None
    name = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    images: dict[str, Any] = {k: path.parent / f"{name}_{k}.png" for k in IMAGE_KINDS}
    attrs = dict(node.attrs)
    others: list[VolumeSource] = []
    source: ArraySource
    if not hasattr(node, "shape"):  # a group
        group = node
        multiscales = ome_multiscales(attrs)
        if multiscales is not None:
            datasets = [d["path"] for d in multiscales[0].get("datasets", [])]
            if not datasets:
                raise SegmentError(f"OME-Zarr {path} lists no datasets in its multiscales metadata")
            source = zarr_source(path, datasets[0], group[datasets[0]], "OME-Zarr level 0")
            others = [zarr_source(path, d, group[d], f"OME-Zarr level {i + 1}") for i, d in enumerate(datasets[1:])]
            fmt = "ome-zarr"
        elif "volume" in group:
            source = zarr_source(path, "volume", group["volume"], "zarr")
            fmt = "zarr"
        else:
            members = sorted(group.keys()) if hasattr(group, "keys") else []
            raise SegmentError(f"zarr group {path} has no 'volume' array and no OME-Zarr multiscales "
                               f"(members: {', '.join(members) or 'none'}); open the array itself")
        for kind in IMAGE_KINDS:
            for key in (kind, f"labels/{kind}/0"):
                if key in group:
                    images[kind] = group[key]
                    break
        meta = attrs.get("napari_vesuvius_pt", {})
        if isinstance(meta, dict):
            if meta.get("complete") is False:
                raise SegmentError(f"{path} is an incomplete conversion (interrupted while writing); "
                                   "run the conversion again")
            name = meta.get("name", name)
    else:
        source = zarr_source(path, None, node, "zarr")
        fmt = "zarr"
    return Located(name, path, fmt, source, images, attrs=attrs, levels=others)
