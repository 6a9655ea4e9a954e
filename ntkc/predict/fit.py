"""Fit an infinitely wide network to data and predict, from a compiled model.

The glue between :meth:`ntkc.Model.kernel` (Gram matrices) and
:mod:`ntkc.predict` (closed-form predictions)::

    model = ntkc.load("examples/erf_mlp.ntk")
    fm = fit(model, x_train, y_train, kernel="ntk")       # t=None: trained to convergence
    mean = fm.predict(x_test)
    mean, cov = fm.predict(x_test, return_cov=True)

    sel = select_diag_reg(model, x_train, y_train, kernel=("nngp", "ntk"))
    fm = fit(model, x_train, y_train, kernel=sel.kernel, diag_reg=sel.diag_reg)

``kernel="ntk"`` is the infinite ensemble of networks with all layers trained by
gradient descent on MSE (NTK Θ for the dynamics, NNGP K for the initial
randomness); ``kernel="nngp"`` is the NNGP posterior (only the readout trained;
at ``t=None`` this is the Bayesian GP posterior). Both go through
:func:`ntkc.predict.gradient_descent_mse_ensemble`, so the learning-rate,
time and ``diag_reg`` conventions are Neural Tangents' (see :mod:`ntkc.predict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from . import Gaussian, gradient_descent_mse_ensemble, marginal_likelihood
from .optimize import optimize_hyperparameters


class Model(Protocol):
    """What fitting needs of a model: its Gram matrices by name. ntkc.Model is one; typed
    structurally so this module never imports the runtime (which calls it, Model.fit)."""

    def kernel(self, x1: Any, x2: Any = None, get: Any = ..., params: Any = None,
               **options: Any) -> Any: ...

__all__ = ["DEFAULT_DIAG_REGS", "FittedModel", "Selection", "fit", "select_diag_reg"]

KERNELS = ("nngp", "ntk")

#: Default grid for :func:`select_diag_reg`: relative regularisers (fractions of the
#: mean diagonal of the kernel) from "almost none" to "as large as the signal".
DEFAULT_DIAG_REGS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _check_kernel_name(kernel: Any) -> str:
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be 'nngp' or 'ntk', got {kernel!r}")
    return kernel


def _check_data(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check the things the kernel code cannot see: pairing of x with y, and y itself.

    The input shape and finiteness of ``x`` are checked by ``model.kernel`` (it knows
    the network's input shape); here we fail before any kernel is computed.
    """
    x = np.asarray(x)
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"y_train must be an array of real numbers: {e}") from e
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x_train is empty (shape {x.shape}): need at least one training input")
    if y.ndim not in (1, 2):
        raise ValueError(f"y_train must have shape (N,) or (N, C), got shape {y.shape}")
    if len(y) == 0 or y.size == 0:
        raise ValueError(f"y_train is empty (shape {y.shape}): need at least one target")
    if len(x) != len(y):
        raise ValueError(
            f"x_train has {len(x)} inputs but y_train has {len(y)} targets "
            f"(shapes {x.shape} and {y.shape}); they must pair up one to one"
        )
    bad = ~np.isfinite(y)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"y_train contains {int(bad.sum())} NaN/Inf value(s), the first at index {first}; "
            f"drop or impute those targets before fitting"
        )
    return x, y


def _check_times(t: npt.ArrayLike | None) -> np.ndarray | None:
    if t is None:
        return None
    try:
        a = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"t must be None (infinite time), a number or an array: {e}") from e
    if np.isnan(a).any() or (a < 0).any():
        raise ValueError(f"t must be training time(s) >= 0 (np.inf allowed), got {t!r}")
    return a


