"""Monte Carlo kernels of finite networks: the average of the empirical kernels of
independently initialised networks of a spec (its jax module, ``ntkc compile --target
jax``; ``Model.finite()`` compiles and caches it). As the width grows they converge to
the analytic kernels, with an error that falls like width^-1/2 (DESIGN §8).

jax is imported only by the functions here, when they run: it is an optional dependency
(``pip install "ntkc[finite]"``). Results are float64 numpy arrays; the networks run in
jax's default precision (float32 unless ``jax.config.update("jax_enable_x64", True)``).
"""

from __future__ import annotations

import collections
from types import ModuleType
from typing import Any

import numpy as np


def _names(get: str | tuple[str, ...]) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    return names


def sample_kernels(
    module: ModuleType,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    width: int | dict[str, int] = 512,
    n_samples: int = 16,
    seed: int = 0,
    get: str | tuple[str, ...] = ("nngp", "ntk"),
    params: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """The empirical kernels of n_samples networks, one per key split from ``seed``:
    {name: (n_samples, n1, n2) array}. width and params as the module's init and apply
    take them (``width``: an int for every hidden line, or a dict line -> width)."""
    import jax

    names = _names(get)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
            or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    x1 = np.asarray(x1)
    symmetric = x2 is None

    def one(key, a, b):
        draw, masks = jax.random.split(key)  # masks: dropout's, drawn at every apply
        p = module.init(draw, width, params, x1.shape[-1])  # the data's size, if open
        return tuple(module.empirical_kernel(p, a, None if symmetric else b, names, params,
                                             masks))

    # One compiled program for every sample (lax.map runs them in turn: the memory of one).
    run = jax.jit(lambda keys, a, b: jax.lax.map(lambda k: one(k, a, b), keys))
    keys = jax.random.split(jax.random.PRNGKey(seed), int(n_samples))
    out = run(keys, x1, x1 if symmetric else np.asarray(x2))
    return {n: np.asarray(o, dtype=np.float64) for n, o in zip(names, out)}


def monte_carlo_kernel(
    module: ModuleType,
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    width: int | dict[str, int] = 512,
    n_samples: int = 16,
    seed: int = 0,
    get: str | tuple[str, ...] = ("nngp", "ntk"),
    params: dict[str, float] | None = None,
) -> Any:
    """The mean of the empirical kernels over n_samples networks (sample_kernels): one
    array when get is a string, else a namedtuple (.nngp, .ntk), as Model.kernel."""
    samples = sample_kernels(module, x1, x2, width, n_samples, seed, get, params)
    means = {n: s.mean(axis=0) for n, s in samples.items()}
    if isinstance(get, str):
        return means[get]
    return collections.namedtuple("Kernels", tuple(means))(*means.values())
