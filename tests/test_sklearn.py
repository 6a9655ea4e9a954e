"""ntkc.sklearn: the estimators pass scikit-learn's own estimator checks, work in Pipeline
and GridSearchCV (spec params as params__<name>), and predict what kernel regression on
the model's Gram matrices gives, solved here with numpy.

Waived checks (relu network, examples/open_mlp.ntk): check_methods_sample_order_invariance,
check_methods_subset_invariance and check_estimators_pickle ask predictions to agree to
1e-7 when the test batch is reordered, cut, or the estimator is pickled (a new copy of
the training inputs, at another address). Their test points repeat training points. At a
repeated point the correlation ρ is 1, where relu's arc-cosine kernel θ = acos(ρ) has
infinite slope: the last bit of the BLAS dot product x·x' (which depends on the GEMM's
blocking and the arrays' alignment) moves the kernel by ~1e-8 there, and the regression
solve amplifies that to ~1e-7. test_waived_checks_pass_for_a_smooth_kernel runs the same
three checks on the erf network (smooth at ρ = 1) and they pass: the waiver is about
relu's kernel, not about the estimators.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks

import ntkc
from ntkc.sklearn import NTKClassifier, NTKRegressor, default_spec

ROOT = Path(__file__).resolve().parent.parent
OPEN_MLP = ROOT / "examples" / "open_mlp.ntk"
OPEN_ERF = Path(__file__).resolve().parent / "data" / "specs" / "open_erf_mlp.ntk"
WAIVED = {"check_methods_sample_order_invariance", "check_methods_subset_invariance",
          "check_estimators_pickle"}


def test_example_is_the_default_spec():
    assert OPEN_MLP.read_text() == default_spec().read_text()


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [NTKRegressor, NTKClassifier])
def test_check_estimator(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's SkipTestWarning for pandas, array API
        results = estimator_checks.check_estimator(estimator(OPEN_MLP), on_fail=None)
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert set(failed) <= WAIVED, failed
    assert sum(r["status"] == "passed" for r in results) >= 45  # the checks did run


@pytest.mark.parametrize("estimator", [NTKRegressor, NTKClassifier])
def test_waived_checks_pass_for_a_smooth_kernel(estimator):
    for name in sorted(WAIVED):
        getattr(estimator_checks, name)(estimator.__name__, estimator(OPEN_ERF))


def _digits(n: int):
    x, y = load_digits(return_X_y=True)
    return x[:n] / 16.0, y[:n]


def test_predictions_are_kernel_regression():
    """The regressor's mean equals Θ(x*, X)·(Θ(X, X) + ε·tr(Θ)/N·I)⁻¹·y with the model's
    own Gram matrices, solved by numpy (rtol 1e-10: one solve of a well-conditioned
    system, ε = 1e-2)."""
    x, y = _digits(120)
    target = np.stack([y % 2, y / 9.0], axis=1)
    est = NTKRegressor(OPEN_MLP, diag_reg=1e-2, params={"w": 1.2}).fit(x[:80], target[:80])
    model = ntkc.load(OPEN_MLP)
    train = model.kernel(x[:80], get="ntk", params={"w": 1.2})
    test = model.kernel(x[80:], x[:80], get="ntk", params={"w": 1.2})
    reg = train + 1e-2 * np.trace(train) / 80 * np.eye(80)
    want = test @ np.linalg.solve(reg, target[:80])
    np.testing.assert_allclose(est.predict(x[80:]), want, rtol=1e-10, atol=1e-12)


def test_spec_params_are_estimator_params():
    est = NTKClassifier(OPEN_MLP)
    assert est.get_params()["params__w"] == 1.4  # the spec's default
    est.set_params(params__w=2.0, diag_reg=0.1)
    assert est.params == {"w": 2.0} and est.get_params()["params__w"] == 2.0
    with pytest.raises(ValueError, match="the spec has no param 'v'"):
        est.set_params(params__v=1.0)


def test_grid_search_and_pipeline_on_digits():
    x, y = _digits(300)
    pipe = make_pipeline(StandardScaler(), NTKClassifier(OPEN_MLP))
    grid = GridSearchCV(pipe, {"ntkclassifier__params__w": [1.0, 2.0],
                               "ntkclassifier__diag_reg": [1e-3, 1e-1]}, cv=3)
    grid.fit(x[:200], y[:200])
    assert set(grid.best_params_) == {"ntkclassifier__params__w", "ntkclassifier__diag_reg"}
    assert grid.score(x[200:], y[200:]) > 0.85  # digits, 200 training points


def test_rows_are_reshaped_to_the_spec_input():
    # an image[8, 8, 1] conv spec takes digits' 64 features per row
    x, y = _digits(60)
    est = NTKClassifier(ROOT / "examples" / "digits_cntk_gap.ntk").fit(x[:40], y[:40])
    assert est.predict(x[40:]).shape == (20,)
    with pytest.raises(ValueError, match="features"):
        est.predict(x[40:, :63])
