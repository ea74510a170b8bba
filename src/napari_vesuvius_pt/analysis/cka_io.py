"""CKA matrices as CSV: the one writer behind the CKA run's ``linear.csv`` / ``rbf.csv`` and the widget's export.

A square table: a header row ``name,<name 1>,...,<name k>``, then one row per name, its name first and
its values with 6 decimals; an undefined (NaN or infinite) entry is written ``nan``. Names are quoted
as CSV needs (commas, quotes, newlines). The file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_vesuvius_pt._atomic import atomic_write_text
from napari_vesuvius_pt.errors import AnalysisInputError

CORNER = "name"  # the header row's first cell, above the column of names


def matrix_csv_text(names: Sequence[str], matrix: np.ndarray) -> str:
    m = np.asarray(matrix, dtype=float)
    k = len(names)
    if m.shape != (k, k):
        raise AnalysisInputError(f"a CKA matrix for {k} names must be {k}x{k}, got shape {m.shape}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([CORNER, *names])
    for name, row in zip(names, m):
        writer.writerow([name, *(f"{v:.6f}" if math.isfinite(v) else "nan" for v in row)])
    return buffer.getvalue()


def write_matrix_csv(path: str | os.PathLike, names: Sequence[str], matrix: np.ndarray) -> Path:
    """Write ``matrix`` (k x k, rows and columns in the order of ``names``) to ``path``; returns the path."""
    atomic_write_text(path, matrix_csv_text(names, matrix))
    return Path(path)
