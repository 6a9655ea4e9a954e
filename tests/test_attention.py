"""attention(h, ...): Neural Tangents' GlobalSelfAttention with linear scaling
(ntkc.semantics.rules.attention). Its two Neural Tangents cases run in test_reference.py
(both backends); here:

* every mechanism (softmax, identity, relu, abs; only softmax and identity have NT cases),
  a param in w_key_std, an image input, stacked attention and both readouts (flatten:
  the mix's diagonal; global pool: its full output) against an independent numpy
  interpreter that keeps the joint covariance over all (input, position) pairs: to 1e-12
  (the same formulas in another order: rounding only);
* the numba kernels against the numpy reference, to 1e-12;
* the cuda kernels against the CPU ones under numba's simulator;
* a Monte Carlo check: finite attention networks (tests/mc_attention.py, plain numpy with
  hand-written backprop) against the analytic NNGP and NTK;
* spec errors, at their positions.
"""

from __future__ import annotations

import numpy as np
import pytest
from mc_attention import STDS, check_gradients, draw, empirical_ntk, features
from scipy.special import softmax
from test_cuda import CONV_CASES, _check, _compare

import ntkc
from ntkc.compiler import compile_file, compile_text
from ntkc.errors import SpecError

# -- an independent interpreter: joint covariances over (input, position) ----------------


def _relu(k, t):
    s = np.sqrt(np.diag(k))
    c = np.clip(k / np.outer(s, s), -1, 1)
    # exactly 1 on the diagonal: arccos near 1 would turn the rounding of k/(s·s) into
    # ~1e-9 of Θ (as Neural Tangents' own diagonals, test_reference.py)
    np.fill_diagonal(c, 1.0)
    a = np.arccos(c)
    return (np.outer(s, s) * (np.sin(a) + (np.pi - a) * c) / (2 * np.pi),
            t * (np.pi - a) / (2 * np.pi))


def _erf(k, t):
    d = 1 + 2 * np.diag(k)
    return (2 / np.pi * np.arcsin(2 * k / np.sqrt(np.outer(d, d))),
            t * 4 / np.pi / np.sqrt(np.outer(d, d) - 4 * k * k))


def _attention(k, t, n, p, wk, wv, wo, b, mechanism):
    """K and Θ after attention: block-diagonal weights, A(x) from x's own block."""
    mech = {"softmax": lambda z: softmax(z, axis=-1), "identity": lambda z: z,
            "relu": lambda z: np.maximum(z, 0), "abs": np.abs}[mechanism]
    g = np.zeros_like(k)
    for i in range(n):
        block = slice(i * p, (i + 1) * p)
        g[block, block] = mech(wk**2 * k[block, block])
    ov = wo**2 * wv**2
    mk, mt = g @ k @ g.T, g @ t @ g.T
    return ov * mk + b**2, ov * (mt + 2 * mk) + b**2


def joint_reference(x, layers):
    """NNGP and NTK Gram matrices of inputs x (n, P, C) through ``layers`` (op, kwargs),
    with 1-wide convs (per-position dense) only: every position pair of every input pair
    until the readout (flatten or global_avg_pool), then one entry per input pair."""
    n, p, c = x.shape
    z = x.reshape(n * p, c)
    k, t = z @ z.T / c, np.zeros((n * p, n * p))
    for op, kw in layers:
        if op in ("conv", "dense"):
            k = kw["w"] ** 2 * k + kw["b"] ** 2
            t = k + kw["w"] ** 2 * t
        elif op == "relu":
            k, t = _relu(k, t)
        elif op == "erf":
            k, t = _erf(k, t)
        elif op == "attention":
            k, t = _attention(k, t, n, p, **kw)
        elif op == "flatten":  # the mean of the same-position entries
            k, t = (np.einsum("aibi->ab", m.reshape(n, p, n, p)) / p for m in (k, t))
        else:
            assert op == "global_avg_pool", op
            r = np.kron(np.eye(n), np.ones((1, p)) / p)
            k, t = r @ k @ r.T, r @ t @ r.T
    return k, t


def _spec(shape: str, lines: list[str], readout: str) -> str:
    body = "\n".join(lines)
    return (f"network t\nparam wk = 0.7\ninput x : {shape}\n{body}\n"
            f"p = {readout}(r)\ny = dense(p, w_std=1.0, b_std=0.1)\noutput y\n")


def _layers(mechanism: str, wk: float, readout: str) -> list:
    att = {"wk": wk, "wv": 1.1, "wo": 0.9, "b": 0.2, "mechanism": mechanism}
    return [("conv", {"w": 1.2, "b": 0.1}), ("relu", {}), ("attention", att), ("erf", {}),
            (readout, {}), ("dense", {"w": 1.0, "b": 0.1})]


