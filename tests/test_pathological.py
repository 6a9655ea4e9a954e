"""Issue 9: degenerate and pathological programs (found by fuzzing) either compile to the
right limit or give a positioned spec error, never a traceback, a hang or a broken module."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from ntkc.compiler import compile_text
from ntkc.errors import SpecError
from ntkc.runtime.model import import_module_file

HEAD = "input x : vector[3]\ng = dense(x, w_std=1.2, b_std=0.1)\n"
X = np.random.default_rng(0).standard_normal((4, 3))


def kernels(text: str, tmp_path, x: np.ndarray = X, name: str = "t") -> tuple:
    """(nngp, ntk) of a spec through its generated module, numba and numpy backends."""
    compiled = compile_text(f"network {name}\n" + text, "t.ntk")
    path = tmp_path / f"{name}.py"
    path.write_text(compiled.source)
    module = import_module_file(path)
    out = [module.kernel(x, get=("nngp", "ntk"), backend=b) for b in ("numba", "numpy")]
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-12, atol=1e-14)
    assert np.all(np.isfinite(out[0][0])) and np.all(np.isfinite(out[0][1]))
    return out[0]


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as e:
        compile_text(text, "t.ntk")
    report = str(e.value)
    assert "Traceback" not in report and report.startswith("t.ntk:")
    return report


def kg(x: np.ndarray) -> np.ndarray:
    """K[g](x, x) of HEAD's g."""
    return 1.44 * np.sum(x * x, 1) / 3 + 0.01


# -- 1. zero-variance lines: the constant 0, so φ(0) --------------------------------------


@pytest.mark.parametrize("zero", ["g - g", "0*g", "2*g - g - g"])
def test_relu_of_a_zero_line(zero, tmp_path):
    nngp, ntk = kernels(HEAD + f"r = {zero}\nh = relu(r)\ny = dense(h, b_std=0.5)\noutput y\n",
                        tmp_path, name=f"zero{len(zero)}")
    np.testing.assert_allclose(nngp, 0.25)  # K[relu(0)] = 0, plus the bias
    np.testing.assert_allclose(ntk, 0.25)  # Θ of the zero line is 0


def test_erf_of_a_zero_line_is_its_constant(tmp_path):
    nngp, ntk = kernels(HEAD + "r = 0*g\nh = erf(r, a=2, c=0.5)\ny = dense(h)\noutput y\n",
                        tmp_path, name="zero_erf")
    np.testing.assert_allclose(nngp, (2 * math.erf(0) + 0.5) ** 2)
    np.testing.assert_allclose(ntk, 0.25)


def test_zero_line_beside_a_gaussian(tmp_path):
    # s = erf(0, c=0.5) + relu(g): K[s] = 0.25 + 2·0.5·E[relu(g)] + K[g]/2 on the diagonal
    nngp, _ = kernels(HEAD + "r = g - g\nh = erf(r, c=0.5)\nk = relu(g)\ns = h + k\n"
                      "y = dense(s)\noutput y\n", tmp_path, name="zero_mixed")
    k = kg(X)
    np.testing.assert_allclose(np.diag(nngp), 0.25 + np.sqrt(k / (2 * np.pi)) + k / 2)


def test_zero_weights_give_a_zero_line(tmp_path):
    nngp, ntk = kernels(HEAD + "r = dense(g, w_std=0)\nh = cos(r)\ny = dense(h)\noutput y\n",
                        tmp_path, name="zero_w")
    np.testing.assert_allclose(nngp, 1.0)  # cos(0)²
    np.testing.assert_allclose(ntk, 1.0)


def test_zero_line_output(tmp_path):
    nngp, ntk = kernels(HEAD + "r = g - g\noutput r\n", tmp_path, name="zero_out")
    assert not nngp.any() and not ntk.any()


def test_zero_line_warns():
    compiled = compile_text(HEAD + "r = g - g\noutput r\n", "t.ntk")
    assert any("'r' is identically zero" in w for w in compiled.program.warnings)


