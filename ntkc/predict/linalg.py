"""Shared numerics for :mod:`ntkc.predict`.

Input validation (with messages that say what is wrong and where), Neural
Tangents' diagonal-regulariser convention, a Cholesky solver that turns
"not positive definite" into an actionable :class:`ValueError`, and an
eigenbasis of the regularised train kernel in which the gradient-flow matrix
functions are evaluated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.linalg

#: Relative tolerance on ``max|K - K^T| / max|K|`` for float64 train kernels
#: (lower-precision kernels get ``100 * eps`` of their dtype when that is larger).
SYMMETRY_RTOL = 1e-8


class Gaussian(NamedTuple):
    """A ``(mean, covariance)`` pair, as in ``neural_tangents.predict.Gaussian``.

    Attributes:
        mean: predicted mean, shape ``time_shape + (n_test,) [+ (C,)]``.
        covariance: covariance over test points, shape
            ``time_shape + (n_test, n_test)``, shared by all C output columns.
    """

    mean: np.ndarray
    covariance: np.ndarray


def as_float_array(x: npt.ArrayLike, name: str) -> np.ndarray:
    """``x`` as a real floating-point array (integers and bools become float64)."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged nested sequences
        raise ValueError(f"{name} could not be converted to an array: {e}") from e
    if a.dtype.kind in "biu":
        return a.astype(np.float64)
    if a.dtype.kind != "f":
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise if ``a`` holds NaN or Inf, naming the first offending index."""
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or Inf); "
            f"the first is {a[first]!r} at index {first}"
        )


def check_train_kernel(k: npt.ArrayLike, name: str = "k_train_train") -> np.ndarray:
    """Validate a train-train kernel and return it exactly symmetrised."""
    a = as_float_array(k, name)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix of shape (N, N), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has shape {a.shape}: the training set is empty (N = 0)")
    check_finite(a, name)
    diff = np.abs(a - a.T)
    asym = float(diff.max())
    scale = float(np.abs(a).max())
    rtol = max(SYMMETRY_RTOL, 100.0 * float(np.finfo(a.dtype).eps))
    if asym > rtol * scale:
        i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise ValueError(
            f"{name} is not symmetric: |K[{i},{j}] - K[{j},{i}]| = {asym:.3g} exceeds "
            f"{rtol:g} * max|K| = {rtol * scale:.3g}; a train-train kernel must be symmetric "
            f"(check that the same inputs were used for both arguments)"
        )
    return 0.5 * (a + a.T)


def check_targets(y: npt.ArrayLike, n: int, kernel_name: str = "k_train_train") -> np.ndarray:
    """Validate targets against an (n, n) train kernel; return them as an (n, C) array."""
    a = as_float_array(y, "y_train")
    if a.ndim not in (1, 2):
        raise ValueError(
            f"y_train must have shape (N,) or (N, C), got shape {a.shape} with {a.ndim} axes"
        )
    if a.shape[0] == 0:
        raise ValueError(f"y_train has shape {a.shape}: the training set is empty (N = 0)")
    if a.shape[0] != n:
        raise ValueError(
            f"y_train has shape {a.shape} but {kernel_name} has shape ({n}, {n}): "
            f"the first axis of y_train must have length {n}"
        )
    if a.size == 0:
        raise ValueError(f"y_train has shape {a.shape}: there are no output columns (C = 0)")
    check_finite(a, "y_train")
    return a.reshape(n, -1)


def check_test_train(k: npt.ArrayLike, n: int, name: str = "k_test_train") -> np.ndarray:
    """Validate a test-train kernel: shape (n_test, n) and finite."""
    a = as_float_array(k, name)
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(
            f"{name} has shape {a.shape} but must have shape (n_test, {n}) "
            f"to match the train kernel of shape ({n}, {n})"
        )
    check_finite(a, name)
    return a


def check_test_test(
    k: npt.ArrayLike, m: int, name: str = "k_test_test", other: str = "k_test_train"
) -> np.ndarray:
    """Validate a test-test kernel: shape (m, m) and finite."""
    a = as_float_array(k, name)
    if a.shape != (m, m):
        raise ValueError(
            f"{name} has shape {a.shape} but must have shape ({m}, {m}) "
            f"to match {other}, which has {m} test rows"
        )
    check_finite(a, name)
    return a


def check_positive_scalar(x: float, name: str, allow_zero: bool) -> float:
    """``x`` as a finite float that is > 0 (or >= 0 when ``allow_zero``)."""
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a real scalar, got {x!r}") from e
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {x!r}")
    return v


def regularize(k: np.ndarray, diag_reg: float, diag_reg_absolute_scale: bool) -> np.ndarray:
    """Return ``k + r I`` following Neural Tangents' ``diag_reg`` convention.

    ``r = diag_reg * trace(k) / N`` (relative to the mean diagonal, the default)
    or ``r = diag_reg`` when ``diag_reg_absolute_scale`` is true.
    """
    reg = check_positive_scalar(diag_reg, "diag_reg", allow_zero=True)
    n = k.shape[0]
    if not diag_reg_absolute_scale:
        reg *= float(np.trace(k)) / n
    out = np.array(k, copy=True)
    out[np.diag_indices(n)] += reg
    return out


class Cholesky:
    """Cholesky factorisation ``A = L L^T`` with solves and the log-determinant."""

    def __init__(self, a: np.ndarray, name: str = "k_train_train"):
        try:
            self._factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
        except np.linalg.LinAlgError as e:
            try:
                lam = float(scipy.linalg.eigvalsh(a, subset_by_index=[0, 0])[0])
                detail = f" (its smallest eigenvalue is {lam:.3g})"
            except (np.linalg.LinAlgError, ValueError):  # pragma: no cover
                detail = ""
            raise ValueError(
                f"{name} (plus the diagonal regulariser) is not positive definite{detail}, "
                f"so its Cholesky factorisation failed; increase diag_reg (e.g. diag_reg=1e-6, "
                f"relative to the mean diagonal) or compute the kernel in float64 "
                f"(dtype here: {a.dtype})"
            ) from e

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``A^{-1} b`` for ``b`` of shape (N,) or (N, K)."""
        return scipy.linalg.cho_solve(self._factor, b, check_finite=False)

    def logdet(self) -> float:
        """``log det A``."""
        return 2.0 * float(np.sum(np.log(np.diag(self._factor[0]))))


