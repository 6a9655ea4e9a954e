"""Gradient-flow (MSE) dynamics of infinitely wide networks from kernel matrices.

Part of :mod:`ntkc.predict` (import the functions from there). Conventions are
those of ``neural_tangents.predict``:

* the loss is ``L(f) = ||f - y||_F^2 / (2 * y_train.size)`` (``y_train.size =
  N * C``), so gradient flow with learning rate ``eta`` in function space is
  ``df/dt = -(eta / y_train.size) * K (f - y)``;
* times ``t`` are in units of the learning rate (only ``eta * t`` matters);
* ``t=None`` means infinite time computed with a Cholesky solve; ``t=np.inf``
  (alone or inside an array) goes through the eigenbasis instead;
* eigenvalues of the train kernel below zero are clipped to zero.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .blocked import is_lazy, lazy_shape, refusal
from .linalg import (
    Cholesky,
    Eigenbasis,
    as_float_array,
    as_times,
    check_finite,
    check_positive_scalar,
    check_targets,
    check_test_train,
    check_train_kernel,
    regularize,
)


def _broadcast_outputs(
    f: npt.ArrayLike, shape: tuple[int, ...], name: str, like: str
) -> np.ndarray:
    a = as_float_array(f, name)
    try:
        out = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(
            f"{name} has shape {a.shape}, which does not broadcast to {like} {shape}"
        ) from None
    check_finite(out, name)
    return out


class GradientDescentMSE:
    """Closed-form gradient flow on MSE; build with :func:`gradient_descent_mse`.

    Attributes:
        normalization: ``y_train.size``, the divisor of the learning rate.
    """

    def __init__(
        self,
        k_train_train: npt.ArrayLike,
        y_train: npt.ArrayLike,
        learning_rate: float = 1.0,
        diag_reg: float = 0.0,
        diag_reg_absolute_scale: bool = False,
    ):
        if is_lazy(k_train_train):  # eigh below: no blocked form
            raise refusal("gradient_descent_mse (it eigendecomposes the kernel when built; "
                          "for the t=None mean use gradient_descent_mse_ensemble or "
                          "gp_inference, which solve blockwise)",
                          lazy_shape(k_train_train, "k_train_train"))
        k = check_train_kernel(k_train_train)
        self.n_train = k.shape[0]
        self._y_shape = np.shape(y_train)
        self.y_train = check_targets(y_train, self.n_train)
        self.learning_rate = check_positive_scalar(learning_rate, "learning_rate", False)
        self.normalization = int(self.y_train.size)
        self._k_reg = regularize(k, diag_reg, diag_reg_absolute_scale)
        self._eigen = Eigenbasis(self._k_reg)
        self._chol: Cholesky | None = None

    def _cholesky(self) -> Cholesky:
        if self._chol is None:
            self._chol = Cholesky(self._k_reg)
        return self._chol

    def predict(
        self,
        t: npt.ArrayLike | None = None,
        fx_train_0: npt.ArrayLike | None = 0.0,
        fx_test_0: npt.ArrayLike | None = None,
        k_test_train: npt.ArrayLike | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Train and test outputs after training for time[s] ``t``.

        Solves ``df/dt = -(eta / n) K (f - y)`` with ``n = y_train.size``::

            f_train(t) = f_train(0) - (I - exp(-eta t K / n)) (f_train(0) - y)
            f_test(t)  = f_test(0) + K_*t K^{-1} (I - exp(-eta t K / n)) (y - f_train(0))

        with ``K`` the regularised train kernel, evaluated in its (cached)
        eigenbasis using ``expm1`` for accuracy at small ``t``.

        Args:
            t: None (infinite time, via a Cholesky solve: needs ``K`` positive
                definite), a number >= 0 (``np.inf`` allowed), or an array of them
                of any shape, which becomes the leading axes of the outputs.
            fx_train_0: network outputs on the train set at ``t = 0``: a scalar or
                an array broadcastable to ``y_train.shape``. None skips the train
                predictions (then ``y - f_train(0)`` is taken as ``y``).
            fx_test_0: test outputs at ``t = 0``, broadcastable to
                ``(n_test,) + y_train.shape[1:]``; None means 0. Needs ``k_test_train``.
            k_test_train: kernel between test and train points, shape (n_test, N).

        Returns:
            ``(fx_train_t, fx_test_t)`` of shapes ``t.shape + y_train.shape`` and
            ``t.shape + (n_test,) + y_train.shape[1:]``; ``fx_test_t`` is None
            when ``k_test_train`` is None, ``fx_train_t`` when ``fx_train_0`` is None.
        """
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 was given but k_test_train is None; pass both or neither")
        y = self.y_train
        tail = self._y_shape[1:]
        if fx_train_0 is None:
            f0 = np.zeros_like(y)
        else:
            f0 = _broadcast_outputs(fx_train_0, self._y_shape, "fx_train_0", "y_train's shape")
            f0 = f0.reshape(y.shape)
        kt = ft0 = None
        if k_test_train is not None:
            kt = check_test_train(k_test_train, self.n_train)
            m = kt.shape[0]
            ft0 = 0.0 if fx_test_0 is None else fx_test_0
            ft0 = _broadcast_outputs(ft0, (m,) + tail, "fx_test_0", "the test output shape")
            ft0 = ft0.reshape(m, -1)
        resid = y - f0

        if t is None:  # infinite time through Cholesky, as Neural Tangents does
            fx_train = None if fx_train_0 is None else y.reshape(self._y_shape).copy()
            fx_test = None
            if kt is not None:
                fx_test = (ft0 + kt @ self._cholesky().solve(resid)).reshape((-1,) + tail)
            return fx_train, fx_test

        t_shape, tau = as_times(t, self.learning_rate, self.normalization)
        fx_train = fx_test = None
        if fx_train_0 is not None:
            d = self._eigen.apply(self._eigen.gain(tau), resid)
            fx_train = (f0[None] + d).reshape(t_shape + self._y_shape)
        if kt is not None:
            d = self._eigen.apply(self._eigen.gain_over_eval(tau), resid)
            fx_test = (ft0[None] + kt @ d).reshape(t_shape + (kt.shape[0],) + tail)
        return fx_train, fx_test

    __call__ = predict


def gradient_descent_mse(
    k_train_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> GradientDescentMSE:
    """Outputs of a linearised (infinitely wide) network trained by gradient flow on MSE.

    Mirrors ``neural_tangents.predict.gradient_descent_mse``: continuous-time
    gradient descent on ``L(f) = ||f - y||^2 / (2 * y_train.size)``, i.e. the ODE
    ``df/dt = -(learning_rate / y_train.size) * K (f - y)``, solved in closed form.
    The eigendecomposition (``scipy.linalg.eigh``) of the regularised train
    kernel is computed here, once, and reused by every ``predict`` call.

    Args:
        k_train_train: symmetric train-train kernel (usually the NTK), shape (N, N).
        y_train: targets, shape (N, C) or (N,).
        learning_rate: ``eta > 0``; only ``eta * t`` matters.
        diag_reg: diagonal regulariser, ``K + diag_reg * trace(K) / N * I`` by default.
        diag_reg_absolute_scale: if true, ``K + diag_reg * I``.

    Returns:
        A :class:`GradientDescentMSE`; call
        ``.predict(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None)``.
    """
    return GradientDescentMSE(
        k_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale
    )
