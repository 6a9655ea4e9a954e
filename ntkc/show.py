"""Formulas a person can read: the recursion per spec line, as text, LaTeX or sympy."""

from __future__ import annotations

import html
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
    out = name.replace("_", r"\_")  # stencils: gpool_p(x,x')[K[h3](x,x̃)], 𝒜_g1(...)
    for char, tex in _MATH_CHARS.items():
        out = out.replace(char, tex)
    return out


# The non-ASCII characters of quantity names, as LaTeX math (pdflatex reads no Unicode).
_MATH_CHARS = {"x̃": r"\tilde{x}", "Θ": r"\Theta ", "𝒜": r"\mathcal{A}", "·": r" \cdot ",
               "²": "^{2}", "′": "'"}


def _render(expr: sympy.Expr, style: str) -> str:
    if style == "latex":
        names = {s: _latex_name(s.name) for s in expr.free_symbols}
        out = sympy.latex(expr, symbol_names=names)  # function names come out raw
        for char, tex in _MATH_CHARS.items():
            out = out.replace(char, tex)
        return out
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


# -- documents: `ntkc show --latex` and Jupyter (Model._repr_latex_ / _repr_html_) ------------
_TEX_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&",
                 "#": r"\#", "_": r"\_", "%": r"\%", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}"}


def _tex_text(s: str) -> str:
    """Spec text set as LaTeX text: every special character escaped (it is data, never
    markup: a comment in a spec cannot run LaTeX commands)."""
    return "".join(_TEX_SPECIALS.get(c, c) for c in s)


def _tex_lines(lines: list[str]) -> str:
    return "\\\\\n".join(r"\texttt{" + _tex_text(line) + "}" for line in lines)


def latex_math(rec: Recursion) -> str:
    """The recursion as one aligned block: each spec line's quantities, then the outputs."""
    rows = []
    for node in rec.program.nodes.values():
        for a in (a for a in rec.point + rec.pair if a.line == node.name):
            lhs, rhs = _render_eq(a.symbol, a.expr, "latex").split(" = ", 1)
            rows.append(f"{lhs} &= {rhs}")
    for which, label in (("nngp", r"\mathrm{NNGP}"), ("ntk", r"\mathrm{NTK}")):
        rows.append(f"{label}(x,x') &= {_render(rec.outputs[which], 'latex')}")
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"


def latex_document(rec: Recursion, expand: bool = False) -> str:
    """A standalone LaTeX document: the spec, its covariance structure, its formulas (and
    with ``expand`` the output kernels as single formulas, where not too deep)."""
    prog = rec.program
    spec = _tex_lines(prog.source.rstrip("\n").splitlines())
    structure = ""
    if rec.spatial:  # its rows quote spec lines: text, escaped like the spec
        structure = "\\section*{Covariance structure}\n\\noindent " + _tex_lines(
            structure_report(rec)) + "\n"
    return (
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{amsmath}\n\\usepackage[margin=2cm]{geometry}\n"
        f"\\title{{{_tex_text(prog.network)}: NNGP and NTK}}\n\\date{{}}\n"
        "\\begin{document}\n\\maketitle\n\\section*{Spec}\n\\noindent " + spec + "\n"
        + structure + "\\section*{Recursion}\n\\allowdisplaybreaks\n"
        "\\begin{align*}\n" + latex_math(rec).split("\n", 1)[1].rsplit("\n", 1)[0]
        + "\n\\end{align*}\n" + (_expanded_section(rec) if expand else "")
        + "\\end{document}\n")


def _expanded_section(rec: Recursion) -> str:
    rows = []
    for which, label in (("nngp", r"\mathrm{NNGP}"), ("ntk", r"\mathrm{NTK}")):
        e = expanded(rec, which)
        rows.append(f"{label}(x,x') &= {_render(e, 'latex')}" if e is not None else
                    rf"{label}(x,x') &: \text{{over {EXPAND_LIMIT} operations, not expanded}}")
    return ("\\section*{Expanded}\n\\begin{align*}\n" + " \\\\\n".join(rows)
            + "\n\\end{align*}\n")


def html_report(rec: Recursion) -> str:
    """Jupyter's rendering of a Model: the spec, its structure, the formulas (MathJax)."""
    prog = rec.program
    title = (f"<b>{html.escape(prog.network)}</b> (parameterization "
             f"{html.escape(prog.parameterization)})")
    parts = [title, f"<pre>{html.escape(prog.source.rstrip())}</pre>"]
    if rec.spatial:
        parts.append(f"<pre>{html.escape(chr(10).join(structure_report(rec)))}</pre>")
    parts.append("$$" + html.escape(latex_math(rec)) + "$$")
    return "\n".join(parts)
