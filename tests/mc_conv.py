"""Finite-width convolutional networks in numpy, for Monte Carlo checks (DESIGN §6.2).

An independent simulator: plain numpy, nothing taken from ntkc. A network is a list of
layers in the format of the Neural Tangents reference files (tests/data/reference/*.json):
``[op, {attrs}]`` applied in order, with ``["residual", {"branch": [...], "shortcut":
[...]}]`` (output = branch(h) + shortcut(h), an empty list is the identity) and
``["concat", {"left": [...], "right": [...]}]`` (channel concatenation). Given the input
shape (one input, channels last: ``[d]``, ``[L, C]`` or ``[H, W, C]``) and a width n,
:class:`ConvNetwork` samples random finite networks: every ``conv`` and ``dense`` gets n
output channels, except the last layer, a ``dense`` with one output unit. For each draw it
evaluates the scalar outputs f(x) on a batch of inputs and the empirical NTK

    Θ̂(x, x') = Σ_θ ∂f(x)/∂θ · ∂f(x')/∂θ        (θ: every weight and bias)

by hand-written backprop, and E[f(x) f(x') | all but the readout] (the readout's Gaussian
weights integrated out exactly; same mean as f(x) f(x'), far smaller variance).

Conventions: those of Neural Tangents' stax 0.6.5, channels last; NTK parameterization by
default, standard parameterization with ``parameterization="standard"`` (see below).

* conv(filter, stride (default 1), padding, w_std, b_std):  W ~ N(0, 1) of shape
  (*filter, C_in, C_out), β ~ N(0, 1) per output channel (no bias when b_std is absent),
  out = w_std/√(C_in·|filter|) · conv(h, W) + b_std·β.  Padding per spatial axis of size L:
  ``valid``: none, out = (L - f)//s + 1; ``same`` (lax/TF): out = ⌈L/s⌉, total =
  max((out-1)·s + f - L, 0) zeros, total//2 before and the rest after; ``circular``: the
  same amounts as ``same``, filled by wrapping around (NT pads with np.pad(mode='wrap'),
  then runs a VALID conv), i.e. padded position j reads x[(j - total//2) mod L].
* conv_local(filter, stride, padding, w_std, b_std): a locally connected layer (NT's
  ConvLocal): the same, but every output position o has its own W_o ~ N(0, 1) of shape
  (F·C_in, C_out) and β_o ~ N(0, 1) per channel, out_o = c·patch_o·W_o + b_std·β_o.
* dense(w_std, b_std): the same with a filter of size 1 (on a vector; on a sequence or an
  image it acts on the channel axis at every position, as NT's Dense does).
* avg_pool / sum_pool(window, stride, padding (default valid)): the mean (sum) over the
  window; avg divides by the full window size (NT's normalize_edges=False). The default
  stride is :data:`POOL_STRIDE_DEFAULT` (see there).
* global_avg_pool / global_sum_pool: mean / sum over all spatial positions.
* layer_norm(axes = channels | all): (h - mean)/sqrt(var + 1e-12), the mean and the
  (population) variance over the channels at each position, or over every position and
  channel of one input (NT's LayerNorm(axis=-1) and LayerNorm(axis=(1, 2, 3)), eps 1e-12).
* flatten: a reshape of (positions, channels) to one vector of P·C features; the next
  dense then has fan-in P·C, which makes its NNGP w²·(mean over positions of the
  per-position covariance): Neural Tangents' Flatten kernel.
* relu, erf {a, b, c} (a·erf(b·z) + c), identity, sign (φ' = 0: its derivative almost
  everywhere, so sign passes no gradient): elementwise, also on a pooled or flattened
  vector.

Arrays carry a leading axis of draws (chunks of draws are vectorised); spatial positions
are flattened row-major: activations are (draws, N, P, C). The default dtype is float32
(weights drawn in float32; rounding ~1e-6 relative, far below the Monte Carlo noise, and
twice as fast); the per-draw NTKs are accumulated in float64. Use float64 for finite
differences.

Convolutions and pools are written with tap tables: ``taps[o, t]`` is the flat input
position that tap t of output position o reads, or P (an extra all-zero slot) for zero
padding. With h̃ the input with the zero slot appended, a conv is patches = h̃[:, :, taps]
(draws, N, P_out, F, C_in) reshaped to (N·P_out, F·C_in), times W reshaped to
(F·C_in, C_out). The empirical NTK of a conv's weights, with δ = ∂f/∂out (N, P_out, C_out):

    Σ_W ∂f(x)/∂W ∂f(x')/∂W = c² Σ_{o,o'} Σ_t (h̃ h̃ᵀ)[x, taps[o,t]; x', taps[o',t]] · (δ δᵀ)[x, o; x', o']

(c = w_std/√(C_in·F); the channel Gram h̃ h̃ᵀ is computed once, then gathered per tap, so
no per-example gradient is formed), and of its bias b² Σ_{o,o'} (δ δᵀ)[x, o; x', o']. A
conv_local's weights and biases are separate per output position: the same sums with
o = o' only.

Parameterizations (both sample the same function from the same N(0, 1) draws Z, β; they
differ only in what is trained, i.e. in the factors of the two sums above):

* ntk:      θ = (Z, β): out = c·conv(h, Z) + b·β, so the factors are c² and b².
* standard: θ = (W, bias) with W = c·Z ~ N(0, w_std²/(C_in·F)) and bias = b·β ~ N(0, b²),
  out = conv(h, W) + bias: the factors are 1 and 1 (the bias term present whenever the
  layer has a bias, even with b_std = 0). The same for dense (F = 1; after flatten
  C_in = P·C). C_in and the hidden widths are the simulator's (every hidden conv/dense has
  n channels), so an ntkc spec compared with it must say width=n on those lines.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import numpy as np
import scipy.special as ss

try:  # installed with scikit-learn (the examples' extra); optional here
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

# The default stride of avg_pool / sum_pool when a layer gives none: the window (pools
# tile the input without overlap). The reference case conv2d_avgpool (avg_pool with a 2x2
# window and no stride, computed with Neural Tangents 0.6.5) agrees with this simulator
# with stride = window and is ~20 standard errors off with stride 1
# (tests/test_monte_carlo_conv.py, test_reference_rejects_other_conventions).
POOL_STRIDE_DEFAULT = "window"  # "window" | "ones"

PADDINGS = ("same", "valid", "circular")


def axis_taps(size: int, f: int, stride: int, padding: str) -> np.ndarray:
    """(out, f) input indices along one spatial axis; -1 where the tap reads a zero."""
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r}")
    if padding == "valid":
        out = (size - f) // stride + 1
        low = 0
    else:
        out = -(-size // stride)
        low = max((out - 1) * stride + f - size, 0) // 2
    if out < 1:
        raise ValueError(f"window {f} does not fit an axis of {size} ({padding})")
    j = np.arange(out)[:, None] * stride + np.arange(f)[None, :] - low
    if padding == "circular":
        return j % size
    return np.where((j >= 0) & (j < size), j, -1)


def tap_table(spatial: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...],
              padding: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(P_out, F) flat input positions (P_in = the zero slot) and the output spatial shape."""
    if not len(spatial) == len(window) == len(stride):
        raise ValueError(f"window {window} / stride {stride} on spatial shape {spatial}")
    axes = [axis_taps(n, f, s, padding) for n, f, s in zip(spatial, window, stride)]
    out = tuple(a.shape[0] for a in axes)
    p_in = int(np.prod(spatial))
    rows = []
    for o in itertools.product(*(range(n) for n in out)):
        row = []
        for t in itertools.product(*(range(f) for f in window)):
            coords = [a[oi, ti] for a, oi, ti in zip(axes, o, t)]
            if not coords:  # a vector: one position
                row.append(0)
            else:
                row.append(p_in if min(coords) < 0 else
                           int(np.ravel_multi_index(coords, spatial)))
        rows.append(row)
    return np.array(rows, dtype=np.intp), out


