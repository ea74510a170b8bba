import sys

from napari_vesuvius_pt.cli import main

sys.exit(main())
