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

from dataclasses import dataclass

import numpy as np

from ..codegen.stencil_kernels import _axis_taps, _window_taps

PADDINGS = ("same", "valid", "circular")


def axis_taps(n: int, f: int, s: int, padding: str) -> np.ndarray:
    """(out, f) input indices along one axis, -1 for zero padding."""
    return _axis_taps(n, f, s, padding)


@dataclass(frozen=True)
class Window:
    """A window op over spatial positions: its tap table, output shape and geometry."""

    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    taps: np.ndarray  # (P_out, F) flat input positions, -1 = zero padding
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str

    @property
    def size(self) -> int:
        return self.taps.shape[1]

    @property
    def geometry(self) -> tuple[int, ...]:
        """The eleven integers the compiled stencils take (ntkc.codegen.stencil_kernels):
        (hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular), 1-D as height 1."""
        pad = [(1, 1, 1, 1)] * (2 - len(self.shape))  # a sequence: an image of height 1
        axes = pad + [(n, o, f, s) for n, o, f, s in
                      zip(self.in_spatial, self.out_spatial, self.shape, self.stride)]
        lows = [0 if self.padding == "valid" else max((o - 1) * s + f - n, 0) // 2
                for n, o, f, s in axes]
        (hin, hout, fh, sh), (win, wout, fw, sw) = axes
        return (hin, win, hout, wout, fh, fw, sh, sw, lows[0], lows[1],
                int(self.padding == "circular"))


def window(in_spatial: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...],
           padding: str) -> Window:
    if not (len(shape) == len(stride) == len(in_spatial)):
        raise ValueError(
            f"a window of {len(shape)} dim(s) with {len(stride)} stride(s) on an input with "
            f"{len(in_spatial)} spatial dim(s)")
    if len(shape) > 2:
        raise ValueError(f"windows have 1 or 2 spatial dims, got {len(shape)}")
    taps = _window_taps(in_spatial, shape, stride, padding)
    out_spatial = tuple(axis_taps(n, f, s, padding).shape[0]
                        for n, f, s in zip(in_spatial, shape, stride))
    return Window(tuple(in_spatial), out_spatial, taps, tuple(shape), tuple(stride), padding)
