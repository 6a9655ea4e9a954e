"""ntkc bench --case dask: a Gram matrix as Dask tasks into a Zarr store, on 1 worker and
on 2 workers in the same run (issue 13).

The network is cnn-flatten's: 4 × (conv 3×3 SAME + relu) + flatten + dense on 16×16×3
images, float64, NNGP + NTK, train-train (x2=None: the upper-triangle tiles). Each worker
is one process with one thread and one numba thread, so w workers use w cores; the
single-process kernel() with the same tiles and one numba thread is the baseline. Each
task reports the seconds it spent in the kernel and writing its chunks, so

    overhead per tile = (wall · workers − Σ kernel − Σ write) / tiles

is what Dask adds per tile (scheduling, the task's round trips, loading the module and
reading the input rows from the store), measured on a run with many small tiles. A tile
of T × T pairs makes it negligible (1%) when T² · (seconds per pair) ≥ 100 · overhead.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .common import load_spec
from .conv import deep_spec


def _fill(model, x, out: Path, client, tile: int) -> tuple[float, dict]:
    from ..runtime.distributed import fill_store
    from ..runtime.model import import_module_file

    start = time.perf_counter()
    timings = fill_store(model.module, import_module_file, x, None, ("nngp", "ntk"), None,
                         np.float64, "numba", {}, out, client=client, tile=tile,
                         progress=False)
    return time.perf_counter() - start, timings


def bench_dask(n: int = 2000, tile: int = 250, small_tile: int = 25,
               small_n: int = 500) -> dict:
    import numba

    from ..runtime.distributed import connect

    model = load_spec(deep_spec(4, (16, 16, 3), "flatten", "bench_dask_cnn"), "bench_dask_cnn")
    x = np.random.default_rng(0).standard_normal((n, 16, 16, 3))
    model.kernel(x[:4])  # numba compiles here once; the workers load its on-disk cache
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        start = time.perf_counter()
        model.kernel(x, tile=tile)
        serial = time.perf_counter() - start
    finally:
        numba.set_num_threads(threads)
    pairs = n * (n + 1) / 2
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in (1, 2):
            with connect(None, workers=w, threads=1) as client:
                client.wait_for_workers(w)
                _fill(model, x[:2 * w], Path(tmp) / f"warm{w}.zarr", client, 1)  # imports
                wall, timings = _fill(model, x, Path(tmp) / f"k{w}.zarr", client, tile)
                runs[w] = _summary(wall, timings, w)
                if w == 2:  # many small tiles: the per-tile overhead stands out
                    wall, timings = _fill(model, x[:small_n], Path(tmp) / "small.zarr",
                                          client, small_tile)
                    small = _summary(wall, timings, w)
    per_pair = runs[1]["kernel_s"] / pairs
    return {"case": f"dask cnn-flatten 16x16x3 N={n} float64 nngp+ntk train-train, "
                    f"tile {tile}", "n": n, "tile": tile, "serial_s": serial, "runs": runs,
            "small": small, "small_tile": small_tile, "small_n": small_n,
            "per_pair_s": per_pair,
            "negligible_tile": math.ceil(math.sqrt(100 * small["overhead_per_tile_s"] /
                                                   per_pair))}


def _summary(wall: float, timings: dict, workers: int) -> dict:
    kernel = sum(t[0] for t in timings.values())
    write = sum(t[1] for t in timings.values())
    tiles = len(timings)
    return {"wall_s": wall, "tiles": tiles, "kernel_s": kernel, "write_s": write,
            "overhead_per_tile_s": max(0.0, wall * workers - kernel - write) / tiles,
            # below 1: workers waited on Dask; a slower kernel per tile with more workers
            # at ~1 means the cores were not free (other jobs), not a scheduling cost
            "busy": (kernel + write) / (wall * workers)}


def report_dask(r: dict) -> str:
    one, two, small = r["runs"][1], r["runs"][2], r["small"]
    lines = [r["case"],
             f"  single process, 1 numba thread, same tiles: {r['serial_s']:8.2f} s",
             ]
    for w, run in sorted(r["runs"].items()):
        lines.append(f"  {w} worker(s): {run['wall_s']:8.2f} s wall, {run['tiles']} tiles, "
                     f"kernel {run['kernel_s'] / run['tiles'] * 1e3:.1f} ms/tile, write "
                     f"{run['write_s'] / run['tiles'] * 1e3:.1f} ms/tile, overhead "
                     f"{run['overhead_per_tile_s'] * 1e3:.1f} ms/tile, busy {run['busy']:.1%}")
    lines += [(f"  speedup 2 workers / 1 worker: {one['wall_s'] / two['wall_s']:.2f}x; "
              f"1 worker / single process: {one['wall_s'] / r['serial_s']:.3f}"),
              (f"  small tiles ({r['small_tile']}, N={r['small_n']}, 2 workers): "
              f"{small['tiles']} tiles, overhead {small['overhead_per_tile_s'] * 1e3:.2f} "
              f"ms/tile against {r['per_pair_s'] * 1e6:.2f} µs per pair in the kernel"),
              (f"  overhead ≤ 1% of a tile's kernel time from tile ≈ {r['negligible_tile']} "
              f"({r['negligible_tile']}² pairs)")]
    return "\n".join(lines)


GP_SPEC = """network bench_dask_gp
input x : vector[16]
g1 = dense(x, w_std=1.4, b_std=0.1)
h1 = relu(g1)
y = dense(h1, w_std=1.0, b_std=0.1)
output y
"""


@contextlib.contextmanager
def _peak_rss(pids: list[int]) -> Iterator[dict[str, int]]:
    """Peak resident memory of the processes ``pids`` (summed, and the largest one),
    sampled every 0.2 s in a thread: what the workers really held, spilling included."""
    import threading

    import psutil  # a dependency of distributed

    procs = [psutil.Process(p) for p in pids]
    peak = {"total": 0, "largest": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                rss = [p.memory_info().rss for p in procs]
            except Exception:  # noqa: BLE001 - a worker restarted: keep what was seen
                rss = [0]
            peak["total"] = max(peak["total"], sum(rss))
            peak["largest"] = max(peak["largest"], max(rss))
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def bench_dask_gp(n: int = 20000, small_n: int = 2000, tile: int = 2000,
                  memory_limit: float = 1.25 * 2**30, store: str | None = None) -> dict:
    """gp_inference on a Zarr NNGP of N × N float64 under a Dask memory cap per worker
    (2 workers, together below the matrix's size), and the same path at small_n against
    the in-memory solve."""
    import os
    import resource

    import dask
    from distributed import Client, LocalCluster

    from .. import predict

    model = load_spec(GP_SPEC, "bench_dask_gp")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 16))
    y = np.sin(x @ rng.standard_normal((16, 1)))
    x_test = rng.standard_normal((100, 16))
    out: dict = {"n": n, "tile": tile, "matrix_gib": n * n * 8 / 2**30,
                 "cap_gib": 2 * memory_limit / 2**30}
    with tempfile.TemporaryDirectory(dir=store) as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=memory_limit,
                         dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as client, dask.config.set(scheduler=client.get):
        model.kernel(x[:4])
        # The small case: the same blocked path (tile small_n // 4) against numpy.
        xs, ys = x[:small_n], y[:small_n]
        ks = model.kernel(xs, get="nngp", out=Path(tmp) / "small.zarr", client=client,
                          tile=small_n // 4, progress=False)
        kts = model.kernel(x_test, xs, get="nngp")
        want = predict.gp_inference(np.asarray(ks), ys, diag_reg=1e-3).predict(kts)
        got = predict.gp_inference(ks, ys, diag_reg=1e-3).predict(kts)
        out["small_rel_diff"] = float(np.abs(got - want).max() / np.abs(want).max())
        pids = list(client.run(os.getpid).values())
        with _peak_rss(pids) as peak:
            start = time.perf_counter()
            k = model.kernel(x, get="nngp", out=Path(tmp) / "k.zarr", client=client,
                             tile=tile, progress=False)
            out["gram_s"] = time.perf_counter() - start
            kt = model.kernel(x_test, x, get="nngp")
            start = time.perf_counter()
            mean = predict.gp_inference(k, y, diag_reg=1e-3).predict(kt)
            out["solve_s"] = time.perf_counter() - start
        out["workers_peak_gib"] = peak["total"] / 2**30
        out["worker_peak_gib"] = peak["largest"] / 2**30
        out["client_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["mean_finite"] = bool(np.isfinite(mean).all())
        out["train_rmse_proxy"] = float(np.sqrt(np.mean(mean**2)))
    return out


def report_dask_gp(r: dict) -> str:
    return (f"gp_inference on a Zarr NNGP, N = {r['n']} float64 ({r['matrix_gib']:.2f} GiB), "
            f"tile {r['tile']}, 2 workers capped at {r['cap_gib']:.2f} GiB together\n"
            f"  Gram matrix into the store: {r['gram_s']:.1f} s; blocked Cholesky solve + "
            f"predict: {r['solve_s']:.1f} s\n"
            f"  peak RSS: workers {r['workers_peak_gib']:.2f} GiB together (largest "
            f"{r['worker_peak_gib']:.2f}), client {r['client_peak_gib']:.2f} GiB\n"
            f"  same path at the small N against the in-memory solve: max rel. diff "
            f"{r['small_rel_diff']:.1e}; mean finite: {r['mean_finite']}")
