"""Embedding explorer dock: what each encoder learned, on the fragment.

For the chosen encoders (random, a Kinetics-700 file, a VICReg run and epoch, any checkpoint) and a
region (the whole plane or the bounding box of a Shapes layer), ``engine.features.explore_features``
runs in a worker, tile by tile with progress, and gives each encoder's per-position features. Each
becomes an RGB layer (the first three components of one PCA basis shared by all the encoders, so a
colour means the same feature direction in every picture) and a layer of cosine similarity to a
clicked position, updated on each click (tick "probe on click" and click on the canvas). One encoder
is shown at a time; the switch chooses which.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QLabel, QPushButton, QWidget

from napari_vesuvius_pt.config import FEATURE_LAYERS, DataConfig, FeaturesConfig, TileConfig
from napari_vesuvius_pt.engine.features import FeaturesReady, cosine_similarity, explore_features, position_of
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.ui.device_choice import DeviceChoice
from napari_vesuvius_pt.ui.fields import FILE_OR_FOLDER, FOLDER, PathField, PathList, combo, hrow, spin
from napari_vesuvius_pt.ui.job_panel import JobWidget
from napari_vesuvius_pt.ui.layers import is_layer

WHOLE, LAYER_PREFIX = "whole", "layer:"
EXPLORER_KEY = "embedding"  # layer.metadata key of the layers this dock made


class EmbeddingWidget(JobWidget):
    title = "Embedding explorer"
    cli_name = "features"
    start_text = "Compute features"
    part_name = "encoder"
    cli_hint = "Writes each encoder's features and shared-PCA colours to a zarr."

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        d = FeaturesConfig()
        self.segment = PathField(FILE_OR_FOLDER, "segment or fragment", title="Segment", suggestions=True)
        self.region = combo([WHOLE], tip="The whole plane, or the bounding box of a Shapes layer's shapes")
        self.region.setItemText(0, "whole segment")
        self.encoders = PathList(FILE_OR_FOLDER, title="Add a Kinetics-700 file, run or checkpoint")
        self.encoders.add("random", label="random (the first loaded encoder's architecture)")
        self.run = PathField(FOLDER, "VICReg run folder", title="VICReg run")
        self.epoch = spin(1, 10_000, 1, "The epoch of the run (checkpoints/epoch_NNN.pt)")
        self.epoch.setMaximumWidth(70)
        self.add_epoch = QPushButton("add epoch")
        self.add_epoch.setToolTip("Add RUN@EPOCH: that epoch's checkpoint of the run")
        self.add_epoch.clicked.connect(self._add_run_epoch)
        self.layer = combo(FEATURE_LAYERS, d.layer, "The stage whose feature map is shown (averaged over depth)")
        self.tile_size = spin(16, 512, d.tile.size, "Tile side read per encoder pass (pixels)")
        self.tile_depth = spin(1, 256, d.tile.depth, "Layers per tile, centred in the segment's depth")
        self.device = DeviceChoice()
        f = self.form
        f.addRow("segment", self.segment)
        f.addRow("region", self.region)
        f.addRow("encoders", self.encoders)
        f.addRow("run", hrow(self.run, self.epoch, self.add_epoch))
        f.addRow("stage", hrow(self.layer, "tile", self.tile_size, "depth", self.tile_depth))
        f.addRow("device", self.device)

        self.show_box = QComboBox()
        self.show_box.setToolTip("The encoder whose features and similarity the canvas shows")
        self.show_box.currentIndexChanged.connect(self._show_encoder)
        self.probe = QCheckBox("probe on click (cosine similarity to the clicked position)")
        self.probe.setChecked(True)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.results.addWidget(hrow("show", self.show_box))
        self.results.addWidget(self.probe)
        self.results.addWidget(self.summary)

        self.result: FeaturesReady | None = None
        self.layers_made: dict[str, tuple[Any, Any]] = {}
        self.marker = None
        self.shown = False  # the result's layers are all in the viewer
        self._cancel_layers: Callable[[], None] | None = None
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.viewer.layers.events.inserted.connect(self._refresh_regions)
        self.viewer.layers.events.removed.connect(self._refresh_regions)
        self._refresh_regions()
        self.finish_setup({"layer": self.layer, "tile_size": self.tile_size, "tile_depth": self.tile_depth,
                           "device": self.device})

    def segments_changed(self, registry) -> None:
        entries = list(registry)
        self.segment.set_suggestions((str(e.path), e.label) for e in entries)
        if entries and not self.segment.text():
            self.segment.set_text(str(entries[0].path))

    def _add_run_epoch(self) -> None:
        run = self.run.text()
        if run:
            self.encoders.add(f"{run}@{self.epoch.value()}", label=f"{Path(run).name} epoch {self.epoch.value()}")

    def _refresh_regions(self, *_args) -> None:
        if self._closing:
            return
        current = self.region.currentData()
        self.region.blockSignals(True)
        while self.region.count() > 1:
            self.region.removeItem(1)
        for layer in self.viewer.layers:
            if is_layer(layer, "Shapes"):
                self.region.addItem(f"Shapes layer '{layer.name}' (bounding box)", LAYER_PREFIX + layer.name)
        self.region.setCurrentIndex(max(0, self.region.findData(current)))
        self.region.blockSignals(False)

    def _region_box(self) -> list[int] | None:
        source = self.region.currentData() or WHOLE
        if not source.startswith(LAYER_PREFIX):
            return None
        name = source[len(LAYER_PREFIX):]
        if name not in self.viewer.layers:
            raise ConfigError(f"the Shapes layer {name!r} is gone; choose another region")
        layer = self.viewer.layers[name]
        if not len(layer.data):
            raise ConfigError(f"the Shapes layer {name!r} holds no shapes; draw a rectangle on it")
        pts = np.concatenate([np.asarray(s, float)[:, -2:] * np.asarray(layer.scale[-2:]) + np.asarray(layer.translate[-2:])
                              for s in layer.data])
        (y0, x0), (y1, x1) = pts.min(0), pts.max(0)
        return [int(np.floor(y0)), int(np.floor(x0)), int(np.ceil(y1)), int(np.ceil(x1))]

    # ---------------------------------------------------------------- job

    def build_config(self) -> FeaturesConfig:
        segment = self.segment.text()
        if not segment:
            raise ConfigError("no segment chosen: choose the segment or fragment to explore")
        if not Path(segment).exists():
            raise ConfigError(f"segment not found: {segment}; check the path")
        encoders = self.encoders.paths()
        if not encoders:
            raise ConfigError("no encoder ticked: tick random or add a Kinetics-700 file, run or checkpoint")
        entry = self.registry.get(segment)
        data = entry.data_config() if entry is not None else DataConfig()
        size = self.tile_size.value()
        return FeaturesConfig(encoders=encoders, segment=segment, region=self._region_box(),
                              layer=self.layer.currentData(), data=data,
                              tile=TileConfig(depth=self.tile_depth.value(), size=size, stride=size),
                              device=self.device.value())

    def make_events(self, config: FeaturesConfig) -> Callable[[], Iterator[Any]]:
        return lambda: explore_features(config)

    def planned_epochs(self, config: FeaturesConfig) -> int:
        return 1

    def cli_command(self, config: FeaturesConfig) -> str:
        args = ["vesuvius-pt", "features", *config.encoders, "--segment", config.segment]
        if config.region:
            args += ["--region", ",".join(str(v) for v in config.region)]
        args += ["--layer", config.layer, "--tile-size", str(config.tile.size), "--tile-depth",
                 str(config.tile.depth), "--device", config.device, "--out", "FEATURES.zarr"]
        return shlex.join(args)

    def job_starting(self, config: FeaturesConfig) -> None:
        self.summary.setText("")

    def handle_event(self, event: Any) -> None:
        from napari_vesuvius_pt.engine.events import Started, TilesDone

        if isinstance(event, Started):
            self._total, self._done = int(event.total_steps or 0), {}
        elif isinstance(event, TilesDone):
            self._done[event.name] = event.done
            done = sum(self._done.values())
            self.progress.show_run(done, max(self._total, done), f"{event.tiles_per_s:.1f} tiles/s")
        elif isinstance(event, FeaturesReady):
            self.show_result(event, in_turns=True)

    # ---------------------------------------------------------------- layers

    def show_result(self, result: FeaturesReady, in_turns: bool = False) -> None:
        """The encoders' feature and similarity layers; ``in_turns``: one layer per turn of the event loop
        (``ui.in_turns``), as at the end of a job, so the viewer keeps responding; ``shown`` is set then."""
        from napari_vesuvius_pt.ui.in_turns import run_in_turns, run_now
        from napari_vesuvius_pt.ui.notify import notify_error

        if self._cancel_layers is not None:
            self._cancel_layers()
            self._cancel_layers = None
        self.shown = False
        if in_turns:
            self._cancel_layers = run_in_turns(self._result_steps(result),
                                               failed=lambda exc: notify_error(exc, "Embedding explorer"))
        else:
            run_now(self._result_steps(result))

    def _result_steps(self, result: FeaturesReady) -> Iterator[None]:
        self.result = result
        for layer in [la for la in self.viewer.layers if (la.metadata or {}).get(EXPLORER_KEY)]:
            self.viewer.layers.remove(layer)
        self.marker = None
        self.layers_made = {}
        for i, (name, fmap) in enumerate(result.maps.items()):
            place = {"scale": fmap.scale, "translate": fmap.translate}
            rgb = self.viewer.add_image(result.rgb[name], rgb=True, name=f"features: {name}", visible=i == 0,
                                        metadata={EXPLORER_KEY: "rgb", "encoder": name}, **place)
            yield None
            centre = (fmap.features.shape[1] // 2, fmap.features.shape[2] // 2)
            sim = self.viewer.add_image(cosine_similarity(fmap.features, centre), name=f"similarity: {name}",
                                        colormap="coolwarm", contrast_limits=(-1.0, 1.0), opacity=0.0,
                                        visible=i == 0, metadata={EXPLORER_KEY: "similarity", "encoder": name}, **place)
            self.layers_made[name] = (rgb, sim)
            yield None
        self._cancel_layers = None
        self.shown = True
        self.show_box.blockSignals(True)
        self.show_box.clear()
        self.show_box.addItems(list(result.maps))
        self.show_box.blockSignals(False)
        ex = result.basis.explained
        first = next(iter(result.maps.values())).features
        self.summary.setText(
            f"{len(result.maps)} encoder(s), {first.shape[0]} channels at {first.shape[1]} × {first.shape[2]} "
            f"positions. Colours: PCA components 1-3 of all encoders' features together (red, green, blue; "
            f"{ex[0]:.0%}, {ex[1]:.0%}, {ex[2]:.0%} of the variance), one basis, so colours compare. "
            f"Click the canvas: cosine similarity (of the features centred on the region's mean; blue -1, "
            f"red +1) to that position.")

    def _show_encoder(self, index: int) -> None:
        name = self.show_box.itemText(index)
        for encoder, (rgb, sim) in self.layers_made.items():
            rgb.visible = sim.visible = encoder == name

    def probe_at(self, world_yx: tuple[float, float]) -> dict[str, np.ndarray]:
        """Cosine similarity of every encoder's features to the position under ``world_yx`` (full-resolution
        (y, x)); updates the similarity layers and the marker; returns the maps."""
        out = {}
        if self.result is None:
            return out
        for name, fmap in self.result.maps.items():
            pos = position_of(fmap, world_yx)
            if pos is None:
                continue
            sim = cosine_similarity(fmap.features, pos)
            layer = self.layers_made[name][1]
            layer.data = sim
            layer.opacity = 0.85
            out[name] = sim
        if out:
            if self.marker is None or self.marker not in self.viewer.layers:
                self.marker = self.viewer.add_points([list(world_yx)], name="probe", size=6, face_color="cyan",
                                                     metadata={EXPLORER_KEY: "marker"})
            else:
                self.marker.data = [list(world_yx)]
        return out

    def _on_click(self, viewer, event) -> None:
        if self.result is None or not self.shown or not self.probe.isChecked() or self._closing:
            return
        self.probe_at(tuple(float(v) for v in event.position[-2:]))

    def shutdown(self, wait: float | None = None) -> None:
        if self._cancel_layers is not None:
            self._cancel_layers()
            self._cancel_layers = None
        try:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        except ValueError:
            pass
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                emitter.disconnect(self._refresh_regions)
            except (TypeError, ValueError, RuntimeError):
                pass
        super().shutdown() if wait is None else super().shutdown(wait)
