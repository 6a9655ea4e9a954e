"""What every benchmark shares: compiling a spec from its text, and the best of repeated timings."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def load_spec(text: str, name: str):
    """A benchmark network compiled from its spec text (through a temporary file)."""
    from ..runtime import load

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"{name}.ntk"
        spec.write_text(text)
        return load(spec)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
