"""Pools and flatten: linear maps over positions, as Neural Tangents.

    flatten(h)          K = (1/P) Σ_i K[h][i, i]                  (the mean, as NT)
    global_avg_pool(h)  K = (1/P²) Σ_ij K[h][i, j]     global_sum_pool: no 1/P²
    avg_pool(h, window, stride, padding)
                        K[o, o'] = (1/F²) Σ_{t, t'} K[h][tap(o, t), tap(o', t')]
                        (zero padding counts in F, normalize_edges=False); sum_pool: no 1/F²
Θ follows the same rule. Every pool but flatten reads covariances between
different positions, so the lines below it need full P×P covariances; at one
input those are the quantities of (x, x̃), x̃ a copy of x (ntkc.semantics.derive).

At finite width: jax.lax.reduce_window sums (circular: wrapped with SAME's amounts, then
VALID), times 1/F for avg_pool; the global pools average or sum over positions; flatten
reshapes (P, C) to P·C features, so the next dense's fan-in is P·C (NT's Flatten).
"""

from __future__ import annotations

import math

import sympy

from ..geometry import PADDINGS, window
from .registry import (
    Arg,
    ArgKind,
    FiniteForward,
    Opening,
    Rule,
    StencilKind,
    Structure,
    register,
)


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


def finite_pool(jax, p, h, *, window, stride, padding, scale):
    if padding == "circular":
        pads = jax.lax.padtype_to_pads(h.shape[1:-1], window, stride, "SAME")
        h = jax.numpy.pad(h, ((0, 0), *pads, (0, 0)), mode="wrap")
        padding = "valid"
    out = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, *window, 1), (1, *stride, 1),
                            padding.upper())
    return scale * out


def _finite_pool_static(node, program) -> dict:
    win = node.attrs["geometry"]
    scale = sympy.Rational(1, win.size) if node.op == "avg_pool" else sympy.Integer(1)
    return {"window": tuple(win.shape), "stride": tuple(win.stride),
            "padding": node.attrs["padding"], "scale": scale}


def finite_global_pool(jax, p, h, *, average):
    positions = tuple(range(1, h.ndim - 1))
    return h.mean(axis=positions) if average else h.sum(axis=positions)


def finite_flatten(jax, p, h):
    return h.reshape(h.shape[0], -1)


def _flatten_channels(node, program, c_in, width):
    return c_in[0] * math.prod(program.nodes[node.inputs[0]].shape.spatial)


FINITE = {
    "avg_pool": FiniteForward(finite_pool, _finite_pool_static),
    "sum_pool": FiniteForward(finite_pool, _finite_pool_static),
    "global_avg_pool": FiniteForward(finite_global_pool, lambda node, program: {"average": True}),
    "global_sum_pool": FiniteForward(finite_global_pool,
                                     lambda node, program: {"average": False}),
    "flatten": FiniteForward(finite_flatten, channels=_flatten_channels),
}

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
                  mixes_positions=True, stencils=(POOL,), finite=FINITE[_op]))
for _op, _stencil in (("global_avg_pool", GLOBAL), ("global_sum_pool", GLOBAL),
                      ("flatten", FLATTEN)):
    register(Rule(_op, Opening.LINEAR, (), 1, shape_reduce, derive_pool,
                  mixes_positions=True, stencils=(_stencil,), finite=FINITE[_op]))
