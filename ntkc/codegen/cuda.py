"""The cuda target: numba.cuda kernels for dense networks, from the same CSE'd recursion.

Layout of the generated code (appended to the module by ModuleWriter.module):

* ``_cuda()`` imports numba.cuda and defines the kernels, on the first
  ``kernel(..., device="cuda")`` call only, so CPU-only users never import numba.cuda
  (nor need the numba-cuda package). The kernels are bound as module globals (a
  ``global`` statement), because numba resolves the names a kernel calls (the
  quadrature helpers, ``cuda``) from the module's globals when it compiles it.
* Quadrature helpers become ``@cuda.jit(device=True)`` functions with the same text
  as the CPU ones (ntkc.codegen.emit.quad_scalar).
* ``_pairs_nngp_cuda`` / ``_pairs_both_cuda``: one thread per pair (i, j), a 2-D grid
  of CUDA_BLOCK × CUDA_BLOCK thread blocks over one tile of the Gram matrix. x·x'
  comes from the rows themselves, a small shared-memory GEMM fused into the kernel
  (d is read CUDA_BLOCK features at a time, accumulated in float64), then the
  whole recursion runs in registers and K, Θ are written once. For x2=None the
  blocks entirely below the diagonal exit at once, the diagonal takes the per-input
  formulas (as on the CPU) and the host mirrors the upper triangle.
* The host side (CUDA_DRIVER): the point phase (variances) runs on the CPU with
  the numba point kernel (O(n) work; its quadratures are the costly part and are
  shared with the CPU target), inputs and variances go to the device once, and the
  Gram matrix is filled tile by tile: the tile size comes from the free device
  memory, two streams alternate so one tile is computed while the previous one is
  copied back to the host.

Precision: as on the CPU, the recursion runs in float64 (params and variances are
float64) and the results are stored in the input dtype. x·x' is summed in float64
on the GPU, from float32 inputs too, where the CPU uses a float32 GEMM: float32
results agree with the CPU to ~1e-7 relative, float64 ones to rounding (~1e-16).
The fused dot is a plain shared-memory tiled loop, not cuBLAS: at d = 784 it costs
about as much as a 3-layer recursion per pair, which keeps one kernel and no N×N
device buffer of dot products.
"""

from __future__ import annotations

import sympy

from .printers import NumbaPrinter, cse_block, needed_defs, quad_scalar

CUDA_BLOCK = 16  # threads per block edge: 256 threads, one pair each

# Shared by the dense and the convolutional (ntkc.codegen.cuda_spatial) cuda targets:
# the error every failed device="cuda" call raises, and the start of ``_cuda()``.
CUDA_ERROR = """

def _cuda_error(message):
    return RuntimeError(
        f"{message}; use device=\\"cpu\\", or run where an NVIDIA GPU and driver are present "
        "with numba-cuda installed (pip install 'ntkc[cuda]'). Without a GPU, the CUDA "
        "simulator runs these kernels (slowly) when NUMBA_ENABLE_CUDASIM=1 is set before "
        "numba is imported.")
"""


def builder_head(names: list[str]) -> list[str]:
    """The start of ``_cuda()``: import numba.cuda (there only) and check for a GPU, once.
    names: the module globals it binds (numba resolves what a kernel calls from them)."""
    return [
        "def _cuda():",
        '    """numba.cuda and the kernels, made on the first device="cuda" call: numba.cuda',
        "    is imported here only, so CPU-only users never need it. The kernels are module",
        '    globals: numba resolves what a kernel calls from them when it compiles."""',
        f"    global {', '.join(names)}",
        "    if _CUDA_READY:",
        "        return cuda",
        "    try:",
        "        from numba import cuda",
        "    except ImportError as e:",
        '        raise _cuda_error(f"numba.cuda cannot be imported ({e})") from None',
        "    if not cuda.is_available():",
        "        why = ' '.join(str(cuda.cuda_error()).split())",
        '        raise _cuda_error(f"no CUDA GPU is available ({why})")',
        "",
    ]


