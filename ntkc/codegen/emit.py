"""Code generation: a Recursion → the source of a self-contained module.

The point phase (per input) and the pair phase (per pair of inputs) are each
one straight-line block: the recursion is substituted into the outputs and
common subexpressions are eliminated (sympy.cse), then printed as scalar code
inside numba prange loops (target cpu), as vectorised numpy code for the
reference backend (always), and as numba.cuda kernels (target cuda, see
ntkc.codegen.cuda).
"""

from __future__ import annotations

import hashlib

import numpy as np
import sympy

from .. import __version__
from ..derive import Recursion
from ..quadrature import DEFAULT_DEGREE, GaussExpectation
from .driver_template import DRIVER, comment, module_prologue
from .fast_acos import ACOS_SOURCE
from .hoist import hoist_roots
from .printers import ArrayPrinter, CpuPrinter, NumbaPrinter

# What `--target` asks for → the device kernels the module gets. The point phase
# (numba, CPU) and the numpy reference are in every module.
TARGETS = {"cpu": ("cpu",), "cuda": ("cuda",), "all": ("cpu", "cuda")}


def _substituted(assignments, extra: dict) -> dict[sympy.Symbol, sympy.Expr]:
    full = dict(extra)
    for a in assignments:
        full[a.symbol] = a.expr.xreplace(full)
    return full


def _block(outputs: list[sympy.Expr], printer, indent: str, tmp: str) -> tuple[list[str], list[str]]:
    """cse the outputs: (statements, printed output expressions)."""
    reps, reduced = sympy.cse(outputs, symbols=sympy.numbered_symbols(tmp), order="none")
    for s, _ in reps:
        printer.names[s] = str(s)
    lines = [f"{indent}{s} = {printer.doprint(e)}" for s, e in reps]
    return lines, [printer.doprint(e) for e in reduced]


def _floats(xs: np.ndarray) -> str:
    return "np.array([" + ", ".join(repr(float(v)) for v in xs) + "])"


def quad_scalar(name: str, t: type, printer) -> list[str]:
    """A scalar Gauss-Hermite helper (no decorator): the same text serves @numba.njit
    and @cuda.jit(device=True), so the CPU and GPU kernels integrate identically."""
    it = t.integrand
    u, v = sympy.Symbol("u"), sympy.Symbol("v")
    printer.names[u], printer.names[v] = "u", "v"
    fu = printer.doprint(it.f.xreplace({it.z: u}))
    if it.dims == 1:
        return [
            f"def {name}(k, params):",
            "    s = math.sqrt(2.0 * max(k, 0.0))",
            "    acc = 0.0",
            "    for i in range(_GH_X.shape[0]):",
            "        u = s * _GH_X[i]",
            f"        acc += _GH_W[i] * ({fu})",
            "    return acc / math.sqrt(math.pi)",
        ]
    gv = printer.doprint(it.g.xreplace({it.z: v}))
    return [
        f"def {name}(k11, k12, k22, params):",
        "    # u = sqrt(2 k11) s, v = sqrt(2) k12/sqrt(k11) s + sqrt(2 (k22 - k12^2/k11)) t",
        "    s = math.sqrt(2.0 * max(k11, 0.0))",
        "    c = math.sqrt(2.0) * k12 / math.sqrt(k11) if k11 > 0 else 0.0",
        "    r = math.sqrt(2.0 * max(k22 - (k12 * k12 / k11 if k11 > 0 else 0.0), 0.0))",
        "    acc = 0.0",
        "    for i in range(_GH_X.shape[0]):",
        "        u = s * _GH_X[i]",
        f"        fu = {fu}",
        "        inner = 0.0",
        "        for j in range(_GH_X.shape[0]):",
        "            v = c * _GH_X[i] + r * _GH_X[j]",
        f"            inner += _GH_W[j] * ({gv})",
        "        acc += _GH_W[i] * fu * inner",
        "    return acc / math.pi",
    ]


