"""The finite-width target (``ntkc compile --target jax``, ntkc.codegen.jax_target) and
its runtime (Model.finite, Model.monte_carlo_kernel): shapes, both parameterizations,
spec params, the empirical kernels' definition, and the Monte Carlo kernels of a dense
and a convolutional network against the analytic ones (tests/test_conformance.py does
the same for every spec, with rates)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy

import ntkc
from ntkc.codegen.jax_target import compile_finite
from ntkc.runtime.finite import sample_kernels
from ntkc.runtime.model import import_module_file
from ntkc.semantics.rules.activations import BUILTINS, builtin_dual

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
MLP = """network mlp{suffix}
parameterization {param}
param w = 1.3
param b = 0.2
input x : vector[3]
g1 = dense(x, w_std=w, b_std=b, width={width})
h1 = relu(g1)
g2 = dense(h1, w_std=w, b_std=b, width={width})
h2 = erf(g2)
y = dense(h2, w_std=w, b_std=b)
output y
"""


def _module(tmp_path, text: str, name: str = "net"):
    path = tmp_path / f"{name}_jax.py"
    path.write_text(compile_finite(text, f"{name}.ntk"))
    return import_module_file(path)


def _x(module, n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *module.INPUT_SHAPE))


def test_apply_shapes(tmp_path):
    m = _module(tmp_path, MLP.format(suffix="", param="ntk", width=7))
    assert m.WIDTHS == {"g1": 7, "g2": 7, "y": None} and m.OUTPUT == "y"
    p = m.init(jax.random.PRNGKey(0), 5)  # an int: every hidden line; the readout 1 unit
    assert p["g1"]["W"].shape == (3, 5) and p["g2"]["W"].shape == (5, 5)
    assert p["y"]["W"].shape == (5, 1) and p["y"]["b"].shape == (1,)
    assert m.apply(p, _x(m, 4)).shape == (4, 1)
    p = m.init(1, {"g1": 6, "y": 2})  # a dict: g2 keeps the spec's width=7
    assert p["g2"]["W"].shape == (6, 7) and m.apply(p, _x(m)).shape == (3, 2)
    with pytest.raises(ValueError, match="no line 'h1'"):
        m.init(0, {"h1": 4})
    with pytest.raises(ValueError, match=r"expected inputs of shape \(n, 3\)"):
        m.apply(p, np.ones((2, 4)))
    conv = _module(tmp_path, "network c\ninput x : image[5, 4, 2]\n"
                   "g = conv(x, filter=[3, 2], stride=[2, 1], padding=same)\n"
                   "h = relu(g)\np = avg_pool(h, window=[2, 2], padding=circular)\n"
                   "f = flatten(p)\ny = dense(f)\noutput y\n", "c")
    p = conv.init(0, 4)
    assert p["g"]["W"].shape == (3, 2, 2, 4)  # (*filter, C_in, C_out), no bias without b_std
    assert "b" not in p["g"] and p["y"]["W"].shape == (2 * 2 * 4, 1)  # flatten: P·C inputs
    assert conv.apply(p, _x(conv, 2)).shape == (2, 1)
    seq = _module(tmp_path, "network s\ninput x : sequence[6, 3]\n"
                  "g = conv(x, filter=[3], padding=valid, b_std=0.1)\nh = erf(g)\n"
                  "q = global_sum_pool(h)\ny = dense(q)\noutput y\n", "s")
    assert seq.apply(seq.init(0, 8), _x(seq, 5)).shape == (5, 1)


def test_parameterizations_draw_the_same_functions(tmp_path):
    """Standard draws W ~ N(0, w²/fan_in), b ~ N(0, b²) and applies h W + b; ntk draws
    N(0, 1) and applies w/√fan_in·h W + b·β. The same N(0, 1) draws rescaled give the same
    outputs (to rounding: 1e-12), and the standard draws have those scales (to 5% on
    ~10⁴ entries: the sample std's relative error is ~0.7%)."""
    ntk = _module(tmp_path, MLP.format(suffix="_n", param="ntk", width=100), "n")
    std = _module(tmp_path, MLP.format(suffix="_s", param="standard", width=100), "s")
    p = ntk.init(3, 100)
    w, b = ntk.PARAMS["w"], ntk.PARAMS["b"]
    scaled = {line: {"W": a["W"] * w / np.sqrt(a["W"].shape[0]), "b": a["b"] * b}
              for line, a in p.items()}
    x = _x(ntk, 6)
    np.testing.assert_allclose(std.apply(scaled, x), ntk.apply(p, x), rtol=1e-12, atol=1e-12)
    q = std.init(3, 100)
    assert np.std(q["g2"]["W"]) == pytest.approx(w / np.sqrt(100), rel=0.05)
    assert np.std(q["g2"]["b"]) == pytest.approx(b, rel=0.3)  # 100 entries: ~7% each
    assert np.std(std.init(3, 100, {"w": 2.6})["g2"]["W"]) == pytest.approx(0.26, rel=0.05)


def test_spec_params_override(tmp_path):
    """spec_params is to apply what params= is to Model.kernel: apply with w = 0.7 equals
    the network compiled with 0.7 as the default, on the same draws (to rounding)."""
    m = _module(tmp_path, MLP.format(suffix="", param="ntk", width=9))
    m07 = _module(tmp_path, MLP.format(suffix="", param="ntk", width=9).replace(
        "param w = 1.3", "param w = 0.7"), "m07")
    p, x = m.init(0, 16), _x(m)
    np.testing.assert_allclose(m.apply(p, x, {"w": 0.7}), m07.apply(p, x), rtol=1e-13)
    assert not np.allclose(m.apply(p, x, {"w": 0.7}), m.apply(p, x))
    with pytest.raises(ValueError, match="unknown param 'v'"):
        m.apply(p, x, {"v": 1.0})
    with pytest.raises(ValueError, match="finite real number"):
        m.apply(p, x, {"w": float("nan")})


def test_empirical_kernel_is_the_jacobian_inner_product(tmp_path, monkeypatch):
    """One hidden layer, ntk parameterization, written out by hand (numpy): f = c₂·φ(g)·v
    + b·β₂ with g = c₁·x W + b·β₁, c = w/√fan_in. Σ_θ ∂f∂f' over W, β₁, v, β₂ is
    c₂²(δ·δ')(c₁² x·x' + b²) + c₂² φ·φ' + b² with δ = φ'(g) v. Both ways jax computes it
    (stored Jacobians, and one column at a time) agree with it to 1e-12."""
    m = _module(tmp_path, "network one\nparam w = 1.2\nparam b = 0.3\ninput x : vector[4]\n"
                "g = dense(x, w_std=w, b_std=b)\nh = erf(g)\ny = dense(h, w_std=w, b_std=b)\n"
                "output y\n", "one")
    n, (w, b) = 50, (1.2, 0.3)
    p, x1, x2 = m.init(2, n), _x(m, 3, 1), _x(m, 2, 2)
    W, b1, v = (np.asarray(p["g"]["W"]), np.asarray(p["g"]["b"]), np.asarray(p["y"]["W"]))

    def parts(x):
        g = w / 2 * x @ W + b * b1  # fan_in 4
        phi = np.asarray(jax.scipy.special.erf(g))
        return phi, 2 / np.sqrt(np.pi) * np.exp(-g**2) * v[:, 0]

    (f1, d1), (f2, d2) = parts(x1), parts(x2)
    c2 = w**2 / n
    want = c2 * (d1 @ d2.T) * (w**2 / 4 * x1 @ x2.T + b**2) + c2 * f1 @ f2.T + b**2
    np.testing.assert_allclose(m.empirical_kernel(p, x1, x2, get="ntk"), want, rtol=1e-12)
    monkeypatch.setattr(m, "_JACOBIAN_BYTES", 0)
    np.testing.assert_allclose(m.empirical_kernel(p, x1, x2, get="ntk"), want, rtol=1e-12)
    k = m.empirical_kernel(p, x1)
    np.testing.assert_allclose(k.nngp, m.apply(p, x1) @ m.apply(p, x1).T, rtol=1e-14)
    assert k.ntk.shape == (3, 3) and np.allclose(k.ntk, k.ntk.T)


@pytest.mark.parametrize("name, width", [("erf_mlp", 512), ("digits_cntk_gap", 64)])
def test_monte_carlo_kernel_matches_the_analytic_kernel(name, width):
    """Model.monte_carlo_kernel over 24 networks against Model.kernel, per entry: within
    5 standard errors of the mean (SE from the networks' spread) plus the O(1/n) bias,
    allowed as 2/n of s_ij = sqrt(K_ii K_jj) (measured bias·n: ≤ 1 for these two). The
    NNGP networks read out `width` units (one unit's product f(x)f(x') fluctuates O(1) at
    any width), the NTK ones one unit."""
    model = ntkc.load(ROOT / "examples" / f"{name}.ntk")
    module = model.finite()
    assert model.finite() is module  # compiled once, cached by the spec's hash
    x = _x(module, 3, 4)
    analytic = model.kernel(x, backend="numpy")
    every = {line: width for line in module.WIDTHS}
    for kind, w in (("nngp", every), ("ntk", width)):
        mean = model.monte_carlo_kernel(x, width=w, n_samples=24, seed=1, get=kind)
        samples = sample_kernels(module, x, None, w, 24, 1, kind)[kind]
        np.testing.assert_allclose(samples.mean(axis=0), mean, rtol=1e-12)
        exact = getattr(analytic, kind)
        s = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
        se = samples.std(axis=0, ddof=1) / np.sqrt(24)
        assert np.all(np.abs(mean - exact) <= 5 * se + 2 / width * s), (kind, mean, exact)


def test_monte_carlo_kernel_detects_a_wrong_spec():
    """The check above can fail: networks of w_std 1.3 against the kernel of 1.5."""
    model = ntkc.load(ROOT / "examples" / "erf_mlp.ntk")
    x = _x(model.finite(), 3, 4)
    exact = model.kernel(x, get="ntk", backend="numpy")
    samples = sample_kernels(model.finite(), x, width=512, n_samples=24, seed=1, get="ntk",
                             params={"w": 1.3})["ntk"]
    se = samples.std(axis=0, ddof=1) / np.sqrt(24)
    s = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert np.any(np.abs(samples.mean(axis=0) - exact) > 5 * se + 2 / 512 * s)


def _eval_phi(text: str):
    return eval(f"lambda z: {text}", {"jax": jax})  # test code: the printer's own output


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_printed_nonlinearities(name):
    """φ of every built-in, printed as jax, equals sympy's φ (evaluated with mpmath to 15
    digits) at points across [-3, 3], to 1e-12 relative."""
    from ntkc.codegen.jax_target import JaxCodePrinter

    args = {"alpha": 0.1, "a": 0.7, "b": -0.4 if name == "gaussian" else 1.3, "c": 0.2,
            "degree": 3, "coef": [0.1, -0.5, 0.3]}
    values = {a.name: args[a.name] for a in BUILTINS[name].args}
    z = sympy.Dummy("z", real=True)
    phi = builtin_dual(name, **values).phi(z)
    f = _eval_phi(JaxCodePrinter({z: "z"}).doprint(phi))
    points = np.array([-3.0, -1.1, -0.2, 0.3, 0.9, 2.5])
    want = np.array([float(phi.subs(z, sympy.Float(v)).evalf(30)) for v in points])
    np.testing.assert_allclose(np.asarray(f(jax.numpy.asarray(points))), want, rtol=1e-12,
                               atol=1e-14)


def test_compile_target_jax_module_imports(tmp_path):
    """`ntkc compile --target jax` writes <network>_jax.py, which imports only the
    standard library, numpy and jax; `import ntkc` imports no jax."""
    out = tmp_path / "gen"
    subprocess.run([sys.executable, "-m", "ntkc.cli", "compile", "--target", "jax",
                    str(ROOT / "examples" / "residual_mlp.ntk"), "-o", str(out)], check=True,
                   capture_output=True)
    source = (out / "residual_mlp_jax.py").read_text()
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"collections", "math", "jax", "numpy"}, roots
    m = import_module_file(out / "residual_mlp_jax.py")
    assert m.TIED == {"d2": "g0", "d4": "g0"}  # summed with g0: one width
    with pytest.raises(ValueError, match="different widths for g0 \\+ d2 \\+ d4"):
        m.init(0, {"g0": 8, "d1": 8, "d2": 9, "d3": 8, "y": 1})
    code = "import sys, ntkc, ntkc.runtime.finite; print('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    assert done.stdout.strip() == "False"


def test_dropout_masks(tmp_path):
    """dropout draws its mask from apply's key: none is refused; the same key gives the
    same outputs, x2 given apart from x1 gets other masks (independent inputs: the kernel's
    entry between them keeps no 1/rate), x2=None the same masks on both sides."""
    m = _module(tmp_path, "network d\ninput x : vector[3]\ng = dense(x, b_std=0.1)\n"
                "h = relu(g)\nd = dropout(h, rate=0.5)\ny = dense(d)\noutput y\n", "d")
    p, x = m.init(0, 64), _x(m, 2)
    assert m.RANDOM == ("d",)
    with pytest.raises(ValueError, match="apply needs key="):
        m.apply(p, x)
    key = jax.random.PRNGKey(5)
    np.testing.assert_array_equal(m.apply(p, x, key=key), m.apply(p, x, key=key))
    same = m.empirical_kernel(p, x, key=key, get="nngp")
    apart = m.empirical_kernel(p, x, x, key=key, get="nngp")
    f = np.asarray(m.apply(p, x, key=key))
    np.testing.assert_allclose(same, f @ f.T, rtol=1e-13)
    assert not np.allclose(np.diag(apart), np.diag(same))
