"""The stencils of the convolutional kernels: fixed numba code, pasted into every
convolutional module below the marker line (ntkc.codegen.emit_spatial), and the tap
geometry ntkc.semantics.geometry builds its tables with.

A window is described by eleven integers, not a table: its geometry, an int64 array
``g = (hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular)``, every spatial
shape seen as 2-D (a sequence is an image of height 1). Tap t of output o along an
axis reads input ``o·s + t - lo``; zero padding where that falls outside, or the
position modulo n when ``circular``. So a module's size and numba's compile time
do not grow with the image, and every conv of a network shares one compiled
function: the geometry and the offsets are runtime arguments, typed int64 arrays and
int64 (``_i64``: numba compiles a new version for each distinct literal argument).

𝒜 (conv: the same tap offset on both sides) of a full P×P array is separable: the
taps of a 2-D window are pairs (ty, tx) and a tap is valid when both are, so
𝒜 = 𝒜_x ∘ 𝒜_y, fh + fw adds per entry instead of fh·fw. ``_conv_full_rows`` computes
the output rows of a block of output positions (oy, xlo..xhi-1), each a row of P_out
entries: its y-pass reads the fh source image rows (the block's source columns only)
into a buffer, its x-pass sums that buffer into the output rows. The caller runs the
layer's pointwise formulas on the same rows right after (ntkc.codegen.emit_spatial),
while they are in cache, and walks the blocks column block by column block, oy
inner, so consecutive blocks share fh - 1 of their source rows in L2. Inner loops run over contiguous ranges, the valid range
of a tap computed once, so they have no branches and vectorise.

The arrays may be float32 or float64 (numba compiles one version per dtype).
"""

import numba
import numpy as np

# --- module text below: pasted into the generated modules -----------------------------

# Offsets and counts are passed as _i64(n): numba compiles a new version of a function
# for each distinct literal int argument, and once for int64.
_i64 = np.int64


def _tap(o, t, n, s, lo, circular):
    # input index of tap t of output o along one axis; -1: zero padding
    i = o * s + t - lo
    if circular:
        return i % n
    return i if 0 <= i < n else -1


def _tap_range(n_in, n_out, s, c):
    # the outputs o with 0 <= o·s + c < n_in, as range(lo, hi) (non-circular axes)
    lo = 0 if c >= 0 else (-c + s - 1) // s
    hi = min(n_out, (n_in - 1 - c) // s + 1)
    return lo, max(lo, hi)


def _unpack(g):
    return g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10]


_tap_nb = numba.njit(inline="always")(_tap)
_unpack = numba.njit(inline="always")(_unpack)
_tap_range_nb = numba.njit(inline="always")(_tap_range)