@dataclass
class FittedModel:
    """A model conditioned on training data; build with :func:`fit`.

    Attributes:
        model: the compiled network.
        kernel: ``'ntk'`` or ``'nngp'``.
        t: training time(s) (None: infinite time).
        params: the network params the kernels were computed with (None: defaults).
        x_train, y_train: the training data.
        train_kernels: ``{'nngp': K, 'ntk': Θ}`` train-train matrices (``'ntk'`` only
            for ``kernel='ntk'``), computed once by :func:`fit`.
        ensemble: the :class:`ntkc.predict.GradientDescentMSEEnsemble` built on them
            (it caches its eigendecomposition / Cholesky factor across predictions).
    """

    model: Model
    kernel: str
    t: np.ndarray | None
    params: dict[str, float] | None
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    train_kernels: dict[str, np.ndarray] = field(repr=False)
    ensemble: Any = field(repr=False)
    optimized: Any = None  # the ntkc.predict.optimize.Optimized of fit(optimize=...)

    def predict(self, x_test: npt.ArrayLike, return_cov: bool = False) -> np.ndarray | Gaussian:
        """Mean (and covariance) of the outputs on ``x_test``.

        Args:
            x_test: inputs, shape ``(M, *model.input_shape)``.
            return_cov: also return the covariance over the test points (the
                spread of the infinite ensemble of trained networks for
                ``'ntk'``, the posterior covariance for ``'nngp'``).

        Returns:
            The mean, shape ``t.shape + (M,) + y_train.shape[1:]``; with
            ``return_cov`` a :class:`ntkc.predict.Gaussian` ``(mean, covariance)``
            (unpacks as a pair), covariance of shape ``t.shape + (M, M)``, shared
            by all output columns.
        """
        x_test = np.asarray(x_test)
        names = ("nngp", "ntk") if (self.kernel == "ntk" and return_cov) else (self.kernel,)
        kt = self.model.kernel(x_test, self.x_train, get=names, params=self.params)
        test_train = dict(zip(names, kt))
        test_test = None
        if return_cov:
            # Only the NNGP prior covariance among test points enters (for both kernels).
            test_test = self.model.kernel(x_test, get="nngp", params=self.params)
        return self.ensemble.predict(
            self.t, test_train, test_test, get=self.kernel, compute_cov=return_cov
        )

    __call__ = predict


