"""Tests of ntkc.semantics.duals: closed-form dual activations against independent numerics.

References used here (none of them reuses the closed forms under test):
* smooth φ: 2-D Gauss–Hermite quadrature (probabilists', 240 nodes per axis) in the
  Cholesky coordinates of Σ. The integrands are entire and the nodes resolve them to
  ~1e-12 relative, so the tolerance is rtol 1e-9.
* non-smooth but positively homogeneous φ (the ReLU family, sign, rectified monomials):
  in polar coordinates of the standard 2-D Gaussian, u = √k11 r cos α,
  v = √k22 r cos(α - θ) with cos θ = ρ, so E[φ(u)φ(v)] = (k11 k22)^(n/2) E[r^(2n)]
  (1/2π) ∫ φ(cos α) φ(cos(α-θ)) dα with E[r^(2n)] = 2^n n!. The remaining 1-D integral
  is done by scipy quad split at the kinks (piecewise trigonometric: exact to ~1e-13),
  so the tolerance is rtol 1e-9 as well.
* 1-D moments (variance, mean, mean slope): scipy quad on each half line, rtol 1e-9.
* Neural Tangents 0.6.5 kernels of fully connected chains (tests/data/reference), rtol
  as stored in each file (1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.integrate as si
import scipy.special as ss
import sympy
from reference_cases import case_names, load_case

from ntkc.semantics.duals import (
    Clip1,
    DualActivation,
    gaussian_moment,
    numeric_phi,
    numeric_phi_prime,
    polynomial_dual,
)
from ntkc.semantics.rules.activations import BUILTINS, builtin_dual

K11, K12, K22, K = sympy.symbols("k11 k12 k22 k")


def _ref_phi(name: str, args: dict) -> tuple:
    """Independent numpy φ, φ' by NT's definitions, and the homogeneity degree (or None)."""
    a, b, c = args.get("a", 1.0), args.get("b", 1.0), args.get("c", 0.0)
    if name in ("relu", "leaky_relu", "abrelu", "abs"):
        lo, hi = {"relu": (0.0, 1.0), "abs": (-1.0, 1.0)}.get(name, (a, b))
        if name == "leaky_relu":
            lo, hi = args["alpha"], 1.0
        return (lambda z: np.where(z > 0, hi * z, lo * z)), (lambda z: np.where(z > 0, hi, lo)), 1
    if name == "sign":
        return np.sign, np.zeros_like, 0
    if name == "rectified_monomial":
        n = args["degree"]
        return (
            lambda z: np.where(z > 0, np.abs(z) ** n, 0.0),
            lambda z: np.where(z > 0, n * np.abs(z) ** max(n - 1, 0), 0.0) * (n > 0),
            n,
        )
    if name == "erf":
        return (
            lambda z: a * ss.erf(b * z) + c,
            lambda z: a * b * 2 / np.sqrt(np.pi) * np.exp(-((b * z) ** 2)),
            None,
        )
    if name == "gelu":
        return (
            (lambda z: z * ss.ndtr(z)),
            (lambda z: ss.ndtr(z) + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)),
            None,
        )
    if name == "sin":
        return (lambda z: a * np.sin(b * z + c)), (lambda z: a * b * np.cos(b * z + c)), None
    if name == "cos":
        return (lambda z: a * np.cos(b * z + c)), (lambda z: -a * b * np.sin(b * z + c)), None
    if name == "exp":
        b = args.get("b", 1.0)
        return (lambda z: a * np.exp(b * z)), (lambda z: a * b * np.exp(b * z)), None
    if name == "gaussian":
        b = args.get("b", -1.0)
        return (
            (lambda z: a * np.exp(b * z * z)),
            (lambda z: 2 * a * b * z * np.exp(b * z * z)),
            None,
        )
    if name in ("monomial", "polynomial", "identity"):
        coef = {"monomial": [0.0] * args.get("degree", 0) + [1.0], "identity": [0.0, 1.0]}.get(
            name, args.get("coef")
        )
        p = np.polynomial.Polynomial(coef)
        return p, p.deriv(), None
    raise KeyError(name)


# Every built-in at 1-3 argument settings (including symbol-free defaults).
CASES = [
    ("relu", {}),
    ("leaky_relu", {"alpha": 0.1}),
    ("leaky_relu", {"alpha": -0.3}),
    ("abrelu", {"a": -0.5, "b": 2.0}),
    ("abrelu", {"a": 0.3, "b": 0.3}),  # linear: nngp = a² k12
    ("abs", {}),
    ("erf", {}),
    ("erf", {"a": 0.7, "b": 2.0, "c": 0.3}),
    ("erf", {"a": -1.2, "b": 0.5, "c": -0.1}),
    ("gelu", {}),
    ("sin", {}),
    ("sin", {"a": 1.0, "b": 1.5, "c": 0.3}),
    ("sin", {"a": 0.5, "b": 2.0, "c": -1.0}),
    ("cos", {}),
    ("cos", {"a": 0.7, "b": 1.0, "c": 0.0}),
    ("cos", {"a": 1.3, "b": 0.5, "c": 0.4}),
    ("exp", {}),
    ("exp", {"a": 1.0, "b": 0.5}),
    ("exp", {"a": -0.8, "b": -1.2}),
    ("gaussian", {}),
    ("gaussian", {"a": 1.0, "b": 0.1}),
    ("gaussian", {"a": 2.0, "b": -0.5}),
    ("sign", {}),
    ("monomial", {"degree": 0}),
    ("monomial", {"degree": 1}),
    ("monomial", {"degree": 3}),
    ("monomial", {"degree": 4}),
    *[("rectified_monomial", {"degree": n}) for n in range(6)],  # n = 5 beyond the table
    ("polynomial", {"coef": [0.1, 1.0, 0.0, 0.2]}),
    ("polynomial", {"coef": [1.0, -0.5, 0.3]}),
    ("polynomial", {"coef": [2.0]}),
    ("identity", {}),
]


def _pt(k11: float, rho: float, k22: float) -> tuple[float, float, float]:
    return k11, rho * math.sqrt(k11 * k22), k22


# (k11, k12, k22): generic, correlation ±0.999, exactly ±1 (k12 = ±sqrt(k11 k22) in
# float, which may round to |ρ| = 1 + ulp: Clip1 must absorb it), and k11 = k12 = k22.
POINTS = [
    (1.0, 0.3, 2.0),
    (0.5, -0.2, 0.8),
    _pt(0.7, 0.999, 1.3),
    _pt(1.5, -0.999, 0.4),
    _pt(0.9, 1.0, 1.6),
    _pt(0.3, 1.0, 0.7),
    _pt(0.8, -1.0, 0.6),
    (1.2, 1.2, 1.2),
]

RTOL = 1e-9

GH_X, GH_W = np.polynomial.hermite_e.hermegauss(240)
GH_W = GH_W / math.sqrt(2 * math.pi)


def _lam2(f: Callable) -> Callable:
    return sympy.lambdify((K11, K12, K22), f(K11, K12, K22), modules=["numpy", "scipy"])


def _lam1(f: Callable) -> Callable:
    return sympy.lambdify(K, f(K), modules=["numpy", "scipy"])


def _expect2(f, g, k11: float, k12: float, k22: float, degree: int | None) -> float:
    """E[f(u) g(v)] by quadrature (see module docstring)."""
    rho = min(max(k12 / math.sqrt(k11 * k22), -1.0), 1.0)
    if degree is None:  # smooth: tensor Gauss–Hermite in Cholesky coordinates
        x, y = np.meshgrid(GH_X, GH_X, indexing="ij")
        u = math.sqrt(k11) * x
        v = math.sqrt(k22) * (rho * x + math.sqrt(max(1 - rho * rho, 0.0)) * y)
        return float(np.einsum("i,j,ij->", GH_W, GH_W, f(u) * g(v)))
    theta = math.acos(rho)
    kinks = {
        (t + 2 * math.pi) % (2 * math.pi)
        for t in (math.pi / 2, 3 * math.pi / 2, theta + math.pi / 2, theta - math.pi / 2)
    }
    pts = sorted(p for p in kinks if 1e-12 < p < 2 * math.pi - 1e-12)
    val, _ = si.quad(
        lambda al: float(f(np.cos(al)) * g(np.cos(al - theta))),
        0.0,
        2 * math.pi,
        points=pts,
        limit=400,
        epsabs=1e-14,
        epsrel=1e-12,
    )
    # φ' has degree n-1; the caller passes the joint degree 2n (or 2n-2) as `degree`.
    return (
        (k11 * k22) ** (degree / 4)
        * 2 ** (degree / 2)
        * math.gamma(degree / 2 + 1)
        * val
        / (2 * math.pi)
    )


def _expect1(f, k: float) -> float:
    """E[f(u)], u ~ N(0, k), by quad on each half line."""
    # standardised u = √k t; |t| ≤ 40 loses < e^-800 (and avoids inf·0 for exp(b u)).
    s = math.sqrt(k)
    kw = {"epsabs": 1e-14, "epsrel": 1e-12, "limit": 200}
    return sum(
        si.quad(lambda t: float(f(np.float64(s * t))) * math.exp(-t * t / 2), lo, hi, **kw)[0]
        for lo, hi in ((-40.0, 0.0), (0.0, 40.0))
    ) / math.sqrt(2 * math.pi)


def _close(got: float, want: float, scale: float, what: str) -> None:
    assert np.isfinite(got), what
    assert abs(got - want) <= RTOL * max(abs(want), scale, 1e-12), f"{what}: {got} vs {want}"


def _ident(case) -> str:
    return f"{case[0]}-{'-'.join(f'{v}' for v in case[1].values())}"


@pytest.mark.parametrize("case", CASES, ids=[_ident(c) for c in CASES])
def test_dual_against_quadrature(case) -> None:
    name, args = case
    dual = builtin_dual(name, **args)
    phi, dphi, deg = _ref_phi(name, args)
    nngp, ntk = _lam2(dual.nngp), _lam2(dual.ntk_factor)
    var = _lam1(dual.variance)
    for k11, k12, k22 in POINTS:
        at = f"{name}{args} at {(k11, k12, k22)}"
        # 2*deg: the product φ(u)φ(v) is homogeneous of degree 2n in r.
        d_nngp = None if deg is None else 2 * deg
        d_ntk = None if deg is None else max(2 * deg - 2, 0)
        want = _expect2(phi, phi, k11, k12, k22, d_nngp)
        scale = math.sqrt(
            _expect2(phi, phi, k11, k11, k11, d_nngp) * _expect2(phi, phi, k22, k22, k22, d_nngp)
        )
        _close(float(nngp(k11, k12, k22)), want, scale, "nngp " + at)
        want = _expect2(dphi, dphi, k11, k12, k22, d_ntk)
        _close(float(ntk(k11, k12, k22)), want, 1.0, "ntk_factor " + at)
    for k in (0.3, 1.0, 1.9):
        want = _expect1(lambda x: phi(x) ** 2, k)
        _close(float(var(k)), want, 0.0, f"variance {name}{args} at {k}")
        _close(float(nngp(k, k, k)), want, 0.0, f"nngp(k,k,k) {name}{args} at {k}")
        if dual.mean is not None:
            _close(float(_lam1(dual.mean)(k)), _expect1(phi, k), 1.0, f"mean {name} {k}")
        if dual.mean_slope is not None:
            _close(float(_lam1(dual.mean_slope)(k)), _expect1(dphi, k), 1.0, f"slope {name} {k}")


@pytest.mark.parametrize("case", CASES, ids=[_ident(c) for c in CASES])
def test_price_theorem_and_exact_correlation_one(case) -> None:
    """ntk_factor = ∂nngp/∂k12 (except sign and the step, whose φ' NT sets to 0), and
    exact rational Σ at correlation ±1 gives finite exact values equal to variance."""
    name, args = case
    dual = builtin_dual(name, **args)
    nngp = dual.nngp(K11, K12, K22)
    nt_zeroes_phi_prime = name == "sign" or (name == "rectified_monomial" and args["degree"] == 0)
    if not nt_zeroes_phi_prime:
        diff = sympy.lambdify((K11, K12, K22), sympy.diff(nngp, K12), modules=["numpy", "scipy"])
        ntk = _lam2(dual.ntk_factor)
        for k11, k12, k22 in POINTS[:4]:
            _close(float(diff(k11, k12, k22)), float(ntk(k11, k12, k22)), 1.0, f"Price {name}")
    # |ρ| a few ulps above 1 (rounding in the caller's recursion): Clip1 keeps it finite.
    nngp_f, ntk_f = _lam2(dual.nngp), _lam2(dual.ntk_factor)
    for sgn in (1.0, -1.0):
        pt = (0.9, sgn * math.sqrt(0.9 * 1.6) * (1 + 4e-16), 1.6)
        assert math.isfinite(float(nngp_f(*pt))) and math.isfinite(float(ntk_f(*pt))), name
    if name == "gaussian" and args.get("b", -1.0) > 0:
        return  # exact point below would leave its domain 1 - 4bk > 0
    k = sympy.Rational(3, 2)
    exact = nngp.subs({K11: k, K12: k, K22: k})
    assert exact.is_finite, (name, exact)
    assert abs(float(exact - dual.variance(k))) < 1e-12
    # ρ = -1 exactly, with irrational sqrt(k11 k22)
    val = nngp.subs({K11: 2, K12: -sympy.sqrt(6), K22: 3})
    assert val.is_finite and math.isfinite(float(val)), (name, val)


def test_symbolic_parameters_against_quadrature() -> None:
    """A built-in whose arguments are sympy symbols (spec params), the symbols then
    substituted, equals the quadrature of φ, φ' at those numbers (rtol 1e-9, see the
    module docstring): the symbolic path is checked against an independent value, not
    against ntkc's own numeric path."""
    a, b, c, al = sympy.symbols("a b c alpha")
    abc = (a, b, c)
    for name, sym_args, subs in [
        ("erf", {"a": a, "b": b, "c": c}, dict(zip(abc, (0.7, 2.0, 0.3)))),
        ("sin", {"a": a, "b": b, "c": c}, dict(zip(abc, (0.7, 2.0, 0.3)))),
        ("cos", {"a": a, "b": b, "c": c}, dict(zip(abc, (1.3, 0.5, 0.4)))),
        ("gaussian", {"a": a, "b": b}, {a: 0.7, b: -2.0}),
        ("exp", {"a": a, "b": b}, {a: 0.7, b: 0.6}),
        ("leaky_relu", {"alpha": al}, {al: 0.2}),
        ("abrelu", {"a": a, "b": b}, {a: 0.7, b: 2.0}),
        ("polynomial", {"coef": [a, b, c]}, dict(zip(abc, (0.7, 2.0, 0.3)))),
    ]:
        sym = builtin_dual(name, **sym_args)
        num_args = {
            k: [float(x.subs(subs)) for x in v] if isinstance(v, list) else float(v.subs(subs))
            for k, v in sym_args.items()
        }
        phi, dphi, deg = _ref_phi(name, num_args)
        d_nngp = None if deg is None else 2 * deg
        d_ntk = None if deg is None else max(2 * deg - 2, 0)
        for k11, k12, k22 in POINTS[:4]:
            at = f"{name}{num_args} at {(k11, k12, k22)}"
            got = float(sym.nngp(k11, k12, k22).subs(subs))
            scale = math.sqrt(
                _expect2(phi, phi, k11, k11, k11, d_nngp)
                * _expect2(phi, phi, k22, k22, k22, d_nngp)
            )
            _close(got, _expect2(phi, phi, k11, k12, k22, d_nngp), scale, "nngp " + at)
            got = float(sym.ntk_factor(k11, k12, k22).subs(subs))
            _close(got, _expect2(dphi, dphi, k11, k12, k22, d_ntk), 1.0, "ntk_factor " + at)
        for k in (0.3, 1.1):
            got = float(sym.variance(k).subs(subs))
            want = _expect1(lambda x, phi=phi: phi(x) ** 2, k)
            _close(got, want, 0.0, f"variance {name} at {k}")


