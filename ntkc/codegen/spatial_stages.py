"""Storage and stencil loops of the spatial (convolutional) kernels.

Every spatial quantity lives in a flat array at a fixed offset: the per-input
variances (diagonals) and per-input scalars in the input's point row ``pt``,
the (x, x̃) self-covariances that pools read in the per-input scratch ``w``,
the per-pair arrays in the per-pair scratch ``s``. A full array is stored
row-major (i·cols + j), a diagonal as one entry per position. This module
prints, for one backend, the element references and the stencil loops (the
input's channel sums, conv 𝒜, pools, flatten, global pools).
"""

from __future__ import annotations

from ..semantics.derive import Assignment
from ..semantics.structure import DIAG, FULL, SCALAR
from .spatial_plan import Slot


# -- numba: scalar loops -------------------------------------------------------------------
def nb_elem(slot: Slot, array: str, i: str, j: str, offset: str | None = None) -> str:
    """Element (i, j) of a stored array (j ignored for a diagonal, both for a scalar);
    ``offset``: a name for the slot's offset (an argument of an outlined loop)."""
    at = slot.offset if offset is None else offset
    if slot.storage == SCALAR:
        return f"{array}[{at}]" if array else ""
    if slot.storage == DIAG:
        return f"{array}[{at} + {i}]"
    return f"{array}[{at} + {i} * {slot.cols} + {j}]"


def nb_stencil(a: Assignment, out: str, src: str | None, out_slot: Slot,
               src_slot: Slot | None, geometry: str, x: tuple[str, str], scale: str,
               indent: str) -> list[str]:
    """The code computing one stencil assignment but a conv (ntkc.codegen.emit_spatial
    prints those). out/src: references to the arrays (a local variable name for a
    scalar output); geometry: the window's geometry constant; x: the two inputs'
    (P, C) arrays."""
    op = a.stencil.op
    full = out_slot.storage == FULL
    ind = indent
    if op == "input":
        fn = "_input_full" if full else "_input_diag"
        return [f"{ind}{fn}({x[0]}, {x[1]}, {out}, _i64({out_slot.offset}), {scale})"]
    if op == "flatten":  # the mean of a diagonal, stored or read off a full array
        step = src_slot.cols + 1 if src_slot.storage == FULL else 1
        return [(f"{ind}{out} = _sum({src}, _i64({src_slot.offset}), "
                f"_i64({src_slot.rows}), _i64({step})) * {scale}")]
    if op == "global":
        return [(f"{ind}{out} = _sum({src}, _i64({src_slot.offset}), "
                f"_i64({src_slot.rows * src_slot.cols}), _i64(1)) * {scale}")]
    # pool: every pair of taps of the two windows (its source is always full)
    if full:
        return [(f"{ind}_pool_full({src}, _i64({src_slot.offset}), {out}, "
                 f"_i64({out_slot.offset}), tmp, {geometry}, {scale})")]
    return [(f"{ind}_pool_diag({src}, _i64({src_slot.offset}), {out}, "
             f"_i64({out_slot.offset}), {geometry}, {scale})")]


def nb_conv(src: str, src_slot: Slot, out: str, out_slot: Slot, geometry: str,
            scale: str, indent: str, rows: str = "", out_at: str | None = None) -> str:
    """A call of the compiled 𝒜: of a full array, the block of output rows ``rows``
    ("oy, xlo, xhi", inside the caller's block loops); of a diagonal (stored, or read off
    a full source). out_at: the output's offset, if not its slot's (the block buffer)."""
    so = f"_i64({src_slot.offset})"
    do = f"_i64({out_slot.offset if out_at is None else out_at})"
    if out_slot.storage == FULL:
        return (f"{indent}_conv_full_rows({src}, {so}, {out}, {do}, tmp, {geometry}, {rows}, "
                f"{scale})")
    step = src_slot.cols + 1 if src_slot.storage == FULL else 1
    return (f"{indent}_conv_diag({src}, {so}, _i64({step}), {out}, {do}, tmp, {geometry}, "
            f"{scale})")


