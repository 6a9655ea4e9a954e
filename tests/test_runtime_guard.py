"""Model.kernel's guards: argument checks (tile, params), the memory guard (everything a
run allocates, refused before any compile or allocation) and resumable out_dir runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import ntkc
from ntkc.runtime.outofcore import MANIFEST, work_bytes

ROOT = Path(__file__).resolve().parents[1]

GAP = """network {name}
input x : image[{h}, {h}, 1]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.414, b_std=0.1)
h1 = relu(g1)
g2 = conv(h1, filter=[3, 3], padding=same, w_std=1.414, b_std=0.1)
h2 = relu(g2)
p = global_avg_pool(h2)
y = dense(p, w_std=1.0)
output y
"""


@pytest.fixture(scope="module")
def relu():
    return ntkc.load(ROOT / "examples" / "relu_mlp.ntk")


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    spec = tmp_path_factory.mktemp("gap") / "gap6.ntk"
    spec.write_text(GAP.format(name="gap6", h=6))
    return ntkc.load(spec)


def _x(model, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape))


@pytest.mark.parametrize("tile", [-1, 0, 2.5, True, "4"])
def test_tile_must_be_a_positive_int(relu, tile):
    with pytest.raises(ValueError, match="tile must be a positive number of rows"):
        relu.kernel(_x(relu, 4), tile=tile)


@pytest.mark.parametrize("params, match", [
    ({"w": float("nan")}, "param 'w' must be a finite number"),
    ({"w": float("inf")}, "param 'w' must be a finite number"),
    ({"w": 1e200}, r"param 'w' must be a finite number of sensible size \(\|w\| ≤ 1e100\)"),
    ({"w": None}, "param 'w' must be a real number, got None"),
    ({"w": "1"}, "param 'w' must be a real number"),
    ({"q": 1.0}, r"unknown param 'q'; this network has \['b', 'w'\]"),
    ([("w", 1.0)], "params must be a dict"),
])
def test_bad_params(relu, params, match):
    x = _x(relu, 3)
    with pytest.raises(ValueError, match=match):
        relu.kernel(x, params=params)
    with pytest.raises(ValueError, match=match):  # the module's own kernel() too
        relu.module.kernel(x, params=params)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the numpy reference's
def test_overflow_is_a_value_error(relu):
    x = _x(relu, 3)
    for backend in ("numba", "numpy"):
        with pytest.raises(ValueError, match="overflows float64.*use smaller params"):
            relu.kernel(x, params={"w": 1e60}, backend=backend)
    with pytest.raises(ValueError, match=r"squared norms of x2 overflow float32 \(row 1: "
                                         r".*scale the inputs or pass float64"):
        big = x.astype(np.float32)
        big[1] *= 1e19
        relu.kernel(x.astype(np.float32), big)
    ok = relu.kernel((x * 1e18).astype(np.float32))  # |x|² ~ 1e38: still fits
    assert np.isfinite(ok.nngp).all() and np.isfinite(ok.ntk).all()


def test_memory_guard_counts_scratch_and_refuses_before_compiling(gap):
    x = _x(gap, 4)
    mod = gap.module
    per_pair = mod.N_SCRATCH * 8
    parts = work_bytes(mod, 4, 4, ("nngp", "ntk"), 8, "numba", False, threads=2)
    assert parts["pair scratch"] == 2 * per_pair  # 2 threads × one pair's scratch
    assert sum(parts.values()) > 2 * per_pair
    with pytest.raises(MemoryError, match="one pair of inputs alone needs .* of scratch "
                                          r"\(N_SCRATCH = \d+ float64 entries"):
        gap.kernel(x, memory_limit=per_pair // 2)
    with pytest.raises(MemoryError, match="numba threads holds its own scratch"):
        gap.kernel(x, memory_limit=int(per_pair * 1.2))
    with pytest.raises(MemoryError, match="use backend='numba'"):
        gap.kernel(x, backend="numpy", memory_limit=int(per_pair * 2.5))
    # nothing was compiled or run: numba compiles on a function's first call
    assert not any(getattr(getattr(mod, f), "signatures", None) for f in dir(mod))
    # enough memory: runs (the numpy backend: the guard is the same, and a numba compile of
    # this module costs ~45 s of CI time that tests/test_conv.py already spends)
    k = gap.kernel(x, backend="numpy")
    assert np.isfinite(k.nngp).all()


@pytest.mark.slow
def test_gap_256_refused_fast(tmp_path):
    spec = tmp_path / "gap256.ntk"
    spec.write_text(GAP.format(name="gap256", h=256))
    model = ntkc.load(spec)
    x = _x(model, 2)
    start = time.perf_counter()
    with pytest.raises(MemoryError, match=r"one pair of inputs alone needs \d+\.\d GiB"):
        model.kernel(x)
    assert time.perf_counter() - start < 2.0
    mod = model.module
    assert not any(getattr(getattr(mod, f), "signatures", None) for f in dir(mod))


def test_float32_conv_counts_float64_work(gap):
    f32 = work_bytes(gap.module, 100, 100, ("nngp",), 4, "numba", False, threads=1)
    f64 = work_bytes(gap.module, 100, 100, ("nngp",), 8, "numba", False, threads=1)
    assert f32["outputs"] > f64["outputs"]  # K and Θ in float64, then a float32 copy


def _interrupt_after(model, monkeypatch, k):
    monkeypatch.undo()
    calls = []
    real = model.module.kernel

    def kernel(*args, **kwargs):
        if len(calls) == k:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model.module, "kernel", kernel)
    return calls


def test_out_dir_resumes_after_an_interrupt(relu, tmp_path, monkeypatch, capsys):
    x = _x(relu, 7)
    whole = relu.kernel(x, tile=2, progress=False, out_dir=tmp_path / "ref")
    _interrupt_after(relu, monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        relu.kernel(x, tile=2, progress=False, out_dir=tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["complete"] is False and len(manifest["done"]) == 3
    calls = _interrupt_after(relu, monkeypatch, 100)
    resumed = relu.kernel(x, tile=2, progress=True, out_dir=tmp_path / "run")
    assert len(calls) == 10 - 3  # 4 row tiles: 10 upper-triangle tiles, 3 were done
    bar = capsys.readouterr().err  # tqdm's bar starts at the tiles already done
    assert "3/10" in bar and "10/10" in bar and "tile" in bar and "1/10" not in bar
    for a, b in zip(resumed, whole):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((tmp_path / "run" / MANIFEST).read_text())["complete"] is True
    calls.clear()
    relu.kernel(x, tile=2, progress=False, out_dir=tmp_path / "run")  # done: nothing to do
    assert not calls


def test_out_dir_mismatch_refused(relu, tmp_path):
    x = _x(relu, 5)
    relu.kernel(x, tile=2, progress=False, out_dir=tmp_path)
    with pytest.raises(ValueError, match="holds another kernel.* differs in: x1.*restart=True"):
        relu.kernel(x[:4], tile=2, progress=False, out_dir=tmp_path)
    with pytest.raises(ValueError, match="differs in: params, tile"):
        relu.kernel(x, tile=3, params={"w": 1.2}, progress=False, out_dir=tmp_path)
    k = relu.kernel(x[:4], tile=2, progress=False, out_dir=tmp_path, restart=True)
    np.testing.assert_allclose(np.asarray(k.nngp), relu.kernel(x[:4]).nngp, rtol=1e-12)
    other = tmp_path / "plain"
    other.mkdir()
    np.save(other / "nngp.npy", np.zeros(3))
    with pytest.raises(ValueError, match=f"without a {MANIFEST}"):
        relu.kernel(x, get="nngp", progress=False, out_dir=other)


def test_out_dir_with_one_tile_still_writes(relu, tmp_path):
    x = _x(relu, 5)
    k = relu.kernel(x, progress=False, out_dir=tmp_path)  # one tile
    np.testing.assert_array_equal(np.load(tmp_path / "nngp.npy"), np.asarray(k.nngp))