def test_zero_line_in_a_conv_net(tmp_path):
    # numba backend only: the numpy reference's spatial pair code does not yet broadcast a
    # constant pair covariance (K_h = 1/4 here) to an array (ntkc/codegen, reported)
    compiled = compile_text("network zero_conv\ninput x : image[4, 4, 2]\n"
                            "g = conv(x, filter=[3, 3], padding=same)\nr = g - g\n"
                            "h = erf(r, c=0.5)\np = flatten(h)\ny = dense(p)\noutput y\n", "t.ntk")
    path = tmp_path / "zero_conv.py"
    path.write_text(compiled.source)
    x = np.random.default_rng(2).standard_normal((3, 4, 4, 2))
    nngp, ntk = import_module_file(path).kernel(x, get=("nngp", "ntk"), backend="numba")
    np.testing.assert_allclose(nngp, 0.25)  # erf(0)·1 + 0.5, squared
    np.testing.assert_allclose(ntk, 0.25)


def test_layer_norm_of_a_zero_line_is_an_error():
    report = error_of(HEAD + "r = g - g\nn = layer_norm(r)\ny = dense(n)\noutput y\n")
    assert "t.ntk:4:5: error: layer_norm of 'r', whose variance is identically zero" in report
    assert report.splitlines()[-1] == "        ^^^^^^^^^^^^^"


# -- 2, 3. input x : vector[1]: K[x](x,x) = x·x is no alias ----------------------------------


@pytest.mark.parametrize("body", ["h = relu(g)", "h = sign(g)", "h = erf(g)", "h = gelu(g)",
                                  "n = layer_norm(g)\nh = relu(n)"])
