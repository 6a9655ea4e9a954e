"""The cuda target for convolutional networks: the CPU target's pair function, on the GPU.

Correctness first (issue 5 asks, later, for a block per tile of pairs with the spatial
work spread over its threads and shared memory for the window sums):

* The per-pair function SpatialWriter prints, ``_pair_one_py(x1, x2, pt1, pt2, params,
  s)``, is straight-line numba code over a flat float64 scratch ``s``: loops, math,
  min/max, module-level constant arrays (tap tables, conv index and mask arrays) and
  ``_acos``; it allocates nothing. The very same Python function is compiled by
  ``numba.njit`` for the CPU target and by ``cuda.jit(device=True)`` here, so the two
  targets share one text of the recursion (and its tests).
* numba resolves the functions a function calls from its ``__globals__`` when it
  compiles it, and the module's ``_acos`` is an ``@numba.njit`` dispatcher, which a
  kernel cannot call. The device twin of ``_pair_one_py`` is the same code over a copy
  of the module globals in which ``_acos`` is the device version (``_with_globals``).
* ``_pairs_spatial_cuda``: each thread computes one pair (i, j) of a Gram tile at a
  time, in a grid-stride loop over the tile's pairs, in its own column t of a device
  scratch matrix S (N_SCRATCH × threads). Every pair runs the same instructions (the
  loops and masks depend on positions only, never on data), so the threads of a warp
  touch entry k of their columns together: adjacent words, one coalesced access, where
  a row per thread would scatter each access over 32 rows. x2=None: the pairs below the
  diagonal are skipped, the diagonal takes the per-input formulas, the host mirrors.
* The host side (CUDA_SPATIAL_DRIVER): the point phase on the CPU (``_point_numba``,
  as for the CPU target and the dense cuda target), the float64 inputs (what the CPU
  kernels read) and the point rows copied to the device once, as many threads as
  scratch columns fit in half the free device memory, tiles computed and copied back
  one after another: a pair does work of the order of N_SCRATCH (thousands to millions
  of flops) for 16 bytes copied back, so there is no copy worth overlapping.
* Tables: numba.cuda puts each global array a kernel reads in constant memory, a copy
  per place it is read (NVVM folds some away, e.g. all of them for small images), and
  a module has 64 KiB of it: ptxas refuses more. _CUDA_TABLES holds, per table, the
  bytes its reads can take (an upper bound, counted here); past CUDA_CONSTANT_BYTES,
  the largest tables go to device memory instead (global device arrays: numba-cuda
  captures them by pointer; a numba.cuda that cannot gets a clear error). Pooled nets
  on 16×16 images and up need this; flatten nets up to 32×32 fit.

Precision: the recursion runs in float64 from float64 inputs as on the CPU, so
float64 and float32 results agree with the CPU kernels to rounding.
"""

from __future__ import annotations

import re

import numpy as np

from .cuda import CUDA_ERROR, builder_head

CUDA_SPATIAL_DRIVER = '''

# Largest tile buffer, in elements per output (64 MiB float32, 128 MiB float64).
CUDA_MAX_TILE = 1 << 24
CUDA_BLOCK = 128  # threads per block, one pair each at a time
# At most this many threads (scratch columns) at once: about what an H100 keeps resident
# (132 SMs × 2048 threads); more only costs memory.
CUDA_MAX_THREADS = 1 << 18
# Constant memory the pair function's tables may take: 64 KiB per module on every NVIDIA
# GPU, less a margin for what numba puts there (see ntkc.codegen.cuda_spatial).
CUDA_CONSTANT_BYTES = 60 * 1024
''' + CUDA_ERROR + '''

def _with_globals(f, **names):
    # f's code over a copy of its globals with `names` rebound: numba resolves what a
    # function calls from its globals when it compiles it, so the device twin of a CPU
    # function calls the device versions of its helpers.
    import types

    g = dict(f.__globals__)
    g.update(names)
    return types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)


def _device_tables(cuda):
    """{name: device array} of the tables read from device memory, not constant memory:
    the largest ones, until the constant bytes of the others fit."""
    left = sum(_CUDA_TABLES.values())
    moved = {}
    for name, size in sorted(_CUDA_TABLES.items(), key=lambda kv: -kv[1]):
        if left <= CUDA_CONSTANT_BYTES:
            break
        moved[name] = cuda.to_device(globals()[name])
        left -= size
    if moved:  # a probe: can this numba.cuda read a global device array?
        def probe(out):
            out[0] = _PROBE[0]

        why = "it read a wrong value"
        try:
            out = cuda.device_array(1)
            cuda.jit(_with_globals(probe, _PROBE=cuda.to_device(np.ones(1))))[1, 1](out)
            ok = out.copy_to_host()[0] == 1.0
        except Exception as e:  # numba's errors for this have no common type
            ok, why = False, " ".join(str(e).split())[:300]
        if not ok:
            raise _cuda_error(
                f"this network's tables need {sum(_CUDA_TABLES.values())} bytes, over the "
                f"{CUDA_CONSTANT_BYTES} bytes of constant memory, and this numba.cuda cannot "
                f"read them from device memory ({why}): upgrade numba-cuda")
    return moved


def _cuda_plan(n1, n2, itemsize, cuda, tile):
    """(rows, cols) of a tile, threads and threads per block of a launch, in the free
    device memory: a quarter of it at most for the two output buffers, half for the
    scratch (fewer threads than a block when a pair's scratch is that large)."""
    free = int(min(cuda.current_context().get_memory_info()[0], 2**50))  # simulator: inf
    if tile is None:
        elements = max(1, min(CUDA_MAX_TILE, free // 4 // (2 * itemsize)))
        cols = min(n2, elements)
        rows = min(n1, max(1, elements // cols))
    else:
        rows, cols = (tile, tile) if np.isscalar(tile) else tile
        if int(rows) < 1 or int(cols) < 1:
            raise ValueError(f"device_tile must be positive, got {tile!r}")
        rows, cols = min(int(rows), n1), min(int(cols), n2)
    threads = min(free // 2 // (N_SCRATCH * 8), CUDA_MAX_THREADS, rows * cols)
    block = min(CUDA_BLOCK, threads)
    if threads < 1 or 2 * rows * cols * itemsize > free // 2:
        raise MemoryError(
            f"only {free / 2**20:.0f} MiB free on the GPU, too little for one thread's "
            f"{N_SCRATCH * 8 / 2**20:.1f} MiB of scratch and a {rows}x{cols} tile: free "
            "device memory, or use device=\\"cpu\\"")
    return rows, cols, threads // block * block, block


def _kernel_cuda(a, b, symmetric, want_ntk, p, dtype, tile=None):
    """[nngp, ntk or None] on the GPU: the point phase on the CPU, tiles on the device."""
    cuda = _cuda()
    n1, n2 = a.shape[0], b.shape[0]
    p1 = np.empty((n1, N_POINT))
    _point_numba(a, p, p1)
    if symmetric:
        p2 = p1
    else:
        p2 = np.empty((n2, N_POINT))
        _point_numba(b, p, p2)
    rows, cols, threads, block = _cuda_plan(n1, n2, np.dtype(dtype).itemsize, cuda, tile)
    d_a = cuda.to_device(a)  # inputs and point rows stay on the device for every tile
    d_b = d_a if symmetric else cuda.to_device(b)
    d_p1 = cuda.to_device(p1)
    d_p2 = d_p1 if symmetric else cuda.to_device(p2)
    d_params = cuda.to_device(p)
    scratch = cuda.device_array((N_SCRATCH, threads), np.float64)  # column t: thread t's
    bufs = [cuda.device_array(rows * cols, dtype) for _ in range(2)]
    outs = [np.empty((n1, n2), dtype) for _ in range(2 if want_ntk else 1)]
    # x2=None: tiles on and above the diagonal only (each tile row starts at its diagonal)
    for i in range(0, n1, rows):
        for j in range(i if symmetric else 0, n2, cols):
            ti, tj = min(rows, n1 - i), min(cols, n2 - j)
            views = [buf[:ti * tj].reshape(ti, tj) for buf in bufs]
            _pairs_spatial_cuda[threads // block, block](
                d_a, d_b, d_p1, d_p2, d_params, scratch, *views, i, j, symmetric)
            for out, view in zip(outs, views):
                out[i:i + ti, j:j + tj] = view.copy_to_host()
    if symmetric:
        for out in outs:
            _mirror(out)  # the lower triangle from the upper one, on the CPU
    return (outs + [None])[:2]
'''

