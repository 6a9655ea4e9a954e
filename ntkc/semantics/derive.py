"""Derivation: apply the translation rules to a Program, giving the recursion
for the NNGP kernel K and the NTK Θ as sympy assignments, one group per line.

Everything is phrased as covariances between two lines of the program at
two inputs: Q(kind, a, b, p, q) = E[a(x_p) b(x_q)] for kind "K", and the
tangent-kernel analogue for kind "T" (Θ). Points p, q ∈ {1, 2} stand for x
and x'. Quantities with p == q depend on one input only; they are computed
once per input (the point phase) and read by the per-pair code.

Spatial lines (sequence / image inputs) carry one covariance per pair of
positions. A quantity of spatial lines is then an array, and its formula is
the formula of one entry (i, j): row i is a position of x_p, column j of x_q.
Point quantities (p == q) are the per-position variances, a vector. Ops that
mix positions (the input's channel sums, conv, pools, flatten) are stencils:
symbols computed by their own loops from a whole source array. Pools need
covariances between different positions of one input: those are the pair
quantities of (x, x) itself, point 3 standing for a second copy of x.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sympy

from ..errors import Pos
from ..ir import Program
from .geometry import Window
from .rules import RULES, STENCILS, Opening


class DeriveError(Exception):
    def __init__(self, message: str, pos: Pos | None):
        super().__init__(message)
        self.pos = pos


@dataclass(frozen=True)
class Quantity:
    kind: str  # "K" | "T"
    a: str
    b: str
    p: int
    q: int

    @property
    def on_point(self) -> bool:
        return self.p == self.q

    def display(self) -> str:
        lines = self.a if self.a == self.b else f"{self.a},{self.b}"
        at = {(1, 2): "(x,x')", (1, 1): "(x,x)", (2, 2): "(x',x')", (2, 1): "(x',x)",
              (1, 3): "(x,x̃)", (3, 3): "(x̃,x̃)"}
        return f"{'K' if self.kind == 'K' else 'Θ'}[{lines}]{at[(self.p, self.q)]}"

    def code_name(self, index: Callable[[str], int]) -> str:
        """Its identifier in generated code; index: a line's position in the program."""
        family = f"{'V' if self.kind == 'K' else 'U'}{self.p}" if self.on_point else self.kind
        lines = (self.a,) if self.a == self.b else (self.a, self.b)
        return code_name(family, tuple(index(n) for n in lines), *lines)


def code_name(family: str, numbers: tuple[int, ...], *lines: str) -> str:
    """``{family}_{n1}_{n2}…_{line names}``: unique by construction, readable by its suffix.

    The numbers (line positions, stencil counters) alone tell quantities apart, so
    line names never need to be joined unambiguously (``a__b`` + ``c`` and ``a`` +
    ``b__c`` would meet) and serve as a label only, dropped unless they are plain ASCII
    identifiers. Parsing is unique: the family holds no ``_`` and the label never starts
    with a digit. Every code name has the shape ``[A-Z][A-Za-z0-9]*_[0-9]``, which none of
    the generated module's own names has (they are lower case, start with ``_``, or are
    constants such as ``N_POINT``), so the two never meet.
    """
    assert family.isalnum() and family[0].isupper() and numbers, (family, numbers)
    label = "_".join(lines)
    readable = bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label))
    return "_".join([family, *map(str, numbers)] + ([label] if readable else []))


@dataclass(frozen=True)
class Stencil:
    """A value computed from a whole array: out = scale · Σ over the op's taps of source.

    op: "input" (Σ_c x_p[i,c]·x_q[j,c] / C), "conv" (the same tap offset on both
    sides: Neural Tangents' 𝒜), "pool" (every pair of taps of two windows),
    "flatten" (mean of the diagonal), "global" (every pair of positions), and the ops
    rule files register (STENCILS). operands: per-input matrices it reads besides its
    source, at the points of its two sides (attention's mix reads the weights of x_p
    and x_q)."""

    op: str
    source: sympy.Symbol | None
    window: Window | None
    scale: sympy.Expr
    operands: tuple[sympy.Symbol, ...] = ()
    # Only its diagonal is computed, whatever structure its readers need: one value per
    # position, which a formula over full arrays reads at its row (i). A rule whose result
    # is zero between different positions multiplies it by δ_ij (ntkc.semantics.positions).
    diagonal: bool = False


