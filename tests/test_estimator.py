"""LatencyModel: the scikit-learn estimator contract (sklearn's own check suite) and
hand-computed interpolation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from mist.calibrate.estimator import LatencyModel, _interp_rows

# y = 10, 20, 30 at x = 1, 2, 4: slope 10 on [1, 2], 5 on [2, 4].
X1 = np.array([[1.0], [2.0], [4.0]])
Y1 = np.array([10.0, 20.0, 30.0])


def test_clone_and_params():
    m = LatencyModel(out_of_range="clip")
    assert m.get_params() == {"out_of_range": "clip", "max_grid_cells": 2**24}
    c = clone(m)
    assert c is not m and c.get_params() == m.get_params()
    assert m.set_params(out_of_range="extrapolate") is m
    assert m.out_of_range == "extrapolate"
    fitted = LatencyModel().fit(X1, Y1)
    assert not hasattr(clone(fitted), "grid_")  # clone copies settings, not learned state


def test_fit_returns_self_and_predict_before_fit_raises():
    m = LatencyModel()
    assert m.fit(X1, Y1) is m
    with pytest.raises(NotFittedError):
        LatencyModel().predict(X1)
    with pytest.raises(NotFittedError):
        LatencyModel().in_range(X1)


def test_reproduces_measured_points_exactly():
    rng = np.random.default_rng(1)
    X = np.array([[a, b] for a in (1.0, 3.0, 8.0) for b in (0.0, 16.0, 64.0, 256.0)])
    y = rng.uniform(1e-6, 1e-3, len(X))
    np.testing.assert_array_equal(LatencyModel().fit(X, y).predict(X), y)


def test_linear_interpolation_between_two_points():
    m = LatencyModel().fit([[100.0], [300.0]], [2e-5, 6e-5])
    x = np.array([100.0, 150.0, 250.0, 300.0])
    expected = 2e-5 + (x - 100.0) * (6e-5 - 2e-5) / (300.0 - 100.0)
    np.testing.assert_allclose(m.predict(x[:, None]), expected, rtol=1e-12)


def test_repeated_points_are_averaged():
    m = LatencyModel().fit([[1.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    np.testing.assert_allclose(m.predict([[1.0], [2.0]]), [2.0, 5.0])


def test_missing_grid_cell_filled_along_an_axis():
    # axes x0 = 0, 1, 2 and x1 = 0, 1; cell (1, 1) is not measured.
    X = np.array([[0, 0], [0, 1], [1, 0], [2, 0], [2, 1]], dtype=float)
    y = np.array([1.0, 2.0, 3.0, 5.0, 7.0])
    m = LatencyModel().fit(X, y)
    assert m.n_measured_ == 5 and m.grid_.shape == (3, 2)
    # filled along x0 at x1 = 1: halfway between 2 (x0 = 0) and 7 (x0 = 2) -> 4.5
    assert m.grid_[1, 1] == pytest.approx(4.5)
    assert m.predict([[1.0, 1.0]])[0] == pytest.approx(4.5)
    # bilinear inside the filled cell: between 3 (x1 = 0) and 4.5 (x1 = 1)
    assert m.predict([[1.0, 0.5]])[0] == pytest.approx(3.75)
    # centre of the lower-left cell: mean of its corners 1, 2, 3, 4.5
    assert m.predict([[0.5, 0.5]])[0] == pytest.approx((1 + 2 + 3 + 4.5) / 4)


def test_clip_holds_edge_values():
    m = LatencyModel(out_of_range="clip").fit(X1, Y1)
    np.testing.assert_allclose(m.predict([[0.0], [-5.0], [6.0], [100.0]]), [10.0, 10.0, 30.0, 30.0])


def test_extrapolate_continues_last_segment_slope():
    m = LatencyModel(out_of_range="extrapolate").fit(X1, Y1)
    x = np.array([6.0, 10.0])
    np.testing.assert_allclose(m.predict(x[:, None]), 30.0 + 5.0 * (x - 4.0))  # slope of [2, 4]
    np.testing.assert_allclose(m.predict([[0.0]]), [10.0 - 10.0 * 1.0])  # slope of [1, 2]


def test_in_range_flags_out_of_range_rows():
    X = np.array([[0, 0], [0, 10], [4, 0], [4, 10]], dtype=float)
    m = LatencyModel().fit(X, np.arange(4.0) + 1)
    q = np.array([[2, 5], [0, 10], [5, 5], [2, -1], [-1, 11]], dtype=float)
    np.testing.assert_array_equal(m.in_range(q), [True, True, False, False, False])


def test_bad_settings_and_inputs_raise():
    with pytest.raises(ValueError, match="out_of_range"):
        LatencyModel(out_of_range="wrap").fit(X1, Y1)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LatencyModel().fit(X1, Y1[:2])
    with pytest.raises(ValueError, match="X has 2 features, but LatencyModel is expecting 1"):
        LatencyModel().fit(X1, Y1).predict([[1.0, 2.0]])


# These checks fit 10 continuous random features, so every sample adds a distinct
# value on every axis and the dense grid has n_samples ** 10 cells (56 ** 10 cells,
# 2.1 EiB of float64, for check_dtype_object). A grid model cannot hold that:
# fit refuses it with a ValueError naming the size (test_refuses_a_grid_it_cannot_hold).
_GRID_TOO_LARGE = "10 continuous features make a dense grid of n_samples**10 cells; fit refuses it"
EXPECTED_FAILED = {
    "check_dtype_object": _GRID_TOO_LARGE,
    "check_regressors_train": _GRID_TOO_LARGE,
    "check_regressor_data_not_an_array": _GRID_TOO_LARGE,
    "check_regressors_int": _GRID_TOO_LARGE,
}


@parametrize_with_checks([LatencyModel()], expected_failed_checks=lambda est: EXPECTED_FAILED,
                         xfail_strict=True)
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_refuses_a_grid_it_cannot_hold():
    X = np.random.default_rng(0).uniform(size=(56, 10))
    with pytest.raises(ValueError, match=r"grid of 303,305,489,096,114,176 cells \(56 x 56 x"):
        LatencyModel().fit(X, np.ones(56))
    small = np.array([[1.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    with pytest.raises(ValueError, match=r"grid of 9 cells .* more than max_grid_cells=8"):
        LatencyModel(max_grid_cells=8).fit(small, np.ones(3))
    assert LatencyModel(max_grid_cells=9).fit(small, np.ones(3)).grid_.shape == (3, 3)


def test_rejects_what_sklearn_rejects():
    model = LatencyModel().fit([[1.0, 2.0], [3.0, 4.0]], [1e-3, 2e-3])
    with pytest.raises(ValueError, match="Reshape your data"):
        LatencyModel().fit(np.arange(3.0), np.ones(3))
    with pytest.raises(ValueError, match="Reshape your data"):
        model.predict(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        LatencyModel().fit([[1.0, np.nan]], [1e-3])
    with pytest.raises(ValueError, match="infinity"):
        model.predict([[np.inf, 1.0]])
    with pytest.raises(ValueError, match="X has 1 features, but LatencyModel is expecting 2"):
        model.in_range([[1.0]])


def test_batched_interp_is_np_interp_bit_for_bit():
    # The grid fill interpolates many lines at once; the replay's outputs depend on it
    # giving exactly np.interp's numbers, including its handling of infinite values.
    rng = np.random.default_rng(1)
    coords = np.sort(rng.choice(5000, 12, replace=False)).astype(float)
    for _ in range(50):
        mask = rng.random(12) < 0.4
        mask[rng.integers(12)] = True
        fp = rng.lognormal(size=(8, mask.sum())) * 10.0 ** rng.integers(-7, 3)
        fp[0, 0] = np.inf
        fp[1] = np.inf
        x, xp = coords[~mask], coords[mask]
        got = _interp_rows(x, xp, fp)
        want = np.array([np.interp(x, xp, row) for row in fp])
        assert got.tobytes() == want.tobytes()
