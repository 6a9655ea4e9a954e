"""Gram matrices as Dask tasks into Zarr stores (ntkc/runtime/distributed.py, gramstore.py)
and predictions from them (ntkc/predict/blocked.py), on a real LocalCluster: 2 worker
processes, 1 thread each, the cluster ntkc itself starts (distributed.connect).

Bit-for-bit means against the single-process kernel() with the same tile: a tile is the
same module.kernel call on the same rows in both. (An untiled x2=None run of a dense
network is not the same computation: its one x·xᵀ goes through BLAS's symmetric product,
which rounds differently from the tiles' products, so it is compared to 1e-15 instead.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("zarr")

import ntkc
from ntkc import predict
from ntkc.runtime.distributed import connect, fill_store
from ntkc.runtime.gramstore import StoreMismatchError, open_gram
from ntkc.runtime.model import import_module_file

ROOT = Path(__file__).resolve().parent.parent
CONV_SPEC = """network dist_conv
input x : image[6, 6, 2]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)
h1 = relu(g1)
p = flatten(h1)
y = dense(p, w_std=1.0)
output y
"""


@pytest.fixture(scope="module")
def client():
    with connect(None, workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def dense():
    return ntkc.load(ROOT / "generated" / "relu_mlp.py")


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    spec = tmp_path_factory.mktemp("spec") / "dist_conv.ntk"
    spec.write_text(CONV_SPEC)
    return ntkc.load(spec)


def _inputs(model, n, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape)).astype(dtype)


def _check_equal(model, client, tmp_path, n, m, tile, dtype):
    x, y = _inputs(model, n, dtype), _inputs(model, m, dtype, seed=1)
    # The reference first: numba compiles here once, and the workers load its cache.
    ref = model.kernel(x, tile=tile)
    got = model.kernel(x, out=tmp_path / "sym.zarr", client=client, tile=tile)
    for name in ("nngp", "ntk"):
        a = np.asarray(getattr(got, name))
        assert a.dtype == dtype
        assert np.array_equal(a, getattr(ref, name)), name  # bit for bit, NaN-free
        assert np.array_equal(a, a.T)  # upper tiles computed, the reader sees all of K
    whole = model.kernel(x)  # the products' rounding: a few ulps (measured ≤ 2), not more
    for a, w in ((got.nngp, whole.nngp), (got.ntk, whole.ntk)):
        assert np.abs(np.asarray(a) - w).max() <= 50 * np.finfo(dtype).eps * np.abs(w).max()
    got = model.kernel(x, y, out=tmp_path / "cross.zarr", client=client, tile=tile)
    for ref in (model.kernel(x, y, tile=tile), model.kernel(x, y)):
        assert np.array_equal(np.asarray(got.nngp), ref.nngp)
        assert np.array_equal(np.asarray(got.ntk), ref.ntk)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_store_equals_single_process(dense, client, tmp_path, dtype):
    _check_equal(dense, client, tmp_path, 300, 100, 64, dtype)


@pytest.mark.slow  # compiles a conv module (~15 s)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv_store_equals_single_process(conv, client, tmp_path, dtype):
    _check_equal(conv, client, tmp_path, 120, 40, 32, dtype)


def _wait_idle(client, timeout=30.0):
    """Cancelled tasks already running finish on their worker: wait for that."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        busy = client.run(lambda dask_worker: len(dask_worker.state.executing))
        if not any(busy.values()):
            return
        time.sleep(0.05)
    raise AssertionError("workers still busy")


def _fill(model, x, out, client, tile, **kw):
    return fill_store(model.module, import_module_file, x, None, ("nngp", "ntk"), None,
                      np.float64, "numba", {}, out, client=client, tile=tile, **kw)


