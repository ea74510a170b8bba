"""Segments on disk (lazy volumes, masks, ink labels), normalizations and synthetic fragments. No Qt."""

from napari_vesuvius_pt.data.lazy_volume import LazyVolume
from napari_vesuvius_pt.data.segment import Segment, open_from_config, open_segment
from napari_vesuvius_pt.errors import SegmentError

__all__ = ["LazyVolume", "Segment", "SegmentError", "open_from_config", "open_segment"]
