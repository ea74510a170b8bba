"""The per-pixel linear z-profile baseline against a closed-form case, and on fragments on disk."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from napari_vesuvius_pt.analysis import baseline as B
from napari_vesuvius_pt.data.synthetic import make_fragment, make_scroll_segment, write_segment
from napari_vesuvius_pt.data.tiles import save_regions
from napari_vesuvius_pt.engine.protocols import lower_band

DEPTH = 6
MU1 = np.array([0.0, 0.3, 1.0, 1.0, 0.3, 0.0])  # ink: denser in the middle layers
RHO = 0.5
PI1 = 0.3


def _sigma() -> np.ndarray:
    i = np.arange(DEPTH)
    return RHO ** np.abs(i[:, None] - i[None])  # AR(1) correlation between neighbouring layers


def _gaussian_volume(shape=(200, 200), seed=0):
    """Each pixel's z-profile drawn from N(MU1 * ink, SIGMA): two Gaussian classes, shared covariance."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(shape) < PI1).astype(np.uint8)
    chol = np.linalg.cholesky(_sigma())
    x = rng.standard_normal((*shape, DEPTH)) @ chol.T + labels[..., None] * MU1
    return np.moveaxis(x, -1, 0).astype(np.float32), labels


def _closed_form() -> tuple[float, float]:
    """AUC = Phi(D / sqrt 2) and the best F0.5 of the sweep for the Bayes-optimal linear rule, from the
    Mahalanobis distance D: the logit is N(+-D^2/2 + log(pi1/pi0), D^2) in each class."""
    d2 = float(MU1 @ np.linalg.solve(_sigma(), MU1))
    d = np.sqrt(d2)
    auc = stats.norm.cdf(d / np.sqrt(2))
    prior = np.log(PI1 / (1 - PI1))
    m1, m0 = d2 / 2 + prior, -d2 / 2 + prior
    best = 0.0
    for t in np.round(np.arange(0.10, 0.96, 0.05), 2):
        u = np.log(t / (1 - t))
        recall, fpr = stats.norm.cdf((m1 - u) / d), stats.norm.cdf((m0 - u) / d)
        precision = PI1 * recall / (PI1 * recall + (1 - PI1) * fpr)
        best = max(best, 1.25 * precision * recall / (0.25 * precision + recall))
    return float(auc), float(best)


def _fit_and_score(method: str, smooth: int = 1):
    vol, labels = _gaussian_volume()
    train = np.zeros(labels.shape, bool)
    train[:100] = True
    model = B.fit_linear_baseline([B.TrainingVolume(vol, train, labels, (0, DEPTH))], method=method, smooth=smooth)
    val = ~train
    probs = B.predict_map(model, vol, val, (0, DEPTH), smooth)
    return model, B.score_map(probs, labels, val)


def test_lda_matches_the_closed_form_gaussian_case():
    model, m = _fit_and_score("lda")
    auc, f05 = _closed_form()
    assert 0.75 < auc < 0.95  # a case where the numbers mean something
    assert m.auc == pytest.approx(auc, abs=0.012)
    assert m.f05 == pytest.approx(f05, abs=0.02)
    # the discriminant direction is Sigma^-1 (mu1 - mu0), and the bias carries the prior
    w = np.linalg.solve(_sigma(), MU1)
    assert np.corrcoef(model.weights, w)[0, 1] > 0.99
    np.testing.assert_allclose(model.weights, w, atol=0.08)
    assert model.prevalence == pytest.approx(PI1, abs=0.01)


def test_logistic_regression_finds_the_same_rule():
    model, m = _fit_and_score("logistic")
    auc, _ = _closed_form()
    assert model.method == "logistic"
    assert m.auc == pytest.approx(auc, abs=0.012)


def test_streamed_statistics_equal_the_textbook_lda():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 4)) + 3.0
    y = rng.random(500) < 0.4
    s = B.ClassStats(4)
    for part in np.array_split(np.arange(500), 7):  # blocks of any size add up to the same
        s.add(x[part], y[part])
    model = B.lda_from_stats(s, shrinkage=0.0)
    pooled = ((y.sum() - 1) * np.cov(x[y].T) + ((~y).sum() - 1) * np.cov(x[~y].T)) / (500 - 2)
    w = np.linalg.solve(pooled, x[y].mean(0) - x[~y].mean(0))
    b = -0.5 * w @ (x[y].mean(0) + x[~y].mean(0)) + np.log(y.sum() / (~y).sum())
    np.testing.assert_allclose(model.weights, w, rtol=1e-8)
    assert model.bias == pytest.approx(b, rel=1e-8)


