"""Per-input matrices and the stencils that read them (attention, ntkc.semantics.rules.
attention), in the three backends of a convolutional module.

A per-input matrix (StencilKind.matrix: attention's weights A(x), P×P) is computed by
the point phase from the (x, x̃) array and kept in the input's point row (a full slot of
``pt``, row-major), so the pair phase reads it at x and x' from pt1 and pt2 as it reads
the per-input variances. The mix stencil reads two such matrices besides its source:

    out[i, j] = scale · Σ_kl A_p[i, k] · S[k, l] · A_q[j, l]       (A_p S A_qᵀ)

of which a diagonal output keeps i = j. Both are O(P³) per pair: row i of A_p·S is
summed once (P entries of the stencils' buffer) and dotted with the rows of A_q. The
numba kernels and the numpy reference below are pasted only into modules that use them
(ntkc.codegen.emit_spatial), so other modules' text does not change.
"""

from __future__ import annotations

from ..semantics.structure import FULL
from .spatial_plan import Slot

# The mechanism of a weights stencil: its op name's suffix, and its code in _attn_weights.
MECHANISM = {"attn_softmax": 0, "attn_identity": 1, "attn_relu": 2, "attn_abs": 3}
MIX = "attn_mix"
OPS = frozenset(MECHANISM) | {MIX}

# --- numba: pasted into the modules that use them --------------------------------------
NUMBA_SOURCE = '''

@numba.njit(cache=True, error_model="numpy")
def _attn_weights(src, so, dst, do, p, mech, scale):
    """Attention weights of one input: row i of dst[do:] is m(scale·src[so:] row i), m
    a softmax over the row (mech 0, shifted by its largest logit: no overflow),
    the identity (1), relu (2) or abs (3)."""
    for i in range(p):
        row = src[so + i * p:so + i * p + p]
        out = dst[do + i * p:do + i * p + p]
        if mech == 0:
            top = scale * row[0]
            for j in range(1, p):
                top = max(top, scale * row[j])
            total = 0.0
            for j in range(p):
                out[j] = np.exp(scale * row[j] - top)
                total += out[j]
            for j in range(p):
                out[j] /= total
        elif mech == 1:
            for j in range(p):
                out[j] = scale * row[j]
        elif mech == 2:
            for j in range(p):
                out[j] = max(scale * row[j], 0.0)
        else:
            for j in range(p):
                out[j] = abs(scale * row[j])


@numba.njit(cache=True, error_model="numpy")
def _mix_row(src, so, a1, o1, tmp, p, i):
    """tmp[:p] = row i of A1·S (A1 at a1[o1:], S at src[so:], both P×P row-major)."""
    t = tmp[:p]
    for l in range(p):
        t[l] = 0.0
    for k in range(p):
        a = a1[o1 + i * p + k]
        srow = src[so + k * p:so + k * p + p]
        for l in range(p):
            t[l] += a * srow[l]
    return t


@numba.njit(cache=True, error_model="numpy")
def _mix_full(src, so, a1, o1, a2, o2, dst, do, tmp, p, scale):
    """dst[do:] = scale·A1·S·A2ᵀ, P×P row-major."""
    for i in range(p):
        t = _mix_row(src, so, a1, o1, tmp, p, i)
        for j in range(p):
            arow = a2[o2 + j * p:o2 + j * p + p]
            acc = 0.0
            for l in range(p):
                acc += t[l] * arow[l]
            dst[do + i * p + j] = acc * scale


@numba.njit(cache=True, error_model="numpy")
def _mix_diag(src, so, a1, o1, a2, o2, dst, do, tmp, p, scale):
    """dst[do + i] = scale·(A1·S·A2ᵀ)[i, i]."""
    for i in range(p):
        t = _mix_row(src, so, a1, o1, tmp, p, i)
        arow = a2[o2 + i * p:o2 + i * p + p]
        acc = 0.0
        for l in range(p):
            acc += t[l] * arow[l]
        dst[do + i] = acc * scale
'''

NUMPY_SOURCE = '''

def _attn_weights_np(src, mech, scale):
    # (n, P, P) logits → weights, row by row (softmax shifted by the row's largest logit)
    z = scale * src
    if mech == "softmax":
        e = numpy.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return {"identity": z, "relu": numpy.maximum(z, 0.0), "abs": numpy.abs(z)}[mech]


def _mix_np(src, a1, a2, full):
    # A1·S·A2ᵀ per batch entry (its diagonal unless full); a1, a2 broadcast to src's shape
    t = numpy.matmul(numpy.broadcast_to(a1, src.shape), src)
    a2 = numpy.broadcast_to(a2, src.shape)
    if full:
        return numpy.matmul(t, numpy.swapaxes(a2, -1, -2))
    return numpy.einsum("nil,nil->ni", t, a2)
'''


