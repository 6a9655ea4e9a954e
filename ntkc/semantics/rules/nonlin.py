"""φ(g) — a pointwise nonlinearity of a Gaussian line g.

    K[h](x,x') = T_φ(K[g](x,x), K[g](x,x'), K[g](x',x'))     = E[φ(u)φ(v)]
    Θ[h](x,x') = Ṫ_φ(...) · Θ[g](x,x')                         Ṫ_φ = E[φ'(u)φ'(v)]
    K[h](x,x)  = V_φ(K[g](x,x))                                = E[φ(u)²]

The same rule serves every pair of lines that meet at a nonlinearity: two
nonlinearities of correlated Gaussians, or a nonlinearity and an affine line
(treated as the identity of itself). Different nonlinearities, or the same one
of different Gaussians, need a mixed expectation E[φ(u)ψ(v)]: by Stein's lemma
when one side is the identity, as a product of means when the Gaussians are
uncorrelated, and by quadrature otherwise (ntkc.semantics.quadrature).

At finite width φ is applied entrywise: the dual's φ(z) (a built-in's from
rules/activations.py, a user nonlin's own body), printed as jax code; jax differentiates
it for the empirical NTK (sign and the step have derivative 0, as NT's φ').
"""

from __future__ import annotations

import sympy

from ..quadrature import mixed_expectation
from .activations import builtin_dual
from .registry import FiniteForward, Opening, Rule, register

IDENTITY = builtin_dual("identity")


def _activation(node):
    """(dual, Gaussian line, identity key) of a line seen as φ(u)."""
    if node.op == "nonlin":
        return node.attrs["dual"], node.inputs[0], node.attrs["key"]
    return IDENTITY, node.name, ("identity",)


def _at_zero(eng, node, dual, derivative: bool) -> sympy.Expr:
    """φ(0), or φ′(0) (sign′ = 0 as in NT): a zero-variance Gaussian is the constant 0."""
    z = sympy.Dummy("z", real=True)
    f = dual.phi(z)
    if derivative:
        f = sympy.diff(f, z).replace(sympy.DiracDelta, lambda *args: sympy.S.Zero)
    value = f.subs(z, 0)
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise eng.fail(f"{dual.name}{'′' if derivative else ''} is not finite at 0, the value of "
                       f"the zero-variance line '{_activation(node)[1]}'", node.name)
    return value


def _mean(dual, k, derivative: bool) -> sympy.Expr | None:
    f = dual.mean_slope if derivative else dual.mean
    return None if f is None else f(k)


def _expectation(eng, a, b, p: int, q: int, derivative: bool) -> sympy.Expr:
    da, u, ka = _activation(a)
    db, v, kb = _activation(b)
    k11 = eng.Q("K", u, u, p, p)
    k22 = eng.Q("K", v, v, q, q)
    k12 = eng.Q("K", u, v, p, q)
    if k11 == 0 or k22 == 0:  # g - g, 0·g: the constant 0, so E[φ(0)ψ(v)] = φ(0)·E[ψ(v)]
        fa = _at_zero(eng, a, da, derivative) if k11 == 0 else _mean(da, k11, derivative)
        fb = _at_zero(eng, b, db, derivative) if k22 == 0 else _mean(db, k22, derivative)
        if fa is not None and fb is not None:
            return fa * fb
    if ka == kb and u == v:
        if p == q:
            return da.ntk_factor(k11, k11, k11) if derivative else da.variance(k11)
        return da.ntk_factor(k11, k12, k22) if derivative else da.nngp(k11, k12, k22)
    slope_a = da.mean_slope if ka != ("identity",) else None
    slope_b = db.mean_slope if kb != ("identity",) else None
    if derivative:
        if ka == ("identity",) and slope_b is not None:
            return slope_b(k22)
        if kb == ("identity",) and slope_a is not None:
            return slope_a(k11)
        if k12 == 0 and slope_a is not None and slope_b is not None:
            return slope_a(k11) * slope_b(k22)
    else:
        # Stein: E[u ψ(v)] = k12·E[ψ'(v)], ψ' with its jumps (sign's 2δ)
        if ka == ("identity",) and slope_b is not None:
            return k12 * db.stein_slope(k22)
        if kb == ("identity",) and slope_a is not None:
            return k12 * da.stein_slope(k11)
        if k12 == 0 and da.mean is not None and db.mean is not None:
            return da.mean(k11) * db.mean(k22)
    return mixed_expectation(da, db, derivative, k11, k12, k22)


def derive_nonlin(eng, kind: str, a, b, p: int, q: int) -> sympy.Expr:
    if kind == "K":
        return _expectation(eng, a, b, p, q, derivative=False)
    _, u, _ = _activation(a)
    _, v, _ = _activation(b)
    theta = eng.Q("T", u, v, p, q)
    if theta == 0:
        return sympy.Integer(0)
    return _expectation(eng, a, b, p, q, derivative=True) * theta


def shape_nonlin(node, in_shapes, program):
    return in_shapes[0]


def finite_nonlin(jax, p, g, *, phi):
    return phi(g)


def _finite_static(node, program) -> dict:
    z = sympy.Dummy("z", real=True)
    return {"phi": sympy.Lambda(z, node.attrs["dual"].phi(z))}


# Called by the nonlinearity's name (activations.BUILTINS or a user `nonlin`), not as "nonlin".
NONLIN = register(Rule("nonlin", Opening.POINTWISE, (), 1, shape_nonlin, derive_nonlin,
                      gaussian=False, needs_gaussian=True, callable=False,
                      finite=FiniteForward(finite_nonlin, _finite_static)))
