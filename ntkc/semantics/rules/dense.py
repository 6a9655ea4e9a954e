"""dense(h, w_std, b_std, width) — a fully connected layer with fresh weights.

NTK parameterization (weights N(0,1), scaled by w_std/sqrt(fan_in)):
    K[g] = w²·K[h] + b²
    Θ[g] = K[g] + w²·Θ[h]
Standard parameterization (weights N(0, w²/fan_in), trained directly), as
Neural Tangents: K is the same, and
    Θ[g] = n_in·K[h] + 1 + w²·Θ[h]       (the 1 only when there is a bias)
where n_in is the width of h. Two different dense lines draw independent
weights, so their cross covariances vanish (ntkc.semantics.derive).

At finite width (finite_dense, ntkc.codegen.jax_target): W is (fan_in, width) and b
(width,), drawn N(0, 1) and applied as w/sqrt(fan_in)·h W + b·β under ntk, drawn
N(0, w²/fan_in) and N(0, b²) and applied as h W + b under standard; no b without b_std.
"""

from __future__ import annotations

import sympy

from .registry import Arg, ArgKind, FiniteForward, Opening, Rule, register


def derive_dense(eng, kind: str, node, p: int, q: int) -> sympy.Expr:
    (h,) = node.inputs
    w, b = node.attrs["w_std"], node.attrs["b_std"]
    bias = b**2 if b is not None else sympy.Integer(0)
    if kind == "K":
        return w**2 * eng.Q("K", h, h, p, q) + bias
    if eng.program.parameterization == "ntk":
        return eng.Q("K", node.name, node.name, p, q) + w**2 * eng.Q("T", h, h, p, q)
    n_in = eng.program.nodes[h].shape.channels
    one = sympy.Integer(1) if b is not None else sympy.Integer(0)
    return n_in * eng.Q("K", h, h, p, q) + one + w**2 * eng.Q("T", h, h, p, q)


def shape_dense(node, in_shapes, program):
    (s,) = in_shapes
    if s.spatial:
        raise ValueError(
            f"dense needs a vector input, but '{node.inputs[0]}' has spatial shape "
            f"{list(s.spatial)}; apply flatten(...) or a global pool first"
        )
    if program.parameterization == "standard" and s.channels is None:
        raise ValueError(
            f"under parameterization standard, dense needs the width of '{node.inputs[0]}': "
            "give width=... on the dense line that produces it"
        )
    return type(s)("vector", (), node.attrs["width"])


def finite_dense(jax, p, h, *, w_std, b_std, standard):
    if standard:
        out = h @ p["W"]
        return out + p["b"] if "b" in p else out
    out = (w_std / h.shape[-1] ** 0.5) * (h @ p["W"])  # fan_in: a flatten's is P·C
    return out + b_std * p["b"] if "b" in p else out


def finite_affine_static(node, program) -> dict:
    return {"w_std": node.attrs["w_std"], "b_std": node.attrs["b_std"],
            "standard": program.parameterization == "standard"}


def finite_affine_params(node, program, c_in, c_out, kernel=(), fan_in=None) -> dict:
    """W (*kernel, c_in, c_out) and b (c_out,) of a dense or conv line: N(0, 1) under ntk
    (scaled in the forward), N(0, w²/fan_in) and N(0, b²) under standard."""
    w, b = node.attrs["w_std"], node.attrs["b_std"]
    standard = program.parameterization == "standard"
    fan_in = c_in[0] if fan_in is None else fan_in
    out = {"W": ((*kernel, c_in[0], c_out), w / sympy.sqrt(fan_in) if standard else 1)}
    if b is not None:
        out["b"] = ((c_out,), b if standard else 1)
    return out


DENSE = register(Rule(
    "dense", Opening.AFFINE,
    (Arg("w_std", ArgKind.NUMBER, 1), Arg("b_std", ArgKind.NUMBER, None),
     Arg("width", ArgKind.INT, None)),
    1, shape_dense, derive_dense,
    finite=FiniteForward(finite_dense, finite_affine_static, finite_affine_params,
                         lambda node, program, c_in, width: width),
))
