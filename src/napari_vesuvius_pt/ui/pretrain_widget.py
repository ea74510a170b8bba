"""Pretrain dock widget: VICReg pretraining of a 3D ResNet on scroll segments, in the background.

Shows the VICReg loss and its three terms per step, and the collapse monitor (embedding standard
deviation and effective rank of the embeddings) per epoch, and, with a probe fragment and its regions,
the online probe's F0.5 and AUC per epoch (engine/online_probe.py). Stop leaves a checkpoint in the run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QLabel, QWidget

from napari_vesuvius_pt.config import (
    ENCODER_NAMES,
    NORMALIZATIONS,
    OPTIMIZERS,
    EncoderConfig,
    OptimConfig,
    PretrainConfig,
    TileConfig,
)
from napari_vesuvius_pt.engine.events import EpochDone, Event
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.ui.config_form import ConfigForm
from napari_vesuvius_pt.ui.device_choice import DeviceChoice
from napari_vesuvius_pt.ui.fields import FILE, FILE_OR_FOLDER, FOLDER, PathField, PathList, combo, dspin, hrow, next_free_folder, spin
from napari_vesuvius_pt.ui.job_panel import JobWidget
from napari_vesuvius_pt.ui.plots import LivePlot, Panel
from napari_vesuvius_pt.ui.segment_registry import PRETRAIN
from napari_vesuvius_pt.ui.warm_up import FIRST_OPTIMIZER

TERMS = ("invariance", "variance", "covariance")
DEFAULT_RUN = Path(PretrainConfig().out)  # under config.DEFAULT_RUNS_DIR


class PretrainWidget(JobWidget):
    title = "Pretrain"
    cli_name = "pretrain"
    engine_modules = ("napari_vesuvius_pt.engine.pretraining", FIRST_OPTIMIZER)
    cli_hint = ("The run folder's config.yaml repeats this job headless, into a new folder; "
                "vesuvius-pt pretrain --resume RUN continues the run instead.")

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        d = PretrainConfig()
        self._offered: set[str] = set()
        self.segments = PathList(FILE_OR_FOLDER, title="Add a scroll segment or fragment")
        self.segments.setToolTip("Unlabeled scroll segments (and fragments, whose labels are not used)")
        self.encoder = combo(ENCODER_NAMES, d.encoder.name, "3D ResNet trunk (MONAI)")
        self.widen = dspin(0.125, 4.0, d.encoder.widen_factor, 3, 0.125, "Width multiplier of every stage")
        self.tile_depth = spin(4, 128, d.tile.depth, "Layers per tile")
        self.tile_size = spin(16, 512, d.tile.size, "Tile side in pixels")
        self.tile_stride = spin(4, 512, d.tile.stride, "Grid stride of the tiles")
        self.epochs = spin(1, 10_000, d.epochs)
        self.batch_size = spin(2, 4096, d.batch_size, "VICReg needs at least 2 samples per batch")
        self.steps = spin(0, 1_000_000, 0, "Steps per epoch; 0 = one pass over the tiles")
        self.steps.setSpecialValueText("one pass over the tiles")
        self.optimizer = combo(OPTIMIZERS, d.optim.name)
        self.lr = dspin(1e-6, 10.0, d.optim.lr, 5, 0.005)
        self.normalization = combo(NORMALIZATIONS, d.data.normalization, "Intensity normalization of the tiles")
        self.device = DeviceChoice()
        self.run_folder = PathField(FOLDER, "run folder", title="Run folder")
        self.resume = QCheckBox("continue the run in this folder")
        self.resume.setToolTip("Resume from the folder's last checkpoint (same as --resume RUN)")
        self.probe_fragment = PathField(FILE_OR_FOLDER, "labeled fragment (optional)", title="Probe fragment")
        self.probe_fragment.setToolTip("Online probe: a frozen linear probe scores ink on this fragment every epoch")
        self.probe_region = PathField(FILE, "regions JSON/CSV on it", title="Probe regions")
        self.probe_region.setToolTip("Validation polygons on the probe fragment (JSON or a Shapes CSV); "
                                     "the rest of the fragment fits the probe")

        f = self.form
        f.addRow("segments", self.segments)
        f.addRow("encoder", hrow(self.encoder, "width ×", self.widen))
        f.addRow("epochs", hrow(self.epochs, "batch", self.batch_size))
        f.addRow("probe", hrow(self.probe_fragment, self.probe_region))
        f.addRow("device", self.device)
        f.addRow("run folder", self.run_folder)
        f.addRow("", self.resume)
        a = self.advanced_form
        a.addRow("tile", hrow(self.tile_depth, "×", self.tile_size, "stride", self.tile_stride))
        a.addRow("steps", self.steps)
        a.addRow("optimizer", hrow(self.optimizer, "lr", self.lr))
        a.addRow("normalize", self.normalization)
        # the two views' z-shift and every augmentation, typed fields from AugmentConfig (magicgui)
        self.augment_form = ConfigForm(d.augment)
        self.augmentations = self.add_section("Augmentations (z-shift, flips, intensity, holes)",
                                              self.augment_form.native)

        self.loss_plot = LivePlot([Panel("VICReg loss and its terms", ["loss", *TERMS], log=True)],
                                  xlabel="step", height_per_panel=2.0)
        self.collapse_plot = LivePlot(
            [Panel("collapse monitor", ["embedding_std"], ylabel="std",
                   secondary=["effective_rank"], secondary_label="effective rank"),
             Panel("online probe (frozen encoder)", ["probe_f05", "probe_auc"],
                   labels={"probe_f05": "F0.5", "probe_auc": "AUC"})],
            xlabel="epoch", height_per_panel=1.8)
        self.add_training_plots(self.loss_plot, self.collapse_plot)
        self.collapse_note = QLabel()  # models.vicreg.collapse_warning, in words, under the monitor
        self.collapse_note.setWordWrap(True)
        self.collapse_note.setStyleSheet("color: #ffb000;")
        self.collapse_note.setVisible(False)
        self.results.addWidget(self.collapse_note)
        self._epoch_metrics: list[dict[str, float]] = []

        self.finish_setup({
            "encoder": self.encoder, "widen": self.widen, "tile_depth": self.tile_depth, "tile_size": self.tile_size,
            "tile_stride": self.tile_stride, "epochs": self.epochs, "batch_size": self.batch_size, "steps": self.steps,
            "optimizer": self.optimizer, "lr": self.lr, **self.augment_form.remembered("augment"),
            "normalization": self.normalization, "device": self.device,
            "run_folder": self.run_folder,
        })
        self.run_folder.set_text(str(next_free_folder(self.run_folder.text() or DEFAULT_RUN)))

    def segments_changed(self, registry) -> None:
        # pretraining segments ticked; other loaded segments offered (fragments can pretrain without labels)
        new = [e for e in registry.with_role(PRETRAIN) if e.key not in self._offered]
        self.segments.offer(((str(e.path), e.label) for e in new), checked=True)
        if new and not self._offered:
            self.normalization.setCurrentIndex(max(0, self.normalization.findData(new[0].normalization)))
        self.segments.offer((str(e.path), e.label) for e in registry if e.role != PRETRAIN)
        self._offered.update(e.key for e in registry)

    # ---------------------------------------------------------------- config

    def build_config(self) -> PretrainConfig:
        segments = self.segments.paths()
        if not segments:
            raise ConfigError("no segment chosen: add a scroll segment (folder, TIFF or zarr) and tick it")
        missing = [s for s in segments if not Path(s).exists()]
        if missing:
            raise ConfigError(f"segment not found: {missing[0]}; check the path")
        out = self.run_folder.text()
        if not out:
            raise ConfigError("no run folder: choose where the checkpoints go")
        d = PretrainConfig()
        return PretrainConfig(
            segments=segments,
            out=out,
            encoder=EncoderConfig(name=self.encoder.currentData(), widen_factor=self.widen.value()),
            data=self.data_config_for(segments, self.normalization.currentData()),
            tile=TileConfig(depth=self.tile_depth.value(), size=self.tile_size.value(),
                            stride=self.tile_stride.value(), min_mask_fraction=d.tile.min_mask_fraction),
            augment=self.augment_form.value(),
            optim=OptimConfig(name=self.optimizer.currentData(), lr=self.lr.value()),
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            steps_per_epoch=self.steps.value() or None,
            device=self.device.value(),
            resume=out if self.resume.isChecked() else None,
            probe_fragment=self.probe_fragment.text() or None,
            probe_region=self.probe_region.text() or None,
        )

    def make_events(self, config: PretrainConfig) -> Callable[[], Iterator[Event]]:
        def run() -> Iterator[Event]:
            from napari_vesuvius_pt.engine.pretraining import pretrain

            return pretrain(config)

        return run

    # ---------------------------------------------------------------- events (the plots: JobWidget)

    def job_starting(self, config: PretrainConfig) -> None:
        self._epoch_metrics = []
        self.collapse_note.setVisible(False)

    def handle_event(self, event: Event) -> None:
        if isinstance(event, EpochDone):
            from napari_vesuvius_pt.models.vicreg import collapse_warning

            self._epoch_metrics.append(dict(event.metrics))
            warning = collapse_warning(self._epoch_metrics)
            self.collapse_note.setText(f"⚠ {warning}" if warning else "")
            self.collapse_note.setVisible(bool(warning))

    def job_done(self, outcome) -> None:
        if not self.resume.isChecked():
            self.run_folder.set_text(str(next_free_folder(self.run_folder.text())))
