"""conv(h, filter, stride, padding, w_std, b_std) — a convolution with fresh weights.

Neural Tangents' rule, with 𝒜 the mean over the filter window of the covariance
shifted by the same offset on both sides (ntkc.semantics.geometry gives the taps):
    𝒜(K)[i, j] = (1/F) Σ_δ K[s·i + δ, s·j + δ]        (F = filter size)
NTK parameterization (weights N(0,1), scaled by w_std/sqrt(C_in·F)):
    K[g] = w²·𝒜(K[h]) + b²          Θ[g] = K[g] + w²·𝒜(Θ[h])
Standard parameterization (weights N(0, w²/(C_in·F)), trained directly):
    K[g] the same,                   Θ[g] = C_in·F·𝒜(K[h]) + 1 + w²·𝒜(Θ[h])
(the 1 only with a bias). 𝒜 keeps the diagonal i = j on the diagonal, so a net
read out by flatten only ever needs same-position covariances (ntkc.semantics.structure).

At finite width (finite_conv): lax's convolution, W (*filter, C_in, width) scaled and
drawn as dense's (rules/dense.py) with fan_in = C_in·F; circular pads by wrapping
around with SAME's amounts, then runs a VALID conv, as Neural Tangents.
"""

from __future__ import annotations

import math

import sympy

from ..geometry import PADDINGS, window
from .dense import finite_affine_params, finite_affine_static
from .registry import Arg, ArgKind, FiniteForward, Opening, Rule, StencilKind, register


def derive_conv(eng, kind: str, node, p: int, q: int) -> sympy.Expr:
    (h,) = node.inputs
    w, b = node.attrs["w_std"], node.attrs["b_std"]
    win = node.attrs["geometry"]
    bias = b**2 if b is not None else sympy.Integer(0)

    def conv(k: str) -> sympy.Expr:
        return eng.stencil("conv", node.name, eng.Q(k, h, h, p, q), p, q, win,
                           sympy.Rational(1, win.size), k)

    if kind == "K":
        return w**2 * conv("K") + bias
    if eng.program.parameterization == "ntk":
        return eng.Q("K", node.name, node.name, p, q) + w**2 * conv("T")
    fan_in = eng.program.nodes[h].shape.channels * win.size
    one = sympy.Integer(1) if b is not None else sympy.Integer(0)
    return fan_in * conv("K") + one + w**2 * conv("T")


def shape_conv(node, in_shapes, program):
    (s,) = in_shapes
    a = node.attrs
    if not s.spatial:
        raise ValueError(f"conv needs a sequence or image input, but '{node.inputs[0]}' is a "
                         "vector; use dense")
    filt = tuple(a["filter"])
    stride = tuple(a["stride"]) if a["stride"] is not None else (1,) * len(filt)
    if len(filt) != len(s.spatial):
        raise ValueError(f"a filter of {len(filt)} dim(s) on '{node.inputs[0]}' with "
                         f"{len(s.spatial)} spatial dim(s) {list(s.spatial)}")
    if len(stride) != len(filt):
        raise ValueError(f"stride has {len(stride)} entries, the filter {len(filt)}")
    if min(filt + stride) < 1:
        raise ValueError("filter sizes and strides must be positive")
    if program.parameterization == "standard" and s.channels is None:
        raise ValueError(f"under parameterization standard, conv needs the channels of "
                         f"'{node.inputs[0]}': give width=... on the line that produces it")
    a["geometry"] = window(s.spatial, filt, stride, a["padding"])
    return type(s)(s.kind, a["geometry"].out_spatial, a["width"])


def finite_conv(jax, p, h, *, w_std, b_std, standard, stride, padding):
    w = p["W"]
    axes = "HW"[-(h.ndim - 2):]  # a sequence: "W"
    numbers = ("N" + axes + "C", axes + "IO", "N" + axes + "C")
    if padding == "circular":
        pads = jax.lax.padtype_to_pads(h.shape[1:-1], w.shape[:-2], stride, "SAME")
        h = jax.numpy.pad(h, ((0, 0), *pads, (0, 0)), mode="wrap")
        padding = "valid"
    out = jax.lax.conv_general_dilated(h, w, stride, padding.upper(), dimension_numbers=numbers)
    if standard:
        return out + p["b"] if "b" in p else out
    out = (w_std / (w.size // w.shape[-1]) ** 0.5) * out  # fan_in = C_in·F
    return out + b_std * p["b"] if "b" in p else out


def _finite_static(node, program) -> dict:
    stride = node.attrs["geometry"].stride
    return {**finite_affine_static(node, program), "stride": tuple(stride),
            "padding": node.attrs["padding"]}


def _finite_params(node, program, c_in, c_out) -> dict:
    kernel = tuple(node.attrs["filter"])
    return finite_affine_params(node, program, c_in, c_out, kernel, c_in[0] * math.prod(kernel))


# 𝒜 shifts both sides by the same tap: each output entry reads the source entry of the
# same structure (a diagonal from a diagonal), so conv keeps the structure asked of it.
CONV_STENCIL = StencilKind("conv", lambda wanted: wanted, "𝒜_{line}")
CONV = register(Rule(
    "conv", Opening.AFFINE,
    (Arg("filter", ArgKind.INTS), Arg("stride", ArgKind.INTS, None),
     Arg("padding", ArgKind.CHOICE, "valid", PADDINGS), Arg("w_std", ArgKind.NUMBER, 1),
     Arg("b_std", ArgKind.NUMBER, None), Arg("width", ArgKind.INT, None)),
    1, shape_conv, derive_conv, stencils=(CONV_STENCIL,),
    finite=FiniteForward(finite_conv, _finite_static, _finite_params,
                         lambda node, program, c_in, width: width),
))