# The fixed host side of the cuda target (ntkc's own text, appended verbatim).
CUDA_DRIVER = '''

# Largest tile buffer, in elements per output: 64 MiB float32, 128 MiB float64; with
# two buffers per output it bounds the pinned host memory too.
CUDA_MAX_TILE = 1 << 24
''' + CUDA_ERROR + '''

def _cuda_tile(n1, n2, nout, itemsize, cuda):
    """(rows, cols) of one tile: whole rows when they fit, in half the free memory."""
    free = int(min(cuda.current_context().get_memory_info()[0], 2**50))  # simulator: inf
    fit = free // 2 // (2 * nout * itemsize)  # two buffers per output
    elements = min(fit, CUDA_MAX_TILE)
    cols = min(n2, max(elements // CUDA_BLOCK, CUDA_BLOCK))
    rows = elements // cols // CUDA_BLOCK * CUDA_BLOCK
    rows = min(n1, max(rows, CUDA_BLOCK), 65535 * CUDA_BLOCK)  # the grid's y limit
    if rows * cols > fit:
        raise MemoryError(
            f"only {free / 2**20:.0f} MiB free on the GPU, too little for one "
            f"{rows}x{cols} tile of {nout} output(s): free device memory, or use device=\\"cpu\\"")
    return rows, cols


def _cuda_drain(stream, host, pending, outs):
    # Wait for a tile's copy to the pinned buffers, then place it in the outputs.
    if pending is None:
        return
    stream.synchronize()
    i, j, ti, tj = pending
    for out, buf in zip(outs, host):
        out[i:i + ti, j:j + tj] = buf[:ti * tj].reshape(ti, tj)


def _kernel_cuda(a, b, symmetric, want_ntk, p, dtype, tile=None):
    """Gram matrices on the GPU: the point phase on the CPU, then tiles on the device."""
    cuda = _cuda()
    n1, n2 = a.shape[0], b.shape[0]
    sq1 = np.einsum("ij,ij->i", a, a, dtype=np.float64)
    p1 = np.empty((n1, N_POINT), np.float64)
    _point_numba(sq1, p, p1)
    if symmetric:
        p2 = p1
    else:
        p2 = np.empty((n2, N_POINT), np.float64)
        _point_numba(np.einsum("ij,ij->i", b, b, dtype=np.float64), p, p2)
    nout = 2 if want_ntk else 1
    d_a = cuda.to_device(np.ascontiguousarray(a))  # inputs stay on the device for every tile
    d_b = d_a if symmetric else cuda.to_device(np.ascontiguousarray(b))
    d_p1 = cuda.to_device(p1)
    d_p2 = d_p1 if symmetric else cuda.to_device(p2)
    d_params = cuda.to_device(p)
    if tile is None:
        rows, cols = _cuda_tile(n1, n2, nout, np.dtype(dtype).itemsize, cuda)
    else:
        rows, cols = (tile, tile) if np.isscalar(tile) else tile
        if int(rows) < 1 or int(cols) < 1:
            raise ValueError(f"device_tile must be positive, got {tile!r}")
        rows, cols = min(int(rows), n1, 65535 * CUDA_BLOCK), min(int(cols), n2)
    outs = [np.empty((n1, n2), dtype) for _ in range(nout)]
    # x2=None: tiles on and above the diagonal only (each tile row starts at its diagonal)
    tiles = [(i, j) for i in range(0, n1, rows) for j in range(i if symmetric else 0, n2, cols)]
    size = rows * cols
    # Two slots (stream, device buffers, pinned host buffers): tile k is computed on one
    # while tile k-1 is copied back on the other and tile k-2 is placed in the outputs.
    slots = [(cuda.stream(), [cuda.device_array(size, dtype) for _ in range(nout)],
              [cuda.pinned_array(size, dtype) for _ in range(nout)])
             for _ in range(min(2, len(tiles)))]
    pending = [None] * len(slots)
    launch = _pairs_both_cuda if want_ntk else _pairs_nngp_cuda
    for k, (i, j) in enumerate(tiles):
        s = k % len(slots)
        stream, dev, host = slots[s]
        _cuda_drain(stream, host, pending[s], outs)
        ti, tj = min(rows, n1 - i), min(cols, n2 - j)
        views = [buf[:ti * tj].reshape(ti, tj) for buf in dev]
        grid = ((tj + CUDA_BLOCK - 1) // CUDA_BLOCK, (ti + CUDA_BLOCK - 1) // CUDA_BLOCK)
        launch[grid, (CUDA_BLOCK, CUDA_BLOCK), stream](
            d_a, d_b, d_p1, d_p2, d_params, *views, i, j, symmetric)
        for view, buf in zip(views, host):
            view.copy_to_host(buf[:ti * tj].reshape(ti, tj), stream=stream)
        pending[s] = (i, j, ti, tj)
    for s, (stream, _, host) in enumerate(slots):
        _cuda_drain(stream, host, pending[s], outs)
    if symmetric:
        for out in outs:
            _mirror(out)  # the lower triangle from the upper one, on the CPU
    return outs
'''


