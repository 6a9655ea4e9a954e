"""Dual activations: closed-form Gaussian expectations of pointwise nonlinearities.

For a nonlinearity φ and a centred bivariate Gaussian (u, v) with Var u = k11,
Var v = k22 and Cov(u, v) = k12, a :class:`DualActivation` gives sympy
expressions for

* ``nngp(k11, k12, k22)``       = E[φ(u) φ(v)]   (T_φ of DESIGN §2)
* ``ntk_factor(k11, k12, k22)`` = E[φ'(u) φ'(v)] (Ṫ_φ; = ∂nngp/∂k12 by Price's theorem)
* ``variance(k)``               = E[φ(u)²], u ~ N(0, k), in a form that stays finite at
  correlation 1 (it never divides by sin θ or by sqrt(k11 k22 - k12²))
* ``mean(k)`` = E[φ(u)] and ``mean_slope(k)`` = E[φ'(u)], or ``None`` where not known.

The built-ins (formulas and the table of names in :mod:`ntkc.semantics.rules.activations`) follow Neural Tangents 0.6.5 stax:
same names, argument names, defaults and conventions.

Everything is built with sympy constructors: nothing here parses text, so spec text
can never reach ``sympify``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sympy
from sympy import Expr

__all__ = [
    "Clip1",
    "DualActivation",
    "as_expr",
    "gaussian_moment",
    "numeric_phi",
    "numeric_phi_prime",
    "polynomial_dual",
]


class Clip1(sympy.Function):
    """clip(x, -1, 1): guards a correlation before acos/asin.

    At correlation 1 the rounded ratio k12/sqrt(k11 k22) can come out as 1 + 1e-16, and
    acos of that is NaN. Clipping is exact for every admissible Σ (|ρ| ≤ 1 there), so it
    changes no value; its derivative is taken as 1 so that sympy.diff (Price's theorem)
    sees through it. Stays unevaluated on symbols; printers emit min/max code.
    """

    nargs = 1

    @classmethod
    def eval(cls, x: Expr) -> Expr | None:
        if x.is_number and x.is_extended_real:
            return sympy.Min(sympy.Max(x, sympy.S.NegativeOne), sympy.S.One)
        return None

    def fdiff(self, argindex: int = 1) -> Expr:
        return sympy.S.One

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    # lambdify with any module: a numpy implementation (used when a printer prints the
    # bare name "Clip1").
    _imp_ = staticmethod(lambda x: np.minimum(np.maximum(x, -1.0), 1.0))

    def _pythoncode(self, printer) -> str:
        arg = printer._print(self.args[0])
        module = getattr(printer, "_module", None)  # "numpy" for NumPy/SciPy printers
        if module:
            lo = printer._module_format(module + ".maximum")
            hi = printer._module_format(module + ".minimum")
            return f"{hi}({lo}({arg}, -1.0), 1.0)"
        return f"min(max({arg}, -1.0), 1.0)"

    def _latex(self, printer, exp: str | None = None) -> str:
        # exp: the LaTeX printer passes the power when Clip1(...) is raised to one
        out = r"\operatorname{clip}_{[-1,1]}\left(" + printer._print(self.args[0]) + r"\right)"
        return out if exp is None else f"{out}^{{{exp}}}"


@dataclass(frozen=True)
class DualActivation:
    name: str  # e.g. "relu", "erf", or the user nonlin's name
    phi: Callable[[Expr], Expr]  # φ(z) as a sympy expression
    nngp: Callable[[Expr, Expr, Expr], Expr]  # (k11, k12, k22) -> E[φ(u)φ(v)]
    ntk_factor: Callable[[Expr, Expr, Expr], Expr]  # (k11, k12, k22) -> E[φ'(u)φ'(v)]
    variance: Callable[[Expr], Expr]  # k -> E[φ(u)²]
    mean: Callable[[Expr], Expr] | None = None  # k -> E[φ(u)]
    mean_slope: Callable[[Expr], Expr] | None = None  # k -> E[φ'(u)]
    # k -> E[u·φ(u)]/k, Stein's E[φ'(u)] with φ' in the sense of distributions: the same as
    # mean_slope for a continuous φ, but a jump (sign, step) adds its δ here, while the
    # NTK factors keep NT's φ' = 0 almost everywhere. None: mean_slope.
    jump_slope: Callable[[Expr], Expr] | None = None

    def stein_slope(self, k: Expr) -> Expr | None:
        """E[u·φ(u)]/k, the factor of Cov(u, v) in E[v·φ(u)] (Stein's lemma)."""
        f = self.jump_slope or self.mean_slope
        return None if f is None else f(k)


def as_expr(x: object) -> Expr:
    """A Python number or sympy expression as a sympy expression (no string parsing).

    Integral floats become Integers so that e.g. a=1.0 prints as 1, not 1.0.
    """
    if isinstance(x, sympy.Basic):
        return x  # type: ignore[return-value]
    if isinstance(x, bool):
        raise TypeError("a boolean is not a nonlinearity argument")
    if isinstance(x, int):
        return sympy.Integer(x)
    if isinstance(x, float):
        return sympy.Integer(int(x)) if x.is_integer() else sympy.Float(x)
    raise TypeError(f"not a number or sympy expression: {x!r}")


# ---------------------------------------------------------------- Gaussian moments


def _dfact(m: int) -> int:
    """m!! with (-1)!! = 1 (the Gaussian-moment convention)."""
    return int(sympy.factorial2(m)) if m > 0 else 1


def gaussian_moment(i: int, j: int, k11: Expr, k12: Expr, k22: Expr) -> Expr:
    """E[u^i v^j] for the centred Gaussian (u, v), by Isserlis' theorem.

    Pairings: k of the i u's pair with k of the j v's (C(i,k) C(j,k) k! ways, factor
    k12^k); the rest pair among themselves ((i-k-1)!! (j-k-1)!! ways).
    """
    terms = []
    for k in range(min(i, j) + 1):
        if (i - k) % 2 or (j - k) % 2:
            continue
        count = sympy.binomial(i, k) * sympy.binomial(j, k) * sympy.factorial(k)
        count *= _dfact(i - k - 1) * _dfact(j - k - 1)
        terms.append(count * k12**k * k11 ** ((i - k) // 2) * k22 ** ((j - k) // 2))
    return sympy.Add(*terms)


def _moment1(i: int, k: Expr) -> Expr:
    """E[u^i] for u ~ N(0, k)."""
    return sympy.S.Zero if i % 2 else _dfact(i - 1) * k ** (i // 2)


def polynomial_dual(name: str, coefs: Sequence[Expr]) -> DualActivation:
    """Dual of φ(z) = Σ_i coefs[i] z^i: exact Gaussian moments (also for user nonlins)."""
    cs = [as_expr(c) for c in coefs]
    # φ'(z) = Σ_i i c_i z^(i-1): E[φ'φ'] is the same sum over the derivative's coefficients.
    ds = [i * c for i, c in enumerate(cs)][1:]

    def nonzero(cc: list[Expr]) -> list[tuple[int, Expr]]:
        return [(i, c) for i, c in enumerate(cc) if c != 0]  # skip terms for readability

    def pair_sum(cc: list[Expr], k11: Expr, k12: Expr, k22: Expr) -> Expr:
        nz = nonzero(cc)
        return sympy.Add(
            *(ci * cj * gaussian_moment(i, j, k11, k12, k22) for i, ci in nz for j, cj in nz)
        )

    def variance(k: Expr) -> Expr:
        nz = nonzero(cs)
        return sympy.Add(*(ci * cj * _moment1(i + j, k) for i, ci in nz for j, cj in nz))

    return DualActivation(
        name=name,
        phi=lambda z: sympy.Add(*(c * z**i for i, c in nonzero(cs))),
        nngp=lambda k11, k12, k22: pair_sum(cs, k11, k12, k22),
        ntk_factor=lambda k11, k12, k22: pair_sum(ds, k11, k12, k22),
        variance=variance,
        mean=lambda k: sympy.Add(*(c * _moment1(i, k) for i, c in nonzero(cs))),
        mean_slope=lambda k: sympy.Add(*(d * _moment1(i, k) for i, d in nonzero(ds))),
    )


# ---------------------------------------------------------------- numeric φ for tests


def _max(*xs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.maximum, xs)


def _min(*xs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.minimum, xs)


def _lambdify_z(expr_of_z: Callable[[Expr], Expr]) -> Callable[[np.ndarray], np.ndarray]:
    z = sympy.Dummy("z", real=True)
    expr = expr_of_z(z)
    # sign' and step' are 2δ, δ: zero almost everywhere, which is what NT (and a
    # Monte Carlo estimate) uses.
    expr = expr.replace(sympy.DiracDelta, lambda *a: sympy.S.Zero)
    modules = [{"Max": _max, "Min": _min, "sign": np.sign}, "numpy", "scipy"]
    f = sympy.lambdify(z, expr, modules=modules)

    def fn(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        # constant φ' (identity, monomial 1) would come back as a scalar: broadcast it.
        return np.asarray(f(x), dtype=float) + np.zeros_like(x)

    return fn


def numeric_phi(dual: DualActivation) -> Callable[[np.ndarray], np.ndarray]:
    """φ as a vectorised numpy function (relu via np.maximum, sign via np.sign)."""
    return _lambdify_z(dual.phi)


def numeric_phi_prime(dual: DualActivation) -> Callable[[np.ndarray], np.ndarray]:
    """φ' as a vectorised numpy function (relu' = step, sign' = 0 as in NT)."""
    return _lambdify_z(lambda z: sympy.diff(dual.phi(z), z))
