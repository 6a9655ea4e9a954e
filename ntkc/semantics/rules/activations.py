"""The built-in nonlinearities: their names, arguments and duals. ``BUILTINS`` is the one
table the builder and the nonlinearity rule read. Neural Tangents 0.6.5 stax's, with their
closed forms (its semantics); and common ones without a closed form (tanh, sigmoid,
softplus, silu/swish, elu, selu, mish, as jax.nn), integrated by quadrature.

Each constructor takes sympy expressions for the nonlinearity's arguments (numbers or
user parameters) and returns a :class:`~ntkc.semantics.duals.DualActivation`. Conventions:
k11 = Var u, k22 = Var v, k12 = Cov(u, v), ρ = clip(k12 / sqrt(k11 k22)), θ = acos ρ.
Where NT writes sqrt(k11 k22 - k12²) we write sqrt(k11 k22)·sqrt(1 - ρ²) with the
clipped ρ, so that rounding at correlation 1 cannot produce sqrt of a negative number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import sympy
from sympy import Expr, pi, sqrt

from ..duals import Clip1, DualActivation, as_expr, polynomial_dual
from ..quadrature import quadrature_dual
from .registry import REQUIRED, Arg, ArgKind

HALF = sympy.Rational(1, 2)


def _rho(k11: Expr, k12: Expr, k22: Expr) -> Expr:
    return Clip1(k12 / sqrt(k11 * k22))


# ------------------------------------------------------------------ ABReLU family


def abrelu(a: Expr, b: Expr, name: str = "abrelu") -> DualActivation:
    """φ(z) = a·min(z, 0) + b·max(z, 0) (relu: a=0, b=1; abs: a=-1, b=1)."""

    def ntk_factor(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        theta = sympy.acos(_rho(k11, k12, k22))
        return (a**2 + b**2) / 2 - (a - b) ** 2 * theta / (2 * pi)

    def nngp(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        sin_theta = sqrt(1 - _rho(k11, k12, k22) ** 2)
        return (a - b) ** 2 / (2 * pi) * sqrt(k11 * k22) * sin_theta + ntk_factor(
            k11, k12, k22
        ) * k12

    return DualActivation(
        name=name,
        phi=lambda z: a * sympy.Min(z, 0) + b * sympy.Max(z, 0),
        nngp=nngp,
        ntk_factor=ntk_factor,
        variance=lambda k: (a**2 + b**2) / 2 * k,
        mean=lambda k: (b - a) * sqrt(k / (2 * pi)),
        mean_slope=lambda k: (a + b) / 2,
    )


# ------------------------------------------------------------------ arc-cosine kernels


@functools.cache
def _arccos_polys(n: int) -> tuple[Expr, Expr, sympy.Symbol]:
    """Polynomials P_n, Q_n in r with J_n(θ) = P_n(cos θ)(π - θ) + Q_n(cos θ) sin θ.

    J_n is Cho & Saul's arc-cosine function: E[relu(u)^n relu(v)^n] = J_n(θ)/(2π) for unit
    variances and correlation r = cos θ. Writing it as P(π - θ) + Q sin θ keeps it free of
    1/sin θ, so it is finite at r = ±1. Derivation: with k_n(r) = J_n/(2π), Price's theorem
    gives k_n' = n² k_{n-1}, and k_n(-1) = 0 for n ≥ 1 (both factors vanish at θ = π,
    matching relu(u)relu(-u) = 0). Differentiating the ansatz (d(π-θ)/dr = 1/sin θ,
    d sin θ/dr = -r/sin θ) and matching the (π-θ) and 1/sin θ parts:
        P_n' = n² P_{n-1},    P_n - r Q_n + (1 - r²) Q_n' = n² (1 - r²) Q_{n-1},
    a linear system for the coefficients, with J_0 = π - θ (P_0 = 1, Q_0 = 0).
    """
    r = sympy.Symbol("r")
    if n == 0:
        return sympy.S.One, sympy.S.Zero, r
    p_prev, q_prev, _ = _arccos_polys(n - 1)
    p_coefs = sympy.symbols(f"p0:{n + 1}")
    q_coefs = sympy.symbols(f"q0:{n}")
    p = sum(c * r**i for i, c in enumerate(p_coefs))
    q = sum(c * r**i for i, c in enumerate(q_coefs))
    eqs = sympy.Poly(sympy.diff(p, r) - n**2 * p_prev, r).all_coeffs()
    eqs += sympy.Poly(
        p - r * q + (1 - r**2) * sympy.diff(q, r) - n**2 * (1 - r**2) * q_prev, r
    ).all_coeffs()
    sol = sympy.solve(eqs, p_coefs + q_coefs, dict=True)
    if len(sol) != 1 or len(sol[0]) != 2 * n + 1:  # the solution is unique; check it
        raise AssertionError(f"arc-cosine recursion has no unique solution at n={n}")
    return sympy.expand(p.subs(sol[0])), sympy.expand(q.subs(sol[0])), r


def _arccos_kernel(n: int, k11: Expr, k12: Expr, k22: Expr) -> Expr:
    """E[relu(u)^n relu(v)^n] = (k11 k22)^(n/2) J_n(θ) / (2π); n = 0 is the step function."""
    p, q, r = _arccos_polys(n)
    rho = _rho(k11, k12, k22)
    j_n = p.subs(r, rho) * (pi - sympy.acos(rho)) + q.subs(r, rho) * sqrt(1 - rho**2)
    return (k11 * k22) ** sympy.Rational(n, 2) * j_n / (2 * pi)


def _relu_moment(n: int, k: Expr) -> Expr:
    """E[relu(u)^n], u ~ N(0, k): half the absolute moment, k^(n/2) 2^(n/2) Γ((n+1)/2)/√π/2."""
    return (2 * k) ** sympy.Rational(n, 2) * sympy.gamma(sympy.Rational(n + 1, 2)) / (2 * sqrt(pi))


def rectified_monomial(degree: int) -> DualActivation:
    """φ(z) = max(z, 0)^degree (degree 0: the step function, 1 for z > 0)."""
    n = degree
    return DualActivation(
        name="rectified_monomial",
        phi=lambda z: sympy.Piecewise((z**n, z > 0), (0, True)),
        nngp=lambda k11, k12, k22: _arccos_kernel(n, k11, k12, k22),
        ntk_factor=lambda k11, k12, k22: (
            n**2 * _arccos_kernel(n - 1, k11, k12, k22) if n else sympy.S.Zero
        ),
        # E[relu(u)^(2n)] = (2n-1)!! k^n / 2  (J_n(0) = π (2n-1)!!)
        variance=lambda k: sympy.factorial2(2 * n - 1) * k**n / 2,
        mean=lambda k: _relu_moment(n, k),
        mean_slope=lambda k: n * _relu_moment(n - 1, k) if n else sympy.S.Zero,
        # the step's jump at 0: E[u·step(u)]/k = E[δ(u)] = 1/sqrt(2πk)
        jump_slope=None if n else (lambda k: 1 / sqrt(2 * pi * k)),
    )


def sign() -> DualActivation:
    """φ(z) = sign(z). NT sets its NTK factor to 0 (φ' = 0 almost everywhere)."""
    return DualActivation(
        name="sign",
        phi=sympy.sign,
        nngp=lambda k11, k12, k22: 2 / pi * sympy.asin(_rho(k11, k12, k22)),
        ntk_factor=lambda k11, k12, k22: sympy.S.Zero,
        variance=lambda k: sympy.S.One,
        mean=lambda k: sympy.S.Zero,
        mean_slope=lambda k: sympy.S.Zero,
        jump_slope=lambda k: sqrt(2 / (pi * k)),  # E[u·sign(u)]/k = E[|u|]/k
    )


# ------------------------------------------------------------------ smooth built-ins


def erf(a: Expr, b: Expr, c: Expr) -> DualActivation:
    """φ(z) = a·erf(b z) + c. E[erf] = 0, so c only adds c² to the NNGP."""
    bb = b**2  # NT scales the kernel by b² first

    def det(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        # (1 + 2b²k11)(1 + 2b²k22) - 4b⁴k12², expanded: no cancellation at ρ = 1.
        return 1 + 2 * bb * (k11 + k22) + 4 * bb**2 * (k11 * k22 - k12**2)

    def nngp(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        # |argument| < 1 strictly for every PSD Σ, so asin needs no clipping.
        arg = 2 * bb * k12 / sqrt((1 + 2 * bb * k11) * (1 + 2 * bb * k22))
        return a**2 * 2 / pi * sympy.asin(arg) + c**2

    return DualActivation(
        name="erf",
        phi=lambda z: a * sympy.erf(b * z) + c,
        nngp=nngp,
        ntk_factor=lambda k11, k12, k22: a**2 * bb * 4 / pi / sqrt(det(k11, k12, k22)),
        variance=lambda k: a**2 * 2 / pi * sympy.asin(2 * bb * k / (1 + 2 * bb * k)) + c**2,
        mean=lambda k: c,
        mean_slope=lambda k: 2 * a * b / sqrt(pi * (1 + 2 * bb * k)),
    )


def gelu() -> DualActivation:
    """φ(z) = z Φ(z) (exact GELU). NT's closed form, with P = k11 k22,
    P1 = (1+k11)(1+k22), δ = sqrt(P1 - k12²) > 0 and θ = atan(k12/δ)."""

    def parts(k11: Expr, k12: Expr, k22: Expr) -> tuple[Expr, Expr, Expr, Expr]:
        p, p1 = k11 * k22, (1 + k11) * (1 + k22)
        delta = sqrt(p1 - k12**2)  # ≥ sqrt(1 + k11 + k22): never near 0
        return p, p1, delta, sympy.atan(k12 / delta)

    def nngp(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        p, p1, delta, theta = parts(k11, k12, k22)
        return k12 / 4 + ((k12**2 + p * delta**2) / (p1 * delta) + k12 * theta) / (2 * pi)

    def ntk_factor(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        p, p1, delta, theta = parts(k11, k12, k22)
        return (
            sympy.Rational(1, 4)
            + theta / (2 * pi)
            + k12 / (2 * pi * delta) * (1 / delta**2 + (1 - p) / p1 + 1)
        )

    def variance(k: Expr) -> Expr:
        # nngp at k11 = k12 = k22 = k: δ² = 1 + 2k, (k² + k²δ²)/((1+k)²δ) = 2k²/((1+k)δ)
        delta = sqrt(1 + 2 * k)
        return k / 4 + (2 * k**2 / ((1 + k) * delta) + k * sympy.atan(k / delta)) / (2 * pi)

    return DualActivation(
        name="gelu",
        phi=lambda z: z * (1 + sympy.erf(z / sqrt(2))) / 2,
        nngp=nngp,
        ntk_factor=ntk_factor,
        variance=variance,
        # E[zΦ(z)] = k E[N(z)] (Stein) = k / sqrt(2π(1+k)); E[Φ(z) + z N(z)] = 1/2.
        mean=lambda k: k / sqrt(2 * pi * (1 + k)),
        mean_slope=lambda k: HALF,
    )


def sin(a: Expr, b: Expr, c: Expr, name: str = "sin") -> DualActivation:
    """φ(z) = a·sin(b z + c); cos is this with c + π/2.

    sin x sin y = (cos(x-y) - cos(x+y))/2 and E[cos(b(u ± v) + s)] = cos(s) e^{-b² Var/2}.
    """
    bb = b**2

    def s1(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        return sympy.exp(bb * (-(k11 + k22) / 2 + k12))

    def s2(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        return sympy.exp(bb * (-(k11 + k22) / 2 - k12)) * sympy.cos(2 * c)

    return DualActivation(
        name=name,
        phi=lambda z: a * sympy.sin(b * z + c),
        nngp=lambda k11, k12, k22: a**2 / 2 * (s1(k11, k12, k22) - s2(k11, k12, k22)),
        ntk_factor=lambda k11, k12, k22: a**2 * bb / 2 * (s1(k11, k12, k22) + s2(k11, k12, k22)),
        variance=lambda k: a**2 / 2 * (1 - sympy.exp(-2 * bb * k) * sympy.cos(2 * c)),
        mean=lambda k: a * sympy.sin(c) * sympy.exp(-bb * k / 2),
        mean_slope=lambda k: a * b * sympy.cos(c) * sympy.exp(-bb * k / 2),
    )


def exp(a: Expr, b: Expr) -> DualActivation:
    """φ(z) = a·exp(b z): log-normal moments."""
    bb = b**2

    def e(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        return sympy.exp(bb * ((k11 + k22) / 2 + k12))

    return DualActivation(
        name="exp",
        phi=lambda z: a * sympy.exp(b * z),
        nngp=lambda k11, k12, k22: a**2 * e(k11, k12, k22),
        ntk_factor=lambda k11, k12, k22: a**2 * bb * e(k11, k12, k22),
        variance=lambda k: a**2 * sympy.exp(2 * bb * k),
        mean=lambda k: a * sympy.exp(bb * k / 2),
        mean_slope=lambda k: a * b * sympy.exp(bb * k / 2),
    )


def gaussian(a: Expr, b: Expr) -> DualActivation:
    """φ(z) = a·exp(b z²): E[exp(b(u² + v²))] = det(I - 2bΣ)^(-1/2) (needs 1 - 2b k > 0)."""

    def det(k11: Expr, k12: Expr, k22: Expr) -> Expr:
        # (1 - 2b k11)(1 - 2b k22) - 4b² k12², expanded (no cancellation at ρ = 1)
        return sqrt(1 - 2 * b * (k11 + k22) + 4 * b**2 * (k11 * k22 - k12**2))

    return DualActivation(
        name="gaussian",
        phi=lambda z: a * sympy.exp(b * z**2),
        nngp=lambda k11, k12, k22: a**2 / det(k11, k12, k22),
        ntk_factor=lambda k11, k12, k22: 4 * a**2 * b**2 * k12 / det(k11, k12, k22) ** 3,
        variance=lambda k: a**2 / sqrt(1 - 4 * b * k),
        mean=lambda k: a / sqrt(1 - 2 * b * k),
        mean_slope=lambda k: sympy.S.Zero,  # φ' is odd
    )


def identity() -> DualActivation:
    return DualActivation(
        name="identity",
        phi=lambda z: z,
        nngp=lambda k11, k12, k22: k12,
        ntk_factor=lambda k11, k12, k22: sympy.S.One,
        variance=lambda k: k,
        mean=lambda k: sympy.S.Zero,
        mean_slope=lambda k: sympy.S.One,
    )


# ------------------------------------------------------------------ by quadrature
# Common activations without a closed-form dual, defined as jax.nn defines them. Each gets
# the dual a user `nonlin` with the same body gets (ntkc.semantics.quadrature): the
# generated kernel integrates E[φφ], E[φ'φ'] and E[φ²], with the run-time guard. elu and
# selu have their kink (in φ') at 0, so they take the polar rule, exact across it.

# jax.nn.selu's constants, exactly as written there
SELU_ALPHA = sympy.Rational("1.6732632423543772848170429916717")
SELU_SCALE = sympy.Rational("1.0507009873554804934193349852946")


def _sigmoid(z: Expr) -> Expr:
    return 1 / (1 + sympy.exp(-z))


def _softplus(z: Expr) -> Expr:
    return sympy.log(1 + sympy.exp(z))


def _elu(z: Expr, alpha: Expr) -> Expr:
    # jax's where(x > 0, x, alpha·expm1(x)): φ'(0) is alpha, as jax's gradient
    return sympy.Piecewise((z, z > 0), (alpha * (sympy.exp(z) - 1), True))


def by_quadrature(name: str, body: Callable[[Expr], Expr]) -> DualActivation:
    """The quadrature dual of φ(z) = body(z). ``name`` labels its expectations in formulas
    (E[name·name]); one name per function, so that swish and silu share them."""
    z = sympy.Symbol("z", real=True)  # the symbol a user nonlin's body has: one integrand
    return quadrature_dual(name, body(z), z)


def elu(alpha: Expr) -> DualActivation:
    name = "elu" if alpha == 1 else f"elu(alpha={alpha})"  # E[...] of two alphas apart
    return by_quadrature(name, lambda z: _elu(z, alpha))


def _silu() -> DualActivation:
    return by_quadrature("silu", lambda z: z * _sigmoid(z))


@dataclass(frozen=True)
class Builtin:
    """A built-in nonlinearity: its arguments (names and defaults exactly as Neural
    Tangents 0.6.5 stax) and the constructor of its dual from their values."""

    name: str
    args: tuple[Arg, ...]
    construct: Callable[..., DualActivation]


_NUMBER, _INT = ArgKind.NUMBER, ArgKind.INT
_ABC = (Arg("a", _NUMBER, 1), Arg("b", _NUMBER, 1), Arg("c", _NUMBER, 0))

BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("relu", (), lambda: abrelu(sympy.S.Zero, sympy.S.One, "relu")),
    Builtin("leaky_relu", (Arg("alpha", _NUMBER),),
            lambda alpha: abrelu(alpha, sympy.S.One, "leaky_relu")),
    Builtin("abrelu", (Arg("a", _NUMBER), Arg("b", _NUMBER)), abrelu),
    Builtin("abs", (), lambda: abrelu(sympy.S.NegativeOne, sympy.S.One, "abs")),
    Builtin("erf", _ABC, erf),
    Builtin("gelu", (), gelu),
    Builtin("sin", _ABC, sin),
    Builtin("cos", _ABC, lambda a, b, c: sin(a, b, c + pi / 2, "cos")),
    Builtin("exp", (Arg("a", _NUMBER, 1), Arg("b", _NUMBER, 1)), exp),
    Builtin("gaussian", (Arg("a", _NUMBER, 1), Arg("b", _NUMBER, -1)), gaussian),
    Builtin("sign", (), sign),
    Builtin("monomial", (Arg("degree", _INT),),
            lambda degree: polynomial_dual("monomial", [sympy.S.Zero] * degree + [1])),
    Builtin("rectified_monomial", (Arg("degree", _INT),), rectified_monomial),
    Builtin("polynomial", (Arg("coef", ArgKind.NUMBER_LIST),),
            lambda coef: polynomial_dual("polynomial", coef)),
    Builtin("identity", (), identity),
    # not Neural Tangents' (it has no kernel for them): by quadrature, as jax.nn defines them
    Builtin("tanh", (), lambda: by_quadrature("tanh", sympy.tanh)),
    Builtin("sigmoid", (), lambda: by_quadrature("sigmoid", _sigmoid)),
    Builtin("softplus", (), lambda: by_quadrature("softplus", _softplus)),
    Builtin("silu", (), _silu),
    Builtin("swish", (), _silu),
    Builtin("elu", (Arg("alpha", _NUMBER, 1),), elu),
    Builtin("selu", (), lambda: by_quadrature("selu", lambda z: SELU_SCALE * _elu(z, SELU_ALPHA))),
    Builtin("mish", (), lambda: by_quadrature("mish", lambda z: z * sympy.tanh(_softplus(z)))),
)}


def builtin_dual(name: str, **args: object) -> DualActivation:
    """The dual of built-in ``name`` with its arguments (numbers or sympy expressions;
    the builder has checked them against the spec's text)."""
    builtin = BUILTINS[name]
    unknown = set(args) - {a.name for a in builtin.args}
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {sorted(unknown)}")
    values: dict[str, object] = {}
    for a in builtin.args:
        value = args.get(a.name, a.default)
        if value is REQUIRED:
            raise TypeError(f"{name}: missing required argument {a.name!r}")
        if a.kind is ArgKind.INT:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TypeError(f"{name}: {a.name} must be a non-negative int")
        elif a.kind is ArgKind.NUMBER_LIST:
            value = [as_expr(v) for v in value]  # type: ignore[union-attr]
        else:
            value = as_expr(value)
        values[a.name] = value
    return builtin.construct(**values)
