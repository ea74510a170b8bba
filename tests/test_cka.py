"""CKA estimators: the properties a user relies on when reading a CKA matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vesuvius_pt.analysis import centered_gram, linear_cka, rbf_cka
from napari_vesuvius_pt.analysis.cka import center_gram, feature_space_linear_cka
from napari_vesuvius_pt.analysis.cka_io import write_matrix_csv
from napari_vesuvius_pt.errors import AnalysisInputError, VesuviusError


def _related(n: int = 120, dx: int = 40, dy: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = np.tanh(x @ rng.normal(size=(dx, dy)) / 4) + 0.5 * rng.normal(size=(n, dy))
    return x, y


ESTIMATORS = {
    "linear": lambda a, b: linear_cka(a, b),
    "linear-debiased": lambda a, b: linear_cka(a, b, debiased=True),
    "rbf": lambda a, b: rbf_cka(a, b),
    "rbf-debiased": lambda a, b: rbf_cka(a, b, threshold=0.8, debiased=True),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_a_representation_is_identical_to_itself(name):
    x, _ = _related()
    assert ESTIMATORS[name](x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_symmetric(name):
    x, y = _related()
    assert ESTIMATORS[name](x, y) == pytest.approx(ESTIMATORS[name](y, x), abs=1e-12)
    assert 0.05 < ESTIMATORS[name](x, y) < 0.99


@pytest.mark.parametrize("name", ESTIMATORS)
def test_invariant_to_rotation_and_isotropic_scaling(name):
    x, y = _related()
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    reference = ESTIMATORS[name](x, y)
    assert ESTIMATORS[name](7.3 * x @ q, y) == pytest.approx(reference, abs=1e-10)
    assert ESTIMATORS[name](x + 5.0, 0.01 * y) == pytest.approx(reference, abs=1e-10)


def test_linear_cka_is_not_invariant_to_anisotropic_scaling():
    """The invariance test above means something: stretching one axis does change linear CKA."""
    x, y = _related()
    stretch = np.ones(x.shape[1])
    stretch[0] = 30.0
    assert abs(linear_cka(x * stretch, y) - linear_cka(x, y)) > 0.05


def test_independent_features_approach_zero_with_the_debiased_estimator():
    rng = np.random.default_rng(1)
    d = 256
    small = [rng.normal(size=(64, d)) for _ in range(2)]
    large = [rng.normal(size=(512, d)) for _ in range(2)]
    # biased CKA is inflated toward 1 when features outnumber samples
    assert linear_cka(*small) > 0.7
    assert rbf_cka(*small) > 0.9
    assert abs(linear_cka(*small, debiased=True)) < 0.1
    assert abs(linear_cka(*large, debiased=True)) < 0.02
    assert abs(rbf_cka(*large, debiased=True)) < 0.02
    assert abs(linear_cka(*large, debiased=True)) < linear_cka(*large) / 10


def test_feature_space_form_equals_gram_form():
    x, y = _related(n=300, dx=12, dy=8)
    from napari_vesuvius_pt.analysis.cka import cka

    for debiased in (False, True):
        gram_value = cka((x - x.mean(0)) @ (x - x.mean(0)).T, (y - y.mean(0)) @ (y - y.mean(0)).T, debiased=debiased)
        assert feature_space_linear_cka(x, y, debiased=debiased) == pytest.approx(gram_value, abs=1e-12)
        assert linear_cka(x, y, debiased=debiased) == pytest.approx(gram_value, abs=1e-12)


def _direct_rbf_cka(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """Textbook form: K = exp(-d^2 / 2 sigma^2), HSIC = tr(K H L H), no shortcuts."""

    def kernel(f: np.ndarray) -> np.ndarray:
        n = len(f)
        d2 = np.array([[np.sum((f[i] - f[j]) ** 2) for j in range(n)] for i in range(n)])
        sigma2 = threshold**2 * np.median(d2)
        return np.exp(-d2 / (2 * sigma2))

    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = kernel(x), kernel(y)  # noqa: E741

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("threshold", [0.2, 0.5, 1.0])
def test_rbf_matches_a_direct_implementation(threshold):
    x, y = _related(n=30, dx=6, dy=5)
    assert rbf_cka(x, y, threshold=threshold) == pytest.approx(_direct_rbf_cka(x, y, threshold), abs=1e-10)


def _song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """The U-statistic HSIC estimator of Song et al. 2012, eq. 5, written out directly."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()  # noqa: E741
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    trace = float(np.trace(k @ l))
    total = float(ones @ k @ ones) * float(ones @ l @ ones) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * float(ones @ k @ l @ ones)
    return (trace + total - cross) / (n * (n - 3))


