"""fc-grad: kernels with their derivatives by two params against the kernels alone, in the
same run (issue 14: at most 3×). The FC benchmark network (bench/dense.py: 3 × (dense +
relu) + dense, params w and b), N = 2000, d = 256, float64, train-train NNGP + NTK; the
gradient module's first call (sympy tangents, codegen, numba) is reported apart."""

from __future__ import annotations

import time

import numpy as np

from .common import best, load_spec
from .dense import FC_SPEC


def bench_fc_grad(n: int = 2000, d: int = 256, repeat: int = 3) -> dict:
    model = load_spec(FC_SPEC.format(d=d), "bench_fc")
    x = np.random.default_rng(0).standard_normal((n, d))
    model.kernel(x[:64])  # compile (or load from numba's cache) outside the timing
    start = time.perf_counter()
    model.kernel(x[:64], grad=("w", "b"))
    first = time.perf_counter() - start
    t_kernel = best(lambda: model.kernel(x), repeat)
    t_grad = best(lambda: model.kernel(x, grad=("w", "b")), repeat)
    return {"case": f"fc-grad N={n} d={d} float64 nngp+ntk, d/dw and d/db",
            "kernel_s": t_kernel, "grad_s": t_grad, "ratio": t_grad / t_kernel,
            "grad_first_call_s": first}


def report_fc_grad(r: dict) -> str:
    return (f"{r['case']}\n"
            f"  kernels                 {r['kernel_s'] * 1e3:9.1f} ms\n"
            f"  kernels + 2 gradients   {r['grad_s'] * 1e3:9.1f} ms\n"
            f"  ratio = {r['ratio']:.2f}  (target ≤ 3)\n"
            f"  first call with gradients (tangents, codegen, numba) {r['grad_first_call_s']:.1f} s")