@numba.njit(cache=True, error_model="numpy")
def _conv_full_rows(src, so, dst, do, tmp, g, oy, xlo, xhi, scale):
    """Output rows (oy, xlo..xhi-1) of 𝒜 of the full array at src[so:] into dst[do:]."""
    hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular = _unpack(g)
    pin, pout = hin * win, hout * wout
    # the source columns x1 the block's taps read: a window of them, or all (circular)
    x1lo, x1hi = 0, win
    if not circular:
        x1lo = max(0, xlo * sw - low)
        x1hi = min(win, (xhi - 1) * sw - low + fw)
    n_tmp = (x1hi - x1lo) * hout * win  # tmp[((x1-x1lo)·hout + o2y)·win + x2]: the y-pass
    for k in range(n_tmp):
        tmp[k] = 0.0
    # Rows are read through views indexed from 0 (see ntkc.codegen.emit_spatial.
    # OutlinedArgs: numba drops the negative-index checks, the loops vectorise).
    for ty in range(fh):
        y1 = _tap_nb(oy, ty, hin, sh, loh, circular)
        if y1 < 0:
            continue
        if sh == 1 and not circular:
            # stride 1: the valid o2y are a range, and (o2y, x2) is contiguous in both
            # the source row and the buffer: one long loop per source column x1
            ylo, yhi = _tap_range_nb(hin, hout, 1, ty - loh)
            n = (yhi - ylo) * win
            for x1 in range(x1lo, x1hi):
                sb = so + (y1 * win + x1) * pin + (ylo + ty - loh) * win
                tb = ((x1 - x1lo) * hout + ylo) * win
                srow, trow = src[sb:sb + n], tmp[tb:tb + n]
                for k in range(n):
                    trow[k] += srow[k]
            continue
        for o2y in range(hout):
            y2 = _tap_nb(o2y, ty, hin, sh, loh, circular)
            if y2 < 0:
                continue
            for x1 in range(x1lo, x1hi):
                sb = so + (y1 * win + x1) * pin + y2 * win
                tb = ((x1 - x1lo) * hout + o2y) * win
                srow, trow = src[sb:sb + win], tmp[tb:tb + win]
                for x2 in range(win):
                    trow[x2] += srow[x2]
    # stride 1, same width: output row (o2y, o2x) reads buffer entry (o2y, o2x + c), one
    # long loop per tap, masked where o2x + c leaves the row (zero padding)
    flat = sw == 1 and not circular and wout == win
    # the masks, one row of pout per tap, after the y-pass buffer (its largest extent)
    mb = win * hout * win
    if flat:
        for tx in range(fw):
            lo, hi = _tap_range_nb(win, wout, 1, tx - low)
            mask = tmp[mb + tx * pout:mb + tx * pout + pout]
            for o2x in range(wout):
                mask[o2x] = 1.0 if lo <= o2x < hi else 0.0
            for k in range(wout, pout):
                mask[k] = mask[k - wout]
    for o1x in range(xlo, xhi):
        db = do + (oy * wout + o1x) * pout
        drow = dst[db:db + pout]
        for k in range(pout):
            drow[k] = 0.0
        for tx in range(fw):
            x1 = _tap_nb(o1x, tx, win, sw, low, circular)
            if x1 < 0:
                continue
            c = tx - low
            if flat:
                tb = (x1 - x1lo) * hout * win
                k0, k1 = max(0, -c), pout - max(0, c)
                part, m = drow[k0:k1], tmp[mb + tx * pout + k0:mb + tx * pout + k1]
                shifted = tmp[tb + k0 + c:tb + k1 + c]
                for k in range(k1 - k0):
                    part[k] += shifted[k] * m[k]
                continue
            lo, hi = _tap_range_nb(win, wout, sw, c)
            for o2y in range(hout):
                tb = ((x1 - x1lo) * hout + o2y) * win
                trow, orow = tmp[tb:tb + win], drow[o2y * wout:o2y * wout + wout]
                if circular:
                    for o2x in range(wout):
                        orow[o2x] += trow[(o2x * sw + c) % win]
                elif sw == 1:
                    part, src_part = orow[lo:hi], trow[lo + c:hi + c]
                    for k in range(hi - lo):
                        part[k] += src_part[k]
                else:
                    for o2x in range(lo, hi):
                        orow[o2x] += trow[o2x * sw + c]
        for k in range(pout):
            drow[k] *= scale


@numba.njit(cache=True, error_model="numpy")
def _conv_diag(src, so, step, dst, do, tmp, g, scale):
    """𝒜 of a diagonal: dst[do + o] = scale·Σ_t src[so + step·tap(o, t)] (step 1: a
    stored diagonal; P + 1: the diagonal of a full array). Separable, like the full
    case: the diagonal as an image (gathered into tmp), summed along x, then along y."""
    hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular = _unpack(g)
    pin = hin * win
    image, along_x = tmp[:pin], tmp[pin:pin + hin * wout]
    for k in range(pin):
        image[k] = src[so + step * k]
    for k in range(hin * wout):
        along_x[k] = 0.0
    if sw == 1 and not circular and wout == win:
        # stride 1, same width: one long loop per tap over every row, masked where
        # ox + c leaves its row (zero padding)
        mask = tmp[2 * pin:3 * pin]
        for tx in range(fw):
            c = tx - low
            lo, hi = _tap_range_nb(win, wout, 1, c)
            for ox in range(win):
                mask[ox] = 1.0 if lo <= ox < hi else 0.0
            for k in range(win, pin):
                mask[k] = mask[k - win]
            k0, k1 = max(0, -c), pin - max(0, c)
            part, m, shifted = along_x[k0:k1], mask[k0:k1], image[k0 + c:k1 + c]
            for k in range(k1 - k0):
                part[k] += shifted[k] * m[k]
    else:
        for y in range(hin):
            row, out = image[y * win:y * win + win], along_x[y * wout:y * wout + wout]
            for tx in range(fw):
                c = tx - low
                if circular:
                    for ox in range(wout):
                        out[ox] += row[(ox * sw + c) % win]
                    continue
                lo, hi = _tap_range_nb(win, wout, sw, c)
                for ox in range(lo, hi):
                    out[ox] += row[ox * sw + c]
    out = dst[do:do + hout * wout]
    for k in range(hout * wout):
        out[k] = 0.0
    if sh == 1 and not circular:
        # stride 1: the output rows a tap reads are a range, contiguous in along_x
        for ty in range(fh):
            ylo, yhi = _tap_range_nb(hin, hout, 1, ty - loh)
            part = out[ylo * wout:yhi * wout]
            shifted = along_x[(ylo + ty - loh) * wout:(yhi + ty - loh) * wout]
            for k in range((yhi - ylo) * wout):
                part[k] += shifted[k]
    else:
        for oy in range(hout):
            row = out[oy * wout:oy * wout + wout]
            for ty in range(fh):
                y = _tap_nb(oy, ty, hin, sh, loh, circular)
                if y < 0:
                    continue
                part = along_x[y * wout:y * wout + wout]
                for ox in range(wout):
                    row[ox] += part[ox]
    for k in range(hout * wout):
        out[k] *= scale


