"""The polar rule: Gaussian expectations of integrands whose kinks are all at 0.

The trapezoidal rule of ntkc.semantics.quadrature converges only like h² (~3e-3) across a kink
or a step, so relu·erf, abs·z², sign·tanh... would be refused by its guard. When every
non-smooth point of f and g is at z = 0 (Max/Min of functions whose differences are
c·z^p, Abs, sign, Heaviside, DiracDelta and Piecewise conditions of that form), write
the standard 2-D normal in polar coordinates (r, θ), with α = arccos ρ:

    u = sqrt(k11)·r·cos θ,   v = sqrt(k22)·r·cos(θ − α),
    E[f(u) g(v)] = (1/2π) ∫_0^{2π} ∫_0^∞ f(u) g(v) r e^{−r²/2} dr dθ.

f(u) switches at θ = ±π/2 and g(v) at θ = α ± π/2: between these angles lie four arcs,
two of length α (u, v of opposite signs) and two of length π − α, θ → θ + π maps each
to its opposite (u, v → −u, −v), and inside an arc the integrand is analytic in θ. Each
arc gets Gauss–Legendre, r gets the Gauss rule of the weight r·e^{−r²/2} on [0, ∞)
(exact for polynomials in r of degree < 2·nr): for piecewise polynomials (relu·relu,
relu·z², abs·sign...) the r integral is exact and the θ integral converges
geometrically (to rounding with the default nodes). The 1-D expectations use the
half-range rule E[h(u)] = ½·Σ w_i (h(√k s_i) + h(−√k s_i)), Gauss for e^{−s²/2} on
[0, ∞). The nodes come from a Stieltjes procedure in extended precision on a fine
composite Gauss–Legendre discretisation, refined by Newton (~1e-15 relative).

Symmetry: θ → α − θ maps the rule to itself with k11 ↔ k22 and f ↔ g (each arc onto
an arc, Legendre nodes onto Legendre nodes). The helpers evaluate the four images of a
node pair {x, −x} of the two arcs at once and add them as ((t1 + t2) + (t3 + t4)), the
swapped call as ((t4 + t3) + (t2 + t1)): E_fg(k11, k12, k22) == E_gf(k22, k12, k11) to
the bit. A zero-length arc (ρ = ±1) is skipped, so ρ → 1 is continuous and at ρ = 1 the
rule is a 2-D rule of E[f(u)g(u')], u' = u·sqrt(k22/k11).

Levels: level m (0 to POLAR_LEVELS − 1) serves max(k11, k22) ≤ POLAR_KREF·4^m (the
top level everything above); the θ rule grows by 8 nodes and the r rule 1.5-fold per
level, which keeps smooth factors such as erf(√k·r·cos θ) resolved. The run-time
guard compares level m with level m + 1 (an extra level in the tables).
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import sympy
from sympy.logic.boolalg import BooleanAtom

POLAR_LEVELS = 5  # usable levels; the tables hold one more for the guard
POLAR_KREF = 0.5  # level m serves variances up to POLAR_KREF·4^m

_STEPS = (sympy.Abs, sympy.sign, sympy.Heaviside, sympy.DiracDelta)


def _monomial(d: sympy.Expr, z: sympy.Symbol) -> bool:
    """d = c·z^p (p ≥ 1): it changes sign (or vanishes) at z = 0 only."""
    d = sympy.expand(d)
    if not d.is_polynomial(z):
        return False
    terms = sympy.Poly(d, z).terms()
    return len(terms) == 1 and terms[0][0][0] >= 1


def _switches(e: sympy.Basic) -> list[sympy.Expr] | None:
    """The expressions whose sign switches ``e``'s branch (None: e is no switch);
    [nan] for a condition ntkc cannot read."""
    if isinstance(e, (sympy.Max, sympy.Min)):
        return [a - b for a, b in itertools.combinations(e.args, 2)]
    if isinstance(e, _STEPS):
        return [e.args[0]]
    if not isinstance(e, sympy.Piecewise):
        return None
    out: list[sympy.Expr] = []
    for _, cond in e.args:
        for c in sympy.preorder_traversal(cond):
            if isinstance(c, sympy.core.relational.Relational):
                out.append(c.lhs - c.rhs)
            elif c.is_Boolean and not isinstance(c, (sympy.And, sympy.Or, sympy.Not,
                                                     BooleanAtom)):
                return [sympy.nan]
    return out


def kinks(f: sympy.Expr, z: sympy.Symbol) -> bool | None:
    """None: f is smooth (no switch); True: all its kinks/steps are at z = 0; False:
    some may be elsewhere (or ntkc cannot tell)."""
    found = False
    for e in sympy.preorder_traversal(f):
        for d in _switches(e) or ():
            if d is sympy.nan:
                return False
            if d.has(z):
                if not _monomial(d, z):
                    return False
                found = True
    return True if found else None


def polar_applies(z: sympy.Symbol, *fs: sympy.Expr) -> bool:
    """The polar rule for E[Π f]: some f has a kink or step, and all are at 0."""
    ks = [kinks(f, z) for f in fs]
    return any(k is True for k in ks) and all(k is not False for k in ks)


# ---------------------------------------------------------------- the rules


@cache
def half_line_gauss(n: int, radial: bool) -> tuple[np.ndarray, np.ndarray]:
    """n-node Gauss rule of the weight r·e^{−r²/2} (radial) or e^{−r²/2} on [0, ∞),
    weights normalised to sum 1: Stieltjes in long double on a composite Gauss–Legendre
    discretisation of [0, 10 + 2·sqrt(2n)] (800 panels of 24 nodes), nodes by the
    Jacobi matrix and Newton, weights by the Christoffel function."""
    L = np.longdouble
    x, w = np.polynomial.legendre.leggauss(24)
    edges = np.linspace(0.0, 10.0 + 2.0 * math.sqrt(2.0 * n), 801)
    h = np.diff(edges)[:, None] / 2
    r = (edges[:-1, None] + h * (1 + x)).ravel().astype(L)
    wt = (h * w).ravel().astype(L) * np.exp(-r * r / 2) * (r if radial else L(1))
    alpha, beta = np.zeros(n, L), np.zeros(n, L)
    beta[0] = wt.sum()
    pm, p = np.zeros_like(r), np.full_like(r, 1 / np.sqrt(beta[0]))
    for k in range(n):
        alpha[k] = np.sum(wt * r * p * p)
        q = (r - alpha[k]) * p - np.sqrt(beta[k]) * pm
        if k + 1 < n:
            beta[k + 1] = np.sum(wt * q * q)
            pm, p = p, q / np.sqrt(beta[k + 1])
    sb = np.sqrt(beta)
    sb[0] = 0.0  # the recurrences below start from p_{-1} = 0 with p_0 = 1/sqrt(beta0)
    jac = np.diag(alpha.astype(float)) + np.diag(sb[1:].astype(float), 1) + \
        np.diag(sb[1:].astype(float), -1)
    t = np.linalg.eigvalsh(jac).astype(L)
    p0 = 1 / np.sqrt(beta[0])
    for _ in range(3):  # Newton on p_n (orthonormal recurrence, the last step unscaled)
        pm, p, dpm, dp = np.zeros(n, L), np.full(n, p0), np.zeros(n, L), np.zeros(n, L)
        for k in range(n):
            b = sb[k + 1] if k + 1 < n else L(1)
            p, pm, dp, dpm = (((t - alpha[k]) * p - sb[k] * pm) / b, p,
                              (p + (t - alpha[k]) * dp - sb[k] * dpm) / b, dp)
        t = t - p / dp
    pm, p = np.zeros(n, L), np.full(n, p0)
    s = p * p
    for k in range(n - 1):
        p, pm = ((t - alpha[k]) * p - sb[k] * pm) / sb[k + 1], p
        s += p * p
    wq = 1 / s
    return t.astype(float), (wq / wq.sum()).astype(float)


def legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre on [−1, 1], exactly odd nodes and even weights."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (x - x[::-1]) / 2, (w + w[::-1]) / 2


def sizes(n0: int) -> list[tuple[int, int]]:
    """(r nodes, θ nodes per arc) of each level, the guard's extra level last. At the
    default n0 = 32: r 16, 24, 36, 54, 81 (122), θ 18, 26, 34, 42, 50 (58)."""
    c = n0 / 32
    return [(max(2, round(c * 16 * 1.5**m)), 2 * max(1, round(c * (9 + 4 * m))))
            for m in range(POLAR_LEVELS + 1)]


def tables(n0: int) -> dict[str, np.ndarray]:
    """All levels concatenated: radial (R, WR), half-range (H, WH) and Legendre (X, WX)
    nodes and weights, with the offsets and sizes of each level."""
    out: dict[str, list] = {k: [] for k in ("R", "WR", "H", "WH", "X", "WX", "NR", "OR",
                                            "NT", "OT")}
    o_r = o_t = 0
    for nr, nt in sizes(n0):
        for key, rule in (("R", half_line_gauss(nr, True)), ("H", half_line_gauss(nr, False)),
                          ("X", legendre(nt))):
            out[key].append(rule[0])
            out["W" + key].append(rule[1])
        out["NR"].append(nr)
        out["OR"].append(o_r)
        out["NT"].append(nt)
        out["OT"].append(o_t)
        o_r, o_t = o_r + nr, o_t + nt
    return {k: (np.concatenate(v) if k in ("R", "WR", "H", "WH", "X", "WX")
                else np.array(v, dtype=np.int64)) for k, v in out.items()}


# ---------------------------------------------------------------- generated code

_LEVEL = """\
    q = {k} / _QP_KREF
    m = 0
    while m < _QP_LEVELS - 1 and q > 1.0:  # NaN stays at level 0 (the guard refuses it)
        q *= 0.25
        m += 1
    nr = _QP_NR[m]
    o = _QP_OR[m]
    nt = _QP_NT[m]
    ot = _QP_OT[m]"""

_SCALAR_1D = """\
def {name}(k, params):
    # polar rule (ntkc.semantics.quadrature_polar): half-range Gauss nodes, h(s) + h(-s)
    k = max(k, 0.0)
    sk = math.sqrt(k)
{level}
    acc = 0.0
    for i in range(nr):
        u = sk * _QP_H[o + i]
        t = ({fu})
        u = -u
        acc += _QP_WH[o + i] * (t + ({fu}))
    return 0.5 * acc"""

_SCALAR_2D = """\
def {name}(k11, k12, k22, params):
    # polar rule (ntkc.semantics.quadrature_polar): u = sqrt(k11) r cos(th), v = sqrt(k22) r cos(th - al),
    # Gauss-Legendre on the arcs between the kinks; the images of the nodes x and -x of
    # both arcs of a kind are summed in a fixed pattern, so that swapping (k11, f) and
    # (k22, g) gives the same result to the bit.
    k11 = max(k11, 0.0)
    k22 = max(k22, 0.0)
    kk = k11 * k22
    rho = min(max(k12 / math.sqrt(kk), -1.0), 1.0) if kk > 0.0 else 0.0
    al = math.acos(rho)
    h1 = 0.5 * al  # half-length of the arcs where u and v have opposite signs
    h2 = 0.5 * (math.pi - al)  # ... and of those where they have the same sign
    r1 = math.sqrt(k11)
    r2 = math.sqrt(k22)
{level}
    acc = 0.0
    for j in range(nt // 2):
        x = _QP_X[ot + j]
        if h1 > 0.0:
            a = math.sin(h1 * (1.0 + x))
            b = math.sin(h1 * (1.0 - x))
            inner = 0.0
            for i in range(nr):
                A = r1 * _QP_R[o + i]
                B = r2 * _QP_R[o + i]
                u = -A * a
                v = B * b
                t1 = ({fu}) * ({gv})
                u = A * a
                v = -B * b
                t2 = ({fu}) * ({gv})
                u = -A * b
                v = B * a
                t3 = ({fu}) * ({gv})
                u = A * b
                v = -B * a
                t4 = ({fu}) * ({gv})
                inner += _QP_WR[o + i] * ((t1 + t2) + (t3 + t4))
            acc += (h1 * _QP_WX[ot + j]) * inner
        if h2 > 0.0:
            c = math.cos(0.5 * al + h2 * x)
            d = math.cos(0.5 * al - h2 * x)
            inner = 0.0
            for i in range(nr):
                A = r1 * _QP_R[o + i]
                B = r2 * _QP_R[o + i]
                u = -A * c
                v = -B * d
                t1 = ({fu}) * ({gv})
                u = A * c
                v = B * d
                t2 = ({fu}) * ({gv})
                u = -A * d
                v = -B * c
                t3 = ({fu}) * ({gv})
                u = A * d
                v = B * c
                t4 = ({fu}) * ({gv})
                inner += _QP_WR[o + i] * ((t1 + t2) + (t3 + t4))
            acc += (h2 * _QP_WX[ot + j]) * inner
    return acc / (2.0 * math.pi)"""


def scalar_helper(name: str, dims: int, fu: str, gv: str | None) -> list[str]:
    if dims == 1:
        return _SCALAR_1D.format(name=name, level=_LEVEL.format(k="k"), fu=fu).splitlines()
    level = _LEVEL.format(k="max(k11, k22)")
    return _SCALAR_2D.format(name=name, level=level, fu=fu, gv=gv).splitlines()


_NUMPY = '''
def _qp_levels(k):
    q = numpy.asarray(k, dtype=numpy.float64) / _QP_KREF
    m = numpy.zeros(q.shape, dtype=numpy.int64)
    for _ in range(_QP_LEVELS - 1):
        up = q > 1.0
        m += up
        q = numpy.where(up, 0.25 * q, q)
    return m


def _qp_rule(m):
    o, nr, ot, nt = _QP_OR[m], _QP_NR[m], _QP_OT[m], _QP_NT[m]
    return (_QP_R[o:o + nr], _QP_WR[o:o + nr], _QP_H[o:o + nr], _QP_WH[o:o + nr],
            _QP_X[ot:ot + nt // 2], _QP_WX[ot:ot + nt // 2])


def _qp1_sum(f, sk, m, params, absolute=False):
    _, _, s, w, _, _ = _qp_rule(m)
    u = sk[:, None] * s
    a, b = f(u, params) * (u * 0 + 1), f(-u, params) * (u * 0 + 1)
    if absolute:
        a, b = numpy.abs(a), numpy.abs(b)
    return 0.5 * ((a + b) @ w)


def _qp2_sum(f, r1, r2, al, m, params, absolute=False):
    r, wr, _, _, x, wx = _qp_rule(m)
    out = numpy.empty(r1.shape[0])
    step = max(1, 2 ** 20 // (r.shape[0] * x.shape[0]))
    g = (lambda u, v: numpy.abs(f(u, v, params))) if absolute else (lambda u, v: f(u, v, params))
    for c0 in range(0, r1.shape[0], step):
        sl = slice(c0, c0 + step)
        A = (r1[sl, None] * r)[:, :, None]
        B = (r2[sl, None] * r)[:, :, None]
        h1 = 0.5 * al[sl]
        h2 = 0.5 * (numpy.pi - al[sl])
        a = numpy.sin(h1[:, None] * (1.0 + x))[:, None, :]
        b = numpy.sin(h1[:, None] * (1.0 - x))[:, None, :]
        c = numpy.cos(0.5 * al[sl, None] + h2[:, None] * x)[:, None, :]
        d = numpy.cos(0.5 * al[sl, None] - h2[:, None] * x)[:, None, :]
        s13 = (g(-A * a, B * b) + g(A * a, -B * b)) + (g(-A * b, B * a) + g(A * b, -B * a))
        s24 = (g(-A * c, -B * d) + g(A * c, B * d)) + (g(-A * d, -B * c) + g(A * d, B * c))
        s13 = numpy.where(h1[:, None] > 0, s13 @ wx, 0.0) @ wr  # zero-length arcs: 0
        s24 = numpy.where(h2[:, None] > 0, s24 @ wx, 0.0) @ wr
        out[sl] = (h1 * s13 + h2 * s24) / (2.0 * numpy.pi)
    return out


def _qp1_np(f, k, params):
    k = numpy.maximum(numpy.asarray(k, dtype=numpy.float64), 0.0)
    flat = k.ravel()
    out = numpy.empty(flat.shape)
    lev = _qp_levels(flat)
    for m in numpy.unique(lev):
        sel = lev == m
        out[sel] = _qp1_sum(f, numpy.sqrt(flat[sel]), int(m), params)
    return out.reshape(k.shape)


def _qp2_np(f, k11, k12, k22, params):
    k11, k12, k22 = numpy.broadcast_arrays(k11, k12, k22)
    shape = k11.shape
    k11, k12, k22 = (numpy.asarray(v, dtype=numpy.float64).ravel() for v in (k11, k12, k22))
    k11, k22 = numpy.maximum(k11, 0.0), numpy.maximum(k22, 0.0)
    kk = k11 * k22
    rho = numpy.where(kk > 0, k12 / numpy.sqrt(numpy.where(kk > 0, kk, 1.0)), 0.0)
    al = numpy.arccos(numpy.clip(rho, -1.0, 1.0))
    out = numpy.empty(k11.shape)
    lev = _qp_levels(numpy.maximum(k11, k22))
    for m in numpy.unique(lev):
        sel = lev == m
        out[sel] = _qp2_sum(f, numpy.sqrt(k11[sel]), numpy.sqrt(k22[sel]), al[sel], int(m),
                            params)
    return out.reshape(shape)


def _qp_quadrature_error(name, f, dims, k, params):
    """quadrature_error of a polar helper: |level m - level m + 1| / E|f g| at the variance
    k rounded up (as the trapezoidal rule's; at most to the top of level m), 2-D at _Q_RHO."""
    m = int(_qp_levels(numpy.array([k]))[0])
    k = 2.0 ** (math.ceil(8.0 * math.log2(max(k, 1e-300))) / 8.0)
    if m < _QP_LEVELS - 1:
        k = min(k, _QP_KREF * 4.0 ** m)
    params = numpy.asarray(params, dtype=numpy.float64)
    key = (name, k, params.tobytes())
    if key not in _Q_ERRORS:
        if dims == 1:
            sk = numpy.array([math.sqrt(k)])
            q, ref = (_qp1_sum(f, sk, j, params) for j in (m, m + 1))
            size = _qp1_sum(f, sk, m + 1, params, True)
        else:
            r, al = numpy.full(_Q_RHO.shape, math.sqrt(k)), numpy.arccos(_Q_RHO)
            q, ref = (_qp2_sum(f, r, r, al, j, params) for j in (m, m + 1))
            size = _qp2_sum(f, r, r, al, m + 1, params, True)
        _Q_ERRORS[key] = float(numpy.max(numpy.abs(q - ref)) / max(numpy.max(size), 1e-300))
    return _Q_ERRORS[key], k
'''


def _floats(xs: np.ndarray) -> str:
    return "np.array([" + ", ".join(repr(float(v)) for v in xs) + "])"


def module_text(n0: int) -> list[str]:
    """The polar rule's tables and numpy functions (when some helper uses it)."""
    t = tables(n0)
    nr = [int(v) for v in t["NR"]]
    nt = [int(v) for v in t["NT"]]
    ints = {k: f"np.array({[int(v) for v in t[k]]!r}, dtype=np.int64)"
            for k in ("NR", "OR", "NT", "OT")}
    return [
        ("# Polar rule (ntkc.semantics.quadrature_polar) for kinks at 0: level m serves variances <= "
         f"{POLAR_KREF:g}*4^m,"),
        (f"# r nodes {nr[:-1]}, theta nodes per arc {nt[:-1]} (the last level, {nr[-1]} and "
         f"{nt[-1]}, is the guard's reference)."),
        f"_QP_KREF = {POLAR_KREF!r}",
        f"_QP_LEVELS = {POLAR_LEVELS}",
        *(f"_QP_{k} = {v}" for k, v in ints.items()),
        *(f"_QP_{k} = {_floats(t[k])}" for k in ("R", "WR", "H", "WH", "X", "WX")),
        *_NUMPY.splitlines(), "",
    ]
