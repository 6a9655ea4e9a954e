"""Derivatives of the kernels by the spec's params (Model.kernel(..., grad=...)) against
central finite differences of the kernels themselves.

The difference quotient is the 5-point one, (−f(θ+2h) + 8f(θ+h) − 8f(θ−h) + f(θ−2h))/12h,
with h = 1e-3 (params are O(1)): its truncation error is O(h⁴ f⁽⁵⁾) ~ 1e-12, and it
divides the kernels' own rounding by 12h/18 ~ 1e-3. That rounding is ~1e-15 off the
diagonal, but ~1e-9 on it, where arc-cosine kernels evaluate acos at a correlation one
ulp from 1 (test_reference.py) and quadratures carry their ~1e-10 error: ~1e-6 after
the quotient. Hence rtol 1e-6 against the largest |∂K| of each matrix, the issue's
figure, with the off-diagonal entries held to 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest

import ntkc
from ntkc.errors import SpecError

NTK_NET = """network grads
param w = 1.3
param b = 0.2
param a = 0.7
input x : vector[3]
g1 = dense(x, w_std=w, b_std=b)
h1 = tanh(g1)
g2 = dense(h1, w_std=w, b_std=b)
h2 = relu(g2)
g3 = dense(h2, w_std=w)
r = g2 + a * g3
h3 = erf(r)
y = dense(h3, w_std=1.0, b_std=b)
output y
"""

STANDARD_NET = """network grads_std
parameterization standard
param w = 1.2
param b = 0.3
input x : vector[4]
g1 = dense(x, w_std=w, b_std=b, width=8)
h1 = relu(g1)
g2 = dense(h1, w_std=w, b_std=b, width=8)
h2 = erf(g2)
y = dense(h2, w_std=w, b_std=b)
output y
"""

CONV_NET = """network grads_conv
param w = 1.3
param b = 0.2
input x : image[5, 5, 2]
g1 = conv(x, filter=[3, 3], padding=same, w_std=w, b_std=b)
h1 = relu(g1)
p1 = avg_pool(h1, window=[2, 2], stride=[1, 1])
g2 = conv(p1, filter=[2, 2], w_std=w, b_std=b)
h2 = erf(g2)
f = global_avg_pool(h2)
y = dense(f, w_std=1.0, b_std=b)
output y
"""

CONV_STANDARD_NET = """network grads_conv_std
parameterization standard
param w = 1.2
param b = 0.3
input x : sequence[6, 2]
g1 = conv(x, filter=[3], padding=circular, w_std=w, b_std=b, width=4)
h1 = relu(g1)
f = flatten(h1)
y = dense(f, w_std=w, b_std=b)
output y
"""

NETS = {n.split()[1]: n for n in (NTK_NET, STANDARD_NET, CONV_NET, CONV_STANDARD_NET)}
H = 1e-3


def _difference(model, x1, x2, name, backend):
    p = dict(model.params)

    def at(step):
        k = model.kernel(x1, x2, params={**p, name: p[name] + step * H}, backend=backend)
        return np.stack([k.nngp, k.ntk])

    return (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * H)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grads")
    out = {}
    for name, text in NETS.items():
        path = tmp / f"{name}.ntk"
        path.write_text(text)
        out[name] = ntkc.load(path)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_gradients_match_finite_differences(models, net, backend):
    model = models[net]
    rng = np.random.default_rng(1)
    x1 = rng.normal(size=(5, *model.input_shape)) * 0.6
    x2 = rng.normal(size=(4, *model.input_shape)) * 0.6
    for b in (None, x2):
        kernels, grads = model.kernel(x1, b, grad=tuple(model.params), backend=backend)
        plain = model.kernel(x1, b, backend=backend)
        # the same values, but for the quadrature at twice the degree (~1e-9 apart here)
        np.testing.assert_allclose(kernels.ntk, plain.ntk, rtol=1e-8)
        for name, g in grads.items():
            got = np.stack([g.nngp, g.ntk])
            want = _difference(model, x1, b, name, backend)
            scale = np.abs(want).max(axis=(1, 2), keepdims=True)
            what = f"{net} {backend} {'x1×x1' if b is None else 'x1×x2'} d/d{name}"
            assert np.all(np.abs(got - want) <= 1e-6 * scale), what
            off = ~np.eye(*got.shape[1:], dtype=bool) if b is None else np.ones(got.shape[1:], bool)
            assert np.all(np.abs(got[:, off] - want[:, off]) <= 1e-8 * scale[:, 0]), what


def test_equal_inputs_in_x1_and_x2_give_finite_gradients(models):
    # correlation 1 between x1 and x2 rows: relu's ∂Θ has a 0·∞ there (ntkc.semantics.tangent)
    model = models["grads"]
    x = np.random.default_rng(2).normal(size=(3, 3))
    _, grads = model.kernel(x, x.copy(), grad="w")
    _, sym = model.kernel(x, grad="w")
    assert np.isfinite(grads["w"].ntk).all()
    np.testing.assert_allclose(np.diag(grads["w"].ntk), np.diag(sym["w"].ntk), rtol=1e-6)


def test_gradient_errors(models, tmp_path):
    model = models["grads"]
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="params are w, b, a; got 'v'"):
        model.kernel(x, grad="v")
    with pytest.raises(ValueError, match="whole matrices on the CPU"):
        model.kernel(x, grad="w", out_dir=tmp_path)
    attention = tmp_path / "attention.ntk"
    attention.write_text("network a\nparam w = 1.0\ninput x : sequence[3, 2]\n"
                         "g = conv(x, filter=[1], w_std=w)\nh = relu(g)\n"
                         "t = attention(h, n_heads=1, w_key_std=1.0, w_value_std=1.0, "
                         "w_out_std=1.0, b_std=0.0)\np = flatten(t)\ny = dense(p)\noutput y\n")
    with pytest.raises(SpecError, match="per-input matrices are not differentiated yet"):
        ntkc.load(attention).kernel(np.ones((2, 3, 2)), grad="w")
    kinked = tmp_path / "kinked.ntk"
    kinked.write_text("network k\nparam w = 1.0\ninput x : vector[2]\ng = dense(x, w_std=w)\n"
                      "h = selu(g)\ny = dense(h)\noutput y\n")
    with pytest.raises(SpecError, match="Dirac delta"):
        ntkc.load(kinked).kernel(x[:, :2], grad="w")
