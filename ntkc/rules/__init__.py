"""The registry of translation rules: one Rule per op, registered by name.

A rule carries everything the compiler needs to know about its op: the
arguments it takes (for the builder's checks), how it maps shapes, whether
its output is Gaussian (a legal input to a nonlinearity), and its
translation rule for the covariance K and the NTK Θ (ntkc.derive calls it).

Rule kinds tell the derivation engine how an op is opened:
  input      the network input: K is x·x'/d, Θ is 0
  affine     fresh zero-mean weights (dense): correlates only with itself
  pointwise  a nonlinearity of a Gaussian: a Gaussian expectation
  linear     a linear map of other lines (sums, concat, layer_norm)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..duals import REQUIRED  # one sentinel for every signature

__all__ = ["REQUIRED", "RULES", "Arg", "Rule", "register"]


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # "number" | "int" | "ints" | "choice" | "number_list"
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    op: str
    kind: str
    args: tuple[Arg, ...]
    n_inputs: int | None  # None: one or more
    gaussian: bool
    shape: Callable[..., Any]
    derive: Callable[..., Any]
    doc: str = ""


RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    if rule.op in RULES:
        raise RuntimeError(f"rule {rule.op!r} registered twice")
    RULES[rule.op] = rule
    return rule


def _load_all() -> None:
    # Importing the rule modules registers them.
    from . import combine, conv, dense, inputs, layer_norm, nonlin, pool  # noqa: F401


_load_all()
