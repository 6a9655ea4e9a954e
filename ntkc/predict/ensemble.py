"""Infinite ensembles of infinitely wide networks trained by gradient flow on MSE.

Part of :mod:`ntkc.predict` (import the functions from there); the conventions
are those of :mod:`ntkc.predict.gd` (Neural Tangents'): learning rate divided by
``y_train.size``, ``t=None`` is infinite time via Cholesky, relative ``diag_reg``.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .blocked import BlockedCholesky, is_lazy, lazy_shape, refusal
from .linalg import (
    Cholesky,
    Eigenbasis,
    Gaussian,
    as_times,
    check_positive_scalar,
    check_targets,
    check_test_test,
    check_test_train,
    check_train_kernel,
    regularize,
    symmetrize_last2,
)

KERNEL_NAMES = ("nngp", "ntk")


@functools.cache
def _result_type(names: tuple[str, ...]) -> type:
    return collections.namedtuple("Gaussians", names)


def _canonical_get(get: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    if get is None:
        return KERNEL_NAMES, False
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    if not names or any(g not in KERNEL_NAMES for g in names) or len(set(names)) < len(names):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of distinct ones, got {get!r}")
    return names, single


class GradientDescentMSEEnsemble:
    """Infinite ensemble trained by gradient flow; build with
    :func:`gradient_descent_mse_ensemble`.

    Eigendecompositions and Cholesky factors of each regularised train kernel
    are computed on first use and cached.
    """

    def __init__(
        self,
        kernels_train_train: Mapping[str, npt.ArrayLike],
        y_train: npt.ArrayLike,
        learning_rate: float = 1.0,
        diag_reg: float = 0.0,
        diag_reg_absolute_scale: bool = False,
    ):
        raw = self._check_kernels(kernels_train_train, "kernels_train_train")
        # Dask/Zarr kernels (larger than memory) stay lazy: infinite-time means only.
        self._lazy = {g for g, v in raw.items() if is_lazy(v)}
        self._k = {g: v if g in self._lazy else check_train_kernel(v, f"kernels_train_train[{g!r}]")
                   for g, v in raw.items()}
        shapes = {g: tuple(v.shape) for g, v in self._k.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"kernels_train_train have different shapes: {shapes}")
        self.n_train = next(iter(self._k.values())).shape[0]
        for g in self._lazy:
            lazy_shape(self._k[g], f"kernels_train_train[{g!r}]")
        self._y_is_1d = np.ndim(y_train) == 1
        self.y_train = check_targets(y_train, self.n_train, "kernels_train_train")
        self.learning_rate = check_positive_scalar(learning_rate, "learning_rate", False)
        self.normalization = int(self.y_train.size)
        self._diag_reg = (diag_reg, diag_reg_absolute_scale)
        self._reg = {
            g: regularize(v, diag_reg, diag_reg_absolute_scale)
            for g, v in self._k.items() if g not in self._lazy
        }
        self._eig: dict[str, Eigenbasis] = {}
        self._chol: dict[str, Cholesky] = {}

    @staticmethod
    def _check_kernels(kernels: Any, name: str) -> dict[str, Any]:
        if not isinstance(kernels, Mapping):
            raise ValueError(  # noqa: TRY004 - the module reports every bad input as ValueError
                f"{name} must be a dict like {{'nngp': K, 'ntk': Theta}}, "
                f"got {type(kernels).__name__}"
            )
        extra = set(kernels) - set(KERNEL_NAMES)
        if extra or not kernels:
            raise ValueError(
                f"{name} must have keys among {KERNEL_NAMES}, got {sorted(map(str, kernels))}"
            )
        return dict(kernels)

    def _eigen(self, g: str) -> Eigenbasis:
        if g not in self._eig:
            self._eig[g] = Eigenbasis(self._reg[g])
        return self._eig[g]

    def _cholesky(self, g: str) -> Cholesky:
        if g not in self._chol and g in self._lazy:
            self._chol[g] = BlockedCholesky(self._k[g], *self._diag_reg,  # type: ignore[assignment]
                                            name=f"kernels_train_train[{g!r}]")
        elif g not in self._chol:
            self._chol[g] = Cholesky(self._reg[g], f"kernels_train_train[{g!r}]")
        return self._chol[g]

    def predict(
        self,
        t: npt.ArrayLike | None = None,
        kernels_test_train: Mapping[str, npt.ArrayLike] | None = None,
        kernels_test_test: Mapping[str, npt.ArrayLike] | npt.ArrayLike | None = None,
        get: str | Sequence[str] | None = ("nngp", "ntk"),
        compute_cov: bool = False,
    ) -> Any:
        """Mean [and covariance] of the ensemble's outputs after training time[s] ``t``.

        With ``tau = learning_rate * t / y_train.size``, ``E = I - exp(-tau Θ)``,
        test-train kernels ``K_*``/``Θ_*`` and test-test NNGP ``K_**`` (Lee et al.
        2019, eq. 16)::

            ntk:  mean = Θ_* Θ^{-1} E y
                  cov  = K_** + Θ_* Θ^{-1} E K E Θ^{-1} Θ_*^T
                         - (Θ_* Θ^{-1} E K_*^T + transpose)
            nngp: the same with Θ := K, i.e. mean = K_* K^{-1} E y,
                  cov = K_** - K_* K^{-1} (I - exp(-2 tau K)) K_*^T

        At ``t=None`` (infinite time, Cholesky) the NTK mean is kernel regression
        with Θ and the NNGP result is the GP posterior. Without test kernels the
        train-set predictions are returned: mean ``E y``, covariance
        ``K exp(-2 tau K)`` (nngp) or ``exp(-tau Θ) K exp(-tau Θ)`` (ntk);
        at ``t=None`` these are ``y`` and 0. As in Neural Tangents, Θ and K are
        the regularised kernels except the NNGP ``K`` sandwiched in the ``'ntk'``
        covariances (``E K E`` and ``exp(-tau Θ) K exp(-tau Θ)``), which is the
        unregularised prior covariance; so ``'nngp'`` at ``t=None`` equals
        :func:`gp_inference` with the same ``diag_reg``.

        Args:
            t: None (infinite time), a number >= 0 or an array (leading output axes).
            kernels_test_train: dict with the needed ``'nngp'``/``'ntk'`` matrices,
                each (n_test, N); None predicts on the train set.
            kernels_test_test: test-test NNGP, a dict with key ``'nngp'`` or the
                (n_test, n_test) array itself; required when ``compute_cov`` and
                test kernels are given.
            get: ``'nngp'``, ``'ntk'`` or a tuple of them (None: both).
            compute_cov: also return covariances (needs NNGP kernels even for ``'ntk'``).

        Returns:
            For a string ``get``: the mean, or a :class:`Gaussian` if ``compute_cov``.
            For a tuple: a namedtuple ``Gaussians`` with one such field per name.
            Means have shape ``t.shape + (n_test,) + y_train.shape[1:]``,
            covariances ``t.shape + (n_test, n_test)``.
        """
        names, single = _canonical_get(get)
        needed = set(names) | ({"nngp"} if compute_cov else set())
        missing = sorted(needed - set(self._k))
        if missing:
            raise ValueError(
                f"get={get!r} with compute_cov={compute_cov} needs kernels_train_train "
                f"{missing}, which were not given (have {sorted(self._k)})"
            )
        if self._lazy and (compute_cov or t is not None):
            what = "compute_cov=True" if compute_cov else "a finite training time t"
            raise refusal(f"{what} (with a Dask/Zarr kernels_train_train)", self.n_train)
        kt = ktt = None
        if kernels_test_train is not None:
            raw = self._check_kernels(kernels_test_train, "kernels_test_train")
            lack = sorted(needed - set(raw))
            if lack:
                raise ValueError(f"kernels_test_train lacks {lack} needed for get={get!r}")
            kt = {
                g: check_test_train(raw[g], self.n_train, f"kernels_test_train[{g!r}]")
                for g in needed
            }
            m = {v.shape[0] for v in kt.values()}
            if len(m) > 1:
                shapes = {g: v.shape for g, v in kt.items()}
                raise ValueError(f"kernels_test_train have different shapes: {shapes}")
            if compute_cov:
                if kernels_test_test is None:
                    raise ValueError(
                        "compute_cov=True with kernels_test_train needs kernels_test_test "
                        "(the test-test NNGP)"
                    )
                tt = kernels_test_test
                name = "kernels_test_test"
                if isinstance(tt, Mapping):
                    if "nngp" not in tt:
                        raise ValueError("kernels_test_test must contain the key 'nngp'")
                    tt, name = tt["nngp"], "kernels_test_test['nngp']"
                ktt = check_test_test(tt, m.pop(), name, "kernels_test_train")
        args = (kt, ktt, compute_cov)
        if t is None:
            out = [self._infinite(g, *args) for g in names]
        else:
            t_shape, tau = as_times(t, self.learning_rate, self.normalization)
            out = [self._finite(g, tau, t_shape, *args) for g in names]
        return out[0] if single else _result_type(names)(*out)

    __call__ = predict

    def _finish(self, mean: np.ndarray, cov: np.ndarray | None, lead: tuple) -> Any:
        mean = mean.reshape(lead + mean.shape[-2:])
        if self._y_is_1d:
            mean = mean[..., 0]
        if cov is None:
            return mean
        return Gaussian(mean, symmetrize_last2(cov.reshape(lead + cov.shape[-2:])))

    def _infinite(self, g: str, kt: dict | None, ktt: np.ndarray | None, cov: bool) -> Any:
        y = self.y_train
        if kt is None:
            c = np.zeros_like(self._k["nngp"]) if cov else None
            return self._finish(y.copy(), c, ())
        chol = self._cholesky(g)
        mean = kt[g] @ chol.solve(y)
        if not cov:
            return self._finish(mean, None, ())
        if g == "nngp":
            c = ktt - kt["nngp"] @ chol.solve(kt["nngp"].T)
        else:
            a = chol.solve(kt["ntk"].T)  # Θ^{-1} Θ_*^T, (N, M)
            cross = kt["nngp"] @ a
            c = ktt + a.T @ self._k["nngp"] @ a - cross - cross.T
        return self._finish(mean, c, ())

    def _finite(
        self,
        g: str,
        tau: np.ndarray,
        lead: tuple,
        kt: dict | None,
        ktt: np.ndarray | None,
        cov: bool,
    ) -> Any:
        eig, y = self._eigen(g), self.y_train
        c = None
        if kt is None:
            mean = eig.apply(eig.gain(tau), y)
            if cov and g == "nngp":
                c = eig.apply(eig.evals[None] * eig.decay(2.0 * tau), np.eye(self.n_train))
            elif cov:
                e = eig.apply(eig.decay(tau), np.eye(self.n_train))  # exp(-tau Θ), (T, N, N)
                c = e @ self._k["nngp"] @ e
            return self._finish(mean, c, lead)
        phi = eig.gain_over_eval(tau)
        mean = kt[g] @ eig.apply(phi, y)
        if cov and g == "nngp":
            kn = kt["nngp"]
            c = ktt - kn @ eig.apply(eig.gain_over_eval(2.0 * tau), kn.T)
        elif cov:
            a = eig.apply(phi, kt["ntk"].T)  # Θ^{-1} E Θ_*^T, (T, N, M)
            cross = kt["nngp"] @ a  # K_* Θ^{-1} E Θ_*^T = (Θ_* Θ^{-1} E K_*^T)^T
            a_t = np.swapaxes(a, -1, -2)
            c = ktt + a_t @ self._k["nngp"] @ a - cross - np.swapaxes(cross, -1, -2)
        return self._finish(mean, c, lead)


def gradient_descent_mse_ensemble(
    kernels_train_train: Mapping[str, npt.ArrayLike],
    y_train: npt.ArrayLike,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> GradientDescentMSEEnsemble:
    """Gaussian outputs of an infinite ensemble of infinitely wide networks trained on MSE.

    Mirrors ``neural_tangents.predict.gradient_descent_mse_ensemble``, but takes
    precomputed kernels instead of a kernel function: random initialisation is
    marginalised out, gradient flow runs for time ``t`` with
    ``df/dt = -(learning_rate / y_train.size) Θ (f - y)``. ``get='ntk'`` trains
    all layers (NTK Θ); ``get='nngp'`` uses the NNGP for both roles (only the
    readout trained; its ``t -> inf`` limit is the Bayesian posterior).

    Args:
        kernels_train_train: ``{'nngp': K, 'ntk': Θ}`` (either key may be omitted
            when not needed), each symmetric (N, N); Dask or Zarr arrays are solved
            blockwise out of memory, for ``t=None`` means only (:mod:`ntkc.predict.blocked`).
        y_train: targets, shape (N, C) or (N,).
        learning_rate: ``> 0``; only ``learning_rate * t`` matters.
        diag_reg: diagonal regulariser, relative to the mean diagonal by default.
        diag_reg_absolute_scale: if true, ``diag_reg`` is absolute.

    Returns:
        A :class:`GradientDescentMSEEnsemble`; call ``.predict(t=None,
        kernels_test_train=None, kernels_test_test=None, get=('nngp', 'ntk'),
        compute_cov=False)``.
    """
    return GradientDescentMSEEnsemble(
        kernels_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale
    )
