"""layer_norm(g, axes=channels|all) — normalisation, as Neural Tangents' LayerNorm.

For Gaussian zero-mean g the mean over the normalised axes tends to 0 and the variance to
the mean of K[g](x,x) over them. axes=channels (the default; NT's axis=-1) normalises each
position by its own variance:
    K[n](x,x')[i,j] = K[g](x,x')[i,j] / sqrt(K[g](x,x)[i]·K[g](x',x')[j])
axes=all (NT's axis=(1, 2, 3): every non-batch axis) by the mean over positions of the
variance, m(x) = (1/P) Σ_k K[g](x,x)[k] (a flatten of the variance at one input):
    K[n](x,x')[i,j] = K[g](x,x')[i,j] / sqrt(m(x)·m(x'))
Θ[n] is Θ[g] divided by the same root (NT ignores its eps = 1e-12, and so does ntkc). For
a vector the two are the same. It is linear in g at each input, so cross terms with other
lines follow.
"""

from __future__ import annotations

import math

import sympy

from .registry import Arg, ArgKind, FiniteForward, Opening, Rule, register


def _normaliser(eng, node, p: int) -> sympy.Expr:
    """What n's side at point p is divided by the root of: the variance (per position),
    or, with axes=all, its mean over positions, computed once per input and read at x,
    x' or x̃ through its twins."""
    (g,) = node.inputs
    shape = eng.program.nodes[g].shape
    if node.attrs["axes"] == "channels" or not shape.spatial:
        return eng.Q("K", g, g, p, p)
    mean = eng.stencil("flatten", node.name, eng.Q("K", g, g, 1, 1), 1, 1, None,
                       sympy.Rational(1, math.prod(shape.spatial)), "K")
    return mean.xreplace({2: eng.twins, 3: eng.twins3}.get(p, {}))


def derive_layer_norm(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    (g,) = node.inputs
    variance = _normaliser(eng, node, p)
    if variance == 0:
        raise eng.fail(f"layer_norm of '{g}', whose variance is identically zero (its terms "
                       "cancel or its weights are 0): there is nothing to normalise", node.name)
    scale = 1 / sympy.sqrt(variance)
    if other == node.name:  # both sides normalised
        return eng.Q(kind, g, g, p, q) * scale / sympy.sqrt(_normaliser(eng, node, q))
    return eng.Q(kind, g, other, p, q) * scale


def shape_layer_norm(node, in_shapes, program):
    return in_shapes[0]


def finite_layer_norm(jax, p, g, *, axes):
    # (g - mean) / sqrt(var + 1e-12) over the normalised axes, as NT's LayerNorm
    over = -1 if axes == "channels" else tuple(range(1, g.ndim))
    mean = g.mean(axis=over, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=over, keepdims=True)
    return (g - mean) / (var + 1e-12) ** 0.5


LAYER_NORM = register(Rule("layer_norm", Opening.LINEAR,
                           (Arg("axes", ArgKind.CHOICE, "channels", ("channels", "all")),),
                           1, shape_layer_norm, derive_layer_norm, needs_gaussian=True,
                           finite=FiniteForward(finite_layer_norm, lambda node, program: {
                               "axes": node.attrs["axes"]})))
