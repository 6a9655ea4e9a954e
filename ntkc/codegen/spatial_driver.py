"""The fixed part of every convolutional module: the header, input checks, the point
phase over inputs, the pair phase over the Gram matrix (upper triangle when x2 is
None) and the mirror, in both backends, and the dispatch to the cuda target (its
host side is ntkc.codegen.cuda_spatial). ntkc's own text; user text only as in
ntkc.codegen.driver_template (reprs, checked identifiers, inert comments)."""

from __future__ import annotations

import hashlib

from .._version import __version__
from .driver_template import COMMON, comment, module_prologue


def module_head(w, spec_name: str, spec_text: str, options: dict) -> list[str]:
    """The docstring and constants of the module a SpatialWriter ``w`` writes."""
    from ..semantics.structure import line_structure

    prog = w.prog
    sha = hashlib.sha256(spec_text.encode()).hexdigest()
    shape = (*prog.input_shape.spatial, prog.input_shape.channels)
    params = {k: p.default for k, p in prog.params.items()}
    return [
        *module_prologue(prog.network, w.targets, __version__),
        f"SPEC_FILE = {spec_name!r}",
        f"SPEC_SHA256 = {sha!r}",
        f"NTKC_VERSION = {__version__!r}",
        f"COMPILE_OPTIONS = {options!r}",
        f"NETWORK = {prog.network!r}",
        f"PARAMETERIZATION = {prog.parameterization!r}",
        f"INPUT_SHAPE = {tuple(shape)!r}",
        f"PARAMS = {params!r}",
        f"TARGETS = {w.targets!r}  # devices with kernels here; the first is the default",
        f"N_POINT = {w.n_point}",
        f"DIAG_NNGP = {w.n_point - len(w.diag_keys)}",
        "DIAG_NTK = DIAG_NNGP + 1  # point slots of K(x,x), Θ(x,x); then ∂K(x,x), ∂Θ(x,x)",
        f"GRAD_PARAMS = {tuple(w.grad_params)!r}  # by each of these: kernel(grad=True)",
        f"N_SCRATCH = {w.n_s}  # scratch entries of one pair (float32 or float64)",
        f"N_TMP = {w.n_tmp}  # entries of the stencils' row buffer",
        f"N_RB = {w.n_rb}  # entries of one pair's block buffer (conv outputs, a block of rows)",
        f"N_SCRATCH_CUDA = {w.n_s_cuda}  # scratch entries of one pair on the GPU",
        f"N_W = {w.n_w}  # float64 scratch entries of one input's point phase",
        f"STRUCTURE = { {k: s.value for k, s in line_structure(w.rec, w.structure).items()}!r}",
        "",
        "# The recursion, one entry (i, j) of each array (K: NNGP kernel, Θ: NTK):",
        *[comment(f"#   {a.symbol} = {a.expr}") for a in w.rec.point + w.rec.pair],
    ]


