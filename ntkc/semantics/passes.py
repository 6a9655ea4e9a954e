"""Passes over the IR: shape inference, Gaussianity of nonlinearity inputs,
and unused definitions (warnings)."""

from __future__ import annotations

from ..errors import Reporter
from ..ir import Program
from .rules import RULES, Opening

# Lines along the longest path from the input. The derivation recurses once per line of
# it (ntkc.semantics.derive raises Python's recursion limit to fit) and the time to the first
# kernel grows linearly with it (about 0.45 s per dense + relu layer on 2 cores: `ntkc
# bench --case mlp-depth`), so this bounds the work a spec can ask for, not the
# algorithm. 1024 is 512 dense + nonlinearity layers.
MAX_CHAIN = 1024


def infer_shapes(program: Program, r: Reporter) -> None:
    chain: dict[str, int] = {}
    for node in program.nodes.values():
        chain[node.name] = 1 + max((chain[i] for i in node.inputs), default=0)
        if chain[node.name] > MAX_CHAIN:
            raise r.fail(f"network too deep: '{node.name}' is {chain[node.name]} lines from the "
                         f"input along its longest path (at most {MAX_CHAIN})", node.pos)
        if node.op == "input":
            continue
        in_shapes = [program.nodes[i].shape for i in node.inputs]
        try:
            node.shape = RULES[node.op].shape(node, in_shapes, program)
        except ValueError as e:
            raise r.fail(str(e), node.pos) from None


def gaussian_lines(program: Program) -> dict[str, bool]:
    """Which lines are jointly Gaussian over the random weights (legal φ inputs)."""
    out: dict[str, bool] = {}
    for node in program.nodes.values():
        rule = RULES[node.op]
        if rule.opening is Opening.LINEAR:
            out[node.name] = rule.gaussian and all(out[i] for i in node.inputs)
        else:
            out[node.name] = rule.gaussian
    return out


def _describe(program: Program, name: str) -> str:
    node = program.nodes[name]
    what = {"input": "the raw input", "concat": "a concat", "lincomb": "a linear combination"}
    label = what.get(node.op) or f"the output of {node.attrs.get('label', node.op)}"
    return f"'{name}' is {label} (line {node.pos.line})"


def check_gaussian_inputs(program: Program, r: Reporter) -> None:
    gaussian = gaussian_lines(program)
    for node in program.nodes.values():
        if not RULES[node.op].needs_gaussian:
            continue
        (src,) = node.inputs
        if not gaussian[src]:
            what = node.attrs.get("label", node.op)
            r.error(
                f"{what} needs a Gaussian input (the output of dense, a linear combination of "
                f"such lines, or layer_norm of one); {_describe(program, src)}",
                node.pos,
            )
    r.raise_if_errors()


def warn_unused(program: Program, r: Reporter, nonlin_defs: dict, used: set[str]) -> None:
    live = {program.output}
    for node in reversed(list(program.nodes.values())):
        if node.name in live:
            live.update(node.inputs)
    for node in program.nodes.values():
        if node.name not in live:
            r.warn(f"'{node.name}' is never used by the output", node.pos)
    for name, p in program.params.items():
        if name not in used:
            r.warn(f"param '{name}' is never used", p.pos)
    for name, (_, pos, _) in nonlin_defs.items():
        if name not in used:
            r.warn(f"nonlin '{name}' is never used", pos)
