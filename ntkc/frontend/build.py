"""AST → IR: resolve names, check each op's arguments against its rule's
signature, and build the sympy values (params, coefficients, nonlinearities)."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import sympy

from ..errors import Pos, Reporter
from ..ir import Node, Param, Program, Shape
from ..semantics.duals import as_expr, polynomial_dual
from ..semantics.quadrature import quadrature_dual
from ..semantics.rules import REQUIRED, RULES, Arg, ArgKind, callable_ops
from ..semantics.rules.activations import BUILTINS, builtin_dual
from . import ast
from .expr import finite_real, linear_terms, nonlin_problem, number, to_sympy

CALLABLE_OPS = callable_ops()
INFIX = {r.infix: r.op for r in RULES.values() if r.infix}  # "*" -> "product": `p = a * b`
INPUT_KINDS = {"vector": 1, "sequence": 2, "image": 3}
RESERVED = set(CALLABLE_OPS) | set(BUILTINS)
# Degrees beyond which the exact Gaussian moments (and rectified_monomial's arc-cosine
# polynomials, solved for at compile time) cost more than any real use needs.
MAX_DEGREE = {"monomial": 64, "polynomial": 64, "rectified_monomial": 16, "nonlin": 64}
NONNEGATIVE = ("w_std", "b_std")
MAX_INT = 2**31 - 1  # sizes, strides, widths: past it numpy's index arithmetic overflows
MAX_POSITIONS = 2**20  # positions of a sequence or image input (1024 × 1024)


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Builder:
    def __init__(self, module: ast.Module, filename: str, source: str, reporter: Reporter):
        self.module = module
        self.filename = filename
        self.source = source
        self.r = reporter
        self.params: dict[str, Param] = {}
        self.nonlins: dict[str, tuple] = {}  # name → (dual, pos)
        self.nodes: dict[str, Node] = {}
        self.defined_at: dict[str, Pos] = {}
        self.used: set[str] = set()
        self.network: str | None = None
        self.parameterization = "ntk"
        self.input: str | None = None
        self.output: tuple[str, Pos] | None = None

    # -- names ----------------------------------------------------------------------------
    def _define(self, name: str, pos: Pos, what: str) -> None:
        if name in self.defined_at:
            line = self.defined_at[name].line
            raise self.r.fail(f"'{name}' is already defined on line {line}", pos)
        if name in RESERVED:
            raise self.r.fail(f"'{name}' is the name of a built-in op; pick another name", pos)
        self.defined_at[name] = pos

    def _scalar(self, e: ast.Expr, what: str) -> sympy.Expr:
        names = {k: p.symbol for k, p in self.params.items()}
        value = to_sympy(e, names, self.r, what)
        if not finite_real(value):
            raise self.r.fail(f"{what} must be a finite real number, got {value}", e.pos)
        self.used.update(s.name for s in value.free_symbols)
        return value

    def _layer(self, e: ast.Expr, op: str) -> str:
        if not isinstance(e, ast.Name):
            raise self.r.fail(f"{op} takes a line name here, not an expression", e.pos)
        if e.id not in self.nodes:
            if e.id in self.params:
                raise self.r.fail(f"'{e.id}' is a param, but {op} needs a layer", e.pos)
            raise self.r.fail(f"undefined name '{e.id}'{_suggest(e.id, self.nodes)}", e.pos)
        self.used.add(e.id)
        return e.id

    # -- statements -----------------------------------------------------------------------
    def build(self) -> Program:
        for st in self.module.statements:
            getattr(self, "_" + type(st).__name__)(st)
        if self.input is None:
            raise self.r.fail("no input: declare one, e.g. 'input x : vector[784]'", None)
        x = self.nodes[self.input]
        if x.shape.channels is None and self.parameterization == "standard":
            # Θ of the first dense is n_in·x·x'/d + ...: it scales with the input size
            raise self.r.fail("under parameterization standard the NTK depends on the input "
                              "size: give it (e.g. vector[64]) or use parameterization ntk",
                              x.pos)
        if self.output is None:
            last = len(self.source.rstrip("\n").splitlines()) or 1
            raise self.r.fail("no output: end the network with 'output <line>'", Pos(last, 1))
        network = self.network or re.sub(r"\W", "_", Path(self.filename).stem) or "network"
        return Program(network, self.parameterization, self.params, self.nodes, self.input,
                       self.output[0], self.filename, self.source)

    def _NetworkDecl(self, st: ast.NetworkDecl) -> None:
        if self.network is not None:
            raise self.r.fail("the network is already named", st.pos)
        self.network = st.name

    def _ParameterizationDecl(self, st: ast.ParameterizationDecl) -> None:
        if st.name not in ("ntk", "standard"):
            raise self.r.fail(
                f"unknown parameterization '{st.name}' (use ntk or standard)", st.pos)
        self.parameterization = st.name

    def _ParamDecl(self, st: ast.ParamDecl) -> None:
        self._define(st.name, st.pos, "param")
        value = to_sympy(st.default, {}, self.r, f"the default of param '{st.name}'")
        if not finite_real(value):
            raise self.r.fail(f"the default of param '{st.name}' must be a finite real number, "
                              f"got {value}", st.default.pos)
        self.params[st.name] = Param(st.name, sympy.Symbol(st.name, real=True), float(value),
                                     st.pos)

    def _InputDecl(self, st: ast.InputDecl) -> None:
        if self.input is not None:
            raise self.r.fail("only one input is supported", st.pos)
        if st.kind not in INPUT_KINDS:
            raise self.r.fail(f"unknown input kind '{st.kind}' (vector, sequence or image)",
                              st.kind_pos)
        if len(st.dims) != INPUT_KINDS[st.kind]:
            raise self.r.fail(f"{st.kind} takes {INPUT_KINDS[st.kind]} size(s), "
                              f"got {len(st.dims)}", st.kind_pos)
        if None in st.dims and st.kind != "vector":
            # a conv's taps and a pool's windows need the positions at compile time
            raise self.r.fail(f"only a vector input may leave its size open: {st.kind} "
                              "sizes are needed at compile time", st.kind_pos)
        if 0 in st.dims:
            raise self.r.fail("input sizes must be positive", st.kind_pos)
        if math.prod(st.dims[:-1]) > MAX_POSITIONS:
            # the tap tables alone (positions × taps) would not fit in memory
            raise self.r.fail(f"an input has at most {MAX_POSITIONS} positions "
                              f"({' × '.join(map(str, st.dims[:-1]))} given)", st.kind_pos)
        self._define(st.name, st.pos, "input")
        shape = Shape(st.kind, tuple(st.dims[:-1]), st.dims[-1])
        self.nodes[st.name] = Node(st.name, "input", (), {}, st.pos, shape)
        self.input = st.name

    def _NonlinDecl(self, st: ast.NonlinDecl) -> None:
        self._define(st.name, st.pos, "nonlin")
        z = sympy.Symbol(st.var, real=True)
        names = {k: p.symbol for k, p in self.params.items()}
        names[st.var] = z
        body = to_sympy(st.body, names, self.r, f"nonlin {st.name}", functions=True)
        self.used.update(s.name for s in body.free_symbols if s != z)
        if z not in body.free_symbols:
            raise self.r.fail(f"nonlin {st.name} does not depend on {st.var}", st.body.pos)
        if body.is_polynomial(z):
            degree = _degree(body, z)
            if degree > MAX_DEGREE["nonlin"]:
                raise self.r.fail(f"nonlin {st.name} is a polynomial of degree {degree}; at "
                                  f"most {MAX_DEGREE['nonlin']} is supported", st.body.pos)
            coefs = sympy.Poly(body, z).all_coeffs()[::-1]
            dual = polynomial_dual(st.name, coefs)
        else:
            problem = nonlin_problem(body, z)
            if problem is not None:
                raise self.r.fail(f"nonlin {st.name}: {problem}", st.body.pos)
            dual = quadrature_dual(st.name, body, z)
        self.nonlins[st.name] = (dual, st.pos, body)

    def _OutputDecl(self, st: ast.OutputDecl) -> None:
        if self.output is not None:
            raise self.r.fail("only one output is supported", st.pos)
        self._layer(ast.Name(st.name, st.pos), "output")
        self.output = (st.name, st.pos)

    def _Assign(self, st: ast.Assign) -> None:
        self._define(st.target, st.pos, "line")
        v = st.value
        infix = None if isinstance(v, ast.Call) else self._infix(v)
        if isinstance(v, ast.Call):
            node = self._call(st.target, v)
        elif infix is not None:
            assert isinstance(v, ast.BinOp)
            node = Node(st.target, infix, (self._layer(v.left, infix),
                                           self._layer(v.right, infix)), {}, st.pos)
        else:
            terms = linear_terms(
                v, lambda n: n in self.nodes, lambda e: self._scalar(e, "a coefficient"), self.r)
            for name, c in terms.items():
                self._layer(ast.Name(name, st.pos), "a linear combination")
                if not finite_real(c):
                    raise self.r.fail(f"the coefficient of '{name}' must be a finite real "
                                      f"number, got {c}", v.pos)
            nonzero = tuple((c, n) for n, c in terms.items() if c != 0)
            if not nonzero:  # g - g, 0*g: the constant 0 (its shape is still its lines')
                self.r.warn(f"'{st.target}' is identically zero: its coefficients cancel",
                            st.pos)
            node = Node(st.target, "lincomb", tuple(terms), {"terms": nonzero}, st.pos)
        self.nodes[st.target] = node

    def _infix(self, v: ast.Expr) -> str | None:
        """The op of `a OP b` (OP a rule's infix, a line on each side), or None for a linear
        combination. OP between lines anywhere else is refused, saying what to write."""

        def lines(e: ast.Expr) -> bool:
            return any(isinstance(m, ast.Name) and m.id in self.nodes for m in _walk(e))

        for m in _walk(v):
            if not (isinstance(m, ast.BinOp) and m.op in INFIX and lines(m.left)
                    and lines(m.right)):
                continue
            op = INFIX[m.op]
            if m is not v:
                raise self.r.fail(f"a {op} of lines (a {m.op} b) must be a line of its own: "
                                  f"q = a {m.op} b, then use q here", m.pos)
            for side in (m.left, m.right):
                if not isinstance(side, ast.Name):
                    raise self.r.fail(
                        f"a {op} (a {m.op} b) takes two line names: give this side a line of "
                        f"its own (a {m.op} b {m.op} c: q = a {m.op} b, then p = q {m.op} c; "
                        f"2 {m.op} a {m.op} b: q = a {m.op} b, then p = 2 {m.op} q)", side.pos)
            return op
        return None

    # -- op calls -------------------------------------------------------------------------
    def _call(self, target: str, c: ast.Call) -> Node:
        if c.func in CALLABLE_OPS:
            rule = RULES[c.func]
            n_in = rule.n_inputs
            layers = c.args if n_in is None else c.args[:n_in]
            extra = () if n_in is None else c.args[n_in:]
            if n_in is None and not layers or n_in is not None and len(layers) < n_in:
                raise self.r.fail(f"{c.func} needs {n_in or 'one or more'} input line(s)",
                                  c.func_pos)
            inputs = tuple(self._layer(e, c.func) for e in layers)
            attrs = self._args(c, rule.args, extra)
            return Node(target, c.func, inputs, attrs, c.pos)
        if c.func in BUILTINS or c.func in self.nonlins:
            if not c.args:
                raise self.r.fail(f"{c.func} needs an input line", c.func_pos)
            inputs = (self._layer(c.args[0], c.func),)
            if c.func in self.nonlins:
                self.used.add(c.func)
                if len(c.args) > 1 or c.kwargs:
                    raise self.r.fail(f"nonlin {c.func} takes one argument", c.pos)
                dual = self.nonlins[c.func][0]
                attrs = {"dual": dual, "key": ("user", c.func), "label": c.func}
            else:
                values = self._args(c, BUILTINS[c.func].args, c.args[1:])
                dual = builtin_dual(c.func, **values)
                key = (c.func, tuple(sorted((k, str(v)) for k, v in values.items())))
                attrs = {"dual": dual, "key": key, "label": c.func, "args": values}
            return Node(target, "nonlin", inputs, attrs, c.pos)
        known = CALLABLE_OPS | set(BUILTINS) | set(self.nonlins)
        raise self.r.fail(f"unknown operation '{c.func}'{_suggest(c.func, known)}", c.func_pos)

    def _args(self, c: ast.Call, sig: tuple[Arg, ...], positional) -> dict:
        by_name = {a.name: a for a in sig}
        given: dict[str, ast.Expr] = {}
        if len(positional) > len(sig):
            raise self.r.fail(f"{c.func} takes at most {len(sig)} extra argument(s)",
                              positional[len(sig)].pos)
        for a, e in zip(sig, positional):
            given[a.name] = e
        for kw in c.kwargs:
            if kw.name not in by_name:
                hint = _suggest(kw.name, by_name) or (
                    f" (it takes {', '.join(by_name)})" if by_name else " (it takes none)")
                raise self.r.fail(f"{c.func} has no argument '{kw.name}'{hint}", kw.pos)
            if kw.name in given:
                raise self.r.fail(f"argument '{kw.name}' given twice", kw.pos)
            given[kw.name] = kw.value
        out = {}
        for a in sig:
            if a.name not in given:
                if a.default is REQUIRED:
                    raise self.r.fail(f"{c.func} needs argument '{a.name}'", c.func_pos)
                plain = a.default is None or a.kind in (ArgKind.INTS, ArgKind.CHOICE)
                out[a.name] = a.default if plain else as_expr(a.default)
                continue
            value = self._value(c.func, a, given[a.name])
            why = None if a.check is None else a.check(value)
            if why is not None:  # the op's own condition (dropout's rate in (0, 1])
                raise self.r.fail(f"{c.func}'s {a.name} {why}", given[a.name].pos)
            out[a.name] = value
        return out

    def _value(self, op: str, a: Arg, e: ast.Expr):
        what = f"{op}'s {a.name}"
        if a.kind is ArgKind.NUMBER:
            if isinstance(e, ast.Name) and e.id in self.nodes:
                raise self.r.fail(f"{what} must be a number or a param, not the line '{e.id}'",
                                  e.pos)
            value = self._scalar(e, what)
            if a.name in NONNEGATIVE and value.is_number and value < 0:
                raise self.r.fail(f"{what} must be ≥ 0, got {value}", e.pos)
            return value
        if a.kind is ArgKind.INT:
            if not (isinstance(e, ast.Num) and number(e).is_integer and number(e) >= 0):
                raise self.r.fail(f"{what} must be a non-negative integer", e.pos)
            if number(e) > MAX_INT:
                raise self.r.fail(f"{what} is at most {MAX_INT}", e.pos)
            if a.name == "degree" and number(e) > MAX_DEGREE.get(op, number(e)):
                raise self.r.fail(f"{what} is at most {MAX_DEGREE[op]}", e.pos)
            return int(number(e))
        if a.kind is ArgKind.INTS:
            items = e.items if isinstance(e, ast.ListLit) else []
            if not items or not all(isinstance(x, ast.Num) and number(x).is_integer
                                    and number(x) >= 1 for x in items):
                raise self.r.fail(f"{what} must be a list of positive integers, e.g. [3, 3]",
                                  e.pos)
            big = next((x for x in items if number(x) > MAX_INT), None)
            if big is not None:
                raise self.r.fail(f"{what}: each entry is at most {MAX_INT}", big.pos)
            return [int(number(x)) for x in items]
        if a.kind is ArgKind.CHOICE:
            if not (isinstance(e, ast.Name) and e.id in a.choices):
                raise self.r.fail(f"{what} must be one of {', '.join(a.choices)}", e.pos)
            return e.id
        if a.kind is ArgKind.NUMBER_LIST:
            if not isinstance(e, ast.ListLit) or not e.items:
                raise self.r.fail(f"{what} must be a list of numbers, e.g. [0.1, 1.0]", e.pos)
            if len(e.items) > MAX_DEGREE.get(op, len(e.items)) + 1:
                raise self.r.fail(f"{what} has {len(e.items)} coefficients: at most degree "
                                  f"{MAX_DEGREE[op]} is supported", e.pos)
            return [self._scalar(x, what) for x in e.items]
        raise AssertionError(a.kind)


def _walk(e: ast.Expr):
    """e and its sub-expressions, outermost first (not into calls)."""
    stack = [e]
    while stack:
        m = stack.pop()
        yield m
        if isinstance(m, ast.BinOp):
            stack += [m.right, m.left]
        elif isinstance(m, ast.Neg):
            stack.append(m.operand)


def _degree(e: sympy.Expr, z: sympy.Symbol) -> int:
    """An upper bound on the degree of polynomial e in z, without expanding it."""
    if not e.has(z):
        return 0
    if e.is_Add:
        return max(_degree(a, z) for a in e.args)
    if e.is_Mul:
        return sum(_degree(a, z) for a in e.args)
    if e.is_Pow:
        return int(e.exp) * _degree(e.base, z)
    return 1


def build(module: ast.Module, filename: str, source: str, reporter: Reporter) -> Program:
    return Builder(module, filename, source, reporter).build()
