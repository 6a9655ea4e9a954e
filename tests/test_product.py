"""p = a * b: the elementwise product of two lines (ntkc/semantics/rules/product.py; Neural
Tangents' FanInProd), written with the builder's infix hook (Rule.infix).

Checked here, besides the NT case product_fc (tests/test_reference.py) and the Monte Carlo
cases product_independent, product_correlated, product_square (tests/test_monte_carlo.py,
finite networks that multiply unit by unit, with backprop through the product):

* g * g is monomial(g, degree=2), exactly (Isserlis with a = b; the closed form of E[u²v²]
  is an independent formula);
* both backends against the oracle (tests/oracle.py, joint (input, position) covariances:
  Isserlis or the product of covariances on whole arrays) on dense and image programs,
  products feeding pools, flatten, sums and other products, to 1e-12 of the largest entry;
* what ntkc refuses (correlated lines that are not Gaussian, third moments), syntax errors
  with positions, `ntkc show`.
"""

from __future__ import annotations

import numpy as np
import pytest
from checks import assert_matches_oracle, assert_spec_error, load_text

from ntkc.compiler import compile_text
from ntkc.show import show

DENSE = ("network d\ninput x : vector[3]\ng1 = dense(x, w_std=1.3, b_std=0.2)\n"
         "g2 = dense(x, w_std=0.8, b_std=0.3)\n")
IMAGE = ("network s\ninput x : image[4, 3, 2]\n"
         "g1 = conv(x, filter=[3, 2], padding=same, w_std=1.4, b_std=0.1)\n"
         "g2 = conv(x, filter=[2, 2], padding=circular, w_std=0.9, b_std=0.2)\n")

PROGRAMS = {
    # NT's case with a residual: independent non-Gaussian factors, then Gaussian ones
    "independent": DENSE + "h1 = relu(g1)\nh2 = erf(g2)\np = h1 * h2\ng3 = dense(p, w_std=1.1)\n"
                           "q = g3 * g1\ny = dense(q)\noutput y\n",
    # correlated Gaussian factors; p against g (0) and against another product
    "correlated": DENSE + "a = g1 + 0.5 * g2\nb = g1 - g2\np = a * b\ns = g1 * g1\n"
                          "r = p - s + 0.3 * g2\ny = dense(r, w_std=0.7)\noutput y\n",
    # Gaussian factors (with g2 in a sum: a third moment, 0) and independent relu, erf ones
    "gap": IMAGE + "a = g1 + g2\np = a * g1\nr = p + g2\ng3 = conv(x, filter=[1, 1])\n"
                   "g4 = conv(x, filter=[3, 3], padding=same)\nh = relu(g3)\ne = erf(g4)\n"
                   "q = h * e\nm = global_avg_pool(r)\nm2 = global_sum_pool(q)\n"
                   "c = concat(m, m2)\ny = dense(c)\noutput y\n",
    "pool_flatten": IMAGE + "p = g1 * g2\nm = avg_pool(p, window=[2, 2], padding=same)\n"
                            "g3 = conv(m, filter=[2, 2], padding=same, w_std=1.2)\nh = relu(g3)\nq = h * h2\n"
                            "f = flatten(q)\ny = dense(f)\noutput y\n",
}
# pool_flatten's h2: a relu of an independent conv of the pooled product
PROGRAMS["pool_flatten"] = PROGRAMS["pool_flatten"].replace(
    "h = relu(g3)\n", "h = relu(g3)\ng4 = conv(m, filter=[1, 1], w_std=0.8)\nh2 = erf(g4)\n")
NUMBA = ("correlated", "gap")  # numba's JIT costs ~10-30 s a spec: two of them


def _inputs(name: str, n: int, seed: int) -> np.ndarray:
    shape = (n, 3) if PROGRAMS[name].startswith("network d") else (n, 4, 3, 2)
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_against_oracle(tmp_path, name, backend):
    if backend == "numba" and name not in NUMBA:
        pytest.skip("numba: only the programs in NUMBA (compile time)")
    model = load_text(tmp_path, PROGRAMS[name])
    assert_matches_oracle(model, PROGRAMS[name], _inputs(name, 4, 1), _inputs(name, 3, 2),
                          backend, name)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_square_is_monomial(tmp_path, backend):
    x = np.random.default_rng(3).standard_normal((6, 3))
    tail = "y = dense(p, w_std=1.1, b_std=0.2)\noutput y\n"
    square = load_text(tmp_path, DENSE + "p = g1 * g1\n" + tail, "square").kernel(x, x[:4],
                                                                              backend=backend)
    mono = load_text(tmp_path, DENSE + "p = monomial(g1, degree=2)\n" + tail, "mono").kernel(
        x, x[:4], backend=backend)
    for a, b in zip(square, mono):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


