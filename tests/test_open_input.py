"""`input x : vector[*]`: a dense spec whose input size the data sets at kernel time.

A dense network's kernels depend on the inputs only through x·x'/d, so the open spec's
kernels must equal those of the same spec with the size written in, for every d (rtol
1e-14: the open module scales the inputs by 1/sqrt(d) before its GEMM where the closed
one divides the dot products by d, so the two differ by rounding only)."""

from __future__ import annotations

import numpy as np
import pytest

import ntkc
from ntkc.errors import SpecError
from ntkc.frontend import program_from_text
from ntkc.show import show

SPEC = """network open_net
param w = 1.3
input x : {size}
g1 = dense(x, w_std=w, b_std=0.1)
h1 = relu(g1)
y = dense(h1, w_std=1.0, b_std=0.0)
output y
"""


def _load(tmp_path, size: str):
    path = tmp_path / f"net_{size.strip('vector[]*') or 'open'}.ntk"
    path.write_text(SPEC.format(size=size))
    return ntkc.load(path)


@pytest.mark.parametrize("d", [1, 7, 300])
def test_open_size_equals_written_size(tmp_path, d):
    rng = np.random.default_rng(d)
    x1, x2 = rng.normal(size=(5, d)), rng.normal(size=(3, d))
    open_model, closed = _load(tmp_path, "vector[*]"), _load(tmp_path, f"vector[{d}]")
    assert open_model.input_shape == (None,)
    for backend in ("numba", "numpy"):
        for a, b in ((x1, None), (x1, x2)):
            got = open_model.kernel(a, b, backend=backend, params={"w": 0.9})
            want = closed.kernel(a, b, params={"w": 0.9})
            np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-14)
            np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-14)
    assert open_model.kernel(x1.astype(np.float32)).nngp.dtype == np.float32


def test_sizes_must_agree_within_a_call(tmp_path):
    model = _load(tmp_path, "vector[*]")
    with pytest.raises(ValueError, match=r"x2: expected shape \(n, 4\) as x1"):
        model.kernel(np.ones((2, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"x1: expected shape \(n, d\)"):
        model.kernel(np.ones((2, 3, 1)))
    with pytest.raises(ValueError, match="no features"):
        model.kernel(np.ones((2, 0)))


@pytest.mark.parametrize("text, message", [
    ("input x : image[*, 4, 1]", "only a vector input may leave its size open"),
    ("parameterization standard\ninput x : vector[*]", "under parameterization standard"),
])
def test_open_size_refused_where_it_has_no_meaning(text, message):
    spec = f"network n\n{text}\ny = dense(x)\noutput y\n"
    with pytest.raises(SpecError, match=message) as e:
        program_from_text(spec, "n.ntk")
    assert "n.ntk:" in str(e.value) and "^" in str(e.value)  # position and caret


def test_show_writes_the_open_size(tmp_path):
    model = _load(tmp_path, "vector[*]")
    text = show(model.compiled.recursion, "text")
    assert "input x : vector[*]" in text and "x·x'/d" in text
