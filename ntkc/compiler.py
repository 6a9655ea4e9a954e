"""The whole pipeline in one call: spec text → generated module source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .codegen.emit import ModuleWriter
from .codegen.emit_spatial import SpatialWriter
from .errors import Diagnostic, SpecError
from .frontend import program_from_text
from .ir import Program
from .semantics.derive import DeriveError, Recursion, derive
from .semantics.quadrature import DEFAULT_DEGREE
from .semantics.tangent import with_tangents


@dataclass
class Compiled:
    program: Program
    recursion: Recursion
    source: str  # the generated module


def compile_text(
    text: str,
    filename: str = "<spec>",
    quad_degree: int = DEFAULT_DEGREE,
    target: str = "all",
    spec_name: str | None = None,
    grad: bool = False,
) -> Compiled:
    """parse → IR → passes → derive → codegen. Raises SpecError.

    spec_name: how the module header names its spec (a path relative to the
    module's directory, so the runtime can check the hash); default ``filename``.
    target: "cpu" (numba prange kernels), "cuda" (numba.cuda kernels, imported by the
    module only when used) or "all" (both).
    grad: also the kernels' derivatives by every param (ntkc.semantics.tangent), in a
    third pair kernel (``kernel(..., grad=True)``).
    """
    if target not in ("cpu", "cuda", "all"):
        raise ValueError(f"target must be 'cpu', 'cuda' or 'all', got {target!r}")
    program = program_from_text(text, filename)
    try:
        recursion = derive(program)
        if grad:
            recursion = with_tangents(recursion)
    except DeriveError as e:
        raise SpecError([Diagnostic("error", str(e), e.pos)], filename, text) from None
    options = {"target": target, "quad_degree": quad_degree, **({"grad": True} if grad else {})}
    if program.input_shape.spatial:
        try:
            writer = SpatialWriter(recursion, target)
        except NotImplementedError as e:
            raise SpecError([Diagnostic("error", str(e), None)], filename, text) from None
    else:
        writer = ModuleWriter(recursion, quad_degree, target)
    source = writer.module(spec_name or Path(filename).as_posix(), text, options)
    return Compiled(program, recursion, source)


def compile_file(path: str | Path, **options) -> Compiled:
    path = Path(path)
    return compile_text(path.read_text(), path.as_posix(), **options)
