"""Spec expressions → sympy objects, built node by node from the syntax tree.

This is the only place spec arithmetic becomes sympy, and it never goes
through text: numbers become exact Rationals, names must be declared params
(or the nonlinearity's variable), functions come from a fixed whitelist.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import sympy

from ..errors import Reporter
from . import ast


def _sigmoid(z):
    return 1 / (1 + sympy.exp(-z))


# name → (arity, constructor). The whitelist of functions a user nonlin may call.
FUNCTIONS: dict[str, tuple[int | None, Callable[..., sympy.Expr]]] = {
    "exp": (1, sympy.exp),
    "log": (1, sympy.log),
    "sqrt": (1, sympy.sqrt),
    "sin": (1, sympy.sin),
    "cos": (1, sympy.cos),
    "tan": (1, sympy.tan),
    "tanh": (1, sympy.tanh),
    "sinh": (1, sympy.sinh),
    "cosh": (1, sympy.cosh),
    "atan": (1, sympy.atan),
    "erf": (1, sympy.erf),
    "abs": (1, sympy.Abs),
    "sigmoid": (1, _sigmoid),
    "softplus": (1, lambda z: sympy.log(1 + sympy.exp(z))),
    "max": (None, sympy.Max),
    "min": (None, sympy.Min),
}


MAX_EXPONENT = 64  # |n| in u^n when u holds a param or the variable
MAX_BITS = 1100  # |log2| of an exact number: past float64's range either way


def finite_real(value: sympy.Expr) -> bool:
    """False for a number that is not real or not finite in float64; True otherwise
    (an expression of params is checked where their values are known)."""
    if not value.is_number:
        return True
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(f)


def _power(left: sympy.Expr, right: sympy.Expr, n: ast.BinOp, reporter: Reporter) -> sympy.Expr:
    """left ^ right, refusing exponents that would make sympy crawl (2^(10^9), z^10^6)."""
    if right.is_Number:
        limit = MAX_BITS if left.is_number else MAX_EXPONENT
        if abs(right) > limit:
            raise reporter.fail(f"exponent {right} too large (at most {limit} in absolute "
                                "value here)", n.right.pos)
    value = left**right
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise reporter.fail("not a finite number (a power of zero with a negative exponent)",
                            n.pos)
    if value.is_number and value.is_extended_real is False:
        raise reporter.fail("not a real number (a fractional power of a negative number)",
                            n.pos)
    exponent = value.exp if value.is_Pow else None
    if exponent is not None and exponent.is_Number and not value.is_number and (
            abs(exponent) > MAX_EXPONENT):
        raise reporter.fail(f"exponent {exponent} too large (at most {MAX_EXPONENT})", n.pos)
    return value


def _bounded(value: sympy.Expr, n: ast.BinOp, reporter: Reporter) -> sympy.Expr:
    """An exact rational stays within float64's range (so products of 1e300 cannot grow
    without bound), and no power of the variable past MAX_EXPONENT builds up."""
    if value.is_Rational and value != 0:
        bits = abs(value.p).bit_length() - value.q.bit_length()
        if abs(bits) > MAX_BITS:
            raise reporter.fail("number out of float64's range", n.pos)
    elif value.is_Pow and value.exp.is_Number and abs(value.exp) > MAX_EXPONENT:
        raise reporter.fail(f"exponent {value.exp} too large (at most {MAX_EXPONENT})", n.pos)
    return value


def number(node: ast.Num) -> sympy.Rational:
    """A numeric literal, exactly (0.05 is 1/20, not a binary float)."""
    f = Fraction(node.text)
    return sympy.Rational(f.numerator, f.denominator)


def to_sympy(
    e: ast.Expr,
    names: dict[str, sympy.Expr],
    reporter: Reporter,
    what: str,
    functions: bool = False,
) -> sympy.Expr:
    """Build the sympy expression of ``e``; ``names`` are the symbols it may use."""

    def go(n: ast.Expr) -> sympy.Expr:
        if isinstance(n, ast.Num):
            return number(n)
        if isinstance(n, ast.Name):
            if n.id in names:
                return names[n.id]
            raise reporter.fail(f"{what} may not use '{n.id}': it is not a param", n.pos)
        if isinstance(n, ast.Neg):
            return -go(n.operand)
        if isinstance(n, ast.BinOp):
            left, right = go(n.left), go(n.right)
            if n.op == "+":
                return _bounded(left + right, n, reporter)
            if n.op == "-":
                return _bounded(left - right, n, reporter)
            if n.op == "*":
                return _bounded(left * right, n, reporter)
            if n.op == "/":
                if right == 0:
                    raise reporter.fail("division by zero", n.pos)
                return _bounded(left / right, n, reporter)
            return _power(left, right, n, reporter)
        if isinstance(n, ast.Call) and functions:
            if n.func not in FUNCTIONS:
                raise reporter.fail(
                    f"unknown function '{n.func}' (allowed: {', '.join(sorted(FUNCTIONS))})",
                    n.func_pos,
                )
            arity, make = FUNCTIONS[n.func]
            if n.kwargs:
                raise reporter.fail(f"{n.func} takes no keyword arguments", n.kwargs[0].pos)
            if (arity is not None and len(n.args) != arity) or (arity is None and not n.args):
                raise reporter.fail(
                    f"{n.func} takes {arity or 'one or more'} argument(s), got {len(n.args)}",
                    n.func_pos,
                )
            return make(*(go(a) for a in n.args))
        if isinstance(n, ast.Call):
            raise reporter.fail(f"{what} must be a number or a param, not a call", n.pos)
        raise reporter.fail(f"{what} must be a number or a param, not a list", n.pos)

    return go(e)


def linear_terms(
    e: ast.Expr, is_layer: Callable[[str], bool], scalar: Callable[[ast.Expr], sympy.Expr],
    reporter: Reporter,
) -> dict[str, sympy.Expr]:
    """Read ``a·u + c·v - ...`` as {line: coefficient}; raises on anything non-linear.
    Coefficients that cancel to 0 are kept (the line still has a shape)."""

    def go(n: ast.Expr) -> dict[str, sympy.Expr] | sympy.Expr:
        if isinstance(n, ast.Name) and is_layer(n.id):
            return {n.id: sympy.Integer(1)}
        if not _mentions_layer(n, is_layer):  # a coefficient: (1 + 2), 2^0.5, w / 3
            return scalar(n)
        if isinstance(n, ast.Neg):
            inner = go(n.operand)
            return {k: -v for k, v in inner.items()} if isinstance(inner, dict) else -inner
        if isinstance(n, ast.BinOp):
            left, right = go(n.left), go(n.right)
            ld, rd = isinstance(left, dict), isinstance(right, dict)
            if n.op in "+-":
                if not (ld and rd):
                    const = n.right if ld else n.left
                    raise reporter.fail(
                        "a linear combination of lines cannot add a constant", _pos(const)
                    )
                sign = 1 if n.op == "+" else -1
                out = dict(left)
                for k, v in right.items():
                    out[k] = out.get(k, 0) + sign * v
                return out
            if n.op == "*" and ld != rd:
                terms, c = (left, right) if ld else (right, left)
                return {k: v * c for k, v in terms.items()}
            if n.op == "/" and ld and not rd:
                return {k: v / right for k, v in left.items()}
            if n.op in "*/" and not ld and not rd:
                return left * right if n.op == "*" else left / right
            raise reporter.fail(
                "not linear: lines can only be added, subtracted and scaled by numbers or params",
                n.pos,
            )
        if isinstance(n, ast.Call):
            raise reporter.fail(
                f"'{n.func}(...)' inside an expression: give it its own line (one op per line)",
                n.pos,
            )
        return scalar(n)

    out = go(e)
    if not isinstance(out, dict):
        raise reporter.fail("this line combines no layers", _pos(e))
    return out  # zero coefficients included: the builder decides (g - g is a zero line)


def _pos(n: ast.Expr):
    return n.pos


def _mentions_layer(n: ast.Expr, is_layer: Callable[[str], bool]) -> bool:
    """Whether n names a line (or holds a call, which go() reports)."""
    stack = [n]
    while stack:
        m = stack.pop()
        if isinstance(m, ast.Name) and is_layer(m.id) or isinstance(m, ast.Call):
            return True
        if isinstance(m, ast.BinOp):
            stack += [m.left, m.right]
        elif isinstance(m, ast.Neg):
            stack.append(m.operand)
    return False


# -- user nonlinearities: is E[φ(u)²] finite for every Gaussian u? ---------------------------
# Sound and simple: a body is accepted only when each piece is provably harmless for every
# real z; anything else is refused with the reason (a pole, log/sqrt of a value that can be
# ≤ 0, tan, exp of something growing like |z|^p with p ≥ 2). Only assumption queries and
# real-root counts of polynomials: no solver, so it ends quickly.

_BOUNDED = (sympy.tanh, sympy.atan, sympy.erf, sympy.sin, sympy.cos, sympy.sign,
            sympy.Heaviside)


def _poly(e: sympy.Expr, z: sympy.Symbol) -> sympy.Poly | None:
    """e as a polynomial in z with rational coefficients, or None."""
    if not e.is_polynomial(z):
        return None
    try:
        p = sympy.Poly(e, z)
    except sympy.PolynomialError:
        return None
    return p if p.domain.is_ZZ or p.domain.is_QQ else None


def _positive(e: sympy.Expr, z: sympy.Symbol, strict: bool = True) -> bool:
    """Provably e > 0 (strict) or e ≥ 0 for every real z and every real param."""
    if e.is_positive or (not strict and e.is_nonnegative):
        return True
    p = _poly(e, z)
    return p is not None and p.count_roots() == 0 and bool(e.subs(z, 0) > 0)


def _never_zero(e: sympy.Expr, z: sympy.Symbol) -> bool:
    if e.is_positive or e.is_negative:
        return True
    p = _poly(e, z)
    return p is not None and p.degree() >= 0 and p.count_roots() == 0


def _growth(e: sympy.Expr, z: sympy.Symbol) -> float:
    """p with |e| ≤ C·(1 + |z|)^p for all real z; inf when not shown polynomial."""
    if not e.has(z):
        return 0.0
    if e == z:
        return 1.0
    if isinstance(e, _BOUNDED):
        return 0.0
    if e.is_Add or isinstance(e, (sympy.Abs, sympy.Max, sympy.Min)):
        return max(_growth(a, z) for a in e.args)
    if e.is_Mul:
        return sum(_growth(a, z) for a in e.args)
    if e.is_Pow:
        base, n = e.args
        if not (n.is_number and n.is_real):
            return math.inf
        if n >= 0:
            return float(n) * _growth(base, z)
        # 1/base is bounded when base ≥ 1 or base is a polynomial with no real root
        bounded = _positive(base - 1, z, strict=False) or (
            _poly(base, z) is not None and _never_zero(base, z))
        return 0.0 if bounded else math.inf
    if isinstance(e, sympy.exp):
        return 0.0 if _bounded_above(e.args[0], z) else math.inf
    if isinstance(e, (sympy.sinh, sympy.cosh)):
        return 0.0 if _growth(e.args[0], z) == 0 else math.inf
    if isinstance(e, sympy.log) and _positive(e.args[0] - 1, z, strict=False):
        # 1 ≤ b ≤ poly·Π exp(h): log b grows no faster than z or the h's
        inner = [_growth(a.args[0], z) for a in e.args[0].atoms(sympy.exp)]
        return max([1.0, *inner]) if _growth_ok_for_log(e.args[0], z) else math.inf
    return math.inf


def _growth_ok_for_log(b: sympy.Expr, z: sympy.Symbol) -> bool:
    # b with each exp(h) taken as a constant must grow polynomially
    frozen = b.xreplace({a: sympy.Integer(2) for a in b.atoms(sympy.exp)})
    return _growth(frozen, z) < math.inf


def _bounded_above(h: sympy.Expr, z: sympy.Symbol) -> bool:
    """h ≤ C for all real z (so exp(h) is bounded)."""
    if h.is_polynomial(z):
        p = sympy.Poly(h, z)
        return p.degree() <= 0 or (p.degree() % 2 == 0 and bool(p.LC().is_negative))
    return _growth(h, z) == 0


def _exp_problem(h: sympy.Expr, z: sympy.Symbol, what: str) -> str | None:
    if h.is_polynomial(z):
        p = sympy.Poly(h, z)
        if p.degree() <= 1 or (what == "exp" and p.degree() % 2 == 0 and p.LC().is_negative):
            return None
        return (f"{what}({h}) grows like exp(c·z^{p.degree()}), and E[exp(c·u^p)] is "
                "infinite for p > 2 (for p = 2 once Var u ≥ 1/(4c))")
    g = _growth(h, z)
    if g < 2:
        return None
    if g == math.inf:
        return (f"{what}({h}): its argument is not shown to grow at most polynomially "
                "(a nested exponential grows faster than any exp(c·z²))")
    return f"{what}({h}) grows like exp(c·|z|^{g:g}), faster than a Gaussian decays"


def _piece_problem(e: sympy.Expr, z: sympy.Symbol) -> str | None:
    if isinstance(e, sympy.tan):
        return f"tan({e.args[0]}) has poles"
    if isinstance(e, sympy.log) and not _positive(e.args[0], z):
        return f"log({e.args[0]}): the argument is not provably positive for every real z"
    if isinstance(e, sympy.exp):
        return _exp_problem(e.args[0], z, "exp")
    if isinstance(e, (sympy.sinh, sympy.cosh)):
        return _exp_problem(e.args[0], z, type(e).__name__)
    if not e.is_Pow:
        return None
    base, n = e.args
    if n.has(z):
        if base.is_number and base.is_positive:
            return _exp_problem(n * sympy.log(base), z, "exp")
        return f"{e}: z in the exponent of a base that is not a positive number"
    if not (n.is_number and n.is_real):
        return f"{e}: a power of an expression in z needs a numeric exponent"
    if n.is_negative and not _never_zero(base, z):
        return f"1/({base}) has a pole: {base} is not shown to be nonzero for every real z"
    if not n.is_integer and not _positive(base, z, strict=bool(n.is_negative)):
        return f"{e}: a fractional power of {base}, which can be negative"
    return None


def nonlin_problem(body: sympy.Expr, z: sympy.Symbol) -> str | None:
    """Why E[φ(u)²] or E[φ′(u)²] (the NTK's factor) may be infinite, or None."""
    for label, f in (("φ", body), ("φ′", sympy.diff(body, z))):
        for piece in sympy.preorder_traversal(f):
            why = _piece_problem(piece, z) if piece.has(z) else None
            if why is not None:
                return (f"E[{label}(u)²] is infinite for Gaussian u, or ntkc cannot prove it "
                        f"finite: {why}")
    return None
