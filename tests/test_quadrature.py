"""The quadrature of user nonlinearities without a closed form (ntkc.semantics.quadrature), on
examples/tanh_mlp.ntk: both backends give the same numbers, the rule is symmetric under
x ↔ x' by construction (to the bit), duplicate inputs give a PSD matrix, the rule and the
whole kernel agree with scipy's dblquad (independent, adaptive) where the run-time guard
accepts the variances, and the guard refuses the variances where it does not. The polar rule
(kinks and steps at 0, ntkc.semantics.quadrature_polar): closed forms, split dblquad, symmetry to the
bit, ρ → 1, and whole kernels of programs that mix two nonlinearities of one line.

Errors are relative to E|φ(u)ψ(v)| (for φ = ψ: to sqrt(K(x,x)·K(x',x'))), the scale the
guard uses (QUAD_TOL = 1e-6)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sympy
from scipy import integrate, special

import ntkc
from ntkc.codegen.printers import ArrayPrinter, NumbaPrinter
from ntkc.semantics import quadrature

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


def test_kink_away_from_zero_refused_unless_accepted(tmp_path):
    # A kink away from 0 keeps the trapezoidal rule (the polar rule splits at 0 only), which
    # converges like h² there (1e-3 to 1e-1 relative), so the default tolerance refuses it;
    # a user who accepts the error raises the module's QUAD_TOL.
    spec = tmp_path / "kinked.ntk"
    spec.write_text("network kinked\ninput x : vector[3]\nnonlin f(z) = max(z, 0.5) + "
                    "min(z, 0.5*z)\ng = dense(x, w_std=1.2, b_std=0.1)\nh = f(g)\n"
                    "y = dense(h)\noutput y\n")
    model = ntkc.load(spec)
    x = np.random.default_rng(9).standard_normal((6, 3))
    with pytest.raises(ValueError, match="kinks or steps.*raise QUAD_TOL"):
        model.kernel(x)
    model.module.QUAD_TOL = 1.0
    fast, ref = model.kernel(x, x[:4]), model.kernel(x, x[:4], backend="numpy")
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


# ---------------------------------------------------------------- the polar rule
# Integrands whose kinks and steps are all at 0 (ntkc.semantics.quadrature_polar). The rule is exact
# for piecewise polynomials up to rounding, so the closed forms are asserted at 1e-13 of
# E|f g|; against dblquad (split at the kinks, epsrel 1e-12: its own error is ~1e-12) at
# 1e-10, which also bounds the polar rule's error for smooth factors (erf, tanh: at most
# ~1e-12 up to variance 50, README).

Z = sympy.Symbol("z", real=True)
RELU, ABS, SQ = sympy.Max(Z, 0), sympy.Abs(Z), Z**2


def _relu(z):
    return max(z, 0.0)


def _rule(f, g=None, n0=32):
    """The generated helpers of E[f(u) g(v)] (E[f(u)]): pure-Python scalar and numpy."""
    it = quadrature.Integrand("t", Z, f, g)
    assert it.polar
    u, v = sympy.Symbol("u"), sympy.Symbol("v")
    src = quadrature.module_text(n0, {type("T", (), {"integrand": it}): "h"})
    for printer, emit in ((NumbaPrinter, quadrature.scalar_helper),
                          (ArrayPrinter, quadrature.numpy_helper)):
        pr = printer({u: "u", v: "v"}, {})
        gv = None if g is None else pr.doprint(g.xreplace({Z: v}))
        src += emit("h", it, pr.doprint(f.xreplace({Z: u})), gv)
    ns = {"math": math, "numpy": np, "np": np, "_np_erf": special.erf}
    exec("\n".join(src), ns)  # noqa: S102 - ntkc's own generated text
    return ns


def _split_dblquad(f, g, k11, k12, k22) -> tuple[float, float]:
    """(E[f(u) g(v)], E|f(u) g(v)|), u = √k11·s, v = c·s + d·t: split at s = 0, t = −c·s/d."""
    c, d = k12 / math.sqrt(k11), math.sqrt(max(k22 - k12 * k12 / k11, 0.0))
    opts = {"epsabs": 1e-15, "epsrel": 1e-12, "limit": 200}
    if d == 0.0:  # ρ = ±1: v = c·s
        return tuple(sum(integrate.quad(
            lambda s, a=absolute: (abs if a else float)(f(math.sqrt(k11) * s) * g(c * s)) * _pdf(s),
            lo, hi, **opts)[0] for lo, hi in ((-13, 0), (0, 13))) for absolute in (False, True))

    def outer(absolute):
        def inner(s):
            fs = f(math.sqrt(k11) * s)
            if fs == 0.0:
                return 0.0
            h = (lambda t: abs(g(c * s + d * t)) * _pdf(t)) if absolute else \
                (lambda t: g(c * s + d * t) * _pdf(t))
            t0 = min(max(-c * s / d, -13.0), 13.0)
            return (abs(fs) if absolute else fs) * _pdf(s) * (
                integrate.quad(h, -13, t0, **opts)[0] + integrate.quad(h, t0, 13, **opts)[0])
        return sum(integrate.quad(inner, a, b, **opts)[0] for a, b in ((-13, 0), (0, 13)))

    return outer(False), outer(True)


def test_polar_detection():
    def polar(f, g=None):
        return quadrature.Integrand("t", Z, f, g).polar

    assert polar(RELU, sympy.erf(Z)) and polar(ABS, SQ) and polar(sympy.sign(Z), sympy.tanh(Z))
    assert polar(sympy.Max(Z, 0) + sympy.Min(Z, Z / 2)) and polar(sympy.Heaviside(Z))
    assert polar(sympy.Piecewise((Z**3, Z > 0), (0, True)), sympy.tanh(RELU))
    assert not polar(sympy.tanh(Z), sympy.erf(Z))  # smooth: the trapezoidal rule
    assert not polar(RELU, sympy.Max(Z, 1)) and not polar(sympy.Abs(Z**2 - 1))


ARC_POINTS = [(1.0, 0.3, 2.0), (0.5, -0.5, 0.5), (50.0, 49.9, 50.0), (50.0, -49.99, 50.0),
              (3.0, 0.0, 12.0), (0.2, 0.2 * math.sqrt(30) * (1 - 1e-12), 30.0),
              (40.0, 1e-3, 0.01), (7.0, -7.0 * (1 - 1e-9), 7.0)]


@pytest.mark.parametrize("k11,k12,k22", ARC_POINTS)
def test_polar_closed_forms(k11, k12, k22):
    rho = max(-1.0, min(1.0, k12 / math.sqrt(k11 * k22)))
    s = math.sqrt(k11 * k22)
    theta = math.acos(rho)
    for f, g, exact, scale in (
            (RELU, RELU, s * (math.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi), s),
            (RELU, Z, k12 / 2, s),  # Stein
            (ABS, ABS, 2 / math.pi * s * (math.sqrt(1 - rho * rho) + rho * math.asin(rho)), s),
            (ABS, sympy.sign(Z), 0.0, s ** 0.5)):  # odd in v: exactly 0 by the θ+π pairing
        h = _rule(f, g)
        for value in (h["h"](k11, k12, k22, ()), h["h_np"](k11, k12, k22, ())):
            assert abs(value - exact) <= 1e-13 * scale, (f, g, value, exact)


@pytest.mark.parametrize("f,g,fs,gs", [
    (RELU, sympy.erf(Z), _relu, math.erf),
    (ABS, SQ, abs, lambda z: z * z),
    (sympy.sign(Z), sympy.tanh(Z), lambda z: math.copysign(1.0, z) if z else 0.0, math.tanh),
])
def test_polar_rule_against_dblquad(f, g, fs, gs):
    h = _rule(f, g)
    for k11, k12, k22 in [(0.5, 0.2, 1.0), (5.0, -4.9, 5.0), (50.0, 45.0, 45.0),
                          (30.0, 3.0, 2.0), (12.0, 12.0 * (1 - 1e-6), 12.0)]:
        ref, size = _split_dblquad(fs, gs, k11, k12, k22)
        assert abs(h["h"](k11, k12, k22, ()) - ref) <= 1e-10 * size, (k11, k12, k22)
        # swapping x and x' swaps f and g too: the same value to the bit
        assert h["h"](k11, k12, k22, ()) == _rule(g, f)["h"](k22, k12, k11, ())


def test_polar_rule_at_correlation_one():
    """Continuous as ρ → 1, where it is (to rounding) the 1-D rule of E[f(u) g(u)]."""
    h, h1 = _rule(RELU, sympy.erf(Z)), _rule(RELU * sympy.erf(Z))
    k = 4.0
    at_one = h["h"](k, k, k, ())
    assert abs(at_one - h1["h"](k, ())) <= 1e-14
    for eps in (1e-4, 1e-8, 1e-12, 1e-16):
        assert abs(h["h"](k, k * (1 - eps), k, ()) - at_one) <= 2 * math.sqrt(eps) + 1e-15
    assert h["h"](k, k * (1 + 1e-12), k, ()) == at_one  # clipped to ρ = 1
    relu2 = _rule(RELU, RELU)["h"]
    assert abs(relu2(2.0, 3.0, 4.5, ()) - _rule(RELU**2)["h"](3.0, ())) <= 1e-15 * 3
    assert abs(_rule(RELU**2)["h_np"](np.array([3.0]), ())[0] - 1.5) <= 1e-15


MIXED = {  # name: (nonlinearity lines, r(z), r'(z) for the reference)
    "relu_erf": ("a = relu(g)\nb = erf(g)\nr = 0.5*a + b",
                 lambda z: 0.5 * _relu(z) + math.erf(z),
                 lambda z: 0.5 * (z > 0) + 2 / math.sqrt(math.pi) * math.exp(-z * z)),
    "abs_square": ("a = abs(g)\nb = monomial(g, degree=2)\nr = a + b",
                   lambda z: abs(z) + z * z, lambda z: math.copysign(1.0, z) + 2 * z),
}


@pytest.fixture(scope="module", params=sorted(MIXED))
def mixed(request, tmp_path_factory):
    lines, r, dr = MIXED[request.param]
    spec = tmp_path_factory.mktemp("mixed") / f"{request.param}.ntk"
    spec.write_text(f"network {request.param}\ninput x : vector[3]\n"
                    f"g = dense(x, w_std=1.2, b_std=0.1)\n{lines}\ny = dense(r)\noutput y\n")
    return ntkc.load(spec), r, dr


def test_mixed_kinked_programs(mixed):
    """Two nonlinearities of one line (E[relu(u)·erf(v)], E[|u|·v²]): accepted, both
    backends agree, symmetric, and the last layer matches scipy (dblquad, split)."""
    model, r, dr = mixed
    rng = np.random.default_rng(11)
    x1, x2 = rng.standard_normal((7, 3)), 2.5 * rng.standard_normal((4, 3))
    k12, k21 = model.kernel(x1, x2), model.kernel(x2, x1)
    for a, b, c in zip(k12, model.kernel(x1, x2, backend="numpy"), k21):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())
        np.testing.assert_allclose(a, c.T, rtol=0, atol=1e-14 * np.abs(a).max())
    for i, j in ((0, 0), (1, 3), (6, 2)):
        k11, k12_, k22 = (1.44 * float(a @ b) / 3 + 0.01
                          for a, b in ((x1[i], x1[i]), (x1[i], x2[j]), (x2[j], x2[j])))
        e, size = _split_dblquad(r, r, k11, k12_, k22)
        d = _split_dblquad(dr, dr, k11, k12_, k22)[0]
        assert abs(k12.nngp[i, j] - e) <= 1e-10 * size
        assert abs(k12.ntk[i, j] - (e + d * k12_)) <= 1e-10 * (size + abs(d * k12_))


def test_user_leaky_relu_matches_builtin(tmp_path):
    """max(z, 0) + min(z, 0)/2: the polar rule in every expectation (pair, φ'·φ',
    variance), against the closed form of leaky_relu(alpha=0.5), over variances 0.1–200."""
    x = np.random.default_rng(12).standard_normal((6, 3)) * np.array([0.3, 3, 10, 1, 1, 1])[:, None]
    kernels = []
    for decl, call in (("nonlin f(z) = max(z, 0) + min(z, 0)/2\n", "f({})"),
                       ("", "leaky_relu({}, alpha=0.5)")):
        spec = tmp_path / f"n{len(decl)}.ntk"
        spec.write_text(f"network n{len(decl)}\ninput x : vector[3]\n{decl}"
                        f"g = dense(x, w_std=1.2, b_std=0.1)\nh = {call.format('g')}\n"
                        f"g2 = dense(h)\nh2 = {call.format('g2')}\ny = dense(h2)\noutput y\n")
        kernels.append(ntkc.load(spec).kernel(x))
    for a, b in zip(*kernels):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * np.abs(b).max())


def test_polar_guard_sound():
    """Beyond its finest level the polar rule's error grows (smooth factors sharpen):
    the guard's estimate tracks it and refuses it."""
    ns = _rule(RELU, sympy.erf(Z))
    ns["_Q_HELPERS"] = {"h": (ns["h_f"], 2, True)}
    ns["_Q_ERRORS"] = {}
    for k, refused in ((50.0, False), (5000.0, True)):
        est, at = ns["quadrature_error"]("h", k, ())
        assert (est > 1e-6) == refused, (k, est)
        true = max(abs(ns["h"](at, rho * at, at, ()) - ref) / size for rho in (0.5, 0.9, 0.99)
                   for ref, size in [_split_dblquad(_relu, math.erf, at, rho * at, at)])
        assert true <= 10 * est + 1e-13 and (not refused or est <= 30 * true), (k, est, true)


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


