"""Formulas a person can read: the recursion per spec line, as text, LaTeX or sympy."""

from __future__ import annotations

import math
import re

import sympy

from .semantics.derive import Recursion
from .semantics.structure import analyse, line_structure, pair_work

EXPAND_LIMIT = 600  # operations; deeper nets print the recursion only


def _latex_name(name: str) -> str:
    m = re.fullmatch(r"(K|Θ)\[(.+?)\]\((x'?),(x'?)\)", name)
    if m:
        kind = r"\Theta" if m.group(1) == "Θ" else "K"
        lines = m.group(2).replace("_", r"\_")
        return rf"{kind}_{{\mathrm{{{lines}}}}}({m.group(3)},{m.group(4)})"
    return {"x·x'": r"x \cdot x'", "x·x": r"x \cdot x", "x'·x'": r"x' \cdot x'"}.get(
        name, name.replace("_", r"\_"))


def _render(expr: sympy.Expr, style: str) -> str:
    if style == "latex":
        names = {s: _latex_name(s.name) for s in expr.free_symbols}
        return sympy.latex(expr, symbol_names=names)
    if style == "sympy":
        return sympy.srepr(expr)
    return sympy.sstr(expr)


def _render_eq(lhs: sympy.Symbol, rhs: sympy.Expr, style: str) -> str:
    if style == "latex":
        return f"{_latex_name(lhs.name)} = {_render(rhs, style)}"
    return f"{lhs.name} = {_render(rhs, style)}"


def expanded(rec: Recursion, which: str) -> sympy.Expr | None:
    """The output kernel as one formula in x·x', x·x, x'·x' (None when too deep)."""
    if rec.spatial:
        return None  # stencils sum over positions: no closed formula in dot products
    full: dict = {}
    for a in rec.point:
        full[a.symbol] = a.expr.xreplace(full)
        full[rec.twins[a.symbol]] = full[a.symbol].xreplace(rec.twins)
    for a in rec.pair:
        full[a.symbol] = a.expr.xreplace(full)
    expr = rec.outputs[which].xreplace(full)
    if sympy.count_ops(expr) > EXPAND_LIMIT:
        return None
    return expr


def structure_report(rec: Recursion) -> list[str]:
    """Per spatial line: which position pairs its per-pair covariances need."""
    structure = analyse(rec)
    lines = line_structure(rec, structure)
    src = rec.program.source.splitlines()
    out = [("covariance structure per pair of inputs (diag: same-position pairs, O(P); "
            "full: all position pairs, O(P²)):")]
    for node in rec.program.nodes.values():
        if node.name not in lines or not node.shape.spatial:
            continue
        p = math.prod(node.shape.spatial)
        entries = p if lines[node.name] == "diag" else p * p
        out.append(f"    {node.name:<10} {lines[node.name]:<5} {list(node.shape.spatial)} "
                   f"{entries:>8} entries   line {node.pos.line}: "
                   f"{src[node.pos.line - 1].strip()}")
    out.append(f"    array entries per pair, all lines: {pair_work(rec, structure)}")
    return out


def show(rec: Recursion, style: str = "text", expand: bool = False,
         structure: bool = False) -> str:
    prog = rec.program
    src = prog.source.splitlines()
    shape = prog.input_shape
    dims = ", ".join("*" if s is None else str(s) for s in (*shape.spatial, shape.channels))
    out = [(f"network {prog.network} (parameterization {prog.parameterization}), "
            f"input {prog.input} : {shape.kind}[{dims}]")]
    if prog.params:
        out.append("params: " + ", ".join(f"{p.name} = {p.default:g}"
                                          for p in prog.params.values()))
    if rec.spatial:
        out.append(f"input: K[{prog.input}](x,x')[i,j] = Σ_c x[i,c]·x'[j,c]/{shape.channels} "
                   f"for positions i, j,  Θ[{prog.input}] = 0;  each array below is one "
                   "entry (i, j), 𝒜 the mean over a conv window")
    else:
        out.append(f"input: K[{prog.input}](x,x') = x·x'/{_dim(rec)},  Θ[{prog.input}] = 0")
    for node in prog.nodes.values():
        group = [a for a in rec.point + rec.pair if a.line == node.name]
        if not group:
            continue
        out.append("")
        out.append(f"line {node.pos.line}: {src[node.pos.line - 1].strip()}")
        out += ["    " + _render_eq(a.symbol, a.expr, style) for a in group]
    out.append("")
    out.append(f"output {prog.output}:")
    for which, label in (("nngp", "NNGP"), ("ntk", "NTK ")):
        out.append(f"    {label} = {_render(rec.outputs[which], style)}")
    if structure and rec.spatial:
        out += [""] + structure_report(rec)
    if expand:
        out.append("")
        for which, label in (("nngp", "NNGP"), ("ntk", "NTK")):
            e = expanded(rec, which)
            text = _render(e, style) if e is not None else (
                f"(over {EXPAND_LIMIT} operations: too deep to print as one formula)")
            out.append(f"{label}(x,x') = {text}")
    return "\n".join(out)


def _dim(rec: Recursion) -> int | str:
    shape = rec.program.input_shape
    if shape.channels is None:
        return "d"  # vector[*]: the size of the data
    return shape.channels * math.prod(shape.spatial)