SPATIAL_DRIVER = COMMON + '''

def _in_threads(rows_fn, n, *args):
    """rows_fn(*args, rows) over the rows 0..n-1 in numba.get_num_threads() threads (the
    compiled functions release the GIL). A thread takes rows t and n-1-t together, so
    the upper triangle's work is balanced."""
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, min(numba.get_num_threads(), (n + 1) // 2))
    tasks = [np.arange(k, (n + 1) // 2, threads) for k in range(threads)]
    parts = [np.unique(np.concatenate([t, n - 1 - t])).astype(np.int64) for t in tasks]
    if threads == 1:
        rows_fn(*args, parts[0])
        return
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(rows_fn, *args, rows) for rows in parts]:
            done.result()


def _point_phase(x, p, dtype):
    """The point rows (n, N_POINT) of inputs x (n, P, C), by the compiled point phase; its
    full (x, x̃) arrays in ``dtype`` (the CPU and the GPU targets both start with it)."""
    out = np.empty((x.shape[0], N_POINT))
    _in_threads(_point_rows, x.shape[0], x, p, out, np.empty(0, dtype))
    return out


def kernel(x1, x2=None, get=("nngp", "ntk"), params=None, backend="numba", device=None,
           device_tile=None, grad=False):
    """NNGP and/or NTK Gram matrices of the network's output.

    x1: (n1, *INPUT_SHAPE); x2: (n2, *INPUT_SHAPE) or None for x1 against itself.
    get: "nngp", "ntk" or a tuple of them (then a namedtuple in that order).
    params: overrides of PARAMS. backend: "numba" (fast) or "numpy" (reference).
    device: "cpu" or "cuda" (numba.cuda, imported on first use); None: TARGETS[0].
    device_tile: rows (or (rows, cols)) of the Gram tiles computed on the GPU at a time;
    default: from the free device memory.
    float32 inputs give float32 Gram matrices: the per-input phase in float64, each pair's
    arrays stored in float32 (the pointwise formulas evaluated in float64); anything else
    float64 throughout.
    grad (modules compiled with gradients, GRAD_PARAMS not empty; ntkc.Model.kernel(grad=)
    compiles them): returns (kernels, D), D of shape (len(GRAD_PARAMS), 2, n1, n2) with
    D[k, 0] = ∂K/∂GRAD_PARAMS[k] and D[k, 1] = ∂Θ/∂GRAD_PARAMS[k], on the CPU.
    """
    names, device, x1, x2, symmetric, dtype = _kernel_arguments(x1, x2, get, backend, device)
    _check_grad(grad, device)
    D = None
    channels = INPUT_SHAPE[-1]
    a = np.ascontiguousarray(x1, dtype=np.float64).reshape(x1.shape[0], -1, channels)
    b = a if symmetric else np.ascontiguousarray(x2, dtype=np.float64).reshape(
        x2.shape[0], -1, channels)
    p = param_vector(params)
    if device == "cuda":  # the diagonal and the mirror are done there too
        nngp, ntk = _kernel_cuda(a, b, symmetric, "ntk" in names, p, dtype, device_tile)
        _check_result(nngp, ntk, params)
        return _result(get, names, nngp, ntk)
    if backend == "numpy":
        p1 = _point_numpy(a, p)
        p2 = p1 if symmetric else _point_numpy(b, p)
        _check_point("x1", p1, params, dtype)
        _check_point("x2", p2, params, dtype)
        outs = _pairs_numpy(a, b, p1, p2, p)
        nngp, ntk, D = outs[0], outs[1], (outs[2:] if grad else None)
    else:
        p1 = _point_phase(a, p, dtype)
        p2 = p1 if symmetric else _point_phase(b, p, dtype)
        _check_point("x1", p1, params, dtype)
        _check_point("x2", p2, params, dtype)
        nngp = np.empty((a.shape[0], b.shape[0]), dtype)  # the pair scratch's dtype too
        ntk = np.empty_like(nngp)
        if grad:
            D = np.empty((2 * len(GRAD_PARAMS), *nngp.shape), dtype)
            _in_threads(_pair_rows, a.shape[0], a, b, p1, p2, p, nngp, ntk, D, symmetric)
        else:
            _in_threads(_pair_rows, a.shape[0], a, b, p1, p2, p, nngp, ntk, symmetric)
        if symmetric:
            for m in (nngp, ntk, *(D if grad else ())):
                _mirror(m)
    if symmetric:  # the diagonal from the per-input formulas (exact at correlation 1)
        np.fill_diagonal(nngp, p1[:, DIAG_NNGP])
        np.fill_diagonal(ntk, p1[:, DIAG_NTK])
        for k, d in enumerate(D if grad else ()):
            np.fill_diagonal(d, p1[:, DIAG_NTK + 1 + k])
    _check_result(nngp, ntk, params)
    if grad:
        return _grad_result(get, names, nngp.astype(dtype, copy=False),
                            ntk.astype(dtype, copy=False), np.asarray(D, dtype), params)
    return _result(get, names, nngp.astype(dtype, copy=False), ntk.astype(dtype, copy=False))
'''
