"""The quadrature of user nonlinearities without a closed form (ntkc.quadrature), on
examples/tanh_mlp.ntk: both backends give the same numbers, the rule is symmetric under
x ↔ x' by construction (to the bit), duplicate inputs give a PSD matrix, the rule and the
whole kernel agree with scipy's dblquad (independent, adaptive) where the run-time guard
accepts the variances, and the guard refuses the variances where it does not.

Errors are relative to E|φ(u)ψ(v)| (for φ = ψ: to sqrt(K(x,x)·K(x',x'))), the scale the
guard uses (QUAD_TOL = 1e-6)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate

import ntkc

# scipy's quad reports round-off where it reaches ~1e-14 instead of the 1e-12 asked for.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
ROOT = Path(__file__).resolve().parents[1]
W, B = 1.5, 0.1  # tanh_mlp's w and b: K(g1) = W²·x·x'/8 + B²


@pytest.fixture(scope="module")
def model():
    return ntkc.load(ROOT / "examples" / "tanh_mlp.ntk")


def _inputs(n: int, variance: float, seed: int = 0) -> np.ndarray:
    """n inputs whose first-layer pre-activation variances are about ``variance``."""
    x = np.random.default_rng(seed).standard_normal((n, 8))
    scale = np.sqrt((variance - B * B) * 8 / W**2) * (0.8 + 0.4 * np.arange(n) / n)
    return x / np.linalg.norm(x, axis=1, keepdims=True) * scale[:, None]


def _pdf(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _dblquad(f, g, k11, k12, k22) -> tuple[float, float]:
    """(E[f(u) g(v)], E|f(u) g(v)|) by scipy dblquad in Cholesky coordinates."""
    c = k12 / math.sqrt(k11)
    r = math.sqrt(max(k22 - c * c, 0.0))

    def integrand(t, s, absolute):
        value = f(math.sqrt(k11) * s) * g(c * s + r * t) * _pdf(s) * _pdf(t)
        return abs(value) if absolute else value

    return tuple(integrate.dblquad(integrand, -12, 12, -12, 12, args=(absolute,),
                                   epsabs=1e-14, epsrel=1e-12)[0] for absolute in (False, True))


def _quad1d(f, k) -> float:
    return integrate.quad(lambda s: f(math.sqrt(k) * s) * _pdf(s), -12, 12, epsabs=1e-14,
                          epsrel=1e-12, limit=200)[0]


def _dtanh(z):
    return 1.0 - math.tanh(z) ** 2


def test_backends_agree(model):
    x1, x2 = _inputs(12, 2.3, 1), _inputs(7, 4.0, 2)
    for args in ((x1,), (x1, x2)):
        fast, ref = model.kernel(*args), model.kernel(*args, backend="numpy")
        for a, b in zip(fast, ref):
            # The same rule and nodes: only the summation order differs.
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_symmetric_under_swapping_inputs(model, backend):
    x1, x2 = _inputs(9, 2.3, 3), _inputs(6, 8.0, 4)
    k12 = model.kernel(x1, x2, backend=backend)
    k21 = model.kernel(x2, x1, backend=backend)
    for a, b in zip(k12, k21):
        # x·x' comes from two different GEMMs (rounding); the rule itself is exact.
        np.testing.assert_allclose(a, b.T, rtol=0, atol=1e-13 * np.abs(a).max())
    full = model.kernel(np.concatenate([x1, x2]), backend=backend)
    for g in full:
        np.testing.assert_allclose(g, g.T, rtol=0, atol=1e-13 * np.abs(g).max())


def test_helpers_symmetric_to_the_bit(model):
    mod, p = model.module, model.module.param_vector()
    rng = np.random.default_rng(5)
    for _ in range(20):
        k11, k22 = rng.uniform(0.01, 40, 2)
        k12 = rng.uniform(-1, 1) * math.sqrt(k11 * k22)
        for helper in (mod._quad0, mod._quad2):
            assert helper(k11, k12, k22, p) == helper(k22, k12, k11, p)


@pytest.mark.parametrize("variance", [2.3, 30.0])
def test_duplicate_rows_psd(model, variance):
    x = _inputs(8, variance, 6)
    k = model.kernel(np.concatenate([x, x[:5]]))
    for g in k:
        eig = np.linalg.eigvalsh(g)
        assert eig.min() >= -1e-12 * eig.max()
        # Duplicates give duplicate rows: the pair rule at ρ = 1 is the 1-D rule.
        np.testing.assert_allclose(g[8:], g[:5], rtol=0, atol=1e-13 * eig.max())


@pytest.mark.parametrize("k", [0.5, 2.0, 5.0, 30.0])
def test_rule_against_dblquad(model, k):
    """Measured errors: at most 2e-8 (φ'·φ') and 1e-9 (φ·φ, φ²) at variances up to 50
    (README table); asserted: below QUAD_TOL, and below 10× the guard's estimate."""
    mod, p = model.module, model.module.param_vector()
    pairs = {mod._quad2: (math.tanh, "_quad2"), mod._quad0: (_dtanh, "_quad0")}
    for helper, (f, name) in pairs.items():
        estimate = mod.quadrature_error(name, k, p)[0]
        for rho in (-0.5, 0.3, 0.9, 0.99):
            ref, size = _dblquad(f, f, k, rho * k, k)
            err = abs(helper(k, rho * k, k, p) - ref) / size
            assert err <= mod.QUAD_TOL
            assert err <= 10 * estimate + 1e-11, (name, rho, err, estimate)
    ref = _quad1d(lambda z: math.tanh(z) ** 2, k)
    err = abs(mod._quad1(k, p) - ref) / ref
    assert err <= min(mod.QUAD_TOL, 10 * mod.quadrature_error("_quad1", k, p)[0] + 1e-11)


