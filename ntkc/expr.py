"""Spec expressions → sympy objects, built node by node from the syntax tree.

This is the only place spec arithmetic becomes sympy, and it never goes
through text: numbers become exact Rationals, names must be declared params
(or the nonlinearity's variable), functions come from a fixed whitelist.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import sympy

from . import ast
from .errors import Reporter


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
                return left + right
            if n.op == "-":
                return left - right
            if n.op == "*":
                return left * right
            if n.op == "/":
                if right == 0:
                    raise reporter.fail("division by zero", n.pos)
                return left / right
            return left**right
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
    """Read ``a·u + c·v - ...`` as {line: coefficient}; raises on anything non-linear."""

    def go(n: ast.Expr) -> dict[str, sympy.Expr] | sympy.Expr:
        if isinstance(n, ast.Name) and is_layer(n.id):
            return {n.id: sympy.Integer(1)}
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
    return {k: v for k, v in out.items() if v != 0}


def _pos(n: ast.Expr):
    return n.pos
