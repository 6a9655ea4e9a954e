"""The translation rules: one file per op (or family of ops), registered by name.

Importing this package imports every module in it, which registers its rules, so adding
an op is adding its file. The registry itself (Rule, Arg, RULES, ...) is
ntkc.semantics.rules.registry, which the rule files import. The built-in nonlinearities'
duals are rules/activations.py, the pointwise rule that uses them rules/nonlin.py.
"""

import importlib
import pkgutil

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

# Sorted: the registry's order (and so `ntkc show`, error hints) does not depend on the
# file system.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["REQUIRED", "RULES", "STENCILS", "Arg", "ArgKind", "Opening", "Rule",
           "StencilKind", "Structure", "callable_ops", "register"]
