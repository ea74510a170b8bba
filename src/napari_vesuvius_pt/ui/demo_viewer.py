"""``vesuvius-pt demo --gui``: napari with the plugin's widgets and the demo's data and results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLUGIN = "napari-vesuvius-pt"
WIDGETS = ("Segments", "Pretrain", "Fine-tune", "Predict & compare", "CKA", "Embedding explorer")


def load_demo_into(viewer: Any, out: Path, summary: dict[str, Any]) -> None:
    """Add the validation fragment, its labels, each encoder's prediction and the validation region."""
    import numpy as np

    from napari_vesuvius_pt.data.tiles import load_regions

    fragment = summary["fragments"][0]
    viewer.open(fragment, plugin=PLUGIN)
    prediction = Path(summary["prediction"])
    if prediction.exists():
        viewer.open(str(prediction), plugin=PLUGIN)
    region = Path(out) / "validation_region.json"
    if region.is_file():
        viewer.add_shapes([np.asarray(p) for p in load_regions(region)], shape_type="polygon",
                          name="validation regions", edge_color="cyan", face_color="transparent", edge_width=2)
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    if prediction.exists():  # the encoders laid out for comparison, with its panel (tabified with the docks)
        from napari_vesuvius_pt.ui.compare import show_comparison
        from napari_vesuvius_pt.ui.notify import reporting_errors

        with reporting_errors("demo: comparison view"):
            show_comparison(viewer, prediction, fragment, region=region if region.is_file() else None)


def show_demo(out: Path, summary: dict[str, Any] | None = None) -> None:
    import napari

    if summary is None:
        summary = json.loads((Path(out) / "summary.json").read_text())
    viewer = napari.Viewer(title="napari-vesuvius-pt demo")
    load_demo_into(viewer, Path(out), summary)
    napari.run()
