"""Tests of ntkc.duals: closed-form dual activations against independent numerics.

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
* Neural Tangents 0.6.5 kernels of fully connected chains (../shared/reference), rtol
  as stored in each file (1e-9).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate as si
import scipy.special as ss
import sympy

from ntkc.duals import (
    BUILTINS,
    REQUIRED,
    Clip1,
    DualActivation,
    builtin_dual,
    gaussian_moment,
    numeric_phi,
    numeric_phi_prime,
    polynomial_dual,
)

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


def test_symbolic_parameters_substitute_to_numeric() -> None:
    a, b, c, al = sympy.symbols("a b c alpha")
    pt = (0.9, 0.4, 1.3)
    for name, sym_args, num_args in [
        ("erf", {"a": a, "b": b, "c": c}, {"a": 0.7, "b": 2.0, "c": 0.3}),
        ("sin", {"a": a, "b": b, "c": c}, {"a": 0.7, "b": 2.0, "c": 0.3}),
        ("cos", {"a": a, "b": b, "c": c}, {"a": 0.7, "b": 2.0, "c": 0.3}),
        ("gaussian", {"a": a, "b": b}, {"a": 0.7, "b": -2.0}),
        ("exp", {"a": a, "b": b}, {"a": 0.7, "b": 2.0}),
        ("leaky_relu", {"alpha": al}, {"alpha": 0.2}),
        ("abrelu", {"a": a, "b": b}, {"a": 0.7, "b": 2.0}),
        ("polynomial", {"coef": [a, b, c]}, {"coef": [0.7, 2.0, 0.3]}),
    ]:
        sym, num = builtin_dual(name, **sym_args), builtin_dual(name, **num_args)
        subs = {a: 0.7, b: num_args.get("b", 2.0), c: 0.3, al: 0.2}
        for f in ("nngp", "ntk_factor"):
            got = getattr(sym, f)(*pt).subs(subs)
            want = getattr(num, f)(*pt)
            assert abs(float(got) - float(want)) < 1e-12, (name, f)
        assert abs(float(sym.variance(1.1).subs(subs)) - float(num.variance(1.1))) < 1e-12


def test_builtins_table_matches_neural_tangents() -> None:
    names = {
        "relu",
        "leaky_relu",
        "abrelu",
        "abs",
        "erf",
        "gelu",
        "sin",
        "cos",
        "exp",
        "gaussian",
        "sign",
        "monomial",
        "rectified_monomial",
        "polynomial",
        "identity",
    }
    assert set(BUILTINS) == names
    defaults = {n: {p[0]: p[2] for p in s.params} for n, s in BUILTINS.items()}
    assert defaults["erf"] == defaults["sin"] == defaults["cos"] == {"a": 1, "b": 1, "c": 0}
    assert defaults["exp"] == {"a": 1, "b": 1} and defaults["gaussian"] == {"a": 1, "b": -1}
    assert defaults["abrelu"] == {"a": REQUIRED, "b": REQUIRED}
    assert defaults["leaky_relu"] == {"alpha": REQUIRED}
    assert BUILTINS["polynomial"].params == (("coef", "number_list", REQUIRED),)
    for n in ("monomial", "rectified_monomial"):
        assert BUILTINS[n].params == (("degree", "int", REQUIRED),)
    with pytest.raises(TypeError):
        builtin_dual("abrelu", a=1.0)
    assert isinstance(builtin_dual("relu"), DualActivation)
    assert builtin_dual("leaky_relu", alpha=0.1).name == "leaky_relu"


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


REF_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _reference_chains() -> list[Path]:
    out = []
    for path in sorted(REF_DIR.glob("fc_*.json")) if REF_DIR.is_dir() else []:
        spec = json.loads(path.read_text())
        if spec["parameterization"] == "ntk" and all(
            op == "dense" or op in BUILTINS for op, _ in spec["layers"]
        ):
            out.append(path)
    return out


@pytest.mark.skipif(not _reference_chains(), reason="no ../shared/reference")
@pytest.mark.parametrize("path", _reference_chains(), ids=lambda p: p.stem)
def test_fully_connected_chains_match_neural_tangents(path: Path) -> None:
    """The NTK-parameterization recursion of DESIGN §2 on dense/φ chains, using only the
    duals, reproduces Neural Tangents' Gram matrices (diagonal via variance/ntk_factor at
    correlation exactly 1, where NT's null entries are skipped)."""
    spec = json.loads(path.read_text())
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
