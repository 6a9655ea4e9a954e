"""The dense benchmarks: the FC network against its GEMM and writes (fc, fc-gpu), and
compile time against depth (mlp-depth)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import best, load_spec

FC_SPEC = """network bench_fc
param w = 1.4
param b = 0.1
input x : vector[{d}]
g1 = dense(x, w_std=w, b_std=b)
h1 = relu(g1)
g2 = dense(h1, w_std=w, b_std=b)
h2 = relu(g2)
g3 = dense(h2, w_std=w, b_std=b)
h3 = relu(g3)
y = dense(h3, w_std=w, b_std=b)
output y
"""


def _model(d: int):
    return load_spec(FC_SPEC.format(d=d), "bench_fc")


def bench_fc(n: int = 4000, d: int = 256, repeat: int = 3) -> dict:
    model = _model(d)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    model.kernel(x[:64])  # compile (or load from numba's cache) outside the timing
    t_kernel = best(lambda: model.kernel(x), repeat)
    t_gemm = best(lambda: x @ x.T, repeat)

    def write_two():
        for _ in range(2):
            a = np.empty((n, n))
            a.fill(1.0)

    t_write = best(write_two, repeat)
    return {
        "case": f"fc 3x(dense+relu)+dense N={n} d={d} float64 nngp+ntk",
        "kernel_s": t_kernel, "gemm_s": t_gemm, "write_two_s": t_write,
        "ratio": t_kernel / (t_gemm + t_write),
        "pairs_per_s": n * (n + 1) / 2 / t_kernel,
    }


def bench_fc_gpu(n: int = 20000, d: int = 784, repeat: int = 3) -> dict:
    """device="cuda" against the CPU kernel, same inputs, same run (float32)."""
    model = _model(d)
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    # Fails here, before any large allocation, when there is no GPU (RuntimeError).
    model.kernel(x[:64], device="cuda")  # compiles the cuda kernels outside the timing
    model.kernel(x[:64], device="cpu")
    from numba import cuda

    def copy_two():
        buf = cuda.device_array(n * n, np.float32)
        for _ in range(2):
            buf.copy_to_host()

    t_copy = best(copy_two, repeat)
    # The module's kernel itself on both devices: one call each, no host tiles.
    kernel = model.module.kernel
    t_gpu = best(lambda: kernel(x, device="cuda"), repeat)
    t_cpu = best(lambda: kernel(x, device="cpu"), max(1, repeat - 1))
    gpu, cpu = kernel(x, device="cuda"), kernel(x, device="cpu")
    rows = slice(None, None, max(1, n // 200))  # a sample of rows keeps the check light
    diff = max(float(np.abs(g[rows] - c[rows]).max() / np.abs(c[rows]).max())
               for g, c in zip(gpu, cpu))
    return {
        "case": f"fc-gpu 3x(dense+relu)+dense N={n} d={d} float32 nngp+ntk",
        "device": getattr(cuda.current_context().device, "name", "?"),  # simulator: no name
        "cuda_s": t_gpu, "cpu_s": t_cpu,
        "copy_two_s": t_copy, "speedup": t_cpu / t_gpu, "max_rel_diff": diff,
        "pairs_per_s": n * (n + 1) / 2 / t_gpu,
    }


def report_gpu(result: dict) -> str:
    name = result["device"]
    name = name.decode() if isinstance(name, bytes) else name
    return (f"{result['case']} on {name}\n"
            f"  kernel(device='cuda')       {result['cuda_s'] * 1e3:9.1f} ms\n"
            f"  kernel(device='cpu')        {result['cpu_s'] * 1e3:9.1f} ms\n"
            f"  copy 2 N×N device→host      {result['copy_two_s'] * 1e3:9.1f} ms\n"
            f"  speedup cpu / cuda = {result['speedup']:.1f}, "
            f"cuda / copies = {result['cuda_s'] / result['copy_two_s']:.2f}\n"
            f"  max |cuda - cpu| / max |cpu| = {result['max_rel_diff']:.1e}\n"
            f"  {result['pairs_per_s'] / 1e6:.1f} M pairs/s on the GPU (upper triangle)")


def mlp_spec(depth: int, act: str, d: int = 16) -> str:
    """depth × (dense + act) + a dense readout."""
    lines = [f"network mlp_{act}_{depth}", f"input x : vector[{d}]"]
    prev = "x"
    for i in range(1, depth + 1):
        lines += [f"g{i} = dense({prev}, w_std=1.4, b_std=0.1)", f"h{i} = {act}(g{i})"]
        prev = f"h{i}"
    return "\n".join([*lines, f"y = dense({prev}, w_std=1.4, b_std=0.1)", "output y", ""])


# Run in a fresh interpreter: numba reads NUMBA_CACHE_DIR at import, and a warm process
# would have sympy's caches and numba's compiled helpers from the previous depth.
_DEPTH_CHILD = """
import json, sys, time
import numpy as np
import ntkc
t0 = time.perf_counter()
model = ntkc.load(sys.argv[1])
t1 = time.perf_counter()
model.kernel(np.random.default_rng(0).standard_normal((int(sys.argv[2]), int(sys.argv[3]))))
t2 = time.perf_counter()
print(json.dumps({"compile_s": t1 - t0, "first_call_s": t2 - t1,
                  "module_bytes": len(model.compiled.source.encode())}))
