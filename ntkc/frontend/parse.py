"""Spec text → typed AST (ntkc.frontend.ast), using the Lark grammar in grammar/ntk.lark.

The text is only ever tokenised and parsed: nothing in it is evaluated.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.visitors import Transformer_NonRecursive

from ..errors import Pos, Reporter
from . import ast


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("ntkc.grammar").joinpath("ntk.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _pos(tok: Token) -> Pos:
    return Pos(tok.line, tok.column, tok.end_column)


def _meta_pos(meta) -> Pos:
    end = meta.end_column if meta.end_line == meta.line else None
    return Pos(meta.line, meta.column, end)


_BINOPS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "^"}


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    def start(self, meta, stmts):
        return ast.Module(list(stmts))

    def network(self, meta, c):
        return ast.NetworkDecl(str(c[0]), _meta_pos(meta))

    def parameterization(self, meta, c):
        return ast.ParameterizationDecl(str(c[0]), _pos(c[0]))

    def param(self, meta, c):
        return ast.ParamDecl(str(c[0]), c[1], _pos(c[0]))

    def open_size(self, meta, c):
        return None

    def input(self, meta, c):
        dims = tuple(None if t is None else int(t) for t in c[2:])
        return ast.InputDecl(str(c[0]), str(c[1]), dims, _pos(c[0]), _pos(c[1]))

    def nonlin(self, meta, c):
        return ast.NonlinDecl(str(c[0]), str(c[1]), c[2], _pos(c[0]))

    def assign(self, meta, c):
        return ast.Assign(str(c[0]), c[1], _pos(c[0]))

    def output(self, meta, c):
        return ast.OutputDecl(str(c[0]), _pos(c[0]))

    def number(self, meta, c):
        return ast.Num(str(c[0]), _pos(c[0]))

    def name(self, meta, c):
        return ast.Name(str(c[0]), _pos(c[0]))

    def neg(self, meta, c):
        return ast.Neg(c[0], _meta_pos(meta))

    def list(self, meta, c):
        return ast.ListLit(tuple(x for x in c if x is not None), _meta_pos(meta))

    def kwarg(self, meta, c):
        return ast.Kwarg(str(c[0]), c[1], _pos(c[0]))

    def call(self, meta, c):
        func, rest = c[0], c[1:]
        args = tuple(x for x in rest if not isinstance(x, ast.Kwarg))
        kwargs = tuple(x for x in rest if isinstance(x, ast.Kwarg))
        return ast.Call(str(func), args, kwargs, _meta_pos(meta), _pos(func))

    def __default__(self, data, children, meta):
        if data in _BINOPS:
            return ast.BinOp(_BINOPS[data], children[0], children[1], _meta_pos(meta))
        return super().__default__(data, children, meta)


# Bounds on what one statement may hold, so that no spec can exhaust the compiler's
# recursion, time or memory. Generous for real networks; each error says its limit.
MAX_NAME = 64  # characters in a name
MAX_NUMBER = 100  # characters in a number
MAX_NESTING = 64  # calls, powers and negations inside each other
# Function calls inside each other (a nonlin body): sympy's evaluation of nested
# functions of a symbol without assumptions grows exponentially with this depth
# (≈ 2× per level in code generation), so it is bounded far tighter.
MAX_CALLS = 8
MAX_TERMS = 256  # operands of one sum (+ -) or product (* /)
MAX_DEPTH = 400  # levels of the whole expression tree (nesting and chains together)
MAX_NODES = 4096  # operations and operands in one statement
_CHAINS = {"add": "sum", "sub": "sum", "mul": "product", "div": "product"}
_FLOAT_MAX = 1.7976931348623157e308


def _tree_pos(t: Tree) -> Pos:
    if not getattr(t.meta, "empty", True):
        return _meta_pos(t.meta)
    tok = next((x for x in t.scan_values(lambda v: isinstance(v, Token))), None)
    return _pos(tok) if tok is not None else Pos(1, 1)


def _check_number(tok: Token) -> str | None:
    text = str(tok)
    if len(text) > MAX_NUMBER:  # Fraction(text) would refuse or crawl
        return f"number too long ({len(text)} characters; at most {MAX_NUMBER})"
    if tok.type == "INT":
        return None
    mantissa, _, exponent = text.lower().partition("e")
    nonzero = any(c in "123456789" for c in mantissa)
    if exponent and abs(int(exponent)) > 400:  # Fraction(text) would hang: 10**exponent
        value = float("inf") if int(exponent) > 0 and nonzero else 0.0
    else:
        value = float(text)
    if value > _FLOAT_MAX or value == float("inf"):
        return f"number {text} is too large: literals must fit float64 (at most ~1.8e308)"
    if value == 0.0 and nonzero:
        return f"number {text} is too small: it underflows float64 (at least ~4.9e-324)"
    return None


def check_limits(tree: Tree, reporter: Reporter) -> None:
    """Names, literals and expression sizes within the bounds above (an iterative walk)."""
    for stmt in tree.children:
        if not isinstance(stmt, Tree):
            continue
        nodes = 0
        # (node, nesting, calls, depth, chain kind of the parent, id of the chain it continues)
        stack = [(stmt, 0, 0, 0, None, None)]
        chains: dict[int, list] = {}
        while stack:
            t, nesting, calls, depth, parent_chain, chain_id = stack.pop()
            nodes += 1
            if isinstance(t, Token):
                if t.type == "NAME" and len(t) > MAX_NAME:
                    raise reporter.fail(
                        f"name too long ({len(t)} characters; at most {MAX_NAME})", _pos(t))
                if t.type in ("NUMBER", "INT") and (msg := _check_number(t)):
                    raise reporter.fail(msg, _pos(t))
                continue
            chain = _CHAINS.get(t.data)
            if chain is not None and chain == parent_chain:
                chains[chain_id][1] += 1
            elif chain is not None:
                chain_id = id(t)
                chains[chain_id] = [t, 2, chain]
            else:
                chain_id = None
            if chain is None or chain != parent_chain:
                nesting += 1
            calls += t.data == "call"
            if calls > MAX_CALLS:
                raise reporter.fail(f"function calls nested too deeply (more than {MAX_CALLS} "
                                    "inside each other)", _tree_pos(t))
            if nesting > MAX_NESTING:
                raise reporter.fail(f"expression nested too deeply (more than {MAX_NESTING} "
                                    "levels of calls, powers and signs)", _tree_pos(t))
            if depth > MAX_DEPTH:
                raise reporter.fail(f"expression too deep (more than {MAX_DEPTH} levels): "
                                    "split it over several lines", _tree_pos(t))
            if nodes > MAX_NODES:
                raise reporter.fail(f"statement too large (more than {MAX_NODES} operations "
                                    "and operands)", _tree_pos(stmt))
            if chain is not None and chains[chain_id][1] > MAX_TERMS:
                root, _, kind = chains[chain_id]
                what = "terms in a sum" if kind == "sum" else "factors in a product"
                raise reporter.fail(f"too many {what} (at most {MAX_TERMS})", _tree_pos(root))
            for c in t.children:
                if c is not None:
                    stack.append((c, nesting, calls, depth + 1, chain, chain_id))


def _describe(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{tok}'"


def parse(source: str, reporter: Reporter) -> ast.Module:
    """Parse spec text; syntax errors raise SpecError with the position."""
    if not source.endswith("\n"):
        source += "\n"
    try:
        tree = _parser().parse(source)
    except UnexpectedToken as e:
        expected = sorted(x for x in e.expected if not x.startswith("_") and x != "$END")
        hint = f" (expected {', '.join(expected[:6])})" if expected else ""
        raise reporter.fail(
            f"syntax error: unexpected {_describe(e.token)}{hint}", Pos(e.line, e.column)
        ) from None
    except UnexpectedCharacters as e:
        raise reporter.fail(
            f"syntax error: unexpected character '{source[e.pos_in_stream]}'",
            Pos(e.line, e.column),
        ) from None
    except (UnexpectedEOF, UnexpectedInput) as e:
        line = getattr(e, "line", None)
        pos = Pos(line, getattr(e, "column", 1)) if isinstance(line, int) and line > 0 else None
        raise reporter.fail("syntax error: unexpected end of file", pos) from None
    check_limits(tree, reporter)
    return _ToAst().transform(tree)
