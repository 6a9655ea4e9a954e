"""Closed-form predictions of infinitely wide networks from kernel matrices.

The semantics follow ``neural_tangents.predict`` so its users can switch, but
every function takes precomputed kernel matrices (numpy arrays) and only
numpy and scipy are used:

* :func:`gp_inference` - GP posterior (the NNGP posterior of a Bayesian network);
* :func:`gradient_descent_mse` - outputs after gradient flow on MSE for time[s] t;
* :func:`gradient_descent_mse_ensemble` - mean and covariance of an infinite
  ensemble trained for time[s] t (``get='nngp'`` or ``'ntk'``; ``t=None`` is
  infinite time);
* :func:`marginal_likelihood` - negative log marginal likelihood of the targets.

A train-train kernel larger than memory may be a Dask or Zarr array (``Model.kernel(x,
out="K.zarr")``): ``gp_inference``, ``marginal_likelihood`` and the ``t=None`` means of
``gradient_descent_mse_ensemble`` then use Dask's blocked Cholesky; finite times and
covariances need the matrix in memory and are refused (:mod:`ntkc.predict.blocked`).

Conventions (Neural Tangents'):

* ``diag_reg`` is relative by default: ``K + diag_reg * trace(K) / N * I``;
  with ``diag_reg_absolute_scale=True`` it is ``K + diag_reg * I``.
* The MSE loss is ``||f - y||^2 / (2 * y_train.size)``, so the learning rate is
  divided by ``y_train.size = N * C``:
  ``df/dt = -(learning_rate / y_train.size) K (f - y)``.
* Targets are (N, C) (or (N,), giving 1-D outputs); kernels are (N, N) and act
  as ``K ⊗ I_C`` on the outputs.

Example::

    from ntkc import predict
    gd = predict.gradient_descent_mse(ntk_train, y_train, learning_rate=1.0)
    fx_train_t, fx_test_t = gd.predict(t=[1.0, 10.0], k_test_train=ntk_test)
    ens = predict.gradient_descent_mse_ensemble({"nngp": K, "ntk": Theta}, y_train)
    out = ens.predict(None, {"nngp": K_st, "ntk": Theta_st}, {"nngp": K_ss},
                      get="ntk", compute_cov=True)  # Gaussian(mean, covariance)
"""

from .ensemble import GradientDescentMSEEnsemble, gradient_descent_mse_ensemble
from .gd import GradientDescentMSE, gradient_descent_mse
from .gp import GPInference, gp_inference, marginal_likelihood
from .linalg import Gaussian

__all__ = [
    "GPInference",
    "Gaussian",
    "GradientDescentMSE",
    "GradientDescentMSEEnsemble",
    "gp_inference",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "marginal_likelihood",
]
