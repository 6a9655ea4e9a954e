"""Benchmarks, each timed against something measured in the same run.

    python -m ntkc.bench [--case fc|fc-gpu|cntk-gap|cnn-flatten|cifar-gap5|...]   (or: ntkc bench)

fc-grad: the fc network at N = 2000 with d/dw and d/db, against the kernels alone (bench/grad.py).
fc: 3 × (dense + relu) + dense, N = 4000, d = 256, float64, train-train NNGP + NTK.
Reports the wall time of kernel(), the input GEMM alone, writing two N×N float64
arrays, and the ratio kernel / (GEMM + writes).

fc-gpu: the same network, N = 20000, d = 784, float32, train-train NNGP + NTK, on
device="cuda" against the CPU kernel in the same run, with the time to copy two
N×N float32 arrays from the device to the host (the floor of any GPU kernel that
returns host arrays). Needs an NVIDIA GPU and numba-cuda (pip install 'ntkc[cuda]').

cntk-gap, cnn-flatten: convolutional networks (ntkc.bench.conv).
cifar-gap5, cifar-gap21: the CNTK at 32×32×3, 5 and 21 layers: first call on empty caches,
steady state, stencil GFLOP/s and GB/s against a copy's bandwidth (ntkc.bench.cifar).
mlp-depth: compile time against depth (issue 10): k × (dense + relu|erf) + dense, d = 16,
k in --depths (5 10 20 50 100), each in a fresh process on empty ntkc and numba caches;
the time of ntkc.load (derive + codegen + import) and of the first kernel(x) on 8 inputs
(numba's JIT + the run), and the generated module's size.

dask: cnn-flatten's network at 16×16×3, N = 2000, as Dask tasks into a Zarr store on 1 and 2
worker processes in the same run: speedup, Dask's overhead per tile and the tile size that
makes it negligible (ntkc.bench.dask; needs the [distributed] extra). --n, --tile.
dask-gp: gp_inference on a Zarr NNGP of N = 20000 float64 (3.0 GiB) by Dask's blocked
Cholesky, on 2 workers capped at 1.25 GiB each; peak memory, and the same path at N = 2000
against the in-memory solve.

cntk21-gap-gpu, cnn21-flatten-gpu: issue 5's 21-layer 32×32×3 nets, ms per Gram entry on the
GPU and the CPU, against Neural Tangents' published V100 figures (needs a GPU).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="ntkc bench", description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="fc", choices=[
        "fc", "fc-gpu", "mlp-depth", "cntk-gap", "cnn-flatten", "cifar-gap5", "cifar-gap21",
        "cntk21-gap-gpu", "cnn21-flatten-gpu", "dask", "dask-gp", "fc-grad"])
    ap.add_argument("--n", type=int, help="points (default: 4000 for fc, 20000 for fc-gpu)")
    ap.add_argument("--d", type=int, help="input dimension (default: 256 for fc, 784 for fc-gpu)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--numpy-n", type=int, help="points for the numpy reference (conv cases)")
    ap.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20, 50, 100],
                    help="mlp-depth: the depths to time")
    ap.add_argument("--acts", nargs="+", default=["relu", "erf"],
                    help="mlp-depth: the nonlinearities")
    ap.add_argument("--tile", type=int, default=250, help="dask: rows per tile")
    args = ap.parse_args(argv)
    if args.case == "fc-grad":
        from .grad import bench_fc_grad, report_fc_grad

        print(report_fc_grad(bench_fc_grad(args.n or 2000, args.d or 256, args.repeat)))
        return 0
    if args.case == "dask":
        from .dask import bench_dask, report_dask

        print(report_dask(bench_dask(args.n or 2000, args.tile)))
        return 0
    if args.case == "dask-gp":
        from .dask import bench_dask_gp, report_dask_gp

        print(report_dask_gp(bench_dask_gp(args.n or 20000)))
        return 0
    from .dense import bench_fc, bench_fc_gpu, bench_mlp_depth, report, report_depth, report_gpu

    if args.case == "mlp-depth":
        print(report_depth(bench_mlp_depth(args.depths, args.acts, args.n or 8)))
        return 0
    if args.case.endswith("21-gap-gpu") or args.case.endswith("21-flatten-gpu"):
        from .conv import bench_conv_gpu, report_conv_gpu

        try:
            print(report_conv_gpu(bench_conv_gpu(args.case, args.n or 64)))
        except RuntimeError as e:  # no GPU / no numba.cuda: the generated module says why
            print(f"ntkc bench: error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.case.startswith("cifar-"):
        from .cifar import bench_cifar, report_cifar

        print(report_cifar(bench_cifar(args.case, args.n, args.repeat)))
        return 0
    if args.case in ("cntk-gap", "cnn-flatten"):
        from .conv import bench_conv, report_conv

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