def _phi(op: str, attrs: dict):
    """φ and φ' by Neural Tangents' definitions."""
    if op == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda z: (z > 0).astype(z.dtype))
    if op == "erf":  # a·erf(b·z) + c
        a, b, c = attrs.get("a", 1.0), attrs.get("b", 1.0), attrs.get("c", 0.0)
        return (lambda z: a * ss.erf(b * z) + c,
                lambda z: (a * b * 2.0 / np.sqrt(np.pi)) * np.exp(-((b * z) ** 2)))
    if op == "identity":
        return (lambda z: z), np.ones_like
    if op == "sign":  # φ' = 0 almost everywhere (NT's NTK factor for sign is 0 likewise)
        return np.sign, np.zeros_like
    raise NotImplementedError(f"Monte Carlo conv network: nonlinearity {op}")


@dataclass
class Node:
    name: str
    op: str  # input | conv | nonlin | pool | flatten | sum | concat | norm
    inputs: tuple[str, ...]
    spatial: tuple[int, ...]  # output spatial shape (() for a vector)
    channels: int
    taps: np.ndarray | None = None  # conv: (P_out, F) into P_in + 1 positions
    scale: float = 0.0  # conv: w_std / √(C_in·F)
    b_std: float | None = None  # conv: None = no bias
    matrix: np.ndarray | None = None  # pool: (P_out, P_in) linear map over positions
    phi: tuple = field(default=())  # nonlin: (φ, φ')
    local: bool = False  # conv: a conv_local (weights and biases per output position)
    axes: str = ""  # norm: "channels" | "all"

    @property
    def positions(self) -> int:
        return int(np.prod(self.spatial))


