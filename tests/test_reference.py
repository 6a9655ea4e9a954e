"""ntkc against Neural Tangents 0.6.5 (tests/data/reference/): every case whose ops
ntkc has, through the generated Numba module, to the case's rtol; the ones with
spatial inputs also through the numpy reference backend."""

from __future__ import annotations

import numpy as np
import pytest
from reference_cases import (
    AWAITING_OPS,
    REFERENCE_DIR,
    all_case_names,
    case_names,
    case_ops,
    load_case,
    spec_text,
)

import ntkc
from ntkc.semantics.rules import RULES
from ntkc.semantics.rules.activations import BUILTINS

# Every Neural Tangents case (the tensor-program ones in tp/ have their own test) whose
# ops ntkc has; SPATIAL_CASES are those with sequence or image inputs.
CASES = [n for n in case_names("") if n not in AWAITING_OPS]
SPATIAL_CASES = [n for n in CASES if len(load_case(n)["input_shape"]) > 1]


def _model(tmp_path, case):
    path = tmp_path / f"{case['name']}.ntk"
    path.write_text(spec_text(case))
    return ntkc.load(path)


def _check(got, want, rtol, what):
    want = np.array(want, dtype=float)
    mask = ~np.isnan(want)
    # rtol relative to each entry; NT's own float64 rounding is ~1e-15, the cases ask 1e-9.
    np.testing.assert_allclose(got[mask], want[mask], rtol=rtol, atol=0, err_msg=what)
    assert np.isfinite(got).all(), f"{what}: non-finite entries"


# The ops a reference layer list can name that ntkc compiles: its rules, its built-in
# nonlinearities, and `residual`, which spec_text writes as a sum of two lines.
KNOWN_OPS = set(RULES) | set(BUILTINS) | {"residual"}


def test_all_cases_present():
    """Every case file in tests/data/reference is either run by test_reference or
    awaits an op ntkc lacks (AWAITING_OPS), and none is missing. A case that arrives
    from ../shared/reference (copied here) fails this test until it is placed."""
    files = all_case_names()
    tested = set(CASES)
    assert not tested & set(AWAITING_OPS)
    missing = (tested | set(AWAITING_OPS)) - set(files)
    assert not missing, f"case files missing from {REFERENCE_DIR}: {sorted(missing)}"
    unused = set(files) - tested - set(AWAITING_OPS)
    assert not unused, f"case files no test uses: {sorted(unused)}"
    # the globs above find only what is there: the count catches a case gone missing
    assert len(files) == 24
    # AWAITING_OPS is exactly the cases whose ops ntkc lacks, and lists what each lacks:
    # once an op is registered its cases must move into a tested set.
    lacking = {name: frozenset(case_ops(load_case(name)) - KNOWN_OPS) for name in files}
    assert {n: ops for n, ops in lacking.items() if ops} == AWAITING_OPS
    # both READMEs travel with the data
    assert (REFERENCE_DIR / "README.md").is_file()
    assert (REFERENCE_DIR / "tp" / "README.md").is_file()


@pytest.mark.parametrize("name", CASES + [pytest.param(n, id=f"{n}-numpy")
                                          for n in SPATIAL_CASES])
def test_reference(tmp_path, request, name):
    case = load_case(name)
    model = _model(tmp_path, case)
    backend = "numpy" if request.node.callspec.id.endswith("-numpy") else "numba"
    x1, x2 = np.array(case["x1"]), np.array(case["x2"])
    k12 = model.kernel(x1, x2, backend=backend)
    k11 = model.kernel(x1, backend=backend)
    rtol = case["rtol"]
    _check(k12.nngp, case["nngp_12"], rtol, "nngp_12")
    _check(k12.ntk, case["ntk_12"], rtol, "ntk_12")
    for got, key in ((k11.nngp, "nngp_11"), (k11.ntk, "ntk_11")):
        want = np.array(case[key], dtype=float)
        off = ~np.eye(len(want), dtype=bool)
        _check(got[off], want[off], rtol, key)
        # On the diagonal Neural Tangents evaluates arccos at a correlation rounded to
        # 1 - O(1e-16), which moves relu's Θ factor by ~sqrt(2e-16)/π ≈ 1e-8 relative (it
        # gives NaN there for rectified_monomial); ntkc uses the exact per-input formula.
        _check(np.diag(got), np.diag(want), max(rtol, 1e-8), key + " diagonal")
