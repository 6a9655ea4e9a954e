"""p = a * b — the elementwise product of two lines (Neural Tangents' FanInProd).

Its covariance is a fourth moment, E[a b a' b'] (primes: at x_q), which ntkc computes in two
cases it can prove, and refuses otherwise:

* a and b jointly Gaussian (both Gaussian lines): Isserlis,
      K[p] = K[a,a']·K[b,b'] + K[a,b']·K[b,a'] + K[a,b](x,x)·K[a,b](x',x')
  (with a = b, g * g is monomial(g, degree=2): K[g,g']² ·2 + K[g](x,x)·K[g](x',x'));
* a and b independent: no Gaussian line that a depends on (through nonlinearities, sums,
  concats, dropout...) is correlated with one that b depends on, at any pair of inputs, so
      K[p] = K[a,a']·K[b,b']                                    (Neural Tangents' rule)
  Zero cross covariances of a and b themselves would not do: g and g² − K[g] are uncorrelated
  but not independent.
Θ, in both cases: the gradients concentrate, ∂p = b·∂a + a·∂b, so
      Θ[p] = Θ[a,a']·K[b,b'] + Θ[a,b']·K[b,a'] + Θ[b,a']·K[a,b'] + Θ[b,b']·K[a,a']
(Neural Tangents' Θ_a·K_b + K_a·Θ_b when the cross terms vanish). The same formulas with
(c, d) in place of (a', b') give the covariance of two products of Gaussian lines.

Against a line v that is not a product, E[a b v'] is a third moment: 0 when a, b and v are
Gaussian (odd moments vanish), or when v is Gaussian and independent of a and b (E[v] = 0,
and the tangent cross terms must then vanish too); anything else is refused. p is not
Gaussian: no nonlinearity may read it, a dense or conv after it is Gaussian again.
"""

from __future__ import annotations

import itertools

import sympy

from .registry import RULES, FiniteForward, Opening, Rule, register

POINTS = ((1, 1), (1, 2), (2, 1))  # the point pairs of two lines' covariance


def _gaussian(program, line: str) -> bool:
    node = program.nodes[line]
    rule = RULES[node.op]
    if rule.opening is Opening.LINEAR:
        return rule.gaussian and all(_gaussian(program, i) for i in node.inputs)
    return rule.gaussian


def _sources(program, line: str) -> set[str]:
    """The Gaussian lines ``line`` is a function of (with randomness of its own that is
    independent of everything else: dropout's masks); the raw input is not random."""
    node = program.nodes[line]
    if _gaussian(program, line):
        return {line}
    if RULES[node.op].opening is Opening.INPUT:
        return set()
    return set().union(*(_sources(program, i) for i in node.inputs))


def _correlated(eng, u: str, v: str) -> bool:
    return any(eng.Q("K", u, v, p, q) != 0 for p, q in POINTS)


def _independent(eng, a: str, b: str) -> tuple[str, str] | None:
    """None when a and b are independent, else a correlated pair of their sources."""
    for u, v in itertools.product(sorted(_sources(eng.program, a)),
                                  sorted(_sources(eng.program, b))):
        if _correlated(eng, u, v):
            return u, v
    return None


def _moment(eng, kind: str, a: str, b: str, c: str, d: str, p: int, q: int,
            gaussian: bool) -> sympy.Expr:
    """E[a b c' d'] ("K") or its tangent ("T"), a, b at x_p and c, d at x_q."""
    def Q(k: str, u: str, v: str, pp: int = p, qq: int = q) -> sympy.Expr:
        return eng.Q(k, u, v, pp, qq)

    if kind == "K":
        out = Q("K", a, c) * Q("K", b, d)
        if gaussian:  # Isserlis' other two pairings
            out += Q("K", a, d) * Q("K", b, c) + Q("K", a, b, p, p) * Q("K", c, d, q, q)
        return out
    terms = []
    for (u, w), (v, z) in itertools.product(((a, b), (b, a)), ((c, d), (d, c))):
        t = Q("T", u, v)  # ∂u·∂v' with the other two factors' covariance
        if t != 0:
            terms.append(t * Q("K", w, z))
    return sympy.Add(*terms)


def derive_product(eng, kind: str, node, other: str, p: int, q: int) -> sympy.Expr:
    a, b = node.inputs
    program = eng.program
    o = program.nodes[other]
    gaussian = _gaussian(program, a) and _gaussian(program, b)
    if o.op == node.op:
        c, d = o.inputs
        if gaussian and _gaussian(program, c) and _gaussian(program, d):
            return _moment(eng, kind, a, b, c, d, p, q, gaussian=True)
        if other == node.name:
            pair = _independent(eng, a, b)
            if pair is None:
                return _moment(eng, kind, a, b, a, b, p, q, gaussian=False)
            raise eng.fail(
                f"the product {a} * {b} needs E[{a}·{b}·{a}'·{b}'], which ntkc computes when "
                f"both are Gaussian lines or when they are independent; {_why(program, a, b)}, "
                f"and '{pair[0]}' (below '{a}') is correlated with '{pair[1]}' (below '{b}')",
                node.name)
        raise eng.fail(f"the covariance of the products '{node.name}' and '{other}' needs a "
                       "fourth moment of lines that are not all Gaussian", node.name)
    if _gaussian(program, other):
        if gaussian:
            return sympy.Integer(0)  # an odd moment of centred jointly Gaussian lines
        if all(not _correlated(eng, u, other) for u in _sources(program, node.name)) and all(
                eng.Q("T", u, other, p, q) == 0 for u in (a, b)):
            return sympy.Integer(0)  # independent of p, and E[other] = 0
    raise eng.fail(f"the covariance of the product '{node.name}' with '{other}' is a third "
                   f"moment E[{a}·{b}·{other}'], which ntkc computes only when it vanishes "
                   f"({a}, {b} and {other} Gaussian, or {other} Gaussian and independent of "
                   f"{a} and {b})", node.name)


def _why(program, a: str, b: str) -> str:
    bad = dict.fromkeys(u for u in (a, b) if not _gaussian(program, u))
    return " and ".join(f"'{u}' is not Gaussian" for u in bad)


def shape_product(node, in_shapes, program):
    first, second = in_shapes
    a, b = node.inputs
    for u in (a, b):
        if not _sources(program, u):  # the input's d features are no infinite random layer
            raise ValueError(f"cannot multiply '{u}': it is the raw input or depends on it "
                             "alone, and a product needs two random lines (multiply a dense "
                             "or conv of the input)")
    if first.kind != second.kind or first.spatial != second.spatial:
        raise ValueError(f"cannot multiply '{a}' of shape {_fmt(first)} and '{b}' of shape "
                         f"{_fmt(second)}")
    if None not in (first.channels, second.channels) and first.channels != second.channels:
        raise ValueError(f"cannot multiply '{a}' of width {first.channels} and '{b}' of width "
                         f"{second.channels}")
    return type(first)(first.kind, first.spatial,
                       first.channels if first.channels is not None else second.channels)


def _fmt(s) -> str:
    return "[" + ", ".join([*map(str, s.spatial), "?" if s.channels is None else
                            str(s.channels)]) + "]"


def finite_product(jax, p, a, b):
    return a * b


PRODUCT = register(Rule("product", Opening.OWN, (), 2, shape_product, derive_product,
                        gaussian=False, callable=False, infix="*",
                        finite=FiniteForward(finite_product, same_channels=True)))