@dataclass
class Draws:
    """Per-draw quantities stacked over draws (axis 0): f (D, N) outputs, ntk (D, N, N)
    empirical NTKs, nngp_cond (D, N, N) = E[f(x) f(x') | all but the readout]."""

    f: np.ndarray
    ntk: np.ndarray
    nngp_cond: np.ndarray

    @property
    def ff(self) -> np.ndarray:
        return self.f[:, :, None] * self.f[:, None, :]


def mean_and_se(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its standard error (sample std / √D)."""
    return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])


PARAMETERIZATIONS = ("ntk", "standard")


class ConvNetwork:
    """Random finite networks of a layer list (reference-file format) at width n.

    A ``width`` attribute on a conv/dense layer is ignored: every hidden conv/dense has
    ``width`` channels, the readout one."""

    def __init__(self, layers: list, input_shape: tuple[int, ...] | list[int], width: int,
                 dtype=np.float32, pool_stride_default: str = POOL_STRIDE_DEFAULT,
                 parameterization: str = "ntk"):
        if pool_stride_default not in ("window", "ones"):
            raise ValueError(f"pool_stride_default {pool_stride_default!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization {parameterization!r}")
        self.parameterization = parameterization
        self.pool_stride_default = pool_stride_default
        self.width = width
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(input_shape)
        self.nodes: list[Node] = []
        self._by_name: dict[str, Node] = {}
        self._scatter_cache: dict[str, np.ndarray] = {}
        src = self._add(Node("x", "input", (), tuple(input_shape[:-1]), input_shape[-1]))
        if not layers or layers[-1][0] != "dense":
            raise ValueError("the Monte Carlo network needs a dense readout as its last layer")
        out = self._chain(layers, src, readout=True)
        self.out_name = out
        if self.node(out).positions != 1:
            raise ValueError("the readout must see a vector (flatten or global-pool first)")

    # -- building the graph ------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self._by_name[name]

    def _add(self, node: Node) -> str:
        node.name = f"{node.op}{len(self.nodes)}" if node.op != "input" else "x"
        self.nodes.append(node)
        self._by_name[node.name] = node
        return node.name

    def _chain(self, layers: list, src: str, readout: bool = False) -> str:
        for i, (op, attrs) in enumerate(layers):
            last = readout and i == len(layers) - 1
            src = self._layer(op, attrs or {}, src, last)
        return src

    def _layer(self, op: str, a: dict, src: str, last: bool) -> str:
        h = self.node(src)
        nd = len(h.spatial)
        if op in ("conv", "dense", "conv_local"):
            if op != "dense":
                window = tuple(a["filter"])
                stride = tuple(a.get("stride") or (1,) * len(window))
                padding = a.get("padding", "valid")
                if len(window) != nd:
                    raise ValueError(f"conv filter {window} on spatial shape {h.spatial}")
            else:
                window = stride = (1,) * nd
                padding = "valid"
            taps, out = tap_table(h.spatial, window, stride, padding)
            c_out = 1 if last else self.width
            fan_in = h.channels * taps.shape[1]
            b = a.get("b_std")
            return self._add(Node("", "conv", (src,), out, c_out, taps=taps,
                                  scale=float(a["w_std"]) / np.sqrt(fan_in),
                                  b_std=None if b is None else float(b),
                                  local=op == "conv_local"))
        if last:
            raise ValueError("the last layer must be a dense readout")
        if op in ("avg_pool", "sum_pool"):
            window = tuple(a["window"])
            stride = a.get("stride")
            if stride is None:
                stride = window if self.pool_stride_default == "window" else (1,) * len(window)
            taps, out = tap_table(h.spatial, window, tuple(stride), a.get("padding", "valid"))
            return self._add(Node("", "pool", (src,), out, h.channels,
                                  matrix=self._pool_matrix(taps, h.positions, op == "avg_pool")))
        if op in ("global_avg_pool", "global_sum_pool"):
            taps = np.arange(h.positions)[None, :]
            return self._add(Node("", "pool", (src,), (), h.channels, matrix=self._pool_matrix(
                taps, h.positions, op == "global_avg_pool")))
        if op == "flatten":
            return self._add(Node("", "flatten", (src,), (), h.positions * h.channels))
        if op == "layer_norm":
            return self._add(Node("", "norm", (src,), h.spatial, h.channels,
                                  axes=a.get("axes", "channels")))
        if op == "residual":
            b = self._chain(a["branch"], src)
            s = self._chain(a["shortcut"], src)
            if (self.node(b).spatial, self.node(b).channels) != (
                    self.node(s).spatial, self.node(s).channels):
                raise ValueError("residual branches of different shapes")
            return self._add(Node("", "sum", (b, s), self.node(b).spatial,
                                  self.node(b).channels))
        if op == "concat":
            left, right = self._chain(a["left"], src), self._chain(a["right"], src)
            if self.node(left).spatial != self.node(right).spatial:
                raise ValueError("concat of different spatial shapes")
            return self._add(Node("", "concat", (left, right), self.node(left).spatial,
                                  self.node(left).channels + self.node(right).channels))
        return self._add(Node("", "nonlin", (src,), h.spatial, h.channels, phi=_phi(op, a)))

    @staticmethod
    def _pool_matrix(taps: np.ndarray, p_in: int, average: bool) -> np.ndarray:
        m = np.zeros((taps.shape[0], p_in + 1))
        for o, row in enumerate(taps):
            np.add.at(m[o], row, 1.0 / taps.shape[1] if average else 1.0)
        return m[:, :p_in]  # the zero slot contributes nothing

    # -- sampling ----------------------------------------------------------------------------
    def draw_params(self, nb: int, rng: np.random.Generator) -> dict[str, tuple]:
        """Per conv/dense node: Z (nb, F·C_in, C_out) and β (nb, C_out) (or None), N(0, 1)."""
        params = {}
        for node in self.nodes:
            if node.op != "conv":
                continue
            fan = node.taps.shape[1] * self.node(node.inputs[0]).channels
            per = (node.positions,) if node.local else ()  # conv_local: per output position
            z = rng.standard_normal((nb, *per, fan, node.channels), dtype=self.dtype)
            beta = (None if node.b_std is None
                    else rng.standard_normal((nb, *per, node.channels), dtype=self.dtype))
            params[node.name] = (z, beta)
        return params

    def sample(self, x: np.ndarray, draws: int, rng: np.random.Generator,
               chunk: int | None = None) -> Draws:
        """``draws`` independent networks evaluated on x (N, *input_shape)."""
        if chunk is None:  # ~2**22 elements in the largest per-chunk arrays
            chunk = max(1, min(draws, 2**22 // self._elements_per_draw(len(x))))
        parts, done = [], 0
        # One BLAS thread: the GEMMs here are small and batched; threads only add
        # synchronisation (measured 3-10x slower on 2 busy cores).
        with (threadpool_limits(1, "blas") if threadpool_limits is not None
              else contextlib.nullcontext()):
            while done < draws:
                b = min(chunk, draws - done)
                parts.append(self.evaluate(x, self.draw_params(b, rng)))
                done += b
        return Draws(*(np.concatenate([p[i] for p in parts]).astype(np.float64)
                       for i in range(3)))

    def _elements_per_draw(self, n_pts: int) -> int:
        """A bound on the array elements one draw needs at once (weights, activations,
        the Grams of _conv_ntk)."""
        total = 0
        for node in self.nodes:
            total += n_pts * node.positions * node.channels
            if node.op == "conv":
                src = self.node(node.inputs[0])
                fan_in = node.taps.shape[1] * src.channels
                total += (fan_in * node.channels * (node.positions if node.local else 1)
                          + n_pts * node.positions * fan_in)
                total += 2 * (n_pts * node.positions) ** 2 + (n_pts * (src.positions + 1)) ** 2
        return total

    def forward(self, x: np.ndarray, params: dict[str, tuple]) -> dict[str, np.ndarray]:
        """Activations of every node, (nb or 1, N, P, C)."""
        x = np.asarray(x, dtype=self.dtype)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"inputs of shape {x.shape[1:]}, the network takes "
                             f"{self.input_shape}")
        n_pts = x.shape[0]
        acts: dict[str, np.ndarray] = {}
        for node in self.nodes:
            if node.op == "input":
                acts[node.name] = x.reshape(1, n_pts, node.positions, node.channels)
                continue
            h = acts[node.inputs[0]]
            if node.op == "conv":
                z, beta = params[node.name]
                nb = z.shape[0]
                patches = _with_zero_slot(h)[:, :, node.taps, :]  # (., N, P_out, F, C_in)
                if node.local:
                    acts[node.name] = self._local_forward(node, patches, z, beta)
                    continue
                patches = patches.reshape(h.shape[0], n_pts * node.positions, -1)
                if h.shape[0] == 1:  # the same patches for every draw: one GEMM
                    g = patches[0] @ z.transpose(1, 0, 2).reshape(z.shape[1], -1)
                    g = g.reshape(-1, nb, node.channels).transpose(1, 0, 2)
                else:
                    g = np.matmul(patches, z)  # (nb, N·P_out, C_out)
                g *= node.scale
                if beta is not None:
                    g += node.b_std * beta[:, None, :]
                acts[node.name] = g.reshape(nb, n_pts, node.positions, node.channels)
            elif node.op == "nonlin":
                acts[node.name] = node.phi[0](h)
            elif node.op == "pool":
                acts[node.name] = np.matmul(node.matrix.astype(self.dtype), h)
            elif node.op == "flatten":
                acts[node.name] = h.reshape(h.shape[0], n_pts, 1, -1)
            elif node.op == "norm":
                acts[node.name] = _normalise(h, node.axes)[0]
            elif node.op == "sum":
                acts[node.name] = h + acts[node.inputs[1]]
            elif node.op == "concat":
                a, b = _broadcast_draws(h, acts[node.inputs[1]])
                acts[node.name] = np.concatenate([a, b], axis=-1)
        return acts

    def output(self, x: np.ndarray, params: dict[str, tuple]) -> np.ndarray:
        """f(x) for each draw: (nb, N)."""
        return self.forward(x, params)[self.out_name][:, :, 0, 0]

    def evaluate(self, x: np.ndarray, params: dict[str, tuple]):
        """(f, Θ̂, E[f fᵀ | all but the readout]) for each draw of ``params``."""
        acts = self.forward(x, params)
        out = self.node(self.out_name)
        f = acts[out.name][:, :, 0, 0]
        nb, n_pts = f.shape
        h = acts[out.inputs[0]][:, :, 0, :]
        b2 = 0.0 if out.b_std is None else out.b_std**2
        nngp_cond = out.scale**2 * np.matmul(h, h.transpose(0, 2, 1)) + b2
        nngp_cond = np.broadcast_to(nngp_cond, (nb, n_pts, n_pts))

        deltas: dict[str, np.ndarray] = {out.name: np.ones((nb, n_pts, 1, 1), self.dtype)}
        ntk = np.zeros((nb, n_pts, n_pts))

        def add(name: str, d: np.ndarray) -> None:
            deltas[name] = deltas[name] + d if name in deltas else d

        for node in reversed(self.nodes):
            d = deltas.pop(node.name, None)
            if d is None or node.op == "input":
                continue
            src = node.inputs[0]
            if node.op == "conv":
                ntk += self._conv_ntk(node, acts[src], d)
                if self.node(src).op != "input":  # no gradient needed into the data
                    z = params[node.name][0]
                    p_out = node.positions
                    if node.local:  # dp[n, o, :] = c·W_o d[n, o, :]
                        dp = node.scale * np.matmul(d.transpose(0, 2, 1, 3),
                                                    z.transpose(0, 1, 3, 2)).transpose(0, 2, 1, 3)
                    else:
                        dp = node.scale * np.matmul(d.reshape(nb, n_pts * p_out, -1),
                                                    z.transpose(0, 2, 1))
                    dp = dp.reshape(nb, n_pts, p_out * node.taps.shape[1], -1)
                    add(src, np.matmul(self._scatter(node), dp)[:, :, :-1, :])
            elif node.op == "nonlin":
                add(src, d * node.phi[1](acts[src]))
            elif node.op == "pool":
                add(src, np.matmul(node.matrix.T.astype(self.dtype), d))
            elif node.op == "flatten":
                s = self.node(src)
                add(src, d.reshape(nb, n_pts, s.positions, s.channels))
            elif node.op == "norm":  # through the mean and the variance too
                y, sigma, axes = _normalise(acts[src], node.axes)
                add(src, (d - d.mean(axis=axes, keepdims=True)
                          - y * (d * y).mean(axis=axes, keepdims=True)) / sigma)
            elif node.op == "sum":
                add(src, d)
                add(node.inputs[1], d)
            elif node.op == "concat":
                k = self.node(src).channels
                add(src, d[..., :k])
                add(node.inputs[1], d[..., k:])
        return f, ntk, nngp_cond

    def ntk_factors(self, node: Node) -> tuple[float, float]:
        """(cw², cb²): the factors of a conv/dense node's weight and bias sums in Θ̂ (the
        squared derivative of the layer's output in its trained weight, in its trained
        bias); cb² = 0 without a bias."""
        if self.parameterization == "ntk":  # trained: Z and β
            return node.scale**2, (0.0 if node.b_std is None else node.b_std**2)
        return 1.0, (0.0 if node.b_std is None else 1.0)  # trained: W = c·Z and b·β

    def _scatter(self, node: Node) -> np.ndarray:
        """(P_in + 1, P_out·F) 0/1 matrix: the transpose of the patch gather."""
        cache = self._scatter_cache
        if node.name not in cache:
            p_in = self.node(node.inputs[0]).positions
            flat = node.taps.ravel()
            m = np.zeros((p_in + 1, flat.size), self.dtype)
            m[flat, np.arange(flat.size)] = 1.0
            cache[node.name] = m
        return cache[node.name]

    def _conv_ntk(self, node: Node, h: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Σ over this conv's weights and bias of ∂f(x)/∂θ ∂f(x')/∂θ: (nb, N, N)."""
        nb, n_pts, p_out, _ = d.shape
        dd = np.matmul(d.reshape(nb, n_pts * p_out, -1), d.reshape(nb, n_pts * p_out, -1)
                       .transpose(0, 2, 1)).reshape(nb, n_pts, p_out, n_pts, p_out)
        if node.local:  # each output position's own weights pair o with o only
            dd = dd * np.eye(p_out, dtype=dd.dtype)[:, None, :]
        he = _with_zero_slot(h)
        q = he.shape[2]
        hh = np.matmul(he.reshape(he.shape[0], n_pts * q, -1),
                       he.reshape(he.shape[0], n_pts * q, -1).transpose(0, 2, 1))
        hh = hh.reshape(he.shape[0], n_pts, q, n_pts, q)
        # A[x, o; x', o'] = Σ_t hh[x, taps[o, t]; x', taps[o', t]]: the patches' Gram.
        pg = 0.0
        for t in range(node.taps.shape[1]):
            col = node.taps[:, t]
            pg = pg + hh[:, :, col][:, :, :, :, col]
        cw2, cb2 = self.ntk_factors(node)
        ntk = cw2 * np.einsum("bnpmq,bnpmq->bnm", np.broadcast_to(pg, dd.shape), dd)
        if node.b_std is not None:
            ntk = ntk + cb2 * dd.sum(axis=(2, 4))
        return ntk

    @staticmethod
    def _local_forward(node: Node, patches: np.ndarray, z: np.ndarray,
                       beta: np.ndarray | None) -> np.ndarray:
        """A conv_local: out[., n, o] = c·patch[n, o]·W_o (+ b·β_o), (nb, N, P_out, C_out)."""
        lead, n_pts, p_out = patches.shape[:3]
        pt = patches.reshape(lead, n_pts, p_out, -1).transpose(0, 2, 1, 3)  # (., P_out, N, K)
        g = node.scale * np.matmul(pt, z).transpose(0, 2, 1, 3)
        if beta is not None:
            g = g + node.b_std * beta[:, None, :, :]
        return g


LN_EPS = 1e-12  # Neural Tangents' LayerNorm default


def _normalise(h: np.ndarray, axes_name: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(y, σ, axes): y = (h - mean)/σ, σ = sqrt(var + LN_EPS) over the channels (axis 3)
    or over positions and channels (axes 2, 3) of each input."""
    axes = (2, 3) if axes_name == "all" else (3,)
    centred = h - h.mean(axis=axes, keepdims=True)
    sigma = np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + LN_EPS)
    return centred / sigma, sigma, axes


def _with_zero_slot(h: np.ndarray) -> np.ndarray:
    """h (., N, P, C) with an all-zero position P appended (the padding slot)."""
    return np.concatenate([h, np.zeros((*h.shape[:2], 1, h.shape[3]), h.dtype)], axis=2)


def _broadcast_draws(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nb = max(a.shape[0], b.shape[0])
    return (np.broadcast_to(a, (nb, *a.shape[1:])), np.broadcast_to(b, (nb, *b.shape[1:])))
