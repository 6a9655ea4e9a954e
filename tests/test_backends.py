"""Backends agree (numba vs the numpy reference), Gram matrices are symmetric and
PSD, the diagonal is K(x,x), float32 tracks float64, bad arrays are refused, and
the generated modules in generated/ are fresh builds of examples/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ntkc
from ntkc.codegen.jax_target import compile_finite
from ntkc.compiler import compile_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.ntk"))
CLOSED_FORM = ["erf_mlp", "relu_mlp", "residual_mlp"]


def _x(model, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape))


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_numba_matches_numpy_reference(name):
    model = ntkc.load(ROOT / "generated" / f"{name}.py")
    x1, x2 = _x(model, 23, 1), _x(model, 17, 2)
    for args in ((x1,), (x1, x2)):
        fast = model.kernel(*args)
        ref = model.kernel(*args, backend="numpy")
        for a, b in zip(fast, ref):
            # Same formulas, different evaluation order (cse'd scalar vs vectorised):
            # rounding only, so 1e-12 relative to the matrix scale.
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())


@pytest.mark.parametrize("name", CLOSED_FORM + ["tanh_mlp"])
def test_symmetric_psd_and_diagonal(name):
    model = ntkc.load(ROOT / "generated" / f"{name}.py")
    x = _x(model, 30)
    k = model.kernel(x)
    for g in k:
        assert np.array_equal(g, g.T)
        eig = np.linalg.eigvalsh(g)
        assert eig.min() > -1e-10 * eig.max()
    # The diagonal equals the pair formula at x' = x (up to the acos(1-ε) conditioning).
    for i in range(3):
        single = model.kernel(x[i:i + 1], x[i:i + 1] + 0.0)
        np.testing.assert_allclose(single.nngp[0, 0], k.nngp[i, i], rtol=1e-7)
        np.testing.assert_allclose(single.ntk[0, 0], k.ntk[i, i], rtol=1e-7)
    # x1 × x2 blocks equal the corresponding block of the full Gram matrix.
    block = model.kernel(x[:10], x[10:])
    np.testing.assert_allclose(block.ntk, k.ntk[:10, 10:], rtol=1e-12)


def test_quadrature_backends_agree_upper_triangle():
    # The quadrature is not symmetric under x ↔ x' at the 1e-6 level, so the numpy
    # reference is compared where both compute the same orientation.
    model = ntkc.load(ROOT / "generated" / "tanh_mlp.py")
    x1, x2 = _x(model, 9, 3), _x(model, 7, 4)
    fast, ref = model.kernel(x1, x2), model.kernel(x1, x2, backend="numpy")
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_float32_tracks_float64(name):
    model = ntkc.load(ROOT / "generated" / f"{name}.py")
    x = _x(model, 40)
    k64 = model.kernel(x)
    k32 = model.kernel(x.astype(np.float32))
    for a, b in zip(k32, k64):
        assert a.dtype == np.float32
        # float32 inputs: the GEMM rounds at ~6e-8·sqrt(d); the recursion runs in float64.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_params_are_runtime_arguments():
    model = ntkc.load(ROOT / "generated" / "relu_mlp.py")
    x = _x(model, 5)
    base = model.kernel(x, get="nngp")
    other = model.kernel(x, get="nngp", params={"w": 1.2})
    assert not np.allclose(base, other)
    # relu is positively homogeneous: with b = 0, K scales as w^(2·depth) (5 dense layers).
    k1 = model.kernel(x, get="nngp", params={"b": 0.0, "w": 1.0})
    k2 = model.kernel(x, get="nngp", params={"b": 0.0, "w": 2.0})
    np.testing.assert_allclose(k2, k1 * 2.0**10, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown param 'q'"):
        model.kernel(x, params={"q": 1})


def test_tiles_match_whole_matrix(tmp_path):
    model = ntkc.load(ROOT / "generated" / "erf_mlp.py")
    x = _x(model, 50)
    whole = model.kernel(x)
    tiled = model.kernel(x, tile=16, progress=False)
    on_disk = model.kernel(x, tile=16, progress=False, out_dir=tmp_path)
    for a, b, c in zip(whole, tiled, on_disk):
        np.testing.assert_allclose(b, a, rtol=1e-13)
        np.testing.assert_allclose(np.asarray(c), a, rtol=1e-13)
    assert (tmp_path / "ntk.npy").exists()


def test_memory_refused_before_allocation():
    model = ntkc.load(ROOT / "generated" / "erf_mlp.py")
    x = np.zeros((1000, 1))
    with pytest.raises(MemoryError, match="out_dir=|float32"):
        model.kernel(x, memory_limit=1000 * 1000 * 8)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 2)), r"expected shape \(n, 1\)"),
    (np.array([[1.0], [np.nan]]), r"non-finite value nan at index \(1, 0\)"),
    (np.array([["a"], ["b"]]), "float32/float64 .* got dtype <U1"),
    (np.zeros((0, 1)), "no inputs"),
])
def test_bad_arrays(bad, match):
    model = ntkc.load(ROOT / "generated" / "erf_mlp.py")
    with pytest.raises(ValueError, match=match):
        model.kernel(bad)
    with pytest.raises(ValueError, match="x2: .*" + match):
        model.kernel(np.zeros((2, 1)), bad)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_generated_modules_are_fresh(spec):
    compiled = compile_file(spec, spec_name=f"../examples/{spec.name}")
    target = ROOT / "generated" / f"{compiled.program.network}.py"
    assert target.exists(), f"run: ntkc compile {spec.relative_to(ROOT)}"
    assert target.read_text() == compiled.source, (
        f"{target.name} is stale: run `ntkc compile examples/*.ntk`")
    # the finite network too (ntkc.codegen.jax_target; no jax needed to print it)
    finite = compile_finite(spec.read_text(), str(spec), spec_name=f"../examples/{spec.name}")
    target = ROOT / "generated" / f"{compiled.program.network}_jax.py"
    assert target.exists() and target.read_text() == finite, (
        f"{target.name} is stale: run `ntkc compile --target jax examples/*.ntk`")


def test_stale_module_refused(tmp_path):
    spec = tmp_path / "net.ntk"
    spec.write_text("network stale_net\ninput x : vector[2]\ny = dense(x)\noutput y\n")
    src = compile_file(spec, spec_name="net.ntk").source
    (tmp_path / "stale_net.py").write_text(src)
    spec.write_text("network stale_net\ninput x : vector[2]\ny = dense(x, b_std=1)\noutput y\n")
    with pytest.raises(ValueError, match=r"sha256 differs\): regenerate it with `ntkc compile .*net.ntk`"):
        ntkc.load(tmp_path / "stale_net.py")


def test_max_min_nonlinearity_in_both_backends(tmp_path):
    # max/min print as numpy.maximum/minimum in the reference backend (sympy's default
    # printer needs functools, which generated modules do not import).
    spec = tmp_path / "maxmin.ntk"
    spec.write_text("network maxmin\ninput x : vector[3]\nnonlin f(z) = max(z, 0) + "
                    "min(z, 0.5*z)\ng = dense(x, w_std=1.2, b_std=0.1)\nh = f(g)\n"
                    "y = dense(h)\noutput y\n")
    model = ntkc.load(spec)
    x = np.random.default_rng(0).standard_normal((4, 3))
    fast, ref = model.kernel(x, x[:3]), model.kernel(x, x[:3], backend="numpy")
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)
