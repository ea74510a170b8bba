"""napari sample data: a synthetic fragment (volume, mask and ink labels) generated in memory."""

from __future__ import annotations

from napari_vesuvius_pt._reader import segment_layers

SAMPLE_NAME = "synthetic fragment"
SAMPLE_SHAPE = (24, 256, 256)  # small enough to appear in about a second


def synthetic_fragment() -> list[tuple]:
    """The synthetic fragment of seed 0: papyrus sheet, fibres, noise, a ragged mask and inked letters."""
    from napari_vesuvius_pt.data.synthetic import make_fragment

    synth = make_fragment(SAMPLE_SHAPE, seed=0)
    return segment_layers(SAMPLE_NAME, synth.volume, synth.mask.astype(bool), synth.inklabels,
                          metadata={"segment": SAMPLE_NAME, "synthetic_seed": 0})
