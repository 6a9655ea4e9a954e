"""``ntkc compile --target jax``: the spec as a finite network, a module that imports only
the standard library, numpy and jax (DESIGN §8).

The module has ``init(key, width=512, spec_params=None) -> params``, ``apply(params, x,
spec_params=None) -> outputs`` and ``empirical_kernel(params, x1, x2=None, get=...,
spec_params=None)``. Each line is one call of its op's finite forward, which the op's rule
declares (Rule.finite, ntkc.semantics.rules.registry.FiniteForward): the forwards' source
is pasted from the rule files, the fixed runtime from ntkc/codegen/jax_library.py.
Everything that depends on the spec is printed from sympy trees (JaxCodePrinter) or as
reprs and checked identifiers, never pasted from spec text.

Widths: every line whose op takes a ``width`` argument gets a width symbol; the channels
of the other lines follow from their rules as sympy expressions in those symbols. Lines
summed together must have equal channels, so their symbols are tied (one of them, or
the fixed channels of the input) before anything is printed.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
import types
from pathlib import Path
from typing import Any

import sympy
from sympy.printing.numpy import JaxPrinter

from .._version import __version__
from ..errors import Diagnostic, SpecError
from ..frontend import program_from_text
from ..ir import Node, Program
from ..semantics.duals import as_expr
from ..semantics.rules import RULES, Opening
from ..semantics.rules.registry import FiniteForward
from .driver_template import comment, identifier

_LIBRARY = Path(__file__).with_name("jax_library.py").read_text(encoding="utf-8")
_MARKER = "# --- module text below: pasted into the generated modules"
LIBRARY = _LIBRARY[_LIBRARY.index("\n", _LIBRARY.index(_MARKER)) + 1:].strip("\n")


class JaxCodePrinter(JaxPrinter):
    """sympy → jax source. Symbols print by the names given (spec params as
    ``sp['name']``, widths as ``n['line']``); Max/Min as jnp.maximum/minimum (sympy's
    version needs functools), erf as jax.scipy.special.erf (sympy's is math.erf)."""

    def __init__(self, names: dict[sympy.Symbol, str]):
        super().__init__(settings={"fully_qualified_modules": True})
        self.names = names

    def _print_Symbol(self, s):
        if s not in self.names:
            raise ValueError(f"no name for symbol {s} in the jax target")
        return self.names[s]

    _print_Dummy = _print_Symbol

    def doprint(self, expr, *args, **kwargs):
        if isinstance(expr, sympy.Basic):  # exact constants past 2^53 as floats (selu's)
            expr = expr.xreplace({r: sympy.Float(r, 17) for r in expr.atoms(sympy.Rational)
                                  if max(abs(r.p), r.q) > 2**53})
        return super().doprint(expr, *args, **kwargs)

    def _fold(self, e, op):
        out = self._print(e.args[0])
        for a in e.args[1:]:
            out = f"jax.numpy.{op}({out}, {self._print(a)})"
        return out

    def _print_Max(self, e):
        return self._fold(e, "maximum")

    def _print_Min(self, e):
        return self._fold(e, "minimum")

    def _print_erf(self, e):
        return f"jax.scipy.special.erf({self._print(e.args[0])})"


def _globals_read(code: types.CodeType, module_globals: dict) -> set[str]:
    """The names a function's code (nested code included) reads that its module binds."""
    found = {n for n in code.co_names if n in module_globals}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _globals_read(const, module_globals)
    return found


def forward_source(finite: FiniteForward) -> str:
    """The source of an op's finite forward, checked to read no global of its rule file
    (it runs in the generated module, where they do not exist)."""
    fn = finite.forward
    read = _globals_read(fn.__code__, fn.__globals__)
    if read or fn.__closure__:
        raise ValueError(f"{fn.__module__}.{fn.__name__} reads {sorted(read) or 'a closure'}: "
                         "a finite forward may read only its arguments and builtins")
    return textwrap.dedent(inspect.getsource(fn)).strip("\n")


class _Code:
    """Text the writer itself composed (a local of apply), printed as it is."""

    def __init__(self, text: str):
        self.text = text


class JaxWriter:
    """One program → the source of its finite-width jax module."""

    def __init__(self, program: Program):
        self.prog = program
        self.names: dict[sympy.Symbol, str] = {
            p.symbol: f"sp[{identifier(name)!r}]" for name, p in program.params.items()}
        self.width_of: dict[str, sympy.Symbol] = {}  # line → its width symbol
        for node in program.nodes.values():
            if any(a.name == "width" for a in RULES[node.op].args):
                s = sympy.Symbol(f"width_{identifier(node.name)}", positive=True, integer=True)
                self.width_of[node.name] = s
                self.names[s] = f"n[{node.name!r}]"
        self.input_size = sympy.Symbol("input_size", positive=True, integer=True)
        self.names[self.input_size] = "d"
        self.channels = self._channels()
        self.printer = JaxCodePrinter(self.names)

    # -- widths ---------------------------------------------------------------------------
    def _channels(self) -> dict[str, sympy.Expr]:
        """Each line's channels in the width symbols, with the ties of summed lines made."""
        prog, chans = self.prog, {}
        self.ties: dict[sympy.Symbol, sympy.Expr] = {}
        for node in prog.nodes.values():
            finite = self._finite(node)
            c_in = [chans[i].xreplace(self.ties) for i in node.inputs]
            if node.op == "input":  # open (vector[*]): the size init is given
                c = node.shape.channels
                chans[node.name] = sympy.Integer(c) if c is not None else self.input_size
                continue
            if finite.same_channels:
                for c in c_in[1:]:
                    self._tie(node, c_in[0].xreplace(self.ties), c.xreplace(self.ties))
                c_in = [c.xreplace(self.ties) for c in c_in]
            width = self.width_of.get(node.name)
            chans[node.name] = as_expr(
                finite.channels(node, prog, c_in, width) if finite.channels else c_in[0])
        for _ in range(len(self.ties) + 1):  # resolve ties of ties
            self.ties = {s: e.xreplace(self.ties) for s, e in self.ties.items()}
        return {k: c.xreplace(self.ties) for k, c in chans.items()}

    def _tie(self, node: Node, a: sympy.Expr, b: sympy.Expr) -> None:
        if a == b:
            return
        free = set(self.width_of.values())
        if b in free:
            self.ties[b] = a
        elif a in free:
            self.ties[a] = b
        else:
            raise ValueError(f"line {node.name!r} ({comment(node.op)}) sums lines of "
                             f"{a} and {b} channels: no choice of widths makes them equal")

    def _finite(self, node: Node) -> FiniteForward:
        finite = RULES[node.op].finite
        if finite is None:
            raise ValueError(f"line {node.name!r}: op {node.op!r} has no finite forward "
                             "yet: the jax target cannot compile this spec")
        return finite

    def _tables(self) -> list[str]:
        declared = {name: self.prog.nodes[name].attrs.get("width")
                    for name in self.width_of}
        sym_line = {s: line for line, s in self.width_of.items()}
        tied: dict[str, Any] = {}
        for line, s in self.width_of.items():
            if s in self.ties:
                target = self.ties[s]
                if target in sym_line:
                    tied[line] = sym_line[target]
                elif target.is_Integer:
                    tied[line] = int(target)
                else:
                    raise ValueError(f"line {line!r}: its width is tied to {target}")
        return [f"WIDTHS = {declared!r}  # lines whose width init chooses: their spec width=",
                f"TIED = {tied!r}  # summed lines: the width is that line's (or that number)"]

    # -- printing -------------------------------------------------------------------------
    def literal(self, value: Any) -> str:
        if isinstance(value, _Code):
            return value.text
        if isinstance(value, sympy.Lambda):
            (z,) = value.variables
            self.names[z] = "z"
            return f"lambda z: {self.printer.doprint(value.expr)}"
        if isinstance(value, sympy.Basic):
            return self.printer.doprint(value)
        if isinstance(value, (tuple, list)):
            inner = ", ".join(self.literal(v) for v in value)
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if value is None or isinstance(value, (bool, int, float, str)):
            return repr(value)
        raise TypeError(f"cannot print {type(value).__name__} into a jax module")

    def _line_params(self, node: Node) -> dict[str, tuple[tuple[Any, ...], Any]]:
        finite = self._finite(node)
        if finite.params is None:
            return {}
        c_in = [self.channels[i] for i in node.inputs]
        return finite.params(node, self.prog, c_in, self.channels[node.name])

    def init(self) -> list[str]:
        draws = [(node.name, k, spec) for node in self.prog.nodes.values()
                 for k, spec in self._line_params(node).items()]
        body = [
            "def init(key, width=512, spec_params=None, input_size=None):",
            '    """Trainable params of one random network: a dict line -> {name: array}.',
            "",
            "    key: a jax PRNG key or an int seed. width: an int, the width of every hidden",
            "    line (the output line keeps its spec width= or 1 unit), or a dict line -> width",
            "    (lines left out keep the spec's width=); WIDTHS lists the lines. spec_params:",
            "    overrides of PARAMS (they set the draws' scales under the standard",
            "    parameterization). input_size: the input's size where the spec leaves it",
            '    open (vector[*])."""',
            "    sp = _spec_params(PARAMS, spec_params)",
            "    n = _widths(width, WIDTHS, TIED, OUTPUT)",
            "    d = _input_size(input_size, INPUT_SHAPE)",
            "    z = _draws(key, [" + ", ".join(self.literal(tuple(shape))
                                             for _, _, (shape, _) in draws) + "])",
            "    params = {" + ", ".join(f"{identifier(n)!r}: {{}}" for n in self.prog.nodes
                                         if any(d[0] == n for d in draws)) + "}",
        ]
        for k, (line, name, (_, std)) in enumerate(draws):
            std = as_expr(std)
            scaled = f"z[{k}]" if std == 1 else f"{self.literal(std)} * z[{k}]"
            body.append(f"    params[{line!r}][{identifier(name)!r}] = {scaled}")
        return [*body, "    return params"]

    def apply(self) -> list[str]:
        local = {name: f"_{identifier(name)}" for name in self.prog.nodes}
        random = [n.name for n in self.prog.nodes.values() if self._finite(n).random]
        body = [
            "def apply(params, x, spec_params=None, key=None):",
            '    """Outputs (n, units) of the network with params (from init) at inputs x',
            "    (n, *INPUT_SHAPE), channels last; spec_params: overrides of PARAMS. key: a",
            "    jax PRNG key for the lines that draw at every call (RANDOM: dropout's",
            '    masks)."""',
            "    sp = _spec_params(PARAMS, spec_params)",
            "    x = _inputs(x, INPUT_SHAPE)",
        ]
        if random:
            body.append(f"    keys = _line_keys(key, {len(random)}, RANDOM)")
        for node in self.prog.nodes.values():
            finite = self._finite(node)
            static = finite.static(node, self.prog) if finite.static else {}
            if finite.random:
                static = {**static, "key": _Code(f"keys[{random.index(node.name)}]")}
            args = ["x"] if RULES[node.op].opening is Opening.INPUT else [
                local[i] for i in node.inputs]
            p = f"params[{node.name!r}]" if self._line_params(node) else "{}"
            kw = "".join(f", {identifier(k)}={self.literal(v)}" for k, v in static.items())
            text = self.prog.source.splitlines()[node.pos.line - 1].strip()
            call = f"{finite.forward.__name__}(jax, {p}, {', '.join(args)}{kw})"
            body += [f"    # line {node.pos.line}: {comment(text)}",
                     f"    {local[node.name]} = {call}"]
        return [*body, f"    return {local[self.prog.output]}"]

    def module(self, spec_name: str, spec_text: str) -> str:
        prog = self.prog
        sha = hashlib.sha256(spec_text.encode()).hexdigest()
        shape = (*prog.input_shape.spatial, prog.input_shape.channels)
        forwards: dict[str, str] = {}
        for node in prog.nodes.values():
            fn = self._finite(node).forward
            src = forward_source(self._finite(node))
            if forwards.setdefault(fn.__name__, src) != src:
                raise ValueError(f"two finite forwards are named {fn.__name__}")
        random = tuple(n.name for n in prog.nodes.values() if self._finite(n).random)
        head = [
            f'"""Finite-width network `{identifier(prog.network)}` in JAX, compiled by ntkc.',
            "",
            f"Generated by ntkc {__version__} from the spec SPEC_FILE (below); do not edit:",
            "regenerate with `ntkc compile --target jax`. Imports only the standard library,",
            "numpy and jax. init(key, width) draws a network, apply(params, x) runs it and",
            "empirical_kernel(params, x1, x2) gives its NNGP and NTK Gram matrices, in the",
            f"spec's parameterization ({prog.parameterization}).",
            '"""',
            "",
            "import collections",
            "import math",
            "",
            "import jax",
            "import jax.numpy as jnp",
            "import jax.scipy.special",
            "import numpy as np",
            "",
            f"SPEC_FILE = {spec_name!r}",
            f"SPEC_SHA256 = {sha!r}",
            f"NTKC_VERSION = {__version__!r}",
            f"NETWORK = {prog.network!r}",
            f"PARAMETERIZATION = {prog.parameterization!r}",
            f"INPUT_SHAPE = {tuple(shape)!r}",
            f"PARAMS = {({k: p.default for k, p in prog.params.items()})!r}",
            f"OUTPUT = {prog.output!r}",
            f"RANDOM = {random!r}  # lines that draw at every apply (its key)",
            *self._tables(),
            "",
            "",
            "# The fixed runtime (ntkc/codegen/jax_library.py)",
            "",
            "",
            LIBRARY,
            "",
            "",
            "# The ops' finite forwards (Rule.finite, from ntkc/semantics/rules/)",
        ]
        for src in forwards.values():
            head += ["", "", src]
        tail = [
            "def empirical_kernel(params, x1, x2=None, get=(\"nngp\", \"ntk\"), spec_params=None,",
            "                     key=None):",
            '    """NNGP (output inner products) and NTK (inner products of the Jacobians with',
            "    respect to every trainable param), both averaged over the output units, of the",
            "    network with these params: a namedtuple (.nngp, .ntk) of (n1, n2) arrays, or one",
            "    array when get is a string. x2=None: x1 against itself. key: apply's, for x1",
            '    (x2 is given another: its dropout masks are independent of x1\'s)."""',
            "    return _empirical_kernel(apply, params, x1, x2, get, spec_params, key)",
        ]
        parts = [head, self.init(), self.apply(), tail]
        return "\n\n\n".join("\n".join(p) for p in parts) + "\n"


def jax_module(program: Program, spec_name: str, spec_text: str) -> str:
    """The finite-width jax module of a program (its spec recorded as ``spec_name``)."""
    return JaxWriter(program).module(spec_name, spec_text)


def compile_finite(text: str, filename: str = "<spec>", spec_name: str | None = None) -> str:
    """spec text → parse → IR → its finite-width jax module's source (no derivation: a
    finite network needs none). spec_name: how the module names its spec (default
    ``filename``). Raises SpecError."""
    program = program_from_text(text, filename)
    try:
        return jax_module(program, spec_name or Path(filename).as_posix(), text)
    except ValueError as e:  # an op without a finite forward, widths that cannot match
        raise SpecError([Diagnostic("error", str(e), None)], filename, text) from None