def test_resume_runs_only_missing_tiles(dense, client, tmp_path):
    x, out, k = _inputs(dense, 300, np.float64), tmp_path / "k.zarr", 12
    total = 10 * 11 // 2  # tile 30: 10 × 10 tiles, the upper triangle

    def stop(done, n):
        assert n == total
        if done >= k:
            raise KeyboardInterrupt  # as Ctrl-C in the client

    with pytest.raises(KeyboardInterrupt):
        _fill(dense, x, out, client, 30, on_tile=stop)
    _wait_idle(client)
    before = _stamps(out)
    done = np.count_nonzero(before)
    assert k <= done < total  # the finished ones stay; in-flight ones may have finished
    ran = _fill(dense, x, out, client, 30)
    after = _stamps(out)
    assert len(ran) == total - done  # only the missing tiles were submitted ...
    changed = after != before
    upper = np.triu(np.ones_like(changed))  # x2=None: the tiles on and above the diagonal
    assert np.array_equal(changed, (before == 0) & upper)  # ... and only they were written
    assert len(set(after[changed].tolist())) == 1  # by one run
    assert set(ran) == {tuple(t) for t in np.argwhere(changed)}
    ref = dense.kernel(x, tile=30)
    got = open_gram(out)
    assert np.array_equal(np.asarray(got.nngp), ref.nngp)
    assert np.array_equal(np.asarray(got.ntk), ref.ntk)
    assert _fill(dense, x, out, client, 30) == {}  # complete: nothing runs


def _stamps(out):
    import zarr

    return np.asarray(zarr.open_group(str(out), mode="r")["done"][...])


@pytest.mark.slow  # the conv module (compiled once for this file)
def test_killed_worker_run_completes(conv, client, tmp_path):
    x = _inputs(conv, 160, np.float64)
    ref = conv.kernel(x, tile=16)
    pids = client.run(os.getpid)
    victim = min(pids.values())
    killed = []

    def kill(done, total):
        if not killed:  # at the first finished tile, the others queued or running
            os.kill(victim, signal.SIGKILL)
            killed.append(done)

    _fill(conv, x, tmp_path / "k.zarr", client, 16, on_tile=kill)
    assert killed and killed[0] < 55  # 10 × 11 / 2 tiles: it died mid-run
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()  # the nanny started a new one
    got = open_gram(tmp_path / "k.zarr")
    assert np.array_equal(np.asarray(got.nngp), ref.nngp)
    assert np.array_equal(np.asarray(got.ntk), ref.ntk)


def test_mismatched_store_is_refused(dense, conv, client, tmp_path):
    x, out = _inputs(dense, 64, np.float64), tmp_path / "k.zarr"
    dense.kernel(x, out=out, client=client, tile=32)
    stamps = _stamps(out)
    cases = [("x1", lambda: dense.kernel(x[::-1], out=out, client=client, tile=32)),
             ("dtype", lambda: dense.kernel(x.astype(np.float32), out=out, client=client,
                                            tile=32)),
             ("tile", lambda: dense.kernel(x, out=out, client=client, tile=16)),
             ("x2", lambda: dense.kernel(x, x[:5], out=out, client=client, tile=32)),
             ("params", lambda: dense.kernel(x, out=out, client=client, tile=32,
                                             params={"w": 1.3})),
             ("spec_sha256", lambda: conv.kernel(_inputs(conv, 64, np.float64), out=out,
                                                 client=client, tile=32))]
    for field, call in cases:
        with pytest.raises(StoreMismatchError, match=f"differs in: .*{field}"):
            call()
    assert np.array_equal(_stamps(out), stamps)  # untouched
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreMismatchError, match="not an ntkc Gram store"):
        dense.kernel(x, out=tmp_path / "other", client=client, restart=True)
    assert (tmp_path / "other" / "notes.txt").exists()
    k = dense.kernel(x, out=out, client=client, tile=16, restart=True)  # the way out
    assert np.array_equal(np.asarray(k.nngp), dense.kernel(x, tile=16).nngp)