class ModuleWriter:
    def __init__(self, rec: Recursion, quad_degree: int = DEFAULT_DEGREE, target: str = "cpu"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.rec = rec
        self.prog = rec.program
        self.quad_degree = quad_degree
        self.targets = TARGETS[target]
        self.names = dict(rec.code_names)
        for i, p in enumerate(self.prog.params.values()):
            self.names[p.symbol] = f"params[{i}]"
        self.slots = {a.symbol: k for k, a in enumerate(rec.point)}
        point_full = _substituted(rec.point, {})
        pair_full = _substituted(rec.pair, {})
        diag = [rec.outputs[k].xreplace(point_full) for k in ("nngp_diag", "ntk_diag")]
        self.point_outputs = [point_full[a.symbol] for a in rec.point] + diag
        nngp = rec.outputs["nngp"].xreplace(pair_full)
        ntk = rec.outputs["ntk"].xreplace(pair_full)
        # sqrt(K(x,x)·K(x',x')) → per-input roots, computed in the point phase.
        twins = {2: dict(rec.twins)}
        hoisted, self.roots = hoist_roots({"nngp": nngp, "ntk": ntk},
                                          {a.symbol for a in rec.point}, twins, self.names)
        self.nngp, self.ntk = hoisted["nngp"], hoisted["ntk"]
        self.twins = twins[2]
        self.point_symbols = [a.symbol for a in rec.point] + [r.symbol for r in self.roots]
        self.slots = {sym: k for k, sym in enumerate(self.point_symbols)}
        self.point_outputs[len(rec.point):len(rec.point)] = [
            point_full[r.base] ** r.exponent for r in self.roots]
        exprs = self.point_outputs + [self.nngp, self.ntk]
        quads = sorted({type(q) for e in exprs for q in e.atoms(GaussExpectation)},
                       key=lambda t: t.__name__)
        self.helpers = {t: f"_quad{i}" for i, t in enumerate(quads)}

    def _printers(self):
        return (CpuPrinter(dict(self.names), {t: n for t, n in self.helpers.items()}),
                ArrayPrinter(dict(self.names), {t: n + "_np" for t, n in self.helpers.items()}))

    # -- formulas as comments --------------------------------------------------------------
    def formulas(self) -> list[str]:
        out = []
        for node in self.prog.nodes.values():
            group = [a for a in self.rec.point + self.rec.pair if a.line == node.name]
            if not group:
                continue
            # Names are the grammar's identifiers, but a comment must not end early anyway.
            out.append(comment(f"# line {node.pos.line}: {node.name}"))
            for a in group:
                out.append(comment(f"#   {a.symbol} = {a.expr}"))
        return out

    # -- quadrature helpers ----------------------------------------------------------------
    def quadrature(self) -> list[str]:
        if not self.helpers:
            return []
        x, w = np.polynomial.hermite.hermgauss(self.quad_degree)
        src = [f"# Gauss-Hermite nodes and weights, degree {self.quad_degree}",
               f"_GH_X = {_floats(x)}", f"_GH_W = {_floats(w)}", ""]
        for t, name in self.helpers.items():
            it = t.integrand
            u, v = sympy.Symbol("u"), sympy.Symbol("v")
            _, npy = self._printers()
            # The scalar helper's text is shared with the cuda target: libm's acos there.
            nb = NumbaPrinter(dict(self.names), dict(self.helpers))
            npy.names[u], npy.names[v] = "u", "v"
            fu_np = npy.doprint(it.f.xreplace({it.z: u}))
            src += [f"# {t.__name__}: Gaussian expectation by quadrature",
                    "@numba.njit(cache=True)", *quad_scalar(name, t, nb), ""]
            if it.dims == 1:
                src += [
                    f"def {name}_np(k, params):",
                    "    u = numpy.sqrt(2.0 * numpy.maximum(k, 0.0))[..., None] * _GH_X",
                    f"    return (({fu_np}) * (u * 0 + 1) * _GH_W).sum(-1) / math.sqrt(math.pi)",
                    "",
                ]
                continue
            gv_np = npy.doprint(it.g.xreplace({it.z: v}))
            src += [
                f"def {name}_np(k11, k12, k22, params):",
                "    k11, k12, k22 = numpy.broadcast_arrays(k11, k12, k22)",
                "    s = numpy.sqrt(2.0 * numpy.maximum(k11, 0.0))[..., None, None]",
                "    safe = numpy.where(k11 > 0, k11, 1.0)",
                "    c = numpy.where(k11 > 0, math.sqrt(2.0) * k12 / numpy.sqrt(safe), 0.0)",
                "    r2 = k22 - numpy.where(k11 > 0, k12 * k12 / safe, 0.0)",
                "    r = numpy.sqrt(2.0 * numpy.maximum(r2, 0.0))",
                "    u = s * _GH_X[:, None]",
                "    v = c[..., None, None] * _GH_X[:, None] + r[..., None, None] * _GH_X[None, :]",
                f"    vals = ({fu_np}) * ({gv_np}) * (v * 0 + 1)",
                "    return (vals * _GH_W[:, None] * _GH_W[None, :]).sum((-2, -1)) / math.pi",
                "",
            ]
        return src

    # -- point and pair phases -------------------------------------------------------------
    def point_phase(self) -> list[str]:
        nb, npy = self._printers()
        body, outs = _block(self.point_outputs, nb, " " * 8, "t")
        src = ["@numba.njit(parallel=True, cache=True)", "def _point_numba(sqs, params, out):",
               "    for i in numba.prange(sqs.shape[0]):", "        sq = sqs[i]"]
        src += body + [f"        out[i, {k}] = {o}" for k, o in enumerate(outs)]
        body_np, outs_np = _block(self.point_outputs, npy, "    ", "t")
        src += ["", "", "def _point_numpy(sq, params):",
                "    out = numpy.empty((sq.shape[0], N_POINT))"]
        src += body_np + [f"    out[:, {k}] = {o}" for k, o in enumerate(outs_np)]
        return src + ["    return out"]

    def _loads(self, exprs, printer, which: int, row: str, vec: str | None,
               transposed: bool = False) -> list[str]:
        """Loads of the point quantities the exprs use. transposed: x' quantities from
        P2T (slot, point), contiguous along the pair loop, so it vectorises."""
        syms = set().union(*(e.free_symbols for e in exprs))
        lines = []
        for s1 in self.point_symbols:
            sym = s1 if which == 1 else self.twins[s1]
            if sym in syms:
                k = self.slots[s1]
                if vec is not None:
                    src = f"P{which}[:, {k}]{vec}"
                elif which == 2 and transposed:
                    src = f"P2T[{k}, {row}]"
                else:
                    src = f"P{which}[{row}, {k}]"
                lines.append(f"{printer.names[sym]} = {src}")
        return lines

    def pair_phase(self, name: str, outputs: list[sympy.Expr]) -> list[str]:
        nb, _ = self._printers()
        body, outs = _block(outputs, nb, " " * 16, "t")
        args = "G, P1, P2T, params, ntk, symmetric" if len(outputs) == 2 else \
            "G, P1, P2T, params, symmetric"
        src = [
            "@numba.njit(parallel=True, cache=True)",
            f"def {name}({args}):",
            "    n1, n2 = G.shape",
            "    # rows t and n1-1-t go to the same task: balanced work on the triangle",
            "    for task in numba.prange((n1 + 1) // 2):",
            "        for half in range(2 if 2 * task + 1 < n1 else 1):",
            "            i = task + half * (n1 - 1 - 2 * task)",
        ]
        src += ["            " + ln for ln in self._loads(outputs, nb, 1, "i", None)]
        # Row views and a loop counter from 0 on a start known to be >= 0: numba can
        # drop its negative-index checks and LLVM vectorises the loop over j.
        src += ["            j0 = max(i, 0) if symmetric else 0",
                "            Gi = G[i]"]
        if len(outputs) == 2:
            src.append("            Ti = ntk[i]")
        src += ["            for k in range(n2 - j0):",
                "                j = j0 + k",
                "                dot = Gi[j]"]
        src += ["                " + ln for ln in self._loads(outputs, nb, 2, "j", None, True)]
        src += body + [f"                Gi[j] = {outs[0]}"]
        if len(outputs) == 2:
            src.append(f"                Ti[j] = {outs[1]}")
        return src

    def pair_numpy(self) -> list[str]:
        _, npy = self._printers()
        outputs = [self.nngp, self.ntk]
        src = ["def _pairs_numpy(G, P1, P2, params):", "    dot = G"]
        src += ["    " + ln for ln in self._loads(outputs, npy, 1, "", "[:, None]")]
        src += ["    " + ln for ln in self._loads(outputs, npy, 2, "", "[None, :]")]
        body, outs = _block(outputs, npy, "    ", "t")
        src += body
        src += [f"    nngp = numpy.zeros(G.shape) + ({outs[0]})",
                f"    ntk = numpy.zeros(G.shape) + ({outs[1]})",
                "    return nngp, ntk"]
        return src

    def module(self, spec_name: str, spec_text: str, options: dict) -> str:
        prog = self.prog
        sha = hashlib.sha256(spec_text.encode()).hexdigest()
        shape = (*prog.input_shape.spatial, prog.input_shape.channels)
        params = {k: p.default for k, p in prog.params.items()}
        head = [
            *module_prologue(prog.network, self.targets, __version__),
            f"SPEC_FILE = {spec_name!r}",
            f"SPEC_SHA256 = {sha!r}",
            f"NTKC_VERSION = {__version__!r}",
            f"COMPILE_OPTIONS = {options!r}",
            f"NETWORK = {prog.network!r}",
            f"PARAMETERIZATION = {prog.parameterization!r}",
            f"INPUT_SHAPE = {tuple(shape)!r}",
            f"PARAMS = {params!r}",
            f"TARGETS = {self.targets!r}  # devices with kernels here; the first is the default",
            f"N_POINT = {len(self.point_outputs)}",
            "DIAG_NNGP, DIAG_NTK = N_POINT - 2, N_POINT - 1  # point slots of K(x,x), Θ(x,x)",
            "",
            "# The recursion, one group per spec line (K: NNGP kernel, Θ: NTK):",
            *self.formulas(),
            "",
            "_np_erf = np.vectorize(math.erf, otypes=[np.float64])",
            "",
        ]
        parts = [head, ACOS_SOURCE.splitlines(), self.quadrature(), self.point_phase(), [""]]
        if "cpu" in self.targets:
            parts += [self.pair_phase("_pairs_nngp", [self.nngp]), [""],
                      self.pair_phase("_pairs_both", [self.nngp, self.ntk]), [""]]
        parts.append(self.pair_numpy())
        src = "\n".join("\n".join(p) for p in parts) + "\n" + DRIVER
        if "cuda" in self.targets:
            from .cuda import CudaWriter  # the cuda emitter only when asked for

            src += CudaWriter(self).source()
        return src
