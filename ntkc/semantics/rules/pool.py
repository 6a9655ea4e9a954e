"""Pools and flatten: linear maps over positions, as Neural Tangents.

    flatten(h)          K = (1/P) Σ_i K[h][i, i]                  (the mean, as NT)
    global_avg_pool(h)  K = (1/P²) Σ_ij K[h][i, j]     global_sum_pool: no 1/P²
    avg_pool(h, window, stride, padding)
                        K[o, o'] = (1/F²) Σ_{t, t'} K[h][tap(o, t), tap(o', t')]
                        (zero padding counts in F, normalize_edges=False); sum_pool: no 1/F²
Θ follows the same rule. Every pool but flatten reads covariances between
different positions, so the lines below it need full P×P covariances; at one
input those are the quantities of (x, x̃), x̃ a copy of x (ntkc.semantics.derive).
"""

from __future__ import annotations

import math

import sympy

from ..geometry import PADDINGS, window
from .registry import Arg, ArgKind, Opening, Rule, StencilKind, Structure, register


def _other_input(eng, node, other: str) -> str:
    if other == node.name:
        return node.inputs[0]
    o = eng.program.nodes[other]
    same = (o.op == node.op and eng.program.nodes[o.inputs[0]].shape
            == eng.program.nodes[node.inputs[0]].shape
            and {k: v for k, v in o.attrs.items() if k != "geometry"}
            == {k: v for k, v in node.attrs.items() if k != "geometry"})
    if not same:
        raise eng.fail(f"the covariance of '{node.name}' ({node.op}) with '{other}' is not "
                       f"supported: combine {node.op} lines only with the same {node.op} of "
                       "other lines", node.name)
    return o.inputs[0]


def derive_pool(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    u, v = node.inputs[0], _other_input(eng, node, other)
    P = math.prod(eng.program.nodes[u].shape.spatial)
    if node.op == "flatten":
        return eng.stencil("flatten", node.name, eng.Q(kind, u, v, p, q), p, q, None,
                           sympy.Rational(1, P), kind)
    source = eng.Q(kind, u, v, p, 3 if p == q else q)  # covariances across positions
    if node.op in ("global_avg_pool", "global_sum_pool"):
        scale = sympy.Rational(1, P * P) if node.op == "global_avg_pool" else sympy.Integer(1)
        return eng.stencil("global", node.name, source, p, q, None, scale, kind)
    win = node.attrs["geometry"]
    scale = sympy.Rational(1, win.size**2) if node.op == "avg_pool" else sympy.Integer(1)
    return eng.stencil("pool", node.name, source, p, q, win, scale, kind)


def _spatial_input(node, s) -> None:
    if not s.spatial:
        raise ValueError(f"{node.op} needs a sequence or image input, but "
                         f"'{node.inputs[0]}' is a vector")


def shape_reduce(node, in_shapes, program):
    (s,) = in_shapes
    _spatial_input(node, s)
    P = math.prod(s.spatial)
    width = None if s.channels is None else (
        s.channels * P if node.op == "flatten" else s.channels)
    return type(s)("vector", (), width)


def shape_pool(node, in_shapes, program):
    (s,) = in_shapes
    _spatial_input(node, s)
    a = node.attrs
    shape = tuple(a["window"])
    stride = tuple(a["stride"]) if a["stride"] is not None else shape
    a["geometry"] = window(s.spatial, shape, stride, a["padding"])
    return type(s)(s.kind, a["geometry"].out_spatial, s.channels)


# Pools and global pools read every pair of positions of their source; flatten only its
# diagonal (same positions).
POOL = StencilKind("pool", lambda wanted: Structure.FULL, "pool_{line}")
GLOBAL = StencilKind("global", lambda wanted: Structure.FULL, "gpool_{line}", to_scalar=True)
FLATTEN = StencilKind("flatten", lambda wanted: Structure.DIAG, "flatten_{line}", to_scalar=True)
POOL_ARGS = (Arg("window", ArgKind.INTS), Arg("stride", ArgKind.INTS, None),
             Arg("padding", ArgKind.CHOICE, "valid", PADDINGS))
# Every op here mixes positions: its covariance with another line is defined only against
# the same op of that line (ntkc.semantics.derive opens every other linear op first).
for _op in ("avg_pool", "sum_pool"):
    register(Rule(_op, Opening.LINEAR, POOL_ARGS, 1, shape_pool, derive_pool,
                  mixes_positions=True, stencils=(POOL,)))
for _op, _stencil in (("global_avg_pool", GLOBAL), ("global_sum_pool", GLOBAL),
                      ("flatten", FLATTEN)):
    register(Rule(_op, Opening.LINEAR, (), 1, shape_reduce, derive_pool,
                  mixes_positions=True, stencils=(_stencil,)))