SEQ_LINES = ["g = conv(x, filter=[1], w_std=1.2, b_std=0.1)", "h = relu(g)",
             ("a = attention(h, n_heads=3, w_key_std=wk, w_value_std=1.1, w_out_std=0.9, "
              "b_std=0.2, mechanism={m})"), "r = erf(a)"]


def _model(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.ntk"
    path.write_text(text)
    return ntkc.load(path)


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=what)


@pytest.mark.parametrize("mechanism", ["softmax", "identity", "relu", "abs"])
@pytest.mark.parametrize("readout", ["flatten", "global_avg_pool"])
def test_mechanisms_match_joint_reference(tmp_path, mechanism, readout):
    lines = [ln.replace("{m}", mechanism) for ln in SEQ_LINES]
    model = _model(tmp_path, f"{mechanism}_{readout}",
                   _spec("sequence[4, 3]", lines, readout))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 3))
    for wk in (0.7, 1.3):  # the default and a runtime param: w_key² is a stencil scale
        got = model.kernel(x, params={"wk": wk}, backend="numpy")
        k, t = joint_reference(x, _layers(mechanism, wk, readout))
        _close(got.nngp, k, f"nngp wk={wk}")
        _close(got.ntk, t, f"ntk wk={wk}")


# An image (positions row-major), attention twice (the second reads the first's (x, x̃)
# covariance), and a standard-parameterization net: NT's attention has no
# parameterization of its own, so its rule is the same there.
STACKED = """network stacked
parameterization {par}
input x : image[2, 3, 2]
g = conv(x, filter=[1, 1], w_std=1.2, b_std=0.1, width=8)
h = relu(g)
a1 = attention(h, n_heads=2, w_key_std=0.8, w_value_std=1.1, w_out_std=0.9, mechanism=abs)
r = relu(a1)
a2 = attention(r, w_key_std=1.4, b_std=0.3, mechanism=softmax, width=8)
p = global_avg_pool(a2)
y = dense(p, w_std=1.0, b_std=0.1)
output y
"""


def test_numba_matches_numpy_and_reference(tmp_path):
    model = _model(tmp_path, "stacked", STACKED.format(par="ntk"))
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((5, 2, 3, 2)), rng.standard_normal((3, 2, 3, 2))
    layers = [("conv", {"w": 1.2, "b": 0.1}), ("relu", {}),
              ("attention", {"wk": 0.8, "wv": 1.1, "wo": 0.9, "b": 0.0, "mechanism": "abs"}),
              ("relu", {}),
              ("attention", {"wk": 1.4, "wv": 1.0, "wo": 1.0, "b": 0.3, "mechanism": "softmax"}),
              ("global_avg_pool", {}), ("dense", {"w": 1.0, "b": 0.1})]
    want = joint_reference(np.concatenate([x1, x2]).reshape(8, 6, 2), layers)
    for backend in ("numba", "numpy"):
        k12 = model.kernel(x1, x2, backend=backend)
        k11 = model.kernel(x1, backend=backend)
        _close(k12.nngp, want[0][:5, 5:], f"{backend} nngp_12")
        _close(k12.ntk, want[1][:5, 5:], f"{backend} ntk_12")
        _close(k11.nngp, want[0][:5, :5], f"{backend} nngp_11")
        _close(k11.ntk, want[1][:5, :5], f"{backend} ntk_11")
    # float32 inputs: the weights from float32 (x, x̃) arrays; tracks float64 to 1e-5
    k32 = model.kernel(x1.astype(np.float32), x2.astype(np.float32))
    np.testing.assert_allclose(k32.nngp, want[0][:5, 5:], rtol=1e-5)


def test_standard_parameterization_same_rule(tmp_path):
    std = _model(tmp_path, "stacked_std", STACKED.format(par="standard"))
    ntk = _model(tmp_path, "stacked_ntk", STACKED.format(par="ntk"))
    x = np.random.default_rng(5).standard_normal((3, 2, 3, 2))
    a, b = std.kernel(x, backend="numpy"), ntk.kernel(x, backend="numpy")
    _close(a.nngp, b.nngp, "nngp")  # K does not depend on the parameterization
    # Θ differs only through the conv and readout dense (standard: fan-in·K), not attention
    assert not np.allclose(a.ntk, b.ntk)


def test_structure_needs_every_position_pair(tmp_path):
    # attention mixes positions: even read out by flatten, the line below it is full
    text = _spec("sequence[4, 3]", [ln.replace("{m}", "relu") for ln in SEQ_LINES], "flatten")
    model = _model(tmp_path, "structure", text)
    s = model.module.STRUCTURE
    assert s["h"] == "full" and s["a"] == "diag" and s["r"] == "diag", s


