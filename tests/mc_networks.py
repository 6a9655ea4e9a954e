"""Finite-width networks in numpy, for Monte Carlo checks of ntkc's kernels (DESIGN §6.2).

Given a :class:`ntkc.ir.Program` and a width n, :class:`FiniteNetwork` samples random
finite networks of that architecture: every hidden dense line gets n units (whatever its
``width`` attribute says), the output dense line gets 1 unit. For each draw it evaluates the
scalar output f(x) on a batch of inputs and the empirical NTK

    Θ̂(x, x') = Σ_θ ∂f(x)/∂θ · ∂f(x')/∂θ        (θ: every weight and bias)

by hand-written backprop. Nothing here uses ntkc's kernel formulas: only the program's
graph, its numeric attributes (w_std, b_std, coefficients) and, for user ``nonlin`` lines
only, φ and φ' lambdified from the user's own expression. Built-in nonlinearities are
implemented here independently, from Neural Tangents' definitions.

Parameterizations (both sample the same function; they differ in what is trained):

* ntk:      W ~ N(0, 1), g = w/√fan_in · h Wᵀ + b·β, β ~ N(0, 1); θ = (W, β).
* standard: W ~ N(0, w²/fan_in), g = h Wᵀ + b, b ~ N(0, b_std²); θ = (W, b).

The empirical NTK of one dense line, with δ = ∂f/∂g (examples × units) and h its input
(examples × fan_in), is computed without per-example weight gradients:

    Σ_ab ∂f(x)/∂W_ab ∂f(x')/∂W_ab = c² (δ δᵀ)(x, x') · (h hᵀ)(x, x'),   bias: c_b² (δ δᵀ)(x, x')

with c = w/√fan_in, c_b = b (ntk) or c = c_b = 1 (standard, bias present even if b_std = 0).

Draws are vectorised: arrays carry a leading axis of draws (chunks of ``chunk`` draws).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.special as ss
import sympy

from ntkc.ir import Program
from ntkc.semantics.duals import numeric_phi, numeric_phi_prime

LAYER_NORM_EPS = 1e-12  # Neural Tangents' LayerNorm default (inside the sqrt)
MAX_POINTS = 16  # inputs per batch a dropout mask is drawn for (masks are drawn with the weights)


def _builtin_phi(label: str, args: dict[str, float]):
    """φ and φ' of the built-ins the Monte Carlo tests use, by Neural Tangents' definitions.

    Written out here (not taken from ntkc) so that a wrong φ in ntkc's dual table would show
    up as a Monte Carlo disagreement. Returns None for the others."""
    a, b, c = args.get("a", 1.0), args.get("b", 1.0), args.get("c", 0.0)
    if label == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda z: (z > 0).astype(float))
    if label == "erf":  # a·erf(b·z) + c
        return (lambda z: a * ss.erf(b * z) + c,
                lambda z: a * b * 2.0 / np.sqrt(np.pi) * np.exp(-((b * z) ** 2)))
    if label == "rectified_monomial":  # max(z, 0)^degree
        n = int(args["degree"])
        if n == 0:
            return (lambda z: (z > 0).astype(float)), np.zeros_like
        return (lambda z: np.where(z > 0, np.abs(z) ** n, 0.0),
                lambda z: np.where(z > 0, n * np.abs(z) ** (n - 1), 0.0))
    if label == "identity":
        return (lambda z: z), np.ones_like
    return _jax_phi(label, args)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _jax_phi(label: str, args: dict[str, float]):
    """φ and φ' of the built-ins without a closed-form dual, by jax.nn's definitions (and
    their derivatives by hand); None for the others."""
    def elu(alpha: float, scale: float = 1.0):
        return (lambda z: scale * np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0))),
                lambda z: scale * np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0.0))))

    def mish_prime(z):
        t = np.tanh(np.logaddexp(z, 0.0))
        return t + z * (1 - t * t) * ss.expit(z)

    table = {
        "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
        "sigmoid": (ss.expit, lambda z: ss.expit(z) * ss.expit(-z)),
        "softplus": (lambda z: np.logaddexp(z, 0.0), ss.expit),
        "silu": (lambda z: z * ss.expit(z),
                 lambda z: ss.expit(z) * (1 + z * ss.expit(-z))),
        "mish": (lambda z: z * np.tanh(np.logaddexp(z, 0.0)), mish_prime),
    }
    table["swish"] = table["silu"]
    if label == "elu":
        return elu(args.get("alpha", 1.0))
    if label == "selu":
        return elu(SELU_ALPHA, SELU_SCALE)
    return table.get(label)


@dataclass
class Draws:
    """Per-draw quantities, stacked over draws (axis 0).

    f: (D, N) outputs. ntk: (D, N, N) empirical NTKs.
    nngp_cond: (D, N, N) E[f(x) f(x') | everything but the readout layer]
    = c² h hᵀ + b² with h the readout's input (the readout weights integrated out
    exactly: a Rao–Blackwellised empirical NNGP with the same mean as f fᵀ).
    """

    f: np.ndarray
    ntk: np.ndarray
    nngp_cond: np.ndarray

    @property
    def ff(self) -> np.ndarray:
        return self.f[:, :, None] * self.f[:, None, :]


def mean_and_se(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its standard error (sample std / √D)."""
    d = samples.shape[0]
    return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(d)


class FiniteNetwork:
    def __init__(self, program: Program, width: int, params: dict[str, float] | None = None):
        self.program = program
        self.width = width
        values = {p.symbol: p.default for p in program.params.values()}
        for name, v in (params or {}).items():
            values[program.params[name].symbol] = v
        self._subs = values

        # Only the lines the output depends on, in program order.
        live = {program.output}
        for node in reversed(list(program.nodes.values())):
            if node.name in live:
                live.update(node.inputs)
        self.order = [n for n in program.nodes.values() if n.name in live]

        out = program.nodes[program.output]
        if out.op != "dense":
            raise ValueError("the Monte Carlo network needs a dense output line")
        self.widths: dict[str, int] = {}
        self.phis: dict[str, tuple] = {}
        for node in self.order:
            ins = [self.widths[i] for i in node.inputs]
            if node.op == "input":
                shape = node.shape
                assert shape is not None and not shape.spatial
                self.widths[node.name] = shape.channels
            elif node.op == "dense":
                self.widths[node.name] = 1 if node.name == program.output else width
            elif node.op in ("nonlin", "layer_norm"):
                self.widths[node.name] = ins[0]
                if node.op == "nonlin":
                    self.phis[node.name] = self._phi(node)
            elif node.op == "lincomb":
                if len(set(ins)) != 1:
                    raise ValueError(f"{node.name}: summands of different widths {ins}")
                self.widths[node.name] = ins[0]
            elif node.op == "concat":
                self.widths[node.name] = sum(ins)
            elif node.op in ("dropout", "product"):
                self.widths[node.name] = ins[0]
                if node.op == "product" and ins[0] != ins[1]:
                    raise ValueError(f"{node.name}: factors of different widths {ins}")
            else:
                raise NotImplementedError(f"Monte Carlo network: op {node.op}")

    def _num(self, expr) -> float:
        if isinstance(expr, sympy.Basic):
            return float(expr.subs(self._subs))
        return float(expr)

    def _phi(self, node):
        label = node.attrs.get("label")
        if "args" in node.attrs:  # a built-in
            args = {k: (v if isinstance(v, list) else self._num(v))
                    for k, v in node.attrs["args"].items()}
            pair = _builtin_phi(label, args)
            if pair is not None:
                return pair
        # A user nonlin: φ is the user's own expression (params set to their values).
        user = node.attrs["dual"]
        dual = dataclasses.replace(user, phi=lambda z: user.phi(z).subs(self._subs))
        phi, dphi = numeric_phi(dual), numeric_phi_prime(dual)
        # φ' is sympy's derivative of φ: check it against central differences of φ away
        # from 0 (where the kinks of max/abs sit), so a wrong φ' cannot go unnoticed.
        z = np.linspace(-3.0, 3.0, 61)
        z = z[np.abs(z) > 0.05]
        eps = 1e-6
        fd = (phi(z + eps) - phi(z - eps)) / (2 * eps)
        if not np.allclose(dphi(z), fd, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{label}: φ' disagrees with finite differences of φ")
        return phi, dphi

    def sample(self, x: np.ndarray, draws: int, rng: np.random.Generator,
               chunk: int | None = None) -> Draws:
        """``draws`` independent networks evaluated on x (N, d)."""
        x = np.asarray(x, dtype=float)
        if chunk is None:  # ~32 MB of weights per dense line and chunk
            chunk = max(1, min(draws, 2**22 // max(self.width * self.width, 1)))
        parts = []
        buffers: dict[str, np.ndarray] = {}  # reused between chunks: filling preallocated
        done = 0  # memory is ~2x faster than allocating fresh arrays for every chunk
        while done < draws:
            b = min(chunk, draws - done)
            parts.append(self.evaluate(x, self.draw_params(b, rng, buffers)))
            done += b
        return Draws(*(np.concatenate([p[i] for p in parts]) for i in range(3)))

    # -- one chunk of draws -----------------------------------------------------------------
    def draw_params(self, nb: int, rng: np.random.Generator,
                    buffers: dict[str, np.ndarray] | None = None) -> dict[str, tuple]:
        """Standard normals Z (nb, units, fan_in) and β (nb, 1, units) (or None) per dense
        line, in program order: W = w/√fan_in · Z and bias = b_std · β in both
        parameterizations. ``buffers``: arrays to fill in place (keyed by line name)."""
        buffers = {} if buffers is None else buffers
        params = {}
        for node in self.order:
            if node.op == "dropout":  # its mask, kept w.p. rate and scaled by 1/rate (train mode)
                keep = self._num(node.attrs["rate"])
                mask = rng.random((nb, MAX_POINTS, self.widths[node.name])) < keep
                params[node.name] = (mask / keep, None)
            if node.op != "dense":
                continue
            units, fan_in = self.widths[node.name], self.widths[node.inputs[0]]
            z = buffers.get(node.name)
            if z is None or z.shape != (nb, units, fan_in):
                z = buffers[node.name] = np.empty((nb, units, fan_in))
            rng.standard_normal(out=z)
            beta = None
            if node.attrs["b_std"] is not None:
                beta = rng.standard_normal((nb, 1, units))
            params[node.name] = (z, beta)
        return params

    def gradient_weights(self, name: str) -> tuple[float, float, float, float]:
        """(scale, b_std, cw², cb²) of a dense line: W = scale·Z, bias = b_std·β, and the
        squared factors by which ∂f/∂g ⊗ h (weights) and ∂f/∂g (bias) enter Θ̂."""
        node = self.program.nodes[name]
        fan_in = self.widths[node.inputs[0]]
        scale = self._num(node.attrs["w_std"]) / np.sqrt(fan_in)
        has_bias = node.attrs["b_std"] is not None
        b = self._num(node.attrs["b_std"]) if has_bias else 0.0
        if self.program.parameterization == "ntk":  # trained: Z and β
            return scale, b, scale**2, b**2
        return scale, b, 1.0, (1.0 if has_bias else 0.0)  # trained: W and the bias

    def forward(self, x: np.ndarray, params: dict[str, tuple]):
        """Activations of every live line, (nb, N, width), and layer_norm's saved values."""
        nb = next(iter(params.values()))[0].shape[0]
        acts: dict[str, np.ndarray] = {}
        saved: dict[str, tuple] = {}
        for node in self.order:
            if node.op == "input":
                acts[node.name] = np.broadcast_to(x, (nb, *x.shape))
            elif node.op == "dense":
                z, beta = params[node.name]
                scale, b, _, _ = self.gradient_weights(node.name)
                # (Z hᵀ)ᵀ: numpy's batched matmul is fastest with the big matrix on the left
                g = scale * np.matmul(z, acts[node.inputs[0]].transpose(0, 2, 1)).transpose(0, 2, 1)
                acts[node.name] = g if beta is None else g + b * beta
            elif node.op == "nonlin":
                acts[node.name] = self.phis[node.name][0](acts[node.inputs[0]])
            elif node.op == "lincomb":
                acts[node.name] = sum(self._num(c) * acts[u] for c, u in node.attrs["terms"])
            elif node.op == "concat":
                acts[node.name] = np.concatenate([acts[u] for u in node.inputs], axis=-1)
            elif node.op == "product":  # p = a * b, unit by unit
                acts[node.name] = acts[node.inputs[0]] * acts[node.inputs[1]]
            elif node.op == "dropout":  # one mask per draw, input and unit
                h = acts[node.inputs[0]]
                acts[node.name] = h * params[node.name][0][:, :h.shape[1]]
            elif node.op == "layer_norm":
                g = acts[node.inputs[0]]
                mu = g.mean(axis=-1, keepdims=True)
                sd = np.sqrt(g.var(axis=-1, keepdims=True) + LAYER_NORM_EPS)
                nrm = (g - mu) / sd
                saved[node.name] = (nrm, sd)
                acts[node.name] = nrm
        return acts, saved

    def output(self, x: np.ndarray, params: dict[str, tuple]) -> np.ndarray:
        """f(x) for each draw: (nb, N)."""
        acts, _ = self.forward(np.asarray(x, dtype=float), params)
        return acts[self.program.output][:, :, 0]

    def evaluate(self, x: np.ndarray, params: dict[str, tuple]):
        """(f, Θ̂, E[f fᵀ | all but the readout]) for each draw of ``params``."""
        prog = self.program
        acts, saved = self.forward(x, params)
        nb, n_pts = acts[prog.output].shape[0], x.shape[0]
        out = prog.nodes[prog.output]
        f = acts[out.name][:, :, 0]
        scale, b, _, _ = self.gradient_weights(out.name)
        nngp_cond = scale**2 * gram(acts[out.inputs[0]]) + b**2

        # Backprop: deltas[v] = ∂f/∂v, (nb, N, width of v).
        deltas: dict[str, np.ndarray] = {out.name: np.ones((nb, n_pts, 1))}
        ntk = np.zeros((nb, n_pts, n_pts))

        def add(name: str, d: np.ndarray) -> None:
            deltas[name] = deltas[name] + d if name in deltas else d

        for node in reversed(self.order):
            d = deltas.get(node.name)
            if d is None or node.op == "input":
                continue
            if node.op == "dense":
                (src,) = node.inputs
                scale, _, cw2, cb2 = self.gradient_weights(node.name)
                dd = gram(d)
                ntk += cw2 * dd * gram(acts[src])
                if cb2:
                    ntk += cb2 * dd
                if prog.nodes[src].op != "input":
                    zt = params[node.name][0].transpose(0, 2, 1)
                    add(src, scale * np.matmul(zt, d.transpose(0, 2, 1)).transpose(0, 2, 1))
            elif node.op == "nonlin":
                (src,) = node.inputs
                add(src, d * self.phis[node.name][1](acts[src]))
            elif node.op == "lincomb":
                for c, u in node.attrs["terms"]:
                    add(u, self._num(c) * d)
            elif node.op == "dropout":
                add(node.inputs[0], d * params[node.name][0][:, :n_pts])
            elif node.op == "product":
                a, b = node.inputs
                add(a, d * acts[b])
                add(b, d * acts[a])
            elif node.op == "concat":
                start = 0
                for u in node.inputs:
                    k = self.widths[u]
                    add(u, d[..., start:start + k])
                    start += k
            elif node.op == "layer_norm":
                nrm, sd = saved[node.name]
                dg = (d - d.mean(axis=-1, keepdims=True)
                      - nrm * (d * nrm).mean(axis=-1, keepdims=True)) / sd
                add(node.inputs[0], dg)
        return f, ntk, nngp_cond


def gram(a: np.ndarray) -> np.ndarray:
    """a aᵀ over the last axis, per draw: (D, N, k) → (D, N, N)."""
    return np.matmul(a, a.transpose(0, 2, 1))
