"""What a rule declares about its op, and the registry the rest of the compiler reads.

A rule file under rules/ builds one Rule (or a few, for a family such as the pools) and
registers it. Everything else asks the registry: the builder (which names a spec may
call, with which arguments), the passes (shapes, which lines must be Gaussian), the
derivation (how a line is opened, its K/Θ rule), the structure pass (what each stencil
reads) and the finite-width target (the op's forward at finite width).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # sentinel: an argument without default


class ArgKind(enum.Enum):
    NUMBER = "number"  # a number or an expression in params
    INT = "int"  # a non-negative integer literal
    INTS = "ints"  # a list of integers (filter, window, stride)
    CHOICE = "choice"  # one of Arg.choices, written bare (padding=same)
    NUMBER_LIST = "number_list"  # a list of numbers (polynomial coefficients)


@dataclass(frozen=True)
class Arg:
    """One argument of an op. check: a condition of the op's own on the built value (a
    number, or an expression in params), checked after its kind's: it returns why the value
    is wrong, which the builder reports at the argument as "{op}'s {name} {why}", or None."""

    name: str
    kind: ArgKind
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None


class Opening(enum.Enum):
    """How the derivation opens a covariance of this op's line with another line."""

    INPUT = "input"  # the network input: K is x·x'/d, Θ is 0
    AFFINE = "affine"  # fresh zero-mean weights: correlates only with itself
    POINTWISE = "pointwise"  # φ of a Gaussian: a Gaussian expectation
    LINEAR = "linear"  # a linear map of other lines (sums, concat, pools, norms): opened first
    # Its own rule against every line but a linear one (those are opened before it), e.g. a
    # product of lines, whose moments are neither a fresh layer's nor a pointwise φ's
    OWN = "own"


class Structure(str, enum.Enum):
    """Which position pairs a per-pair array holds (ntkc.semantics.structure)."""

    SCALAR = "scalar"  # a vector line: one number
    DIAG = "diag"  # same-position pairs only: P entries
    FULL = "full"  # every pair of positions: P² entries

    # printed as its value ("diag"), in generated comments and `ntkc show`, on every Python
    __str__ = str.__str__
    __format__ = str.__format__


@dataclass(frozen=True)
class StencilKind:
    """A value computed from a whole array (an Assignment's ``stencil``), as a rule emits
    it through ``eng.stencil(name, ...)``.

    reads: structure transfer, the structure this stencil needs of its source array given
    the structure asked of its output; None for a stencil that reads no array (the input's
    channel sums). label: its name in formulas, a format of {line} and {kind} ("K"/"T").
    to_scalar: it sums positions away (one number per pair of inputs). matrix: its output
    is one input's P×P matrix, always full, emitted at points (1, 1): computed in the point
    phase and kept in the input's point row, where the pair phase reads it at x and x'
    (attention's weights; a stencil reads such matrices as its ``operands``). The codegen
    backends print each kind (ntkc.codegen.spatial_stages, emit_spatial, cuda_spatial and
    the numpy reference)."""

    name: str
    reads: Callable[[Structure], Structure] | None
    label: str
    to_scalar: bool = False
    matrix: bool = False


@dataclass(frozen=True)
class FiniteForward:
    """The op at finite width: what ``ntkc compile --target jax`` (ntkc.codegen.jax_target)
    prints for a line of it.

    forward(jax, p, *inputs, **static) -> array: the line's output from its inputs'
    (arrays (n, *spatial, channels), channels last, in the order of node.inputs; the input
    line gets the network's input), with p its trainable arrays (a dict, {} for none) and
    jax the jax module, passed in: jax is optional, and no rule file imports it. Its
    source is pasted into the generated module, where it runs, so it may read only its
    arguments and builtins: the codegen refuses a forward that reads a global.
    static(node, program) -> dict: forward's keyword arguments, as ints, floats, strings,
    bools, None, tuples of these, sympy expressions in the spec's params (printed as jax
    code that reads the spec_params the module's caller gives) or sympy.Lambda (a
    pointwise function, printed as a lambda). Default: none.
    params(node, program, c_in, c_out) -> {name: (shape, std)}: the trainable arrays
    init draws for the line, N(0, std²) each; c_in (the inputs' channels) and c_out (the
    line's) are sympy expressions in the chosen widths, shape a tuple and std an
    expression of them and the spec's params. Default: none.
    channels(node, program, c_in, width) -> the line's channels, a sympy expression.
    width is the line's own width symbol when its op takes a ``width`` argument (its
    width is chosen at init, ``init(key, width=...)``), else None. Default: c_in[0].
    same_channels: its inputs must have equal channels (lincomb, products): the codegen
    ties their widths.
    random: forward also takes ``key``, a jax PRNG key of its own (dropout's masks), split
    from the key apply is given: one draw per call, independent between lines.
    """

    forward: Callable[..., Any]
    static: Callable[..., dict[str, Any]] | None = None
    params: Callable[..., dict[str, tuple[tuple[Any, ...], Any]]] | None = None
    channels: Callable[..., Any] | None = None
    same_channels: bool = False
    random: bool = False


@dataclass(frozen=True)
class Rule:
    """Everything the compiler knows about one op.

    shape(node, in_shapes, program) -> Shape, raising ValueError with the message a user
    sees (at the line); derive(eng, kind, node, ...) -> the line's K ("K") or Θ ("T")
    rule: (eng, kind, node, p, q) for INPUT and AFFINE (the line with itself), (eng, kind,
    node, other, p, q) for LINEAR (against any line) and OWN (against any line that is not
    LINEAR), (eng, kind, a, b, p, q) for POINTWISE. infix: the binary operator that writes
    the op between two line names in a spec ("*": p = a * b; callable is then False).
    """

    op: str
    opening: Opening
    args: tuple[Arg, ...]
    n_inputs: int | None  # None: one or more
    shape: Callable[..., Any]
    derive: Callable[..., Any]
    gaussian: bool = True  # the output is Gaussian (LINEAR: when all its inputs are)
    needs_gaussian: bool = False  # its input must be Gaussian (checked at the line)
    callable: bool = True  # called by name in a spec; input, lincomb, nonlin have syntax
    infix: str | None = None  # written `a OP b` between two lines (see above)
    mixes_positions: bool = False  # its covariance with another line needs the same op
    stencils: tuple[StencilKind, ...] = ()  # the stencils its derive emits
    finite: FiniteForward | None = None  # its forward at finite width (jax target)
    doc: str = ""


RULES: dict[str, Rule] = {}
STENCILS: dict[str, StencilKind] = {}


def register(rule: Rule) -> Rule:
    if rule.op in RULES:
        raise RuntimeError(f"rule {rule.op!r} registered twice")
    RULES[rule.op] = rule
    for s in rule.stencils:
        if STENCILS.setdefault(s.name, s) is not s:
            raise RuntimeError(f"stencil {s.name!r} registered twice")
    return rule


def callable_ops() -> frozenset[str]:
    """The op names a spec may call: ``g = dense(...)``."""
    return frozenset(op for op, r in RULES.items() if r.callable)
