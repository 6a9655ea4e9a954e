"""The plan of a convolutional module's phase: stages, fused groups, and scratch slots.

A phase (the per-input point phase, the per-pair phase) is a sequence of stages:
local runs (consecutive pointwise formulas of one loop shape, fused into one loop),
convs through one window (K and Θ of a line), and single stencils (input, pool,
flatten, global pool). A conv of full arrays followed by the local run that reads
it forms one group, computed one output image row at a time: the conv writes the
rows and the local formulas consume them while they are in cache (ntkc.codegen.
stencil_kernels).

Scratch slots are reused once their last reader has run: a deep network keeps a few
full arrays live, not all of them (a 21-layer 32×32 net would otherwise hold 8 MB ×
4 arrays × 21 layers per pair). A slot is freed only after the whole group that last
reads it, since a group's rows interleave its stages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from itertools import groupby

from ..semantics.derive import Assignment
from ..semantics.rules import STENCILS
from ..semantics.structure import FULL, SCALAR


class StageKind(enum.Enum):
    LOCAL = "local"  # pointwise formulas, one loop over the entries
    CONV = "conv"  # 𝒜 of one or more arrays through one window
    STENCIL = "stencil"  # input, pool, flatten or global pool of one array


@dataclass
class Stage:
    kind: StageKind
    run: list[Assignment]


@dataclass
class Group:
    """Stages computed together; ``rows``: computed one output image row at a time
    (a full conv, and the local run fused with it), else None."""

    stages: list[Stage]
    rows: int | None = None
    reads: set = field(default_factory=set)
    block: int = 0  # entries of one block of a conv's output rows (fused groups), else 0


@dataclass(frozen=True)
class Slot:
    array: str  # "pt" | "w" | "s" | "" (a local scalar)
    offset: int
    rows: int
    cols: int
    storage: str  # DIAG | FULL | SCALAR

    def size(self) -> int:
        return {FULL: self.rows * self.cols, SCALAR: 1}.get(self.storage, self.rows)


def schedule(assignments, program, same_input: dict, structure: dict) -> list:
    """The assignments reordered by layer, each layer's stencils before its local
    formulas, so K and Θ of a line share one loop (and one arccos). The diagonal and
    scalar work comes before the full arrays that do not feed it (a tier: the full
    arrays between two pools), so a full conv is next to every full formula of its
    layer and the next (one group, ``groups``). Falls back to the derivation order if
    that would break a dependency. same_input maps the copies of per-input symbols
    (at x̃) to the symbols they copy."""
    order = {name: k for k, name in enumerate(program.nodes)}

    def deps(a) -> set:
        if a.stencil:  # its source, and the per-input matrices it reads (at x̃: at x)
            found = {a.stencil.source, *a.stencil.operands}
        else:
            found = a.expr.free_symbols | (a.diag.free_symbols if a.diag is not None else set())
        out = set()
        for d in found:
            while d in same_input:
                d = same_input[d]
            out.add(d)
        return out

    rank: dict = {}
    tier: dict = {}  # how many full → not-full steps lead to it
    for a in assignments:
        rank[a.symbol] = max([order[a.line]] + [rank[d] for d in deps(a) if d in rank])
        full = structure[a.symbol] == FULL
        tier[a.symbol] = max([0] + [tier[d] + (structure[d] == FULL and not full)
                                    for d in deps(a) if d in tier])
    out = sorted(assignments, key=lambda a: (tier[a.symbol], structure[a.symbol] == FULL,
                                             rank[a.symbol], a.stencil is None))
    seen: set = set()
    for a in out:
        if any(d in rank and d not in seen for d in deps(a)):
            return list(assignments)
        seen.add(a.symbol)
    return out


def stages(ordered: list[Assignment], structure: dict) -> list[Stage]:
    """Runs of consecutive local assignments of one loop shape, convs through one window
    with one output structure, and single stencils."""
    def key(a):
        st = a.stencil
        if st is not None and st.op == "conv":
            return (StageKind.CONV, id(st.window), structure[a.symbol])
        if st is not None:
            return (StageKind.STENCIL, id(a))
        return (StageKind.LOCAL, structure[a.symbol], a.spatial)
    return [Stage(k[0], list(run)) for k, run in groupby(ordered, key)]


def block_width(w) -> tuple[int, int]:
    """(wout, output columns per block) of a full conv: the block's source rows of one
    array (fh image rows, its columns only) within 2¹⁶ entries (512 kB float64), so
    those of K and Θ, the buffer and the output rows stay in a core's L2."""
    hin, win, wout, fh, fw, sw = (w.geometry[k] for k in (0, 1, 3, 4, 5, 7))
    fit = max(1, ((1 << 16) // (fh * hin * win) - fw + 1) // sw)
    blocks = -(-wout // min(wout, fit))
    return wout, -(-wout // blocks)


def groups(staged: list[Stage], structure: dict) -> list[Group]:
    """The stages in groups: a full conv with the local run after it when that run has
    the conv's shape (it reads the conv's rows entry by entry), computed in blocks of
    ``block_width`` output positions, else one stage each."""
    out: list[Group] = []
    k = 0
    while k < len(staged):
        st = staged[k]
        first = st.run[0]
        if st.kind is StageKind.CONV and structure[first.symbol] == FULL:
            rows = first.stencil.window.geometry[2]  # hout
            nxt = staged[k + 1] if k + 1 < len(staged) else None
            if nxt is not None and nxt.kind is StageKind.LOCAL and \
                    structure[nxt.run[0].symbol] == FULL and nxt.run[0].spatial == first.spatial:
                block = block_width(first.stencil.window)[1] * first.spatial[1]
                out.append(Group([st, nxt], rows, block=block))
                k += 2
                continue
            out.append(Group([st], rows))
        else:
            out.append(Group([st]))
        k += 1
    return out


def allocate(plan: list[Group], structure: dict, phase: str, keep: set,
             reuse: str, read: set, blocks: bool = False) -> tuple[dict, dict]:
    """Slots of a phase's assignments, in plan order (each group's ``reads`` filled in
    by the caller). ``reuse``: the array whose slots are recycled after their last
    reader; symbols in ``keep`` are never freed (read by a later phase or the output).
    A pointwise result in ``reuse`` that nothing ``read``s gets no slot: its formula is
    not stored (K of a conv line that only its own Θ formula reads, in the same loop).
    ``blocks``: a conv output that only the formulas fused with it read lives in the
    block buffer "rb", one block of rows at a time (it never reaches memory: half the
    traffic of a layer). Returns the slots and the entries used per array."""
    last: dict = {}
    for g, group in enumerate(plan):
        for sym in group.reads:
            last[sym] = g
    slots: dict = {}
    used = {"pt": 0, "w": 0, "s": 0, "rb": 0}
    free: dict[int, list[int]] = {}  # size → offsets of freed slots
    for g, group in enumerate(plan):
        in_block = 0
        for stage in group.stages:
            for a in stage.run:
                if blocks and group.block and stage.kind is StageKind.CONV and \
                        last.get(a.symbol) == g and a.symbol not in keep:
                    rows, cols = a.spatial
                    slots[a.symbol] = Slot("rb", in_block * group.block, rows, cols, FULL)
                    in_block += 1
                    used["rb"] = max(used["rb"], in_block * group.block)
                    continue
                storage = structure[a.symbol]
                rows, cols = a.spatial or (1, 1)
                if phase == "point":  # a per-input matrix stays in pt: the pair phase reads it
                    matrix = a.stencil is not None and STENCILS[a.stencil.op].matrix
                    array = "w" if storage == FULL and not matrix else "pt"
                else:
                    array = "s" if storage != SCALAR else ""
                if array == reuse and a.stencil is None and a.symbol not in read:
                    continue
                size = Slot(array, 0, rows, cols, storage).size()
                if array == reuse and free.get(size):
                    offset = free[size].pop()
                else:
                    offset = used.get(array, 0)
                    if array:
                        used[array] += size
                slots[a.symbol] = Slot(array, offset, rows, cols, storage)
        done = [slots[sym] for sym, g_last in last.items() if g_last == g and sym not in keep
                and sym in slots and slots[sym].array == reuse]
        for slot in sorted(done, key=lambda sl: sl.offset, reverse=True):  # reproducible text
            free.setdefault(slot.size(), []).append(slot.offset)
    return slots, used
