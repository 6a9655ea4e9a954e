"""The Neural Tangents reference cases (../shared/reference/) written as ntkc specs."""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


def load_case(name: str) -> dict:
    return json.loads((REFERENCE_DIR / f"{name}.json").read_text())


def case_names(prefix: str) -> list[str]:
    return sorted(p.stem for p in REFERENCE_DIR.glob(f"{prefix}*.json"))


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
