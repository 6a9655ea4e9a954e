"""Checks the op tests share: a spec error's report (position, source line, caret), a
network loaded from spec text, and a model's kernels against the oracle (tests/oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import oracle_kernels

import ntkc
from ntkc.compiler import compile_text
from ntkc.errors import SpecError


def assert_spec_error(text: str, where: str, message: str) -> None:
    """Compiling ``text`` (as t.ntk) fails at ``where`` ("line:col") with ``message``,
    quoting the line and putting the caret under the column."""
    with pytest.raises(SpecError) as e:
        compile_text(text, "t.ntk")
    report = str(e.value).splitlines()
    assert report[0].startswith(f"t.ntk:{where}: error: ") and message in report[0], report
    line, col = map(int, where.split(":"))
    assert report[1].strip() == text.splitlines()[line - 1].strip()
    assert report[2].index("^") == 4 + col - 1  # the caret under the column


def load_text(tmp_path, text: str, stem: str = "net") -> ntkc.Model:
    path = tmp_path / f"{stem}.ntk"
    path.write_text(text)
    return ntkc.load(path)


def assert_matches_oracle(model: ntkc.Model, text: str, x1: np.ndarray, x2: np.ndarray,
                          backend: str, what: str, atol: float = 1e-12) -> None:
    """K and Θ of x1 × x2 and of x1 × x1 against the oracle's, to ``atol`` of the
    largest entry (the oracle and the kernels are float64 computations of one formula)."""
    want = oracle_kernels(text, x1, x2)
    k12, k11 = model.kernel(x1, x2, backend=backend), model.kernel(x1, backend=backend)
    for which in ("nngp", "ntk"):
        for got, ref in ((getattr(k12, which), want[which]),
                         (getattr(k11, which), want[which + "_gram1"])):
            np.testing.assert_allclose(got, ref, rtol=0, atol=atol * np.abs(ref).max(),
                                       err_msg=f"{what} {which}")
