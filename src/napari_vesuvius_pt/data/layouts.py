"""What is at a path: the segment formats and their layouts on disk, as a volume source and the places
of its 2D images (mask, ink labels, IR).

Formats (``Segment.fmt``):

- ``kaggle-folder``: ``surface_volume/00.tif ...``, ``mask.png``, ``inklabels.png``, ``ir.png``;
- ``layers-folder``: ``layers/00.tif ...``, ``<id>_mask.png``, ``<id>_inklabels.png`` (scroll segments);
- ``tiff``: one multi-page TIFF (``<stem>_mask.png`` / ``<stem>_inklabels.png`` beside it, optional);
- ``zarr``: a zarr array, or a zarr group with a ``volume`` array and optional ``mask`` / ``inklabels`` /
  ``ir`` arrays (what ``vesuvius-pt convert`` writes);
- ``ome-zarr``: level 0 of the multiscales; the other levels are coarser sources for display;
- ``villa-folder``: ScrollPrize villa's segment folder: the surface volume as one ``<id>.zarr`` (zarr or
  OME-Zarr) beside ``<id>_inklabels.zarr`` or ``.png`` and the masks (``<id>_mask``,
  ``<id>_supervision_mask``, ``<id>_validation_mask``, ``<id>_ignore_mask``), each PNG or zarr.

2D images (:data:`IMAGE_KINDS`), all optional: ``mask`` (where papyrus is), ``inklabels``, ``ir``, and
the training masks: ``supervision_mask`` (the pixels that count in the loss and the metrics),
``ignore_mask`` (pixels removed from both: mislabeled or unsure), ``validation_mask`` (a validation
region). Masks and labels may hold 0/1 or 0/255. Every folder layout finds them as ``<id>_<kind>.png``
(or ``.zarr``), a single ``*_<kind>.png``, or ``<kind>.png``.

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

FORMATS = ("kaggle-folder", "layers-folder", "tiff", "zarr", "ome-zarr", "villa-folder")
IMAGE_KINDS = ("mask", "inklabels", "ir", "supervision_mask", "validation_mask", "ignore_mask")
TRAINING_MASKS = ("supervision_mask", "validation_mask", "ignore_mask")
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
        villa = villa_volume(path)
        if villa is not None:
            return _villa(path, villa)
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
        images = {k: image_ref(find_sidecar(folder, folder.name, k)) for k in IMAGE_KINDS}
    return Located(folder.name, folder, fmt, source, images)


def image_ref(side: Path | None) -> Any:
    """A sidecar image as ``load_plane_image`` takes it: a PNG path, or the array of a ``.zarr``."""
    return open_zarr_image(side) if side is not None and side.suffix == ".zarr" else side


def _other_kind(name: str, kind: str) -> bool:
    """Whether ``name`` (which ends in ``_<kind>.png``) names a longer kind: ``x_supervision_mask.png``
    is no ``mask``."""
    stem = name.rsplit(".", 1)[0]
    return any(k != kind and k.endswith(kind) and stem.endswith(f"_{k}") for k in IMAGE_KINDS)


def find_sidecar(folder: Path, stem: str, kind: str) -> Path | None:
    """``<stem>_<kind>.png`` (or a ``.zarr``), else a single ``*_<kind>.png`` or ``*_<kind>.zarr``, else
    ``<kind>.png``."""
    for exact in (folder / f"{stem}_{kind}.png", folder / f"{stem}_{kind}.zarr"):
        if exact.exists():
            return exact
    candidates = sorted(p for p in (*folder.glob(f"*_{kind}.png"), *folder.glob(f"*_{kind}.zarr"))
                        if not p.name.startswith(".") and not _other_kind(p.name, kind))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise SegmentError(f"several {kind} images in {folder}: {', '.join(c.name for c in candidates)}; "
                           f"keep one, named {stem}_{kind}.png")
    plain = folder / f"{kind}.png"
    return plain if plain.is_file() else None


# ---------------------------------------------------------------- villa's segment folder


def villa_volume(folder: Path) -> Path | None:
    """The surface volume ``*.zarr`` of a villa segment folder (the one zarr that is not a label or mask
    image), or None when ``folder`` holds none; SegmentError when it holds several."""
    zarrs = sorted(p for p in folder.glob("*.zarr") if p.is_dir() and not p.name.startswith(".")
                   and not any(p.name[: -len(".zarr")].endswith(f"_{k}") for k in IMAGE_KINDS))
    if not zarrs:
        return None
    if len(zarrs) > 1:
        named = [p for p in zarrs if p.name == f"{folder.name}.zarr"]
        if len(named) == 1:
            return named[0]
        raise SegmentError(f"several surface volumes in {folder}: {', '.join(p.name for p in zarrs)}; open one of "
                           f"them, or keep one named {folder.name}.zarr")
    return zarrs[0]


def open_zarr_image(path: Path) -> Any:
    """A 2D image stored as zarr (a villa label or mask): the array, or level 0 of an OME-Zarr group."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise SegmentError(f"{path} is not a readable zarr ({type(exc).__name__}: {exc})") from None
    if hasattr(node, "shape"):
        return node
    multiscales = ome_multiscales(dict(node.attrs))
    if multiscales is not None and multiscales[0].get("datasets"):
        return node[multiscales[0]["datasets"][0]["path"]]
    arrays = sorted(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]]
    raise SegmentError(f"zarr group {path} is not an image: it has no OME-Zarr multiscales and "
                       f"{len(arrays)} arrays ({', '.join(arrays) or 'none'})")


def _villa(folder: Path, volume: Path) -> Located:
    found = _zarr(volume)
    stem = volume.name[: -len(".zarr")]
    images: dict[str, Any] = {}
    for kind in IMAGE_KINDS:
        ref = found.images.get(kind) if not isinstance(found.images.get(kind), Path) else None
        if ref is None:  # not stored inside the volume's group: beside it
            side = find_sidecar(folder, stem, kind) or (find_sidecar(folder, folder.name, kind)
                                                         if folder.name != stem else None)
            ref = image_ref(side)
        images[kind] = ref
    return Located(folder.name, folder, "villa-folder", found.source, images, attrs=found.attrs, levels=found.levels)


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
    return zarr_located(path, node, name, lambda key, arr, label: zarr_source(path, key, arr, label), images)


def zarr_located(path: Any, node: Any, name: str, source_for: Any, images: dict[str, Any]) -> Located:
    """The segment in an opened zarr ``node`` (array or group) at ``path`` (a local path or a URL, see
    ``data.remote``); ``source_for(key, array, label)`` makes the volume source of the array ``key``
    (None: the node itself); ``images`` are the sidecar images found beside it."""
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
            source = source_for(datasets[0], group[datasets[0]], "OME-Zarr level 0")
            others = [source_for(d, group[d], f"OME-Zarr level {i + 1}") for i, d in enumerate(datasets[1:])]
            fmt = "ome-zarr"
        elif "volume" in group:
            source = source_for("volume", group["volume"], "zarr")
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
        source = source_for(None, node, "zarr")
        fmt = "zarr"
    return Located(name, path, fmt, source, images, attrs=attrs, levels=others)
