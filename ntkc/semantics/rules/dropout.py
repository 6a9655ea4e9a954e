"""dropout(h, rate) — Neural Tangents 0.6.5's Dropout in train mode; ``rate`` is the KEEP
probability.

Each feature of each input is kept with probability ``rate`` and scaled by 1/rate: d = m·h/rate,
m ~ Bernoulli(rate), independently per input, position and channel, and of everything else.
E[m]/rate = 1 and E[m²]/rate² = 1/rate, so only a feature with itself changes:
    K[d](x,x)             = K[h](x,x) / rate           (one input, one position)
    K[d](x,x̃)[i, j]       = K[h](x,x̃)[i, j]·(1 + (1/rate − 1)·δ_ij)   (one input, two positions)
    K[d](x,x')            = K[h](x,x')                 (two inputs: independent masks)
    K[d, v]               = K[h, v]                    (any other line v: its own mask or none)
Θ follows the same rule (∂d/∂θ = m·∂h/∂θ/rate). So the Gram diagonal K(x, x) of a network
changes, the entries between different inputs do not; Neural Tangents does the same
(_diag_mul: equal batch index and equal positions). x̃ is the second copy of x that pools
read (ntkc.semantics.derive): their covariances across positions keep i ≠ j as they are.

d is not Gaussian (a mixture of 0 and h/rate), so no nonlinearity may read it; a dense or conv
after it is Gaussian again. Neural Tangents refuses dropout on the raw input; so does ntkc.

At finite width (finite_dropout) the mask is drawn from the line's key at every apply
(FiniteForward.random): per input row, position and channel. The empirical kernels of
x1 against a different x2 draw x2's masks from another key: independent masks, as above.
"""

from __future__ import annotations

import sympy

from ..positions import DELTA
from .registry import RULES, Arg, ArgKind, FiniteForward, Opening, Rule, register


def derive_dropout(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    (h,) = node.inputs
    if other != node.name:
        o = eng.program.nodes[other]
        rule = RULES[o.op]
        if (rule.opening is Opening.LINEAR and not rule.mixes_positions and o.op != node.op
                or rule.opening is Opening.OWN):
            # other may hold this very line (r = d + g, d * g): open it first, so that d
            # meets d (an OWN rule says what it can of its covariance with d)
            return rule.derive(eng, kind, o, node.name, q, p)
        return eng.Q(kind, h, other, p, q)  # this mask is independent of other, of mean 1
    k = eng.Q(kind, h, h, p, q)
    if not {p, q} <= {1, 3}:  # two different inputs: independent masks
        return k
    keep = node.attrs["rate"]
    if p != q and node.shape.spatial:  # x and its copy x̃, at positions i and j
        return k * (1 + (1 / keep - 1) * DELTA)
    return k / keep  # one input: a variance (per position, for a spatial line)


def _keep_probability(value: sympy.Expr) -> str | None:
    if not value.is_number:
        return f"must be a number in (0, 1] (the keep probability), not {value}"
    if not 0 < value <= 1:
        return f"is the keep probability: it must be in (0, 1], got {value}"
    return None


def shape_dropout(node, in_shapes, program):
    (h,) = node.inputs
    if program.nodes[h].op == "input":
        raise ValueError(f"dropout needs a layer's output, not the raw input '{h}' (as "
                         "Neural Tangents)")
    return in_shapes[0]


def finite_dropout(jax, p, h, *, rate, key):
    keep = jax.random.bernoulli(key, rate, h.shape)
    return jax.numpy.where(keep, h / rate, 0.0)


DROPOUT = register(Rule(
    "dropout", Opening.LINEAR, (Arg("rate", ArgKind.NUMBER, check=_keep_probability),), 1,
    shape_dropout, derive_dropout, gaussian=False,
    finite=FiniteForward(finite_dropout, lambda node, program: {"rate": node.attrs["rate"]},
                         random=True),
))