# The kernel, defined inside _cuda() (so numba.cuda is imported there only).
KERNEL = '''
_acos_cuda = cuda.jit(device=True)(_acos.py_func)
_pair_one_cuda = cuda.jit(device=True)(
    _with_globals(_pair_one_py, _acos=_acos_cuda, **_device_tables(cuda)))

@cuda.jit
def _pairs_spatial_cuda(X1, X2, P1, P2, params, S, K, T, i0, j0, symmetric):
    # One pair at a time per thread, over the pairs of the tile at (i0, j0).
    t = cuda.grid(1)
    s = S[:, t]  # this thread's scratch: a column, so a warp's accesses coalesce
    n1, n2 = K.shape
    for q in range(t, n1 * n2, S.shape[1]):
        i = q // n2
        j = q - i * n2
        gi, gj = i0 + i, j0 + j
        if symmetric and gj <= gi:
            if gj == gi:  # the per-input formulas, exact at correlation 1
                K[i, j] = P1[gi, DIAG_NNGP]
                T[i, j] = P1[gi, DIAG_NTK]
            continue  # below the diagonal: the host mirrors it
        k, th = _pair_one_cuda(X1[gi], X2[gj], P1[gi], P2[gj], params, s)
        K[i, j] = k
        T[i, j] = th
'''

_GLOBAL_ARRAY = re.compile(r"\b_(?:TAPS\d+|C\d+_[A-Z]\d+)\b")


def table_bytes(writer, pair_lines: list[str]) -> dict[str, int]:
    """{table: bytes of constant memory} of the global arrays the pair function reads,
    largest first: numba emits a constant per read of a global, so each table counts
    once per place it is read (an upper bound: NVVM folds some)."""
    arrays: dict[str, np.ndarray] = dict(writer.consts)
    for wid, name in writer.taps.items():
        arrays[name] = writer.windows[wid].taps
    out: dict[str, int] = {}
    for line in pair_lines:
        for name in _GLOBAL_ARRAY.findall(line):
            a = np.asarray(arrays[name])
            out[name] = out.get(name, 0) + a.size * a.dtype.itemsize
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def cuda_source(writer, pair_lines: list[str]) -> str:
    """The cuda part of a convolutional module (appended after its CPU part)."""
    tables = table_bytes(writer, pair_lines)
    names = ["cuda", "_CUDA_READY", "_acos_cuda", "_pair_one_cuda", "_pairs_spatial_cuda"]
    src = ["", "", "# Bytes of constant memory each table's reads take (at most)",
           "_CUDA_TABLES = {"]
    src += [f"    {k!r}: {v}," for k, v in tables.items()] + ["}"]
    src += ["_CUDA_READY = False", "", "", *builder_head(names)]
    src += ["    " + ln if ln else "" for ln in KERNEL.strip("\n").splitlines()]
    src += ["", "    _CUDA_READY = True", "    return cuda"]
    return CUDA_SPATIAL_DRIVER + "\n".join(src) + "\n"
