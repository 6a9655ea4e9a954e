"""Differential fuzzing as a permanent invariant (issue 9).

Random valid programs (tests/fuzz/programs.py, a hypothesis strategy over every op and
attribute of the language) must give kernels that are finite, symmetric (K(x1,x2) =
K(x2,x1)ᵀ, Gram matrices), PSD, consistent between the Gram and cross paths, continuous in
their w_std/b_std literals, equal on the numpy and numba backends, and equal to the
independent oracle (tests/oracle.py). See tests/fuzz/checks.py for the tolerances, and
tests/fuzz/campaign.py for long campaigns outside pytest.

A bounded, derandomized sample runs here: numpy-backend checks on many programs (cheap) and
numba agreement on a few (each costs a numba compile). Plus the reproducers the campaigns
found, as plain tests.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from fuzz.checks import check_program, violation_class
from fuzz.programs import BUILTIN_NONLINS, programs, random_program
from hypothesis import HealthCheck, given, settings

from ntkc.compiler import compile_text
from ntkc.errors import SpecError

# Open findings (/tmp/fuzz_findings.md at the time, see the issue): violations that match
# one of these (class, message fragment) pairs are reported by the campaign but do not fail
# CI. Remove an entry when its fix lands; the regression tests below pin the fixed ones.
KNOWN = [
    # A constant per-position covariance (layer_norm, sign, …) under a conv/pool/flatten
    # stencil is refused: valid programs rejected.
    ("rejected", "a constant covariance under a spatial op is not supported"),
    # A pool line against a linear combination of itself: derive opens the pool first.
    ("rejected", "is not supported: combine"),
    # The oracle's own limits (not ntkc's): concat against concat, params as builtin
    # nonlinearity arguments, layer_norm of flatten.
    ("oracle-error", ""),
    ("oracle", "concat"),
]

SETTINGS = {"derandomize": True, "deadline": None, "database": None,
            "suppress_health_check": list(HealthCheck)}


def unexpected(violations: list[str], text: str) -> list[str]:
    out = []
    for v in violations:
        cls = violation_class(v)
        if any(cls == k and frag in v for k, frag in KNOWN if k != "oracle"):
            continue
        if cls == "oracle" and "concat(" in text:  # the oracle's concat-vs-concat rule
            continue
        out.append(v)
    return out


@settings(max_examples=60, **SETTINGS)
@given(programs())
def test_random_programs_numpy_backend(prog):
    violations = check_program(prog.text, np.random.default_rng(0), numba=False)
    bad = unexpected(violations, prog.text)
    assert not bad, "\n".join(bad) + "\n\n" + prog.text


@pytest.mark.slow
@settings(max_examples=8, **SETTINGS)
@given(programs())
def test_random_programs_numba_backend(prog):
    violations = check_program(prog.text, np.random.default_rng(1), numba=True,
                               continuity=False)
    bad = unexpected(violations, prog.text)
    assert not bad, "\n".join(bad) + "\n\n" + prog.text


def test_generator_acceptance_and_coverage():
    """`ntkc check` accepts the generated programs (rejections are positioned errors of
    known compiler limits only), and the generator exercises every op and attribute."""
    n, rejected, unknown, covered = 200, 0, [], set()
    for seed in range(n):
        prog = random_program(random.Random(seed))
        covered |= prog.ops
        try:
            compile_text(prog.text, "gen.ntk", target="cpu")
        except SpecError as e:
            rejected += 1
            first = str(e).splitlines()[0]
            assert first.startswith("gen.ntk:"), first  # positioned
            if not any(k == "rejected" and frag in first for k, frag in KNOWN):
                unknown.append(f"{first}\n{prog.text}")
    assert not unknown, "\n\n".join(unknown[:3])
    assert rejected <= 0.1 * n, rejected
    ops = {"vector", "sequence", "image", "dense", "w_std", "b_std", "width", "conv-valid",
           "conv-same", "conv-circular", "conv-stride", "avg_pool", "sum_pool", "pool-valid",
           "pool-same", "pool-circular", "global_avg_pool", "global_sum_pool", "flatten",
           "lincomb", "lincomb-same-line", "concat", "layer_norm", "standard", "param-use",
           "unused-line", "nonlin-poly2", "nonlin-cubic_p", "nonlin-my_tanh",
           *BUILTIN_NONLINS}
    assert ops <= covered, sorted(ops - covered)


# -- reproducers found by fuzzing (see tests/fuzz/campaign.py) -------------------------------
def _net(body: str, shape: str = "sequence[4, 1]") -> str:
    return f"network regress\ninput x : {shape}\n{body.strip()}\n"


REGRESSIONS = {
    # A global pool of a strided VALID conv, then sign: K(x1,x2) was not K(x2,x1)ᵀ (0.97).
    "strided_valid_gsum_sign": _net("""
l1 = conv(x, filter=[3], padding=valid, w_std=1.0, stride=[3])
l2 = global_sum_pool(l1)
l4 = sign(l2)
y = dense(l4, w_std=1, b_std=0.1)
output y""", "sequence[6, 1]"),
    # flatten of relu of an unbiased conv: asymmetric.
    "conv_relu_flatten": _net("""
g = conv(x, filter=[2])
h = relu(g)
p = flatten(h)
y = dense(p)
output y"""),
    # relu after flatten of a 1-tap SAME conv: asymmetric.
    "conv_flatten_relu": _net("""
g = conv(x, filter=[1], padding=same, w_std=0.5, b_std=0.1)
p = flatten(g)
h = relu(p)
y = dense(h, w_std=1.3)
output y"""),
    # Strided VALID conv, relu, strided SAME conv, global_avg_pool, erf: 25% off Neural
    # Tangents (the oracle stands in for NT here).
    "strided_valid_same_gap_erf": _net("""
g1 = conv(x, filter=[3], stride=[2], padding=valid, w_std=1.3, b_std=0.2)
h1 = relu(g1)
g2 = conv(h1, filter=[2], stride=[2], padding=same, w_std=1.1, b_std=0.1)
p = global_avg_pool(g2)
h2 = erf(p)
y = dense(h2, w_std=1.2, b_std=0.1)
output y""", "sequence[8, 2]"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression_numpy(name):
    text = REGRESSIONS[name]
    for seed in range(3):
        violations = check_program(text, np.random.default_rng(seed), numba=False)
        assert not violations, "\n".join(violations)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression_numba(name):
    violations = check_program(REGRESSIONS[name], np.random.default_rng(7), numba=True,
                               continuity=False)
    assert not violations, "\n".join(violations)
