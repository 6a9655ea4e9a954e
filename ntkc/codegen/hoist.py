"""Lift per-input square roots (and their odd powers, k^(±3/2)) out of the per-pair loops.

Pointwise rules normalise by sqrt(K(x,x)·K(x',x')). Split as sqrt(K(x,x))·sqrt(K(x',x'))
(variances are ≥ 0), each factor depends on one input and one position only, so it is
computed once per input in the point phase and read by the pair loops: the inner loop
loses a square root and a division per entry.

A zero variance (a blank image, a zero patch under a conv without bias) has the inverse
root 1/sqrt(max(k, TINY)) instead of a division by zero: its covariances k12 are then
exactly 0, so the correlation k12·Q1·Q2 is 0 and every dual gives its value for a
degenerate Gaussian. Point rows are float64 on every target, so TINY is a float64 number,
far below any variance an input scale reaches (|x| = 1e-149 gives k ~ 1e-298), with
1/TINY = 1e300 leaving room for a product of two roots.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

TINY = sympy.Float(1e-300)  # variances below this are zero for the inverse roots


@dataclass(frozen=True)
class Root:
    """symbol = base ** exponent (exponent ±1/2), a new per-input quantity."""

    symbol: sympy.Symbol
    base: sympy.Symbol
    exponent: sympy.Rational

    def value(self, base: sympy.Expr) -> sympy.Expr:
        """The root of ``base`` (this root's base, or its expression) as computed: the
        inverse root of a zero variance is 1/sqrt(TINY), finite (see the module doc)."""
        if self.exponent < 0:
            return sympy.Max(base, TINY) ** self.exponent
        return base ** self.exponent


def hoist_roots(exprs: dict, point_symbols: set, twins: dict[sympy.Symbol, sympy.Symbol],
                code_names: dict) -> tuple[dict, list[Root]]:
    """exprs {symbol: expr} rewritten with roots of point quantities replaced by new
    point symbols; returns them and the new roots (of point-1 symbols; their twins
    at the other points are registered in ``twins``: {point-1 symbol: {k: twin}})."""
    back = {}  # twin symbol → (point-1 symbol, which twin map)
    for k, mapping in twins.items():
        for s1, t in mapping.items():
            back[t] = (s1, k)
    roots: dict[tuple, Root] = {}
    new_twins: dict[sympy.Symbol, dict] = {}

    def root_of(sym, exponent):
        s1, k = back.get(sym, (sym, None))
        key = (s1, exponent)
        if key not in roots:
            label = "√" if exponent > 0 else "1/√"
            name = sympy.Symbol(f"{label}{s1.name}", positive=True)
            code_names[name] = f"{'R' if exponent > 0 else 'Q'}{code_names[s1]}"
            roots[key] = Root(name, s1, exponent)
            for kk, mapping in twins.items():
                if s1 in mapping:
                    tw = sympy.Symbol(f"{label}{mapping[s1].name}", positive=True)
                    code_names[tw] = f"{'R' if exponent > 0 else 'Q'}{code_names[mapping[s1]]}"
                    new_twins.setdefault(kk, {})[name] = tw
        r = roots[key].symbol
        return r if k is None else new_twins[k][r]

    known = set(point_symbols) | set(back)
    out = {}
    for target, e in exprs.items():
        e = sympy.expand_power_base(e, force=True)
        reps = {}
        for p in sorted(e.atoms(sympy.Pow), key=sympy.default_sort_key):  # stable slots
            if p.base in known and p.exp in (sympy.S.Half, -sympy.S.Half):
                reps[p] = root_of(p.base, p.exp)
            elif p.base in known and p.exp.is_Rational and p.exp.q == 2:
                # k^(±3/2), k^(±5/2)... (the kernels' derivatives): a power of the root,
                # multiplications in the pair loop instead of a pow call
                half = sympy.S.Half if p.exp > 0 else -sympy.S.Half
                reps[p] = root_of(p.base, half) ** abs(p.exp.p)
        out[target] = e.xreplace(reps)
    for k, mapping in new_twins.items():
        twins[k].update(mapping)
    return out, list(roots.values())
