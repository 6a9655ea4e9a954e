"""scikit-learn estimators: an infinitely wide network as a regressor or classifier.

    from ntkc.sklearn import NTKClassifier
    clf = NTKClassifier("examples/open_mlp.ntk", diag_reg=1e-3).fit(X, y)
    GridSearchCV(clf, {"params__w": [1.0, 1.5], "diag_reg": [1e-4, 1e-2]}).fit(X, y)

``Kernel(spec)`` is the network's NNGP (or NTK) as a scikit-learn GP kernel whose
hyperparameters are the spec's params, with their exact gradient (Model.kernel(grad=)),
so GaussianProcessRegressor fits them by its own marginal-likelihood optimiser.

The estimator is the closed-form predictor of ntkc.predict.fit: the mean of an infinite
ensemble of networks trained by gradient descent on MSE (``kernel="ntk"``), or the NNGP
posterior mean (``kernel="nngp"``), at training time ``t`` (None: infinite). The spec's
params are estimator params, ``params__<name>``, so a grid search sweeps them without
recompiling. Rows of ``X`` are flattened inputs: they are reshaped to the spec's input
shape (an ``image[8, 8, 1]`` spec takes digits' 64 features); a ``vector[*]`` spec takes
any number of features (the default spec, ``ntkc/specs/open_mlp.ntk``, is one).
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.gaussian_process import kernels as gp_kernels
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .predict.fit import fit
from .runtime import Model, load

__all__ = ["Kernel", "NTKClassifier", "NTKRegressor"]

PREFIX = "params__"
_MODELS: dict[tuple[str, str], Model] = {}  # (path, sha256 of its text) → loaded model


def default_spec() -> Path:
    """The spec an estimator uses when given none: a ReLU MLP with an open input size."""
    return Path(str(resources.files("ntkc.specs").joinpath("open_mlp.ntk")))


def _model(spec: str | Path | None) -> Model:
    # check_estimator and grid searches fit hundreds of times: load each spec once per
    # process (ntkc.load's own cache skips numba, but not parsing and deriving).
    path = Path(default_spec() if spec is None else spec).resolve()
    key = (str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    if key not in _MODELS:
        _MODELS[key] = load(path)
    return _MODELS[key]


def _as_spec_input(X: np.ndarray, spec: str | Path | None) -> np.ndarray:
    """Rows of flattened inputs (n, features) in the spec's input shape."""
    shape = _model(spec).input_shape
    if None in shape:  # vector[*]: any number of features
        return X
    if X.shape[1] != math.prod(shape):
        raise ValueError(f"X has {X.shape[1]} features, but the spec's input is "
                         f"{shape} ({math.prod(shape)} features per row)")
    return X.reshape(X.shape[0], *shape)


class _NTKEstimator(BaseEstimator):
    """What the regressor and the classifier share: params, input shapes, fitting."""

    def __init__(self, spec: str | Path | None = None, kernel: str = "ntk",
                 t: float | None = None, diag_reg: float = 1e-4,
                 params: dict[str, float] | None = None) -> None:
        self.spec = spec
        self.kernel = kernel
        self.t = t
        self.diag_reg = diag_reg
        self.params = params

    # -- the spec's params as estimator params: params__w ------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = super().get_params(deep=False)
        if deep:
            try:
                defaults = _model(self.spec).params
            except (OSError, TypeError, ValueError):  # a bad spec is fit's error to raise
                defaults = {}
            given = self.params if isinstance(self.params, dict) else {}
            values = {**defaults, **given}
            out.update({PREFIX + k: v for k, v in values.items()})
        return out

    def set_params(self, **values: Any) -> _NTKEstimator:
        spec_values = {k[len(PREFIX):]: v for k, v in values.items() if k.startswith(PREFIX)}
        rest = {k: v for k, v in values.items() if not k.startswith(PREFIX)}
        super().set_params(**rest)
        if spec_values:
            known = _model(self.spec).params
            unknown = sorted(set(spec_values) - set(known))
            if unknown:
                raise ValueError(f"{PREFIX}{unknown[0]}: the spec has no param {unknown[0]!r} "
                                 f"(it has {', '.join(known) or 'none'})")
            self.params = {**(self.params or {}), **spec_values}  # a new dict: never mutate
        return self

    # -- data --------------------------------------------------------------------------
    def _inputs(self, X: Any, reset: bool) -> np.ndarray:
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        return _as_spec_input(X, self.spec)

    def _fit(self, X: Any, targets: np.ndarray) -> None:
        x = self._inputs(X, reset=True)
        self.fitted_ = fit(_model(self.spec), x, targets, kernel=self.kernel, t=self.t,
                           diag_reg=self.diag_reg, params=self.params)

    def _mean(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "fitted_")
        return np.asarray(self.fitted_.predict(self._inputs(X, reset=False)))

    # A fitted estimator holds the compiled model (a module with numba functions): pickle
    # the rest and load the model again from the spec.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "fitted_" in state:
            fitted = state.pop("fitted_")
            state["_fitted_state"] = {k: v for k, v in vars(fitted).items() if k != "model"}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fitted = state.pop("_fitted_state", None)
        self.__dict__.update(state)
        if fitted is not None:
            from .predict.fit import FittedModel

            self.fitted_ = FittedModel(model=_model(self.spec), **fitted)


