"""Gram matrices as Dask tasks, one per tile, into a resumable Zarr store.

``Model.kernel(x1, x2, out="K.zarr", client=...)`` lands in :func:`kernel_to_store`.
Each tile is a ``dask.distributed`` task: the worker loads the generated module itself,
from its path and content hash (the module file must be readable at that path on every
worker: for a multi-machine cluster, NTKC_CACHE_DIR and the store on a shared
filesystem), computes the tile with the module's own ``kernel()`` (the same call a
single-process tiled run makes, so the values are the same bits) and writes it into the
store (:mod:`ntkc.runtime.gramstore`). Rerunning skips the tiles the store marks done;
a killed worker's tiles are rescheduled by Dask; a killed client loses the tiles in
flight only. With no client, a LocalCluster of single-threaded worker processes on this
machine's cores runs the tiles (numba's threads split the cores between the workers).

dask, distributed, zarr and tqdm are the ``[distributed]`` extra: only this module and
gramstore import them, and only ``kernel(out=...)``, ``ntkc gram -o K.zarr`` and the
blocked predictions reach them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .outofcore import run_key

DEFAULT_TILE = 1024  # an 8 MiB float64 chunk; see README "Beyond one machine" for choosing
_MODULES: dict[str, ModuleType] = {}  # per worker process: path -> loaded module


def missing_extra() -> list[str]:
    return [m for m in ("dask", "distributed", "zarr", "tqdm") if find_spec(m) is None]


def _require_extra() -> None:
    missing = missing_extra()
    if missing:
        raise ImportError(f"kernel(out='....zarr') needs {', '.join(missing)}: "
                          "pip install 'ntkc[distributed]'")


def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _worker_module(path: str, sha: str, loader: Callable[[str], ModuleType]) -> ModuleType:
    """The generated module on this worker, loaded once per process and checked against
    the client's hash (a different file at the same path would compute another kernel)."""
    module = _MODULES.get(path)
    if module is not None:
        return module
    try:
        found = _file_sha(path)
    except OSError as e:
        raise FileNotFoundError(
            f"worker cannot read the generated module {path} ({e}): every worker must see "
            "it at that path; put NTKC_CACHE_DIR (or the compiled module) on a filesystem "
            "all workers share") from None
    if found != sha:
        raise ValueError(f"worker's {path} differs from the client's (sha256 {found[:12]}… "
                         f"against {sha[:12]}…): the cluster's hosts hold different files")
    module = _MODULES[path] = loader(path)
    return module


def _tile_task(module_ref: tuple[str, str, Callable], store: str, names: tuple[str, ...],
               ti: int, tj: int, tile: int, params: dict | None, backend: str, extra: dict,
               symmetric: bool, stamp: int) -> tuple[int, int, float, float]:
    """One tile on a worker: (ti, tj, seconds in the kernel, seconds writing the store)."""
    from .gramstore import read_rows, write_tile

    module = _worker_module(*module_ref)
    # Fresh, aligned arrays: numpy multiplies misaligned ones (as Dask's deserialised
    # buffers can be) without BLAS, in another order of summation, and the dense kernels'
    # GEMM would differ from the single-process run's in the last bits.
    a = np.array(read_rows(store, "x1", ti * tile, (ti + 1) * tile), order="C")
    b = None  # x2=None's diagonal tiles: the module's symmetric path, as Model.kernel's
    if not (symmetric and ti == tj):
        b = np.array(read_rows(store, "x1" if symmetric else "x2", tj * tile,
                               (tj + 1) * tile), order="C")
    start = time.perf_counter()
    res = module.kernel(a, b, names, params, backend, **extra)
    mid = time.perf_counter()
    write_tile(store, names, ti, tj, tile, tuple(res), symmetric, stamp)
    return ti, tj, mid - start, time.perf_counter() - mid


