"""ntkc.predict.fit against direct dense linear algebra on the kernels from model.kernel.

The references solve with np.linalg.solve and evolve with scipy.linalg.expm of the
explicit matrix, independently of ntkc.predict's Cholesky / eigenbasis code; so
these tests check fit's plumbing (which kernels, which regulariser, which
normalisation of the learning rate) as well as the numbers, to 1e-8 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import ntkc
from ntkc.predict.fit import DEFAULT_DIAG_REGS, FittedModel, fit, select_diag_reg

SPEC = """\
network fit_erf
parameterization ntk
param w = 1.5
param b = 0.05
input x : vector[3]
g1 = dense(x, w_std=w, b_std=b)
h1 = erf(g1)
g2 = dense(h1, w_std=w, b_std=b)
h2 = erf(g2)
y  = dense(h2, w_std=w, b_std=b)
output y
"""

N, M, C = 9, 6, 2
RTOL = 1e-8


def close(actual, desired, rtol=RTOL):
    # A floor of rtol * max|desired| keeps near-zero entries (cancellations) from
    # demanding more than the float64 solves can give.
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "fit_erf.ntk"
    path.write_text(SPEC)
    return ntkc.load(path)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, 3))
    xs = rng.normal(size=(M, 3))
    y = rng.normal(size=(N, C))
    return x, xs, y


def kernels(model, a, b=None, params=None):
    k = model.kernel(a, b, params=params)
    return k.nngp, k.ntk


def reg(k, diag_reg):
    return k + diag_reg * np.trace(k) / len(k) * np.eye(len(k))


def expm_gain(k, tau):
    # I - exp(-tau K), from the explicit matrix exponential.
    return np.eye(len(k)) - scipy.linalg.expm(-tau * k)


class Shifted:
    """A model whose train-train kernels have smallest eigenvalue -0.1 (not PSD).

    Not positive definite until an absolute diag_reg exceeds 0.1. Test-train blocks
    are passed through unchanged.
    """

    def __init__(self, model):
        self.model = model

    def kernel(self, x1, x2=None, get=("nngp", "ntk"), params=None):
        out = self.model.kernel(x1, x2, get=get, params=params)
        if x2 is not None:
            return out
        return tuple(g - (np.linalg.eigvalsh(g)[0] + 0.1) * np.eye(len(g)) for g in out)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_ntk_infinite_time_mean_and_cov(model, data, diag_reg):
    x, xs, y = data
    k, th = kernels(model, x)
    ks, ths = kernels(model, xs, x)
    kss = model.kernel(xs, get="nngp")
    thr = reg(th, diag_reg)
    mean = ths @ np.linalg.solve(thr, y)
    a = np.linalg.solve(thr, ths.T)
    cov = kss + a.T @ k @ a - ks @ a - (ks @ a).T

    fm = fit(model, x, y, kernel="ntk", diag_reg=diag_reg)
    assert isinstance(fm, FittedModel)
    close(fm.predict(xs), mean)
    out = fm.predict(xs, return_cov=True)
    close(out.mean, mean)
    close(out.covariance, cov)
    m2, _ = out  # unpacks as a pair
    close(m2, mean)


def test_nngp_infinite_time_is_gp_posterior(model, data):
    x, xs, y = data
    k, _ = kernels(model, x)
    ks, _ = kernels(model, xs, x)
    kss = model.kernel(xs, get="nngp")
    kr = reg(k, 1e-4)
    fm = fit(model, x, y, kernel="nngp", diag_reg=1e-4)
    assert set(fm.train_kernels) == {"nngp"}  # no NTK needed, none computed
    mean, cov = fm.predict(xs, return_cov=True)
    close(mean, ks @ np.linalg.solve(kr, y))
    close(cov, kss - ks @ np.linalg.solve(kr, ks.T))


def test_finite_times_match_expm(model, data):
    x, xs, y = data
    k, th = kernels(model, x)
    ks, ths = kernels(model, xs, x)
    kss = model.kernel(xs, get="nngp")
    lr, ts = 0.7, np.array([0.0, 0.5, 3.0, 40.0])
    fm = fit(model, x, y, kernel="ntk", t=ts, learning_rate=lr)
    mean, cov = fm.predict(xs, return_cov=True)
    assert mean.shape == (len(ts), M, C) and cov.shape == (len(ts), M, M)
    for i, t in enumerate(ts):
        tau = lr * t / y.size  # NT: learning rate normalised by y_train.size = N * C
        e = expm_gain(th, tau)
        inv_e = np.linalg.solve(th, e)  # Θ^{-1} (I - exp(-τΘ))
        close(mean[i], ths @ inv_e @ y)
        a = inv_e @ ths.T
        close(cov[i], kss + a.T @ k @ a - ks @ a - (ks @ a).T)

    fn = fit(model, x, y, kernel="nngp", t=ts, learning_rate=lr)
    mean, cov = fn.predict(xs, return_cov=True)
    for i, t in enumerate(ts):
        tau = lr * t / y.size
        close(mean[i], ks @ np.linalg.solve(k, expm_gain(k, tau)) @ y)
        close(cov[i], kss - ks @ np.linalg.solve(k, expm_gain(k, 2 * tau)) @ ks.T)


def test_scalar_time_and_1d_targets(model, data):
    x, xs, y = data
    _, th = kernels(model, x)
    _, ths = kernels(model, xs, x)
    y1 = y[:, 0]
    fm = fit(model, x, y1, kernel="ntk", t=5.0)
    mean = fm.predict(xs)
    assert mean.shape == (M,)
    close(mean, ths @ np.linalg.solve(th, expm_gain(th, 5.0 / N)) @ y1)


def test_params_and_absolute_diag_reg(model, data):
    x, xs, y = data
    params = {"w": 1.1, "b": 0.3}
    _, th = kernels(model, x, params=params)
    _, ths = kernels(model, xs, x, params=params)
    _, th_default = kernels(model, x)
    assert not np.allclose(th, th_default)  # the override really changes the kernel
    fm = fit(model, x, y, params=params, diag_reg=0.05, diag_reg_absolute_scale=True)
    close(fm.predict(xs), ths @ np.linalg.solve(th + 0.05 * np.eye(N), y))


def test_train_kernel_computed_once(model, data):
    x, xs, y = data
    calls = []

    class Spy:
        def kernel(self, x1, x2=None, get=("nngp", "ntk"), params=None):
            calls.append((len(x1), None if x2 is None else len(x2)))
            return model.kernel(x1, x2, get=get, params=params)

    fm = fit(Spy(), x, y, kernel="ntk")
    fm.predict(xs)
    fm.predict(xs, return_cov=True)
    assert calls.count((N, None)) == 1  # train-train: once, in fit
    assert (M, N) in calls and (M, None) in calls


def test_select_diag_reg_matches_brute_force(model, data):
    x, _, y = data
    k, th = kernels(model, x)
    cands = (1e-4, 1e-2, 1e-1, 1.0)
    ref = {}
    for name, g in (("nngp", k), ("ntk", th)):
        for c in cands:
            dist = scipy.stats.multivariate_normal(np.zeros(N), reg(g, c))
            ref[name, c] = -sum(dist.logpdf(y[:, j]) for j in range(C))
    sel = select_diag_reg(model, x, y, kernel=("nngp", "ntk"), candidates=cands)
    for key, v in ref.items():
        assert sel.table[key] == pytest.approx(v, rel=1e-8)
    best = min(ref, key=ref.get)
    assert (sel.kernel, sel.diag_reg) == best
    assert sel.nll == pytest.approx(ref[best], rel=1e-8)

    one = select_diag_reg(model, x, y, kernel="nngp")
    assert one.kernel == "nngp" and one.diag_reg in DEFAULT_DIAG_REGS


def test_select_diag_reg_skips_singular_candidates(model, data):
    x, _, y = data

    sel = select_diag_reg(
        Shifted(model), x, y, candidates=(0.0, 0.05, 0.2, 1.0), diag_reg_absolute_scale=True
    )
    assert sel.table["nngp", 0.0] == np.inf and sel.table["nngp", 0.05] == np.inf
    assert sel.diag_reg in (0.2, 1.0) and np.isfinite(sel.nll)
    with pytest.raises(ValueError, match="positive definite"):
        select_diag_reg(Shifted(model), x, y, candidates=(0.0, 0.05), diag_reg_absolute_scale=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": "rbf"}, "kernel must be 'nngp' or 'ntk'"),
        ({"kernel": None}, "kernel must be 'nngp' or 'ntk'"),
        ({"t": -1.0}, "t must be"),
        ({"t": [1.0, np.nan]}, "t must be"),
        ({"diag_reg": -1.0}, "diag_reg"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"params": {"nope": 1.0}}, "unknown param"),
    ],
)
def test_bad_options(model, data, kwargs, match):
    x, _, y = data
    with pytest.raises(ValueError, match=match):
        fit(model, x, y, **kwargs)


def test_bad_data(model, data):
    x, _, y = data
    with pytest.raises(ValueError, match="9 inputs but y_train has 8"):
        fit(model, x, y[:-1])
    ynan = y.copy()
    ynan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/Inf.*\(3, 1\)"):
        fit(model, x, ynan)
    with pytest.raises(ValueError, match="x_train is empty"):
        fit(model, np.zeros((0, 3)), np.zeros((0,)))
    with pytest.raises(ValueError, match="y_train is empty"):
        fit(model, x, np.zeros((N, 0)))
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, C\)"):
        fit(model, x, np.zeros((N, 2, 2)))
    xnan = x.copy()
    xnan[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        fit(model, xnan, y)
    with pytest.raises(ValueError, match="expected shape"):
        fit(model, x[:, :2], y)
    fm = fit(model, x, y)
    with pytest.raises(ValueError, match="expected shape"):
        fm.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="candidates is empty"):
        select_diag_reg(model, x, y, candidates=())
    with pytest.raises(ValueError, match="kernel must be"):
        select_diag_reg(model, x, y, kernel=("nngp", "rbf"))
    with pytest.raises(ValueError, match=">= 0"):
        select_diag_reg(model, x, y, candidates=(-1.0,))


def test_not_positive_definite_reported_at_fit(model, data):
    x, _, y = data
    with pytest.raises(ValueError, match="not positive definite.*increase diag_reg"):
        fit(Shifted(model), x, y, kernel="ntk", diag_reg=0.05, diag_reg_absolute_scale=True)
    # Finite times go through the eigenbasis (negative eigenvalues clipped), no error.
    fm = fit(Shifted(model), x, y, kernel="ntk", t=1.0)
    assert np.isfinite(fm.predict(x[:2])).all()