def test_unequal_variances_against_dblquad(model):
    mod, p = model.module, model.module.param_vector()
    for k11, k22, rho in ((0.3, 6.0, 0.7), (20.0, 2.0, -0.4), (45.0, 45.0 * 0.98, 0.95)):
        k12 = rho * math.sqrt(k11 * k22)
        for helper, f in ((mod._quad2, math.tanh), (mod._quad0, _dtanh)):
            ref, size = _dblquad(f, f, k11, k12, k22)
            assert abs(helper(k11, k12, k22, p) - ref) <= 1e-7 * size


def _reference_kernels(x1: np.ndarray, x2: np.ndarray) -> tuple[float, float]:
    """K(x1, x2) and Θ(x1, x2) of tanh_mlp, layer by layer with scipy (NTK param.)."""
    k11, k12, k22 = (W * W * float(a @ b) / 8 + B * B for a, b in ((x1, x1), (x1, x2), (x2, x2)))
    t12 = k12
    for _ in range(2):  # h1 = tanh(g1), g2 = dense(h1); h2 = tanh(g2), y = dense(h2)
        e12 = _dblquad(math.tanh, math.tanh, k11, k12, k22)[0]
        d12 = _dblquad(_dtanh, _dtanh, k11, k12, k22)[0]
        v11 = _quad1d(lambda z: math.tanh(z) ** 2, k11)
        v22 = _quad1d(lambda z: math.tanh(z) ** 2, k22)
        k11, k12, k22, t12 = (W * W * v11 + B * B, W * W * e12 + B * B, W * W * v22 + B * B,
                              W * W * e12 + B * B + W * W * d12 * t12)
    return k12, t12


def test_high_variance_kernel_accurate(model):
    # The case: pre-activation variance ≈ 30 (the rule refines itself up to 50).
    x = _inputs(4, 30.0, 7)
    k = model.kernel(x)
    for i, j in ((0, 1), (2, 3)):
        nngp, ntk = _reference_kernels(x[i], x[j])
        assert abs(k.nngp[i, j] - nngp) <= 1e-7 * math.sqrt(k.nngp[i, i] * k.nngp[j, j])
        assert abs(k.ntk[i, j] - ntk) <= 1e-7 * math.sqrt(k.ntk[i, i] * k.ntk[j, j])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_out_of_range_variance_refused(model, backend):
    x = _inputs(5, 10.0, 8)
    x[3] *= math.sqrt(900 / 10.0)  # variance ≈ 900, far above the finest level
    with pytest.raises(ValueError, match=r"pre-activation variance \d+.* \(input row 3\) at "
                                         r"line 15 \(h1\) is beyond the accurate range of "
                                         r"--quad-degree 32.*> QUAD_TOL = 1e-06"):
        model.kernel(x, backend=backend)
    with pytest.raises(ValueError, match="input row 3"):
        model.kernel(x[:2], x, backend=backend)  # x' is checked too


def test_guard_estimate_is_honest(model):
    """Beyond the accurate range the estimate tracks the true error (dblquad)."""
    mod, p = model.module, model.module.param_vector()
    k = 300.0
    estimate, at = mod.quadrature_error("_quad0", k, p)
    assert estimate > mod.QUAD_TOL
    true = max(abs(mod._quad0(at, rho * at, at, p) - ref) / size for rho in (0.9, 0.99)
               for ref, size in [_dblquad(_dtanh, _dtanh, at, rho * at, at)])
    assert 0.3 * true <= estimate <= 3 * true


def test_kinked_nonlinearity_refused_unless_accepted(tmp_path):
    # Kinks converge like h²: ~3e-3 at every variance (scale invariance), so the default
    # tolerance refuses them; a user who accepts the error raises the module's QUAD_TOL.
    spec = tmp_path / "kinked.ntk"
    spec.write_text("network kinked\ninput x : vector[3]\nnonlin f(z) = max(z, 0) + "
                    "min(z, 0.5*z)\ng = dense(x, w_std=1.2, b_std=0.1)\nh = f(g)\n"
                    "y = dense(h)\noutput y\n")
    model = ntkc.load(spec)
    x = np.random.default_rng(9).standard_normal((6, 3))
    with pytest.raises(ValueError, match="kinks or steps.*raise QUAD_TOL"):
        model.kernel(x)
    model.module.QUAD_TOL = 1e-2
    fast, ref = model.kernel(x, x[:4]), model.kernel(x, x[:4], backend="numpy")
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


def _error_table(degrees=(16, 32, 64), ks=(0.5, 2, 5, 30, 50, 100, 300)) -> None:
    """README's table: error against dblquad (guard's estimate; R: refused)."""
    rhos = (-0.5, 0.3, 0.9, 0.99)
    for n in degrees:
        mod = ntkc.load(ROOT / "examples" / "tanh_mlp.ntk", quad_degree=n).module
        p = mod.param_vector()
        for label, f, helper, name in (("φ·φ", math.tanh, mod._quad2, "_quad2"),
                                       ("φ'·φ'", _dtanh, mod._quad0, "_quad0")):
            cells = []
            for k in ks:
                err = 0.0
                for rho in rhos:
                    ref, size = _dblquad(f, f, k, rho * k, k)
                    err = max(err, abs(helper(k, rho * k, k, p) - ref) / size)
                est = mod.quadrature_error(name, k, p)[0]
                cells.append(f"{err:.0e} ({est:.0e}){' R' if est > mod.QUAD_TOL else ''}")
            print(f"n = {n} {label}: " + " | ".join(f"k={k}: {c}" for k, c in zip(ks, cells)))


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", integrate.IntegrationWarning)
    _error_table()