def test_unbiased_centring_is_the_song_et_al_hsic_estimator():
    x, y = _related(n=40)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    n = len(x)
    via_centring = float(np.vdot(center_gram(k, unbiased=True), center_gram(l, unbiased=True))) / (n * (n - 3))
    assert _song_unbiased_hsic(k, l) == pytest.approx(via_centring, rel=1e-10)


def test_torch_tensors_and_feature_maps_are_flattened_per_sample():
    x, y = _related(n=32, dx=2 * 3 * 4, dy=24)
    maps = torch.from_numpy(x.reshape(32, 2, 3, 4)).float()
    assert linear_cka(maps, y) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert rbf_cka(maps.to(torch.bfloat16), y) == pytest.approx(rbf_cka(x, y), abs=0.05)


def test_uncentred_float32_with_large_offsets_stays_finite_and_exact():
    rng = np.random.default_rng(2)
    x_int = rng.integers(-100, 100, size=(200, 512))
    y_int = x_int[:, :256] + rng.integers(-100, 100, size=(200, 256))
    reference_linear, reference_rbf = linear_cka(x_int, y_int), rbf_cka(x_int, y_int)
    # integers below 2**24 are exact in float32: the same data, offset by 3e6 and stored as float32
    x32, y32 = (x_int + 3_000_000).astype(np.float32), (y_int + 3_000_000).astype(np.float32)
    assert linear_cka(x32, y32) == pytest.approx(reference_linear, abs=1e-9)
    assert rbf_cka(x32, y32) == pytest.approx(reference_rbf, abs=1e-9)
    # activations around 1e18: float32 Gram products overflow, the float64 path does not
    huge_x, huge_y = x32 * np.float32(1e18), y32 * np.float32(1e18)
    with np.errstate(all="ignore"):
        naive = huge_x @ huge_x.T
    assert not np.isfinite(naive).all()
    for value in (linear_cka(huge_x, huge_y), linear_cka(huge_x, huge_y, debiased=True), rbf_cka(huge_x, huge_y)):
        assert np.isfinite(value)
    # (scaling by 1e18 in float32 rounds the offset data by ~1e-7 relative, hence the looser tolerance)
    assert linear_cka(huge_x, huge_y) == pytest.approx(reference_linear, abs=1e-4)


def test_centered_gram_gives_cka_as_one_dot_product():
    x, y = _related()
    for kernel, fn in (("linear", linear_cka), ("rbf", rbf_cka)):
        for debiased in (False, True):
            a = centered_gram(x, kernel, debiased=debiased)
            b = centered_gram(y, kernel, debiased=debiased)
            assert float(np.vdot(a, b)) == pytest.approx(fn(x, y, debiased=debiased), abs=1e-12)


def test_bad_input_raises_clear_errors():
    x, y = _related(n=20)
    with pytest.raises(AnalysisInputError, match="20 samples, Y has 19"):
        linear_cka(x, y[:19])
    with pytest.raises(AnalysisInputError, match="at least 4 samples"):
        linear_cka(x[:3], y[:3], debiased=True)
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(AnalysisInputError, match="NaN"):
        rbf_cka(bad, y)
    with pytest.raises(VesuviusError, match="constant or collapsed"):
        linear_cka(np.ones((20, 5)), y)
    with pytest.raises(AnalysisInputError, match="bandwidth is zero"):
        rbf_cka(np.repeat(x[:2], 10, axis=0) * 0, y)
    assert linear_cka(x[:3], y[:3]) <= 1.0  # the biased estimator works on tiny sets


def test_matrix_csv_is_square_quoted_and_marks_undefined_entries(tmp_path):
    import csv

    names = ["epoch_001", 'odd, "name"', "random"]
    m = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, 0.25], [np.nan, 0.25, 1.0]])
    path = write_matrix_csv(tmp_path / "sub" / "linear.csv", names, m)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["name", *names] and [r[0] for r in rows[1:]] == names
    assert rows[1][1:] == ["1.000000", "0.500000", "nan"]
    np.testing.assert_array_equal(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), m)
    with pytest.raises(AnalysisInputError, match="3x3"):
        write_matrix_csv(tmp_path / "bad.csv", names, m[:2])
