"""VICReg pretraining on scroll segments (and unlabeled fragments) as a generator of events.

    for event in pretrain(cfg): ...

Tiles come from a grid inside each segment's (eroded) mask; each is read as two views at independent
z-shifts, augmented on the training device, encoded, expanded and compared by the VICReg loss. Every
epoch writes ``checkpoints/epoch_NNN.pt`` and ``last.pt`` and appends a line to ``metrics.jsonl``.

Stopping: closing the generator (``gen.close()``, Ctrl-C in the CLI, Stop in napari) finishes the
optimizer step under way and writes ``last.pt`` holding the step reached inside the current epoch (or,
at an epoch's last step, completes that epoch); ``--resume`` continues from there with the same data
order, augmentations and learning rates as a run that was never stopped. Completed epochs' files are
never touched by a stop. A NaN or infinite loss yields ``Failed`` and keeps the last good checkpoint.

With ``probe_fragment`` and ``probe_region``, every ``probe_every`` epochs a frozen linear probe
(engine/online_probe.py) scores ink on the region: ``probe_f05`` and ``probe_auc`` in the epoch's metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from napari_vesuvius_pt.config import PretrainConfig, to_dict
from napari_vesuvius_pt.data.augment import augment_batch
from napari_vesuvius_pt.engine.datasets import PretrainViews, TileSource, open_source, tile_index
from napari_vesuvius_pt.engine.distributed import DistContext, run_distributed, unwrap, wrap_ddp
from napari_vesuvius_pt.engine.events import Event
from napari_vesuvius_pt.engine.loop import (
    hold_run,
    open_run,
    prepare_training,
    train_epochs,
    validate_training,
)
from napari_vesuvius_pt.engine.online_probe import ProbeData, due, prepare_probe, run_probe, validate_probe_config
from napari_vesuvius_pt.engine.precision import Precision
from napari_vesuvius_pt.engine.rng import seed_everything
from napari_vesuvius_pt.errors import ConfigError
from napari_vesuvius_pt.models.encoder import encoder_from_spec
from napari_vesuvius_pt.models.vicreg import Expander, embedding_stats, vicreg_loss

MONITOR_ROWS = 1024  # pooled embeddings kept per epoch for the collapse monitor


class VICRegNet(nn.Module):
    """Encoder + expander over both views in one call (one DDP forward per micro-batch)."""

    def __init__(self, encoder: nn.Module, expander: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.expander = expander

    def forward(self, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y1, y2 = self.encoder(v1), self.encoder(v2)
        return y1, y2, self.expander(y1), self.expander(y2)


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    if not cfg.segments:
        raise ConfigError("no segments to pretrain on; give one or more with --segments PATH ...")
    validate_training(cfg)
    if cfg.batch_size < 2:
        raise ConfigError(f"VICReg needs a batch of at least 2 tiles to measure variance, got batch size {cfg.batch_size}")
    if cfg.tile.depth < 1 or cfg.tile.size < 16:
        raise ConfigError(f"tiles must have at least 1 layer and 16 pixels a side, got {cfg.tile.depth}x{cfg.tile.size}x{cfg.tile.size}")
    if cfg.augment.max_z_shift < 0:
        raise ConfigError(f"augment.max_z_shift must be 0 or more, got {cfg.augment.max_z_shift}")
    if cfg.mask_erosion < 0:
        raise ConfigError(f"mask_erosion must be 0 or more pixels, got {cfg.mask_erosion}")
    validate_probe_config(cfg)


class _VICRegSteps:
    """The VICReg loss of a micro-batch of view pairs, and the pooled embeddings for the collapse monitor."""

    loss_name = "VICReg loss"
    term_names = ("loss", "invariance", "variance", "covariance")

    def __init__(self, cfg: PretrainConfig, model: nn.Module, ctx: DistContext, precision: Precision,
                 probe: ProbeData | None = None) -> None:
        self.cfg, self.model, self.ctx, self.precision = cfg, model, ctx, precision
        self.monitor: list[Tensor] = []
        self.probe = probe

    def start_epoch(self, partial: dict[str, Any] | None) -> None:
        self.monitor = [t for t in ((partial or {}).get("monitor") or [])]

    def augment(self, batch: tuple[Tensor, Tensor], aug_gen: torch.Generator) -> tuple[Tensor, Tensor]:
        cfg, device = self.cfg, self.ctx.device
        v1, v2 = batch
        v1 = v1.to(device, non_blocking=True)[:, None]
        v2 = v2.to(device, non_blocking=True)[:, None]
        v1, _ = augment_batch(v1, None, cfg.augment, aug_gen)
        v2, _ = augment_batch(v2, None, cfg.augment, aug_gen)
        return v1, v2

    def losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        v1, v2 = batch
        with self.precision.autocast():
            y1, _, z1, z2 = self.model(v1, v2)
        terms = vicreg_loss(z1, z2, cfg.vicreg.sim_coeff, cfg.vicreg.std_coeff, cfg.vicreg.cov_coeff)
        # kept before the backward pass: a micro-batch that fails ends the run, and the monitor with it
        if sum(t.shape[0] for t in self.monitor) < MONITOR_ROWS:
            self.monitor.append(y1.detach().float().cpu())
        return dict(zip(self.term_names, terms))

    def partial_state(self) -> dict[str, Any]:
        return {"monitor": self.monitor}

    def train_metrics(self) -> dict[str, float]:
        if self.ctx.is_main and self.monitor:
            return embedding_stats(torch.cat(self.monitor)[:MONITOR_ROWS])
        return {}

    def evaluate(self, epoch: int, metrics: dict[str, float]) -> list[Event]:
        if self.probe is not None and self.ctx.is_main and due(epoch, self.cfg.epochs, self.cfg.probe_every):
            metrics.update(run_probe(unwrap(self.model).encoder, self.probe, self.ctx.device, self.cfg.batch_size))
        return []

    def model_fields(self, model: nn.Module) -> dict[str, Any]:
        return {
            "kind": "pretrain",
            "encoder_spec": to_dict(model.encoder.spec),
            "encoder": model.encoder.state_dict(),
            "expander": model.expander.state_dict(),
            "expander_widths": list(self.cfg.vicreg.expander),
            "head": None,
            "output_stride": None,
        }


def pretrain(cfg: PretrainConfig) -> Iterator[Event]:
    """Run (or resume, with ``cfg.resume``) a VICReg pretraining; see the module docstring."""
    validate_pretrain_config(cfg)
    with hold_run(cfg):  # one run at a time in a run folder
        yield from run_distributed(cfg.device, lambda ctx: _pretrain(cfg, ctx))


def _pretrain(cfg: PretrainConfig, ctx: DistContext) -> Iterator[Event]:
    run, payload, cfg_run = open_run(cfg, "pretrain")
    saved_norm = (payload or {}).get("normalization") or {}
    sources = _open_sources(cfg, saved_norm)
    index = tile_index(sources)
    if len(index) == 0:
        raise ConfigError(
            f"no {cfg.tile.size}x{cfg.tile.size} tile lies inside the masks of the segments (min_mask_fraction "
            f"{cfg.tile.min_mask_fraction}, mask_erosion {cfg.mask_erosion}); use smaller tiles or a lower min_mask_fraction"
        )
    net = _build_net(cfg, payload).to(ctx.device)
    model = wrap_ddp(net, ctx)
    training = prepare_training(
        cfg, cfg_run, ctx, run, payload, model, [{"params": list(net.parameters())}], len(index),
        data_filled=dataclasses.replace(cfg.data, normalization_params=dict(sources[0].normalizer.params)),
        normalization={s.path: dict(s.normalizer.params) for s in sources},
        views=2,  # both views go through the encoder in one step
    )
    if ctx.is_main:
        run.create(cfg_run, fresh=payload is None)
    dataset = PretrainViews(sources, index, cfg.tile.depth, cfg.tile.size, int(cfg.augment.max_z_shift), cfg.augment.same_z_shift)
    probe = prepare_probe(cfg) if ctx.is_main else None
    yield from train_epochs(training, _VICRegSteps(cfg, model, ctx, training.precision, probe), dataset)


def _open_sources(cfg: PretrainConfig, saved_norm: dict[str, dict[str, float]]) -> list[TileSource]:
    """The segments with their tile grids; a resumed run keeps the normalization it was fitted with."""
    return [
        open_source(p, cfg.data, cfg.tile, int(cfg.augment.max_z_shift), cfg.mask_erosion,
                    saved_norm.get(str(p)) or cfg.data.normalization_params, keep_planes=False)
        for p in cfg.segments
    ]


def _build_net(cfg: PretrainConfig, payload: dict[str, Any] | None) -> VICRegNet:
    """A fresh encoder and expander from the run's seed, holding the checkpoint's weights when resuming."""
    seed_everything(cfg.seed)
    encoder = encoder_from_spec(cfg.encoder)  # every EncoderConfig option (the seed's stem, pooling, fc)
    expander = Expander(encoder.embedding_dim, cfg.vicreg.expander)
    if payload is not None:
        encoder.load_state_dict(payload["encoder"])
        expander.load_state_dict(payload["expander"])
    return VICRegNet(encoder, expander)
