"""What one kernel() run holds in memory, and resumable out-of-core Gram matrices.

``work_bytes`` counts everything a call of a generated module's kernel() allocates for a
block of rows × cols: the outputs, the point rows of both inputs, numba's per-thread
scratch (conv modules: N_SCRATCH float64 entries per pair task, a per-input ``w`` for
the point phase) and the numpy reference's temporaries. ``Model.kernel`` refuses a run
whose sum is over the memory limit before anything is compiled or allocated.

``Progress`` is the manifest of a run with ``out_dir=``: ``progress.json`` next to the
``.npy`` maps says which tiles are written (rewritten atomically after each tile, after
the maps are flushed) and for what (hashes of the inputs and of the module, dtype,
params, tile). ``"complete": false`` marks the maps as partly filled; a rerun with the
same out_dir, inputs and module resumes, skipping finished tiles; a different one is
refused unless ``restart=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

MANIFEST = "progress.json"


def num_threads() -> int:
    """Threads numba runs prange loops on (each holds its own scratch)."""
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001 - numba missing or not initialisable: be pessimistic
        return os.cpu_count() or 1


def work_bytes(module: ModuleType, rows: int, cols: int, names: tuple[str, ...],
               itemsize: int, backend: str, on_gpu: bool, threads: int) -> dict[str, int]:
    """Host bytes one module.kernel() call on rows × cols inputs allocates, by kind."""
    n_point = int(getattr(module, "N_POINT", 0))
    n_scratch = getattr(module, "N_SCRATCH", None)  # conv modules only
    out = {"point rows": (rows + cols) * n_point * 8}
    if n_scratch is None:  # dense: the GEMM result becomes K, Θ is a second array
        out["outputs"] = rows * cols * itemsize * len(names)
        if backend == "numpy":  # one (rows, cols) float64 array per CSE term, roughly
            out["numpy temporaries"] = rows * cols * 8 * max(4, n_point)
        return out
    n_scratch = int(n_scratch)
    d = int(np.prod(module.INPUT_SHAPE))  # conv inputs have no open size
    n_w = int(getattr(module, "N_W", n_scratch))  # the point phase's full covariances
    out["inputs (float64)"] = (rows + cols) * d * 8
    # K and Θ are float64 there; float32 results are copies
    out["outputs"] = rows * cols * (16 + (itemsize * len(names) if itemsize != 8 else 0))
    if on_gpu:
        return out
    if backend == "numpy":  # a (cols, P, P) array per line, for one row at a time
        out["numpy temporaries"] = 2 * cols * n_scratch * 8 + 2 * max(rows, cols) * n_w * 8
    else:
        out["pair scratch"] = min(threads, (rows + 1) // 2) * n_scratch * 8
        out["point scratch"] = min(threads, max(rows, cols)) * n_w * 8
    return out


def size(b: float) -> str:
    """Bytes for people: 1.5 GiB, 12.0 MiB, 300 B."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{int(b)} B"


def memory_advice(module: ModuleType, parts: dict[str, int], total: int, limit: int,
                  threads: int, backend: str, outputs_in_memory: int) -> str:
    """The refusal message: what does not fit, and the way out that helps."""
    got = ", ".join(f"{k} {size(v)}" for k, v in parts.items() if v)
    head = f"this kernel() run needs {size(total)} ({got}), over the {size(limit)} available: "
    one_pair = 8 * int(getattr(module, "N_SCRATCH", 0))
    if one_pair > limit:
        return head + (
            f"one pair of inputs alone needs {size(one_pair)} of scratch "
            f"(N_SCRATCH = {module.N_SCRATCH} float64 entries: covariances between all pairs "
            "of positions of the lines below a pool, see `ntkc show --structure`); no tile "
            "size or dtype helps: use smaller images, pool earlier (avg_pool), or read out "
            "by flatten (O(P) per pair)")
    if parts.get("numpy temporaries", 0) > limit / 2:
        return head + "use backend='numba' (the numpy reference materialises whole arrays)"
    if parts.get("pair scratch", 0) + parts.get("point scratch", 0) > limit / 2:
        return head + (f"each of the {threads} numba threads holds its own scratch: use "
                       "fewer (numba.set_num_threads(k) or NUMBA_NUM_THREADS=k)")
    if outputs_in_memory > limit / 2:
        return head + ("use float32 inputs, ask for one of nngp/ntk, compute blocks with x2=, "
                       "or write to disk with out_dir=... (tiles are filled out-of-core)")
    return head + "pass a smaller tile= (rows and columns per tile)"


# -- resumable out_dir runs ------------------------------------------------------------------
def _array_hash(x: np.ndarray) -> str:
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def _module_hash(module: ModuleType) -> str:
    path = getattr(module, "__file__", None)
    if path and Path(path).exists():
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return str(getattr(module, "SPEC_SHA256", module.__name__))


def run_key(module: ModuleType, x1: np.ndarray, x2: np.ndarray | None,
            names: tuple[str, ...], params: Any, dtype: Any, tile: int,
            backend: str) -> dict[str, Any]:
    """What an out_dir run computes: equal keys, equal results."""
    return {
        "module": _module_hash(module),
        "network": getattr(module, "NETWORK", "?"),
        "x1": _array_hash(x1),
        "x2": "x1" if x2 is None else _array_hash(x2),
        "get": list(names),
        "params": [float(v) for v in module.param_vector(params)],
        "dtype": np.dtype(dtype).name,
        "tile": int(tile),
        "backend": backend,
    }


class Progress:
    """The maps and manifest of an out_dir run: ``done`` holds the finished tiles."""

    def __init__(self, out_dir: str | Path, key: dict[str, Any], shape: tuple[int, int],
                 restart: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.path = self.dir / MANIFEST
        names, dtype = key["get"], np.dtype(key["dtype"])
        files = {n: self.dir / f"{n}.npy" for n in names}
        old = self._read()
        resume = old is not None and old.get("key") == key and all(
            f.exists() for f in files.values())
        if old is not None and not resume and not restart:
            what = [k for k in key if old.get("key", {}).get(k) != key[k]] or ["its files"]
            raise ValueError(
                f"{self.dir} holds another kernel() run (it differs in: {', '.join(what)}): "
                "pass restart=True to overwrite it, or use another out_dir")
        if old is None and not restart and any(f.exists() for f in files.values()):
            raise ValueError(
                f"{self.dir} already holds {', '.join(f.name for f in files.values() if f.exists())}"
                f" without a {MANIFEST}: pass restart=True to overwrite, or use another out_dir")
        self.done = {tuple(t) for t in old["done"]} if resume else set()
        mode = "r+" if resume else "w+"
        self.maps = {n: np.lib.format.open_memmap(f, mode, dtype, shape)
                     for n, f in files.items()}
        if not resume:
            self._write(complete=False)

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _write(self, complete: bool) -> None:
        text = json.dumps({"complete": complete, "key": self.key,
                           "done": sorted(self.done)}, indent=None)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".progress.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def mark(self, tile: tuple[int, int]) -> None:
        """Tile written: flush the maps, then record it."""
        for m in self.maps.values():
            m.flush()
        self.done.add(tuple(tile))
        self._write(complete=False)

    def finish(self) -> None:
        for m in self.maps.values():
            m.flush()
        self._write(complete=True)