class NTKRegressor(RegressorMixin, _NTKEstimator):
    """Kernel regression with a network's NTK (or NNGP): ntkc.predict.fit as an estimator.

    spec: a .ntk file (default: a ReLU MLP with an open input size); kernel: "ntk" or
    "nngp"; t: training time (None: infinite); diag_reg: relative diagonal regulariser
    (Neural Tangents' convention); params: the spec's params (or ``params__<name>``)."""

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y (n, C): C outputs, K ⊗ I
        return tags

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=[np.float64, np.float32])
        self._fit(X, np.asarray(y, dtype=np.float64))
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self._mean(X)


class NTKClassifier(ClassifierMixin, _NTKEstimator):
    """Classification by regression on one-hot targets, centred (each row sums to 0, as in
    Neural Tangents' examples), predicting the class of the largest posterior mean.

    There is no predict_proba: the posterior mean of a regression on one-hot targets is
    not a probability (it leaves [0, 1]); decision_function returns it."""

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.binarizer_ = LabelBinarizer().fit(y)
        self.classes_ = self.binarizer_.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"NTKClassifier needs samples of at least 2 classes, got 1 class "
                             f"({self.classes_[0]!r})")
        onehot = (y[:, None] == self.classes_[None, :]).astype(np.float64)
        self._fit(X, onehot - 1.0 / len(self.classes_))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        scores = self._mean(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self._mean(X)  # first: it raises NotFittedError before classes_ is read
        return self.classes_[np.argmax(scores, axis=1)]


class Kernel(gp_kernels.Kernel):
    """A network's NNGP (``get="nngp"``) or NTK as a scikit-learn GP kernel.

    Its hyperparameters are the spec's positive params (``params`` overrides their
    defaults; others stay fixed), optimised on a log scale within ``param_bounds``, as
    scikit-learn's kernels are; the
    gradient is exact (ntkc.semantics.tangent), so GaussianProcessRegressor's L-BFGS
    needs no finite differences. Rows of X are reshaped to the spec's input."""

    def __init__(self, spec: str | Path | None = None, get: str = "nngp",
                 params: dict[str, float] | None = None,
                 param_bounds: tuple[float, float] = (1e-5, 1e5)) -> None:
        self.spec = spec
        self.get = get
        self.params = params
        self.param_bounds = param_bounds

    def _values(self) -> dict[str, float]:
        return {**_model(self.spec).params, **(self.params or {})}

    # the spec's params are hyperparameters: get/set them by name (theta reads them so)
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = {"spec": self.spec, "get": self.get, "params": self.params,
               "param_bounds": self.param_bounds}
        if deep:
            out.update(self._values())
        return out

    def set_params(self, **values: Any) -> Kernel:
        spec_values = {k: v for k, v in values.items() if k in _model(self.spec).params}
        for k, v in values.items():
            if k not in spec_values:
                setattr(self, k, v)
        if spec_values:
            self.params = {**(self.params or {}), **{k: float(v) for k, v in spec_values.items()}}
        return self

    @property
    def hyperparameters(self) -> list[gp_kernels.Hyperparameter]:
        # on a log scale, so a param that is not positive is held fixed at its value
        return [gp_kernels.Hyperparameter(name, "numeric", self.param_bounds, fixed=value <= 0)
                for name, value in self._values().items()]

    def _inputs(self, X: Any) -> np.ndarray:
        return _as_spec_input(np.asarray(X, dtype=np.float64), self.spec)

    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False) -> Any:
        model, values = _model(self.spec), self._values()
        x1 = self._inputs(X)
        x2 = None if Y is None else self._inputs(Y)
        if not eval_gradient:
            return model.kernel(x1, x2, get=self.get, params=values)
        if Y is not None:
            raise ValueError("the gradient is only available for Y=None (scikit-learn's rule)")
        names = [h.name for h in self.hyperparameters if not h.fixed]
        if not names:
            return model.kernel(x1, get=self.get, params=values), np.empty((len(x1),) * 2 + (0,))
        k, grads = model.kernel(x1, get=self.get, params=values, grad=tuple(names))
        # theta is log(value): dK/dlog θ = θ·dK/dθ
        gradient = np.stack([values[n] * grads[n] for n in names], axis=-1)
        return k, gradient

    def diag(self, X: Any) -> np.ndarray:
        # K(x, x) per row: one row against itself at a time keeps it O(n) in memory
        x = self._inputs(X)
        model, values = _model(self.spec), self._values()
        return np.array([model.kernel(x[i:i + 1], get=self.get, params=values)[0, 0]
                         for i in range(len(x))])

    def is_stationary(self) -> bool:
        return False

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v:.3g}" for k, v in self._values().items())
        return f"ntkc.Kernel({self.get}, {values})"