"""


def bench_mlp_depth(depths=(5, 10, 20, 50, 100), acts=("relu", "erf"), n: int = 8,
                    d: int = 16) -> list[dict]:
    """Time from ntkc.load to the first kernel, per (activation, depth), empty caches."""
    rows = []
    for act in acts:
        for depth in depths:
            with tempfile.TemporaryDirectory() as tmp:
                spec = Path(tmp) / f"mlp_{act}_{depth}.ntk"
                spec.write_text(mlp_spec(depth, act, d))
                env = dict(os.environ, NTKC_CACHE_DIR=f"{tmp}/ntkc",
                           NUMBA_CACHE_DIR=f"{tmp}/numba")
                cmd = [sys.executable, "-c", _DEPTH_CHILD, str(spec), str(n), str(d)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
                rows.append({"act": act, "depth": depth, "error": tail[0]})
            else:
                result = json.loads(out.stdout.splitlines()[-1])
                rows.append({"act": act, "depth": depth, **result})
            print(report_depth_row(rows[-1]), file=sys.stderr, flush=True)  # progress
    return rows


def report_depth_row(r: dict) -> str:
    if "error" in r:
        return f"{r['act']:>5} {r['depth']:6d}   error: {r['error']}"
    return (f"{r['act']:>5} {r['depth']:6d} {r['compile_s']:10.2f} {r['first_call_s']:11.2f} "
            f"{r['compile_s'] + r['first_call_s']:9.2f} {r['module_bytes'] / 1e3:10.0f}")


def report_depth(rows: list[dict]) -> str:
    head = ("mlp-depth: depth × (dense + act) + dense, d = 16, first kernel on 8 inputs, "
            "empty caches\n  act  depth  load (s)  1st call (s)  total (s)  module (kB)")
    return "\n".join([head, *map(report_depth_row, rows)])


def report(result: dict) -> str:
    return (f"{result['case']}\n"
            f"  kernel()            {result['kernel_s'] * 1e3:9.1f} ms\n"
            f"  input GEMM alone    {result['gemm_s'] * 1e3:9.1f} ms\n"
            f"  write 2 N×N arrays  {result['write_two_s'] * 1e3:9.1f} ms\n"
            f"  ratio kernel / (GEMM + writes) = {result['ratio']:.2f}  (target ≤ 2)\n"
            f"  {result['pairs_per_s'] / 1e6:.1f} M pairs/s (upper triangle)")
