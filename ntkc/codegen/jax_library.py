"""The fixed part of every finite-width module (``ntkc compile --target jax``): spec
params and widths, input checks, parameter draws and the empirical kernels. The text
below the marker is pasted into each module by ntkc.codegen.jax_target, after the
module's imports; ntkc itself never imports this file (jax is an optional dependency).

What depends on the network (its tables, the line-by-line init and apply) is printed by
jax_target and passed to these functions as arguments.
"""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np

# --- module text below: pasted into the generated modules -----------------------------


def _spec_params(defaults, given):
    # the spec's params: its defaults, with `given` (a dict name -> value) over them
    out = dict(defaults)
    for name, value in (given or {}).items():
        if name not in out:
            known = ", ".join(sorted(out)) or "none"
            raise ValueError(f"unknown param {name!r} (this network's params: {known})")
        if isinstance(value, jax.Array) and not isinstance(value, np.ndarray):
            out[name] = value  # traced (jit, grad or vmap over a param): taken as it is
            continue
        if isinstance(value, bool) or not np.isscalar(value) or not np.isrealobj(value) \
                or not np.isfinite(value):
            raise ValueError(f"param {name!r} must be a finite real number, got {value!r}")
        out[name] = float(value)
    return out


def _widths(width, declared, tied, output):
    # The width of every line whose width init chooses (declared: those lines, with the
    # spec's width= or None). An int: every hidden line gets it, the output line its
    # width= or 1. A dict line -> width: lines it leaves out keep the spec's width=.
    # tied: lines whose width is another line's (summed with it) or a fixed number.
    if isinstance(width, dict):
        unknown = sorted(set(width) - set(declared))
        if unknown:
            raise ValueError(f"width: no line {unknown[0]!r} with a width to choose (those "
                             f"are {', '.join(declared) or 'none'})")
    elif isinstance(width, bool) or not isinstance(width, (int, np.integer)):
        raise TypeError(f"width must be an int or a dict line -> int, got {width!r}")
    out = {}
    for line in declared:
        if line in tied:
            continue
        group = [line] + [n for n, t in tied.items() if t == line]
        if isinstance(width, dict):
            chosen = {width[n] for n in group if n in width}
            chosen = chosen or {declared[n] for n in group if declared[n] is not None}
            if len(chosen) != 1:
                what = "no width is given for" if not chosen else "different widths for"
                raise ValueError(f"width: {what} {' + '.join(group)} (summed lines share "
                                 "one width)")
            out[line] = chosen.pop()
        elif group == [output]:
            out[line] = declared[output] or 1
        else:
            out[line] = width
    for line, t in tied.items():
        out[line] = t if isinstance(t, int) else out[t]
        if isinstance(width, dict) and line in width and width[line] != out[line]:
            raise ValueError(f"width: {line!r} is summed with a line of width {out[line]}")
    for line, n in out.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"width of {line!r} must be a positive int, got {n!r}")
    return {line: int(n) for line, n in out.items()}


def _draws(key, shapes):
    # N(0, 1) arrays of these shapes from a jax PRNG key (or an int seed), cut from one
    # draw: one random-bits computation instead of one per array (jit compiles init ~3x
    # faster); a network depends only on its key and its widths
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.PRNGKey(key)
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),))
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def _input_size(input_size, shape):
    # the input's channels: the spec's, or, when it leaves them open (vector[*]), the
    # size given (the data's)
    if shape[-1] is None:
        if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) \
                or input_size < 1:
            raise ValueError("the spec leaves the input size open (vector[*]): give "
                             f"input_size=d, a positive int, got {input_size!r}")
        return int(input_size)
    if input_size is not None and input_size != shape[-1]:
        raise ValueError(f"input_size={input_size!r}, but the spec's input has {shape[-1]}")
    return shape[-1]


def _inputs(x, shape):
    # channels last: (n, d), (n, L, C) or (n, H, W, C), as the kernels' modules take them;
    # None: an open size (vector[*])
    x = jnp.asarray(x)
    if x.ndim != 1 + len(shape) or any(s not in (None, t) for s, t in zip(shape, x.shape[1:])):
        want = ", ".join("d" if s is None else str(s) for s in shape)
        raise ValueError(f"expected inputs of shape (n, {want}), got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _gets(get):
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(g not in ("nngp", "ntk") for g in names):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    return names


# Above this many bytes the Jacobians are not stored: the NTK is built one column at a
# time from vector-Jacobian and Jacobian-vector products instead.
_JACOBIAN_BYTES = 2**28


def _line_keys(key, count, lines):
    # a key of its own for each line that draws at every call (dropout)
    if key is None:
        raise ValueError(f"{', '.join(lines)} draw at every call: apply needs key=")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.PRNGKey(key)
    return jax.random.split(key, count)


def _ntk(f1, f2, params):
    # Σ_θ ∂f_k(x1)/∂θ ∂f_k(x2)/∂θ averaged over the output units k; f2 None: x2 is x1
    out2 = jax.eval_shape(f1 if f2 is None else f2, params)  # shapes only: no pass yet
    n2, k = out2.shape
    n1 = n2 if f2 is None else jax.eval_shape(f1, params).shape[0]
    size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    if (n1 + n2) * k * size * out2.dtype.itemsize <= _JACOBIAN_BYTES:
        j1 = jax.jacrev(f1)(params)
        j2 = j1 if f2 is None else jax.jacrev(f2)(params)
        terms = [jnp.einsum("ika,jka->ij", a.reshape(n1, k, -1), b.reshape(n2, k, -1))
                 for a, b in zip(jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2))]
        return sum(terms) / k

    _, pullback = jax.vjp(f1 if f2 is None else f2, params)

    def column(cotangent):  # Θ against one output unit at one point of x2
        (tangent,) = pullback(cotangent)
        return jax.jvp(f1, (params,), (tangent,))[1]

    units = jnp.eye(n2 * k, dtype=out2.dtype).reshape(n2 * k, n2, k)
    cols = jax.lax.map(column, units).reshape(n2, k, n1, k)
    return jnp.einsum("jkik->ij", cols) / k


def _empirical_kernel(apply, params, x1, x2, get, spec_params, key):
    names = _gets(get)
    key2 = None if key is None or x2 is None else jax.random.fold_in(
        jax.random.PRNGKey(key) if isinstance(key, (int, np.integer)) else key, 1)

    def f1(p):
        return apply(p, x1, spec_params, key)

    f2 = None if x2 is None else (lambda p: apply(p, x2, spec_params, key2))
    out = {}
    if "nngp" in names:
        a = f1(params)
        b = a if f2 is None else f2(params)
        out["nngp"] = a @ b.T / a.shape[-1]
    if "ntk" in names:
        out["ntk"] = _ntk(f1, f2, params)
    if isinstance(get, str):
        return out[get]
    return collections.namedtuple("Kernels", names)(*(out[n] for n in names))
