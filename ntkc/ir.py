"""The typed program ntkc compiles: one Node per spec line, in order (SSA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from .errors import Pos


@dataclass(frozen=True)
class Shape:
    """Shape of one input's features: spatial dims (empty for vectors) and channels.

    ``channels`` is None when the width of a hidden layer was not given (it only
    matters under the standard parameterization), or, for the input, when its size is
    open (``vector[*]``: the data gives it, at kernel time)."""

    kind: str  # "vector" | "sequence" | "image"
    spatial: tuple[int, ...]
    channels: int | None


@dataclass(frozen=True)
class Param:
    name: str
    symbol: sympy.Symbol
    default: float
    pos: Pos


@dataclass
class Node:
    name: str
    op: str  # key into ntkc.semantics.rules.RULES
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    pos: Pos
    shape: Shape | None = None


@dataclass
class Program:
    network: str
    parameterization: str  # "ntk" | "standard"
    params: dict[str, Param]
    nodes: dict[str, Node]  # in program order; the input node first
    input: str
    output: str
    filename: str
    source: str
    warnings: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> Shape:
        shape = self.nodes[self.input].shape
        assert shape is not None
        return shape

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for src in node.inputs:
                out[src].append(node.name)
        return out
