"""Gaussian expectations without a closed form: a symmetric, guarded quadrature.

A user nonlinearity that sympy does not recognise still gets a kernel: its
dual E[φ(u)ψ(v)] appears in the formulas as an opaque function
``E[φ·ψ](k11, k12, k22)`` and the code generators emit a product trapezoidal
rule in correlation coordinates (s, t independent standard normals):

    u = sqrt(k11)·(a·s + b·t),   v = sqrt(k22)·(a·s - b·t),   a, b = sqrt((1 ± ρ)/2)

with ρ = k12/sqrt(k11·k22). Swapping (k11, k22) maps the node (s, t) to (s, -t),
and the rule sums t and -t together, so for φ = ψ the result is symmetric under
x ↔ x' to the last bit; at ρ = 1 it is the 1-D rule of the variances, so duplicate
inputs give duplicate rows.

The nodes are equally spaced on [-HALF_WIDTH, HALF_WIDTH] with Gaussian weights
(normalised to sum 1). For φ analytic in a strip |Im z| < d the error falls like
exp(-2π·d/Δu), where Δu = sqrt(k)·h is the node spacing in units of u: so the rule
is refined with the variance, m times finer (m = ceil(sqrt(k/K_REF)), at most
``levels(n0)``) for variance k, which keeps Δu, and the error, about constant in k.
``n0`` (``--quad-degree``) is the number of nodes per axis at k ≤ K_REF. Above the
finest level the error grows again: the generated module estimates it at run time
(the rule against one with half the spacing on 1.5× the range) for the largest
per-input variance of each level present, and refuses (ValueError) variances where
the estimate exceeds QUAD_TOL relative to E|φ(u)ψ(v)|. README "Accuracy of
quadrature" has the measured errors.

Integrands with kinks or steps, all at 0 (relu, abs, sign, max(z, 0)...: Integrand.polar),
converge only like h² in this rule: they get the polar rule of ntkc.semantics.quadrature_polar
instead (Gauss–Legendre on the arcs between the kinks, Gauss in the radius), guarded alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import sympy

from . import quadrature_polar as polar_rule
from .duals import DualActivation

DEFAULT_DEGREE = 32  # nodes per axis at pre-activation variance <= K_REF
HALF_WIDTH = 7.5  # nodes on [-7.5, 7.5] standard deviations: P(|s| > 7.5) = 6e-14
K_REF = 0.5  # the coarsest level serves variances up to K_REF
QUAD_TOL = 1e-6  # largest estimated relative error the generated kernels accept
TABLE_SIZE = 2048  # nodes in all levels together (CUDA keeps the tables in constant memory)


@dataclass(frozen=True)
class Integrand:
    """E[f(u) g(v)] (2-D, ``g`` given) or E[f(u)] (1-D) over centred Gaussians."""

    label: str
    z: sympy.Symbol
    f: sympy.Expr
    g: sympy.Expr | None = None

    @property
    def dims(self) -> int:
        return 1 if self.g is None else 2

    @cached_property
    def polar(self) -> bool:
        """Kinks or steps, all at 0: the polar rule (ntkc.semantics.quadrature_polar)."""
        return polar_rule.polar_applies(self.z, *(e for e in (self.f, self.g) if e is not None))


class GaussExpectation(sympy.Function):
    """Base of the opaque expectation functions; subclasses carry ``integrand``."""

    integrand: Integrand

    def _sympystr(self, printer) -> str:
        return f"{type(self).__name__}({', '.join(printer._print(a) for a in self.args)})"


_classes: dict[tuple, type] = {}


def expectation(integrand: Integrand, *args: sympy.Expr) -> sympy.Expr:
    """Apply the opaque function for ``integrand`` (one class per integrand)."""
    key = (integrand.label, integrand.f, integrand.g)
    cls = _classes.get(key)
    if cls is None:
        cls = type(f"E[{integrand.label}]", (GaussExpectation,), {
            "integrand": integrand, "nargs": integrand.dims * 2 - 1,
        })
        _classes[key] = cls
    return cls(*args)


def quadrature_dual(name: str, phi: sympy.Expr, z: sympy.Symbol) -> DualActivation:
    """The dual of φ(z) = ``phi`` by quadrature (nngp, ntk factor, per-point variance)."""
    dphi = sympy.diff(phi, z)
    pair = Integrand(f"{name}·{name}", z, phi, phi)
    dpair = Integrand(f"{name}'·{name}'", z, dphi, dphi)
    square = Integrand(f"{name}²", z, phi**2)
    mean = Integrand(name, z, phi)
    mean_slope = Integrand(f"{name}'", z, dphi)
    return DualActivation(
        name=name,
        phi=lambda w: phi.xreplace({z: w}),
        nngp=lambda k11, k12, k22: expectation(pair, k11, k12, k22),
        ntk_factor=lambda k11, k12, k22: expectation(dpair, k11, k12, k22),
        variance=lambda k: expectation(square, k),
        mean=lambda k: expectation(mean, k),
        mean_slope=lambda k: expectation(mean_slope, k),
    )


def mixed_expectation(
    a: DualActivation, b: DualActivation, derivative: bool, k11, k12, k22
) -> sympy.Expr:
    """E[φ(u)ψ(v)] (or of φ', ψ') for two different nonlinearities, by quadrature."""
    z = sympy.Symbol("z", real=True)
    f, g = a.phi(z), b.phi(z)
    if derivative:
        f, g = sympy.diff(f, z), sympy.diff(g, z)
        label = f"{a.name}'·{b.name}'"
    else:
        label = f"{a.name}·{b.name}"
    return expectation(Integrand(label, z, f, g), k11, k12, k22)


# ---------------------------------------------------------------- the rule


def levels(n0: int) -> int:
    """How many refinement levels the tables of an ``n0``-node rule hold (1 to 16)."""
    if n0 < 2:
        raise ValueError(f"the quadrature needs at least 2 nodes per axis, got {n0}")
    m = 1
    while m < 16 and (n0 - 1) * (m + 1) * (m + 2) // 2 + m + 1 <= TABLE_SIZE:
        m += 1
    return m


def rule(n0: int, m: int = 1, half_width: float = HALF_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Level ``m`` of the ``n0``-node rule: m·(n0-1)+1 equally spaced nodes on
    [-half_width, half_width], Gaussian weights summing to 1. The nodes are exactly
    odd (s[n-1-j] == -s[j]) and the weights exactly even."""
    n = m * (n0 - 1) + 1
    h = 2.0 * half_width / (n - 1)
    s = h * (np.arange(n) - (n - 1) / 2)
    e = np.exp(-s * s / 2)
    return s, e / e.sum()


