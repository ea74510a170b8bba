"""The one resume-drift check: ``--resume`` continues a run only with the settings that made it.

A resumed run restores its optimizer, schedule, RNG and normalization from the checkpoint, so a changed
learning rate, seed, data list or normalization would be applied partly (or not at all) while
``config.yaml`` recorded the new value: the saved config would no longer reproduce the run. So every
setting that changes a run's results must be the run's own; only the ones listed in :data:`SAFE` may
change (more epochs, another device, workers, read-ahead, where the run's folder now lives). What did
change is returned, and the run records it (``RunFolder.record_resume``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_vesuvius_pt.config import to_dict
from napari_vesuvius_pt.errors import RunError

# settings a resume may change: they do not alter what the run computes
SAFE = frozenset({"epochs", "device", "num_workers", "prefetch", "resume", "out"})
# settings holding paths (compared after resolving them, so "./a" and "/abs/a" are the same file)
PATH_KEYS = frozenset({"segments", "fragments", "val_fragment"})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "normalization_params":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _norm_path(p: Any) -> Any:
    if isinstance(p, str) and p and ":" not in p.split("/", 1)[0]:
        return os.path.normpath(os.path.abspath(os.path.expanduser(p)))
    return p


def _normalized(key: str, value: Any) -> Any:
    top = key.split(".", 1)[0]
    if top in PATH_KEYS:
        return [_norm_path(v) for v in value] if isinstance(value, list) else _norm_path(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # 1 and 1.0 are the same learning rate
    return value


def _same_regions(a: Any, b: Any) -> bool:
    """Two polygon files holding the same polygons (a fine-tuning run keeps a copy of its own)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    from napari_vesuvius_pt.data.tiles import load_regions, region_fragment
    from napari_vesuvius_pt.errors import VesuviusError

    try:
        pa, pb = load_regions(a), load_regions(b)
    except (VesuviusError, OSError, ValueError):
        return False
    (na, _), (nb, _) = region_fragment(a), region_fragment(b)
    if na and nb and na != nb:
        return False  # the same polygons on another fragment
    return len(pa) == len(pb) and all(x.shape == y.shape and (x == y).all() for x, y in zip(pa, pb))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def resume_changes(cfg: Any, payload: dict[str, Any], where: Path, run_dir: Path,
                   ignore: frozenset[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    """The safe settings ``cfg`` changes against the checkpoint's ``config`` ({key: (before, now)}).

    Raises :class:`RunError` naming the first setting that would change the run's results (all of them,
    when several do). ``ignore`` lists further keys the caller compares itself (a run's own copies).
    """
    saved = payload.get("config")
    if not isinstance(saved, dict):
        return {}  # an old checkpoint without its config: nothing to compare
    before, now = _flatten(saved), _flatten(to_dict(cfg))
    changed: dict[str, tuple[Any, Any]] = {}
    refused: list[str] = []
    for key, value in now.items():
        if key not in before or key in ignore:
            continue
        old = before[key]
        if _normalized(key, old) == _normalized(key, value) or (key == "val_region" and _same_regions(old, value)):
            continue
        if key.split(".", 1)[0] in SAFE:
            if key == "out":
                # the run's folder is where it is resumed from; another --out would be ignored, so refuse it
                # (a folder that was moved keeps its old path in config.yaml: that is no change)
                if _norm_path(value) not in (_norm_path(str(run_dir)), _norm_path(old)):
                    raise RunError(f"cannot resume {run_dir} into --out {value}: a resumed run writes into its own "
                                   "folder; drop --out, or start a new run there")
                continue
            if key != "resume":
                changed[key] = (old, value)
            continue
        refused.append(f"{key}={_show(value)} (the run has {_show(old)})")
    if refused:
        raise RunError(
            f"cannot resume {where} with changed setting(s) that would change its results: " + "; ".join(refused)
            + "; resume with the run's own config.yaml (only epochs, device, num_workers and prefetch may change), "
              "or start a new run with the new settings"
        )
    return changed

