"""The numeric oracle (tests/oracle.py) against Neural Tangents, then ntkc against the
oracle on programs that once gave wrong kernels.

The oracle is first checked on every fully connected and convolutional Neural Tangents
reference case (it matches them to ~1e-15 relative; 1e-11 leaves room for layer_norm's
rounding, measured 1.2e-12). ntkc's two backends are then compared with it to 1e-12
relative to the largest entry: both compute the same rules in float64 in a different
order, so they may differ by rounding only (measured ≤ 4e-15).
"""

from __future__ import annotations

import numpy as np
import pytest
from oracle import oracle_kernels
from reference_cases import case_names, load_case, spec_text

import ntkc

REFERENCE = case_names("fc_") + case_names("conv")


@pytest.mark.parametrize("name", REFERENCE)
def test_oracle_matches_neural_tangents(name):
    case = load_case(name)
    got = oracle_kernels(spec_text(case), np.array(case["x1"]), np.array(case["x2"]))
    for key, want in (("nngp", "nngp_12"), ("ntk", "ntk_12")):
        np.testing.assert_allclose(got[key], np.array(case[want], float), rtol=1e-11, atol=0,
                                   err_msg=f"{name} {key}")


# Per-input results of a stencil (a flatten, a global pool, a conv without bias and with
# w_std=1) read by a nonlinearity had no twin at x': K(x',x') silently read K(x,x). Each
# was asymmetric (by up to 0.97) and off Neural Tangents (by up to 33× and 11% for the
# strided pattern of ResNets); found by differential fuzzing (issue 9).
TWIN_FAMILY = {
    "strided_valid_global_sum_sign": """network r1
input x : sequence[6, 1]
l1 = conv(x, filter=[3], padding=valid, w_std=1.0, stride=[3])
l2 = global_sum_pool(l1)
l4 = sign(l2)
y = dense(l4, w_std=1, b_std=0.1)
output y
""",
    "unit_w_std_conv_without_bias": """network r2
input x : sequence[4, 1]
g = conv(x, filter=[2])
h = relu(g)
p = flatten(h)
y = dense(p)
output y
""",
    "relu_after_flatten": """network r3
input x : sequence[4, 1]
g = conv(x, filter=[1], padding=same, w_std=0.5, b_std=0.1)
p = flatten(g)
h = relu(p)
y = dense(h, w_std=1.3)
output y
""",
    "strided_convs_gap_erf": """network r4
input x : sequence[8, 2]
g1 = conv(x, filter=[3], stride=[2], padding=valid, w_std=1.3, b_std=0.2)
h1 = relu(g1)
g2 = conv(h1, filter=[2], stride=[2], padding=same, w_std=1.1, b_std=0.1)
p = global_avg_pool(g2)
h2 = erf(p)
y = dense(h2, w_std=1.2, b_std=0.1)
output y
""",
}


# Valid programs once refused. A constant per-position variance (layer_norm's, sign's) under
# a conv or pool is no scalar: zero padding makes the stencil's result vary by position. A
# pool against a sum of itself: the sum is opened first, then the pool meets itself.
REFUSED_ONCE = {
    "layer_norm_then_strided_conv_gap": """network r5
input x : image[3, 3, 3]
g1 = conv(x, filter=[1, 1], stride=[2, 2], w_std=0.8396)
n2 = layer_norm(g1)
g3 = conv(n2, filter=[1, 2])
f4 = global_avg_pool(g3)
g5 = dense(f4, w_std=0.4392)
output g5
""",
    "sign_then_same_conv_layer_norm_flatten": """network r6
input x : sequence[5, 2]
g1 = conv(x, filter=[2], padding=same, w_std=1.2)
h2 = sign(g1)
g3 = conv(h2, filter=[3], padding=same, b_std=0.25)
n4 = layer_norm(g3)
f3 = flatten(n4)
y = dense(f3)
output y
""",
    "pool_against_a_sum_of_itself": """network r7
input x : image[2, 2, 2]
p1 = sum_pool(x, window=[2, 1], stride=[2, 2], padding=same)
r2 = 1.003 * p1 + 1.265 * p1
r3 = r2 - p1
f4 = global_avg_pool(r3)
g5 = dense(f4, w_std=0.4458, b_std=0)
output g5
""",
}
# A jump summed with its own Gaussian: Stein's E[u·ψ(v)] = Cov(u, v)·E[ψ'(v)] needs ψ' with
# its δ (sign' = 2δ), though NT's NTK factors take ψ' = 0 almost everywhere. Without it the
# cross term vanished: 35% off (differential fuzzing, issue 9).
JUMPS = {
    "sign_plus_its_gaussian": """network r8
input x : vector[3]
g = dense(x, w_std=1.2, b_std=0.1)
h = sign(g)
r = h + 0.5 * g
y = dense(r)
output y
""",
    "step_minus_its_gaussian": """network r9
input x : vector[3]
g = dense(x, w_std=1.2, b_std=0.1)
h = rectified_monomial(g, degree=0)
r = h - g
y = dense(r)
output y
""",
}
# φ of a zero line is a constant array: the numpy backend printed it as a scalar that the
# conv stencil could not read.
CONSTANT_ARRAYS = {
    "erf_of_a_zero_line_under_a_conv": """network r10
input x : sequence[4, 2]
g = conv(x, filter=[2], padding=same, w_std=1.1)
r = g - g
h = erf(r, c=0.5)
q = conv(h, filter=[3], padding=same, b_std=0.1)
p = global_avg_pool(q)
y = dense(p)
output y
""",
}
REGRESSIONS = {**TWIN_FAMILY, **REFUSED_ONCE, **JUMPS, **CONSTANT_ARRAYS}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions_against_oracle(tmp_path, name):
    text = REGRESSIONS[name]
    path = tmp_path / f"{name}.ntk"
    path.write_text(text)
    model = ntkc.load(path)
    rng = np.random.default_rng(7)
    x1 = rng.standard_normal((3, *model.input_shape))
    x2 = rng.standard_normal((4, *model.input_shape))
    want = oracle_kernels(text, x1, x2)
    for backend in ("numba", "numpy"):
        k12 = model.kernel(x1, x2, backend=backend)
        k21 = model.kernel(x2, x1, backend=backend)
        for key in ("nngp", "ntk"):
            scale = np.abs(want[key]).max()
            np.testing.assert_allclose(getattr(k12, key), want[key], rtol=0, atol=1e-12 * scale,
                                       err_msg=f"{backend} {key} against the oracle")
            np.testing.assert_allclose(getattr(k21, key).T, want[key], rtol=0,
                                       atol=1e-12 * scale, err_msg=f"{backend} {key} K(x2, x1)ᵀ")
