"""Edge inputs for every example network and a few more: blank inputs and zero patches,
duplicates, x2 = x1, norms 1e±150 (float64) and near float32's range, N = 1, empty x2,
non-contiguous and Fortran-ordered arrays, in float32 and float64.

Each gives a finite, symmetric, PSD kernel with the right value at a zero input, or a
ValueError that says what and how to fix: never a SystemError, NaN or Inf.

Semantics checked here: a zero-variance pre-activation is the degenerate Gaussian at 0.
Its covariances with anything are exactly 0, so the correlation is 0 and each dual takes
its value there; for continuous nonlinearities that is the limit from tiny inputs.
An x2 with no rows is a ValueError ("no inputs"), as is an x1 with none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ntkc

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.ntk"))
CONV = {"digits_cnn_flatten", "digits_cntk_gap"}  # minutes to compile: slow

EXTRA = {
    # zero patches and blank images give zero variances all the way up
    "conv_nobias": """network conv_nobias
input x : image[5, 5, 1]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.3)
h1 = relu(g1)
g2 = conv(h1, filter=[3, 3], padding=same, w_std=1.2)
h2 = relu(g2)
p = global_avg_pool(h2)
y = dense(p, w_std=1.0)
output y
""",
    # φ(0) = 0 and no biases: K and Θ vanish at a zero input, through every dual
    "dense_nobias": """network dense_nobias
input x : vector[6]
g1 = dense(x, w_std=1.3)
h1 = gelu(g1)
g2 = dense(h1, w_std=1.2)
h2 = abs(g2)
g3 = dense(h2, w_std=1.1)
h3 = leaky_relu(g3, alpha=0.1)
g4 = dense(h3, w_std=1.2)
h4 = erf(g4)
y = dense(h4, w_std=0.9)
output y
""",
    # discontinuous: K(0, 0) = w²·E[sign²] = 0.81 (NT's dual), K(0, x') = 0, Θ = K there
    "sign_net": """network sign_net
input x : vector[5]
g1 = dense(x, w_std=1.3)
h1 = sign(g1)
y = dense(h1, w_std=0.9)
output y
""",
}
SPECS = [p.stem for p in EXAMPLES] + list(EXTRA)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache: dict[str, ntkc.Model] = {}

    def get(name: str) -> ntkc.Model:
        if name not in cache:
            if name in EXTRA:
                path = tmp_path_factory.mktemp("edge") / f"{name}.ntk"
                path.write_text(EXTRA[name])
            else:
                path = ROOT / "examples" / f"{name}.ntk"
            cache[name] = ntkc.load(path)
        return cache[name]

    return get


def _params(name):
    return [pytest.param(n, marks=pytest.mark.slow) if n in CONV else n for n in name]


def _shape(model) -> tuple[int, ...]:
    """One input's shape; an open size (vector[*]) takes 7 features here."""
    return tuple(7 if s is None else s for s in model.input_shape)