def test_blocked_predictions_equal_in_memory(dense, client, tmp_path):
    x = _inputs(dense, 300, np.float64)
    lazy = dense.kernel(x, out=tmp_path / "k.zarr", client=client, tile=64)
    k, th = np.asarray(lazy.nngp), np.asarray(lazy.ntk)
    y = np.random.default_rng(3).standard_normal((300, 2))
    kt, tht = k[:20] * 0.9, th[:20] * 0.9
    # diag_reg 1e-4 of the mean diagonal: cond(K + rI) ≲ 1e4, so both solves are within
    # ~cond · eps ≈ 1e-12 of the exact one; 1e-10 relative leaves room, and no more.
    want = predict.gp_inference(k, y, diag_reg=1e-4).predict(kt)
    gp = predict.gp_inference(lazy.nngp, y, diag_reg=1e-4)
    got = gp.predict(kt)
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
    ens = predict.gradient_descent_mse_ensemble({"ntk": lazy.ntk}, y, diag_reg=1e-4)
    want = predict.gradient_descent_mse_ensemble({"ntk": th}, y, diag_reg=1e-4).predict(
        None, {"ntk": tht}, get="ntk")
    got = ens.predict(None, {"ntk": tht}, get="ntk")
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
    nll = predict.marginal_likelihood(k, y, 1e-4)
    assert abs(predict.marginal_likelihood(lazy.nngp, y, 1e-4) - nll) <= 1e-10 * abs(nll)
    # What still needs the matrix in memory is refused, with the way out.
    way_out = "np.asarray"
    with pytest.raises(ValueError, match=f"finite training time.*{way_out}"):
        ens.predict(10.0, {"ntk": tht}, get="ntk")
    ens = predict.gradient_descent_mse_ensemble({"ntk": lazy.ntk, "nngp": lazy.nngp}, y)
    with pytest.raises(ValueError, match=f"compute_cov.*{way_out}"):
        ens.predict(None, {"ntk": tht, "nngp": kt}, {"nngp": k[:20, :20]}, get="ntk",
                    compute_cov=True)
    with pytest.raises(ValueError, match=f"covariance.*{way_out}"):
        gp.predict(kt, k[:20, :20])
    with pytest.raises(ValueError, match=f"gradient_descent_mse.*{way_out}"):
        predict.gradient_descent_mse(lazy.ntk, y)


def test_cli_gram_and_predict_from_store(dense, client, tmp_path, capsys):
    from ntkc.cli import main

    x = _inputs(dense, 120, np.float64)
    y = np.random.default_rng(4).standard_normal((120, 2))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:10] * 0.5, y=y[:10])
    spec, address = str(ROOT / "generated" / "relu_mlp.py"), client.scheduler.address
    out = tmp_path / "K.zarr"
    assert main(["gram", spec, "--x1", str(tmp_path / "x.npy"), "--get", "both", "-o",
                 str(out), "--scheduler", address, "--tile", "50"]) == 0
    assert np.array_equal(np.asarray(open_gram(out, "ntk")), dense.kernel(x, tile=50).ntk)
    assert main(["predict", spec, "--train", str(tmp_path / "train.npz"), "--test",
                 str(tmp_path / "test.npz"), "--train-kernel", str(out), "--scheduler",
                 address, "-o", str(tmp_path / "mean.npz")]) == 0
    k = dense.kernel(x, get="ntk")
    want = predict.gp_inference(k, y, diag_reg=1e-4).predict(dense.kernel(x[:10] * 0.5, x,
                                                                          get="ntk"))
    got = np.load(tmp_path / "mean.npz")["mean"]
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
    capsys.readouterr()
    assert main(["predict", spec, "--train", str(tmp_path / "train.npz"), "--test",
                 str(tmp_path / "test.npz"), "--train-kernel", str(out), "--t", "5"]) == 2
    assert "infinite-time" in capsys.readouterr().err


def test_core_does_not_import_dask():
    code = ("import sys, numpy as np, ntkc, ntkc.predict, ntkc.cli\n"
            f"m = ntkc.load({str(ROOT / 'generated' / 'relu_mlp.py')!r})\n"
            "m.kernel(np.ones((3, 64)))\n"
            "bad = [n for n in sys.modules if n.split('.')[0] in "
            "('dask', 'distributed', 'zarr')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
