"""Expression printers for the generated kernels (sympy code printers).

Symbols print by the code names the derivation gave them (identifiers built
from checked line names), params as ``params[i]``, and the opaque quadrature
expectations as calls to generated helpers. Nothing from spec text is pasted.
"""

from __future__ import annotations

import sympy
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from ..semantics import quadrature
from .hoist import TINY


def guard_zero_variance(expr: sympy.Expr) -> sympy.Expr:
    """k/|k| (a dual at x = x') as k/max(|k|, TINY): a zero variance gives 0, not 0/0
    (see hoist.TINY). Applied before cse too, which would otherwise lift |k| out of reach."""
    return expr.replace(
        lambda e: e.is_Pow and isinstance(e.base, sympy.Abs) and e.exp.is_negative,
        lambda e: sympy.Max(e.base, TINY) ** e.exp)


def cse_block(exprs: list, printer, indent: str, tmp: str = "t",
              defs: list[tuple[sympy.Symbol, sympy.Expr]] = ()) -> tuple[list[str], list[str]]:
    """The expressions with common subexpressions eliminated: (statements, printed
    expressions).

    defs: assignments (symbol, formula), in order, that the expressions and later defs
    read by symbol (the recursion, one statement per quantity). They share one cse
    with the expressions; each is printed as ``name = formula`` right after the
    temporaries it needs, so a temporary that reads a def comes after it."""
    guard = [guard_zero_variance(e) if isinstance(e, sympy.Basic) else e
             for e in [e for _, e in defs] + list(exprs)]
    reps, reduced = sympy.cse(guard, symbols=sympy.numbered_symbols(tmp), order="none")
    for s, _ in reps:
        printer.names[s] = str(s)
    index = {s: k for k, (s, _) in enumerate(reps)}
    done: set[int] = set()
    lines: list[str] = []

    def emit_needed(e) -> None:
        # the temporaries e reads, with the ones they read; cse lists them in order
        todo = [index[f] for f in getattr(e, "free_symbols", ()) if f in index]
        need: set[int] = set()
        while todo:
            k = todo.pop()
            if k not in done and k not in need:
                need.add(k)
                todo += [index[f] for f in reps[k][1].free_symbols if f in index]
        for k in sorted(need):
            lines.append(f"{indent}{reps[k][0]} = {printer.doprint(reps[k][1])}")
        done.update(need)

    for (sym, _), e in zip(defs, reduced):
        emit_needed(e)
        lines.append(f"{indent}{printer.doprint(sym)} = {printer.doprint(e)}")
    # the rest in cse's order (all of them when there are no defs: the emitters' old text)
    emit_needed(sympy.Tuple(*[s for k, (s, _) in enumerate(reps) if k not in done]))
    return lines, [printer.doprint(e) for e in reduced[len(defs):]]


class _Names:
    """Shared naming for both backends."""

    def __init__(self, names: dict[sympy.Symbol, str], helpers: dict[type, str], **settings):
        super().__init__(settings={"fully_qualified_modules": True, **settings})
        self.names = names
        self.helpers = helpers

    def _print_Symbol(self, s):
        return self.names.get(s) or super()._print_Symbol(s)

    def doprint(self, expr, *args, **kwargs):
        if isinstance(expr, sympy.Basic):
            # exact constants folded past 2^53 (a layer_norm'd variance squared...) would
            # print as Python ints that numpy.sqrt cannot take: print them as floats
            expr = guard_zero_variance(expr.xreplace(
                {n: sympy.Float(n, 17) for n in expr.atoms(sympy.Rational)
                 if max(abs(n.p), n.q) > 2**53}))
        return super().doprint(expr, *args, **kwargs)

    def _print_Function(self, e):
        # sympy skips printer methods of Function subclasses by name, so dispatch here.
        if type(e) in self.helpers:
            args = ", ".join(self._print(a) for a in e.args)
            return f"{self.helpers[type(e)]}({args}, params)"
        return super()._print_Function(e)


