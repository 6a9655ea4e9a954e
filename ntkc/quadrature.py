"""Gaussian expectations without a closed form: Gauss–Hermite quadrature.

A user nonlinearity that sympy does not recognise still gets a kernel: its
dual E[φ(u)ψ(v)] appears in the formulas as an opaque function
``E[φ·ψ](k11, k12, k22)`` and the code generators emit a 2-D Gauss–Hermite
rule in the Cholesky coordinates of Σ:

    u = sqrt(2 k11)·s,   v = sqrt(2)·(k12/sqrt(k11))·s + sqrt(2 (k22 - k12²/k11))·t
    E ≈ (1/π) Σ_ij w_i w_j φ(u_i) ψ(v_ij)

exact for polynomials of degree < 2·degree in each coordinate; for smooth φ
(tanh, softplus, swish) the error falls geometrically with the degree
(tests/test_quadrature.py measures it). Per-input variances use the 1-D rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .duals import DualActivation

DEFAULT_DEGREE = 32


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
