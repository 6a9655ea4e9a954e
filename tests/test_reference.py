"""ntkc against Neural Tangents 0.6.5 (../shared/reference/): every fully
connected case, through the generated Numba module, to the case's rtol."""

from __future__ import annotations

import numpy as np
import pytest
from reference_cases import case_names, load_case, spec_text

import ntkc

FC_CASES = case_names("fc_")


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


def test_all_fc_cases_present():
    assert len(FC_CASES) >= 12


@pytest.mark.parametrize("name", FC_CASES)
def test_fc_reference(tmp_path, name):
    case = load_case(name)
    model = _model(tmp_path, case)
    x1, x2 = np.array(case["x1"]), np.array(case["x2"])
    k12 = model.kernel(x1, x2)
    k11 = model.kernel(x1)
    rtol = case["rtol"]
    _check(k12.nngp, case["nngp_12"], rtol, "nngp_12")
    _check(k12.ntk, case["ntk_12"], rtol, "ntk_12")
    _check(k11.nngp, case["nngp_11"], rtol, "nngp_11")
    _check(k11.ntk, case["ntk_11"], rtol, "ntk_11")