@pytest.mark.slow
def test_cuda_simulator_matches_cpu(tmp_path):
    """The GPU's mix (A_p·S into the scratch row past the plan's slots, then its rows
    against A_q's; the weights come from the CPU's point phase) against the CPU kernels:
    the stacked net (full mixes) and a flatten readout (a diagonal mix), x2 given and
    None, float32, fewer blocks than pairs; test_cuda's tolerances (1e-10, 1e-5)."""
    flat = _spec("sequence[4, 3]", [ln.replace("{m}", "relu") for ln in SEQ_LINES], "flatten")
    for name, text, cases in (("stacked", STACKED.format(par="ntk"), CONV_CASES[:5]),
                              ("flat", flat, CONV_CASES[:1])):
        (tmp_path / f"{name}.ntk").write_text(text)
        (tmp_path / f"{name}.py").write_text(
            compile_file(tmp_path / f"{name}.ntk", spec_name=f"{name}.ntk").source)
        _check(_compare(tmp_path / f"{name}.py", cases))


# -- Monte Carlo --------------------------------------------------------------------------
MC_SPEC = f"""network mc_attention
input x : sequence[4, 3]
g = conv(x, filter=[1], w_std={STDS['w1']}, b_std={STDS['b1']})
h = relu(g)
a = attention(h, n_heads=2, w_key_std={STDS['wk']}, w_value_std={STDS['wv']}, \
w_out_std={STDS['wo']}, b_std={STDS['bo']})
p = global_avg_pool(a)
y = dense(p, w_std={STDS['wr']}, b_std={STDS['br']})
output y
"""


@pytest.mark.slow
def test_monte_carlo_finite_attention(tmp_path):
    """Finite networks of width n = 128 (hidden, key, value and output channels), D = 200
    draws, three inputs: the mean empirical NNGP (readout integrated out, wr²·z·z'/n +
    br²) and NTK (backprop, all weights including the keys') against ntkc's kernels.

    Tolerance per entry: 4·SE + B/n·s, SE the standard error over the draws, s =
    sqrt(K(x,x)·K(x',x')). B = 3: the mean's finite-width bias, O(1/n), measured offline
    with these inputs at n = 32 (1600 draws), 64 (800) and 128 (400): largest entry
    2.2/n, 2.8/n, 1.2/n for the NNGP, 2.4/n, 3.1/n, 1.7/n for the NTK (n = 256 and 512
    were within their SE). The tolerance is then ~8% of s; leaving out the value/output
    weights' 2·mix(K) term of Θ moves it by ~25%, forgetting the softmax by more."""
    assert check_gradients(np.random.default_rng(1)) < 1e-6  # the backprop is right
    model = _model(tmp_path, "mc_attention", MC_SPEC)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 3))
    want = model.kernel(x, backend="numpy")
    n, draws = 128, 200
    ks, ts = [], []
    for _ in range(draws):
        th = draw(rng, 3, n, 2)
        z = features(x, th)
        ks.append(STDS["wr"] ** 2 * z @ z.T / n + STDS["br"] ** 2)
        ts.append(empirical_ntk(x, x, th))
    for name, est, limit in (("nngp", np.array(ks), want.nngp), ("ntk", np.array(ts), want.ntk)):
        s = np.sqrt(np.outer(np.diag(limit), np.diag(limit)))
        se = est.std(0, ddof=1) / np.sqrt(draws)
        err = np.abs(est.mean(0) - limit)
        assert (err <= 4 * se + 3 / n * s).all(), (name, err / s, se / s)


# -- spec errors ----------------------------------------------------------------------------
SEQ = "network t\ninput x : sequence[4, 3]\ng = conv(x, filter=[1])\nh = relu(g)\n"
TAIL = "p = flatten(a)\ny = dense(p)\noutput y\n"


@pytest.mark.parametrize("line, where, message", [
    ("a = attention(h, mechanism=sigmoid)", "5:28",
     "attention's mechanism must be one of softmax, identity, relu, abs"),
    ("a = attention(h, n_heads=0)", "5:26", "attention's n_heads must be a positive integer"),
    ("a = attention(h, n_heads=2.5)", "5:26", "attention's n_heads must be a non-negative"),
    ("a = attention(h, heads=2)", "5:18", "attention has no argument 'heads'"),
    ("a = attention(h, w_key_std=h)", "5:28", "must be a number or a param, not the line"),
])
def test_spec_errors(line, where, message):
    with pytest.raises(SpecError) as e:
        compile_text(SEQ + line + "\n" + TAIL, "t.ntk")
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"t.ntk:{where}: error: "), str(e.value)
    assert message in first, str(e.value)


def test_attention_on_a_vector_is_an_error():
    text = "network t\ninput x : vector[3]\ng = dense(x)\na = attention(g)\noutput a\n"
    with pytest.raises(SpecError, match="t.ntk:4:5: error: attention needs a sequence or image"):
        compile_text(text, "t.ntk")


def test_zero_input_covariance_is_an_error():
    text = SEQ.replace("conv(x, filter=[1])", "conv(x, filter=[1], w_std=0)") + \
        "a = attention(h)\n" + TAIL
    with pytest.raises(SpecError, match="identically zero"):
        compile_text(text, "t.ntk")
