"""input x : vector[d] — the recursion starts from the inputs' dot products.

    K[x](x,x') = x·x' / d          Θ[x](x,x') = 0

input x : sequence[L, C] / image[H, W, C] — one covariance per pair of positions,
a stencil over the raw data (ntkc.semantics.derive):
    K[x](x,x')[i, j] = Σ_c x[i, c]·x'[j, c] / C

At finite width the input line is the network's input (finite_input gets it).
"""

from __future__ import annotations

import sympy

from .registry import FiniteForward, Opening, Rule, StencilKind, register


def derive_input(eng, kind: str, node, p: int, q: int) -> sympy.Expr:
    if kind == "T":
        return sympy.Integer(0)
    if node.shape.spatial:
        return eng.stencil("input", node.name, None, p, q, None,
                           sympy.Rational(1, node.shape.channels))
    if node.shape.channels is None:  # vector[*]: the driver divides by the data's d
        return eng.input_dot(p, q)
    return eng.input_dot(p, q) / node.shape.channels


def shape_input(node, in_shapes, program):
    return node.shape  # set by the builder from the declaration


def finite_input(jax, p, x):
    return x


INPUT = register(Rule("input", Opening.INPUT, (), 0, shape_input, derive_input, gaussian=False,
                      callable=False, stencils=(StencilKind("input", None, "{kind}[{line}]"),),
                      finite=FiniteForward(finite_input)))
