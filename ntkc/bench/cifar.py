"""CIFAR-size convolutional benchmarks: the CNTK of Arora et al. (2019) at 32×32×3.

cifar-gap5:  5 × (conv 3×3 SAME + relu) + global average pooling + dense, float64, N = 8
cifar-gap21: 21 × (the same), float32, N = 4
x2=None (the upper triangle, N(N+1)/2 pairs, and the N inputs' own phase), NNGP + NTK.

Everything runs in one fresh process on empty ntkc and numba caches, which reports:
  first call   from ntkc.load to the end of the first kernel(x): derive, codegen,
               import, numba's JIT and the run, what a new user waits for;
  steady       the best of --repeat further calls, and per pair;
  stencils     the conv work counted from the tap tables (ntkc.bench.conv.conv_work:
               the adds of every tap of 𝒜 and the scaling, for every conv of both
               phases) in GFLOP/s, and the bytes those stencils must move at least (each
               source read once, each output written once) in GB/s;
  floor        a memory-bandwidth floor measured in the same process: np.copyto of the
               same number of bytes (half read, half written), and the steady time as a
               multiple of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from ..semantics.structure import analyse
from .conv import conv_work, deep_spec

CASES = {"cifar-gap5": (5, 8, "float64"), "cifar-gap21": (21, 4, "float32")}

# Runs in the fresh process. argv: spec, N, dtype, repeat.
RUN = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    t0 = time.perf_counter()
    import ntkc
    from ntkc.bench.common import best
    from ntkc.bench.cifar import stencil_work
    model = ntkc.load(sys.argv[1])
    n, dtype, repeat = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    x = np.random.default_rng(0).standard_normal((n, *model.module.INPUT_SHAPE)).astype(dtype)
    t_load = time.perf_counter() - t0
    model.kernel(x, progress=False)
    t_first = time.perf_counter() - t0
    t_steady = best(lambda: model.kernel(x, progress=False), repeat)
    flops, nbytes = stencil_work(model.compiled.recursion, n, np.dtype(dtype).itemsize)
    src = np.ones(nbytes // 16)  # float64: half the bytes read, half written
    dst = np.empty_like(src)
    t_copy = best(lambda: np.copyto(dst, src), 5)
    print("RESULT " + json.dumps({"load_s": t_load, "first_s": t_first, "steady_s": t_steady,
                                  "flops": flops, "bytes": nbytes, "copy_s": t_copy}))
''')


def stencil_work(recursion, n: int, itemsize: int) -> tuple[int, int]:
    """(flops, bytes) of the conv stencils of one x2=None kernel call on n inputs
    (ntkc.bench.conv.conv_work): the pair phase's N(N+1)/2 times, the point phase's N."""
    structure = analyse(recursion)
    flops = nbytes = 0
    for assignments, count in ((recursion.point, n), (recursion.pair, n * (n + 1) // 2)):
        f, entries = conv_work(assignments, structure)
        flops, nbytes = flops + f * count, nbytes + entries * itemsize * count
    return flops, nbytes


def bench_cifar(case: str, n: int | None = None, repeat: int = 2) -> dict:
    depth, default_n, dtype = CASES[case]
    n = n or default_n
    name = case.replace("-", "_")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"{name}.ntk"
        spec.write_text(deep_spec(depth, (32, 32, 3), "global_avg_pool", name))
        env = dict(os.environ, NTKC_CACHE_DIR=str(Path(tmp) / "ntkc"),
                   NUMBA_CACHE_DIR=str(Path(tmp) / "numba"))
        proc = subprocess.run([sys.executable, "-c", RUN, str(spec), str(n), dtype, str(repeat)],
                              capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"the benchmark process failed:\n{proc.stderr[-3000:]}")
    r = json.loads(lines[-1][len("RESULT "):])
    pairs = n * (n + 1) // 2
    return {"case": f"{case} {depth}x(conv3x3+relu)+GAP+dense 32x32x3 N={n} {dtype} "
                    "nngp+ntk x2=None", "pairs": pairs, **r,
            "s_per_pair": r["steady_s"] / pairs, "gflops": r["flops"] / r["steady_s"] / 1e9,
            "gbps": r["bytes"] / r["steady_s"] / 1e9, "floor_gbps": r["bytes"] / r["copy_s"] / 1e9}


def report_cifar(r: dict) -> str:
    return (f"{r['case']}\n"
            f"  first call, empty caches  {r['first_s']:7.1f} s  (ntkc.load {r['load_s']:.1f} s)\n"
            f"  steady state              {r['steady_s']:7.3f} s  = {r['s_per_pair']:.4f} s per pair"
            f" ({r['pairs']} pairs)\n"
            f"  conv stencils             {r['gflops']:7.2f} GFLOP/s, {r['gbps']:.2f} GB/s moved\n"
            f"  bandwidth floor           {r['floor_gbps']:7.2f} GB/s (np.copyto of "
            f"{r['bytes'] / 1e9:.2f} GB): the kernel takes {r['steady_s'] / r['copy_s']:.1f}× "
            "its copy time")