class Eigenbasis:
    """Eigendecomposition ``A = V diag(lam) V^T`` of a symmetric matrix.

    As in Neural Tangents, eigenvalues below zero (numerical noise of a PSD
    kernel) are clipped to zero; a clipped mode does not decay under gradient
    flow.
    """

    def __init__(self, a: np.ndarray):
        evals, self.evecs = scipy.linalg.eigh(a, check_finite=False)
        self.evals = np.maximum(evals, 0.0)

    def _exponent(self, tau: np.ndarray) -> np.ndarray:
        """``lam * tau`` of shape (T, N), with 0 (no decay) where ``lam == 0``."""
        lam = self.evals[None, :]
        with np.errstate(invalid="ignore"):  # 0 * inf
            x = lam * tau[:, None]
        return np.where(lam == 0.0, 0.0, x)

    def gain(self, tau: np.ndarray) -> np.ndarray:
        """``1 - exp(-lam tau)`` (via expm1), shape (T, N)."""
        return -np.expm1(-self._exponent(tau))

    def decay(self, tau: np.ndarray) -> np.ndarray:
        """``exp(-lam tau)``, shape (T, N)."""
        return np.exp(-self._exponent(tau))

    def gain_over_eval(self, tau: np.ndarray) -> np.ndarray:
        """``(1 - exp(-lam tau)) / lam``, shape (T, N).

        At ``lam == 0`` this is the limit ``tau`` for finite ``tau`` and 0 for
        ``tau = inf`` (the pseudo-inverse), so zero modes never produce NaN.
        """
        lam = self.evals[None, :]
        pos = lam > 0.0
        g = self.gain(tau) / np.where(pos, lam, 1.0)
        zero_mode = np.where(np.isfinite(tau), tau, 0.0)[:, None]
        return np.where(pos, g, zero_mode)

    def apply(self, coeffs: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``V diag(c_t) V^T b`` for each row ``c_t`` of ``coeffs`` (T, N); b is (N, K).

        Returns shape (T, N, K).
        """
        vb = self.evecs.T @ b
        return np.einsum("ij,tj,jk->tik", self.evecs, coeffs, vb, optimize=True)


def as_times(t: npt.ArrayLike, learning_rate: float, normalization: int) -> tuple:
    """Validate times ``t``.

    Returns ``(t.shape, tau)`` with ``tau = learning_rate * t / normalization`` flattened.
    """
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"t must be None, a number or an array of numbers, got {t!r}") from e
    if np.isnan(arr).any():
        raise ValueError("t contains NaN; training times must be numbers >= 0 (or np.inf)")
    if (arr < 0).any():
        raise ValueError(f"t must be >= 0 (training times), got minimum {arr.min()!r}")
    return arr.shape, (arr.reshape(-1) * learning_rate) / normalization


def symmetrize_last2(c: np.ndarray) -> np.ndarray:
    """Average a (..., M, M) stack with its transpose (removes rounding asymmetry)."""
    return 0.5 * (c + np.swapaxes(c, -1, -2))
