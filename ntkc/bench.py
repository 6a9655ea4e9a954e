"""Benchmarks, each timed against something measured in the same run.

    python -m ntkc.bench          (or: ntkc bench)

fc: 3 × (dense + relu) + dense, N = 4000, d = 256, float64, train-train NNGP + NTK.
Reports the wall time of kernel(), the input GEMM alone, writing two N×N float64
arrays, and the ratio kernel / (GEMM + writes).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

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


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_fc(n: int = 4000, d: int = 256, repeat: int = 3) -> dict:
    from .runtime import load

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench_fc.ntk"
        spec.write_text(FC_SPEC.format(d=d))
        model = load(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    model.kernel(x[:64])  # compile (or load from numba's cache) outside the timing
    t_kernel = _best(lambda: model.kernel(x), repeat)
    t_gemm = _best(lambda: x @ x.T, repeat)

    def write_two():
        for _ in range(2):
            a = np.empty((n, n))
            a.fill(1.0)

    t_write = _best(write_two, repeat)
    return {
        "case": f"fc 3x(dense+relu)+dense N={n} d={d} float64 nngp+ntk",
        "kernel_s": t_kernel, "gemm_s": t_gemm, "write_two_s": t_write,
        "ratio": t_kernel / (t_gemm + t_write),
        "pairs_per_s": n * (n + 1) / 2 / t_kernel,
    }


def report(result: dict) -> str:
    return (f"{result['case']}\n"
            f"  kernel()            {result['kernel_s'] * 1e3:9.1f} ms\n"
            f"  input GEMM alone    {result['gemm_s'] * 1e3:9.1f} ms\n"
            f"  write 2 N×N arrays  {result['write_two_s'] * 1e3:9.1f} ms\n"
            f"  ratio kernel / (GEMM + writes) = {result['ratio']:.2f}  (target ≤ 2)\n"
            f"  {result['pairs_per_s'] / 1e6:.1f} M pairs/s (upper triangle)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="ntkc bench", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(report(bench_fc(args.n, args.d, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
