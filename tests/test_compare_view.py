"""The comparison view as a user gets it: through the Plugins menu (napari's PublicOnlyProxy viewer), on
a prediction store of three synthetic encoders over the synthetic fragment — a good one, a noisy one
and one that calls everything ink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_vesuvius_pt.data.blocks import block_fraction
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.engine.comparison import ALL_INK, all_ink_f05, load_comparison
from napari_vesuvius_pt.engine.prediction_store import PredictionStore, SegmentInfo

PLUGIN = "napari-vesuvius-pt"
GRID = 4  # stored pixel = 4x4 plane pixels, like a model with output stride 4


def write_store(path: Path, fragment: Path, encoders: dict[str, np.ndarray]) -> Path:
    seg = open_segment(fragment)
    store = PredictionStore.create(path, SegmentInfo.from_segment(seg))
    for name, probs in encoders.items():
        writer = store.start_array(name, probs.shape, (probs.shape[0], probs.shape[1]), "float16",
                                   {"plane_scale": GRID, "scale": [GRID, GRID],
                                    "translate": [(GRID - 1) / 2, (GRID - 1) / 2]}, run={})
        writer.write_band(probs.astype(np.float16))
        writer.finish()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, fragment_dir) -> Path:
    seg = open_segment(fragment_dir)
    ink = block_fraction(np.asarray(seg.inklabels) > 0, GRID)
    rng = np.random.default_rng(0)
    encoders = {
        "vicreg": np.clip(0.8 * ink + 0.2 * rng.random(ink.shape), 0, 1),
        "random": rng.random(ink.shape),
        "everything": np.full(ink.shape, 0.9),  # calls every pixel ink at any threshold below 0.9
    }
    return write_store(tmp_path_factory.mktemp("cmp") / "pred.zarr", fragment_dir, encoders)


def no_ink_box(fragment: Path, side: int = 32) -> list[np.ndarray]:
    """A square region (full-resolution (y, x)) inside the papyrus with no ink pixel."""
    seg = open_segment(fragment)
    ink, mask = np.asarray(seg.inklabels) > 0, seg.papyrus_mask()
    h, w = ink.shape
    for y in range(0, h - side, 8):
        for x in range(0, w - side, 8):
            if not ink[y:y + side, x:x + side].any() and mask[y:y + side, x:x + side].all():
                return [np.array([[y, x], [y, x + side], [y + side, x + side], [y + side, x]], float)]
    pytest.skip("the synthetic fragment has no ink-free square")


def plugin_viewer(make_napari_viewer):
    """The viewer as a plugin widget sees it (a PublicOnlyProxy), opened through the Plugins menu path."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict & compare")
    return viewer, widget


def test_overlay_outlines_labels_through_the_plugin_proxy_and_shows_one_prediction(make_napari_viewer, store,
                                                                                     fragment_dir):
    import napari.layers

    from napari_vesuvius_pt.ui.compare import show_comparison

    viewer, widget = plugin_viewer(make_napari_viewer)
    viewer.open(str(fragment_dir), plugin=PLUGIN)  # filled ink labels, as File > Open shows them
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # what the Plugins menu hands the widget
    made = show_comparison(widget.viewer, store, str(fragment_dir), mode="overlay")
    labels = [la for la in viewer.layers if isinstance(la, napari.layers.Labels) and la.name.endswith("ink labels")]
    assert labels and all(la.contour > 0 for la in labels if la.visible)
    assert viewer.layers[-1] in labels  # outlines drawn over the predictions
    predictions = [la for la in made if la.metadata.get("comparison") == "prediction"]
    assert len(predictions) == 3 and sum(la.visible for la in predictions) == 1
    assert all(la.blending != "additive" for la in predictions)
    from napari_vesuvius_pt.ui.compare import comparison_panel

    panel = comparison_panel(widget.viewer)
    panel.encoder_slider.setValue(1)  # switch to the second encoder
    assert [la.visible for la in predictions] == [False, True, False]
    # difference map on request: A − B of the stored probabilities
    panel.diff_a.setCurrentText("vicreg")
    panel.diff_b.setCurrentText("random")
    diff = panel.show_difference()
    cmp = load_comparison(store, str(fragment_dir))
    np.testing.assert_allclose(np.asarray(diff.data), cmp.difference("vicreg", "random"), atol=1e-6)