@numba.njit(cache=True, error_model="numpy")
def _pool_full(src, so, dst, do, tmp, g, scale):
    """A pool of a full array: every pair of taps of the two windows. Row o1 first sums
    its window's source rows into tmp (P_in entries), then each o2 its window of tmp."""
    hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular = _unpack(g)
    pin, pout = hin * win, hout * wout
    for o1 in range(pout):
        o1y, o1x = o1 // wout, o1 % wout
        for j in range(pin):
            tmp[j] = 0.0
        for ty in range(fh):
            y = _tap_nb(o1y, ty, hin, sh, loh, circular)
            if y < 0:
                continue
            for tx in range(fw):
                x = _tap_nb(o1x, tx, win, sw, low, circular)
                if x < 0:
                    continue
                sb = so + (y * win + x) * pin
                srow = src[sb:sb + pin]
                for j in range(pin):
                    tmp[j] += srow[j]
        for o2 in range(pout):
            o2y, o2x = o2 // wout, o2 % wout
            acc = 0.0
            for ty in range(fh):
                y = _tap_nb(o2y, ty, hin, sh, loh, circular)
                if y < 0:
                    continue
                for tx in range(fw):
                    x = _tap_nb(o2x, tx, win, sw, low, circular)
                    if x >= 0:
                        acc += tmp[y * win + x]
            dst[do + o1 * pout + o2] = acc * scale