def _polar_table(ks=(0.5, 2, 5, 30, 50, 128, 500, 2000)) -> None:
    """README's polar table: error against split dblquad (guard's estimate; R: refused)."""
    def sgn(z):
        return math.copysign(1.0, z) if z else 0.0

    derf = 2 / sympy.sqrt(sympy.pi) * sympy.exp(-Z**2)
    for label, f, g, fs, gs in (
            ("relu·relu", RELU, RELU, _relu, _relu), ("abs·z²", ABS, SQ, abs, lambda z: z * z),
            ("relu·erf", RELU, sympy.erf(Z), _relu, math.erf),
            ("sign·tanh", sympy.sign(Z), sympy.tanh(Z), sgn, math.tanh),
            ("step·erf'", sympy.Heaviside(Z), derf, lambda z: float(z > 0),
             lambda z: 2 / math.sqrt(math.pi) * math.exp(-z * z))):
        ns = _rule(f, g)
        ns.update(_Q_HELPERS={"h": (ns["h_f"], 2, True)}, _Q_ERRORS={})
        cells = []
        for k in ks:
            err = max(abs(ns["h_np"](k, rho * k, k, ())[()] - ref) / size
                      for rho in (-0.5, 0.3, 0.9, 0.99)
                      for ref, size in [_split_dblquad(fs, gs, k, rho * k, k)])
            est = ns["quadrature_error"]("h", k, ())[0]
            cells.append(f"{err:.0e} ({est:.0e}){' R' if est > 1e-6 else ''}")
        print(label + ": " + " | ".join(f"k={k}: {c}" for k, c in zip(ks, cells)))


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", integrate.IntegrationWarning)
    _error_table()
    _polar_table()
