"""Derivatives of the kernels with respect to the spec's params: forward mode through the
recursion, by sympy differentiation, one tangent assignment per quantity.

For a param θ, each quantity s = e(earlier quantities, θ) gets the tangent

    ∂θ s = Σ_u ∂e/∂u · ∂θ u + ∂e/∂θ

in the same order as the values, so the generated kernel computes values and tangents
in one fused pass, CSE'd together (a tangent reads the value's subexpressions). A
quantity at x' (a twin) has the twin of its tangent. Quadrature expectations are opaque
functions of (k11, k12, k22); their partial derivatives are expectations too (the heat
equation of the Gaussian, Price's theorem):

    ∂/∂k11 E[f(u)g(v)] = ½ E[f''(u) g(v)]    ∂/∂k12 E[f(u)g(v)] = E[f'(u) g'(v)]
    ∂/∂k    E[f(u)]     = ½ E[f''(u)]

which need f'' as a function: a nonlinearity whose derivative jumps (elu, selu, a user
max(z, 0)) has a Dirac delta there, and its gradient is refused.
"""

from __future__ import annotations

import dataclasses

import sympy

from .derive import Assignment, DeriveError, Recursion
from .duals import Clip1
from .quadrature import GaussExpectation, Integrand, expectation
from .rules import STENCILS

HALF = sympy.Rational(1, 2)


class GradientError(DeriveError):
    pass


def _derived(integrand: Integrand, argindex: int) -> tuple[sympy.Expr, Integrand]:
    """(factor, integrand) with ∂E/∂(argument argindex) = factor · E[integrand]."""
    z, f, g = integrand.z, integrand.f, integrand.g
    if g is None:
        out = (HALF, dataclasses.replace(integrand, label=f"({integrand.label})''",
                                         f=sympy.diff(f, z, 2)))
    elif argindex == 1:
        out = (sympy.S.One, Integrand(f"({integrand.label})'", z, sympy.diff(f, z),
                                      sympy.diff(g, z)))
    else:  # 0: k11, 2: k22
        f2, g2 = (sympy.diff(f, z, 2), g) if argindex == 0 else (f, sympy.diff(g, z, 2))
        out = (HALF, Integrand(f"({integrand.label})k{argindex + 1}{argindex + 1}", z, f2, g2))
    twice = [f] if g is None or argindex == 0 else [g] if argindex == 2 else []
    if any(_jumps(sympy.diff(e, z), z) for e in twice) or any(
            e is not None and e.has(sympy.DiracDelta) for e in (out[1].f, out[1].g)):
        raise GradientError(f"the derivative of the expectation E[{integrand.label}] needs a "
                            "second derivative with a Dirac delta (a kink): gradients through "
                            "this nonlinearity are not supported", None)
    return out


def _jumps(slope: sympy.Expr, z: sympy.Symbol) -> bool:
    """Whether φ' jumps at 0 (sympy differentiates a Piecewise piece by piece and would
    drop the Dirac delta of φ'' there). Quadrature nonlinearities kink at 0 or nowhere."""
    if not slope.has(sympy.Piecewise, sympy.Heaviside, sympy.sign):
        return False
    # one-sided values just off 0 (sympy.limit misreads a Piecewise's sides): a continuous
    # φ' differs there by ~1e-12·φ''
    left, right = (float(slope.subs(z, sympy.Float(s * 1e-12))) for s in (-1, 1))
    return abs(right - left) > 1e-6 * (1 + abs(left))


def partial(e: sympy.Expr, s: sympy.Symbol) -> sympy.Expr:
    """∂e/∂s, with the chain rule through quadrature expectations."""
    atoms = sorted(e.atoms(GaussExpectation), key=sympy.default_sort_key)
    if not atoms:
        return sympy.diff(e, s)
    stand_in = {q: sympy.Dummy(f"q{i}") for i, q in enumerate(atoms)}
    opaque = e.xreplace(stand_in)
    total = sympy.diff(opaque, s)
    for q, d in stand_in.items():
        outer = sympy.diff(opaque, d)
        if outer == 0:
            continue
        for i, arg in enumerate(q.args):
            inner = sympy.diff(arg, s)
            if inner != 0:
                factor, integrand = _derived(type(q).integrand, i)
                total += outer * inner * factor * expectation(integrand, *q.args)
    return total.xreplace({d: q for q, d in stand_in.items()})


# A negative power of 1 - ρ² (from differentiating acos, asin or sqrt(1 - ρ²) of a
# clipped correlation) is infinite at ρ = ±1, where the factor it multiplies vanishes
# (two equal inputs stay equal: their correlation does not move with a param), and
# rounding turns 0·∞ into NaN. Below this floor the factor is held at its value there:
# on a pair within 1e-6 radians of ρ = 1 that term moves by at most that angle's rate.
RHO_FLOOR = sympy.Float(1e-12)


_R = sympy.Wild("r")


