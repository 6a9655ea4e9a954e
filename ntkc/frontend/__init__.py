"""The front of the pipeline: spec text → checked, shape-annotated Program."""

from __future__ import annotations

from pathlib import Path

from ..errors import Reporter
from ..ir import Program
from ..semantics.passes import check_gaussian_inputs, infer_shapes, warn_unused
from .build import Builder
from .parse import parse


def program_from_text(source: str, filename: str = "<spec>") -> Program:
    """Parse, build and check a spec; raises SpecError with positions."""
    reporter = Reporter(filename, source)
    module = parse(source, reporter)
    builder = Builder(module, filename, source, reporter)
    program = builder.build()
    infer_shapes(program, reporter)
    check_gaussian_inputs(program, reporter)
    warn_unused(program, reporter, builder.nonlins, builder.used)
    program.warnings = [d.render(filename, source) for d in reporter.warnings]
    return program


def program_from_file(path: str | Path) -> Program:
    path = Path(path)
    return program_from_text(path.read_text(), str(path))
