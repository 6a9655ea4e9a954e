"""conv_local(h, filter, stride, padding, w_std, b_std, width) — a locally connected layer:
a conv whose weights are not shared across positions (Neural Tangents' ConvLocal).

Every output position has its own fresh weights and bias, so two different positions are
independent: the covariance is zero between them, and at one position it is conv's
(ntkc.semantics.rules.conv), which there reads only same-position entries of its input:
    K[g][i, j] = δ_ij·(w²·𝒜(K[h])[i, i] + b²)      𝒜(K)[i, i] = (1/F) Σ_δ K[s·i + δ, s·i + δ]
NTK parameterization:       Θ[g] = K[g] + δ_ij·w²·𝒜(Θ[h])[i, i]
Standard parameterization:  Θ[g] = δ_ij·(C_in·F·𝒜(K[h])[i, i] + 1 + w²·𝒜(Θ[h])[i, i])
(the 1 only with a bias), as Neural Tangents 0.6.5 (_conv_kernel_full_spatial_unshared:
the shared conv's diagonal, zeros elsewhere; the bias added on the diagonal only).

So the lines below a conv_local need only their diagonals (O(P) per pair), even where a
pool reads the conv_local's full output: its 𝒜 is a diagonal stencil (Stencil.diagonal),
and δ_ij (ntkc.semantics.positions) spreads it over the full array, zero off the
diagonal. At one input the covariance across positions (x, x̃) is δ_ij·K[g](x, x).

At finite width (finite_conv_local): each output position's window, as lax's patches
(circular: wrapped with SAME's amounts, then VALID), times that position's own weights
W (*out, C_in·F, width), drawn and scaled as dense's with fan_in = C_in·F, plus its own
bias b (*out, width).
"""

from __future__ import annotations

import sympy

from ..positions import DELTA
from .conv import CONV, CONV_STENCIL, shape_conv
from .dense import finite_affine_params, finite_affine_static
from .registry import FiniteForward, Opening, Rule, register


def derive_conv_local(eng, kind: str, node, p: int, q: int) -> sympy.Expr:
    if q == 3:  # one input at two positions: independent unless the same position
        return DELTA * eng.Q(kind, node.name, node.name, p, p)
    (h,) = node.inputs
    w, b = node.attrs["w_std"], node.attrs["b_std"]
    win = node.attrs["geometry"]
    # at one input (p = q) a quantity is already the per-position variance: no δ
    delta = DELTA if p != q else sympy.Integer(1)

    def conv(k: str) -> sympy.Expr:  # 𝒜's diagonal: one value per position
        return eng.stencil("conv", node.name, eng.Q(k, h, h, p, q), p, q, win,
                           sympy.Rational(1, win.size), k, diagonal=True)

    if kind == "K":
        return delta * (w**2 * conv("K") + (b**2 if b is not None else 0))
    if eng.program.parameterization == "ntk":
        return eng.Q("K", node.name, node.name, p, q) + delta * w**2 * conv("T")
    fan_in = eng.program.nodes[h].shape.channels * win.size
    return delta * (fan_in * conv("K") + (1 if b is not None else 0) + w**2 * conv("T"))


def shape_conv_local(node, in_shapes, program):
    (s,) = in_shapes
    if not s.spatial:
        raise ValueError(f"conv_local needs a sequence or image input, but "
                         f"'{node.inputs[0]}' is a vector; use dense")
    if program.parameterization == "standard" and s.channels is None:
        raise ValueError(f"under parameterization standard, conv_local needs the channels of "
                         f"'{node.inputs[0]}': give width=... on the line that produces it")
    return shape_conv(node, in_shapes, program)  # the window: conv's, with its checks


def finite_conv_local(jax, p, h, *, w_std, b_std, standard, window, stride, padding):
    w = p["W"]
    if padding == "circular":
        pads = jax.lax.padtype_to_pads(h.shape[1:-1], window, stride, "SAME")
        h = jax.numpy.pad(h, ((0, 0), *pads, (0, 0)), mode="wrap")
        padding = "valid"
    axes = "HW"[-(h.ndim - 2):]  # a sequence: "W"
    patches = jax.lax.conv_general_dilated_patches(
        h, window, stride, padding.upper(),
        dimension_numbers=("N" + axes + "C", "OI" + axes, "N" + axes + "C"))
    out = jax.numpy.einsum("n...k,...kc->n...c", patches, w)
    if standard:
        return out + p["b"] if "b" in p else out
    out = (w_std / w.shape[-2] ** 0.5) * out  # fan_in = C_in·F
    return out + b_std * p["b"] if "b" in p else out


def _finite_static(node, program) -> dict:
    win = node.attrs["geometry"]
    return {**finite_affine_static(node, program), "window": tuple(win.shape),
            "stride": tuple(win.stride), "padding": node.attrs["padding"]}


def _finite_params(node, program, c_in, c_out) -> dict:
    """conv's W and b with one copy per output position: (*out, C_in·F, width), (*out,
    width)."""
    out, size = tuple(node.shape.spatial), node.attrs["geometry"].size
    shared = finite_affine_params(node, program, [c_in[0] * size], c_out)
    return {k: (out + shape, std) for k, (shape, std) in shared.items()}


# conv's arguments and its 𝒜 stencil (of which only the diagonal is computed here).
CONV_LOCAL = register(Rule("conv_local", Opening.AFFINE, CONV.args, 1, shape_conv_local,
                           derive_conv_local, stencils=(CONV_STENCIL,),
                           finite=FiniteForward(finite_conv_local, _finite_static,
                                                _finite_params,
                                                lambda node, program, c_in, width: width)))
