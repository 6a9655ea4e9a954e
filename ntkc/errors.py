"""Diagnostics with positions: every spec problem is reported as
``file:line:col: error: message`` followed by the source line and a caret."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pos:
    line: int
    col: int
    end_col: int | None = None


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning"
    message: str
    pos: Pos | None

    def render(self, filename: str, source: str) -> str:
        if self.pos is None:
            return f"{filename}: {self.severity}: {self.message}"
        lines = source.splitlines()
        text = lines[self.pos.line - 1] if 0 < self.pos.line <= len(lines) else ""
        width = 1
        if self.pos.end_col is not None and self.pos.end_col > self.pos.col:
            width = self.pos.end_col - self.pos.col
        caret = " " * (self.pos.col - 1) + "^" * width
        head = f"{filename}:{self.pos.line}:{self.pos.col}: {self.severity}: {self.message}"
        return f"{head}\n    {text}\n    {caret}"


class SpecError(Exception):
    """One or more errors in a spec file; ``str()`` is the rendered report."""

    def __init__(self, diagnostics: list[Diagnostic], filename: str, source: str):
        self.diagnostics = diagnostics
        self.filename = filename
        self.source = source
        super().__init__(self.report())

    def report(self) -> str:
        return "\n".join(d.render(self.filename, self.source) for d in self.diagnostics)


class Reporter:
    """Collects diagnostics so one run reports every independent error."""

    def __init__(self, filename: str, source: str):
        self.filename = filename
        self.source = source
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, message: str, pos: Pos | None) -> None:
        self.errors.append(Diagnostic("error", message, pos))

    def warn(self, message: str, pos: Pos | None) -> None:
        self.warnings.append(Diagnostic("warning", message, pos))

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(self.errors, self.filename, self.source)

    def fail(self, message: str, pos: Pos | None) -> SpecError:
        self.error(message, pos)
        return SpecError(self.errors, self.filename, self.source)

    def warning_report(self) -> str:
        return "\n".join(d.render(self.filename, self.source) for d in self.warnings)
