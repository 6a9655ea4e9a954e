"""ntkc: a compiler for infinitely wide neural networks.

    model = ntkc.load("examples/erf_mlp.ntk")
    k = model.kernel(x_train)              # .nngp, .ntk Gram matrices
    model.formulas()                        # the derived recursion, as sympy
"""

from ._version import __version__
from .errors import SpecError
from .runtime import Model, load

__all__ = ["Model", "SpecError", "__version__", "load"]
