"""Loading compiled networks (cached by spec hash) and filling Gram matrices in tiles."""

from .model import Model, load

__all__ = ["Model", "load"]
