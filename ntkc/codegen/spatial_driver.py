"""The fixed part of every convolutional module: input checks, the point phase
over inputs, the pair phase over the Gram matrix (upper triangle when x2 is
None) and the mirror, in both backends. ntkc's own text, not user text."""

from .driver_template import COMMON

SPATIAL_DRIVER = COMMON + '''

def kernel(x1, x2=None, get=("nngp", "ntk"), params=None, backend="numba"):
    """NNGP and/or NTK Gram matrices of the network's output.

    x1: (n1, *INPUT_SHAPE); x2: (n2, *INPUT_SHAPE) or None for x1 against itself.
    get: "nngp", "ntk" or a tuple of them (then a namedtuple in that order).
    params: overrides of PARAMS. backend: "numba" (fast) or "numpy" (reference).
    float32 inputs give float32 Gram matrices (computed in float64); anything else float64.
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    if backend not in ("numba", "numpy"):
        raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
    x1 = _check_inputs("x1", x1)
    symmetric = x2 is None or x2 is x1
    x2 = x1 if symmetric else _check_inputs("x2", x2)
    both32 = x1.dtype == np.float32 and x2.dtype == np.float32
    dtype = np.float32 if both32 else np.float64
    channels = INPUT_SHAPE[-1]
    a = np.ascontiguousarray(x1, dtype=np.float64).reshape(x1.shape[0], -1, channels)
    b = a if symmetric else np.ascontiguousarray(x2, dtype=np.float64).reshape(
        x2.shape[0], -1, channels)
    p = param_vector(params)
    if backend == "numpy":
        p1 = _point_numpy(a, p)
        p2 = p1 if symmetric else _point_numpy(b, p)
        nngp, ntk = _pairs_numpy(a, b, p1, p2, p)
    else:
        p1 = np.empty((a.shape[0], N_POINT))
        _point_numba(a, p, p1)
        if symmetric:
            p2 = p1
        else:
            p2 = np.empty((b.shape[0], N_POINT))
            _point_numba(b, p, p2)
        nngp = np.empty((a.shape[0], b.shape[0]))
        ntk = np.empty_like(nngp)
        _pairs_numba(a, b, p1, p2, p, nngp, ntk, symmetric)
        if symmetric:
            _mirror(nngp)
            _mirror(ntk)
    if symmetric:  # the diagonal from the per-input formulas (exact at correlation 1)
        np.fill_diagonal(nngp, p1[:, DIAG_NNGP])
        np.fill_diagonal(ntk, p1[:, DIAG_NTK])
    out = {"nngp": nngp.astype(dtype, copy=False), "ntk": ntk.astype(dtype, copy=False)}
    if isinstance(get, str):
        return out[get]
    return collections.namedtuple("Kernels", names)(*(out[n] for n in names))
'''
