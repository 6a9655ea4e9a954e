"""The fixed part of every generated module: input checks, the GEMM, the
point phase, the pair phase and the mirror, in both backends, and the dispatch
to the cuda target (its host side is ntkc.codegen.cuda.CUDA_DRIVER).

It is ntkc's own source text (formatted with identifiers and numbers only);
the per-network code is printed from sympy trees by ntkc.codegen.emit.
"""

# Shared by the dense (DRIVER) and convolutional (spatial_driver) modules.
COMMON = '''
def _check_inputs(name, x):
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == np.float16:
        raise ValueError(f"{name}: expected a float32/float64 (or integer) array, got dtype {x.dtype}")
    if x.ndim != 1 + len(INPUT_SHAPE) or tuple(x.shape[1:]) != INPUT_SHAPE:
        raise ValueError(
            f"{name}: expected shape (n, {', '.join(map(str, INPUT_SHAPE))}), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no inputs (shape {x.shape})")
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: non-finite value {x[idx]} at index {idx}")
    return x


def param_vector(params=None):
    """The params as the kernels' runtime argument: defaults, overridden by ``params``."""
    values = dict(PARAMS)
    for key, value in (params or {}).items():
        if key not in values:
            raise ValueError(f"unknown param {key!r}; this network has {sorted(PARAMS) or 'none'}")
        values[key] = float(value)
    return np.array([values[k] for k in PARAMS] or [0.0], dtype=np.float64)


@numba.njit(parallel=True, cache=True)
def _mirror(a):
    # Copy the upper triangle onto the lower one, in cache-friendly blocks.
    n = a.shape[0]
    nb = (n + 63) // 64
    for bi in numba.prange(nb):
        for bj in range(bi + 1):
            for i in range(bi * 64, min(n, bi * 64 + 64)):
                for j in range(bj * 64, min(i, bj * 64 + 64)):
                    a[i, j] = a[j, i]

'''

DRIVER = COMMON + '''


def kernel(x1, x2=None, get=("nngp", "ntk"), params=None, backend="numba", device=None,
           device_tile=None):
    """NNGP and/or NTK Gram matrices of the network's output.

    x1: (n1, *INPUT_SHAPE); x2: (n2, *INPUT_SHAPE) or None for x1 against itself.
    get: "nngp", "ntk" or a tuple of them (then a namedtuple in that order).
    params: overrides of PARAMS. backend: "numba" (fast) or "numpy" (the CPU reference).
    device: "cpu" or "cuda" (numba.cuda, imported on first use); None: TARGETS[0].
    device_tile: rows (or (rows, cols)) of the Gram tiles computed on the GPU at a time;
    default: from the free device memory.
    float32 inputs give float32 Gram matrices; anything else float64.
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    if backend not in ("numba", "numpy"):
        raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
    if device is None:
        device = "cpu" if backend == "numpy" else TARGETS[0]
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if backend == "numpy" and device != "cpu":
        raise ValueError("backend='numpy' is the CPU reference: use device='cpu' with it")
    if backend == "numba" and device not in TARGETS:
        raise ValueError(
            f"this module was compiled without the {device} target (TARGETS = {TARGETS}): "
            f"recompile it with `ntkc compile --target all` (or --target {device})")
    x1 = _check_inputs("x1", x1)
    symmetric = x2 is None or x2 is x1
    x2 = x1 if symmetric else _check_inputs("x2", x2)
    both32 = x1.dtype == np.float32 and x2.dtype == np.float32
    dtype = np.float32 if both32 else np.float64
    a = x1.reshape(x1.shape[0], -1).astype(dtype, copy=False)
    b = a if symmetric else x2.reshape(x2.shape[0], -1).astype(dtype, copy=False)
    want_ntk = "ntk" in names
    if device == "cuda":
        nngp, ntk = (_kernel_cuda(a, b, symmetric, want_ntk, param_vector(params), dtype,
                                  device_tile) + [None])[:2]
        return _result(get, names, nngp, ntk)
    p = param_vector(params)
    g = a @ b.T  # the one GEMM: every dot product the recursion needs
    if symmetric:
        sq1 = sq2 = np.diagonal(g).astype(np.float64)  # the same rounding as the pairs
    else:
        sq1 = np.einsum("ij,ij->i", a, a, dtype=np.float64)
        sq2 = np.einsum("ij,ij->i", b, b, dtype=np.float64)
    if backend == "numpy":
        p1 = _point_numpy(sq1, p)
        p2 = p1 if symmetric else _point_numpy(sq2, p)
        nngp, ntk = _pairs_numpy(g.astype(np.float64), p1, p2, p)
        nngp, ntk = nngp.astype(dtype), ntk.astype(dtype)
    else:
        p1 = np.empty((sq1.shape[0], N_POINT), np.float64)
        _point_numba(sq1, p, p1)
        if symmetric:
            p2 = p1
        else:
            p2 = np.empty((sq2.shape[0], N_POINT), np.float64)
            _point_numba(sq2, p, p2)
        nngp = g  # overwritten in place: the Gram matrix never needs a third N×N array
        ntk = np.empty_like(g) if want_ntk else None
        p2t = np.ascontiguousarray(p2.T)  # x' quantities contiguous along the pair loop
        if want_ntk:
            _pairs_both(nngp, p1, p2t, p, ntk, symmetric)
        else:
            _pairs_nngp(nngp, p1, p2t, p, symmetric)
        if symmetric:
            _mirror(nngp)
            if want_ntk:
                _mirror(ntk)
    if symmetric:  # the diagonal from the per-input formulas (exact at correlation 1)
        np.fill_diagonal(nngp, p1[:, DIAG_NNGP])
        if want_ntk:
            np.fill_diagonal(ntk, p1[:, DIAG_NTK])
    return _result(get, names, nngp, ntk)


def _result(get, names, nngp, ntk):
    out = {"nngp": nngp, "ntk": ntk}
    if isinstance(get, str):
        return out[get]
    return collections.namedtuple("Kernels", names)(*(out[n] for n in names))
'''
