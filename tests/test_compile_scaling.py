"""Compile work grows linearly with depth (issue 10): counted, not timed.

A dense + relu layer reads K and Θ of the layer below two or more times, so a recursion
substituted into the outputs doubles with every layer. Its printed code stays small
(cse finds the repeats), which hid it: every walk over the trees (hoisting, cse, atoms,
free_symbols) is a walk over the tree, not over the DAG. relu MLPs took 59 s to compile
at 10 layers and more than 200 s at 12. So the measure here is the tree size of what the
writer hands to those walks, counted on the DAG so this test stays cheap either way.

numba's first call is the other half of the time to the first kernel: numba's parfor
passes are superlinear in a parallel loop's body, so those bodies must not grow with
depth (the formulas live in serial functions the loops call).
"""

from __future__ import annotations

import re

import sympy

from ntkc.bench.dense import mlp_spec
from ntkc.codegen.emit import ModuleWriter
from ntkc.frontend import program_from_text
from ntkc.semantics.derive import derive


def _writer(depth: int, act: str) -> ModuleWriter:
    return ModuleWriter(derive(program_from_text(mlp_spec(depth, act), "m.ntk")), target="cpu")


def tree_size(exprs) -> int:
    """Nodes of the expressions as trees (a shared subtree counts at each use)."""
    memo: dict[sympy.Basic, int] = {}

    def size(e) -> int:
        if e not in memo:
            memo[e] = 1 + sum(size(a) for a in e.args)
        return memo[e]

    return sum(size(sympy.sympify(e)) for e in exprs)


def _work(w: ModuleWriter) -> int:
    # the substituted writer (before issue 10) had no defs: 442,908 nodes at 8 relu
    # layers against 5,456 at 4; statement by statement it is linear
    defs = getattr(w, "point_defs", []) + getattr(w, "pair_defs", [])
    return tree_size([e for _, e in defs] + w.point_outputs + [w.nngp, w.ntk])


def _parallel_bodies(source: str) -> int:
    """Lines of the functions numba compiles with parallel=True."""
    blocks = re.findall(r"@numba\.njit\(parallel=True[^\n]*\n(def .*?)(?=\n\S|\Z)", source,
                        re.DOTALL)
    return sum(len(b.splitlines()) for b in blocks)


def test_codegen_work_is_linear_in_depth():
    for act in ("relu", "erf"):
        w10, w20 = _writer(10, act), _writer(20, act)
        a, b = _work(w10), _work(w20)
        # linear: 20 layers cost twice 10 (plus the fixed input and readout lines)
        assert b < 2.2 * a, (act, a, b)


def test_parallel_loops_do_not_grow_with_depth():
    for act in ("relu", "erf"):
        sizes = {_parallel_bodies(_writer(k, act).module("m.ntk", "", {})) for k in (3, 12)}
        assert len(sizes) == 1, (act, sizes)


def test_a_hundred_layers_compile():
    # 202 lines along one path: past Python's default recursion limit in the derivation
    w10, w100 = _writer(10, "relu"), _writer(100, "relu")
    assert _work(w100) < 11 * _work(w10)
    source = w100.module("m.ntk", "", {})
    assert "K_201_y" in source and len(source) < 600_000
