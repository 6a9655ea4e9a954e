"""Spatial geometry of convolutions and pools, as Neural Tangents (lax) defines it.

A window op maps input positions to output positions through a tap table:
``taps[o, t]`` is the flat input position that tap t of output position o reads,
or -1 where it reads zero padding. Positions are flattened row-major over the
spatial axes (channels last, as the inputs).

Padding, per axis of size n with window f and stride s:
  valid     out = (n - f) // s + 1, no padding
  same      out = ceil(n / s); total = max((out - 1)·s + f - n, 0) zeros,
            total // 2 before and the rest after (lax's 'SAME')
  circular  the same amounts as 'same', filled by wrapping around (Neural
            Tangents pads circularly, then runs a VALID conv)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

PADDINGS = ("same", "valid", "circular")


def axis_taps(n: int, f: int, s: int, padding: str) -> np.ndarray:
    """(out, f) input indices along one axis, -1 for zero padding."""
    if padding == "valid":
        if f > n:
            raise ValueError(f"a window of {f} does not fit a VALID input of size {n}")
        out = (n - f) // s + 1
        lo = 0
    else:
        out = -(-n // s)
        lo = max((out - 1) * s + f - n, 0) // 2
    idx = np.arange(out)[:, None] * s + np.arange(f)[None, :] - lo
    if padding == "circular":
        return idx % n
    return np.where((idx >= 0) & (idx < n), idx, -1)


@dataclass(frozen=True)
class Window:
    """A window op over spatial positions: its tap table and output shape."""

    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    taps: np.ndarray  # (P_out, F) flat input positions, -1 = zero padding

    @property
    def size(self) -> int:
        return self.taps.shape[1]


def window(in_spatial: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...],
           padding: str) -> Window:
    if not (len(shape) == len(stride) == len(in_spatial)):
        raise ValueError(
            f"a window of {len(shape)} dim(s) with {len(stride)} stride(s) on an input with "
            f"{len(in_spatial)} spatial dim(s)")
    per_axis = [axis_taps(n, f, s, padding) for n, f, s in zip(in_spatial, shape, stride)]
    out_spatial = tuple(t.shape[0] for t in per_axis)
    strides_in = [int(np.prod(in_spatial[k + 1:])) for k in range(len(in_spatial))]
    rows = []
    for out_idx in itertools.product(*(range(n) for n in out_spatial)):
        row = []
        for tap_idx in itertools.product(*(range(f) for f in shape)):
            coords = [per_axis[k][out_idx[k], tap_idx[k]] for k in range(len(shape))]
            row.append(-1 if min(coords) < 0 else
                       sum(c * m for c, m in zip(coords, strides_in)))
        rows.append(row)
    return Window(tuple(in_spatial), out_spatial, np.array(rows, dtype=np.int64))

