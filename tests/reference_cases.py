"""The reference cases in tests/data/reference/ (see tests/data/README.md), and the
Neural Tangents ones written as ntkc specs.

Every test reads its fixtures from DATA_DIR, inside the repository: a fresh clone tests
itself. A missing fixture is a failure, never a skip."""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
REFERENCE_DIR = DATA_DIR / "reference"

# Cases for ops ntkc does not have yet, with the ops each one lacks. They are kept so the
# day an op lands its reference is already here; test_reference.py::test_all_cases_present
# asserts that this is exactly the set of cases whose ops are missing.
AWAITING_OPS: dict[str, frozenset[str]] = {
    # tensor-program cases (tp/README.md): weight-tied recurrent networks
    "tp/rnn_nngp_erf_rand_unequal_w1.2_u0.9_b0.3_v1.1": frozenset({"rnn"}),
    "tp/rnn_ntk_erf_avgpool_rand_w1.2_u0.9_b0.3_v1.1": frozenset({"rnn"}),
    "tp/rnn_ntk_erf_laststate_rand_w1.2_u0.9_b0.3_v1.1": frozenset({"rnn"}),
}


def load_case(name: str) -> dict:
    """A case by its path under REFERENCE_DIR without ``.json`` (``fc_relu_2``, ``tp/...``)."""
    return json.loads((REFERENCE_DIR / f"{name}.json").read_text())


def case_names(prefix: str) -> list[str]:
    return sorted(p.stem for p in REFERENCE_DIR.glob(f"{prefix}*.json"))


def all_case_names() -> list[str]:
    """Every case file under REFERENCE_DIR, subfolders included."""
    return sorted(p.relative_to(REFERENCE_DIR).with_suffix("").as_posix()
                  for p in REFERENCE_DIR.rglob("*.json"))


def case_ops(case: dict) -> set[str]:
    """The ops a case uses: its layer list, walked into residual/concat/product branches,
    or, for a tensor-program case, its architecture family (``rnn``)."""
    if "layers" not in case:
        return {case["architecture_family"]}
    ops: set[str] = set()

    def walk(layers: list) -> None:
        for op, attrs in layers:
            ops.add(op)
            for key in ("branch", "shortcut", "left", "right"):
                if isinstance(attrs.get(key), list):
                    walk(attrs[key])

    walk(case["layers"])
    return ops


def _fmt(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return v if isinstance(v, str) else repr(v)


class _Writer:
    def __init__(self):
        self.lines: list[str] = []
        self.count = 0

    def emit(self, op: str, src: str, attrs: dict) -> str:
        self.count += 1
        name = f"l{self.count}"
        if op == "attention":  # ntkc's attention is NT's with linear scaling only
            attrs = dict(attrs)
            assert attrs.pop("linear_scaling", True) is True, "attention needs linear_scaling"
        args = "".join(f", {k}={_fmt(v)}" for k, v in attrs.items())
        self.lines.append(f"{name} = {op}({src}{args})")
        return name

    def chain(self, layers: list, src: str) -> str:
        for op, attrs in layers:
            if op == "residual":
                a = self.chain(attrs["branch"], src)
                b = self.chain(attrs["shortcut"], src)
                self.count += 1
                name = f"l{self.count}"
                self.lines.append(f"{name} = {a} + {b}")
                src = name
            elif op == "concat":
                a = self.chain(attrs["left"], src)
                b = self.chain(attrs["right"], src)
                src = self.emit("concat", f"{a}, {b}", {})
            elif op == "product":  # NT's FanInProd: ntkc writes it p = a * b
                a = self.chain(attrs["left"], src)
                b = self.chain(attrs["right"], src)
                self.count += 1
                src = f"l{self.count}"
                self.lines.append(f"{src} = {a} * {b}")
            else:
                src = self.emit(op, src, attrs)
        return src


def spec_text(case: dict) -> str:
    shape = case["input_shape"]
    kind = {1: "vector", 2: "sequence", 3: "image"}[len(shape)]
    w = _Writer()
    out = w.chain(case["layers"], "x")
    head = [f"network {case['name']}", f"parameterization {case['parameterization']}",
            f"input x : {kind}[{', '.join(map(str, shape))}]"]
    return "\n".join(head + w.lines + [f"output {out}"]) + "\n"
