"""dropout(h, rate): Neural Tangents' Dropout in train mode, rate = keep probability
(ntkc/semantics/rules/dropout.py).

Checked here, besides the NT case dropout_fc (tests/test_reference.py) and the Monte Carlo
cases dropout, dropout_residual (tests/test_monte_carlo.py):

* against the oracle (tests/oracle.py: joint (input, position) covariances, dropout as a
  multiply of the entries with the same input and the same position), on dense and spatial
  programs where dropout meets itself through sums, concats, its own input, a second dropout
  and pools, through both backends, to 1e-12 of the largest entry (both compute the same
  rules in float64; measured ≤ 1e-15);
* on a spatial net, against a hand derivation from dropout-free kernels: for conv → relu →
  dropout → global_avg_pool → dense, only same-position entries of one input change, so
  Y(x,x) = Y_gap(x,x) + (1/rate − 1)/P·Y_flatten(x,x) and Y(x,x') = Y_gap(x,x') for both
  kernels (Y_gap, Y_flatten: the same net without dropout read out by a global average
  pool or by flatten, the mean of same-position entries);
* the Gram diagonal with x2 given, spec errors with positions, `ntkc show`.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from checks import assert_matches_oracle, assert_spec_error, load_text
from oracle import oracle_kernels

from ntkc.compiler import compile_text
from ntkc.show import show

DENSE = "network d\ninput x : vector[3]\ng = dense(x, w_std=1.3, b_std=0.2)\nh = relu(g)\n"
IMAGE = ("network s\ninput x : image[4, 3, 2]\n"
         "g = conv(x, filter=[3, 2], padding=same, w_std=1.4, b_std=0.1)\nh = relu(g)\n")

PROGRAMS = {
    "chain": DENSE + "d = dropout(h, rate=0.8)\ng2 = dense(d, w_std=1.2, b_std=0.1)\n"
                     "h2 = erf(g2)\nd2 = dropout(h2, rate=0.5)\ny = dense(d2)\noutput y\n",
    # d against itself inside a sum, against its input h, and against a concat holding it
    "residual_concat": DENSE + "d = dropout(h, rate=0.6)\nr = d + 0.5 * h - d\n"
                               "c = concat(r, d, g)\ny = dense(c, w_std=1.1)\noutput y\n",
    # two dropouts of one line: independent masks
    "two_masks": DENSE + "d1 = dropout(h, rate=0.7)\nd2 = dropout(h, rate=0.4)\n"
                         "r = d1 + d2\ny = dense(r)\noutput y\n",
    "gap": IMAGE + "d = dropout(h, rate=0.7)\np = global_avg_pool(d)\ny = dense(p)\noutput y\n",
    "pool_flatten": IMAGE + "d = dropout(h, rate=0.5)\n"
                            "p = avg_pool(d, window=[2, 2], padding=same)\ng2 = conv(p, "
                            "filter=[2, 2], w_std=1.2)\nh2 = erf(g2)\nd2 = dropout(h2, rate=0.8)\n"
                            "f = flatten(d2)\ny = dense(f)\noutput y\n",
    # a residual conv block with dropout in its branch, read by a global sum pool
    "conv_residual": IMAGE + "d = dropout(h, rate=0.6)\ng2 = conv(d, filter=[2, 2], "
                             "padding=circular, w_std=1.3)\nr = g2 + g\nh2 = relu(r)\n"
                             "p = global_sum_pool(h2)\ny = dense(p, w_std=0.5)\noutput y\n",
}
NUMBA = ("residual_concat", "gap")  # numba's JIT costs ~10-30 s a spec: two of them


def _inputs(name: str, n: int, seed: int) -> np.ndarray:
    shape = (n, 3) if PROGRAMS[name].startswith("network d") else (n, 4, 3, 2)
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_against_oracle(tmp_path, name, backend):
    if backend == "numba" and name not in NUMBA:
        pytest.skip("numba: only the programs in NUMBA (compile time)")
    x1, x2 = _inputs(name, 4, 1), _inputs(name, 3, 2)
    model = load_text(tmp_path, PROGRAMS[name])
    assert_matches_oracle(model, PROGRAMS[name], x1, x2, backend, name)
    # and dropout did move them: the same program with d = h instead differs
    want = oracle_kernels(PROGRAMS[name], x1, x2)
    plain = oracle_kernels(re.sub(r"dropout\((\w+), rate=[0-9.]+\)", r"\1", PROGRAMS[name]),
                           x1, x2)
    assert np.abs(plain["ntk_gram1"] - want["ntk_gram1"]).max() > 1e-3 * np.abs(
        plain["ntk_gram1"]).max()


def test_spatial_against_dropout_free_kernels(tmp_path):
    keep, positions = 0.7, 4 * 3
    x = _inputs("gap", 5, 3)
    net = load_text(tmp_path, PROGRAMS["gap"], "gap_dropout").kernel(x, backend="numpy")
    plain = {}
    for readout in ("global_avg_pool", "flatten"):
        text = PROGRAMS["gap"].replace("d = dropout(h, rate=0.7)\n", "").replace(
            "global_avg_pool(d)", f"{readout}(h)")
        plain[readout] = load_text(tmp_path, text, readout).kernel(x, backend="numpy")
    off = ~np.eye(len(x), dtype=bool)
    for which in ("nngp", "ntk"):
        got, gap = getattr(net, which), getattr(plain["global_avg_pool"], which)
        flat = getattr(plain["flatten"], which)
        np.testing.assert_allclose(got[off], gap[off], rtol=1e-13)
        want = np.diag(gap) + (1 / keep - 1) / positions * np.diag(flat)
        np.testing.assert_allclose(np.diag(got), want, rtol=1e-13)
        assert np.all(np.diag(got) > np.diag(gap) * (1 + 1e-3))  # the rule did something


def test_x2_given(tmp_path):
    """x2 given (not the same array as x1) is a second set of inputs, with masks of its own:
    K(x, x2=x.copy()) has no 1/rate on its diagonal, as the oracle's x1 × x2 block. Neural
    Tangents instead applies 1/rate wherever x2 equals x1 to 1e-12 (utils.x1_is_x2); the
    same array object (kernel(x, x)) is x2=None, the Gram, in both."""
    text = PROGRAMS["residual_concat"]
    x = _inputs("residual_concat", 4, 5)
    model = load_text(tmp_path, text)
    gram, same, copy = model.kernel(x), model.kernel(x, x), model.kernel(x, x.copy())
    want = oracle_kernels(text, x, x.copy())
    for which in ("nngp", "ntk"):
        np.testing.assert_array_equal(getattr(same, which), getattr(gram, which))
        # x2's diagonal is a pair at correlation 1: relu's acos there amplifies rounding to
        # ~1e-9 (measured 1.8e-9; test_reference.py allows 1e-8 for the same reason)
        np.testing.assert_allclose(getattr(copy, which), want[which], rtol=1e-8,
                                   atol=1e-12 * np.abs(want[which]).max())
        assert np.all(np.diag(getattr(gram, which)) > np.diag(getattr(copy, which)) * 1.01)


HEAD = DENSE + "d = dropout(h, rate=0.5)\n"


@pytest.mark.parametrize("text, where, message", [
    (DENSE + "d = dropout(h, rate=0)\noutput d\n", "5:21",
     "dropout's rate is the keep probability: it must be in (0, 1], got 0"),
    (DENSE + "d = dropout(h, rate=1.5)\noutput d\n", "5:21", "must be in (0, 1], got 3/2"),
    (DENSE + "d = dropout(h, -0.2)\noutput d\n", "5:16", "must be in (0, 1], got -1/5"),
    ("param p = 0.5\n" + DENSE + "d = dropout(h, rate=p)\noutput d\n", "6:21",
     "dropout's rate must be a number in (0, 1] (the keep probability), not p"),
    (DENSE + "d = dropout(h)\noutput d\n", "5:5", "dropout needs argument 'rate'"),
    (DENSE + "d = dropout(h, rate=0.5, keep=1)\noutput d\n", "5:26",
     "dropout has no argument 'keep' (it takes rate)"),
    (DENSE + "d = dropout(x, rate=0.5)\ny = dense(d)\noutput y\n", "5:5",
     "dropout needs a layer's output, not the raw input 'x'"),
    (HEAD + "k = relu(d)\noutput k\n", "6:5",
     ("relu needs a Gaussian input (the output of dense, a linear combination of such lines, "
      "or layer_norm of one); 'd' is the output of dropout (line 5)")),
])
def test_spec_errors(text, where, message):
    assert_spec_error(text, where, message)


def test_show():
    rec = compile_text(PROGRAMS["gap"], "t.ntk").recursion
    text = show(rec, structure=True)
    assert "line 5: d = dropout(h, rate=0.7)" in text
    assert "K[d](x,x) = 10*K[h](x,x)/7" in text and "Θ[d](x,x) = 10*Θ[h](x,x)/7" in text
    # across positions of one input: 1/rate on the diagonal only
    assert "K[d](x,x̃) = K[h](x,x̃)*(3*KroneckerDelta(i, j)/7 + 1)" in text
    # between inputs d is h (an alias, no array of its own); the pool reads all of h's pairs
    assert "gpool_p(x,x')[K[h](x,x')] = gpool_p(K[h](x,x'))" in text
    assert "    h          full" in text


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