# -- numba: outlined loops ----------------------------------------------------------------
class OutlinedArgs:
    """The offset arguments of an outlined loop and the array views it reads through.

    An element is read through a view of its row (full arrays, per i) or of the diagonal
    (before the loops), indexed by counters that start at 0 (_k, j): numba then knows the
    index is non-negative and drops its negative-index wraparound, which otherwise turns
    every access into a gather and keeps LLVM from vectorising the loop (12× on the conv
    rows, 4× on a diagonal relu loop, measured)."""

    def __init__(self, first: str) -> None:
        self.first = first  # the loop's first row: the block buffer holds rows from it on
        self.refs: dict[tuple, str] = {}
        self.names: list[str] = []
        self.offsets: list[str] = []
        self.before: list[str] = []
        self.per_row: list[str] = []

    def ref(self, array: str, slot: Slot, i: str, j: str, loop: str) -> str:
        key = (array, slot.offset, slot.storage, i, j)
        if key in self.refs:
            return self.refs[key]
        k = len(self.names)
        name, view = f"_o{k}", f"_v{k}"
        self.names.append(name)
        if array == "rb":  # row i of the block at rb[offset + (i - first)·cols]
            self.offsets.append(f"{slot.offset} - ({self.first}) * {slot.cols}")
        else:
            self.offsets.append(str(slot.offset))
        if slot.storage == DIAG and i == "i":  # the loop's rows, from _i0: index _k ≥ 0
            self.before.append(f"    {view} = {array}[{name} + _i0:{name} + _i1]")
            ref = f"{view}[_k]"
        elif slot.storage == DIAG:  # indexed by the column j
            self.before.append(f"    {view} = {array}[{name}:{name} + {slot.rows}]")
            ref = f"{view}[{i}]"
        elif slot.storage == FULL and (i, j) == ("i", "j") and loop == FULL:
            row = f"{name} + i * {slot.cols}"
            self.per_row.append(f"        {view} = {array}[{row}:{row} + {slot.cols}]")
            ref = f"{view}[j]"
        else:  # a scalar, or the diagonal of a full array
            ref = nb_elem(slot, array, i, j, name)
        self.refs[key] = ref
        return ref


# -- numpy: whole arrays with a leading batch axis -------------------------------------------
def np_value(slot: Slot, var: str, view: str) -> str:
    """A stored array seen as a diagonal (n, P), a full (n, P, P) array or a scalar (n,)."""
    if view == DIAG and slot.storage == FULL:
        return f"numpy.einsum('nii->ni', {var})"
    if view == FULL and slot.storage == DIAG:  # a diagonal stencil: read at the row
        return f"{var}[:, :, None]"
    return var


def np_stencil(a: Assignment, src: str | None, out_slot: Slot, taps: str,
               x: tuple[str, str], scale: str) -> str:
    """A numpy expression for one stencil assignment (the batch axis first)."""
    op = a.stencil.op
    full = out_slot.storage == FULL
    if op == "input":
        xa, xb = x
        return (f"numpy.einsum('{'nic,njc->nij' if full else 'nic,nic->ni'}', {xa}, {xb}) "
                f"* {scale}")
    if op == "flatten":
        return f"{src}.sum(-1) * {scale}"
    if op == "global":
        return f"{src}.sum((-2, -1)) * {scale}"
    return f"_{op}_np({src}, {taps}, {full}) * {scale}"


# The numpy stencils of the reference backend: fixed text of every spatial module.
NUMPY_STENCILS = '''
def _padded(src):
    # One extra zero position at the end: tap -1 (padding) reads it.
    if src.ndim == 2:
        out = numpy.zeros((src.shape[0], src.shape[1] + 1))
        out[:, :-1] = src
        return out
    out = numpy.zeros((src.shape[0], src.shape[1] + 1, src.shape[2] + 1))
    out[:, :-1, :-1] = src
    return out


def _conv_np(src, taps, full):
    p = _padded(src)
    if not full:  # src is a diagonal (n, P)
        return sum(p[:, taps[:, t]] for t in range(taps.shape[1]))
    return sum(p[:, taps[:, t][:, None], taps[:, t][None, :]] for t in range(taps.shape[1]))


def _pool_np(src, taps, full):
    p = _padded(src)
    f = taps.shape[1]
    if full:
        return sum(p[:, taps[:, s][:, None], taps[:, t][None, :]]
                   for s in range(f) for t in range(f))
    return sum(p[:, taps[:, s], taps[:, t]] for s in range(f) for t in range(f))
'''
