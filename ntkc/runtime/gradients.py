"""Kernels with their derivatives by the spec's params: ``Model.kernel(..., grad=("w",))``.

The derivatives come from a second module compiled from the same spec with tangents
(ntkc.semantics.tangent: forward mode through the recursion, in the same fused pair
pass as the values). It is compiled on the first call that asks for gradients and
cached like any module. Its quadratures run at twice the spec module's degree: the
derivative integrands (f'', f'·g') are rougher than f·g and need finer nodes for the
run-time guard's 1e-6.
"""

from __future__ import annotations

import collections
from types import ModuleType
from typing import Any

import numpy as np

from ..compiler import Compiled, compile_text


def grad_source(compiled: Compiled, quad_degree: int) -> str:
    """The source of the spec's module with tangents (CPU kernels only)."""
    prog = compiled.program
    return compile_text(prog.source, prog.filename, quad_degree=2 * quad_degree,
                        target="cpu", grad=True).source


def kernel_with_grad(module: ModuleType, x1: Any, x2: Any, get: Any, params: Any, grad: Any,
                     backend: str, memory: int) -> tuple[Any, dict[str, Any]]:
    """(kernels, {param: kernels' derivatives by it}), each in the shape ``get`` asks;
    module: the module with tangents (grad_source); memory: the bytes available."""
    wanted = (grad,) if isinstance(grad, str) else tuple(grad)
    unknown = [g for g in wanted if g not in module.GRAD_PARAMS]
    if not wanted or unknown:
        raise ValueError(f"grad: the spec's params are "
                         f"{', '.join(module.GRAD_PARAMS) or 'none'}; got {grad!r}")
    names = (get,) if isinstance(get, str) else tuple(get)
    x1 = np.asarray(x1)
    n2 = len(x1) if x2 is None else len(np.asarray(x2))
    need = (2 + 2 * len(module.GRAD_PARAMS)) * len(x1) * n2 * 8
    if need > memory:
        raise MemoryError(f"kernels with gradients of {len(x1)}×{n2} inputs need "
                          f"{need / 2**30:.1f} GiB: pass x2 in blocks of rows")
    values, d = module.kernel(x1, x2, ("nngp", "ntk"), params, backend, "cpu", grad=True)
    kernels = collections.namedtuple("Kernels", names)
    by_name = dict(zip(("nngp", "ntk"), values))
    grads = {}
    for name in wanted:
        k = module.GRAD_PARAMS.index(name)
        parts = dict(zip(("nngp", "ntk"), d[k]))
        grads[name] = parts[get] if isinstance(get, str) else kernels(*(parts[n] for n in names))
    out = by_name[get] if isinstance(get, str) else kernels(*(by_name[n] for n in names))
    return out, grads