def _floored(e: sympy.Expr) -> sympy.Expr:
    return e.replace(
        lambda x: (x.is_Pow and x.exp.is_negative
                   and x.base.match(1 - Clip1(_R) ** 2) is not None),
        # written as a power of sqrt(1 - ρ²), which the value computes already (CSE)
        lambda x: sympy.Pow(sympy.Max(sympy.sqrt(x.base), sympy.sqrt(RHO_FLOOR)), 2 * x.exp))


def _unclipped(e: sympy.Expr) -> sympy.Expr:
    """Clip1(r) → r outside acos, asin and 1 - Clip1(r)²: the clip only keeps those
    defined when rounding puts |r| a few ulps over 1, where it changes nothing else, and
    without it the derivative's -r/s + r/s terms (s = sqrt(1 - r²), from sin θ and from
    acos') cancel symbolically instead of costing two divisions per layer and pair."""
    keep: dict[sympy.Expr, sympy.Dummy] = {}

    def hide(x: sympy.Expr) -> sympy.Dummy:
        return keep.setdefault(x, sympy.Dummy(f"keep{len(keep)}"))

    e = e.replace(lambda x: isinstance(x, (sympy.acos, sympy.asin)) and x.args[0].has(Clip1),
                  hide)
    e = e.replace(lambda x: x.is_Add and x.match(1 - Clip1(_R) ** 2) is not None, hide)
    e = e.replace(Clip1, lambda x: x)
    return e.xreplace({d: x for x, d in keep.items()})


def _tangent(e: sympy.Expr, theta: sympy.Symbol, known: dict) -> sympy.Expr:
    out = partial(e, theta)
    for s in sorted(e.free_symbols, key=sympy.default_sort_key):
        t = known.get(s)
        if t is not None and t != 0:
            out += partial(e, s) * t
    return _floored(_unclipped(out))


def output_key(which: str, param: str) -> str:
    """The Recursion.outputs key of ∂(which)/∂param, which in nngp, ntk, nngp_diag, ntk_diag."""
    return f"{which}:{param}"


def with_tangents(rec: Recursion) -> Recursion:
    """The recursion with the tangents of every quantity and output for every param.

    A stencil is linear in its source, so its tangent is the same stencil of the
    source's tangent; the input's channel sums have none. A per-input quantity's tangent
    has the twins of its value: at x' (the pair phase reads it there) and at the copy x̃
    (one input's covariances across positions)."""
    point, pair = list(rec.point), list(rec.pair)
    twins, names = dict(rec.twins), dict(rec.code_names)
    twins3 = None if rec.twins3 is None else dict(rec.twins3)
    outputs = dict(rec.outputs)
    for i, p in enumerate(rec.program.params.values()):
        theta = p.symbol
        known: dict[sympy.Symbol, sympy.Expr] = {}

        def tangent_of(a: Assignment, theta: sympy.Symbol = theta,
                       known: dict = known) -> Assignment | None:
            st = a.stencil
            if st is None:
                d = _tangent(a.expr, theta, known)
                return None if d == 0 else dataclasses.replace(
                    a, expr=d, diag=None if a.diag is None else _tangent(a.diag, theta, known))
            if st.operands or STENCILS[st.op].matrix:
                raise GradientError(f"kernel gradients through '{a.line}' ({st.op}): its "
                                    "per-input matrices are not differentiated yet", None)
            d = sympy.S.Zero if st.source is None else known.get(st.source, sympy.S.Zero)
            if d == 0:
                return None
            return dataclasses.replace(
                a, expr=a.expr.xreplace({st.source: d}),
                stencil=dataclasses.replace(st, source=d),
                diag=None if a.diag is None else _tangent(a.diag, theta, known))

        def twin(s: sympy.Symbol, t: sympy.Expr, maps: list[tuple[dict, dict]],
                 i: int = i, theta: sympy.Symbol = theta, known: dict = known) -> None:
            for value_twins, tangent_twins in maps:
                if s not in value_twins:
                    continue
                other = value_twins[s]
                if t == 0:
                    known[other] = sympy.S.Zero
                    continue
                tw = sympy.Symbol(f"∂{theta.name}{other.name}", real=True)
                names[tw] = f"D{i}{names[other]}"
                tangent_twins[t] = tw
                known[other] = tw

        maps = [(rec.twins, twins)] + ([(rec.twins3, twins3)] if twins3 is not None else [])
        for phase, into in ((rec.point, point), (rec.pair, pair)):
            for a in phase:
                d = tangent_of(a)
                if d is None:
                    known[a.symbol] = sympy.S.Zero
                else:
                    symbol = sympy.Symbol(f"∂{theta.name}{a.symbol.name}", real=True)
                    names[symbol] = f"D{i}{names[a.symbol]}"
                    into.append(dataclasses.replace(d, symbol=symbol))
                    known[a.symbol] = symbol
                if phase is rec.point:  # a per-input quantity: its tangent's twins now
                    twin(a.symbol, known[a.symbol], maps)
        for which in ("nngp", "ntk", "nngp_diag", "ntk_diag"):
            outputs[output_key(which, p.name)] = _tangent(rec.outputs[which], theta, known)
    return dataclasses.replace(rec, point=point, pair=pair, outputs=outputs, twins=twins,
                               twins3=twins3, code_names=names)
