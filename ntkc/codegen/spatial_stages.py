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

from dataclasses import dataclass

from ..derive import Assignment
from ..structure import DIAG, FULL, SCALAR


@dataclass(frozen=True)
class Slot:
    array: str  # "pt" | "w" | "s" | "" (a local scalar)
    offset: int
    rows: int
    cols: int
    storage: str  # DIAG | FULL | SCALAR

    def size(self) -> int:
        return {DIAG: self.rows, FULL: self.rows * self.cols, SCALAR: 1}[self.storage]


def layout(assignments: list[Assignment], structure: dict, phase: str,
           slack: int = 0) -> tuple[dict, dict]:
    """Slots of the assignments of one phase ("point" or "pair"). Each array starts
    ``slack`` entries in: the conv loops read (masked) up to that far outside a
    source (ntkc.codegen.conv_loops); the caller leaves as much at the end."""
    slots, used = {}, {"pt": slack, "w": slack, "s": slack}
    for a in assignments:
        storage = structure[a.symbol]
        rows, cols = a.spatial or (1, 1)
        if phase == "point":
            array = "w" if storage == FULL else "pt"
        else:
            array = "s" if storage != SCALAR else ""
        slot = Slot(array, used.get(array, 0), rows, cols, storage)
        if array:
            used[array] += slot.size()
        slots[a.symbol] = slot
    return slots, used


# -- numba: scalar loops -------------------------------------------------------------------
def nb_elem(slot: Slot, array: str, i: str, j: str) -> str:
    """Element (i, j) of a stored array (j ignored for a diagonal, both for a scalar)."""
    if slot.storage == SCALAR:
        return f"{array}[{slot.offset}]" if array else ""
    if slot.storage == DIAG:
        return f"{array}[{slot.offset} + {i}]"
    return f"{array}[{slot.offset} + {i} * {slot.cols} + {j}]"


def nb_stencil(a: Assignment, out: str, src: str | None, out_slot: Slot,
               src_slot: Slot | None, taps: str, x: tuple[str, str], scale: str,
               indent: str) -> list[str]:
    """The loop computing one stencil assignment. out/src: references to the arrays
    (a local variable name for a scalar output); x: the two inputs' (P, C) arrays."""
    op = a.stencil.op
    full = out_slot.storage == FULL
    ind = indent
    if op == "input":
        xa, xb = x
        if full:
            return [f"{ind}for i in range({out_slot.rows}):",
                    f"{ind}    for j in range({out_slot.cols}):",
                    f"{ind}        acc = 0.0",
                    f"{ind}        for c in range({xa}.shape[1]):",
                    f"{ind}            acc += {xa}[i, c] * {xb}[j, c]",
                    f"{ind}        {nb_elem(out_slot, out, 'i', 'j')} = acc * {scale}"]
        return [f"{ind}for i in range({out_slot.rows}):",
                f"{ind}    acc = 0.0",
                f"{ind}    for c in range({xa}.shape[1]):",
                f"{ind}        acc += {xa}[i, c] * {xb}[i, c]",
                f"{ind}    {nb_elem(out_slot, out, 'i', 'i')} = acc * {scale}"]
    if op == "flatten":
        return [f"{ind}acc = 0.0",
                f"{ind}for i in range({src_slot.rows}):",
                f"{ind}    acc += {nb_elem(src_slot, src, 'i', 'i')}",
                f"{ind}{out} = acc * {scale}"]
    if op == "global":
        return [f"{ind}acc = 0.0",
                f"{ind}for i in range({src_slot.rows}):",
                f"{ind}    for j in range({src_slot.cols}):",
                f"{ind}        acc += {nb_elem(src_slot, src, 'i', 'j')}",
                f"{ind}{out} = acc * {scale}"]
    # pool: every pair of taps of the two windows.
    if full:
        head = [f"{ind}for o1 in range({out_slot.rows}):",
                f"{ind}    for o2 in range({out_slot.cols}):"]
        o1, o2, store = "o1", "o2", nb_elem(out_slot, out, "o1", "o2")
    else:
        head = [f"{ind}for o1 in range({out_slot.rows}):", f"{ind}    if True:"]
        o1, o2, store = "o1", "o1", nb_elem(out_slot, out, "o1", "o1")
    body = [f"{ind}        acc = 0.0",
            f"{ind}        for t1 in range({taps}.shape[1]):",
            f"{ind}            ti = {taps}[{o1}, t1]",
            f"{ind}            if ti >= 0:",
            f"{ind}                for t2 in range({taps}.shape[1]):",
            f"{ind}                    tj = {taps}[{o2}, t2]",
            f"{ind}                    if tj >= 0:",
            f"{ind}                        acc += {nb_elem(src_slot, src, 'ti', 'tj')}"]
    return head + body + [f"{ind}        {store} = acc * {scale}"]


# -- numpy: whole arrays with a leading batch axis -------------------------------------------
def np_value(slot: Slot, var: str, view: str) -> str:
    """A stored array seen as a diagonal (n, P), a full (n, P, P) array or a scalar (n,)."""
    if view == DIAG and slot.storage == FULL:
        return f"numpy.einsum('nii->ni', {var})"
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