HEAD = DENSE + "h = relu(g1)\n"


@pytest.mark.parametrize("text, where, message", [
    (HEAD + "p = h * h\ny = dense(p)\noutput y\n", "6:1",
     ("the product h * h needs E[h·h·h'·h'], which ntkc computes when both are Gaussian "
      "lines or when they are independent; 'h' is not Gaussian, and 'g1' (below 'h') is "
      "correlated with 'g1' (below 'h')")),
    (HEAD + "p = h * g1\ny = dense(p)\noutput y\n", "6:1", "'h' is not Gaussian, and 'g1'"),
    (HEAD + "h2 = erf(g2)\np = h * h2\nr = p + g1\ny = dense(r)\noutput y\n", "7:1",
     "the covariance of the product 'p' with 'g1' is a third moment E[h·h2·g1']"),
    (HEAD + "p = g1 * g2\nk = relu(p)\noutput k\n", "7:5",
     ("relu needs a Gaussian input (the output of dense, a linear combination of such lines, "
      "or layer_norm of one); 'p' is the output of product (line 6)")),
    (HEAD + "p = g1 * g2 * h\noutput p\n", "6:5",
     "a product (a * b) takes two line names: give this side a line of its own"),
    (HEAD + "p = 2 * g1 * g2\noutput p\n", "6:5", "2 * a * b: q = a * b, then p = 2 * q"),
    (HEAD + "p = g1 * g2 + h\noutput p\n", "6:5",
     "a product of lines (a * b) must be a line of its own: q = a * b, then use q here"),
    (HEAD + "p = (g1 + g2) * h\noutput p\n", "6:6", "takes two line names"),
    (HEAD + "p = g1 * relu(g2)\noutput p\n", "6:10", "'relu(...)' inside an expression"),
    (HEAD + "p = g1 * q\noutput p\n", "6:10", "may not use 'q': it is not a param"),
    (HEAD + "p = x * g1\ny = dense(p)\noutput y\n", "6:1",
     "cannot multiply 'x': it is the raw input or depends on it alone"),
    (("network t\ninput x : image[4, 4, 1]\ng = conv(x, filter=[3, 3])\n"
      "f = conv(x, filter=[3, 3], padding=same)\np = g * f\noutput p\n"), "5:1",
     "cannot multiply 'g' of shape [2, 2, ?] and 'f' of shape [4, 4, ?]"),
])
def test_spec_errors(text, where, message):
    assert_spec_error(text, where, message)


def test_show():
    text = show(compile_text(PROGRAMS["correlated"], "t.ntk").recursion)
    assert "line 7: p = a * b" in text
    # Isserlis' three pairings, the last one of the same-input cross covariances
    assert ("K[p](x,x') = K[a,b](x',x')*K[a,b](x,x) + K[a,b](x,x')*K[b,a](x,x') "
            "+ K[a](x,x')*K[b](x,x')") in text
    assert ("Θ[p](x,x') = K[a,b](x,x')*Θ[b,a](x,x') + K[a](x,x')*Θ[b](x,x') "
            "+ K[b,a](x,x')*Θ[a,b](x,x') + K[b](x,x')*Θ[a](x,x')") in text
    assert "K[p](x,x) = 2*K[a,b](x,x)**2 + K[a](x,x)*K[b](x,x)" in text


@pytest.mark.slow  # numba's CUDA simulator: ~20 s
def test_cuda_simulator_matches_cpu(tmp_path):
    # The GPU kernels (numba.cuda, under its simulator here; on a real GPU where there is
    # one) against the CPU ones: the same recursion summed in another order (measured
    # ≤ 6e-16 of the largest entry); the image program reads the full arrays a pool needs.
    from test_cuda import _check, _compare

    spec = tmp_path / "gap.ntk"
    spec.write_text(PROGRAMS["gap"])
    module = tmp_path / "gap.py"
    module.write_text(compile_text(PROGRAMS["gap"], str(spec), spec_name=spec.name).source)
    _check(_compare(module, [{"n1": 3, "n2": 2}, {"n1": 3}]))
