"""Gaussian-process inference and marginal likelihood from kernel matrices.

Part of :mod:`ntkc.predict` (import the functions from there).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .blocked import BlockedCholesky, is_lazy, lazy_shape, refusal
from .linalg import (
    Cholesky,
    Gaussian,
    check_targets,
    check_test_test,
    check_test_train,
    check_train_kernel,
    regularize,
    symmetrize_last2,
)


class GPInference:
    """Exact GP posterior given a train-train kernel; build with :func:`gp_inference`.

    The Cholesky factor of ``K + r I`` and ``(K + r I)^{-1} y`` are computed once
    at construction and reused by every :meth:`predict` call.
    """

    def __init__(
        self,
        k_train_train: npt.ArrayLike,
        y_train: npt.ArrayLike,
        diag_reg: float = 0.0,
        diag_reg_absolute_scale: bool = False,
    ):
        lazy = is_lazy(k_train_train)  # Dask/Zarr, larger than memory: blocked.py
        k = None if lazy else check_train_kernel(k_train_train)
        self.n_train = lazy_shape(k_train_train, "k_train_train") if lazy else k.shape[0]
        self._y_is_1d = np.ndim(y_train) == 1
        self.y_train = check_targets(y_train, self.n_train)
        self._chol = (BlockedCholesky(k_train_train, diag_reg, diag_reg_absolute_scale)
                      if lazy else Cholesky(regularize(k, diag_reg, diag_reg_absolute_scale)))
        self._alpha = self._chol.solve(self.y_train)

    def predict(
        self, k_test_train: npt.ArrayLike, k_test_test: npt.ArrayLike | None = None
    ) -> np.ndarray | Gaussian:
        """Posterior on the test points.

        Args:
            k_test_train: kernel between test and train points, shape (n_test, N).
            k_test_test: kernel among test points, shape (n_test, n_test); pass it
                to also get the posterior covariance.

        Returns:
            The posterior mean ``K_*t (K + r I)^{-1} y`` of shape (n_test, C), or
            (n_test,) for 1-D targets; if ``k_test_test`` is given, a
            :class:`Gaussian` whose covariance is
            ``K_** - K_*t (K + r I)^{-1} K_*t^T`` (n_test, n_test), shared by all
            output columns (the kernel acts as ``K ⊗ I_C``).
        """
        kt = check_test_train(k_test_train, self.n_train)
        mean = kt @ self._alpha
        if self._y_is_1d:
            mean = mean[:, 0]
        if k_test_test is None:
            return mean
        if isinstance(self._chol, BlockedCholesky):
            raise refusal("the posterior covariance (k_test_test=)", self.n_train)
        ktt = check_test_test(k_test_test, kt.shape[0])
        cov = symmetrize_last2(ktt - kt @ self._chol.solve(kt.T))
        return Gaussian(mean, cov)

    __call__ = predict


def gp_inference(
    k_train_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> GPInference:
    """GP posterior (e.g. the NNGP posterior of an infinitely wide Bayesian network).

    Mirrors ``neural_tangents.predict.gp_inference`` for a single kernel matrix.
    For the infinite-time NTK ensemble (mean *and* covariance) use
    :func:`gradient_descent_mse_ensemble` with ``t=None``.

    Args:
        k_train_train: symmetric train-train kernel, shape (N, N); a Dask or Zarr array
            is solved blockwise out of memory (the mean only: :mod:`ntkc.predict.blocked`).
        y_train: targets, shape (N, C) or (N,).
        diag_reg: diagonal regulariser strength. Neural Tangents' convention:
            relative by default, i.e. ``K + diag_reg * trace(K) / N * I``.
        diag_reg_absolute_scale: if true, add ``diag_reg * I`` instead.

    Returns:
        A :class:`GPInference`; call ``.predict(k_test_train, k_test_test=None)``
        (or the object itself) for the posterior mean [and covariance].

    Raises:
        ValueError: on malformed or mismatched inputs, NaN/Inf, or when the
            regularised kernel is not positive definite.
    """
    return GPInference(k_train_train, y_train, diag_reg, diag_reg_absolute_scale)


def marginal_likelihood(
    k_train_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> float:
    """Negative log marginal likelihood of ``y_train`` under ``N(0, K + r I)``.

    Each of the C output columns is an independent draw (kernel ``K ⊗ I_C``), so
    the result is summed over columns::

        0.5 * sum_c y_c^T A^{-1} y_c + 0.5 * C * log det A + 0.5 * N * C * log(2 pi)

    with ``A = K + r I`` (``r`` as for :func:`gp_inference`), computed through a
    Cholesky factorisation. Lower is better.

    Args:
        k_train_train: symmetric train-train kernel, shape (N, N).
        y_train: targets, shape (N, C) or (N,).
        diag_reg: diagonal regulariser strength (relative by default).
        diag_reg_absolute_scale: if true, ``diag_reg`` is absolute.

    Returns:
        The negative log marginal likelihood (a Python float).

    Raises:
        ValueError: on malformed inputs or a not positive definite ``A``.
    """
    if is_lazy(k_train_train):
        y = check_targets(y_train, lazy_shape(k_train_train, "k_train_train"))
        chol = BlockedCholesky(k_train_train, diag_reg, diag_reg_absolute_scale)
    else:
        k = check_train_kernel(k_train_train)
        y = check_targets(y_train, k.shape[0])
        chol = Cholesky(regularize(k, diag_reg, diag_reg_absolute_scale))
    n, c = y.shape
    quad = float(np.sum(y * chol.solve(y)))
    return 0.5 * quad + 0.5 * c * chol.logdet() + 0.5 * n * c * float(np.log(2.0 * np.pi))