# Neural Tangents 0.6.5's elementwise layers (stax/elementwise.py) as its docstrings define
# them, with NT's defaults written into φ and φ' literally: name -> (the required arguments,
# which NT also requires, at sample values; φ; φ'; degree of homogeneity or None). NT's Sign
# and RectifiedMonomial(0) take φ' = 0 (a step has no finite NTK term).
NT_ELEMENTWISE = {
    "relu": ({}, lambda z: np.maximum(z, 0.0), lambda z: (z > 0) * 1.0, 1),
    "leaky_relu": (
        {"alpha": 0.2},
        lambda z: np.where(z > 0, z, 0.2 * z),
        lambda z: np.where(z > 0, 1.0, 0.2),
        1,
    ),
    "abrelu": (
        {"a": -0.4, "b": 1.3},
        lambda z: -0.4 * np.minimum(z, 0.0) + 1.3 * np.maximum(z, 0.0),
        lambda z: np.where(z > 0, 1.3, -0.4),
        1,
    ),
    "abs": ({}, np.abs, np.sign, 1),
    "erf": ({}, ss.erf, lambda z: 2 / math.sqrt(math.pi) * np.exp(-z * z), None),  # a=b=1, c=0
    "gelu": (  # exact Gelu (approximate=False, NT's default)
        {},
        lambda z: z * ss.ndtr(z),
        lambda z: ss.ndtr(z) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi),
        None,
    ),
    "sin": ({}, np.sin, np.cos, None),  # a=1, b=1, c=0
    "cos": ({}, np.cos, lambda z: -np.sin(z), None),  # a=1, b=1, c=0
    "exp": ({}, np.exp, np.exp, None),  # a=1, b=1
    "gaussian": ({}, lambda z: np.exp(-z * z), lambda z: -2 * z * np.exp(-z * z), None),  # b=-1
    "sign": ({}, np.sign, np.zeros_like, 0),
    "monomial": ({"degree": 2}, lambda z: z * z, lambda z: 2 * z, None),
    "rectified_monomial": (
        {"degree": 3},
        lambda z: np.maximum(z, 0.0) ** 3,
        lambda z: 3 * np.maximum(z, 0.0) ** 2,
        3,
    ),
    "polynomial": (
        {"coef": [0.5, -1.0, 0.25]},
        lambda z: 0.5 - z + 0.25 * z * z,
        lambda z: -1.0 + 0.5 * z,
        None,
    ),
    "identity": ({}, lambda z: z, np.ones_like, None),
}