class CudaWriter:
    """numba.cuda source for the network a ModuleWriter (ntkc.codegen.emit) holds: dense
    networks. The writer is passed in, not imported: emit imports this module."""

    def __init__(self, writer) -> None:
        self.w = writer
        if writer.rec.spatial:
            raise ValueError("the cuda target supports dense networks only (for now): "
                             "compile this network with --target cpu")
        self.helpers = {t: n + "_cuda" for t, n in writer.helpers.items()}

    def _printer(self) -> NumbaPrinter:
        return NumbaPrinter(dict(self.w.names), dict(self.helpers))

    def kernel(self, name: str, outputs: list[sympy.Expr]) -> list[str]:
        """One thread per pair (gi, gj) of the Gram matrix, in a tile at (i0, j0)."""
        pr = self._printer()
        body, outs = cse_block(outputs, pr, "    ", "t", needed_defs(self.w.pair_defs, outputs))
        both = len(outputs) == 2
        out_args = "G, ntk" if both else "G"
        src = [
            "@cuda.jit",
            f"def {name}(A, B, P1, P2, params, {out_args}, i0, j0, symmetric):",
            "    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y",
            "    r0, c0 = cuda.blockIdx.y * CUDA_BLOCK, cuda.blockIdx.x * CUDA_BLOCK",
            "    if symmetric and j0 + c0 + CUDA_BLOCK - 1 < i0 + r0:",
            "        return  # the whole block is below the diagonal: the host mirrors it",
            "    n1, n2 = G.shape",
            "    i, j = r0 + ty, c0 + tx  # this thread's pair in the tile",
            "    gi, gj = i0 + i, j0 + j  # and in the Gram matrix",
            "    # x·x' from the rows: CUDA_BLOCK features at a time through shared memory",
            "    # (padded rows: the column reads sb[tx, k] hit distinct banks).",
            "    sa = cuda.shared.array((CUDA_BLOCK, CUDA_ROW), numba.float64)",
            "    sb = cuda.shared.array((CUDA_BLOCK, CUDA_ROW), numba.float64)",
            "    d = A.shape[1]",
            "    dot = 0.0",
            "    for k0 in range(0, d, CUDA_BLOCK):",
            "        k = k0 + tx",
            "        sa[ty, tx] = A[gi, k] if i < n1 and k < d else 0.0",
            "        sb[ty, tx] = B[j0 + c0 + ty, k] if c0 + ty < n2 and k < d else 0.0",
            "        cuda.syncthreads()",
            "        for kk in range(CUDA_BLOCK):",
            "            dot += sa[ty, kk] * sb[tx, kk]",
            "        cuda.syncthreads()",
            "    if i >= n1 or j >= n2 or (symmetric and gj < gi):",
            "        return",
            "    if symmetric and gj == gi:  # the per-input formulas, exact at correlation 1",
            "        G[i, j] = P1[gi, DIAG_NNGP]",
        ]
        if both:
            src.append("        ntk[i, j] = P1[gi, DIAG_NTK]")
        src.append("        return")
        src += ["    " + ln for ln in self.w._loads(outputs, pr, 1, "gi", None)]
        src += ["    " + ln for ln in self.w._loads(outputs, pr, 2, "gj", None)]
        src += body + [f"    G[i, j] = {outs[0]}"]
        if both:
            src.append(f"    ntk[i, j] = {outs[1]}")
        return src

    def builder(self) -> list[str]:
        """``_cuda()``: import numba.cuda and define the kernels, once."""
        names = ["cuda", "_CUDA_READY", *self.helpers.values(), "_pairs_nngp_cuda",
                 "_pairs_both_cuda"]
        src = [
            "",
            "",
            f"CUDA_BLOCK = {CUDA_BLOCK}  # thread block edge: CUDA_BLOCK² pairs per block",
            "CUDA_ROW = CUDA_BLOCK + 1  # padded shared-memory rows (a constant: numba folds it)",
            "_CUDA_READY = False",
            "",
            "",
            *builder_head(names),
        ]
        pr = self._printer()
        for t, name in self.helpers.items():
            src += ["    @cuda.jit(device=True)"]
            src += ["    " + ln for ln in quad_scalar(name, t, pr)] + [""]
        w = self.w
        for name, outputs in (("_pairs_nngp_cuda", [w.nngp]), ("_pairs_both_cuda",
                                                                [w.nngp, w.ntk])):
            src += ["    " + ln if ln else "" for ln in self.kernel(name, outputs)] + [""]
        src += ["    _CUDA_READY = True", "    return cuda"]
        return src

    def source(self) -> str:
        return "\n".join(self.builder()) + "\n" + CUDA_DRIVER
