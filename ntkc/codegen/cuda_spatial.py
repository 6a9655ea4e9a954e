"""The cuda target for convolutional networks: a thread block per pair, threads over
positions, as in the CNTK reference code (Arora et al. 2019).

A pair at 32×32 has a million position pairs per layer, so one thread per pair (the
first design) left the GPU's parallelism unused inside a pair. Here a block of
CUDA_THREADS threads computes one pair (i, j) of a Gram tile at a time (a grid-stride
loop over the tile's pairs), layer by layer, in the block's row of a device scratch
matrix S (blocks × N_SCRATCH, in the output dtype):

* each stage of the pair plan (ntkc.codegen.spatial_plan: the same stages and formulas
  as the CPU kernels; every array a full slot, no block buffer) is a loop of the block's threads over its entries:
  thread t takes entries t, t + CUDA_THREADS, ..., so a warp reads and writes adjacent
  words (coalesced). A conv entry sums its taps (``_conv_entry`` of ntkc.codegen.
  stencil_kernels, compiled as a device function; the geometry is a small constant
  array), a local entry evaluates the layer's formulas, pools likewise;
* ``cuda.syncthreads()`` between stages: a stage reads what the previous one wrote;
* flatten and global pools are block reductions (shared memory, a tree of halvings),
  and the scalar formulas after them run in every thread (the same values);
* x2=None: the pairs below the diagonal are skipped, the diagonal takes the per-input
  formulas, the host mirrors. The point phase runs on the CPU (``_point_phase``).

float32 inputs: float32 scratch, so a block moves half the bytes; the formulas are
evaluated in float64 from float32 reads, as on the CPU.
"""

from __future__ import annotations

from ..semantics.structure import DIAG, FULL, SCALAR
from . import matrix_stencils
from .cuda import CUDA_ERROR, builder_head
from .printers import NumbaPrinter, cse_block
from .spatial_plan import StageKind
from .spatial_stages import nb_elem

CUDA_SPATIAL_DRIVER = '''

# Largest tile buffer, in elements per output (64 MiB float32, 128 MiB float64).
CUDA_MAX_TILE = 1 << 24
# Threads per block (a power of 2: the reductions halve it); fewer in the simulator,
# which runs each thread as a Python thread.
CUDA_THREADS = 256
# Blocks at once, each with its scratch row: about what an H100 keeps resident.
CUDA_MAX_BLOCKS = 1024
''' + CUDA_ERROR + '''

def _cuda_plan(n1, n2, itemsize, cuda, tile):
    """(rows, cols) of a tile and the blocks of a launch, in the free device memory: a
    quarter of it at most for the two output buffers, half for the blocks' scratch."""
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
    blocks = min(free // 2 // (N_SCRATCH_CUDA * itemsize), CUDA_MAX_BLOCKS, rows * cols)
    if blocks < 1 or 2 * rows * cols * itemsize > free // 2:
        raise MemoryError(
            f"only {free / 2**20:.0f} MiB free on the GPU, too little for one block's "
            f"{N_SCRATCH_CUDA * itemsize / 2**20:.1f} MiB of scratch and a {rows}x{cols} tile: "
            "free device memory, or use device=\\"cpu\\"")
    return rows, cols, int(blocks)


def _kernel_cuda(a, b, symmetric, want_ntk, p, dtype, tile=None):
    """[nngp, ntk or None] on the GPU: the point phase on the CPU, tiles on the device."""
    cuda = _cuda()
    n1, n2 = a.shape[0], b.shape[0]
    p1 = _point_phase(a, p, dtype)
    p2 = p1 if symmetric else _point_phase(b, p, dtype)
    rows, cols, blocks = _cuda_plan(n1, n2, np.dtype(dtype).itemsize, cuda, tile)
    d_a = cuda.to_device(a)  # inputs and point rows stay on the device for every tile
    d_b = d_a if symmetric else cuda.to_device(b)
    d_p1 = cuda.to_device(p1)
    d_p2 = d_p1 if symmetric else cuda.to_device(p2)
    d_params = cuda.to_device(p)
    scratch = cuda.device_array((blocks, N_SCRATCH_CUDA), dtype)  # row k: block k's
    bufs = [cuda.device_array(rows * cols, dtype) for _ in range(2)]
    outs = [np.empty((n1, n2), dtype) for _ in range(2 if want_ntk else 1)]
    # x2=None: tiles on and above the diagonal only (each tile row starts at its diagonal)
    for i in range(0, n1, rows):
        for j in range(i if symmetric else 0, n2, cols):
            ti, tj = min(rows, n1 - i), min(cols, n2 - j)
            views = [buf[:ti * tj].reshape(ti, tj) for buf in bufs]
            _pairs_block_cuda[min(blocks, ti * tj), CUDA_THREADS](
                d_a, d_b, d_p1, d_p2, d_params, scratch, *views, i, j, symmetric)
            for out, view in zip(outs, views):
                out[i:i + ti, j:j + tj] = view.copy_to_host()
    if symmetric:
        for out in outs:
            _mirror(out)  # the lower triangle from the upper one, on the CPU
    return (outs + [None])[:2]
'''

