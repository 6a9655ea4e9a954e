"""Benchmarks, each timed against something measured in the same run.

    python -m ntkc.bench [--case fc|fc-gpu|cntk-gap|cnn-flatten|cifar-gap5|...]   (or: ntkc bench)

fc: 3 × (dense + relu) + dense, N = 4000, d = 256, float64, train-train NNGP + NTK.
Reports the wall time of kernel(), the input GEMM alone, writing two N×N float64
arrays, and the ratio kernel / (GEMM + writes).

fc-gpu: the same network, N = 20000, d = 784, float32, train-train NNGP + NTK, on
device="cuda" against the CPU kernel in the same run, with the time to copy two
N×N float32 arrays from the device to the host (the floor of any GPU kernel that
returns host arrays). Needs an NVIDIA GPU and numba-cuda (pip install 'ntkc[cuda]').

cntk-gap, cnn-flatten: convolutional networks (ntkc.bench_conv).
cifar-gap5, cifar-gap21: the CNTK at 32×32×3, 5 and 21 layers: first call on empty caches,
steady state, stencil GFLOP/s and GB/s against a copy's bandwidth (ntkc.bench_cifar).
mlp-depth: compile time against depth (issue 10): k × (dense + relu|erf) + dense, d = 16,
k in --depths (5 10 20 50 100), each in a fresh process on empty ntkc and numba caches;
the time of ntkc.load (derive + codegen + import) and of the first kernel(x) on 8 inputs
(numba's JIT + the run), and the generated module's size.

cntk21-gap-gpu, cnn21-flatten-gpu: issue 5's 21-layer 32×32×3 nets, ms per Gram entry on the
GPU and the CPU, against Neural Tangents' published V100 figures (needs a GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def load_spec(text: str, name: str):
    """A benchmark network compiled from its spec text (through a temporary file)."""
    from .runtime import load

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"{name}.ntk"
        spec.write_text(text)
        return load(spec)


def _model(d: int):
    return load_spec(FC_SPEC.format(d=d), "bench_fc")


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_fc(n: int = 4000, d: int = 256, repeat: int = 3) -> dict:
    model = _model(d)
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

    t_copy = _best(copy_two, repeat)
    # The module's kernel itself on both devices: one call each, no host tiles.
    kernel = model.module.kernel
    t_gpu = _best(lambda: kernel(x, device="cuda"), repeat)
    t_cpu = _best(lambda: kernel(x, device="cpu"), max(1, repeat - 1))
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="ntkc bench", description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="fc", choices=[
        "fc", "fc-gpu", "mlp-depth", "cntk-gap", "cnn-flatten", "cifar-gap5", "cifar-gap21",
        "cntk21-gap-gpu", "cnn21-flatten-gpu"])
    ap.add_argument("--n", type=int, help="points (default: 4000 for fc, 20000 for fc-gpu)")
    ap.add_argument("--d", type=int, help="input dimension (default: 256 for fc, 784 for fc-gpu)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--numpy-n", type=int, help="points for the numpy reference (conv cases)")
    ap.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20, 50, 100],
                    help="mlp-depth: the depths to time")
    ap.add_argument("--acts", nargs="+", default=["relu", "erf"],
                    help="mlp-depth: the nonlinearities")
    args = ap.parse_args(argv)
    if args.case == "mlp-depth":
        print(report_depth(bench_mlp_depth(args.depths, args.acts, args.n or 8)))
        return 0
    if args.case.endswith("21-gap-gpu") or args.case.endswith("21-flatten-gpu"):
        from .bench_conv import bench_conv_gpu, report_conv_gpu

        try:
            print(report_conv_gpu(bench_conv_gpu(args.case, args.n or 64)))
        except RuntimeError as e:  # no GPU / no numba.cuda: the generated module says why
            print(f"ntkc bench: error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.case.startswith("cifar-"):
        from .bench_cifar import bench_cifar, report_cifar

        print(report_cifar(bench_cifar(args.case, args.n, args.repeat)))
        return 0
    if args.case in ("cntk-gap", "cnn-flatten"):
        from .bench_conv import bench_conv, report_conv

        print(report_conv(bench_conv(args.case, args.n, args.repeat, args.numpy_n)))
        return 0
    if args.case == "fc":
        print(report(bench_fc(args.n or 4000, args.d or 256, args.repeat)))
        return 0
    try:
        print(report_gpu(bench_fc_gpu(args.n or 20000, args.d or 784, args.repeat)))
    except RuntimeError as e:  # no GPU / no numba.cuda: the generated module says why
        print(f"ntkc bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
