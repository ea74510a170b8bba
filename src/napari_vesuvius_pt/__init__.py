"""napari-vesuvius-pt: VICReg pretraining on scroll segments, CKA checks and ink detection on fragments.

The library (``data``, ``models``, ``analysis``, ``engine``) imports without Qt; ``ui`` holds the napari
widgets.
"""

__version__ = "0.1.0"
