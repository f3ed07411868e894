"""LatencyModel: the scikit-learn estimator contract and hand-computed interpolation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from mist.calibrate.estimator import LatencyModel

# y = 10, 20, 30 at x = 1, 2, 4: slope 10 on [1, 2], 5 on [2, 4].
X1 = np.array([[1.0], [2.0], [4.0]])
Y1 = np.array([10.0, 20.0, 30.0])


def test_clone_and_params():
    m = LatencyModel(out_of_range="clip")
    assert m.get_params() == {"out_of_range": "clip"}
    c = clone(m)
    assert c is not m and c.get_params() == {"out_of_range": "clip"}
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
    with pytest.raises(ValueError, match="same length"):
        LatencyModel().fit(X1, Y1[:2])
    with pytest.raises(ValueError, match="expected 1 features"):
        LatencyModel().fit(X1, Y1).predict([[1.0, 2.0]])
