"""How much does adding one pretraining epoch to the CKA matrix cost?

Builds a pretraining run folder of a tiny encoder (resnet10, widen factor 0.25, random steps between
epochs) and a synthetic fragment large enough for the probe set, then, side by side in one process:

1. from scratch: CKA over epochs 1..E-1 (every feature set and the whole matrix);
2. incremental: epoch E is added and the same command runs again (one feature set, one new row);
3. matrix only: the cached features of all E epochs, the whole matrix recomputed (cka.json removed).

It prints the time of one epoch's feature extraction against its matrix row, and the incremental run
against recomputing everything. Usage: ``python bench/bench_cka.py [--tiles 1000] [--epochs 4]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from napari_vesuvius_pt.config import CKAConfig, DataConfig, TileConfig, to_dict
from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment
from napari_vesuvius_pt.engine.cka_run import cka
from napari_vesuvius_pt.engine.events import Finished
from napari_vesuvius_pt.models.checkpoint import save_checkpoint
from napari_vesuvius_pt.models.encoder import build_encoder


def make_run(run: Path, epochs: int, tile: TileConfig, first_saved: int = 1) -> None:
    """Epochs 1..epochs of a seeded random walk; only those from ``first_saved`` on are written."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet10", widen_factor=0.25)
    for epoch in range(1, epochs + 1):
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(0.05 * torch.randn_like(p))
        if epoch < first_saved:
            continue
        save_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}.pt", {
            "kind": "pretrain", "encoder_spec": to_dict(encoder.spec), "encoder": encoder.state_dict(),
            "expander": None, "head": None, "output_stride": 4, "tile": to_dict(tile), "data": to_dict(DataConfig()),
            "optimizer": {}, "scheduler": {}, "rng": {}, "config": {}, "epoch": epoch, "metrics": {},
        })


def timed_run(cfg: CKAConfig) -> tuple[float, dict]:
    t0 = time.perf_counter()
    finished = [e for e in cka(cfg) if isinstance(e, Finished)][-1]
    return time.perf_counter() - t0, finished.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4, help="epochs in the run; the last one is the one added")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--layer", default="pooled")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    tile = TileConfig(depth=args.depth, size=args.size, stride=args.size // 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        side = 1024  # room for > 1000 tiles of 64 x 64 at stride 32 inside the fragment's mask
        segment = write_segment(make_fragment((args.depth + 4, side, side), seed=0), root / "fragment")
        run = root / "run"
        make_run(run, args.epochs - 1, tile)
        out = root / "cka"

        def config(sources: list[str]) -> CKAConfig:
            return CKAConfig(sources=sources, segment=str(segment), out=str(out), tiles=args.tiles, layer=args.layer,
                             batch_size=args.batch_size, device=args.device)

        scratch_s, scratch = timed_run(config([str(run)]))
        make_run(run, args.epochs, tile, first_saved=args.epochs)  # epoch E added, earlier files untouched
        incremental_s, incremental = timed_run(config([str(run)]))
        (out / "cka.json").unlink()
        matrix_s, matrix = timed_run(config([str(run)]))

    e = args.epochs
    n_scratch = len(scratch["names"])
    per_epoch_features = scratch["features_s"] / max(len(scratch["computed"]), 1)
    new_features = incremental["features_s"]
    new_row = incremental["rows_s"]
    whole_matrix = matrix["rows_s"]
    estimated_full = per_epoch_features * e + whole_matrix
    print(f"CKA bench: {incremental['tiles']} probe tiles of {args.depth}x{args.size}x{args.size}, resnet10 x0.25, "
          f"layer {args.layer}, device {args.device}, {torch.get_num_threads()} CPU threads")
    print(f"features recomputed in the incremental run: {incremental['computed']} "
          f"(pairs computed: {incremental['pairs_computed']}, features computed in the matrix-only run: "
          f"{matrix['computed']})")
    rows = [
        ("features of the new epoch", new_features),
        (f"its matrix row ({e} pairs x 2 kernels)", new_row),
        ("incremental run, wall (open segment, probe set, files, PNG)", incremental_s),
        (f"whole matrix from cached features ({e * (e + 1) // 2} pairs x 2)", whole_matrix),
        (f"from scratch, {n_scratch} epochs, wall (measured)", scratch_s),
        (f"from scratch, {e} epochs: features x {e} + whole matrix (estimated)", estimated_full),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'seconds':>9}")
    for label, seconds in rows:
        print(f"{label:<{width}}  {seconds:9.3f}")
    print(f"feature extraction : row time = {new_features / max(new_row, 1e-9):.0f} : 1")
    print(f"new row vs whole matrix (features cached): {new_row / max(whole_matrix, 1e-9):.2f}x the time")
    print(f"incremental run vs recomputing everything for {e} epochs: "
          f"{incremental_s / estimated_full:.2f}x the time ({estimated_full / incremental_s:.1f}x faster)")


if __name__ == "__main__":
    main()