RADIUS2 = HALF_WIDTH**2 * (1 + 1e-9)  # the 2-D rule keeps the nodes with s² + t² <= RADIUS2


def table(n0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All levels, concatenated (level m starts at (n0-1)·m(m-1)/2 + m-1): nodes, weights,
    and the 1-D rule's weights, the marginals of the 2-D rule's (the disc s² + t² <=
    RADIUS2), so that the 2-D rule at correlation 1 is the 1-D rule."""
    out: list[list[np.ndarray]] = [[], [], []]
    for m in range(1, levels(n0) + 1):
        s, w = rule(n0, m)
        inside = s[:, None] ** 2 + s[None, :] ** 2 <= RADIUS2
        for part, values in zip(out, (s, w, w * (inside * w).sum(1))):
            part.append(values)
    return tuple(np.concatenate(p) for p in out)


# ---------------------------------------------------------------- generated code
# The text below is ntkc's own; only printed sympy expressions (fu, gv) and numbers
# are filled in. The scalar helpers serve @numba.njit and @cuda.jit(device=True).

_LEVEL = """\
    q = math.sqrt({k} / _Q_KREF)
    m = max(int(math.ceil(q)), 1) if q < _Q_LEVELS else _Q_LEVELS  # no int() of inf/nan
    n = m * (_Q_N0 - 1) + 1
    o = (_Q_N0 - 1) * (m * (m - 1) // 2) + m - 1"""

_SCALAR_1D = """\
def {name}(k, params):
    k = max(k, 0.0)
    r = math.sqrt(k)
{level}
    acc = 0.0
    for i in range(n):
        u = r * _Q_S[o + i]
        acc += _Q_W1[o + i] * ({fu})
    return acc"""

_SCALAR_2D = """\
def {name}(k11, k12, k22, params):
    # u = sqrt(k11) (a s + b t), v = sqrt(k22) (a s - b t); t and -t summed together,
    # so swapping (k11, k22) only swaps u and v: symmetric to the bit when f = g.
    k11 = max(k11, 0.0)
    k22 = max(k22, 0.0)
    kk = k11 * k22
    rho = min(max(k12 / math.sqrt(kk), -1.0), 1.0) if kk > 0.0 else 0.0
    a = math.sqrt(0.5 * (1.0 + rho))
    b = math.sqrt(0.5 * (1.0 - rho))
    r1 = math.sqrt(k11)
    r2 = math.sqrt(k22)
{level}
    acc = 0.0
    for i in range(n):
        x = a * _Q_S[o + i]
        inner = 0.0
        j0 = 0  # the corners (s^2 + t^2 > R^2, 6e-13 of the mass) are left out
        while j0 < n // 2 and _Q_S[o + i] ** 2 + _Q_S[o + j0] ** 2 > _Q_R2:
            j0 += 1
        for j in range(j0, n // 2):
            y = b * _Q_S[o + j]
            u = r1 * (x + y)
            v = r2 * (x - y)
            t = ({fu}) * ({gv})
            u = r1 * (x - y)
            v = r2 * (x + y)
            inner += _Q_W[o + j] * (t + ({fu}) * ({gv}))
        if n % 2 == 1:
            u = r1 * x
            v = r2 * x
            inner += _Q_W[o + n // 2] * (({fu}) * ({gv}))
        acc += _Q_W[o + i] * inner
    return acc"""


def scalar_helper(name: str, it: Integrand, fu: str, gv: str | None) -> list[str]:
    """The scalar helper ``name`` (no decorator); fu, gv: f(u), g(v) printed."""
    dims = it.dims
    if it.polar:
        return polar_rule.scalar_helper(name, dims, fu, gv)
    if dims == 1:
        return _SCALAR_1D.format(name=name, level=_LEVEL.format(k="k"), fu=fu).splitlines()
    level = _LEVEL.format(k="max(k11, k22)")
    return _SCALAR_2D.format(name=name, level=level, fu=fu, gv=gv).splitlines()


def numpy_helper(name: str, it: Integrand, fu: str, gv: str | None) -> list[str]:
    """The numpy reference of helper ``name``: the same rule, vectorised."""
    q = "_qp" if it.polar else "_q"
    if it.dims == 1:
        return [f"def {name}_f(u, params):", f"    return ({fu}) * (u * 0 + 1)", "", "",
                f"def {name}_np(k, params):", f"    return {q}1_np({name}_f, k, params)", ""]
    return [f"def {name}_f(u, v, params):", f"    return ({fu}) * ({gv}) * (u * 0 + 1)", "", "",
            f"def {name}_np(k11, k12, k22, params):",
            f"    return {q}2_np({name}_f, k11, k12, k22, params)", ""]


_NUMPY = '''
def _q_level(m, weights=None):
    n = m * (_Q_N0 - 1) + 1
    o = (_Q_N0 - 1) * (m * (m - 1) // 2) + m - 1
    return _Q_S[o:o + n], (_Q_W if weights is None else weights)[o:o + n]


def _q_levels(k):
    m = numpy.ceil(numpy.sqrt(numpy.maximum(k, 0.0) / _Q_KREF))
    return numpy.clip(m, 1, _Q_LEVELS).astype(numpy.int64)


def _q1_sum(f, r, s, w, params, absolute=False):
    vals = numpy.broadcast_to(f(r[:, None] * s, params), (r.shape[0], s.shape[0]))
    return (numpy.abs(vals) if absolute else vals) @ w


def _q2_sum(f, r1, r2, a, b, s, w, params, absolute=False, radius2=_Q_R2):
    out = numpy.empty(r1.shape[0])
    inside = s[:, None] ** 2 + s[None, :] ** 2 <= radius2
    step = max(1, 2 ** 21 // s.shape[0] ** 2)  # pairs per chunk: ~16 MiB per array
    for c in range(0, r1.shape[0], step):
        x = a[c:c + step, None, None] * s[:, None]
        y = b[c:c + step, None, None] * s[None, :]
        u = r1[c:c + step, None, None] * (x + y)
        v = r2[c:c + step, None, None] * (x - y)
        vals = numpy.where(inside, f(u, v, params), 0.0)
        out[c:c + step] = (numpy.abs(vals) if absolute else vals) @ w @ w
    return out


def _q1_np(f, k, params):
    k = numpy.maximum(numpy.asarray(k, dtype=numpy.float64), 0.0)
    flat = k.ravel()
    out = numpy.empty(flat.shape)
    lev = _q_levels(flat)
    for m in numpy.unique(lev):
        sel = lev == m
        s, w = _q_level(int(m), _Q_W1)
        out[sel] = _q1_sum(f, numpy.sqrt(flat[sel]), s, w, params)
    return out.reshape(k.shape)


def _q2_np(f, k11, k12, k22, params):
    k11, k12, k22 = numpy.broadcast_arrays(k11, k12, k22)
    shape = k11.shape
    k11, k12, k22 = (numpy.asarray(v, dtype=numpy.float64).ravel() for v in (k11, k12, k22))
    k11, k22 = numpy.maximum(k11, 0.0), numpy.maximum(k22, 0.0)
    kk = k11 * k22
    rho = numpy.where(kk > 0, k12 / numpy.sqrt(numpy.where(kk > 0, kk, 1.0)), 0.0)
    rho = numpy.clip(rho, -1.0, 1.0)
    a, b = numpy.sqrt(0.5 * (1.0 + rho)), numpy.sqrt(0.5 * (1.0 - rho))
    out = numpy.empty(k11.shape)
    lev = _q_levels(numpy.maximum(k11, k22))
    for m in numpy.unique(lev):
        sel = lev == m
        s, w = _q_level(int(m))
        out[sel] = _q2_sum(f, numpy.sqrt(k11[sel]), numpy.sqrt(k22[sel]), a[sel], b[sel], s, w,
                           params)
    return out.reshape(shape)
'''

# The run-time guard: called on every point-phase result (both backends, and the
# cuda target's point phase, which is the numba one).
_GUARD = '''
_Q_RHO = numpy.array([-0.5, 0.5, 0.9, 0.99])  # where the 2-D rule's error is checked
_Q_ERRORS = {}  # (helper, variance, params) -> estimated relative error


def quadrature_error(name, k, params):
    """(estimated relative error of helper ``name``, the variance it was estimated at)
    for the variances of k's level up to ``k``: at k rounded up to a step of 2^(1/8)
    (at most to the top of its level; the error grows with k within a level)."""
    if not math.isfinite(k):
        return math.inf, k
    f, dims, polar = _Q_HELPERS[name]
    if polar:  # level m against level m + 1 (ntkc.semantics.quadrature_polar)
        return _qp_quadrature_error(name, f, dims, k, params)
    m = int(_q_levels(numpy.array([k]))[0])
    k = 2.0 ** (math.ceil(8.0 * math.log2(max(k, 1e-300))) / 8.0)
    if m < _Q_LEVELS:
        k = min(k, m * m * _Q_KREF)
    params = numpy.asarray(params, dtype=numpy.float64)
    key = (name, k, params.tobytes())
    if key not in _Q_ERRORS:
        s, w = _q_level(m)
        sr = numpy.linspace(1.5 * s[0], 1.5 * s[-1], 3 * (s.shape[0] - 1) + 1)
        wr = numpy.exp(-sr * sr / 2)
        wr /= wr.sum()
        if dims == 1:
            r = numpy.array([math.sqrt(k)])
            q, ref, size = (_q1_sum(f, r, s, _q_level(m, _Q_W1)[1], params), _q1_sum(f, r, sr, wr, params),
                            _q1_sum(f, r, sr, wr, params, True))
        else:
            r = numpy.full(_Q_RHO.shape, math.sqrt(k))
            a, b = numpy.sqrt(0.5 * (1.0 + _Q_RHO)), numpy.sqrt(0.5 * (1.0 - _Q_RHO))
            big = 2.25 * _Q_R2
            q, ref, size = (_q2_sum(f, r, r, a, b, s, w, params),
                            _q2_sum(f, r, r, a, b, sr, wr, params, radius2=big),
                            _q2_sum(f, r, r, a, b, sr, wr, params, True, big))
        _Q_ERRORS[key] = float(numpy.max(numpy.abs(q - ref)) / max(numpy.max(size), 1e-300))
    return _Q_ERRORS[key], k


def _check_quadrature(p, params):
    for slot, name, where in _Q_CHECKS:
        k = numpy.where(numpy.isnan(p[:, slot]), numpy.inf, p[:, slot])
        lev = (_qp_levels if _Q_HELPERS[name][2] else _q_levels)(k)
        for m in numpy.unique(lev):
            i = int(numpy.flatnonzero(lev == m)[numpy.argmax(k[lev == m])])
            err, at = quadrature_error(name, float(k[i]), params)
            if not err <= QUAD_TOL:  # NaN too
                raise ValueError(
                    f"pre-activation variance {k[i]:.4g} (input row {i}) at {where} is "
                    f"beyond the accurate range of --quad-degree {_Q_N0}: the quadrature's "
                    f"estimated relative error at variance {at:.4g} is {err:.1e} > QUAD_TOL = "
                    f"{QUAD_TOL:g}: recompile with a larger --quad-degree, or rescale the "
                    "inputs or weights to smaller pre-activation variances (the rule refines "
                    f"itself up to variance {_Q_KREF * _Q_LEVELS ** 2:g}). A nonlinearity with "
                    "kinks or steps away from 0 converges slowly at every variance: to accept "
                    "its error, "
                    "raise QUAD_TOL (a global of the generated module, model.module.QUAD_TOL)")
    return p
'''


def _floats(xs: np.ndarray) -> str:
    return "np.array([" + ", ".join(repr(float(v)) for v in xs) + "])"


def module_text(n0: int, helpers: dict | None = None) -> list[str]:
    """Tables, constants, the numpy rules and the guard (before the helpers); the polar
    rule's only where one of ``helpers`` (expectation class -> name) uses it."""
    s, w, w1 = table(n0)
    polar = any(t.integrand.polar for t in helpers or ())
    return [
        f"# Quadrature (ntkc.semantics.quadrature): trapezoidal rule, {n0} nodes per axis at variance",
        f"# <= {K_REF:g}, refined m-fold (m = ceil(sqrt(k / {K_REF:g})) <= {levels(n0)}) above.",
        f"QUAD_TOL = {QUAD_TOL!r}  # the run-time guard's bound on the relative error",
        f"_Q_N0 = {n0}",
        f"_Q_KREF = {K_REF!r}",
        f"_Q_R2 = {RADIUS2!r}  # the 2-D rule's nodes: s^2 + t^2 <= R^2",
        f"_Q_LEVELS = {levels(n0)}",
        f"_Q_S = {_floats(s)}",
        f"_Q_W = {_floats(w)}",
        f"_Q_W1 = {_floats(w1)}  # the 1-D rule: the 2-D weights' marginals",
        *_NUMPY.splitlines(), *_GUARD.splitlines(), "",
        *(polar_rule.module_text(n0) if polar else []),
    ]


def guard_text(helpers: dict[type, str], checks: list[tuple[int, str, str]]) -> list[str]:
    """After the helpers: which helper each run-time check uses, and the checks
    ((point slot of a per-input variance, helper, where in the spec))."""
    table_ = ", ".join(f"{n!r}: ({n}_f, {t.integrand.dims}, {t.integrand.polar})"
                       for t, n in helpers.items())
    return [f"_Q_HELPERS = {{{table_}}}", f"_Q_CHECKS = {tuple(checks)!r}", ""]


def variance_checks(rec, point_full: dict, pair_full: dict) -> list[tuple[type, sympy.Expr, str]]:
    """(expectation class, per-input variance in terms of x·x and the params, line) for
    every variance an expectation is evaluated at, in both phases."""
    back = {v: k for k, v in rec.twins.items()}
    allowed = {rec.sq, *(p.symbol for p in rec.program.params.values())}
    out: dict[tuple[type, sympy.Expr], str] = {}
    for assignments, full in ((rec.point, point_full), (rec.pair, pair_full)):
        for a in assignments:
            for q in a.expr.atoms(GaussExpectation):
                for var in (q.args[:1] if len(q.args) == 1 else (q.args[0], q.args[2])):
                    e = var.xreplace(full).xreplace(back).xreplace(point_full)
                    if e.free_symbols <= allowed:
                        out.setdefault((type(q), e), a.line)
    return [(t, e, line) for (t, e), line in out.items()]