def test_smoothing_does_not_depend_on_the_blocks(monkeypatch):
    vol, labels = _gaussian_volume((90, 70), seed=5)
    model, _ = _fit_and_score("lda")
    where = np.ones(labels.shape, bool)
    whole = B.predict_map(model, vol, where, (0, DEPTH), smooth=5)
    monkeypatch.setattr(B, "BLOCK_VOXELS", DEPTH * 24 * 24)  # 16-pixel blocks with their halo
    assert len(list(B.profile_blocks(vol, where, (0, DEPTH), 5))) >= 16
    np.testing.assert_allclose(B.predict_map(model, vol, where, (0, DEPTH), smooth=5), whole, atol=1e-6)


def test_all_ink_baseline_formula():
    assert B.all_ink_f05(0.2) == pytest.approx(1.25 * 0.2 / (0.25 * 0.2 + 1))
    labels = np.zeros((10, 10), np.uint8)
    labels[:2] = 1  # prevalence 0.2
    m = B.all_ink_metrics(labels)
    assert m.f05 == pytest.approx(0.25 / 1.05) and m.precision == 0.2 and m.recall == 1.0 and m.auc == 0.5
    assert B.all_ink_metrics(labels, where=labels > 0).f05 == pytest.approx(1.0)


def test_no_ink_in_training_is_a_clear_error():
    vol, labels = _gaussian_volume((40, 40))
    with pytest.raises(Exception, match="ink and background"):
        B.fit_linear_baseline([B.TrainingVolume(vol, np.ones(labels.shape, bool), np.zeros_like(labels), (0, DEPTH))])


# ------------------------------------------------------------------ fragments on disk


@pytest.fixture(scope="module")
def fragments(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    paths = [write_segment(make_fragment((16, 128, 128), seed=s, fill_sheet=True), root / f"f{s}") for s in (0, 1)]
    scroll = write_segment(make_scroll_segment((16, 96, 96), seed=2), root / "scroll", layout="layers")
    region = save_regions(root / "band.json", [lower_band((128, 128))])
    return paths, scroll, region


def test_linear_baseline_on_a_region_trains_outside_it_and_beats_all_ink(fragments):
    from scipy import ndimage

    from napari_vesuvius_pt.data.segment import open_segment
    from napari_vesuvius_pt.engine.baselines import linear_baseline

    (f0, f1), _, region = fragments
    result = linear_baseline([f0, f1], val_region=region)
    lin, ink = result.rows["linear z-profile"], result.rows["all ink"]
    assert lin.f05 > ink.f05 + 0.05 and lin.auc > 0.6
    # validation: the band inside the mask; training: both masks minus the band grown by the 2-pixel halo
    seg0, seg1 = open_segment(f0), open_segment(f1)
    band = np.zeros((128, 128), bool)
    band[round(128 * 0.7):] = True
    assert result.where.sum() == (band & (seg0.mask > 0)).sum()
    grown = ndimage.binary_dilation(band, iterations=2)
    assert result.train_pixels == ((seg0.mask > 0) & ~grown).sum() + (seg1.mask > 0).sum()
    assert (result.probabilities[~result.where] == 0).all()


def test_baseline_rows_and_the_cli(fragments, capsys):
    from napari_vesuvius_pt.cli import main
    from napari_vesuvius_pt.engine.evaluation import baseline_rows

    (f0, f1), scroll, region = fragments
    rows = baseline_rows(None, f0, region=region)
    assert set(rows) == {"all ink", "linear z-profile"}
    assert set(baseline_rows(None, f0)) == {"all ink"}  # nothing to train on: the all-ink row only
    assert main(["baseline", "--fragments", str(f0), "--val-fragment", str(f1)]) == 0
    out = capsys.readouterr().out
    assert "linear z-profile" in out and "all ink" in out
    assert main(["baseline", "--fragments", str(scroll), "--val-fragment", str(f1)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no ink labels" in err
