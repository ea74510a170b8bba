"""Screenshots of the four job widgets in use, for the README: ``docs/screenshots/{pretrain,finetune,predict,cka}.png``.

Runs the real workflow on synthetic data with a small encoder (a few minutes on a CPU): load segments
with the Segments widget, pretrain, fine-tune from the pretraining run and from a random encoder on a
drawn validation region, predict both over a second fragment, CKA of the pretraining epochs. Needs a
display; headless: ``xvfb-run -a -s "-screen 0 1800x1100x24" python docs/make_screenshots.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WINDOW = (1640, 1000)


def wait(predicate, timeout: float = 1800.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the job did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 1.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=title, show=True)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def load_segment(viewer, path: Path, role: str, downsample: int = 1) -> None:
    """Load a segment the way a user does: the Segments widget, then close it."""
    from napari_vesuvius_pt.ui.segment_registry import registry_for
    from napari_vesuvius_pt.ui.segments_widget import SegmentsWidget

    widget = SegmentsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segments")
    widget.path.set_text(str(path))
    widget.downsample.setValue(downsample)
    widget.role.setCurrentIndex(widget.role.findData(role))
    registry = registry_for(viewer)
    try:
        wait(widget.load_button.isEnabled, timeout=300)  # the preview of the normalized layer is ready
        widget.load()
        wait(lambda: str(path) in registry and registry.get(path).role == role, timeout=300)
    except TimeoutError:
        raise TimeoutError(f"loading {path}: {widget.info.text()} / {widget.status.text()}") from None
    viewer.window.remove_dock_widget(widget)


def run_job(widget) -> None:
    assert widget.start(), widget.status.text()
    wait(lambda: widget.runner.state == "idle" and widget.runner.last_outcome is not None)
    outcome = widget.runner.last_outcome
    if outcome.status != "finished":
        raise RuntimeError(f"{widget.title}: {outcome.status}: {outcome.message}")
    settle(1.0)


def scroll_to_end(widget) -> None:
    """Scroll a job widget down to its plots (the form is above them)."""
    settle(0.5)
    bar = widget.scroll.verticalScrollBar()
    bar.setValue(bar.maximum())


def shoot(viewer, out: Path) -> None:
    from PIL import Image

    settle(1.5)
    image = viewer.screenshot(canvas_only=False, flash=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert("RGB").save(out, optimize=True)
    print(f"wrote {out} {image.shape[1]}x{image.shape[0]}")


def small_model(widget, epochs: int, steps: int, batch: int, tile: int = 32) -> None:
    widget.encoder.setCurrentIndex(widget.encoder.findData("resnet10"))
    widget.widen.setValue(0.5)
    widget.tile_depth.setValue(16)
    widget.tile_size.setValue(tile)
    widget.tile_stride.setValue(tile // 2)
    widget.epochs.setValue(epochs)
    widget.batch_size.setValue(batch)
    widget.steps.setValue(steps)
    widget.device.set_value("cpu")


def compare_shots(viewer, predict, out: Path) -> None:
    """The comparison view after a Predict & compare run: overlay, threshold, difference map, grid."""
    from napari_vesuvius_pt.ui.compare import comparison_panel

    wait(lambda: predict.comparison_layers is not None)  # laid out one layer per event-loop turn
    panel = comparison_panel(predict.viewer)
    panel.parent().raise_()
    best = max(panel.comparison.encoders, key=lambda e: panel.comparison.predictions[e].metrics.f05)
    panel.encoder_box.setCurrentText(best)
    shoot(viewer, out / "compare_overlay.png")
    panel.binarise.setChecked(True)
    panel.threshold.setValue(panel.comparison.predictions[best].metrics.threshold)
    shoot(viewer, out / "compare_threshold.png")
    panel.binarise.setChecked(False)
    names = list(panel.comparison.encoders)
    panel.diff_a.setCurrentText(best)
    panel.diff_b.setCurrentText(next(n for n in names if n != best))
    panel.show_difference()
    for layer in panel.prediction_layers():
        layer.visible = False
    shoot(viewer, out / "compare_difference.png")
    predict.side_by_side.setChecked(True)
    wait(lambda: predict.comparison_layers is not None)
    shoot(viewer, out / "compare_grid.png")
    predict.side_by_side.setChecked(False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "screenshots")
    parser.add_argument("--work", type=Path, default=None, help="where data and runs go (default: a temp folder)")
    parser.add_argument("--epochs", type=int, default=6, help="pretraining epochs")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--reuse-runs", action="store_true",
                        help="use the pretraining and fine-tuning runs already in --work (no Pretrain/Fine-tune shots)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="vesuvius-shots-"))
    os.environ.setdefault("NAPARI_VESUVIUS_PT_SETTINGS", str(work / "widgets.json"))  # leave the user's alone

    from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment
    from napari_vesuvius_pt.ui.cka_widget import CKAWidget
    from napari_vesuvius_pt.ui.finetune_widget import FinetuneWidget
    from napari_vesuvius_pt.ui.predict_widget import PredictWidget
    from napari_vesuvius_pt.ui.pretrain_widget import PretrainWidget
    from napari_vesuvius_pt.ui.segment_registry import PRETRAIN, TRAIN, VALIDATION

    data = work / "data"

    def made(synth, path: Path, **kwargs) -> Path:
        return path if args.reuse_runs and path.is_dir() else write_segment(synth, path, **kwargs)

    fragment = made(make_fragment((24, 320, 320), seed=0), data / "fragment-a")
    fragment_b = made(make_fragment((24, 320, 320), seed=1), data / "fragment-b")
    scroll = made(make_scroll_segment((24, 320, 320), seed=2), data / "scroll-segment", layout="layers")
    runs = work / "runs"

    from napari_vesuvius_pt.data.segment import open_segment

    if not (args.reuse_runs and (runs / "ink-vicreg").is_dir()):
        # ---- Pretrain: VICReg on the scroll segment
        viewer = new_viewer("napari-vesuvius-pt: Pretrain")
        load_segment(viewer, scroll, PRETRAIN)
        pretrain = PretrainWidget(viewer)
        viewer.window.add_dock_widget(pretrain, name="Pretrain")
        small_model(pretrain, epochs=args.epochs, steps=8, batch=8)
        pretrain.run_folder.set_text(str(runs / "vicreg"))
        run_job(pretrain)
        viewer.layers.selection.active = viewer.layers[scroll.name]
        scroll_to_end(pretrain)
        shoot(viewer, args.out / "pretrain.png")
        viewer.close()

        # ---- Fine-tune: from the VICReg run, validated on the lower 30% of the fragment
        viewer = new_viewer("napari-vesuvius-pt: Fine-tune")
        load_segment(viewer, fragment, TRAIN)
        finetune = FinetuneWidget(viewer)
        viewer.window.add_dock_widget(finetune, name="Fine-tune")
        small_model(finetune, epochs=args.finetune_epochs, steps=10, batch=8, tile=64)
        finetune.output_stride.setCurrentIndex(finetune.output_stride.findData(4))
        finetune.lr.setValue(0.003)
        shapes = finetune.regions_layer()
        # validate on the last line of writing: the rows from 60% of the way through the inked rows down
        from napari_vesuvius_pt.data.segment import open_segment

        ink_rows = np.nonzero(np.asarray(open_segment(fragment).inklabels).any(axis=1))[0]
        top = int(ink_rows[0] + 0.6 * (ink_rows[-1] - ink_rows[0]))
        shapes.add_rectangles(np.array([[top, 0], [ink_rows[-1] + 8, 319]]))
        finetune.origin.setCurrentIndex(finetune.origin.findData("random"))
        finetune.run_folder.set_text(str(runs / "ink-random"))
        run_job(finetune)
        finetune.origin.setCurrentIndex(finetune.origin.findData("run"))
        finetune.origin_path.set_text(str(runs / "vicreg"))
        finetune.run_folder.set_text(str(runs / "ink-vicreg"))
        run_job(finetune)
        viewer.layers.selection.active = viewer.layers["ink preview"]
        scroll_to_end(finetune)
        shoot(viewer, args.out / "finetune.png")
        viewer.close()

    # ---- Predict & compare: both encoders over the unseen fragment, opened as the Plugins menu opens it
    viewer = new_viewer("napari-vesuvius-pt: Predict & compare")
    load_segment(viewer, fragment_b, VALIDATION)
    _, predict = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Predict & compare")
    predict.segment.set_text(str(fragment_b))
    predict.checkpoints.add(runs / "ink-random")
    predict.checkpoints.add(runs / "ink-vicreg")
    predict.out.set_text(str(work / "predictions" / "fragment-b.zarr"))
    predict.edge.setValue(8)
    predict.batch_size.setValue(32)
    predict.device.set_value("cpu")
    run_job(predict)
    shoot(viewer, args.out / "predict.png")
    compare_shots(viewer, predict, args.out)
    viewer.close()

    # ---- Embedding explorer: random vs the last VICReg epoch on the unseen fragment, one shared PCA basis
    viewer = new_viewer("napari-vesuvius-pt: Embedding explorer")
    load_segment(viewer, fragment_b, VALIDATION)
    _, explorer = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Embedding explorer")
    explorer.segment.set_text(str(fragment_b))
    explorer.run.set_text(str(runs / "vicreg"))
    explorer.epoch.setValue(args.epochs)
    explorer._add_run_epoch()
    box = np.array([[40, 40], [40, 280], [280, 280], [280, 40]])
    viewer.add_shapes([box], shape_type="polygon", name="explore here", edge_color="cyan", face_color="transparent")
    explorer.region.setCurrentIndex(explorer.region.findData("layer:explore here"))
    explorer.tile_size.setValue(32)
    explorer.device.set_value("cpu")
    run_job(explorer)
    ink = np.asarray(open_segment(fragment_b).inklabels)
    ys, xs = np.nonzero(ink[40:280, 40:280])
    explorer.show_box.setCurrentIndex(1)  # the VICReg encoder
    viewer.layers["explore here"].visible = False
    viewer.layers[f"{fragment_b.name} ink labels"].contour = 1  # outlines: the colours stay readable
    shoot(viewer, args.out / "embedding.png")
    explorer.probe_at((float(ys[len(ys) // 2] + 40), float(xs[len(xs) // 2] + 40)))  # a click on an ink stroke
    shoot(viewer, args.out / "embedding_similarity.png")
    viewer.close()

    # ---- CKA: the pretraining epochs against each other and a random encoder
    viewer = new_viewer("napari-vesuvius-pt: CKA")
    load_segment(viewer, scroll, PRETRAIN)
    cka = CKAWidget(viewer)
    viewer.window.add_dock_widget(cka, name="CKA")
    cka.run.set_text(str(runs / "vicreg"))
    cka.random_reference.setChecked(True)
    cka.segment.set_text(str(scroll))
    cka.tiles.setValue(128)
    cka.device.set_value("cpu")
    run_job(cka)
    viewer.layers.selection.active = viewer.layers[scroll.name]
    shoot(viewer, args.out / "cka.png")
    viewer.close()
    print(f"runs and data in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