# Built-ins that are not Neural Tangents' (it has no kernel for them): jax.nn's functions,
# whose duals have no closed form; checked in tests/test_builtin_quadrature.py.
QUADRATURE_BUILTINS = {"tanh", "sigmoid", "softplus", "silu", "swish", "elu", "selu", "mish"}


@pytest.mark.parametrize("name", sorted(NT_ELEMENTWISE))
def test_builtins_match_neural_tangents_definitions(name: str) -> None:
    """Each built-in, called as a spec calls it (only NT's required arguments, the rest
    left to ntkc's defaults), has the dual of NT's φ with NT's defaults: nngp, ntk_factor
    and variance against quadrature of the literal φ, φ' above at generic covariances and
    |ρ| = 0.999, rtol 1e-9 (the quadrature resolves these integrands to ~1e-12, module
    docstring). A wrong default (erf's b = 2, gaussian's b = +1) or a wrong argument
    name fails here; the Gram matrices of Neural Tangents itself are checked by
    test_fully_connected_chains_match_neural_tangents."""
    # NT's names, no more, no fewer, and the ones NT has no kernel for, by quadrature
    assert set(BUILTINS) == set(NT_ELEMENTWISE) | QUADRATURE_BUILTINS
    required, phi, dphi, deg = NT_ELEMENTWISE[name]
    dual = builtin_dual(name, **required)
    assert isinstance(dual, DualActivation) and dual.name == name
    for arg in required:  # NT has no default for these either
        with pytest.raises(TypeError):
            builtin_dual(name, **{k: v for k, v in required.items() if k != arg})
    nngp, ntk, var = _lam2(dual.nngp), _lam2(dual.ntk_factor), _lam1(dual.variance)
    d_nngp = None if deg is None else 2 * deg
    d_ntk = None if deg is None else max(2 * deg - 2, 0)
    for k11, k12, k22 in POINTS[:4]:
        at = f"{name} at {(k11, k12, k22)}"
        scale = math.sqrt(
            _expect2(phi, phi, k11, k11, k11, d_nngp) * _expect2(phi, phi, k22, k22, k22, d_nngp)
        )
        want = _expect2(phi, phi, k11, k12, k22, d_nngp)
        _close(float(nngp(k11, k12, k22)), want, scale, "nngp " + at)
        want = _expect2(dphi, dphi, k11, k12, k22, d_ntk)
        _close(float(ntk(k11, k12, k22)), want, 1.0, "ntk_factor " + at)
    for k in (0.3, 1.0, 1.9):
        _close(float(var(k)), _expect1(lambda x: phi(x) ** 2, k), 0.0, f"variance {name} {k}")