@numba.njit(cache=True, error_model="numpy")
def _pool_diag(src, so, dst, do, g, scale):
    """The diagonal of a pool of a full array: dst[do + o] = scale·Σ_{t,t'} src[tap(o, t),
    tap(o, t')]."""
    hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular = _unpack(g)
    pin = hin * win
    for oy in range(hout):
        for ox in range(wout):
            acc = 0.0
            for t1 in range(fh * fw):
                y1 = _tap_nb(oy, t1 // fw, hin, sh, loh, circular)
                x1 = _tap_nb(ox, t1 % fw, win, sw, low, circular)
                if y1 < 0 or x1 < 0:
                    continue
                for t2 in range(fh * fw):
                    y2 = _tap_nb(oy, t2 // fw, hin, sh, loh, circular)
                    x2 = _tap_nb(ox, t2 % fw, win, sw, low, circular)
                    if y2 >= 0 and x2 >= 0:
                        acc += src[so + (y1 * win + x1) * pin + y2 * win + x2]
            dst[do + oy * wout + ox] = acc * scale


@numba.njit(cache=True, error_model="numpy")
def _input_full(xa, xb, dst, do, scale):
    """The input's covariances: dst[do + i·P + j] = scale·Σ_c xa[i, c]·xb[j, c]. Over j
    from xb transposed, so the inner loop runs over contiguous positions."""
    p, channels = xa.shape
    xbt = np.ascontiguousarray(xb.T)
    for i in range(p):
        row = dst[do + i * p:do + i * p + p]
        for j in range(p):
            row[j] = 0.0
        for c in range(channels):
            a = xa[i, c] * scale
            col = xbt[c]
            for j in range(p):
                row[j] += a * col[j]


@numba.njit(cache=True, error_model="numpy")
def _input_diag(xa, xb, dst, do, scale):
    """dst[do + i] = scale·Σ_c xa[i, c]·xb[i, c]."""
    p, channels = xa.shape
    for i in range(p):
        acc = 0.0
        for c in range(channels):
            acc += xa[i, c] * xb[i, c]
        dst[do + i] = acc * scale


@numba.njit(cache=True, error_model="numpy")
def _sum(src, so, n, step):
    """Σ_k src[so + k·step], k < n (flatten: a diagonal; global pools: step 1)."""
    acc = 0.0
    if step == 1:
        part = src[so:so + n]
        for k in range(n):
            acc += part[k]
        return acc
    for k in range(n):
        acc += src[so + k * step]
    return acc


# One entry of each stencil, for the GPU (ntkc.codegen.cuda_spatial compiles them as
# device functions, with _tap a device function too): a thread computes an entry.
def _conv_entry(src, so, g, o1, o2):
    """Σ_t src[tap(o1, t), tap(o2, t)]: entry (o1, o2) of 𝒜 of a full array, unscaled."""
    hin, win, wout = g[0], g[1], g[3]
    fh, fw, sh, sw, loh, low, circular = g[4], g[5], g[6], g[7], g[8], g[9], g[10]
    pin = hin * win
    o1y, o2y = o1 // wout, o2 // wout
    o1x, o2x = o1 - o1y * wout, o2 - o2y * wout
    acc = 0.0
    for ty in range(fh):
        y1 = _tap(o1y, ty, hin, sh, loh, circular)
        y2 = _tap(o2y, ty, hin, sh, loh, circular)
        if y1 < 0 or y2 < 0:
            continue
        for tx in range(fw):
            x1 = _tap(o1x, tx, win, sw, low, circular)
            x2 = _tap(o2x, tx, win, sw, low, circular)
            if x1 >= 0 and x2 >= 0:
                acc += src[so + (y1 * win + x1) * pin + y2 * win + x2]
    return acc


def _conv_diag_entry(src, so, step, g, o):
    """Σ_t src[so + step·tap(o, t)]: entry o of 𝒜 of a diagonal, unscaled."""
    hin, win, wout = g[0], g[1], g[3]
    fh, fw, sh, sw, loh, low, circular = g[4], g[5], g[6], g[7], g[8], g[9], g[10]
    oy = o // wout
    ox = o - oy * wout
    acc = 0.0
    for ty in range(fh):
        y = _tap(oy, ty, hin, sh, loh, circular)
        if y < 0:
            continue
        for tx in range(fw):
            x = _tap(ox, tx, win, sw, low, circular)
            if x >= 0:
                acc += src[so + step * (y * win + x)]
    return acc


def _pool_entry(src, so, g, o1, o2):
    """Σ_{t,t'} src[tap(o1, t), tap(o2, t')]: entry (o1, o2) of a pool, unscaled."""
    hin, win, wout = g[0], g[1], g[3]
    fh, fw, sh, sw, loh, low, circular = g[4], g[5], g[6], g[7], g[8], g[9], g[10]
    pin = hin * win
    o1y, o2y = o1 // wout, o2 // wout
    o1x, o2x = o1 - o1y * wout, o2 - o2y * wout
    acc = 0.0
    for t1 in range(fh * fw):
        y1 = _tap(o1y, t1 // fw, hin, sh, loh, circular)
        x1 = _tap(o1x, t1 % fw, win, sw, low, circular)
        if y1 < 0 or x1 < 0:
            continue
        for t2 in range(fh * fw):
            y2 = _tap(o2y, t2 // fw, hin, sh, loh, circular)
            x2 = _tap(o2x, t2 % fw, win, sw, low, circular)
            if y2 >= 0 and x2 >= 0:
                acc += src[so + (y1 * win + x1) * pin + y2 * win + x2]
    return acc


def _axis_taps(n, f, s, padding):
    """(out, f) input indices along one axis, -1 for zero padding (lax's conventions:
    see ntkc.semantics.geometry)."""
    if padding == "valid":
        if f > n:
            raise ValueError(f"a window of {f} does not fit a VALID input of size {n}")
        out, lo = (n - f) // s + 1, 0
    else:
        out = -(-n // s)
        lo = max((out - 1) * s + f - n, 0) // 2
    idx = np.arange(out)[:, None] * s + np.arange(f)[None, :] - lo
    if padding == "circular":
        return idx % n
    return np.where((idx >= 0) & (idx < n), idx, -1)


def _window_taps(in_spatial, shape, stride, padding):
    """(P_out, F) tap table: the flat input position tap t of output o reads, -1 for
    padding; positions and taps row-major (the numpy reference backend reads it)."""
    axes = [_axis_taps(n, f, s, padding) for n, f, s in zip(in_spatial, shape, stride)]
    table = np.zeros((1, 1), dtype=np.int64)
    for k, taps in enumerate(axes):
        # out index (…, o_k) and tap index (…, t_k) grow one axis at a time
        n = in_spatial[k]
        new = table[:, None, :, None] * n + taps[None, :, None, :]
        bad = (table[:, None, :, None] < 0) | (taps[None, :, None, :] < 0)
        table = np.where(bad, -1, new).reshape(table.shape[0] * taps.shape[0], -1)
    return table
