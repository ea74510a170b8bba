"""The sample-data contribution: the synthetic fragment from napari's File > Open Sample menu."""

from __future__ import annotations

import numpy as np


def test_synthetic_fragment_sample_has_volume_mask_and_ink_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vesuvius-pt", "synthetic-fragment")
    names = [layer.name for layer in viewer.layers]
    assert names == ["synthetic fragment", "synthetic fragment mask", "synthetic fragment ink labels"]
    volume, mask, ink = (viewer.layers[n] for n in names)
    assert volume.data.ndim == 3 and volume.data.dtype == np.uint16
    assert viewer.dims.nsteps[0] == volume.data.shape[0]  # the layers are on a slider
    assert mask.data.shape == ink.data.shape == volume.data.shape[1:]
    m, k = mask.data > 0, ink.data > 0
    assert 0.2 < m.mean() < 0.95  # a ragged fragment, not the whole frame
    assert k.any() and not (k & ~m).any()  # letters, only on the papyrus
    low, high = volume.contrast_limits
    assert volume.data.min() <= low < high <= volume.data.max()