def test_clip1() -> None:
    x = sympy.Symbol("x")
    assert Clip1(sympy.Float(1.0000000000000002)) == 1
    assert Clip1(-3) == -1 and Clip1(sympy.Rational(1, 3)) == sympy.Rational(1, 3)
    assert isinstance(Clip1(x), Clip1)  # unevaluated on symbols
    assert sympy.diff(Clip1(x**2), x) == 2 * x  # derivative taken as 1 (Price's theorem)
    for mod in ("numpy", "math"):
        f = sympy.lambdify(x, sympy.acos(Clip1(x)), modules=mod)
        assert f(1.0000000000000002) == 0.0
    f = sympy.lambdify(x, Clip1(x), modules="numpy")
    assert np.array_equal(f(np.array([-2.0, 0.5, 1.5])), [-1.0, 0.5, 1.0])
    assert "clip" in sympy.latex(Clip1(x))


def test_gaussian_moment_isserlis() -> None:
    # E[u^2 v^2] = k11 k22 + 2 k12², E[u^3 v] = 3 k11 k12, odd total degree vanishes
    assert sympy.expand(gaussian_moment(2, 2, K11, K12, K22) - (K11 * K22 + 2 * K12**2)) == 0
    assert sympy.expand(gaussian_moment(3, 1, K11, K12, K22) - 3 * K11 * K12) == 0
    assert gaussian_moment(2, 1, K11, K12, K22) == 0
    dual = polynomial_dual("user", [sympy.Integer(0), sympy.Integer(0), sympy.Integer(1)])
    assert sympy.expand(dual.nngp(K11, K12, K22) - (K11 * K22 + 2 * K12**2)) == 0


