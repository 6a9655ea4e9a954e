"""Predictions from train-train kernels larger than memory: Dask or Zarr arrays.

``gp_inference``, ``marginal_likelihood`` and ``gradient_descent_mse_ensemble(...)
.predict(t=None)`` (means) accept a Dask array or a Zarr array as the train-train kernel
(e.g. what ``Model.kernel(x, out="K.zarr")`` returns). They factorise ``K + r I`` with
Dask's blocked Cholesky (``dask.array.linalg``), block by block, on whatever Dask
scheduler is active (a ``distributed.Client``'s workers, with their memory limits and
spilling, or the local threads), and bring back only ``(K + r I)^{-1} y``: N × C numbers.

What still needs the N × N matrix in memory, and is refused here with the way out:

* finite training times ``t`` (and ``t=np.inf`` in an array): they go through the
  eigendecomposition of the train kernel (scipy.linalg.eigh), which has no blocked form
  in Dask;
* covariances (``compute_cov=True``, ``k_test_test=``, ``fit(...).predict(return_cov=
  True)``): they need ``(K + r I)^{-1}`` applied to every test column and the train
  NNGP sandwiched between such solves; a factor kept for that would be a second N × N
  array;
* ``gradient_descent_mse``, which decomposes the kernel when it is built.

dask is imported only when such an array is passed (``import ntkc.predict`` does not).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

#: Most blocks per side before the kernel is rechunked: Dask's Cholesky graph has
#: ~b³/6 tasks for b blocks per side, so tiny tiles would make a huge graph.
MAX_BLOCKS = 48


def is_lazy(a: Any) -> bool:
    """A Dask or Zarr array (typed by module name: no import of either here)."""
    return (type(a).__module__ or "").split(".")[0] in ("dask", "zarr")


def lazy_shape(a: Any, name: str) -> int:
    """N of a lazy (N, N) train kernel, checked without reading it."""
    shape = tuple(a.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix of shape (N, N), "
                         f"got shape {shape}")
    return int(shape[0])


def refusal(what: str, n: int, itemsize: int = 8) -> ValueError:
    gib = n * n * itemsize / 2**30
    return ValueError(
        f"{what} needs the {n}×{n} train kernel in memory ({gib:.2f} GiB), and a Dask/Zarr "
        "kernel was passed: the blocked solve gives infinite-time means only (t=None, "
        "compute_cov=False). If it fits in memory, pass np.asarray(kernel) instead; "
        "otherwise use t=None without covariances, or a subset of the training set")


def _as_dask(k: Any) -> Any:
    import dask.array as da

    if (type(k).__module__ or "").startswith("zarr"):
        k = da.from_zarr(k)
    return k.astype(np.float64)  # float32 kernels are solved in float64


class BlockedCholesky:
    """``A = K + r I = L Lᵀ`` on Dask, for ``solve`` and ``logdet`` (the same interface as
    :class:`ntkc.predict.linalg.Cholesky`). The kernel is read once for its checks
    (finite, symmetric, trace) and once per factorisation; each distinct right-hand side
    is solved once (cached), together with the log-determinant."""

    def __init__(self, k: Any, diag_reg: float, diag_reg_absolute_scale: bool,
                 name: str = "k_train_train"):
        import dask
        import dask.array as da

        from .linalg import SYMMETRY_RTOL, check_positive_scalar

        self.name = name
        self.n = lazy_shape(k, name)
        reg = check_positive_scalar(diag_reg, "diag_reg", allow_zero=True)
        itemsize = np.dtype(k.dtype).itemsize
        k = _as_dask(k)
        finite, asym, scale, trace = dask.compute(
            da.isfinite(k).all(), abs(k - k.T).max(), abs(k).max(), da.diagonal(k).sum())
        if not finite:
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
        rtol = max(SYMMETRY_RTOL, 100.0 * float(np.finfo(f"f{itemsize}").eps))
        if asym > rtol * scale:
            raise ValueError(f"{name} is not symmetric: max |K - Kᵀ| = {asym:.3g} exceeds "
                             f"{rtol:g} * max|K|; a train-train kernel must be symmetric")
        if not diag_reg_absolute_scale:
            reg *= float(trace) / self.n
        self._a = self._padded(k, reg)
        self._solved: dict[str, np.ndarray] = {}
        self._logdet: float | None = None

    def _padded(self, k: Any, reg: float) -> Any:
        """K + r I, extended by an identity block to a multiple of the block size: Dask's
        Cholesky needs equal square blocks, and [[A, 0], [0, I]] = [[L, 0], [0, I]]·[...]ᵀ
        leaves solves (with zero-padded right-hand sides) and log det unchanged."""
        import dask.array as da

        n = self.n
        block = int(max(k.chunks[0][0], -(-n // MAX_BLOCKS)))
        m = -(-n // block) * block
        diag = np.concatenate([np.full(n, reg), np.ones(m - n)])
        a = da.pad(k, ((0, m - n), (0, m - n))) if m > n else k
        return (a + da.diag(da.from_array(diag, chunks=block))).rechunk((block, block))

    def _factor_solve(self, b: np.ndarray) -> tuple[np.ndarray, float]:
        import dask
        import dask.array as da

        a = self._a
        m = a.shape[0]
        rhs = np.zeros((m, b.shape[1]))
        rhs[: self.n] = b
        lower = da.linalg.cholesky(a, lower=True)
        z = da.linalg.solve_triangular(lower, da.from_array(rhs, chunks=(a.chunks[0], -1)),
                                       lower=True)
        x = da.linalg.solve_triangular(lower.T, z, lower=False)
        logdet = 2.0 * da.log(da.diagonal(lower)).sum()
        try:
            x, logdet = dask.compute(x, logdet)
        except np.linalg.LinAlgError as e:
            raise ValueError(
                f"{self.name} (plus the diagonal regulariser) is not positive definite, so "
                "its blocked Cholesky factorisation failed; increase diag_reg (e.g. "
                "diag_reg=1e-6, relative to the mean diagonal)") from e
        return np.asarray(x)[: self.n], float(logdet)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``A^{-1} b`` for ``b`` of shape (N,) or (N, K), as a numpy array."""
        b = np.asarray(b, dtype=np.float64)
        cols = b.reshape(self.n, -1)
        tag = hashlib.sha256(cols.tobytes() + str(cols.shape).encode()).hexdigest()
        if tag not in self._solved:
            self._solved[tag], self._logdet = self._factor_solve(cols)
        return self._solved[tag].reshape(b.shape)

    def logdet(self) -> float:
        """``log det A`` (the padding's identity block adds 0)."""
        if self._logdet is None:
            self._logdet = self._factor_solve(np.zeros((self.n, 1)))[1]
        return self._logdet