@dataclass
class Assignment:
    symbol: sympy.Symbol
    expr: sympy.Expr  # for a stencil: a display form only
    quantity: Quantity
    line: str  # the program line whose rule produced it
    stencil: Stencil | None = None
    spatial: tuple[int, int] | None = None  # (rows, cols) positions; None for a scalar
    diag: sympy.Expr | None = None  # self-covariance (x, x): its exact diagonal


@dataclass
class Recursion:
    """The derived recursion, ready for display and code generation."""

    program: Program
    point: list[Assignment]  # per-input quantities at x (p = q = 1)
    pair: list[Assignment]  # per-pair quantities (p = 1, q = 2)
    outputs: dict[str, sympy.Expr]  # "nngp" / "ntk" → expression in pair symbols
    twins: dict[sympy.Symbol, sympy.Symbol]  # point symbol at x → same quantity at x'
    code_names: dict[sympy.Symbol, str]
    dot: sympy.Symbol  # x·x'
    sq: sympy.Symbol  # x·x
    sq2: sympy.Symbol  # x'·x'
    twins3: dict[sympy.Symbol, sympy.Symbol] | None = None  # point symbol at x → its copy

    @property
    def spatial(self) -> bool:
        return bool(self.program.input_shape.spatial)

    @property
    def param_symbols(self) -> list[sympy.Symbol]:
        return [p.symbol for p in self.program.params.values()]