def _inputs(model, n=5, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, *_shape(model)))
    x[0] = 0.0  # a blank input
    x[2] = x[1]  # a duplicate
    if len(model.input_shape) > 1:  # images: a zero patch
        x[3, : model.input_shape[0] // 2] = 0.0
    return x


def _check(k, dtype, symmetric=True, psd=None):
    for name in ("nngp", "ntk"):
        a = np.asarray(getattr(k, name))
        assert a.dtype == dtype, name
        assert np.isfinite(a).all(), f"{name} not finite:\n{a}"
        if symmetric:
            tol = 1e-6 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(a, a.T, rtol=tol, atol=tol * np.abs(a).max())
            w = np.linalg.eigvalsh(a.astype(np.float64))
            psd = psd or (1e-5 if dtype == np.float32 else 1e-10)
            assert w.min() >= -psd * max(w.max(), 1e-300), f"{name}: eigenvalues {w}"


@pytest.mark.parametrize("spec", _params(SPECS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_catalogue(models, spec, dtype):
    model = models(spec)
    x = _inputs(model).astype(dtype)
    k = model.kernel(x)
    _check(k, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name in ("nngp", "ntk"):  # duplicates: equal rows (arccos at a correlation
        a = getattr(k, name)  # rounded to 1 - 1e-16 is ~1e-8 off: sqrt of the rounding)
        np.testing.assert_allclose(a[1], a[2], rtol=1e-4 if dtype == np.float32 else 1e-7)
    # x2 = x1 passed twice, non-contiguous and Fortran-ordered inputs: the same kernel
    same = model.kernel(x, x.copy())
    _check(same, dtype, symmetric=False)
    wide = np.zeros((2 * len(x), *x.shape[1:]), dtype)
    wide[::2] = x
    for other in (model.kernel(wide[::2]), model.kernel(np.asfortranarray(x))):
        for name in ("nngp", "ntk"):
            np.testing.assert_allclose(getattr(other, name), getattr(k, name), rtol=tol,
                                       atol=tol * np.abs(getattr(k, name)).max())
    one = model.kernel(x[1:2])  # N = 1
    np.testing.assert_allclose(one.nngp[0, 0], k.nngp[1, 1], rtol=tol)
    with pytest.raises(ValueError, match="x2: no inputs"):
        model.kernel(x, x[:0])


@pytest.mark.parametrize("spec", _params(SPECS))
def test_zero_input_is_the_limit_of_tiny_inputs(models, spec):
    """K(0, ·) against K(εx, ·), ε = 1e-150 (continuous nonlinearities), or closed forms."""
    model = models(spec)
    x = _inputs(model)
    tiny = x.copy()
    tiny[0] = x[4] * 1e-150
    k0, kt = model.kernel(x), model.kernel(tiny)
    for name in ("nngp", "ntk"):
        a0, at = getattr(k0, name), getattr(kt, name)
        if spec == "sign_net":  # sign is not continuous at 0: its closed form instead
            np.testing.assert_array_equal(a0[0, 1:], 0.0)
            assert a0[0, 0] == pytest.approx(0.81, rel=1e-12)
            continue
        np.testing.assert_allclose(a0[0], at[0], rtol=0, atol=1e-12 * np.abs(a0).max())
        if spec in ("conv_nobias", "dense_nobias"):
            np.testing.assert_array_equal(a0[0], 0.0)


def test_relu_mlp_zero_input_closed_form(models):
    """relu_mlp at x = 0: k_{l+1} = w² k_l / 2 + b² from k_1 = b², Θ_{l+1} = k_{l+1} +
    w² Θ_l / 2 (relu's derivative dual at correlation 1 is 1/2), 5 dense layers."""
    model = models("relu_mlp")
    w, b = model.params["w"], model.params["b"]
    k = t = b**2
    for _ in range(4):
        k, t = w**2 * k / 2 + b**2, w**2 * k / 2 + b**2 + w**2 * t / 2
    out = model.kernel(np.zeros((1, *_shape(model))))
    assert out.nngp[0, 0] == pytest.approx(k, rel=1e-13)
    assert out.ntk[0, 0] == pytest.approx(t, rel=1e-13)
    no_bias = model.kernel(_inputs(model), params={"b": 0.0})  # zero variances all through
    _check(no_bias, np.float64)
    np.testing.assert_array_equal(no_bias.nngp[0], 0.0)


@pytest.mark.parametrize("spec", _params(SPECS))
def test_extreme_scales(models, spec):
    """Norms 1e±150 in float64, 1e±18 in float32: finite kernels or a ValueError that
    says to scale the inputs. At 1e150 saturated duals evaluate asin/acos at correlations
    rounded to ±(1 - 1e-16), ~1e-8 off (its square root): PSD to 1e-7 there."""
    model = models(spec)
    x = np.random.default_rng(1).standard_normal((4, *_shape(model)))
    for scale, dtype in ((1e150, np.float64), (1e-150, np.float64),
                         (1e18, np.float32), (1e-18, np.float32), (1e21, np.float32)):
        xs = (x * scale).astype(dtype)
        try:
            k = model.kernel(xs)
        except ValueError as e:
            assert "scale the inputs" in str(e), str(e)
            continue
        if spec == "tanh_mlp" and scale > 1:
            # Gauss-Hermite quadrature is not accurate at variances far from O(1) (README,
            # "Accuracy of quadrature"): finite and symmetric only, not PSD at 1e150
            _check(k, dtype, psd=np.inf)
            continue
        _check(k, dtype, psd=1e-7 if scale > 1 else None)
    with pytest.raises(ValueError, match=r"squared norms of x1 overflow float32 \(row 0"):
        model.kernel((x * 1e21).astype(np.float32))
