"""The translation rules: one file per op (or family of ops), registered by name.

Importing this package imports every rule file, which registers its rules; the registry
itself (Rule, Arg, RULES, ...) is ntkc.semantics.rules.registry, which the rule files
import. The built-in nonlinearities' duals are rules/activations.py, the pointwise rule
that uses them rules/nonlin.py.
"""

from . import activations, combine, conv, dense, inputs, layer_norm, nonlin, pool  # noqa: F401
from .registry import (
    REQUIRED,
    RULES,
    STENCILS,
    Arg,
    ArgKind,
    Opening,
    Rule,
    StencilKind,
    Structure,
    callable_ops,
    register,
)

__all__ = ["REQUIRED", "RULES", "STENCILS", "Arg", "ArgKind", "Opening", "Rule",
           "StencilKind", "Structure", "callable_ops", "register"]
