"""The two positions of an array entry, for rules whose value depends on them.

A formula of a spatial quantity is one entry (i, j) of an array over position pairs (row i:
a position of x_p, column j: a position of x_q; ntkc.semantics.derive). Most rules treat
every entry alike; a rule whose covariance vanishes between different positions (a
locally connected layer: each position has its own weights, so two positions are
independent) multiplies by DELTA = δ_ij, 1 on the diagonal and 0 off it. The code
generators print I and J as their loops' position counters (over a diagonal both are the
row), so DELTA costs a compare per entry and no array.
"""

from __future__ import annotations

import sympy

I = sympy.Symbol("i", integer=True, nonnegative=True)  # the entry's row; J: its column
J = sympy.Symbol("j", integer=True, nonnegative=True)
DELTA = sympy.KroneckerDelta(I, J)
POSITIONS = frozenset({I, J})
