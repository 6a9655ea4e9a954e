"""Spec text → typed AST (ntkc.ast), using the Lark grammar in grammar/ntk.lark.

The text is only ever tokenised and parsed: nothing in it is evaluated.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .errors import Pos, Reporter


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
class _ToAst(Transformer):
    def start(self, meta, stmts):
        return ast.Module(list(stmts))

    def network(self, meta, c):
        return ast.NetworkDecl(str(c[0]), _meta_pos(meta))

    def parameterization(self, meta, c):
        return ast.ParameterizationDecl(str(c[0]), _pos(c[0]))

    def param(self, meta, c):
        return ast.ParamDecl(str(c[0]), c[1], _pos(c[0]))

    def input(self, meta, c):
        dims = tuple(int(t) for t in c[2:])
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
    return _ToAst().transform(tree)
