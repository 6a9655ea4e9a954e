"""An independent numeric evaluator of a program's NNGP and NTK: the test oracle.

ntkc derives a symbolic recursion per pair of inputs, decides per array which
position pairs it needs (the structure pass), hoists per-input roots, pairs
quantities at x with their twins at x', and prints loops. Each of those steps
can go wrong without the rules being wrong. This oracle shares none of them:
it stacks all inputs and keeps, for every pair of lines, the whole joint
covariance over (input, position) × (input, position) as one dense array, and
applies the rules of DESIGN §2 to those arrays with numpy. Window geometry is
recomputed here from the padding conventions, not read from ntkc.semantics.geometry.

What it does share with ntkc: the parser and builder (the program's meaning),
and the closed-form duals E[φ(u)φ(v)] of one nonlinearity of one Gaussian line
(tests/test_duals.py checks those against numerical integrals). Mixed
expectations E[φ(u)ψ(v)] are integrated here by Gauss–Hermite quadrature.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import sympy

from ntkc.frontend import program_from_text
from ntkc.semantics.duals import numeric_phi, numeric_phi_prime
from ntkc.semantics.passes import gaussian_lines
from ntkc.semantics.quadrature import GaussExpectation

LINEAR = ("lincomb", "concat", "layer_norm", "avg_pool", "sum_pool", "global_avg_pool",
          "global_sum_pool", "flatten", "dropout")
_K11, _K12, _K22 = sympy.symbols("k11 k12 k22", positive=True)


def _axis_taps(n: int, f: int, s: int, padding: str) -> list[list[int]]:
    if padding == "valid":
        out, lo = (n - f) // s + 1, 0
    else:
        out = math.ceil(n / s)
        lo = max((out - 1) * s + f - n, 0) // 2
    rows = []
    for o in range(out):
        row = []
        for t in range(f):
            k = o * s + t - lo
            if padding == "circular":
                row.append(k % n)
            else:
                row.append(k if 0 <= k < n else -1)
        rows.append(row)
    return rows


def _taps(spatial, shape, stride, padding) -> np.ndarray:
    axes = [_axis_taps(n, f, s, padding) for n, f, s in zip(spatial, shape, stride)]
    rows = []
    for out in itertools.product(*(range(len(a)) for a in axes)):
        row = []
        for tap in itertools.product(*(range(f) for f in shape)):
            coords = [axes[k][out[k]][tap[k]] for k in range(len(shape))]
            row.append(-1 if min(coords) < 0 else int(np.ravel_multi_index(coords, spatial)))
        rows.append(row)
    return np.array(rows)


def _window_mean(m: np.ndarray, taps: np.ndarray, same_offset: bool) -> np.ndarray:
    """(N, P, N, P) → (N, O, N, O): mean over taps, both sides. same_offset: conv's 𝒜
    (tap t on both sides); else every pair of taps (pools)."""
    n, p = m.shape[0], m.shape[1]
    padded = np.zeros((n, p + 1, n, p + 1))
    padded[:, :p, :, :p] = m
    f = taps.shape[1]
    out = 0.0
    pairs = [(t, t) for t in range(f)] if same_offset else itertools.product(range(f), range(f))
    for s, t in pairs:
        out = out + padded[:, taps[:, s]][:, :, :, taps[:, t]]
    return out / (f if same_offset else f * f)


class Oracle:
    def __init__(self, text: str, x1: np.ndarray, x2: np.ndarray, params=None):
        self.prog = program_from_text(text, "<oracle>")
        values = {p.symbol: float(p.default) for p in self.prog.params.values()}
        for name, v in (params or {}).items():
            values[self.prog.params[name].symbol] = float(v)
        self.values = values
        self.n1 = len(x1)
        z = np.concatenate([x1, x2]).astype(np.float64)
        shape = self.prog.input_shape
        self.z = z.reshape(len(z), max(1, math.prod(shape.spatial)), -1)
        self.memo: dict = {}

    def num(self, e) -> float:
        if e is None:
            return 0.0
        return float(e.xreplace(self.values)) if isinstance(e, sympy.Basic) else float(e)

    def kernels(self) -> dict[str, np.ndarray]:
        out = self.prog.output
        res = {}
        for name, kind in (("nngp", "K"), ("ntk", "T")):
            m = self.cov(kind, out, out)[:, 0, :, 0]
            res[name] = m[: self.n1, self.n1:]
            res[name + "_gram1"] = m[: self.n1, : self.n1]
        return res

    # -- the rules on joint arrays -------------------------------------------------------------
    def cov(self, kind: str, a: str, b: str) -> np.ndarray:
        key = (kind, a, b)
        if key not in self.memo:
            self.memo[key] = self._cov(kind, a, b)
        return self.memo[key]

    def _cov(self, kind, a, b):
        na, nb = self.prog.nodes[a], self.prog.nodes[b]
        linear = LINEAR
        if na.op in linear and (self._opens_first(na, nb) or not self._opens_first(nb, na)):
            return self._linear(kind, na, b)
        if nb.op in linear:
            return self._linear(kind, nb, a).transpose(2, 3, 0, 1)
        if na.op == "product":
            return self._product(kind, na, nb)
        if nb.op == "product":
            return self._product(kind, nb, na).transpose(2, 3, 0, 1)
        if na.op == "input" and nb.op == "input":
            if kind == "T":
                return np.zeros((len(self.z), self.z.shape[1]) * 2)
            return np.einsum("nic,mjc->nimj", self.z, self.z) / self.z.shape[2]
        affine = ("dense", "conv", "conv_local")
        if na.op in affine + ("input",) and nb.op in affine + ("input",):
            if a != b:
                p = (len(self.z), self._positions(a))
                q = (len(self.z), self._positions(b))
                return np.zeros(p + q)
            return self._affine(kind, na)
        if "input" in (na.op, nb.op):
            raise ValueError("a nonlinearity's correlation with the raw input")
        return self._pointwise(kind, na, nb)

    @staticmethod
    def _opens_first(node, other) -> bool:
        """Whether ``node`` is opened before ``other``. A concat pairs its features with
        another concat's (and a flatten its positions with another flatten's), so the
        other side's sums and pools are opened first, until the two meet."""
        if node.op not in LINEAR:
            return False
        if node.op == "dropout" and other.op in LINEAR and other.op != "dropout":
            return False  # the other side may hold this dropout line: it meets itself there
        return not (other.op in LINEAR and node.op in ("concat", "flatten")
                    and other.op != node.op)

    def _positions(self, line: str) -> int:
        return max(1, math.prod(self.prog.nodes[line].shape.spatial))

    def _linear(self, kind, node, other):
        op = node.op
        if op == "lincomb":  # no terms: coefficients that cancel (g - g), the zero line
            zero = np.zeros((len(self.z), self._positions(node.name), len(self.z),
                             self._positions(other)))
            return sum((self.num(c) * self.cov(kind, u, other) for c, u in node.attrs["terms"]),
                       zero)
        if op == "concat":
            mine = self._parts(node)
            o = self.prog.nodes[other]
            if o.op != "concat":  # feature i of the concat is a feature of one part
                return sum((e - s) * self.cov(kind, u, other) for s, e, u in mine)
            # feature i against feature i: parts meet where their intervals overlap
            return sum(max(0.0, min(e1, e2) - max(s1, s2)) * self.cov(kind, u, v)
                       for s1, e1, u in mine for s2, e2, v in self._parts(o))
        (u,) = node.inputs
        if op == "dropout":  # a mask per input, position and feature: kept w.p. rate, / rate
            if other != node.name:
                return self.cov(kind, u, other)
            m = self.cov(kind, u, u).copy()
            n, p = np.arange(m.shape[0])[:, None], np.arange(m.shape[1])[None, :]
            m[n, p, n, p] /= self.num(node.attrs["rate"])
            return m
        if op == "layer_norm":
            var = np.einsum("nini->ni", self.cov("K", u, u))
            if node.attrs["axes"] == "all":  # the mean over positions of one input's variance
                var = np.broadcast_to(var.mean(axis=1, keepdims=True), var.shape)
            return self.cov(kind, u, other) / np.sqrt(var)[:, :, None, None]
        if op == "flatten":
            o = self.prog.nodes[other]
            if o.op != "flatten":
                raise ValueError("flatten against a non-flatten line")
            m = self.cov(kind, u, o.inputs[0])
            return (np.einsum("nimi->nm", m) / m.shape[1])[:, None, :, None]
        m = self.cov(kind, u, other)
        if op in ("global_avg_pool", "global_sum_pool"):
            s = m.sum(axis=1, keepdims=True)
            return s / m.shape[1] if op == "global_avg_pool" else s
        # avg/sum pool: one side at a time, the window mean over its taps
        src = self.prog.nodes[u].shape.spatial
        win = tuple(node.attrs["window"])
        stride = tuple(node.attrs["stride"] or win)
        taps = _taps(src, win, stride, node.attrs["padding"])
        padded = np.concatenate([m, np.zeros_like(m[:, :1])], axis=1)
        out = sum(padded[:, taps[:, t]] for t in range(taps.shape[1]))
        return out / taps.shape[1] if op == "avg_pool" else out

    def _product(self, kind, node, other):
        """E[a b v'] of p = a * b in the cases ntkc accepts (rules/product.py proves them):
        two products of Gaussian lines (Isserlis), a product of independent lines with
        itself, and 0 against a line that is no product."""
        a, b = node.inputs
        if other.op != "product":
            return np.zeros((len(self.z), self._positions(node.name), len(self.z),
                             self._positions(other.name)))
        c, d = other.inputs
        K = functools.partial(self.cov, "K")
        if kind == "T":  # ∂p = b ∂a + a ∂b
            T = functools.partial(self.cov, "T")
            return T(a, c) * K(b, d) + T(a, d) * K(b, c) + T(b, c) * K(a, d) + T(b, d) * K(a, c)
        out = K(a, c) * K(b, d)
        if all(gaussian_lines(self.prog)[u] for u in (a, b, c, d)):
            same = np.einsum("nini->ni", K(a, b)), np.einsum("nini->ni", K(c, d))
            out = out + K(a, d) * K(b, c) + same[0][:, :, None, None] * same[1][None, None]
        return out

    def _parts(self, node) -> list[tuple[float, float, str]]:
        """A concat's parts as sub-intervals of [0, 1], sized by their widths."""
        widths = [self.prog.nodes[u].shape.channels for u in node.inputs]
        widths = [1] * len(widths) if None in widths else widths
        edges = np.cumsum([0, *widths]) / sum(widths)
        return [(edges[k], edges[k + 1], u) for k, u in enumerate(node.inputs)]

    def _affine(self, kind, node):
        (h,) = node.inputs
        w = self.num(node.attrs["w_std"])
        b = node.attrs["b_std"]
        bias = self.num(b) ** 2 if b is not None else 0.0
        hshape = self.prog.nodes[h].shape
        one = 1.0  # where a bias adds: everywhere, or (conv_local) on same positions only
        if node.op in ("conv", "conv_local"):
            filt = tuple(node.attrs["filter"])
            stride = tuple(node.attrs["stride"] or (1,) * len(filt))
            taps = _taps(hshape.spatial, filt, stride, node.attrs["padding"])
            if node.op == "conv_local":  # own weights per position: independent positions
                one = np.eye(len(taps))[None, :, None, :]

            def lin(m):
                return _window_mean(m, taps, same_offset=True) * one
            fan_in = (hshape.channels or 0) * taps.shape[1]
        else:
            def lin(m):
                return m
            fan_in = hshape.channels or 0
        k = w * w * lin(self.cov("K", h, h)) + bias * one
        if kind == "K":
            return k
        theta_h = w * w * lin(self.cov("T", h, h))
        if self.prog.parameterization == "ntk":
            return k + theta_h
        return (fan_in * lin(self.cov("K", h, h)) + (1.0 if b is not None else 0.0) * one
                + theta_h)

    def _activation(self, node):
        if node.op == "nonlin":
            return node.attrs["dual"], node.inputs[0], node.attrs["key"]
        return None, node.name, ("identity",)

    def _pointwise(self, kind, na, nb):
        da, u, ka = self._activation(na)
        db, v, kb = self._activation(nb)
        k12 = self.cov("K", u, v)
        k11 = np.einsum("nini->ni", self.cov("K", u, u))[:, :, None, None]
        k22 = np.einsum("nini->ni", self.cov("K", v, v))[None, None, :, :]
        k11, k22 = np.broadcast_to(k11, k12.shape), np.broadcast_to(k22, k12.shape)
        deriv = kind == "T"
        closed = da is not None and not da.nngp(_K11, _K12, _K22).atoms(GaussExpectation)
        if ka == kb and u == v and closed:
            e = self._closed(da, deriv, k11, k12, k22, same_line=True)
        else:
            e = self._quadrature(da, db, deriv, k11, k12, k22)
        return e * self.cov("T", u, v) if deriv else e

    def _closed(self, dual, deriv, k11, k12, k22, same_line):
        fn = dual.ntk_factor if deriv else dual.nngp
        pair = sympy.lambdify((_K11, _K12, _K22), fn(_K11, _K12, _K22).xreplace(self.values),
                              "numpy")
        var = (sympy.lambdify((_K11,), dual.ntk_factor(_K11, _K11, _K11).xreplace(self.values))
               if deriv else sympy.lambdify((_K11,), dual.variance(_K11).xreplace(self.values)))
        with np.errstate(all="ignore"):
            out = np.broadcast_to(np.asarray(pair(k11, k12, k22), float), k12.shape).copy()
        n, p = k12.shape[:2]
        idx = np.arange(n)[:, None], np.arange(p)[None, :]
        # same input, same position: the exact per-input formula (correlation 1)
        out[idx[0], idx[1], idx[0], idx[1]] = np.vectorize(lambda k: float(var(k)))(
            k11[idx[0], idx[1], idx[0], idx[1]])
        return out

    def _quadrature(self, da, db, deriv, k11, k12, k22):
        """E[φ(u)ψ(v)] (or of φ', ψ') in polar coordinates: with ρ = cos α,
        u = √k11·r·cos θ and v = √k22·r·cos(θ − α). Kinks at u = 0 or v = 0 (relu, abs,
        sign, ...) lie on four rays; Gauss–Legendre on each arc between them and on
        r ∈ [0, 10] (the weight r·e^{−r²/2} in the integrand) converges geometrically for
        functions smooth away from 0."""
        def fn(d):
            if d is None:
                return (lambda z: np.ones_like(z)) if deriv else (lambda z: z)
            d = dataclasses.replace(d, phi=lambda z, phi=d.phi: phi(z).xreplace(self.values))
            f = numeric_phi_prime(d) if deriv else numeric_phi(d)
            return lambda z: np.asarray(f(z), float) * np.ones_like(z)
        fa, fb = fn(da), fn(db)
        xt, wt = np.polynomial.legendre.leggauss(24)
        xr, wr = np.polynomial.legendre.leggauss(64)
        r = 5.0 * (xr + 1)
        wr = 5.0 * wr * r * np.exp(-r * r / 2)
        shape = k12.shape
        k11, k12, k22 = (np.maximum(a, 0).ravel() if a is not k12 else a.ravel()
                         for a in (k11, k12, k22))
        sa, sb = np.sqrt(k11), np.sqrt(k22)
        with np.errstate(all="ignore"):
            rho = np.where(sa * sb > 0, k12 / (sa * sb), 0.0)
        alpha = np.arccos(np.clip(rho, -1, 1))
        rays = np.sort(np.stack([np.full_like(alpha, np.pi / 2), np.full_like(alpha, 1.5 * np.pi),
                                 (alpha + np.pi / 2) % (2 * np.pi),
                                 (alpha + 1.5 * np.pi) % (2 * np.pi)], axis=-1), axis=-1)
        lo = rays
        hi = np.concatenate([rays[:, 1:], rays[:, :1] + 2 * np.pi], axis=1)
        out = np.empty(len(alpha))
        for c in range(0, len(alpha), 64):
            sl = slice(c, c + 64)
            half = (hi[sl] - lo[sl])[:, :, None] / 2  # (e, arcs, 1)
            theta = lo[sl][:, :, None] + half * (xt + 1)  # (e, arcs, nt)
            wth = half * wt
            cu = np.cos(theta)[..., None] * r  # (e, arcs, nt, nr)
            cv = np.cos(theta - alpha[sl, None, None])[..., None] * r
            vals = fa(sa[sl, None, None, None] * cu) * fb(sb[sl, None, None, None] * cv)
            out[sl] = np.einsum("eatr,eat,r->e", vals, wth, wr) / (2 * np.pi)
        return out.reshape(shape)


def oracle_kernels(spec_text: str, x1: np.ndarray, x2: np.ndarray,
                   params: dict | None = None) -> dict[str, np.ndarray]:
    """NNGP and NTK of the program between x1 and x2 (and the Grams of x1, "*_gram1")."""
    return Oracle(spec_text, x1, x2, params).kernels()