class Derivation:
    def __init__(self, program: Program):
        self.program = program
        self.memo: dict[Quantity, sympy.Expr] = {}
        self.point: list[Assignment] = []
        self.pair: list[Assignment] = []
        self.twins: dict[sympy.Symbol, sympy.Symbol] = {}
        self.code_names: dict[sympy.Symbol, str] = {}
        self.dot = sympy.Symbol("x·x'", real=True)
        self.sq = sympy.Symbol("x·x", positive=True)
        self.sq2 = sympy.Symbol("x'·x'", positive=True)
        self.code_names.update({self.dot: "dot", self.sq: "sq", self.sq2: "sq2"})
        self.twins[self.sq] = self.sq2
        self.twins3: dict[sympy.Symbol, sympy.Symbol] = {}
        self.stencils: dict[tuple, sympy.Symbol] = {}

    # -- the one entry point the rules use -------------------------------------------------
    def Q(self, kind: str, a: str, b: str, p: int, q: int) -> sympy.Expr:
        if p == q == 2:
            return self._twin(self.Q(kind, a, b, 1, 1))
        if p == q == 3:
            return self.Q(kind, a, b, 1, 1).xreplace(self.twins3)
        if p > q:  # E[a(x') b(x)] = E[b(x) a(x')]
            a, b, p, q = b, a, q, p
        if p == q and self._index(a) > self._index(b):
            a, b = b, a  # at one point the covariance is symmetric in the two lines
        key = Quantity(kind, a, b, p, q)
        if key not in self.memo:
            self.memo[key] = self._define(key)
        return self.memo[key]

    def input_dot(self, p: int, q: int) -> sympy.Symbol:
        if p != q:
            return self.dot
        return self.sq if p == 1 else self.sq2

    def stencil(self, op: str, line: str, source: sympy.Expr | None, p: int, q: int,
                window: Window | None = None, scale: sympy.Expr = sympy.S.One,
                kind: str = "K", operands: tuple[sympy.Symbol, ...] = (),
                diagonal: bool = False) -> sympy.Expr:
        """The symbol of ``scale · op(source)`` at points (p, q), made once (``operands``:
        the per-input matrices it also reads; ``diagonal``: its diagonal only; see
        Stencil)."""
        if source is not None and source.is_Number:
            if source == 0:
                return sympy.Integer(0)
            raise self.fail("a constant covariance under a spatial op is not supported", line)
        key = (op, line, source, p, q, kind, operands, diagonal)
        if key not in self.stencils:
            quantity = Quantity(kind, line, line, p, q)
            at = quantity.display().split("]", 1)[1]
            stencil = STENCILS[op]
            what = stencil.label.format(line=line, kind=kind)
            symbol = sympy.Symbol(what + (at if source is None else f"{at}[{source}]"),
                                  real=True)
            # The stencil's number is unique: the line name is a label only.
            self.code_names[symbol] = code_name(f"S{p}{q}{kind}", (len(self.stencils),), line)
            shape = self.program.nodes[line].shape.spatial
            spatial = None if stencil.to_scalar else (math.prod(shape), math.prod(shape))
            display = sympy.Function(what)(source, *operands) if source is not None else symbol
            self._phase(p, q).append(Assignment(symbol, display, quantity, line,
                                     Stencil(op, source, window, scale, operands,
                                             diagonal), spatial))
            if quantity.on_point:
                self._register_twins(symbol, quantity, stencil=True)
            self.stencils[key] = symbol
        return self.stencils[key]

    def fail(self, message: str, line: str) -> DeriveError:
        return DeriveError(message, self.program.nodes[line].pos)

    # -- internals ------------------------------------------------------------------------------
    def _index(self, name: str) -> int:
        return list(self.program.nodes).index(name)

    def _phase(self, p: int, q: int) -> list[Assignment]:
        # Points 1 and 3 are the same input: computed once per input, not per pair.
        return self.point if {p, q} <= {1, 3} else self.pair

    def _twin(self, expr: sympy.Expr) -> sympy.Expr:
        return expr.xreplace(self.twins)

    def _define(self, key: Quantity) -> sympy.Expr:
        expr, line = self._open(key)
        if isinstance(expr, int):
            expr = sympy.Integer(expr)
        spatial_line = bool(self.program.nodes[key.a].shape.spatial)
        if (expr.is_Number and (expr == 0 or not spatial_line)) or (
                expr.is_Symbol and expr not in (self.sq, self.sq2)):
            # An alias: no new assignment. The input's x·x is not one: it is no point
            # quantity the pair phase can read (K[x](x,x) = x·x when d = 1). Nor is a
            # nonzero constant of a spatial line (layer_norm's variance, sign's): the
            # stencils read it as an array, and zero padding makes their results vary
            # by position.
            return expr
        display = key.display()
        symbol = sympy.Symbol(display, real=True)
        self.code_names[symbol] = key.code_name(self._index)
        nodes = self.program.nodes
        pa, pb = (math.prod(nodes[n].shape.spatial) for n in (key.a, key.b))
        spatial = (pa, pb) if nodes[key.a].shape.spatial else None
        diag = None
        if (key.p, key.q) == (1, 3):
            diag = self.Q(key.kind, key.a, key.b, 1, 1)
            self.code_names[symbol] = code_name(
                f"W{key.kind}", (self._index(key.a), self._index(key.b)), key.a, key.b)
        self._phase(key.p, key.q).append(Assignment(symbol, expr, key, line, None, spatial, diag))
        if key.on_point:
            self._register_twins(symbol, key)
        return symbol

    def _register_twins(self, symbol: sympy.Symbol, key: Quantity,
                        stencil: bool = False) -> None:
        # A per-input quantity at x has the same quantity at x' (point 2) and at the
        # copy x̃ (point 3); without a twin, K(x',x') would silently read K(x,x).
        at_x = Quantity(key.kind, key.a, key.b, 1, 1).display().split("]", 1)[1]
        for point, twins in ((2, self.twins), (3, self.twins3)):
            twin_key = Quantity(key.kind, key.a, key.b, point, point)
            at = twin_key.display().split("]", 1)[1]
            twin = sympy.Symbol(symbol.name.replace(at_x, at, 1), real=True)
            twins[symbol] = twin
            # A stencil's twin: its family and number, then the point (one number more
            # than any stencil's name has, so it meets none of them).
            family, number = self.code_names[symbol].split("_")[:2]
            self.code_names[twin] = (code_name(family, (int(number), point), key.a) if stencil
                                     else twin_key.code_name(self._index))

    def _open(self, key: Quantity) -> tuple[sympy.Expr, str]:
        nodes = self.program.nodes
        a, b = nodes[key.a], nodes[key.b]
        ra, rb = RULES[a.op], RULES[b.op]
        # Linear ops are opened first: the covariance is linear in them. A pool meets
        # only the same pool of another line, so the other side's sums, concats and
        # norms are opened before it (p1 against 2·p1 + p2 is then p1 against p1, p2).
        linear = Opening.LINEAR
        pool_first = ra.mixes_positions and rb.opening is linear and not rb.mixes_positions
        if ra.opening is linear and not pool_first:
            return ra.derive(self, key.kind, a, key.b, key.p, key.q), a.name
        if rb.opening is linear:
            return rb.derive(self, key.kind, b, key.a, key.q, key.p), b.name
        if ra.opening is Opening.OWN:  # its own moments against any other line
            return ra.derive(self, key.kind, a, key.b, key.p, key.q), a.name
        if rb.opening is Opening.OWN:
            return rb.derive(self, key.kind, b, key.a, key.q, key.p), b.name
        kinds = {ra.opening, rb.opening}
        if kinds == {Opening.AFFINE} or kinds == {Opening.INPUT}:
            if a.name != b.name:
                # Two different fresh weight draws (or never: one input): independent.
                return sympy.Integer(0), a.name
            return ra.derive(self, key.kind, a, key.p, key.q), a.name
        if kinds == {Opening.AFFINE, Opening.INPUT}:
            return sympy.Integer(0), a.name  # fresh zero-mean weights decorrelate
        if Opening.INPUT in kinds:
            inp, other = (a, b) if ra.opening is Opening.INPUT else (b, a)
            raise self.fail(
                f"'{other.name}' would need its correlation with the raw input '{inp.name}', "
                "which is not Gaussian; combine it with dense(...) of the input instead",
                other.name,
            )
        pointwise = RULES["nonlin"]
        return pointwise.derive(self, key.kind, a, b, key.p, key.q), (
            a.name if ra.opening is Opening.POINTWISE else b.name
        )