def test_one_dimensional_input(body, tmp_path):
    # d = 1 with w = 1 against d = 2 (a zero second feature) with w = √2: the same kernels
    spec = "input x : vector[{d}]\ng = dense(x, w_std={w})\n" + body + "\ny = dense(h)\noutput y\n"
    name = "d1_" + body.split("(")[0].split()[-1] + str(len(body))
    x1 = np.random.default_rng(1).standard_normal((5, 1))
    one = kernels(spec.format(d=1, w=1), tmp_path, x1, name + "a")
    two = kernels(spec.format(d=2, w=math.sqrt(2)), tmp_path, np.hstack([x1, 0 * x1]),
                  name + "b")
    np.testing.assert_allclose(one[0], two[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(one[1], two[1], rtol=1e-12, atol=1e-14)


# -- 4. limits: nothing hangs or overflows the recursion ------------------------------------

LIMITS = [
    (HEAD + "nonlin f(z) = " + "tanh(" * 300 + "z" + ")" * 300 + "\nh = f(g)\noutput h\n",
     "3:", "function calls nested too deeply (more than 8 inside each other)"),
    (HEAD + "nonlin f(z) = " + "-(" * 300 + "z" + ")" * 300 + "\nh = f(g)\noutput h\n",
     "3:", "nested too deeply (more than 64 levels"),
    (HEAD + "r = " + " + ".join(["g"] * 3000) + "\noutput r\n", "3:5",
     "too many terms in a sum (at most 256)"),
    (HEAD + "r = " + "*".join(["2"] * 300) + " * g\noutput r\n", "3:5",
     "too many factors in a product (at most 256)"),
    ("param w = 1e99999999\n" + HEAD + "output g\n", "1:11", "number 1e99999999 is too large"),
    ("param w = 1e400\n" + HEAD + "output g\n", "1:11", "literals must fit float64"),
    ("param w = 1e-99999999\n" + HEAD + "output g\n", "1:11", "underflows float64"),
    ("param w = 1" + "0" * 200 + "\n" + HEAD + "output g\n", "1:11", "number too long"),
    ("param w = 2^(10^9)\n" + HEAD + "output g\n", "1:14", "exponent 1000000000 too large"),
    ("param w = 1e300 * 1e300 * 1e300 * 1e300\n" + HEAD + "output g\n", "1:11",
     "out of float64's range"),
    (HEAD + "h = monomial(g, degree=1000000)\noutput h\n", "3:24",
     "monomial's degree is at most 64"),
    (HEAD + "h = rectified_monomial(g, degree=40)\noutput h\n", "3:34",
     "rectified_monomial's degree is at most 16"),
    (HEAD + "h = polynomial(g, coef=[" + ", ".join(["1"] * 70) + "])\noutput h\n", "3:24",
     "has 70 coefficients: at most degree 64"),
    (HEAD + "nonlin f(z) = z^1000000\nh = f(g)\noutput h\n", "3:17", "exponent 1000000"),
    (HEAD + "nonlin f(z) = (z^64)^64\nh = f(g)\noutput h\n", "3:15", "exponent 4096 too large"),
    (HEAD + "nonlin f(z) = (1 + z)^64 * (2 + z)^64\nh = f(g)\noutput h\n", "3:15",
     "polynomial of degree 128; at most 64"),
    (HEAD + "h = dense(g, w_std=(-1)^0.5)\noutput h\n", "3:20", "not a real number"),
    (HEAD + "h = dense(g, b_std=0^-1)\noutput h\n", "3:20", "not a finite number"),
    (HEAD + "h = dense(g, w_std=-1)\noutput h\n", "3:20", "dense's w_std must be ≥ 0"),
    ("param w = (-2)^0.5\n" + HEAD + "output g\n", "1:11", "not a real number"),
    (HEAD + "r = 2^0.5 * g + (-1)^0.5 * g\noutput r\n", "3:17", "not a real number"),
    (HEAD + "a" * 65 + " = relu(g)\noutput g\n", "3:1", "name too long (65 characters; at most 64)"),
    ("input x : sequence[5, 3]\ng = conv(x, filter=[3], stride=[3.4e+38])\nf = flatten(g)\n"
     + "y = dense(f)\noutput y\n", "2:33", "conv's stride: each entry is at most 2147483647"),
]


DEEP = "input x : vector[3]\nh0 = dense(x)\n" + "".join(
    f"g{i} = dense(h{i - 1})\nh{i} = relu(g{i})\n" for i in range(1, 600)) + "output h599\n"
LIMITS.append((DEEP, "1025:8", "network too deep: 'g512' is 1025 lines from the input"))


@pytest.mark.parametrize("text,where,message", LIMITS,
                         ids=[f"limit{i}" for i in range(len(LIMITS))])
def test_limits_are_positioned_errors(text, where, message):
    start = time.perf_counter()
    report = error_of(text)
    assert time.perf_counter() - start < 30
    head = report.splitlines()[0]
    assert head.startswith(f"t.ntk:{where}") and message in head, head


def test_generous_limits_still_compile():
    compile_text(HEAD + "nonlin f(z) = " + "tanh(" * 4 + "-(" * 50 + "z" + ")" * 54 + "\n"
                 "r = " + " + ".join(["g"] * 200) + "\nh = f(r)\n" + "a" * 64 + " = dense(h)\n"
                 "k = monomial(g, degree=64)\ny = " + "a" * 64 + " + k\noutput y\n", "t.ntk")


# -- 5. user nonlinearities whose Gaussian moments do not exist ----------------------------

REFUSED = [
    ("1/z", "1/(z) has a pole"),
    ("log(z)", "log(z): the argument is not provably positive"),
    ("tan(z)", "tan(z) has poles"),
    ("exp(exp(z))", "nested exponential"),
    ("exp(z^2)", "grows like exp(c·z^2)"),
    ("cosh(z^3)", "grows like exp(c·z^3)"),
    ("sqrt(z)", "a fractional power of z, which can be negative"),
    ("sqrt(abs(z))", "E[φ′(u)²]"),
    ("z / (1 + z)", "1/(z + 1) has a pole"),
    ("2^(z^2)", "grows like exp(c·z^2)"),
]


@pytest.mark.parametrize("body,reason", REFUSED)
def test_nonlin_without_gaussian_moments_is_refused(body, reason):
    report = error_of(HEAD + f"nonlin f(z) = {body}\nh = f(g)\ny = dense(h)\noutput y\n")
    head = report.splitlines()[0]
    assert head.startswith("t.ntk:3:15: error: nonlin f: E[φ") and reason in head, head
    assert "is infinite for Gaussian u" in head


@pytest.mark.parametrize("body", ["z / (1 + exp(-z))", "log(1 + exp(z))", "sqrt(1 + z^2)",
                                  "tanh(z)", "sigmoid(z)", "softplus(z)", "exp(-z^2) * z",
                                  "exp(z)", "atan(z) + max(z, 0)", "1 / (1 + z^2)"])
def test_integrable_nonlins_still_compile(body):
    compile_text(HEAD + f"nonlin f(z) = {body}\nh = f(g)\ny = dense(h)\noutput y\n", "t.ntk")


# -- 6, 7. the CLI: one-line errors, exit 2, -o checked before computing --------------------


def ntkc(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ntkc.cli", *args], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def cli_dir(tmp_path):
    (tmp_path / "n.ntk").write_text("network cli_t\n" + HEAD + "h = relu(g)\ny = dense(h)\n"
                                    "output y\n")
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "d.npz", x=X, y=np.ones((4, 1)))
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["gram", "n.ntk", "--x1", "x.npy", "-o", "dir"], "-o dir: is a directory"),
    (["gram", "n.ntk", "--x1", "x.npy", "--get", "both", "-o", "k.npy"], "name it k.npz"),
    (["gram", "n.ntk", "--x1", "x.npy", "-o", "k"], "name it k.npy"),
    (["gram", "n.ntk", "--x1", "x.npy", "-o", "nowhere/k.npy"], "nowhere does not exist"),
    (["gram", "n.ntk", "--x1", "x.npy", "--tile", "-1", "-o", "k.npy"],
     "--tile: must be a positive integer, got -1"),
    (["gram", "n.ntk", "--x1", "x.npy", "--tile", "0", "-o", "k.npy"],
     "--tile: must be a positive integer, got 0"),
    (["predict", "n.ntk", "--train", "dir", "--test", "d.npz"], "--train: cannot read dir"),
    (["predict", "n.ntk", "--train", "x.npy", "--test", "d.npz"], "is not an .npz archive"),
    (["predict", "n.ntk", "--train", "d.npz", "--test", "d.npz", "-o", "dir"], "is a directory"),
])
def test_cli_errors(cli_dir, args, message):
    r = ntkc(*args, cwd=cli_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert {p.name for p in cli_dir.iterdir()} == {"n.ntk", "x.npy", "d.npz", "dir"}


def test_cli_gram_writes_exactly_the_named_file(cli_dir):
    r = ntkc("gram", "n.ntk", "--x1", "x.npy", "--get", "both", "-o", "k.npz", cwd=cli_dir)
    assert r.returncode == 0, r.stderr
    with np.load(cli_dir / "k.npz") as f:
        assert set(f.files) == {"nngp", "ntk"} and f["nngp"].shape == (4, 4)
    r = ntkc("gram", "n.ntk", "--x1", "x.npy", "--tile", "1", "-o", "k.npy", cwd=cli_dir)
    assert r.returncode == 0, r.stderr
    with np.load(cli_dir / "k.npz") as f:
        np.testing.assert_allclose(np.load(cli_dir / "k.npy"), f["nngp"], rtol=1e-12)
    assert not list(cli_dir.glob("*.npy.np*")) and not list(cli_dir.glob("*.npz.np*"))


def test_input_positions_bounded():
    # 2^31 positions once allocated 16 GiB of tap tables before any error (fuzzing)
    start = time.perf_counter()
    msg = error_of("network t\ninput x : sequence[2147483648, 3]\ng = conv(x, filter=[3])\n"
                   "p = flatten(g)\ny = dense(p)\noutput y\n")
    assert "at most 1048576 positions" in msg and "t.ntk:2:11" in msg, msg
    assert time.perf_counter() - start < 5
