"""layer_norm(g) — normalisation over the features (channels), as Neural Tangents.

For Gaussian zero-mean g the feature mean tends to 0 and the feature
variance to K[g](x,x), so layer_norm rescales by 1/sqrt(K[g](x,x)):
    K[n](x,x') = K[g](x,x') / sqrt(K[g](x,x)·K[g](x',x'))
    Θ[n](x,x') = Θ[g](x,x') / sqrt(K[g](x,x)·K[g](x',x'))
It is linear in g at each input, so cross terms with other lines follow.
"""

from __future__ import annotations

import sympy

from .registry import Opening, Rule, register


def derive_layer_norm(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    (g,) = node.inputs
    variance = eng.Q("K", g, g, p, p)
    if variance == 0:
        raise eng.fail(f"layer_norm of '{g}', whose variance is identically zero (its terms "
                       "cancel or its weights are 0): there is nothing to normalise", node.name)
    scale = 1 / sympy.sqrt(variance)
    if other == node.name:  # both sides normalised
        return eng.Q(kind, g, g, p, q) * scale / sympy.sqrt(eng.Q("K", g, g, q, q))
    return eng.Q(kind, g, other, p, q) * scale


def shape_layer_norm(node, in_shapes, program):
    return in_shapes[0]


LAYER_NORM = register(Rule("layer_norm", Opening.LINEAR, (), 1, shape_layer_norm,
                           derive_layer_norm, needs_gaussian=True))
