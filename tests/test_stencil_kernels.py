"""The compiled stencils (ntkc.codegen.stencil_kernels), called as the generated modules
call them, against sums over tap tables built independently (tests/oracle.py's
``_taps``: itertools over per-axis taps, not the compact geometry). Every padding,
strides 1–3, 1-D and 2-D, odd and even windows, float64 and float32. Sums of at most
81 products of O(1) numbers: float64 agrees to 1e-13, float32 to 1e-5 (a few ulps of
2⁻²⁴ per add, relative to the largest entry)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from oracle import _taps

from ntkc.codegen.stencil_kernels import (
    _conv_diag,
    _conv_diag_entry,
    _conv_entry,
    _conv_full_rows,
    _pool_diag,
    _pool_entry,
    _pool_full,
)
from ntkc.semantics.geometry import window

CASES = [((5,), (3,), (1,)), ((7,), (2,), (2,)), ((4, 5), (3, 3), (1, 1)),
         ((6, 5), (2, 3), (2, 1)), ((5, 4), (3, 2), (3, 2)), ((3, 3), (3, 3), (1, 1))]


def _reference(k, taps, same_offset):
    """(P_out, P_out) window sums of a (P, P) array through a tap table."""
    p = k.shape[0]
    padded = np.zeros((p + 1, p + 1))
    padded[:p, :p] = k
    f = taps.shape[1]
    pairs = [(t, t) for t in range(f)] if same_offset else itertools.product(range(f), range(f))
    return sum(padded[taps[:, s][:, None], taps[:, t][None, :]] for s, t in pairs)


def _case(spatial, shape, stride, padding, seed):
    """(geometry, P_out, P_in, a random P_in×P_in array, its conv 𝒜 and pool sums through
    the independent tap table), or a skip where the window does not fit."""
    try:
        win = window(spatial, shape, stride, padding)
    except ValueError:
        pytest.skip("the window does not fit")
    taps = _taps(spatial, shape, stride, padding)
    q = int(np.prod(spatial))
    k = np.random.default_rng(seed).standard_normal((q, q))
    return (win.geometry, win.taps.shape[0], q, k, _reference(k, taps, True),
            _reference(k, taps, False))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("spatial,shape,stride", CASES)
def test_stencils_match_tap_tables(spatial, shape, stride, padding, dtype, tol):
    g, p, q, k, conv, pool = _case(spatial, shape, stride, padding, seed=0)
    scale = 0.5
    off = 3  # arrays at an offset inside a larger scratch, as in the modules
    src = np.concatenate([np.full(off, np.nan), k.ravel(), np.full(off, np.nan)]).astype(dtype)
    conv, pool = conv * scale, pool * scale
    top = np.abs(pool).max()

    dst = np.full(off + p * p, np.nan, dtype)
    tmp = np.full(max(3 * q, g[1] * g[2] * g[1] + g[5] * p), np.nan, dtype)
    for xlo, xhi in ((0, g[3]), (0, 1), (1, g[3])):  # whole rows, and blocks of them
        dst[:] = np.nan
        for oy in range(g[2]):
            _conv_full_rows(src, off, dst, off, tmp, g, oy, xlo, xhi, scale)
        got = dst[off:].reshape(g[2], g[3], p)[:, xlo:xhi]
        want = conv.reshape(g[2], g[3], p)[:, xlo:xhi]
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * top)

    _pool_full(src, off, dst, off, tmp, g, scale)
    np.testing.assert_allclose(dst[off:].reshape(p, p), pool, rtol=0, atol=tol * top)

    # diagonals: of a stored diagonal (step 1) and of the full array (step P + 1)
    diag = np.concatenate([np.full(off, np.nan), np.diag(k)]).astype(dtype)
    out = np.full(off + p, np.nan, dtype)
    _conv_diag(diag, off, 1, out, off, tmp, g, scale)
    np.testing.assert_allclose(out[off:], np.diag(conv), rtol=0, atol=tol * top)
    _conv_diag(src, off, q + 1, out, off, tmp, g, scale)
    np.testing.assert_allclose(out[off:], np.diag(conv), rtol=0, atol=tol * top)
    _pool_diag(src, off, out, off, g, scale)
    np.testing.assert_allclose(out[off:], np.diag(pool), rtol=0, atol=tol * top)


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("spatial,shape,stride", CASES[:4])
def test_gpu_entries_match_tap_tables(spatial, shape, stride, padding):
    """The per-entry functions the GPU kernel compiles as device functions, run here as
    plain Python on the same checks."""
    g, p, q, k, conv, pool = _case(spatial, shape, stride, padding, seed=1)
    src = np.concatenate([[np.nan] * 2, k.ravel()])
    got = np.array([[_conv_entry(src, 2, g, a, b) for b in range(p)] for a in range(p)])
    np.testing.assert_allclose(got, conv, rtol=0, atol=1e-13 * np.abs(pool).max())
    got = np.array([[_pool_entry(src, 2, g, a, b) for b in range(p)] for a in range(p)])
    np.testing.assert_allclose(got, pool, rtol=0, atol=1e-13 * np.abs(pool).max())
    got = np.array([_conv_diag_entry(src, 2, q + 1, g, a) for a in range(p)])
    np.testing.assert_allclose(got, np.diag(conv), rtol=0, atol=1e-13 * np.abs(pool).max())
