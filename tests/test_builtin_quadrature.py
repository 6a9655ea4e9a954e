"""The built-in nonlinearities without a closed-form dual: tanh, sigmoid, softplus, silu (=
swish), elu(alpha), selu, mish (ntkc/semantics/rules/activations.py, as jax.nn defines them).

A spec calls them like any built-in (``h = tanh(g)``); their duals are the quadrature duals a
user ``nonlin`` with the same body gets. Checked here:

* each one's kernel through the generated module, ``g = dense(x)`` (x·x'/2, no bias), ``h =
  φ(g)``, ``y = dense(h)``: then K[y](x,x') = E[φ(u)φ(v)], Θ[y](x,x') = E[φφ] + E[φ'φ']·K[g],
  K[y](x,x) = E[φ(u)²], against scipy (nested adaptive ``quad`` split at the kinks) of φ, φ' written out independently in tests/mc_networks.py (jax.nn's definitions, by
  hand, epsrel 1e-10), at variances 0.4 to 5 and correlations -0.94 to 0.997;
* the numba and numpy backends agree, on a dense and on a conv network;
* swish is silu, tanh is ``nonlin my_tanh(z) = tanh(z)`` (the same numbers);
* their names are reserved, their arguments checked, `ntkc show` names their expectations.
The Monte Carlo checks (finite networks converge to these kernels) are the builtin_* cases of
tests/test_monte_carlo.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from checks import assert_spec_error
from mc_networks import _builtin_phi
from scipy import integrate

import ntkc
from ntkc.compiler import compile_text
from ntkc.errors import SpecError
from ntkc.show import show

# scipy's quad reports round-off where it reaches ~1e-14 instead of the 1e-12 asked for.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")

# (call in the spec, label for mc_networks' φ, its numeric args)
CALLS = [
    ("tanh(g)", "tanh", {}),
    ("sigmoid(g)", "sigmoid", {}),
    ("softplus(g)", "softplus", {}),
    ("silu(g)", "silu", {}),
    ("elu(g)", "elu", {}),
    ("elu(g, alpha=0.5)", "elu", {"alpha": 0.5}),
    ("selu(g)", "selu", {}),
    ("mish(g)", "mish", {}),
]
# Variances K[g](x,x) = |x|²/2 and angles: pairs at correlations cos(Δangle) from -0.94
# (2.8 - 0) to 0.997 (0.08 - 0).
VARIANCES = np.array([0.4, 1.5, 5.0, 1.2])
ANGLES = np.array([0.0, 1.0, 2.8, 0.08])
X = np.sqrt(2 * VARIANCES)[:, None] * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
# Relative to E|φ(u)φ(v)| (E[φ²] on the diagonal). Measured here: 1e-9 (tanh's E[φ'²] at
# variance 0.4, the coarsest level of the trapezoidal rule), 1e-10 to 1e-12 for the other
# smooth ones, 2e-15 for elu and selu (the polar rule: exact across the kink). Asserted: 1e-8,
# and scipy's own error (epsrel 1e-10) is below that.
RTOL = 1e-8


def _spec(call: str, name: str = "t") -> str:
    return (f"network {name}\ninput x : vector[2]\ng = dense(x)\nh = {call}\ny = dense(h)\n"
            "output y\n")


def _pdf(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


OPTS = {"epsabs": 1e-13, "epsrel": 1e-10, "limit": 200}


def _expect2(f, g, k11: float, k12: float, k22: float) -> tuple[float, float]:
    """(E[f(u) g(v)], E|f(u) g(v)|), u = √k11·s, v = c·s + d·t, by nested quad split where
    u and v change sign (elu's and selu's kinks; harmless for the smooth ones)."""
    c, d = k12 / math.sqrt(k11), math.sqrt(max(k22 - k12 * k12 / k11, 0.0))

    def outer(absolute: bool) -> float:
        def inner(s: float) -> float:
            fs = float(f(math.sqrt(k11) * s))
            t0 = min(max(-c * s / d, -13.0), 13.0)

            def h(t: float) -> float:
                value = float(g(c * s + d * t)) * _pdf(t)
                return abs(value) if absolute else value

            rest = integrate.quad(h, -13, t0, **OPTS)[0] + integrate.quad(h, t0, 13, **OPTS)[0]
            return (abs(fs) if absolute else fs) * _pdf(s) * rest

        return sum(integrate.quad(inner, a, b, **OPTS)[0] for a, b in ((-13, 0), (0, 13)))

    return outer(False), outer(True)


def _expect1(f, k: float) -> float:
    return sum(integrate.quad(lambda s: float(f(math.sqrt(k) * s)) * _pdf(s), a, b, **OPTS)[0]
               for a, b in ((-13, 0), (0, 13)))


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """The numpy backend's kernels of each call's network (no JIT: fast)."""
    tmp = tmp_path_factory.mktemp("builtin_quadrature")
    out = {}
    for i, (call, _, _) in enumerate(CALLS):
        path = tmp / f"q{i}.ntk"
        path.write_text(_spec(call, f"q{i}"))
        out[call] = ntkc.load(path).kernel(X, backend="numpy")
    return out


@pytest.mark.slow  # ~50 s of scipy quad
@pytest.mark.parametrize("call, label, args", CALLS, ids=[c[0] for c in CALLS])
def test_kernel_against_scipy(kernels, call, label, args):
    phi, dphi = _builtin_phi(label, args)
    k = kernels[call]
    kg = X @ X.T / 2
    for i in range(len(X)):
        var = _expect1(lambda z: phi(z) ** 2, VARIANCES[i])
        assert abs(k.nngp[i, i] - var) <= RTOL * var, (call, i, k.nngp[i, i], var)
        want = var + _expect1(lambda z: dphi(z) ** 2, VARIANCES[i]) * kg[i, i]
        assert abs(k.ntk[i, i] - want) <= RTOL * want, (call, i, k.ntk[i, i], want)
        for j in range(i):
            nngp, size = _expect2(phi, phi, kg[i, i], kg[i, j], kg[j, j])
            assert abs(k.nngp[i, j] - nngp) <= RTOL * size, (call, i, j, k.nngp[i, j], nngp)
            slope, slope_size = _expect2(dphi, dphi, kg[i, i], kg[i, j], kg[j, j])
            err = abs(k.ntk[i, j] - nngp - slope * kg[i, j])
            assert err <= RTOL * (size + slope_size * abs(kg[i, j])), (call, i, j, err)


def test_swish_is_silu_and_tanh_is_the_user_nonlin(tmp_path):
    # The same function gets the same integrand, so the same numbers to the bit; the user's
    # `nonlin my_tanh(z) = tanh(z)` (examples/tanh_mlp.ntk) is unaffected by the built-in.
    def kernel(call: str, extra: str = ""):
        path = tmp_path / f"k{abs(hash(call + extra))}.ntk"
        path.write_text(_spec(call).replace("input", extra + "input"))
        return ntkc.load(path).kernel(X, backend="numpy")

    for a, b in zip(kernel("swish(g)"), kernel("silu(g)")):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(kernel("tanh(g)"), kernel("my_tanh(g)", "nonlin my_tanh(z) = tanh(z)\n")):
        np.testing.assert_array_equal(a, b)


def test_backends_agree(tmp_path):
    # Each of them as a part of one concat (a concat's covariance pairs each part only with
    # itself), and tanh + elu: a mixed expectation E[φ(u)ψ(v)] (polar, for elu's kink).
    calls = [c for c, _, _ in CALLS] + ["swish(g)"]
    body = "".join(f"h{i} = {c}\n" for i, c in enumerate(calls))
    parts = ", ".join(f"h{i}" for i in range(len(calls)))
    path = tmp_path / "mixed.ntk"
    path.write_text("network mixed\ninput x : vector[3]\ng = dense(x, w_std=1.2, b_std=0.1)\n"
                    + body + f"r = h0 + h5\nc = concat({parts}, r)\ny = dense(c)\noutput y\n")
    model = ntkc.load(path)
    x = np.random.default_rng(1).standard_normal((5, 3))
    for args in ((x,), (x, x[:3])):
        fast, ref = model.kernel(*args), model.kernel(*args, backend="numpy")
        for a, b in zip(fast, ref):
            assert np.all(np.isfinite(a))
            # the same rules and nodes: only the order of summation differs
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


def test_not_yet_in_convolutional_networks():
    # The spatial code generator has no quadrature yet: refused at compile time, as a user
    # nonlin without a closed form is.
    text = ("network t\ninput x : image[3, 3, 2]\ng = conv(x, filter=[2, 2])\nh = tanh(g)\n"
            "p = global_avg_pool(h)\ny = dense(p)\noutput y\n")
    with pytest.raises(SpecError, match=r"without a closed-form dual \(the built-ins tanh, "
                                        r".* are not supported in convolutional networks"):
        compile_text(text, "t.ntk")


HEAD = "network t\ninput x : vector[3]\ng = dense(x)\n"


@pytest.mark.parametrize("text, where, message", [
    ("nonlin tanh(z) = tanh(z)\n" + HEAD + "h = tanh(g)\noutput h\n", "1:8",
     "'tanh' is the name of a built-in op; pick another name"),
    (HEAD + "mish = dense(g)\noutput mish\n", "4:1", "'mish' is the name of a built-in op"),
    (HEAD + "h = tanh(g, 2)\noutput h\n", "4:13", "tanh takes at most 0 extra argument(s)"),
    (HEAD + "h = elu(g, beta=2)\noutput h\n", "4:12",
     "elu has no argument 'beta' (it takes alpha)"),
    (HEAD + "h = elu(g, alpha=g)\noutput h\n", "4:18",
     "elu's alpha must be a number or a param, not the line 'g'"),
    (HEAD + "h = sigmoid(x)\noutput h\n", "4:5", "'x' is the raw input"),
    (HEAD + "h = selu(g)\nk = softplus(h)\noutput k\n", "5:5", "softplus needs a Gaussian input"),
    (HEAD + "h = silu()\noutput h\n", "4:5", "silu needs an input line"),
])
def test_spec_errors(text, where, message):
    assert_spec_error(text, where, message)


def test_show_names_the_expectations():
    # (g = dense(x) with w_std 1 and no bias is x's covariance: show prints K[x])
    text = show(compile_text(_spec("elu(g, alpha=a)").replace("input", "param a = 0.5\ninput"),
                             "t.ntk").recursion)
    assert "line 5: h = elu(g, alpha=a)" in text
    assert "K[h](x,x') = E[elu(alpha=a)·elu(alpha=a)](K[x](x,x), K[x](x,x'), K[x](x',x'))" in text
    assert ("Θ[h](x,x') = K[x](x,x')*E[elu(alpha=a)'·elu(alpha=a)'](K[x](x,x), K[x](x,x'), "
            "K[x](x',x'))") in text
    assert "K[h](x,x) = E[elu(alpha=a)²](K[x](x,x))" in text
