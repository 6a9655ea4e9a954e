"""Typed syntax tree of a spec file, built by ntkc.frontend.parse from the Lark tree."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Pos


@dataclass(frozen=True)
class Num:
    text: str
    pos: Pos


@dataclass(frozen=True)
class Name:
    id: str
    pos: Pos


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / ^
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class Neg:
    operand: Expr
    pos: Pos


@dataclass(frozen=True)
class ListLit:
    items: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...]
    pos: Pos
    func_pos: Pos


Expr = Num | Name | BinOp | Neg | ListLit | Call


@dataclass(frozen=True)
class NetworkDecl:
    name: str
    pos: Pos


@dataclass(frozen=True)
class ParameterizationDecl:
    name: str
    pos: Pos


@dataclass(frozen=True)
class ParamDecl:
    name: str
    default: Expr
    pos: Pos


@dataclass(frozen=True)
class InputDecl:
    name: str
    kind: str
    dims: tuple[int | None, ...]  # None: `*`, open (vector[*])
    pos: Pos
    kind_pos: Pos


@dataclass(frozen=True)
class NonlinDecl:
    name: str
    var: str
    body: Expr
    pos: Pos


@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class OutputDecl:
    name: str
    pos: Pos


Stmt = NetworkDecl | ParameterizationDecl | ParamDecl | InputDecl | NonlinDecl | Assign | OutputDecl


@dataclass
class Module:
    statements: list[Stmt] = field(default_factory=list)
