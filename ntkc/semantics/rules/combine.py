"""Lines that combine other lines: linear combinations and channel concat.

a·u + c·v (any number of terms, coefficients numbers or params):
    K[r] = Σ_ij c_i c_j K[u_i,u_j]       Θ[r] = Σ_ij c_i c_j Θ[u_i,u_j]
The cross terms K[u,v] are carried, not assumed away: the engine proves them
zero when u and v end in different fresh affine layers (Neural Tangents'
FanInSum assumption), so g + g is 4·K[g].

concat(u, v, ...) — channel concatenation. A feature of the result is a feature
of one part, in proportion to the parts' widths (equal when widths are not
given, as Neural Tangents' FanInConcat), so its covariance with another line
is the width-weighted mean over parts; with another concat, the overlap of the
two partitions weighs each pair of parts.

At finite width the sum is the sum (its parts' widths are tied: equal channels), and
concat concatenates channels: a feature of a part of width w_i is a feature of the
result with probability w_i / Σw, the weights above.
"""

from __future__ import annotations

from fractions import Fraction

import sympy

from .registry import FiniteForward, Opening, Rule, register


def derive_lincomb(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    terms = node.attrs["terms"]
    if other == node.name:
        return sympy.Add(*(
            ci * cj * eng.Q(kind, ui, uj, p, q) for ci, ui in terms for cj, uj in terms
        ))
    return sympy.Add(*(c * eng.Q(kind, u, other, p, q) for c, u in terms))


def shape_lincomb(node, in_shapes, program):
    first = in_shapes[0]
    for name, s in zip(node.inputs, in_shapes):
        if s.spatial != first.spatial or s.kind != first.kind:
            raise ValueError(
                f"cannot add '{node.inputs[0]}' of shape {_fmt(first)} and '{name}' of shape "
                f"{_fmt(s)}"
            )
        if None not in (s.channels, first.channels) and s.channels != first.channels:
            raise ValueError(
                f"cannot add '{node.inputs[0]}' of width {first.channels} and '{name}' of width "
                f"{s.channels}"
            )
    widths = [s.channels for s in in_shapes if s.channels is not None]
    return type(first)(first.kind, first.spatial, widths[0] if widths else None)


def _fmt(s) -> str:
    dims = [*map(str, s.spatial), "?" if s.channels is None else str(s.channels)]
    return "[" + ", ".join(dims) + "]"


def _partition(eng, node) -> list[tuple[Fraction, Fraction, str]]:
    """The parts of a concat as sub-intervals of [0, 1], sized by width."""
    widths = [eng.program.nodes[u].shape.channels for u in node.inputs]
    if None in widths:
        widths = [1] * len(widths)
    total, start, out = sum(widths), Fraction(0), []
    for w, u in zip(widths, node.inputs):
        end = start + Fraction(w, total)
        out.append((start, end, u))
        start = end
    return out


def derive_concat(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    mine = _partition(eng, node)
    other_node = eng.program.nodes[other]
    if other_node.op != "concat":
        return sympy.Add(*(
            sympy.Rational(e - s) * eng.Q(kind, u, other, p, q) for s, e, u in mine
        ))
    theirs = _partition(eng, other_node)
    terms = []
    for s1, e1, u in mine:
        for s2, e2, v in theirs:
            overlap = min(e1, e2) - max(s1, s2)
            if overlap > 0:
                terms.append(sympy.Rational(overlap) * eng.Q(kind, u, v, p, q))
    return sympy.Add(*terms)


def shape_concat(node, in_shapes, program):
    first = in_shapes[0]
    for name, s in zip(node.inputs, in_shapes):
        if s.spatial != first.spatial or s.kind != first.kind:
            raise ValueError(
                f"concat needs parts of one spatial shape: '{node.inputs[0]}' is {_fmt(first)}, "
                f"'{name}' is {_fmt(s)}"
            )
    widths = [s.channels for s in in_shapes]
    return type(first)(first.kind, first.spatial, None if None in widths else sum(widths))


def finite_lincomb(jax, p, *terms, coefs):
    out = coefs[0] * terms[0]  # a coefficient is 0 where the terms cancel (g - g)
    for c, t in zip(coefs[1:], terms[1:]):
        out = out + c * t
    return out


def _lincomb_static(node, program) -> dict:
    coef = {u: c for c, u in node.attrs["terms"]}
    return {"coefs": tuple(coef.get(u, sympy.Integer(0)) for u in node.inputs)}


def finite_concat(jax, p, *parts):
    return jax.numpy.concatenate(parts, axis=-1)


# `r = g1 + 0.5 * g2` has its own syntax; a concat of Gaussian lines is not one Gaussian
# vector (its parts have different covariances), so no nonlinearity may read it.
LINCOMB = register(Rule("lincomb", Opening.LINEAR, (), None, shape_lincomb, derive_lincomb,
                        callable=False,
                        finite=FiniteForward(finite_lincomb, _lincomb_static,
                                             same_channels=True)))
CONCAT = register(Rule("concat", Opening.LINEAR, (), None, shape_concat, derive_concat,
                       gaussian=False, finite=FiniteForward(
                           finite_concat, channels=lambda node, program, c_in, width: sum(c_in))))
