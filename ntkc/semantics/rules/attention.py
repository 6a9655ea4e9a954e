"""attention(h, n_heads, w_key_std, w_value_std, w_out_std, b_std, mechanism, width) —
Neural Tangents 0.6.5's GlobalSelfAttention over all positions, with linear scaling.

Linear scaling divides the logits by d_k instead of sqrt(d_k) and ties the query weights
to the key weights (W_query_std = W_key_std), so the logits ⟨q_i, k_j⟩/d_k of input x tend
to the deterministic w_key²·K[h](x,x)[i,j] and the attention weights to a fixed matrix
per input (NT's kernel_fn, linear_scaling=True; positional embeddings: none, NT's default):

    A(x)[i, j] = softmax_j(w_key²·K[h](x,x̃)[i, j])      mechanism softmax (the default)
               = m(w_key²·K[h](x,x̃)[i, j])              m = identity, relu or abs
    K[a](x,x')[i, j] = w_out²·w_value²·Σ_kl A(x)[i,k]·A(x')[j,l]·K[h](x,x')[k,l] + b²
    Θ[a](x,x')       = K[a] + w_out²·w_value²·(mix(K[h]) + mix(Θ[h]))

i.e. NT's ntk = weigh(Θ) + 2·(nngp − b²): the value and output weights each give
w_out²·w_value²·mix(K[h]), the bias b², and the query/key weights nothing in the limit.
n_heads and the key/value/output channels only normalise: they drop out. NT's layer has
no parameterization of its own, so the same rule holds under `parameterization standard`.

The weights are a StencilKind.matrix: computed once per input in the point phase from
the (x, x̃) covariance, kept in the point row; the mix reads them at both inputs and
needs every position pair of its source (ntkc.semantics.structure). At finite width
(the jax target): NT's apply_fn, key, value and output channels the line's width.
"""

from __future__ import annotations

import sympy

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

MECHANISMS = ("softmax", "identity", "relu", "abs")


def derive_attention(eng, kind: str, node, p: int, q: int) -> sympy.Expr:
    (h,) = node.inputs
    a = node.attrs
    qk = a["w_key_std"] ** 2
    ov = a["w_out_std"] ** 2 * a["w_value_std"] ** 2
    bias = a["b_std"] ** 2 if a["b_std"] is not None else sympy.Integer(0)
    logits = eng.Q("K", h, h, 1, 3)  # every position pair of one input
    if logits == 0:
        raise eng.fail(f"attention over '{h}', whose covariance is identically zero: its "
                       "attention weights are undefined", node.name)
    weights = eng.stencil(f"attn_{a['mechanism']}", node.name, logits, 1, 1, None, qk, "K")
    at = {1: weights, 2: eng.twins[weights], 3: eng.twins3[weights]}
    # one input's covariance across positions is the (x, x̃) array (ntkc.semantics.derive)
    q_src = 3 if p == q else q

    def mix(k: str) -> sympy.Expr:
        return eng.stencil("attn_mix", node.name, eng.Q(k, h, h, p, q_src), p, q, None,
                           sympy.Integer(1), k, (at[p], at[q_src]))

    if kind == "K":
        return ov * mix("K") + bias
    return eng.Q("K", node.name, node.name, p, q) + ov * (mix("K") + mix("T"))


def shape_attention(node, in_shapes, program):
    (s,) = in_shapes
    if not s.spatial:
        raise ValueError(f"attention needs a sequence or image input, but "
                         f"'{node.inputs[0]}' is a vector")
    return type(s)(s.kind, s.spatial, node.attrs["width"])


def finite_attention(jax, p, h, *, w_key_std, w_value_std, w_out_std, b_std, mechanism):
    """NT's GlobalSelfAttention.apply_fn with linear scaling (keys also the queries), key,
    value and output channels all the line's width: the same N(0, 1) weights and scalings
    under both parameterizations, as NT's layer has none."""
    jnp = jax.numpy
    x = h.reshape(h.shape[0], -1, h.shape[-1])  # (n, P, C): positions flattened
    c_in = x.shape[-1]
    keys = jnp.einsum("npc,mck->mnpk", x, p["Wk"])
    logits = jnp.einsum("mnik,mnjk->mnij", keys, keys) * (
        w_key_std**2 / (c_in * keys.shape[-1]))
    weights = {"softmax": lambda z: jax.nn.softmax(z, axis=-1), "identity": lambda z: z,
               "relu": lambda z: jnp.maximum(z, 0.0), "abs": jnp.abs}[mechanism](logits)
    values = jnp.einsum("npc,mcv->mnpv", x, p["Wv"])
    heads = jnp.einsum("mnij,mnjv->nimv", weights, values)  # (n, P, H, d_v)
    heads = heads.reshape(*heads.shape[:2], -1)
    out = heads @ p["Wo"] * (w_out_std * w_value_std / (heads.shape[-1] * c_in) ** 0.5)
    out = out.reshape(*h.shape[:-1], out.shape[-1])
    return out + b_std * p["b"] if "b" in p else out


def _finite_static(node, program) -> dict:
    a = node.attrs
    return {k: a[k] for k in ("w_key_std", "w_value_std", "w_out_std", "b_std", "mechanism")}


def _finite_params(node, program, c_in, c_out) -> dict:
    heads = node.attrs["n_heads"]
    out = {"Wk": ((heads, c_in[0], c_out), 1), "Wv": ((heads, c_in[0], c_out), 1),
           "Wo": ((heads * c_out, c_out), 1)}
    if node.attrs["b_std"] is not None:
        out["b"] = ((c_out,), 1)
    return out


def _positive(n_heads: int) -> str | None:
    return None if n_heads >= 1 else "must be a positive integer"


# The weights read the full (x, x̃) array (a point quantity, always full); the mix needs
# every position pair of its source for any entry of its output.
WEIGHTS = tuple(StencilKind(f"attn_{m}", lambda wanted: Structure.FULL, "A_{line}",
                            matrix=True) for m in MECHANISMS)
MIX = StencilKind("attn_mix", lambda wanted: Structure.FULL, "mix_{line}")
ATTENTION = register(Rule(
    "attention", Opening.AFFINE,
    (Arg("n_heads", ArgKind.INT, 1, check=_positive), Arg("w_key_std", ArgKind.NUMBER, 1),
     Arg("w_value_std", ArgKind.NUMBER, 1), Arg("w_out_std", ArgKind.NUMBER, 1),
     Arg("b_std", ArgKind.NUMBER, None), Arg("mechanism", ArgKind.CHOICE, "softmax", MECHANISMS),
     Arg("width", ArgKind.INT, None)),
    1, shape_attention, derive_attention, stencils=(*WEIGHTS, MIX),
    finite=FiniteForward(finite_attention, _finite_static, _finite_params,
                         lambda node, program, c_in, width: width),
))