def test_side_by_side_is_one_titled_cell_per_encoder(make_napari_viewer, store, fragment_dir):
    from napari_vesuvius_pt.ui.compare import CELL_LAYERS, grid_of, show_comparison

    viewer, widget = plugin_viewer(make_napari_viewer)
    viewer.open(str(fragment_dir), plugin=PLUGIN)
    made = show_comparison(widget.viewer, store, str(fragment_dir), mode="side_by_side")
    grid = grid_of(viewer)
    assert grid.enabled
    layers = list(viewer.layers)
    cells = {grid.position(i, layers) for i in range(len(layers))} - {(-1, -1)}
    assert len(cells) == 3  # exactly one cell per encoder, no cell for the fragment's own layers
    rows, cols = grid.actual_shape(layers)
    assert rows * cols >= 3 and rows * cols < 3 + cols
    cmp = load_comparison(store, str(fragment_dir))
    for index, layer in enumerate(layers):
        if layer.visible:
            assert grid.position(index, layers) == divmod(layer.metadata["cell"], cols)
    for cell, encoder in enumerate(["vicreg", "random", "everything"]):
        in_cell = made[cell * CELL_LAYERS:(cell + 1) * CELL_LAYERS]
        kinds = [la.metadata.get("kind") or la.metadata.get("comparison") for la in in_cell]
        assert kinds == ["volume", "prediction", "inklabels", "cell"]
        assert in_cell[2].contour > 0  # the labels as outlines
        title = str(in_cell[3].text.values[0])
        assert encoder in title and f"F0.5 {cmp.predictions[encoder].metrics.f05:.3f}" in title


def test_table_has_the_all_ink_baseline_and_flags_an_encoder_at_it(make_napari_viewer, store, fragment_dir):
    from napari_vesuvius_pt.ui.compare import comparison_panel, show_comparison

    viewer, widget = plugin_viewer(make_napari_viewer)
    show_comparison(widget.viewer, store, str(fragment_dir))
    panel = comparison_panel(widget.viewer)
    rows = panel.rows()
    cmp = load_comparison(store, str(fragment_dir))
    p = cmp.prevalence
    assert 0 < p < 1
    baseline = rows[f"{ALL_INK} (baseline)"]
    assert float(baseline["F0.5"]) == pytest.approx(1.25 * p / (0.25 * p + 1), abs=1e-3)
    assert float(baseline["recall"]) == 1.0
    assert float(rows["everything"]["F0.5"]) == pytest.approx(all_ink_f05(p), abs=1e-3)
    assert float(rows["vicreg"]["F0.5"]) > float(baseline["F0.5"]) + 0.2
    assert any("everything scores at the all-ink baseline" in w for w in panel.warnings)
    assert not any(w.startswith("vicreg ") for w in panel.warnings)
    assert "everything" in panel.warning.text()
    # the threshold control: live binarised layers and scores at that threshold
    panel.binarise.setChecked(True)
    panel.threshold.setValue(0.6)
    shown = panel.prediction_layers()[0]
    assert shown.contrast_limits[1] == pytest.approx(0.6)
    at = panel.scores_at_threshold()
    probs, ink, scored = (cmp.predictions["vicreg"].probabilities, cmp.predictions["vicreg"].ink,
                          cmp.predictions["vicreg"].scored)
    called = (probs >= 0.6) & scored
    assert at["vicreg"]["precision"] == pytest.approx((called & ink).sum() / called.sum())
    assert "at threshold 0.60" in panel.at_threshold.text()
    assert panel.canvas.wait_drawn()  # the curves are drawn off the GUI thread
    assert len(panel.roc_ax.lines) == 4 and len(panel.pr_ax.lines) == 4  # 3 encoders + the chance line


def test_region_without_ink_warns(make_napari_viewer, store, fragment_dir):
    from napari_vesuvius_pt.ui.compare import comparison_panel, show_comparison

    viewer, widget = plugin_viewer(make_napari_viewer)
    show_comparison(widget.viewer, store, str(fragment_dir), region=no_ink_box(fragment_dir))
    panel = comparison_panel(widget.viewer)
    assert any("holds no ink" in w for w in panel.warnings)
    assert "holds no ink" in panel.warning.text()
    from napari_vesuvius_pt.engine import evaluation

    if hasattr(evaluation, "baseline_rows"):  # the linear z-profile baseline, trained outside the region
        assert "linear z-profile (baseline)" in panel.rows()


def test_seeds_are_reported_as_mean_and_sd(tmp_path, fragment_dir):
    seg = open_segment(fragment_dir)
    ink = block_fraction(np.asarray(seg.inklabels) > 0, GRID)
    rng = np.random.default_rng(1)
    encoders = {f"vicreg seed{s}": np.clip(0.7 * ink + 0.3 * rng.random(ink.shape), 0, 1) for s in range(3)}
    path = write_store(tmp_path / "seeds.zarr", fragment_dir, encoders)
    cmp = load_comparison(path, str(fragment_dir))
    assert list(cmp.encoders) == ["vicreg"]
    row = cmp.rows()[0]
    f = [cmp.predictions[n].metrics.f05 for n in encoders]
    assert row.seeds == 3 and row.mean["f05"] == pytest.approx(np.mean(f))
    assert row.sd["f05"] == pytest.approx(np.std(f, ddof=1))