def uses(rec) -> bool:
    """Whether a recursion has stencils of this module (then its text is pasted)."""
    return any(a.stencil is not None and a.stencil.op in OPS for a in rec.point + rec.pair)


def buffer_size(rec) -> int:
    """Entries of the stencils' buffer a mix needs (a row of A_p·S), or 0."""
    return max([0] + [a.spatial[0] for a in rec.point + rec.pair
                      if a.stencil is not None and a.stencil.op == MIX])


# --- numba ----------------------------------------------------------------------------
def nb_matrix_stencil(op: str, src: str, src_slot: Slot, out: str, out_slot: Slot,
                      operands: list[tuple[str, Slot]], scale: str, indent: str) -> str:
    """The call computing a weights or mix stencil; operands: (array, slot) of A_p, A_q."""
    so, do, p = f"_i64({src_slot.offset})", f"_i64({out_slot.offset})", f"_i64({src_slot.rows})"
    if op in MECHANISM:
        return f"{indent}_attn_weights({src}, {so}, {out}, {do}, {p}, _i64({MECHANISM[op]}), {scale})"
    (a1, s1), (a2, s2) = operands
    fn = "_mix_full" if out_slot.storage == FULL else "_mix_diag"
    return (f"{indent}{fn}({src}, {so}, {a1}, _i64({s1.offset}), {a2}, _i64({s2.offset}), "
            f"{out}, {do}, tmp, {p}, {scale})")


# --- numpy ----------------------------------------------------------------------------
def np_operand(array: str, slot: Slot, row: str) -> str:
    """A matrix kept in a point row: P1[a, ...] (one input: P×P) or P2[:, ...] (n, P, P)."""
    p = slot.rows
    at = f"{array}[{row}, {slot.offset}:{slot.offset + p * p}]"
    return f"{at}.reshape({p}, {p})" if row != ":" else f"{at}.reshape(-1, {p}, {p})"


def np_matrix_stencil(op: str, src: str, out_slot: Slot, operands: list[str],
                      scale: str) -> str:
    if op in MECHANISM:
        return f"_attn_weights_np({src}, {op[len('attn_'):]!r}, {scale})"
    a1, a2 = operands
    return f"_mix_np({src}, {a1}, {a2}, {out_slot.storage == FULL}) * {scale}"


def np_keep(name: str, slot: Slot) -> str:
    """The statement that stores a weights matrix (a local (n, P, P) array) in pt."""
    return f"pt[:, {slot.offset}:{slot.offset + slot.rows * slot.cols}] = " \
           f"{name}.reshape({name}.shape[0], -1)"


# --- cuda (the pair phase) --------------------------------------------------------------
def cuda_mix(src_slot: Slot, out_slot: Slot, operands: list[tuple[str, Slot]], at: int,
             scale: str, entries, ind: str) -> list[str]:
    """The block's threads first write A_p·S into the scratch row at ``at`` (P² entries
    past the plan's slots), then the output entries dot its rows with A_q's.
    entries(n, ind): the line of a loop of the block's threads over n entries (_e)."""
    (a1, s1), (a2, s2) = operands
    p = src_slot.rows
    full = out_slot.storage == FULL
    n = p * p if full else p
    ij = [f"{ind}    i = _e // {p}", f"{ind}    j = _e - i * {p}"] if full else \
        [f"{ind}    i = _e", f"{ind}    j = _e"]
    return [entries(p * p, ind), f"{ind}    i = _e // {p}", f"{ind}    j = _e - i * {p}",
            f"{ind}    _acc = 0.0", f"{ind}    for _k in range({p}):",
            (f"{ind}        _acc += {a1}[{s1.offset} + i * {p} + _k] * "
             f"s[{src_slot.offset} + _k * {p} + j]"),
            f"{ind}    s[{at} + _e] = _acc", f"{ind}cuda.syncthreads()",
            entries(n, ind), *ij, f"{ind}    _acc = 0.0", f"{ind}    for _k in range({p}):",
            f"{ind}        _acc += s[{at} + i * {p} + _k] * {a2}[{s2.offset} + j * {p} + _k]",
            f"{ind}    s[{out_slot.offset} + _e] = _acc * {scale}"]