def test_numeric_phi_helpers() -> None:
    z = np.linspace(-2.3, 2.1, 23)  # avoids 0 (kinks)
    for name, args in CASES:
        dual = builtin_dual(name, **args)
        phi, dphi, _ = _ref_phi(name, args)
        np.testing.assert_allclose(numeric_phi(dual)(z), phi(z), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(numeric_phi_prime(dual)(z), dphi(z), rtol=1e-12, atol=1e-14)


def _reference_chains() -> list[str]:
    """The fully connected reference cases that are plain dense/built-in chains (NTK
    parameterization): the ones the duals alone can reproduce."""
    out = []
    for name in case_names("fc_"):
        spec = load_case(name)
        if spec["parameterization"] == "ntk" and all(
            op == "dense" or op in BUILTINS for op, _ in spec["layers"]
        ):
            out.append(name)
    return out


CHAINS = _reference_chains()


def test_reference_chains_present() -> None:
    # A missing fixture must fail, not shrink the parametrization below to nothing.
    assert CHAINS == [
        "fc_erf_seed_example",
        "fc_gaussian_rbf_act",
        "fc_gelu_sign",
        "fc_leaky_abrelu",
        "fc_mixed",
        "fc_no_bias",
        "fc_polynomials",
        "fc_relu_2",
        "fc_trig_exp",
    ]
    used = {op for name in CHAINS for op, _ in load_case(name)["layers"]} - {"dense"}
    # every Neural Tangents built-in but identity is covered (the quadrature built-ins,
    # which NT lacks, are checked by tests/test_builtin_quadrature.py)
    assert used == set(NT_ELEMENTWISE) - {"identity"}


@pytest.mark.parametrize("name", CHAINS)
def test_fully_connected_chains_match_neural_tangents(name: str) -> None:
    """The NTK-parameterization recursion of DESIGN §2 on dense/φ chains, using only the
    duals, reproduces Neural Tangents' Gram matrices (diagonal via variance/ntk_factor at
    correlation exactly 1, where NT's null entries are skipped)."""
    spec = load_case(name)
    x1, x2 = np.array(spec["x1"]), np.array(spec["x2"])
    d = x1.shape[1]
    for xb, key in ((x2, "12"), (x1, "11")):
        # Per-point variances from the same GEMM as the pairs (as NT does): at x = x' the
        # pair then has k12 == k11 == k22 bitwise, ρ = 1 exactly. A 1-ulp mismatch (e.g.
        # norms from einsum) would put ρ at 1 - 1e-16 and θ = acos ρ at 1.5e-8: Ṫ of the
        # ReLU family is not Lipschitz at ρ = 1, so Θ(x,x) would move by ~1e-8.
        k11 = np.diag(x1 @ x1.T)[:, None] / d + 0 * xb[:, 0][None, :]
        k22 = np.diag(xb @ xb.T)[None, :] / d + 0 * x1[:, 0][:, None]
        k12 = x1 @ xb.T / d
        t11, t12, t22 = (np.zeros_like(k12) for _ in range(3))
        for op, attrs in spec["layers"]:
            if op == "dense":
                w2, b2 = attrs["w_std"] ** 2, attrs.get("b_std", 0.0) ** 2
                k11, k12, k22 = w2 * k11 + b2, w2 * k12 + b2, w2 * k22 + b2
                t11, t12, t22 = k11 + w2 * t11, k12 + w2 * t12, k22 + w2 * t22
                continue
            dual = builtin_dual(op, **attrs)
            nngp, ntk, var = _lam2(dual.nngp), _lam2(dual.ntk_factor), _lam1(dual.variance)
            t11, t22 = t11 * ntk(k11, k11, k11), t22 * ntk(k22, k22, k22)
            t12 = t12 * ntk(k11, k12, k22)
            k11, k12, k22 = var(k11) + 0 * k11, nngp(k11, k12, k22) + 0 * k12, var(k22) + 0 * k22
        if key == "11":  # the diagonal is the per-point variance
            np.testing.assert_allclose(np.diag(k12), np.diag(k11), rtol=1e-12)
            np.testing.assert_allclose(np.diag(t12), np.diag(t11), rtol=1e-12)
        for got, ref_key in ((k12, "nngp_" + key), (t12, "ntk_" + key)):
            ref = np.array(spec[ref_key], dtype=float)  # null -> nan (NT's NaN diagonal)
            assert np.all(np.isfinite(got)), ref_key
            ok = np.isfinite(ref)
            np.testing.assert_allclose(got[ok], ref[ok], rtol=spec["rtol"], err_msg=ref_key)