def fit(
    model: Model,
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    kernel: str = "ntk",
    t: npt.ArrayLike | None = None,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    learning_rate: float = 1.0,
    params: Mapping[str, float] | None = None,
    out: str | None = None,
    client: Any = None,
    optimize: Sequence[str] | None = None,
) -> FittedModel:
    """Condition the infinitely wide network ``model`` on ``(x_train, y_train)``.

    The train-train kernels are computed here, once; each
    :meth:`FittedModel.predict` then computes only test-train (and, for
    covariances, test-test) kernels.

    Args:
        model: a compiled network (:func:`ntkc.load`).
        x_train: inputs, shape ``(N, *model.input_shape)``.
        y_train: targets, shape ``(N,)`` or ``(N, C)``; must be finite.
        kernel: ``'ntk'`` (ensemble of networks trained by gradient descent on
            MSE; t=None gives NTK kernel regression) or ``'nngp'`` (NNGP
            posterior; readout-only training).
        t: training time(s); None is infinite time. An array gives outputs for
            every time (leading axes). Time is in Neural Tangents' units: with the
            loss ``||f - y||^2 / (2 * y_train.size)``, ``t`` gradient-descent steps
            of size ``learning_rate`` approach the flow at time ``t``.
        diag_reg: diagonal regulariser, relative to the mean diagonal of the
            kernel (``K + diag_reg * trace(K)/N * I``) unless
            ``diag_reg_absolute_scale``.
        diag_reg_absolute_scale: if true, add ``diag_reg * I``.
        learning_rate: > 0; only ``learning_rate * t`` matters.
        params: overrides of the spec's params (e.g. ``{"w": 1.2}``).
        out: a ``.zarr`` path: the train-train kernel is computed (or resumed, or read
            when complete) there as Dask tasks (``Model.kernel(out=...)``) and solved
            blockwise (:mod:`ntkc.predict.blocked`): t=None means only, no covariances.
        client: the Dask client or scheduler address for ``out`` (default: local).
        optimize: param names and/or ``"diag_reg"``: first choose them by marginal
            likelihood (:func:`ntkc.predict.optimize.optimize_hyperparameters`, L-BFGS-B on
            exact gradients, starting from ``params`` and ``diag_reg``; dense networks).

    Returns:
        A :class:`FittedModel`.

    Raises:
        ValueError: for a bad kernel name, empty or mismatched training data,
            non-finite targets or inputs, bad ``t``/``diag_reg``/``learning_rate``,
            or a regularised kernel that is not positive definite (at t=None).
    """
    kernel = _check_kernel_name(kernel)
    x, y = _check_data(x_train, y_train)
    times = _check_times(t)
    params = None if params is None else dict(params)
    optimized = None
    if optimize:
        if out is not None:
            raise ValueError("optimize= needs the train kernel in memory: leave out out=")
        y2 = y.reshape(len(y), -1)
        optimized = optimize_hyperparameters(model, x, y2, tuple(optimize), kernel, diag_reg,
                                             diag_reg_absolute_scale, params)
        params, diag_reg = optimized.params, optimized.diag_reg
    # For 'ntk' the NNGP is needed too (initial randomness in covariances); the
    # generated code fills both in the same pass, so asking for it costs ~nothing.
    names = ("nngp", "ntk") if kernel == "ntk" else ("nngp",)
    if out is not None:
        if times is not None:
            raise ValueError("fit(out=...) solves the train kernel blockwise, which gives "
                             "infinite-time predictions only: use t=None, or fit without "
                             "out= when the N×N kernel fits in memory")
        names = (kernel,)  # the blocked path has no covariances: the NNGP is not needed
        k = model.kernel(x, get=names, params=params, out=out, client=client)
    else:
        k = model.kernel(x, get=names, params=params)
    train = dict(zip(names, k))
    ens = gradient_descent_mse_ensemble(
        train, y, learning_rate=learning_rate, diag_reg=diag_reg,
        diag_reg_absolute_scale=diag_reg_absolute_scale,
    )
    if times is None:
        # Factorise now, so "not positive definite, increase diag_reg" surfaces at fit
        # time (predicting on the train set alone skips the solve; one train row as a
        # "test" point forces it, and the factor is cached for later predictions).
        ens.predict(None, {kernel: train[kernel][:1]}, get=kernel)
    return FittedModel(model, kernel, times, params, x, y, train, ens, optimized)


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select_diag_reg`.

    Attributes:
        kernel: the chosen kernel name.
        diag_reg: the chosen regulariser.
        nll: its negative log marginal likelihood.
        table: ``{(kernel, diag_reg): nll}`` for every candidate (``inf`` where the
            regularised kernel was not positive definite).
    """

    kernel: str
    diag_reg: float
    nll: float
    table: dict[tuple[str, float], float]


def select_diag_reg(
    model: Model,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    kernel: str | Sequence[str] = "nngp",
    candidates: Sequence[float] = DEFAULT_DIAG_REGS,
    diag_reg_absolute_scale: bool = False,
    params: Mapping[str, float] | None = None,
) -> Selection:
    """Choose ``diag_reg`` (and, given several, the kernel) by marginal likelihood.

    Minimises the negative log marginal likelihood of ``y`` under
    ``N(0, K + r I)`` (:func:`ntkc.predict.marginal_likelihood`, summed over
    output columns). For ``'nngp'`` this is the evidence of the Bayesian
    network with Gaussian observation noise ``r``. For ``'ntk'`` it treats Θ as
    a GP prior covariance, which the trained ensemble is not (its prior is the
    NNGP); it is still a usable, scale-aware criterion for kernel regression
    with Θ and the one Neural Tangents users apply, but comparing an ``'nngp'``
    score with an ``'ntk'`` score compares two different priors.

    Args:
        model: a compiled network.
        x, y: training data, as for :func:`fit`.
        kernel: a kernel name or a sequence of them to choose among.
        candidates: diag_reg values to try (relative unless
            ``diag_reg_absolute_scale``); each must be >= 0.
        diag_reg_absolute_scale: as for :func:`fit`.
        params: overrides of the spec's params.

    Returns:
        A :class:`Selection` with the best (kernel, diag_reg) and the full table.

    Raises:
        ValueError: on bad inputs, an empty candidate list, or if no candidate
            gives a positive definite regularised kernel.
    """
    names = (kernel,) if isinstance(kernel, str) else tuple(kernel)
    if not names:
        raise ValueError("kernel must name at least one of 'nngp', 'ntk'")
    names = tuple(dict.fromkeys(_check_kernel_name(n) for n in names))
    cands = [float(c) for c in candidates]
    if not cands:
        raise ValueError("candidates is empty: give at least one diag_reg value")
    if any(not np.isfinite(c) or c < 0 for c in cands):
        raise ValueError(f"candidates must be finite numbers >= 0, got {list(candidates)!r}")
    xa, ya = _check_data(x, y)
    params = None if params is None else dict(params)
    k = dict(zip(names, model.kernel(xa, get=names, params=params)))  # once for all candidates
    table: dict[tuple[str, float], float] = {}
    for name in names:
        for c in cands:
            try:
                table[name, c] = marginal_likelihood(k[name], ya, c, diag_reg_absolute_scale)
            except ValueError:
                # Not positive definite at this regulariser: not a candidate.
                table[name, c] = float("inf")
    best = min(table, key=table.__getitem__)
    if not np.isfinite(table[best]):
        raise ValueError(
            f"no candidate diag_reg {cands} makes the {'/'.join(names)} kernel positive "
            f"definite; try larger values"
        )
    return Selection(best[0], best[1], table[best], table)
