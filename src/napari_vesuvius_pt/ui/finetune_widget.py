"""Fine-tune dock widget: train an ink head (and optionally the encoder) on labeled fragments.

Validation is a whole fragment, or regions the user draws on any training fragment (chosen in "regions
on") in a "validation regions" Shapes layer; the regions are saved with that fragment's name and path. Shows the loss per step, F0.5 per epoch, and a preview layer of the
prediction over the validation tiles that is replaced after every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QPushButton, QWidget

from napari_vesuvius_pt.config import (
    ENCODER_NAMES,
    NORMALIZATIONS,
    OUTPUT_STRIDES,
    FinetuneConfig,
    TileConfig,
    merge,
)
from napari_vesuvius_pt.engine.events import EpochDone, Event, PreviewReady
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.ui.config_form import ConfigForm
from napari_vesuvius_pt.ui.device_choice import DeviceChoice
from napari_vesuvius_pt.ui.fields import (
    FILE_OR_FOLDER,
    FOLDER,
    PathField,
    PathList,
    combo,
    dspin,
    hrow,
    next_free_folder,
    spin,
)
from napari_vesuvius_pt.ui.job_panel import JobWidget
from napari_vesuvius_pt.ui.layers import (
    find_segment_layer,
    ink_labels_layer,
    outline_labels,
    plane_placement,
    show_only_segment,
)
from napari_vesuvius_pt.ui.plots import LivePlot, Panel
from napari_vesuvius_pt.ui.segment_registry import TRAIN, VALIDATION
from napari_vesuvius_pt.ui.warm_up import FIRST_OPTIMIZER

REGIONS_LAYER = "validation regions"
PREVIEW_LAYER = "ink preview"
REGIONS_FILE = "val_region.json"  # the engine keeps the regions under this name in the run folder
DEFAULT_RUN = Path(FinetuneConfig().out)  # under config.DEFAULT_RUNS_DIR
ORIGINS = (
    ("random", "random initialization"),
    ("k700", "Kinetics-700 weights file"),
    ("run", "pretraining run or checkpoint"),
)
VALIDATION_CHOICES = (("regions", "regions drawn on a training fragment"), ("fragment", "a whole validation fragment"),
                      ("mask", "the first fragment's validation mask"))


class FinetuneWidget(JobWidget):
    title = "Fine-tune"
    cli_name = "finetune"
    engine_modules = ("napari_vesuvius_pt.engine.finetuning", FIRST_OPTIMIZER)
    cli_hint = ("The run folder's config.yaml (the validation regions are kept beside it as val_region.json) "
                "repeats this job headless, into a new folder; vesuvius-pt finetune --resume RUN continues it.")

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        d = FinetuneConfig()
        self._offered: set[str] = set()
        self.fragments = PathList(FILE_OR_FOLDER, title="Add a labeled fragment")
        self.fragments.setToolTip("Fragments with ink labels; the validation regions lie on the one chosen in 'regions on'")
        self.region_on = QComboBox()
        self.region_on.setToolTip("The training fragment the validation regions are drawn on (saved with its name)")
        self.region_on.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.region_on.setMinimumContentsLength(12)
        self.validation = combo([v for v, _ in VALIDATION_CHOICES])
        for i, (_, text) in enumerate(VALIDATION_CHOICES):
            self.validation.setItemText(i, text)
        self.draw_button = QPushButton("Draw validation regions")
        self.draw_button.setToolTip(
            "Adds a 'validation regions' Shapes layer over the fragment chosen in 'regions on': draw rectangles or "
            "polygons on it. Tiles whose centre lies inside validate; tiles touching them are left out.")
        self.draw_button.clicked.connect(self.regions_layer)
        self.val_fragment = PathField(FILE_OR_FOLDER, "validation fragment", title="Validation fragment",
                                      suggestions=True)
        self.origin = combo([o for o, _ in ORIGINS], tip="Where the encoder's weights come from")
        for i, (_, text) in enumerate(ORIGINS):
            self.origin.setItemText(i, text)
        self.origin_path = PathField(FILE_OR_FOLDER, "weights file, run folder or checkpoint", title="Encoder weights")
        self.encoder = combo(ENCODER_NAMES, d.encoder.name, "Architecture (a run or checkpoint brings its own)")
        self.widen = dspin(0.125, 4.0, d.encoder.widen_factor, 3, 0.125, "Width multiplier")
        self.freeze = QCheckBox("freeze the encoder (train the head only)")
        self.output_stride = combo(OUTPUT_STRIDES, d.output_stride, "Ink is predicted at 1/stride of the tile size")
        self.tile_depth = spin(4, 128, d.tile.depth, "Layers per tile")
        self.tile_size = spin(16, 512, d.tile.size, "Tile side in pixels")
        self.tile_stride = spin(4, 512, d.tile.stride, "Grid stride of the tiles")
        self.epochs = spin(1, 10_000, d.epochs)
        self.batch_size = spin(1, 4096, d.batch_size)
        self.steps = spin(0, 1_000_000, 0, "Steps per epoch; 0 = one pass over the training tiles")
        self.steps.setSpecialValueText("one pass over the tiles")
        self.lr = dspin(1e-6, 10.0, d.optim.lr, 5, 1e-4)
        self.normalization = combo(NORMALIZATIONS, d.data.normalization, "Intensity normalization of the tiles")
        self.device = DeviceChoice()
        self.run_folder = PathField(FOLDER, "run folder", title="Run folder")
        self.resume = QCheckBox("continue the run in this folder")
        self.supervision_masks = QCheckBox("supervised pixels only")
        self.supervision_masks.setChecked(d.supervision_masks)
        self.supervision_masks.setToolTip("The fragments' supervision masks (villa's <id>_supervision_mask): only their pixels count in "
                                          "the loss and scores")
        self.ignore_masks = QCheckBox("leave out ignored pixels")
        self.ignore_masks.setChecked(d.ignore_masks)
        self.ignore_masks.setToolTip("The fragments' ignore masks (<id>_ignore_mask): their pixels (mislabeled, unsure) leave the "
                                     "loss and scores")

        f = self.form
        f.addRow("fragments", self.fragments)
        f.addRow("validation", self.validation)
        f.addRow("regions on", self.region_on)
        f.addRow("", self.draw_button)
        f.addRow("val. fragment", self.val_fragment)
        f.addRow("encoder from", self.origin)
        f.addRow("weights", self.origin_path)
        f.addRow("encoder", hrow(self.encoder, "width ×", self.widen))
        f.addRow("", self.freeze)
        f.addRow("epochs", hrow(self.epochs, "batch", self.batch_size))
        f.addRow("device", self.device)
        f.addRow("run folder", self.run_folder)
        f.addRow("", self.resume)
        a = self.advanced_form
        a.addRow("masks", self.supervision_masks)
        a.addRow("", self.ignore_masks)
        a.addRow("out stride", self.output_stride)
        a.addRow("tile", hrow(self.tile_depth, "×", self.tile_size, "stride", self.tile_stride))
        a.addRow("steps", self.steps)
        a.addRow("lr", self.lr)
        a.addRow("normalize", self.normalization)
        self.augment_form = ConfigForm(d.augment)  # typed fields from AugmentConfig (magicgui)
        self.augmentations = self.add_section("Augmentations (z-shift, flips, intensity, holes)",
                                              self.augment_form.native)
        self.validation.currentIndexChanged.connect(self._show_validation_fields)
        self.fragments.changed.connect(self._offer_region_fragments)
        self.region_on.currentIndexChanged.connect(self._region_fragment_chosen)
        self.origin.currentIndexChanged.connect(self._show_origin_fields)
        self._show_validation_fields()
        self._show_origin_fields()

        self.loss_plot = LivePlot([Panel("ink loss", ["loss", "bce", "dice"])], xlabel="step", height_per_panel=1.9)
        self.f05_plot = LivePlot([Panel("validation F0.5", ["f05", "baseline_f05"], ylabel="F0.5",
                                        labels={"f05": "F0.5 (best threshold)", "baseline_f05": "ink-prevalence baseline"})],
                                 xlabel="epoch", height_per_panel=1.9)
        self.add_training_plots(self.loss_plot, self.f05_plot)
        self.preview_layer = None

        self.finish_setup({
            "validation": self.validation, "origin": self.origin, "origin_path": self.origin_path,
            "encoder": self.encoder, "widen": self.widen, "freeze": self.freeze, "output_stride": self.output_stride,
            "tile_depth": self.tile_depth, "tile_size": self.tile_size, "tile_stride": self.tile_stride,
            "epochs": self.epochs, "batch_size": self.batch_size, "steps": self.steps, "lr": self.lr,
            "normalization": self.normalization, "device": self.device, "run_folder": self.run_folder,
            "supervision_masks": self.supervision_masks, "ignore_masks": self.ignore_masks,
            **self.augment_form.remembered("augment"),
        })
        self.run_folder.set_text(str(next_free_folder(self.run_folder.text() or DEFAULT_RUN)))

    def segments_changed(self, registry) -> None:
        new = [e for e in registry if e.key not in self._offered]
        self._offered.update(e.key for e in registry)
        self.fragments.offer(((str(e.path), e.label) for e in new if e.role == TRAIN), checked=True)
        self.fragments.offer((str(e.path), e.label) for e in registry if e.has_inklabels)
        self.val_fragment.set_suggestions((str(e.path), e.label) for e in registry if e.has_inklabels)
        validation = [e for e in new if e.role == VALIDATION]
        if validation and not self.val_fragment.text():
            self.val_fragment.set_text(str(validation[0].path))
            if REGIONS_LAYER not in self.viewer.layers:
                self.validation.setCurrentIndex(self.validation.findData("fragment"))

    # ---------------------------------------------------------------- form

    def _set_row_visible(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)
        label = self.form.labelForField(field)
        if label is not None:
            label.setVisible(visible)

    def _show_validation_fields(self) -> None:
        regions = self.validation.currentData() == "regions"
        self._set_row_visible(self.draw_button, regions)
        self._set_row_visible(self.region_on, regions)
        self._set_row_visible(self.val_fragment, self.validation.currentData() == "fragment")

    def _show_origin_fields(self) -> None:
        origin = self.origin.currentData()
        self._set_row_visible(self.origin_path, origin != "random")
        self.origin_path.edit.setPlaceholderText(
            "Kinetics-700 weights file (.pth)" if origin == "k700" else "pretraining run folder or checkpoint .pt")

    def _offer_region_fragments(self) -> None:
        """'regions on' lists the ticked training fragments, keeping the choice while it is still ticked."""
        paths = self.fragments.paths()
        chosen = self.region_on.currentData()
        labels = {p: (self.registry.get(p).label if self.registry.get(p) else Path(p).name) for p in paths}
        self.region_on.blockSignals(True)
        self.region_on.clear()
        for path in paths:
            self.region_on.addItem(labels[path], path)
            self.region_on.setItemData(self.region_on.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        self.region_on.setCurrentIndex(max(0, self.region_on.findData(chosen)) if paths else -1)
        self.region_on.blockSignals(False)
        if self.region_on.currentData() != chosen:
            self._region_fragment_chosen()

    def region_fragment(self) -> str:
        """The training fragment the validation regions are drawn on (the first one when none is chosen)."""
        fragments = self.fragments.paths()
        if not fragments:
            raise ConfigError("no training fragment chosen: add a labeled fragment and tick it")
        chosen = self.region_on.currentData()
        return chosen if chosen in fragments else fragments[0]

    def region_fragment_name(self) -> str:
        """The name the engine knows the region fragment by (it matches the saved path first)."""
        return self.registry.name_of(self.region_fragment())

    def _fragment_layer(self, path: str | None):
        if path is None:
            return None
        entry = self.registry.get(path)
        return find_segment_layer(self.viewer, path, entry.layer_names if entry else ())

    def _region_fragment_chosen(self) -> None:
        """Move the regions layer onto the chosen fragment and show that fragment (its drawn shapes keep
        their pixel coordinates: they are now regions of the chosen fragment)."""
        try:
            path = self.region_fragment()
        except ConfigError:
            return
        if self.registry.get(path) is not None:
            show_only_segment(self.viewer, path, [e.path for e in self.registry])
        if REGIONS_LAYER in self.viewer.layers:
            layer = self.viewer.layers[REGIONS_LAYER]
            scale, translate, _ = plane_placement(self._fragment_layer(path))
            layer.scale, layer.translate = scale, translate
            layer.metadata["segment_path"] = path
            layer.visible = True

    def regions_layer(self):
        """The 'validation regions' Shapes layer, created over the chosen training fragment if needed."""
        try:
            path = self.region_fragment()
        except ConfigError:
            path = None
        if REGIONS_LAYER in self.viewer.layers:
            layer = self.viewer.layers[REGIONS_LAYER]
            if path is not None and layer.metadata.get("segment_path") != path:
                self._region_fragment_chosen()
        else:
            scale, translate, extent = plane_placement(self._fragment_layer(path))
            layer = self.viewer.add_shapes(
                name=REGIONS_LAYER, ndim=2, scale=scale, translate=translate,
                edge_color="#ffd24a", face_color=[1.0, 0.82, 0.29, 0.18], edge_width=max(2.0, extent / 250.0),
                metadata={"segment_path": path, "kind": "regions"} if path else {"kind": "regions"},
            )
        layer.visible = True
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        return layer

    def drawn_polygons(self) -> list[np.ndarray]:
        """The drawn regions as (K, 2) (y, x) polygons in full-resolution fragment pixels (world coordinates)."""
        if REGIONS_LAYER not in self.viewer.layers:
            return []
        layer = self.viewer.layers[REGIONS_LAYER]
        scale = np.asarray(layer.scale[-2:], dtype=float)
        translate = np.asarray(layer.translate[-2:], dtype=float)
        return [np.asarray(shape, dtype=float)[:, -2:] * scale + translate for shape in layer.data]

    # ---------------------------------------------------------------- config

    def build_config(self) -> FinetuneConfig:
        fragments = self.fragments.paths()
        if not fragments:
            raise ConfigError("no training fragment chosen: add a labeled fragment and tick it")
        for path in fragments:
            if not Path(path).exists():
                raise ConfigError(f"fragment not found: {path}; check the path")
        out = self.run_folder.text()
        if not out:
            raise ConfigError("no run folder: choose where the checkpoints go")
        val_fragment = val_region = None
        resume = out if self.resume.isChecked() else None
        val_mask = self.validation.currentData() == "mask"
        if val_mask:
            pass  # the first fragment's own <id>_validation_mask (the engine says when it has none)
        elif self.validation.currentData() == "fragment":
            val_fragment = self.val_fragment.text()
            if not val_fragment or not Path(val_fragment).exists():
                raise ConfigError(f"validation fragment not found: {val_fragment or '(none given)'}")
        else:
            polygons = self.drawn_polygons()
            if polygons:
                val_region = str(Path(out) / REGIONS_FILE)  # written by job_starting
            elif resume and (Path(out) / REGIONS_FILE).is_file():
                val_region = str(Path(out) / REGIONS_FILE)
            else:
                raise ConfigError(
                    "no validation region drawn: press 'Draw validation regions' and draw at least one rectangle "
                    "or polygon on the fragment, or choose a whole validation fragment")
        origin = self.origin.currentData()
        if origin == "random":
            encoder_origin = "random"
        else:
            weights = self.origin_path.text()
            if not weights or not Path(weights).exists():
                raise ConfigError(f"encoder weights not found: {weights or '(none given)'}; choose the file or run folder")
            encoder_origin = f"k700:{weights}" if origin == "k700" else weights
        d = FinetuneConfig()
        return FinetuneConfig(
            fragments=fragments,
            val_fragment=val_fragment,
            val_region=val_region,
            val_mask=val_mask,
            supervision_masks=self.supervision_masks.isChecked(),
            ignore_masks=self.ignore_masks.isChecked(),
            out=out,
            encoder_origin=encoder_origin,
            encoder=merge(d.encoder, name=self.encoder.currentData(), widen_factor=self.widen.value()),
            freeze_encoder=self.freeze.isChecked(),
            output_stride=int(self.output_stride.currentData()),
            data=self.data_config_for(fragments + ([val_fragment] if val_fragment else []),
                                      self.normalization.currentData()),
            tile=TileConfig(depth=self.tile_depth.value(), size=self.tile_size.value(),
                            stride=self.tile_stride.value(), min_mask_fraction=d.tile.min_mask_fraction),
            augment=self.augment_form.value(),
            optim=merge(d.optim, lr=self.lr.value()),  # the defaults' warm-up and schedule, as the CLI has them
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            steps_per_epoch=self.steps.value() or None,
            device=self.device.value(),
            resume=resume,
        )

    def make_events(self, config: FinetuneConfig) -> Callable[[], Iterator[Event]]:
        def run() -> Iterator[Event]:
            from napari_vesuvius_pt.engine.finetuning import finetune

            return finetune(config)

        return run

    # ---------------------------------------------------------------- events

    def job_starting(self, config: FinetuneConfig) -> None:
        polygons = self.drawn_polygons()
        if config.val_region and polygons:
            from napari_vesuvius_pt.data.tiles import save_regions

            Path(config.out).mkdir(parents=True, exist_ok=True)
            save_regions(config.val_region, polygons, fragment=self.region_fragment_name(),
                         fragment_path=self.region_fragment())

    def handle_event(self, event: Event) -> None:
        # the loss and F0.5 plots are filled by JobWidget (add_training_plots)
        if isinstance(event, EpochDone):
            if "f05" in event.metrics:
                m = event.metrics
                self.status.setText(
                    f"Epoch {event.epoch}/{event.epochs}: F0.5 {m['f05']:.3f} at threshold {m.get('threshold', float('nan')):.2f}, "
                    f"precision {m.get('precision', float('nan')):.3f}, recall {m.get('recall', float('nan')):.3f}, "
                    f"AUC {m.get('auc', float('nan')):.3f}")
        elif isinstance(event, PreviewReady):
            self.show_preview(event)

    def show_preview(self, event: PreviewReady) -> None:
        """Replace the preview layer's data with the epoch's prediction, placed over the fragment."""
        name = PREVIEW_LAYER
        kwargs = {"scale": tuple(event.scale), "translate": tuple(event.translate)}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = event.array
            layer.scale = kwargs["scale"]
            layer.translate = kwargs["translate"]
        else:
            layer = self.viewer.add_image(
                event.array, name=name, colormap="magma", opacity=0.6, blending="additive",
                contrast_limits=(0.0, 1.0), **kwargs)
        layer.metadata["epoch"] = event.epoch
        on = event.segment_path or (self.config.fragments[0] if self.config else "")
        if on:
            layer.metadata["segment_path"] = on  # shown and hidden with the validation fragment
        self.preview_layer = layer
        # the fragment's ink labels as outlines over the preview, and the regions on top (still editable)
        layers = self.viewer.layers
        entry = self.registry.get(on) if on else None
        labels = ink_labels_layer(self.viewer, entry.layer_names) if entry else None
        if labels is not None:
            outline_labels(labels)
            layers.move(layers.index(labels), len(layers))
        if REGIONS_LAYER in layers:
            layers.move(layers.index(REGIONS_LAYER), len(layers))

    def job_done(self, outcome) -> None:
        if not self.resume.isChecked():
            self.run_folder.set_text(str(next_free_folder(self.run_folder.text())))