# Python frames per line along the longest path: the derivation recurses once per line
# (Q → _define → _open → a rule → Q: 4 to 6 frames); 10 leaves room for any rule.
FRAMES_PER_LINE = 10


@contextlib.contextmanager
def _recursion_room(program: Program) -> Iterator[None]:
    """Python's recursion limit raised, while deriving, by the frames the longest path
    needs: the default (1000) was met near 200 lines. The recursion is plain Python
    calls, so the C stack is not what bounds it."""
    chain: dict[str, int] = {}
    for node in program.nodes.values():
        chain[node.name] = 1 + max((chain[i] for i in node.inputs), default=0)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + FRAMES_PER_LINE * max(chain.values(), default=0))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def derive(program: Program) -> Recursion:
    """Derive K and Θ of the program's output at (x, x')."""
    with _recursion_room(program):
        return _derive(program)


def _derive(program: Program) -> Recursion:
    d = Derivation(program)
    out = program.output
    outputs = {"nngp": d.Q("K", out, out, 1, 2), "ntk": d.Q("T", out, out, 1, 2),
               # K(x,x) and Θ(x,x) from the per-input formulas, exact at correlation 1:
               # the Gram diagonal is taken from these (acos near 1 would amplify
               # rounding of the pair recursion to ~1e-8).
               "nngp_diag": d.Q("K", out, out, 1, 1), "ntk_diag": d.Q("T", out, out, 1, 1)}
    if program.input_shape.spatial and program.nodes[out].shape.spatial:
        raise d.fail("the output of a convolutional network must be a vector: end it with "
                     "flatten(...) or a global pool, then dense", out)
    return Recursion(program, d.point, d.pair, outputs, d.twins, d.code_names, d.dot, d.sq,
                     d.sq2, d.twins3)

