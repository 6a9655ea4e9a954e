"""Hyperparameters by marginal likelihood on the kernels' exact gradients:
ntkc.predict.optimize (fit(..., optimize=...)) and ntkc.sklearn.Kernel in scikit-learn's
GaussianProcessRegressor, on the sine data of examples/sine_ensemble.py."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import WhiteKernel
from test_sine_ensemble import load_example

import ntkc
from ntkc.predict import marginal_likelihood
from ntkc.predict.fit import fit, select_diag_reg
from ntkc.predict.optimize import nll_and_gradient
from ntkc.sklearn import Kernel


@pytest.fixture(scope="module")
def sine(tmp_path_factory):
    example = load_example()
    path = tmp_path_factory.mktemp("sine") / "sine_erf_mlp.ntk"
    path.write_text(example.SPEC)
    x, y, _, _ = example.make_data(example.Config())
    return path, x, y


def test_nll_gradient_against_its_own_differences():
    """The NLL's gradient formula on K(θ) = θ₀·A + θ₁²·B (so ∂K is exact), relative and
    absolute diag_reg, two output columns: against central differences of the NLL
    computed by numpy.linalg.slogdet and solve (rtol 1e-7: the difference quotient's
    h² truncation at h = 1e-5 and rounding ~1e-11/h)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 6, 6))
    a, b = a @ a.T, b @ b.T
    y = rng.normal(size=(6, 2))

    def nll(theta, r, absolute):
        k = theta[0] * a + theta[1] ** 2 * b
        m = k + r * (1 if absolute else np.trace(k) / 6) * np.eye(6)
        return 0.5 * np.sum(y * np.linalg.solve(m, y)) + np.linalg.slogdet(m)[1] + 6 * np.log(
            2 * np.pi)

    theta, r, h = np.array([0.7, 1.3]), 0.05, 1e-5
    for absolute in (False, True):
        k = theta[0] * a + theta[1] ** 2 * b
        value, grads, g_reg = nll_and_gradient(k, [a, 2 * theta[1] * b], y, r, absolute)
        assert value == pytest.approx(nll(theta, r, absolute), rel=1e-12)
        for i in range(2):
            step = h * np.eye(2)[i]
            fd = (nll(theta + step, r, absolute) - nll(theta - step, r, absolute)) / (2 * h)
            assert grads[i] == pytest.approx(fd, rel=1e-7)
        fd = (nll(theta, r + h, absolute) - nll(theta, r - h, absolute)) / (2 * h)
        assert g_reg == pytest.approx(fd, rel=1e-7)


@pytest.mark.slow
def test_fit_optimize_improves_the_marginal_likelihood(sine):
    path, x, y = sine
    model = ntkc.load(path)
    fm = fit(model, x, y, kernel="nngp", diag_reg=0.1, optimize=("w", "b", "diag_reg"))
    opt = fm.optimized
    assert opt.nll < opt.nll_start - 0.1  # a real improvement, not rounding
    # its NLL is the one ntkc.predict computes from the kernel at the values found
    k = model.kernel(x, get="nngp", params=opt.params)
    assert opt.nll == pytest.approx(marginal_likelihood(k, y, diag_reg=opt.diag_reg), rel=1e-9)
    assert fm.params == opt.params and fm.predict(x).shape == (len(x),)
    with pytest.raises(ValueError, match="optimize: name the spec's params"):
        fit(model, x, y, optimize=("v",))


@pytest.mark.slow
def test_gp_kernel_gradient_and_gaussian_process(sine):
    """scikit-learn's GaussianProcessRegressor fits the spec's params and the noise with
    ntkc.sklearn.Kernel's exact gradient, and reaches a marginal likelihood at least as
    good as the diag_reg grid of select_diag_reg (which keeps the spec's w and b)."""
    path, x, y = sine
    kernel = Kernel(path)
    k, gradient = kernel(x, eval_gradient=True)
    theta, h = kernel.theta, 1e-4
    for i in range(len(theta)):  # d/dlog θ against 5-point differences in log θ (rtol 1e-7)
        def at(step, i=i):
            return kernel.clone_with_theta(theta + step * h * np.eye(len(theta))[i])(x)
        fd = (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * h)
        np.testing.assert_allclose(gradient[..., i], fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(kernel.diag(x), np.diag(k), rtol=1e-12)
    assert clone(kernel).get_params() == kernel.get_params()

    gpr = GaussianProcessRegressor(kernel=kernel + WhiteKernel(), random_state=0).fit(x, y)
    grid = select_diag_reg(ntkc.load(path), x, y, kernel="nngp")
    assert gpr.log_marginal_likelihood_value_ >= -grid.nll