class NumbaPrinter(_Names, PythonCodePrinter):
    """Scalar code for @numba.njit functions (math module)."""

    def _print_Clip1(self, e):
        return f"min(max({self._print(e.args[0])}, -1.0), 1.0)"

    def _print_Heaviside(self, e):
        return f"(1.0 if {self._print(e.args[0])} > 0 else 0.0)"

    def _print_DiracDelta(self, e):
        return "0.0"  # φ' of sign/step is zero almost everywhere (as Neural Tangents)

    def _print_sign(self, e):
        x = self._print(e.args[0])
        return f"(1.0 if {x} > 0 else (-1.0 if {x} < 0 else 0.0))"

    def _print_KroneckerDelta(self, e):  # δ_ij of two positions (ntkc.semantics.positions)
        return f"(1.0 if {self._print(e.args[0])} == {self._print(e.args[1])} else 0.0)"


class CpuPrinter(NumbaPrinter):
    """NumbaPrinter for the CPU target: arccos by the vectorisable _acos of every
    generated module (ntkc.codegen.fast_acos) instead of libm's."""

    def _print_acos(self, e):
        return f"_acos({self._print(e.args[0])})"


class ArrayPrinter(_Names, NumPyPrinter):
    """Vectorised numpy code for the reference backend."""

    def _print_Clip1(self, e):
        return f"numpy.clip({self._print(e.args[0])}, -1.0, 1.0)"

    def _print_erf(self, e):
        return f"_np_erf({self._print(e.args[0])})"

    # sympy's own versions need functools, which the modules do not import.
    def _print_Max(self, e):
        out = self._print(e.args[0])
        for a in e.args[1:]:
            out = f"numpy.maximum({out}, {self._print(a)})"
        return out

    def _print_Min(self, e):
        out = self._print(e.args[0])
        for a in e.args[1:]:
            out = f"numpy.minimum({out}, {self._print(a)})"
        return out

    def _print_Heaviside(self, e):
        return f"numpy.heaviside({self._print(e.args[0])}, 0.0)"

    def _print_DiracDelta(self, e):
        return f"numpy.zeros_like({self._print(e.args[0])})"

    def _print_KroneckerDelta(self, e):  # of two position index arrays: 1.0 where equal
        return f"numpy.equal({self._print(e.args[0])}, {self._print(e.args[1])}) * 1.0"


# -- shared by the dense CPU and GPU writers --------------------------------------------
Defs = list[tuple[sympy.Symbol, sympy.Expr]]  # (quantity, its formula) in order


def needed_defs(defs: Defs, outputs: list[sympy.Expr]) -> Defs:
    """The defs the outputs read, directly or through other defs, in their order: the
    NNGP-only pair kernel computes no Θ."""
    need = set().union(*(e.free_symbols for e in outputs))
    out = []
    for sym, e in reversed(defs):
        if sym in need:
            out.append((sym, e))
            need |= e.free_symbols
    return out[::-1]


def quad_printed(t: type, printer) -> tuple[str, str | None]:
    """f(u) and g(v) of an expectation class, printed."""
    it = t.integrand
    # real, as the integrand's z: otherwise xreplace re-evaluates nested functions (2× per level)
    u, v = sympy.Symbol("u", real=True), sympy.Symbol("v", real=True)
    printer.names[u], printer.names[v] = "u", "v"
    fu = printer.doprint(it.f.xreplace({it.z: u}))
    return fu, None if it.dims == 1 else printer.doprint(it.g.xreplace({it.z: v}))


def quad_scalar(name: str, t: type, printer) -> list[str]:
    """A scalar quadrature helper (no decorator): the same text serves @numba.njit
    and @cuda.jit(device=True), so the CPU and GPU kernels integrate identically."""
    return quadrature.scalar_helper(name, t.integrand, *quad_printed(t, printer))
