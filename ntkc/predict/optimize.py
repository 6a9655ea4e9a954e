"""Hyperparameters by marginal likelihood: the spec's params and diag_reg, fitted with
scipy's L-BFGS-B on the exact gradient of the negative log marginal likelihood.

    NLL = ½ Σ_c y_cᵀ A⁻¹ y_c + ½ C log det A + ½ N C log 2π,   A = K + r·tr(K)/N·I
    ∂NLL = ½ (C tr(A⁻¹ ∂A) − Σ_c α_cᵀ ∂A α_c),                 α = A⁻¹ Y

with ∂K by each param from the kernels' tangents (Model.kernel(grad=...)), in the same
fused pass as K. A param whose value is positive (the stds) and diag_reg are optimised
on a log scale, so they stay positive; any other param on its own scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize

DIAG_REG = "diag_reg"
DIAG_REG_RANGE = (1e-8, 1e2)


@dataclass(frozen=True)
class Optimized:
    """Result of :func:`optimize_hyperparameters`: the params and diag_reg found, and the
    negative log marginal likelihood at the start and at the end."""

    params: dict[str, float]
    diag_reg: float
    nll_start: float
    nll: float
    iterations: int


def nll_and_gradient(k: np.ndarray, dks: Sequence[np.ndarray], y: np.ndarray, diag_reg: float,
                     absolute: bool) -> tuple[float, np.ndarray, float]:
    """(NLL, ∂NLL by each of dks' params, ∂NLL/∂diag_reg) of targets y (N, C) under
    N(0, K + r I) (r = diag_reg, relative to the mean diagonal unless absolute)."""
    n, c = y.shape
    scale = 1.0 if absolute else np.trace(k) / n
    a = k + diag_reg * scale * np.eye(n)
    factor = scipy.linalg.cho_factor(a, lower=True)
    alpha = scipy.linalg.cho_solve(factor, y)
    inverse = scipy.linalg.cho_solve(factor, np.eye(n))
    nll = (0.5 * np.sum(y * alpha) + c * np.sum(np.log(np.diag(factor[0])))
           + 0.5 * n * c * np.log(2 * np.pi))
    outer = c * inverse - alpha @ alpha.T  # ∂NLL = ½ Σ_ij outer_ij ∂A_ij

    def along(da: np.ndarray) -> float:
        return 0.5 * float(np.sum(outer * da))

    grads = []
    for dk in dks:
        shift = 0.0 if absolute else diag_reg * np.trace(dk) / n  # r·tr(∂K)/N on the diagonal
        grads.append(along(dk) + 0.5 * shift * float(np.trace(outer)))
    return float(nll), np.array(grads), 0.5 * scale * float(np.trace(outer))


def optimize_hyperparameters(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    kernel: str = "nngp",
    diag_reg: float = 1e-2,
    diag_reg_absolute_scale: bool = False,
    params: Mapping[str, float] | None = None,
    max_iterations: int = 100,
) -> Optimized:
    """Minimise the NLL of y over the named params (and ``"diag_reg"`` if named), from
    the spec's defaults overridden by ``params`` and from ``diag_reg``."""
    values = {**model.params, **(params or {})}
    unknown = [n for n in names if n != DIAG_REG and n not in values]
    if not names or unknown:
        raise ValueError(f"optimize: name the spec's params ({', '.join(values)}) and/or "
                         f"'{DIAG_REG}'; got {list(names)}")
    if diag_reg <= 0 and DIAG_REG in names:
        raise ValueError("optimize diag_reg from a positive start: pass diag_reg > 0")
    spec_names = [n for n in names if n != DIAG_REG]
    logs = [values[n] > 0 for n in spec_names] + ([True] if DIAG_REG in names else [])
    start = [values[n] for n in spec_names] + ([diag_reg] if DIAG_REG in names else [])
    z0 = np.array([np.log(v) if lg else v for v, lg in zip(start, logs)])

    def unpack(z: np.ndarray) -> tuple[dict[str, float], float]:
        v = [float(np.exp(a)) if lg else float(a) for a, lg in zip(z, logs)]
        return {**values, **dict(zip(spec_names, v))}, (v[-1] if DIAG_REG in names else
                                                         diag_reg)

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        p, r = unpack(z)
        if spec_names:
            k, grads = model.kernel(x, get=kernel, params=p, grad=tuple(spec_names))
            dks = [grads[n] for n in spec_names]
        else:
            k, dks = model.kernel(x, get=kernel, params=p), []
        try:
            nll, g, g_reg = nll_and_gradient(k, dks, y, r, diag_reg_absolute_scale)
        except np.linalg.LinAlgError:  # not positive definite: a wall for the line search
            return np.inf, np.zeros_like(z)
        g = list(g) + ([g_reg] if DIAG_REG in names else [])
        # chain rule of the log scale: ∂/∂log v = v·∂/∂v
        v = [np.exp(a) if lg else 1.0 for a, lg in zip(z, logs)]
        return nll, np.array(g) * np.array(v)

    # diag_reg within [1e-8, 1e2] (log scale): with a positive definite K the likelihood
    # can keep rising as it vanishes, which leaves a solve that rounding alone regularises
    bounds = [(None, None)] * len(spec_names) + (
        [(np.log(DIAG_REG_RANGE[0]), np.log(DIAG_REG_RANGE[1]))] if DIAG_REG in names else [])
    z0 = np.clip(z0, [lo if lo is not None else -np.inf for lo, _ in bounds],
                 [hi if hi is not None else np.inf for _, hi in bounds])
    nll_start = objective(z0)[0]
    result = scipy.optimize.minimize(objective, z0, jac=True, method="L-BFGS-B",
                                     bounds=bounds, options={"maxiter": max_iterations})
    p, r = unpack(result.x)
    best = min(result.fun, nll_start)
    if result.fun > nll_start:  # never worse than where it started
        p, r = unpack(z0)
    return Optimized({n: p[n] for n in values}, r, float(nll_start), float(best),
                     int(result.nit))
