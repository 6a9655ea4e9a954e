"""Convolutional benchmarks (issue cases), timed against the numpy reference backend
in the same run, with the conv-operator work counted from the tap tables.

cntk-gap:    4 × (conv 3×3 SAME + relu) + global average pooling + dense, 8×8×1, N = 100
cnn-flatten: the same with flatten instead of pooling, 16×16×3, N = 400
float64, train-train (x2=None) NNGP + NTK.
"""

from __future__ import annotations

import math

import numpy as np

from ..semantics.structure import FULL, analyse
from .common import best, load_spec

CASES = {"cntk-gap": ((8, 8, 1), 100, "global_avg_pool"),
         "cnn-flatten": ((16, 16, 3), 400, "flatten")}


def conv_work(assignments, structure: dict) -> tuple[int, int]:
    """(flops, array entries moved) of the conv stencils among ``assignments``: per tap,
    an add at every output position where it is valid (pairs of them for a full array),
    and the scaling multiply; each source entry read once, each output written once."""
    flops = entries = 0
    for a in assignments:
        if a.stencil is None or a.stencil.op != "conv":
            continue
        win = a.stencil.window
        valid = (win.taps >= 0).sum(axis=0).astype(int)  # output positions per tap
        p_in, p_out = math.prod(win.in_spatial), math.prod(win.out_spatial)
        if structure[a.symbol] == FULL:
            flops += int((valid**2).sum()) + p_out**2
            entries += p_in**2 + p_out**2
        else:
            flops += int(valid.sum()) + p_out
            entries += p_in + p_out
    return flops, entries


def conv_flops_per_pair(recursion) -> int:
    """Adds and the scaling multiply of every conv stencil of the pair phase."""
    return conv_work(recursion.pair, analyse(recursion))[0]


def bench_conv(case: str, n: int | None = None, repeat: int = 3,
               numpy_n: int | None = None) -> dict:
    shape, default_n, readout = CASES[case]
    n = n or default_n
    name = "bench_" + case.replace("-", "_")
    model = load_spec(deep_spec(4, shape, readout, name), name)
    x = np.random.default_rng(0).standard_normal((n, *shape))
    model.kernel(x[:4])  # compile (or load from numba's cache) outside the timing
    model.kernel(x[:4], backend="numpy")
    t = best(lambda: model.kernel(x), repeat)
    # The numpy reference at (up to) the same N; its time per pair is what is compared.
    m = min(n, numpy_n or n)
    t_np = best(lambda: model.kernel(x[:m], backend="numpy"), 1)
    pairs, pairs_np = n * (n + 1) / 2, m * (m + 1) / 2
    flops = conv_flops_per_pair(model.compiled.recursion) * pairs
    return {
        "case": f"{case} {shape[0]}x{shape[1]}x{shape[2]} N={n} float64 nngp+ntk train-train",
        "kernel_s": t, "pairs_per_s": pairs / t, "conv_gflops": flops / t / 1e9,
        "numpy_s": t_np, "numpy_n": m, "speedup_vs_numpy": (t_np / pairs_np) / (t / pairs),
    }


def report_conv(r: dict) -> str:
    return (f"{r['case']}\n"
            f"  kernel()                 {r['kernel_s'] * 1e3:9.1f} ms\n"
            f"  {r['pairs_per_s']:.3g} pairs/s, conv operator {r['conv_gflops']:.2f} GFLOP/s\n"
            f"  numpy reference backend  {r['numpy_s'] * 1e3:9.1f} ms at N={r['numpy_n']}: "
            f"numba is {r['speedup_vs_numpy']:.1f}x faster per pair")




# Issue 5's GPU cases: 21 × (conv 3×3 SAME + relu) + readout, 32×32×3, float32, against
# the CPU kernel in the same run and the published Neural Tangents figures (V100, float32).
GPU_CASES = {"cntk21-gap-gpu": ("global_avg_pool", 2.70), "cnn21-flatten-gpu": ("flatten", 0.00465)}


def deep_spec(depth: int, shape: tuple[int, int, int], readout: str, name: str) -> str:
    """depth × (conv 3×3 SAME + relu) + readout (a pool or flatten) + dense."""
    lines = [f"network {name}", f"input x : image[{shape[0]}, {shape[1]}, {shape[2]}]"]
    src = "x"
    for k in range(1, depth + 1):
        lines += [f"g{k} = conv({src}, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)",
                  f"h{k} = relu(g{k})"]
        src = f"h{k}"
    lines += [f"r = {readout}({src})", "y = dense(r, w_std=1.0, b_std=0.0)", "output y"]
    return "\n".join(lines) + "\n"


def bench_conv_gpu(case: str, n: int = 64, n_cpu: int = 8, repeat: int = 2) -> dict:
    """ms per Gram entry on device="cuda" (N×N, x2=None) and on the CPU (n_cpu points)."""
    readout, nt_ms = GPU_CASES[case]
    model = load_spec(deep_spec(21, (32, 32, 3), readout, "bench_deep"), "bench_deep")
    x = np.random.default_rng(0).standard_normal((n, 32, 32, 3)).astype(np.float32)
    # Fails here, before the timing, when there is no GPU (RuntimeError with the way out).
    model.kernel(x[:2], device="cuda")
    model.kernel(x[:2], device="cpu")
    t_gpu = best(lambda: model.kernel(x, device="cuda"), repeat)
    t_cpu = best(lambda: model.kernel(x[:n_cpu], device="cpu"), 1)
    gpu, cpu = model.kernel(x[:n_cpu], device="cuda"), model.kernel(x[:n_cpu], device="cpu")
    diff = max(float(np.abs(g - c).max() / np.abs(c).max()) for g, c in zip(gpu, cpu))
    return {"case": f"{case} 21x(conv3x3+relu)+{readout} 32x32x3 float32 nngp+ntk",
            "gpu_ms_per_entry": t_gpu * 1e3 / n**2, "cpu_ms_per_entry": t_cpu * 1e3 / n_cpu**2,
            "nt_v100_ms_per_entry": nt_ms, "max_rel_diff": diff}


def report_conv_gpu(r: dict) -> str:
    return (f"{r['case']}\n"
            f"  device='cuda'  {r['gpu_ms_per_entry']:.5f} ms per Gram entry\n"
            f"  device='cpu'   {r['cpu_ms_per_entry']:.5f} ms per Gram entry\n"
            f"  Neural Tangents (published, V100 float32): {r['nt_v100_ms_per_entry']} ms per "
            f"entry: ntkc GPU is {r['nt_v100_ms_per_entry'] / r['gpu_ms_per_entry']:.1f}x faster\n"
            f"  max |cuda - cpu| / max |cpu| = {r['max_rel_diff']:.1e}")