@contextlib.contextmanager
def connect(client: Any = None, workers: int | None = None,
            threads: int | None = None) -> Iterator[Any]:
    """A distributed Client: the one given, one to a scheduler address ("tcp://..."), or
    (None / "local") a LocalCluster of ``workers`` single-threaded processes (default:
    one per core) with ``threads`` numba threads each (default: cores // workers), closed
    on exit. Only clusters opened here are closed here."""
    from distributed import Client, LocalCluster

    if client not in (None, "local") and workers is not None:
        raise ValueError("workers= sizes the local cluster only; the cluster of the client "
                         "or scheduler given has the workers started there (dask worker ...)")
    if client is not None and not isinstance(client, str):
        yield client
        return
    if client not in (None, "local"):
        with Client(client) as c:
            yield c
        return
    cores = os.cpu_count() or 1
    n = workers or cores
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    # One dask thread per process; numba's prange threads share out the cores, so n
    # workers on c cores do not run n·c threads.
    env = {"NUMBA_NUM_THREADS": str(threads or max(1, cores // int(n)))}
    dashboard = ":0" if find_spec("bokeh") else None  # Dask's own live progress pages
    with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, env=env,
                      dashboard_address=dashboard, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as c:
        yield c


def kernel_to_store(module: ModuleType, loader: Callable[[str], ModuleType], x1: np.ndarray,
                    x2: np.ndarray | None, get: str | tuple[str, ...], params: dict | None,
                    dtype: Any, backend: str, extra: dict[str, Any], out: str | Path,
                    **options: Any) -> Any:
    """Fill (or resume) the Zarr store ``out`` (:func:`fill_store`); return the kernels
    as Dask arrays read from it: one for a string ``get``, else a namedtuple."""
    from .gramstore import open_gram

    names = (get,) if isinstance(get, str) else tuple(get)
    fill_store(module, loader, x1, x2, names, params, dtype, backend, extra, out, **options)
    return open_gram(out, get if isinstance(get, str) else names)


def fill_store(module: ModuleType, loader: Callable[[str], ModuleType], x1: np.ndarray,
               x2: np.ndarray | None, names: tuple[str, ...], params: dict | None,
               dtype: Any, backend: str, extra: dict[str, Any], out: str | Path,
               client: Any = None, workers: int | None = None, tile: int | None = None,
               progress: bool | None = None, restart: bool = False,
               on_tile: Callable[[int, int], None] | None = None,
               ) -> dict[tuple[int, int], tuple[float, float]]:
    """Compute the tiles ``out`` lacks on a Dask cluster (see Model.kernel for the
    arguments); returns {tile: (seconds in the kernel, seconds writing)} of those run.

    on_tile(done, total): called on the client after each finished tile; an exception
    it raises interrupts the run as Ctrl-C would (in-flight tiles cancelled, finished
    ones kept)."""
    _require_extra()
    from .gramstore import GramStore, recorded_tile, tile_grid

    symmetric = x2 is None
    n1, n2 = len(x1), len(x1 if symmetric else x2)
    tile = int(tile or recorded_tile(out) or min(max(n1, n2), DEFAULT_TILE))
    key = {"spec_sha256": str(getattr(module, "SPEC_SHA256", "")),
           **run_key(module, x1, x2, names, params, dtype, tile, backend)}
    store = GramStore(out, key, (n1, n2), symmetric, restart=restart, inputs=(x1, x2))
    grid = tile_grid((n1, n2), tile, symmetric)
    todo = sorted(set(grid) - store.done())
    show = progress if progress is not None else sys.stderr.isatty()
    if not todo:
        if show:
            print(f"ntkc: {out}: all {len(grid)} tiles already there", file=sys.stderr)
        return {}
    return _run_tiles(module, loader, store, todo, len(grid), params, backend, extra, client,
                      workers, show, on_tile)


def _run_tiles(module, loader, store, todo, total, params, backend, extra, client, workers,
               show, on_tile) -> dict[tuple[int, int], tuple[float, float]]:
    from distributed import as_completed
    from tqdm import tqdm

    path = getattr(module, "__file__", None)
    if not path:
        raise ValueError(f"{module.__name__} has no file: workers load generated modules "
                         "from a path (ntkc.load a spec or a generated .py file)")
    path = str(Path(path).resolve())
    ref = (path, _file_sha(path), loader)
    tile, names, symmetric = store.tile, store.names, store.symmetric
    stamp = time.time_ns()  # this run's mark in the store's done grid
    timings: dict[tuple[int, int], tuple[float, float]] = {}
    where = str(store.path.resolve())  # the same on every worker (a shared filesystem)
    with connect(client, workers) as c:
        if show and getattr(c, "dashboard_link", None):
            print(f"ntkc: Dask dashboard (task stream, progress): {c.dashboard_link}",
                  file=sys.stderr)
        futures = [
            c.submit(_tile_task, ref, where, names, ti, tj, tile, params, backend,
                     extra, symmetric, stamp, pure=False, key=f"ntkc-tile-{ti}-{tj}-{stamp}")
            for ti, tj in todo]
        bar = tqdm(total=total, initial=total - len(todo), unit="tile", disable=not show,
                   desc=f"ntkc {store.path.name}", file=sys.stderr, smoothing=0.05)
        try:
            for fut in as_completed(futures):
                ti, tj, t_kernel, t_write = fut.result()  # a failed tile raises its error
                timings[ti, tj] = (t_kernel, t_write)
                bar.update(1)
                if on_tile is not None:
                    on_tile(total - len(todo) + len(timings), total)
        except BaseException:
            c.cancel(futures)
            bar.close()
            print(f"ntkc: stopped with {total - len(todo) + len(timings)} of {total} tiles in "
                  f"{store.path}; rerun the same command to compute the rest",
                  file=sys.stderr)
            raise
        bar.close()
    return timings
