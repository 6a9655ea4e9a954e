"""Covariance-structure analysis: which position pairs each covariance needs.

A pair quantity of spatial lines is an array over (position of x, position of
x'). Reading it out by flatten needs only its diagonal (same position: O(P)
per pair); pools and global pools read every pair of positions (O(P²)). Walking
the recursion backwards from the outputs, each array gets the structure its
readers need: conv keeps the structure (its taps shift both sides by the same
offset), pointwise rules and linear combinations keep it entry by entry, pools
need the full array below them; a diagonal stencil (Stencil.diagonal: a locally
connected layer's) is a diagonal whatever reads it. Per-input variances are always
diagonals; the (x, x̃) self-covariances that pools read at one input, and per-input matrices
(StencilKind.matrix: attention's weights), are always full.
"""

from __future__ import annotations

import sympy

from .derive import Assignment, Recursion
from .rules import STENCILS, Structure

DIAG, FULL, SCALAR = Structure.DIAG, Structure.FULL, Structure.SCALAR


def points(a: Assignment) -> tuple[int, int]:
    return (a.quantity.p, a.quantity.q)


def analyse(rec: Recursion) -> dict[sympy.Symbol, str]:
    """The structure of every assignment's array: diag, full or scalar."""
    out: dict[sympy.Symbol, str] = {}
    for a in rec.point:
        matrix = a.stencil is not None and STENCILS[a.stencil.op].matrix
        out[a.symbol] = SCALAR if a.spatial is None else (
            FULL if points(a) == (1, 3) or matrix else DIAG)
    need: dict[sympy.Symbol, str] = {}
    for a in reversed(rec.pair):
        if a.spatial is None:
            out[a.symbol] = SCALAR
            mine = SCALAR
        elif a.stencil is not None and a.stencil.diagonal:
            mine = out[a.symbol] = DIAG  # one value per position, read at the row (derive)
        else:
            mine = need.get(a.symbol, DIAG)
            out[a.symbol] = mine
        if a.stencil is not None:
            src = a.stencil.source
            if src is None:
                continue
            wants = STENCILS[a.stencil.op].reads(mine)
            deps = {src}
        else:
            wants = mine
            deps = a.expr.free_symbols
        for s in deps:
            if wants != SCALAR and (need.get(s) != FULL):
                need[s] = wants
    return out


def line_structure(rec: Recursion, structure: dict[sympy.Symbol, str]) -> dict[str, str]:
    """Per program line: the structure of its per-pair covariances."""
    lines: dict[str, str] = {}
    for a in rec.pair:
        s = structure[a.symbol]
        if lines.get(a.line) != FULL:
            lines[a.line] = s
    return lines


def pair_work(rec: Recursion, structure: dict[sympy.Symbol, str]) -> int:
    """Array entries computed per pair of inputs (a measure of the P vs P² work)."""
    total = 0
    for a in rec.pair:
        if a.spatial is not None:
            rows, cols = a.spatial
            total += rows * cols if structure[a.symbol] == FULL else rows
    return total
