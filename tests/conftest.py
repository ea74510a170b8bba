"""Shared fixtures: small synthetic segments on disk (session-scoped, made once), the real Kaggle
masks and ink labels (skipped where the shared folder is missing), and the napari notifications a test
caused."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment

KAGGLE_LABELS = Path(__file__).resolve().parents[2] / "shared" / "kaggle-labels"


@pytest.fixture(scope="session")
def fragment_dir(tmp_path_factory) -> Path:
    """A labeled synthetic fragment in the Kaggle folder layout, (20, 192, 192), seed 0."""
    root = tmp_path_factory.mktemp("fragments")
    return write_segment(make_fragment((20, 192, 192), seed=0), root / "fragment0")


@pytest.fixture(scope="session")
def fragment2_dir(tmp_path_factory) -> Path:
    """Another labeled synthetic fragment (Kaggle layout), (20, 192, 192), seed 1."""
    root = tmp_path_factory.mktemp("fragments")
    return write_segment(make_fragment((20, 192, 192), seed=1), root / "fragment1")


@pytest.fixture(scope="session")
def scroll_dir(tmp_path_factory) -> Path:
    """An unlabeled synthetic scroll segment in the layers-folder layout, (20, 160, 160), seed 2."""
    root = tmp_path_factory.mktemp("segments")
    return write_segment(make_scroll_segment((20, 160, 160), seed=2), root / "segment2", layout="layers")


@pytest.fixture(scope="session")
def kaggle_labels_dir() -> Path:
    """The real Kaggle masks and ink labels of fragments 1-3 (``1/mask.png``, ``1/inklabels.png``, ...)."""
    if not (KAGGLE_LABELS / "2" / "mask.png").is_file():
        pytest.skip(f"real Kaggle labels not found at {KAGGLE_LABELS}")
    return KAGGLE_LABELS


@pytest.fixture
def notifications():
    """The napari notifications shown during the test, in order (``str(n.message)`` is the text)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


@pytest.fixture(autouse=True)
def _private_widget_settings(tmp_path, monkeypatch):
    """Widgets remember their settings between napari launches; tests must not touch the user's file."""
    monkeypatch.setenv("NAPARI_VESUVIUS_PT_SETTINGS", str(tmp_path / "widgets.json"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on 2 shared cores: one intra-op thread is faster and far steadier than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
