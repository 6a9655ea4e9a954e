"""The conv operator 𝒜 as unrolled, vectorisable numba loops.

𝒜(K)[o1, o2] = scale · Σ_t K[T[o1, t], T[o2, t]] (full) or 𝒜(K)[o] = scale · Σ_t K[T[o, t]]
(diagonal), T the tap table of the window (ntkc.geometry). The table is known at
compile time, so the taps are unrolled. A tap whose input position is the output
position plus a constant (stride 1, zero padding) reads a contiguous block; other
taps (circular wrap, strides) read through a constant index array. Zero padding is
a constant mask select: the innermost loop runs over every output position with
no branches, which LLVM vectorises. The loops read up to one block of positions
past either end of a source array, masked out; the scratch layout leaves that
slack (ntkc.codegen.spatial_stages.layout), so every index stays in bounds and
non-negative, which is also what lets numba drop its wraparound checks.

The loops' counters and temporaries start with ``_``: the function they are pasted
into has arguments (x1, x2, s, ...) and code-named quantities that they must not
shadow, and no argument or code name starts with ``_``.
"""

from __future__ import annotations

import numpy as np


def tap_shifts(taps: np.ndarray) -> list[int | None]:
    """Per tap: the constant (input - output) position offset, or None."""
    out = []
    for t in range(taps.shape[1]):
        valid = np.nonzero(taps[:, t] >= 0)[0]
        d = taps[valid, t] - valid
        out.append(int(d[0]) if len(valid) and np.all(d == d[0]) else None)
    return out


def conv_loops(pairs: list[tuple[int, int]], taps: np.ndarray, p_in: int, out_width: int,
               full: bool, array: str, scale: str, prefix: str, indent: str,
               diagonal_of_full: bool = False) -> tuple[list[str], dict[str, np.ndarray]]:
    """Code for 𝒜 of one or more arrays (K and Θ of a line) through one window.

    pairs: (source offset, output offset) in ``array``; p_in: source positions per
    row (its columns); out_width: the output's last spatial size (for row loops).
    diagonal_of_full: a diagonal output read from a full source (its other readers need
    every position pair): the source diagonal has stride p_in + 1, read by index.
    Returns the lines and the constant index/mask arrays they read (module globals
    named with ``prefix``)."""
    p_out, n_taps = taps.shape
    # Strided diagonal reads would stray past the slack when masked: index them all.
    shifts = [None] * n_taps if diagonal_of_full else tap_shifts(taps)
    stride = p_in + 1 if diagonal_of_full else 1
    consts: dict[str, np.ndarray] = {}
    for t in range(n_taps):
        if not (taps[:, t] >= 0).all():
            consts[f"{prefix}M{t}"] = (taps[:, t] >= 0)
        if shifts[t] is None:
            consts[f"{prefix}G{t}"] = np.maximum(taps[:, t], 0)
            if full:
                consts[f"{prefix}R{t}"] = taps[:, t] * p_in

    def term(t: int, base: str, o: str) -> str:
        index = f"{prefix}G{t}[{o}]" if stride == 1 else f"{prefix}G{t}[{o}] * {stride}"
        e = f"{array}[{base} + {index}]" if shifts[t] is None else f"{array}[{base} + {o}]"
        return e if (taps[:, t] >= 0).all() else f"({e} if {prefix}M{t}[{o}] else 0.0)"

    ind = indent
    if not full:
        src = [f"{ind}for _o in range({p_out}):"]
        for so, oo in pairs:
            terms = [term(t, str(so) if shifts[t] is None else str(so + shifts[t]), "_o")
                     for t in range(n_taps) if (taps[:, t] >= 0).any()]
            src += [f"{ind}    _acc = {terms[0]}"] + [f"{ind}    _acc += {x}" for x in terms[1:]]
            src.append(f"{ind}    {array}[{oo} + _o] = _acc * {scale}")
        return src, consts
    # Full: output rows o1 grouped by their set of valid taps; rectangles become loops.
    classes: dict[tuple, list[int]] = {}
    for o1 in range(p_out):
        classes.setdefault(tuple(np.nonzero(taps[o1] >= 0)[0].tolist()), []).append(o1)
    src = []
    for k, (valid, rows) in enumerate(classes.items()):
        ys = sorted({o // out_width for o in rows})
        xs = sorted({o % out_width for o in rows})
        if len(rows) == len(ys) * len(xs) and ys == list(range(ys[0], ys[-1] + 1)) \
                and xs == list(range(xs[0], xs[-1] + 1)):
            src += [f"{ind}for _y1 in range({ys[0]}, {ys[-1] + 1}):",
                    f"{ind}    for _x1 in range({xs[0]}, {xs[-1] + 1}):",
                    f"{ind}        _o1 = _y1 * {out_width} + _x1"]
        else:
            consts[f"{prefix}C{k}"] = np.array(rows, dtype=np.int64)
            src += [f"{ind}for _q in range({len(rows)}):", f"{ind}    if True:",
                    f"{ind}        _o1 = {prefix}C{k}[_q]"]
        body = ind + "        "
        for a, (so, oo) in enumerate(pairs):
            src.append(f"{body}_d{a} = max({oo} + _o1 * {p_out}, 0)")
            for t in valid:
                if shifts[t] is None:
                    src.append(f"{body}_b{a}_{t} = max({so} + {prefix}R{t}[_o1], 0)")
                else:
                    sh = shifts[t]
                    src.append(f"{body}_b{a}_{t} = max({so} + (_o1 + {sh}) * {p_in} + {sh}, 0)")
        src.append(f"{body}for _o2 in range({p_out}):")
        for a in range(len(pairs)):
            terms = [term(t, f"_b{a}_{t}", "_o2") for t in valid]
            src += [f"{body}    _acc = {terms[0]}"] + [f"{body}    _acc += {x}" for x in terms[1:]]
            src.append(f"{body}    {array}[_d{a} + _o2] = _acc * {scale}")
    return src, consts
