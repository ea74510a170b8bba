"""The synthetic fragment and scroll segment: deterministic, realistic in structure, ink learnable but
not visible in one layer, written in the segment folder layouts."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from napari_vesuvius_pt.data import open_segment
from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment
from napari_vesuvius_pt.errors import ConfigError

SHAPE = (20, 160, 160)


@pytest.fixture(scope="module")
def fragment():
    return make_fragment(SHAPE, seed=4)


def _dprime(values: np.ndarray, ink: np.ndarray) -> float:
    return float((values[ink].mean() - values[~ink].mean()) / values[~ink].std())


def test_deterministic_by_seed(fragment):
    again = make_fragment(SHAPE, seed=4)
    np.testing.assert_array_equal(again.volume, fragment.volume)
    np.testing.assert_array_equal(again.inklabels, fragment.inklabels)
    other = make_fragment(SHAPE, seed=5)
    assert not np.array_equal(other.mask, fragment.mask) and not np.array_equal(other.volume, fragment.volume)


def test_fragment_structure(fragment):
    vol, mask, ink = fragment.volume, fragment.mask, fragment.inklabels
    assert vol.shape == SHAPE and vol.dtype == np.uint16
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert ink.dtype == np.uint8 and set(np.unique(ink)) == {0, 1}
    assert not ink[mask == 0].any()  # ink only on papyrus
    assert 0.05 < ink[mask > 0].mean() < 0.4  # letters, not a blob
    # an irregular single piece, not a rectangle or the whole plane
    assert 0.3 < mask.mean() < 0.9 and ndimage.label(mask)[1] == 1
    box = np.ptp(np.nonzero(mask)[0]) * np.ptp(np.nonzero(mask)[1])
    assert mask.sum() < 0.95 * box
    # the sheet undulates through the layers: its surface spans several layers
    surface = fragment.surface[mask > 0]
    assert np.ptp(surface) > 4
    # papyrus is denser than the air above it
    z = np.clip(np.round(fragment.surface).astype(int) + 2, 0, SHAPE[0] - 1)
    on_sheet = np.take_along_axis(vol, z[None], 0)[0].astype(float)
    above = np.take_along_axis(vol, np.clip(z - 6, 0, None)[None], 0)[0].astype(float)
    assert (on_sheet - above)[mask > 0].mean() > 10000


def test_ink_follows_the_surface_and_hides_in_single_layers(fragment):
    """Learnable: at the sheet surface, over a small neighbourhood, ink stands out clearly. Not visible at a
    glance: in any single layer the ink pixels barely differ from the others."""
    vol, ink, papyrus = fragment.volume.astype(np.float32), fragment.inklabels > 0, fragment.mask > 0
    z = np.clip(np.round(fragment.surface + 1).astype(int), 0, SHAPE[0] - 1)
    along_surface = ndimage.gaussian_filter(np.take_along_axis(vol, z[None], 0)[0], 1.0)
    learnable = _dprime(along_surface[papyrus], ink[papyrus])
    single = max(abs(_dprime(layer[papyrus], ink[papyrus])) for layer in vol)
    assert learnable > 1.5
    assert single < 1.0
    assert learnable > 2 * single
    # and weaker ink is weaker: the knob works
    faint = make_fragment(SHAPE, seed=4, ink_strength=0.05).volume.astype(np.float32)
    faint_surface = ndimage.gaussian_filter(np.take_along_axis(faint, z[None], 0)[0], 1.0)
    assert _dprime(faint_surface[papyrus], ink[papyrus]) < learnable / 2


def test_scroll_segment_is_unlabeled_and_shifted(fragment):
    seg = make_scroll_segment(SHAPE, seed=4)
    assert seg.inklabels is None and seg.volume.dtype == np.uint16 and seg.mask.any()
    frag_air = np.median(fragment.volume[:, fragment.mask == 0])
    seg_air = np.median(seg.volume[:, seg.mask == 0])
    assert seg_air - frag_air > 5000  # brighter background
    frag_range = np.subtract(*np.percentile(fragment.volume[:, fragment.mask > 0], [99, 1]))
    seg_range = np.subtract(*np.percentile(seg.volume[:, seg.mask > 0], [99, 1]))
    assert seg_range < 0.9 * frag_range  # flatter contrast


def test_write_segment_layouts(tmp_path, fragment):
    out = write_segment(fragment, tmp_path / "frag")
    layers = sorted((out / "surface_volume").glob("*.tif"))
    assert [p.name for p in layers[:2]] == ["00.tif", "01.tif"] and len(layers) == SHAPE[0]
    assert tifffile.imread(layers[3]).dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(Image.open(out / "inklabels.png")), fragment.inklabels)
    assert set(np.unique(np.asarray(Image.open(out / "mask.png")))) == {0, 1}
    seg = open_segment(out)
    np.testing.assert_array_equal(seg.volume[:], fragment.volume)
    assert not (tmp_path / "frag.partial").exists()

    scroll = write_segment(make_scroll_segment((6, 64, 64), seed=1), tmp_path / "scroll", layout="layers")
    assert (scroll / "layers" / "05.tif").is_file() and (scroll / "scroll_mask.png").is_file()
    assert not (scroll / "scroll_inklabels.png").exists()
    with pytest.raises(ConfigError, match="not empty"):
        write_segment(fragment, tmp_path / "frag")
    with pytest.raises(ConfigError, match="too small"):
        make_fragment((2, 16, 16))


def test_custom_text_is_rendered():
    blank = make_fragment((8, 96, 128), seed=0, text=" ")
    written = make_fragment((8, 96, 128), seed=0, text="IN\nK")
    assert blank.inklabels.sum() == 0 and written.inklabels.sum() > 50
