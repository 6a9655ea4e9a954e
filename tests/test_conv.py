"""Convolutional networks: the covariance-structure pass, the generated numba
kernels against the numpy reference backend (1e-12), and Gram-matrix properties.

Reference values for conv nets are in test_reference.py (Neural Tangents) and
test_monte_carlo_conv.py (finite networks); here the two backends, which share
only the derivation, check each other on ops the references do not cover
(residual blocks, layer_norm, concat, sum pools, strides, standard
parameterization, sequences)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import ntkc
from ntkc.compiler import compile_text
from ntkc.semantics.structure import line_structure, pair_work

FLAT = """network flat
input x : image[6, 6, 2]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)
h1 = relu(g1)
g2 = conv(h1, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)
h2 = relu(g2)
g3 = conv(h2, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)
h3 = relu(g3)
f = flatten(h3)
y = dense(f)
output y
"""

# The same net with one pooling line after h2.
POOLED = FLAT.replace("g3 = conv(h2,", "p = avg_pool(h2, window=[2, 2])\ng3 = conv(p,")

# Many ops at once, on small inputs so the numba build stays short.
MIXED = """network mixed
param w = 1.3
input x : image[5, 4, 2]
g1 = conv(x, filter=[3, 2], padding=circular, w_std=w, b_std=0.2)
h1 = erf(g1)
g2 = conv(h1, filter=[3, 3], padding=same, w_std=w, b_std=0.1)
r = g2 + 0.5 * g1
n = layer_norm(r)
h2 = relu(n)
c = concat(h2, h1)
g3 = conv(c, filter=[2, 2], stride=[2, 1], padding=valid, w_std=1.1)
h3 = gelu(g3)
s = sum_pool(h3, window=[2, 1])
q = global_avg_pool(s)
y = dense(q, w_std=1.0, b_std=0.1)
output y
"""

STANDARD_SEQ = """network seq_standard
parameterization standard
input x : sequence[7, 3]
g1 = conv(x, filter=[3], padding=same, w_std=1.2, b_std=0.1, width=16)
h1 = relu(g1)
g2 = conv(h1, filter=[2], stride=[2], padding=valid, w_std=1.2, b_std=0.1, width=8)
h2 = abs(g2)
q = global_sum_pool(h2)
y = dense(q, w_std=1.0, b_std=0.0)
output y
"""


# h1 is read by a global pool (all position pairs) and, through g2, by flatten (same-position
# pairs only): g2's conv reads the diagonal of a full array.
BOTH = """network both
input x : image[5, 5, 2]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.3, b_std=0.1)
h1 = relu(g1)
g2 = conv(h1, filter=[3, 3], padding=same, w_std=1.2, b_std=0.1)
h2 = relu(g2)
f = flatten(h2)
q = global_avg_pool(h1)
a = dense(f, w_std=1.1)
b = dense(q, w_std=0.9, b_std=0.1)
y = a + b
output y
"""


def _structure(text: str) -> dict[str, str]:
    rec = compile_text(text, "t.ntk").recursion
    from ntkc.semantics.structure import analyse
    return line_structure(rec, analyse(rec))


def test_flatten_readout_needs_only_diagonals():
    rec = compile_text(FLAT, "flat.ntk").recursion
    from ntkc.semantics.structure import analyse
    structure = analyse(rec)
    assert set(line_structure(rec, structure).values()) == {"diag", "scalar"}
    # 36 positions per spatial array: no P² work anywhere per pair.
    assert pair_work(rec, structure) == 36 * sum(1 for a in rec.pair if a.spatial)
    source = compile_text(FLAT, "flat.ntk").source
    pair_code = source[source.index("def _pair_rows"):source.index("def _padded")]
    assert "_conv_full_rows(" not in pair_code and "_pool_full(" not in pair_code
    called = set(re.findall(r"(_local\d+)\(", pair_code))
    assert called  # the pointwise formulas, outlined: each runs over one index
    for name in called:
        body = source[source.index(f"def {name}("):].split("\n\n")[0]
        assert "for _k in range" in body and "for j in range" not in body


def test_a_line_read_by_pool_and_flatten():
    structure = _structure(BOTH)
    assert structure["h1"] == "full" and structure["g2"] == "diag"


def test_one_pool_switches_exactly_the_lines_below_it():
    before, after = _structure(FLAT), _structure(POOLED)
    below = {"x", "g1", "h1", "g2", "h2"}
    assert {k for k, v in after.items() if v == "full"} == below
    assert {k: v for k, v in after.items() if k not in below} == {
        "p": "diag", "g3": "diag", "h3": "diag", "f": "scalar", "y": "scalar"}
    assert all(before[k] == "diag" for k in below)


def _inputs(shape, n, seed):
    return np.random.default_rng(seed).standard_normal((n, *shape))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    tmp = tmp_path_factory.mktemp("conv")
    for text in (MIXED, STANDARD_SEQ, BOTH):
        name = text.split()[1]
        (tmp / f"{name}.ntk").write_text(text)
        out[name] = ntkc.load(tmp / f"{name}.ntk")
    return out


@pytest.mark.parametrize("name", ["mixed", "seq_standard", "both"])
def test_numba_matches_numpy_reference(models, name):
    m = models[name]
    x1, x2 = _inputs(m.input_shape, 5, 0), _inputs(m.input_shape, 4, 1)
    for args in ((x1, x2), (x1,)):
        fast = m.kernel(*args)
        ref = m.kernel(*args, backend="numpy")
        for got, want in zip(fast, ref):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["mixed", "seq_standard"])
def test_gram_symmetric_psd_and_diagonal(models, name):
    m = models[name]
    x = _inputs(m.input_shape, 7, 2)
    k = m.kernel(x)
    for g in k:
        np.testing.assert_array_equal(g, g.T)
        assert np.linalg.eigvalsh(g).min() > -1e-10 * np.abs(g).max()
    # The diagonal (per-input formulas) agrees with the pair formulas at x' = x.
    cross = m.kernel(x, x.copy())
    for g, c in zip(k, cross):
        np.testing.assert_allclose(np.diag(g), np.diag(c), rtol=1e-7)


def test_params_float32_and_tiles(models):
    m = models["mixed"]
    x = _inputs(m.input_shape, 7, 3)
    k64 = m.kernel(x, params={"w": 0.9})
    k32 = m.kernel(x.astype(np.float32), params={"w": 0.9})
    assert k32.ntk.dtype == np.float32
    np.testing.assert_allclose(k32.ntk, k64.ntk, rtol=1e-5)
    assert not np.allclose(k64.ntk, m.kernel(x).ntk)  # the param is used
    tiled = m.kernel(x, tile=3)
    np.testing.assert_array_equal(tiled.ntk, m.kernel(x).ntk)


def test_memory_estimate_printed_then_refused(models, capsys):
    m = models["mixed"]
    x = _inputs(m.input_shape, 6, 4)
    m.kernel(x, progress=True, tile=4)
    err = capsys.readouterr().err
    assert "ntkc: 2 Gram matrix(es) 6×6 float64" in err and "21 pairs in 3 tile(s)" in err
    # the outputs (2 × 200000² float64 = 596.0 GiB) plus what the run holds besides them
    with pytest.raises(MemoryError, match=r"needs 596\.3 GiB \(.*Gram matrices 596\.0 GiB\), "
                       r"over the 1\.0 GiB available"):
        m.kernel(np.zeros((200000, *m.input_shape)), memory_limit=2**30)


def test_module_does_not_grow_with_the_image_and_shares_layers():
    """Issue 10: no tables or code per position (the size of a 32×32 module is the size of
    an 8×8 one, up to the digits of the offsets), and a deeper net calls the same outlined
    formulas (numba's compile time is the same few functions)."""
    from ntkc.bench.conv import deep_spec

    def source(depth, side):
        return compile_text(deep_spec(depth, (side, side, 3), "global_avg_pool", "n"),
                            "n.ntk").source

    small, large = source(3, 8), source(3, 32)
    assert len(large) < 1.1 * len(small)
    shallow, deep = source(3, 32), source(12, 32)
    assert deep.count("\ndef _local") == shallow.count("\ndef _local") <= 8
    assert len(deep) < 200_000