# Device functions and the kernel's frame, defined inside _cuda() (so numba.cuda is
# imported there only). _with_globals: the stencil entries call _tap by name, so their
# device versions resolve it to the device _tap.
DEVICE = '''
if numba.config.ENABLE_CUDASIM:
    CUDA_THREADS = min(CUDA_THREADS, 16)
_tap_cuda = cuda.jit(device=True)(_tap)
_acos_cuda = cuda.jit(device=True)(_acos.py_func)
_conv_entry_cuda = cuda.jit(device=True)(_with_globals(_conv_entry, _tap=_tap_cuda))
_conv_diag_entry_cuda = cuda.jit(device=True)(_with_globals(_conv_diag_entry, _tap=_tap_cuda))
_pool_entry_cuda = cuda.jit(device=True)(_with_globals(_pool_entry, _tap=_tap_cuda))
'''

WITH_GLOBALS = '''

def _with_globals(f, **names):
    # f's code over a copy of its globals with `names` rebound: numba resolves what a
    # function calls from its globals when it compiles it, so the device twin of a CPU
    # function calls the device versions of its helpers.
    g = dict(f.__globals__)
    g.update(names)
    return types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
'''


class CudaPrinter(NumbaPrinter):
    """Device code: arccos is the CPU kernels' branch-free one, compiled for the GPU."""

    def _print_acos(self, e):
        return f"_acos_cuda({self._print(e.args[0])})"


