"""input x : vector[d] — the recursion starts from the inputs' dot products.

    K[x](x,x') = x·x' / d          Θ[x](x,x') = 0
"""

from __future__ import annotations

import sympy

from . import Rule, register


def derive_input(eng, kind: str, node, p: int, q: int) -> sympy.Expr:
    if kind == "T":
        return sympy.Integer(0)
    d = node.shape.channels
    for size in node.shape.spatial:
        d *= size
    return eng.input_dot(p, q) / d


def shape_input(node, in_shapes, program):
    return node.shape  # set by the builder from the declaration


INPUT = register(Rule("input", "input", (), 0, False, shape_input, derive_input))