class CudaSpatialWriter:
    """Prints the block-per-pair kernel of a SpatialWriter ``w``'s pair plan."""

    def __init__(self, w) -> None:
        self.w = w

    def _entries(self, n: int, ind: str) -> str:
        return f"{ind}for _e in range(_t, {n}, _nt):"

    def _reduce(self, name: str, n: int, elem: str, scale: str, ind: str) -> list[str]:
        """A block sum of ``elem`` (in terms of _e) over n entries, into the local ``name``."""
        return [f"{ind}_acc = 0.0", self._entries(n, ind), f"{ind}    _acc += {elem}",
                f"{ind}_red[_t] = _acc", f"{ind}cuda.syncthreads()",
                f"{ind}_k = _nt // 2", f"{ind}while _k > 0:",
                f"{ind}    if _t < _k:", f"{ind}        _red[_t] += _red[_t + _k]",
                f"{ind}    cuda.syncthreads()", f"{ind}    _k //= 2",
                f"{ind}{name} = _red[0] * {scale}", f"{ind}cuda.syncthreads()"]

    def _local(self, run, ind: str) -> list[str]:
        w = self.w
        loop = w.structure[run[0].symbol]
        targets, exprs = w._local_exprs(run)
        names = {s: w._ref_nb(s, "pair", loop, w.cuda_slots) for e in exprs
                 for s in e.free_symbols}
        src = []
        body_ind = ind
        if loop == FULL:
            rows, cols = run[0].spatial
            src += [self._entries(rows * cols, ind), f"{ind}    i = _e // {cols}",
                    f"{ind}    j = _e - i * {cols}"]
            body_ind = ind + "    "
        elif loop == DIAG:
            src += [f"{ind}for i in range(_t, {run[0].spatial[0]}, _nt):"]
            body_ind = ind + "    "
        body, outs = cse_block(exprs, CudaPrinter(names, {}), body_ind)
        src += body
        for t, o in zip(targets, outs):
            slot = w.cuda_slots.get(t)
            if slot is None:
                continue
            if slot.storage == SCALAR and not slot.array:
                src.append(f"{body_ind}{w.rec.code_names[t]} = {o}")
            else:
                src.append(f"{body_ind}{nb_elem(slot, 's', 'i', 'j' if loop == FULL else 'i')}"
                           f" = {o}")
        return src

    def _stencil(self, a, ind: str) -> list[str]:
        w = self.w
        st = a.stencil
        out = w.cuda_slots[a.symbol]
        scale = repr(float(st.scale))
        geometry = w.geometry.get(id(st.window), "")
        src_slot = w.cuda_slots[st.source] if st.source is not None else None
        if st.op == matrix_stencils.MIX:  # the weights are per input: the CPU's point phase
            operands = [w.operand(m, "pair") for m in st.operands]
            return matrix_stencils.cuda_mix(src_slot, out, operands, w.cuda_mix_at,
                                            w.scale_text(st.scale, CudaPrinter), self._entries,
                                            ind)
        if st.op == "input":
            cols = out.cols if out.storage == FULL else out.rows
            n = out.rows * out.cols if out.storage == FULL else out.rows
            i, j = ("_e // " + str(cols), "_e - (_e // " + str(cols) + ") * " + str(cols)) \
                if out.storage == FULL else ("_e", "_e")
            return [self._entries(n, ind), f"{ind}    _acc = 0.0",
                    f"{ind}    for _c in range(x1.shape[1]):",
                    f"{ind}        _acc += x1[{i}, _c] * x2[{j}, _c]",
                    f"{ind}    s[{out.offset} + _e] = _acc * {scale}"]
        if st.op in ("flatten", "global"):
            if st.op == "flatten":
                n, elem = src_slot.rows, nb_elem(src_slot, "s", "_e", "_e")
            else:
                n, elem = src_slot.rows * src_slot.cols, f"s[{src_slot.offset} + _e]"
            return self._reduce(w.rec.code_names[a.symbol], n, elem, scale, ind)
        pout = out.rows
        if out.storage == FULL:
            o1, o2, n = f"_e // {pout}", f"_e - (_e // {pout}) * {pout}", pout * pout
        else:
            o1 = o2 = "_e"
            n = pout
        if st.op == "conv" and out.storage == DIAG:
            step = src_slot.cols + 1 if src_slot.storage == FULL else 1
            # _i64: one compiled device function for every offset (ntkc.codegen.stencil_kernels)
            value = (f"_conv_diag_entry_cuda(s, _i64({src_slot.offset}), _i64({step}), "
                     f"{geometry}, _e)")
        elif st.op == "conv":
            value = f"_conv_entry_cuda(s, _i64({src_slot.offset}), {geometry}, {o1}, {o2})"
        else:  # pool
            value = f"_pool_entry_cuda(s, _i64({src_slot.offset}), {geometry}, {o1}, {o2})"
        return [self._entries(n, ind), f"{ind}    s[{out.offset} + _e] = {value} * {scale}"]

    def kernel(self) -> list[str]:
        w = self.w
        ind = " " * 12
        body: list[str] = []
        for group in w.plans["pair"]:
            for stage in group.stages:
                if stage.kind is StageKind.LOCAL:
                    body += self._local(stage.run, ind)
                else:
                    for a in stage.run:
                        body += self._stencil(a, ind)
                body.append(f"{ind}cuda.syncthreads()")
        outs = [w.rec.outputs["nngp"], w.rec.outputs["ntk"]]
        names = {s: w._ref_nb(s, "pair", SCALAR, w.cuda_slots) for e in outs
                 for s in e.free_symbols}
        pr = CudaPrinter(names, {})
        return [
            "@cuda.jit",
            "def _pairs_block_cuda(X1, X2, P1, P2, params, S, K, T, i0, j0, symmetric):",
            "    # One pair per block at a time, over the pairs of the tile at (i0, j0).",
            "    _t = cuda.threadIdx.x",
            "    _nt = cuda.blockDim.x",
            "    _red = cuda.shared.array(CUDA_THREADS, numba.float64)",
            "    s = S[cuda.blockIdx.x]",
            "    _n1, _n2 = K.shape",
            "    # the pair's indices start with _: the stages' loops count with i and j",
            "    for _q in range(cuda.blockIdx.x, _n1 * _n2, cuda.gridDim.x):",
            "        _i = _q // _n2",
            "        _j = _q - _i * _n2",
            "        _gi, _gj = i0 + _i, j0 + _j",
            "        if symmetric and _gj <= _gi:",
            "            if _gj == _gi and _t == 0:  # the per-input formulas, exact at corr. 1",
            "                K[_i, _j] = P1[_gi, DIAG_NNGP]",
            "                T[_i, _j] = P1[_gi, DIAG_NTK]",
            "            continue  # below the diagonal: the host mirrors it",
            "        if True:",
            "            x1, x2, pt1, pt2 = X1[_gi], X2[_gj], P1[_gi], P2[_gj]",
            *body,
            "            if _t == 0:",
            f"                K[_i, _j] = {pr.doprint(outs[0])}",
            f"                T[_i, _j] = {pr.doprint(outs[1])}",
            "            cuda.syncthreads()  # before the next pair overwrites the scratch",
        ]


def cuda_source(writer) -> str:
    """The cuda part of a convolutional module (appended after its CPU part)."""
    names = ["cuda", "CUDA_THREADS", "_CUDA_READY", "_tap_cuda", "_acos_cuda",
             "_conv_entry_cuda", "_conv_diag_entry_cuda", "_pool_entry_cuda",
             "_pairs_block_cuda"]
    src = ["_CUDA_READY = False", "", "", *builder_head(names)]
    src += ["    " + ln if ln else "" for ln in DEVICE.strip("\n").splitlines()]
    src += ["    " + ln if ln else "" for ln in CudaSpatialWriter(writer).kernel()]
    src += ["", "    _CUDA_READY = True", "    return cuda"]
    return CUDA_SPATIAL_DRIVER + WITH_GLOBALS + "\n\n" + "\n".join(src) + "\n"
