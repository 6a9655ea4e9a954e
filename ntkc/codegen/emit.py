"""Code generation: a Recursion → the source of a self-contained module.

The point phase (per input) and the pair phase (per pair of inputs) are each
one straight-line block: one statement per assignment of the recursion, in its
order, each referring to earlier quantities by name, with common subexpressions
eliminated over the block (sympy.cse), printed as scalar code inside numba prange
loops (target cpu), as vectorised numpy code for the reference backend (always),
and as numba.cuda kernels (target cuda, see ntkc.codegen.cuda).

The recursion is never substituted into the outputs: a layer reads K and Θ of the
layer below twice or more (relu's K[h] reads K[g] under acos and under sqrt), so the
substituted tree doubles with every layer, and every walk over it (hoisting, cse,
atoms) took time exponential in depth even though the printed code stayed small.
Statement by statement, code size and compile time grow linearly with depth.
"""

from __future__ import annotations

import hashlib

import sympy

from .._version import __version__
from ..semantics import quadrature
from ..semantics.derive import Recursion
from ..semantics.quadrature import DEFAULT_DEGREE, GaussExpectation
from ..semantics.tangent import output_key
from .driver_template import DRIVER, comment, module_prologue
from .fast_acos import ACOS_SOURCE
from .hoist import hoist_roots
from .printers import (
    ArrayPrinter,
    CpuPrinter,
    Defs,
    NumbaPrinter,
    cse_block,
    needed_defs,
    quad_printed,
    quad_scalar,
)

# numba's inline="always" copies _acos's IR into every call site before typing: with one
# call per relu layer and phase, numba's front end was most of the first call (65 s at
# 50 layers). LLVM inlines the small function all the same (steady state unchanged,
# measured), so the dense modules take it as a plain njit function.
_ACOS_DENSE = ACOS_SOURCE.replace('@numba.njit(inline="always", error_model="numpy")',
                                  '@numba.njit(error_model="numpy")')
assert _ACOS_DENSE != ACOS_SOURCE, "fast_acos changed: update _ACOS_DENSE"

# What `--target` asks for → the device kernels the module gets. The point phase
# (numba, CPU) and the numpy reference are in every module.
TARGETS = {"cpu": ("cpu",), "cuda": ("cuda",), "all": ("cpu", "cuda")}


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
        pair = {a.symbol: a.expr for a in rec.pair}
        pair["nngp"], pair["ntk"] = rec.outputs["nngp"], rec.outputs["ntk"]
        # With tangents (ntkc.semantics.tangent): ∂K, ∂Θ by each param, pair and diagonal.
        self.grad_params = [p.name for p in self.prog.params.values()
                            if output_key("nngp", p.name) in rec.outputs]
        grad_keys = [output_key(w, p) for p in self.grad_params for w in ("nngp", "ntk")]
        pair.update({k: rec.outputs[k] for k in grad_keys})
        # sqrt(K(x,x)·K(x',x')) → per-input roots, computed in the point phase.
        twins = {2: dict(rec.twins)}
        hoisted, self.roots = hoist_roots(pair, {a.symbol for a in rec.point}, twins,
                                          self.names)
        self.nngp, self.ntk = hoisted.pop("nngp"), hoisted.pop("ntk")
        self.grads = [hoisted.pop(k) for k in grad_keys]
        self.pair_defs: Defs = [(a.symbol, hoisted[a.symbol]) for a in rec.pair]
        self.twins = twins[2]
        self.point_defs: Defs = [(a.symbol, a.expr) for a in rec.point] + [
            (r.symbol, r.value(r.base)) for r in self.roots]
        self.point_symbols = [s for s, _ in self.point_defs]
        self.slots = {sym: k for k, sym in enumerate(self.point_symbols)}
        # One point slot per quantity and root, then the checked variances that are no
        # quantity (see _quad_checks), then K(x,x) and Θ(x,x).
        self.diag_outputs = [rec.outputs["nngp_diag"], rec.outputs["ntk_diag"]] + [
            rec.outputs[output_key(w, p)] for p in self.grad_params
            for w in ("nngp_diag", "ntk_diag")]
        self.point_outputs: list[sympy.Expr] = list(self.point_symbols) + self.diag_outputs
        exprs = [e for _, e in self.point_defs + self.pair_defs] + [self.nngp, self.ntk,
                                                                     *self.grads]
        quads = sorted({type(q) for e in exprs for q in e.atoms(GaussExpectation)},
                       key=lambda t: t.__name__)
        self.helpers = {t: f"_quad{i}" for i, t in enumerate(quads)}
        self.quad_checks = self._quad_checks()

    def _quad_checks(self) -> list[tuple[int, str, str]]:
        """The run-time guard's checks: (point slot, helper, where), one per variance
        an expectation is evaluated at, in both phases. A variance that is no point
        quantity yet becomes an extra point output (before the diagonals)."""
        back = {v: k for k, v in self.rec.twins.items()}
        per_input = {*self.point_symbols, self.rec.sq, *self.rec.param_symbols}
        known = dict(self.slots)
        checks, seen = [], set()
        for a in self.rec.point + self.rec.pair:
            for q in sorted(a.expr.atoms(GaussExpectation), key=sympy.default_sort_key):
                for var in (q.args[:1] if len(q.args) == 1 else (q.args[0], q.args[2])):
                    e = var.xreplace(back)  # the variance at x' is the same quantity at x
                    if not e.free_symbols <= per_input or (type(q), e) in seen:
                        continue
                    seen.add((type(q), e))
                    if e not in known:
                        at = len(self.point_outputs) - len(self.diag_outputs)
                        known[e] = at
                        self.point_outputs.insert(at, e)
                    node = self.prog.nodes[a.line]
                    checks.append((known[e], self.helpers[type(q)],
                                   f"line {node.pos.line} ({a.line})"))
        return checks

    def _printers(self):
        return (CpuPrinter(dict(self.names), {t: n for t, n in self.helpers.items()}),
                ArrayPrinter(dict(self.names), {t: n + "_np" for t, n in self.helpers.items()}))

    # -- formulas as comments --------------------------------------------------------------
    def formulas(self) -> list[str]:
        out = []
        groups: dict[str, list] = {}  # by line, in one pass: linear in depth
        for a in self.rec.point + self.rec.pair:
            groups.setdefault(a.line, []).append(a)
        for node in self.prog.nodes.values():
            group = groups.get(node.name)
            if not group:
                continue
            # Names are the grammar's identifiers, but a comment must not end early anyway.
            out.append(comment(f"# line {node.pos.line}: {node.name}"))
            for a in group:
                out.append(comment(f"#   {a.symbol} = {a.expr}"))
        return out

    # -- quadrature helpers ----------------------------------------------------------------
    def quadrature(self) -> list[str]:
        """The rule's tables, its numpy form, the run-time guard and one scalar (numba)
        and one numpy helper per expectation (ntkc.semantics.quadrature)."""
        if not self.helpers:
            return []
        src = quadrature.module_text(self.quad_degree, self.helpers)
        for t, name in self.helpers.items():
            _, npy = self._printers()
            # The scalar helper's text is shared with the cuda target: libm's acos there.
            nb = NumbaPrinter(dict(self.names), dict(self.helpers))
            src += [f"# {t.__name__}: Gaussian expectation by quadrature",
                    "@numba.njit(cache=True)", *quad_scalar(name, t, nb), "", ""]
            src += quadrature.numpy_helper(name, t.integrand, *quad_printed(t, npy)) + [""]
        return src + quadrature.guard_text(self.helpers, self.quad_checks)

    # -- point and pair phases -------------------------------------------------------------
    def point_phase(self) -> list[str]:
        nb, npy = self._printers()
        body, outs = cse_block(self.point_outputs, nb, " " * 4, "t", self.point_defs)
        # With quadratures, both point phases end in the guard (_check_quadrature).
        kernel = "_point_numba_kernel" if self.helpers else "_point_numba"
        # The formulas are a serial function of one input, called from the prange loop:
        # numba's parfor passes cost time superlinear in the statements of a parallel
        # loop's body (3× the serial compile at 50 layers), and the call is per input.
        src = ["@numba.njit(cache=True)", "def _point_one(sq, params, out, i):"]
        src += body + [f"    out[i, {k}] = {o}" for k, o in enumerate(outs)]
        src += ["", "", "@numba.njit(parallel=True, cache=True)",
                f"def {kernel}(sqs, params, out):",
                "    for i in numba.prange(sqs.shape[0]):",
                "        _point_one(sqs[i], params, out, i)"]
        if self.helpers:
            src += ["", "", "def _point_numba(sqs, params, out):",
                    f"    {kernel}(sqs, params, out)", "    _check_quadrature(out, params)"]
        body_np, outs_np = cse_block(self.point_outputs, npy, "    ", "t", self.point_defs)
        src += ["", "", "def _point_numpy(sq, params):",
                "    out = numpy.empty((sq.shape[0], N_POINT))"]
        src += body_np + [f"    out[:, {k}] = {o}" for k, o in enumerate(outs_np)]
        return src + ["    return _check_quadrature(out, params)" if self.helpers else
                      "    return out"]

    def _loads(self, exprs, printer, which: int, row: str, vec: str | None,
               transposed: bool = False) -> list[str]:
        """Loads of the point quantities the exprs use (through the pair defs too).
        transposed: x' quantities from P2T (slot, point), contiguous along the pair
        loop, so it vectorises."""
        used = list(exprs) + [e for _, e in needed_defs(self.pair_defs, exprs)]
        syms = set().union(*(e.free_symbols for e in used))
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
        body, outs = cse_block(outputs, nb, " " * 8, "t", needed_defs(self.pair_defs, outputs))
        both = len(outputs) >= 2
        grads = range(len(outputs) - 2)  # D[k]: the tangents, after K and Θ
        args = "G, P1, P2T, params, symmetric"
        if both:
            args = "G, P1, P2T, params, ntk, D, symmetric" if grads else \
                "G, P1, P2T, params, ntk, symmetric"
        # One row of pairs per call of a serial function (see point_phase: numba's parfor
        # passes are superlinear in the loop body); its loop over j still vectorises.
        src = ["@numba.njit(cache=True)", f"def {name}_row(i, {args}):", "    n2 = G.shape[1]"]
        src += ["    " + ln for ln in self._loads(outputs, nb, 1, "i", None)]
        # Row views and a loop counter from 0 on a start known to be >= 0: numba can
        # drop its negative-index checks and LLVM vectorises the loop over j.
        src += ["    j0 = max(i, 0) if symmetric else 0", "    Gi = G[i]"]
        if both:
            src.append("    Ti = ntk[i]")
        src += [f"    D{k}i = D[{k}, i]" for k in grads]
        src += ["    for k in range(n2 - j0):", "        j = j0 + k", "        dot = Gi[j]"]
        src += ["        " + ln for ln in self._loads(outputs, nb, 2, "j", None, True)]
        src += body + [f"        Gi[j] = {outs[0]}"]
        if both:
            src.append(f"        Ti[j] = {outs[1]}")
        src += [f"        D{k}i[j] = {outs[2 + k]}" for k in grads]
        return src + [
            "", "",
            "@numba.njit(parallel=True, cache=True)",
            f"def {name}({args}):",
            "    n1 = G.shape[0]",
            "    # rows t and n1-1-t go to the same task: balanced work on the triangle",
            "    for task in numba.prange((n1 + 1) // 2):",
            "        for half in range(2 if 2 * task + 1 < n1 else 1):",
            f"            {name}_row(task + half * (n1 - 1 - 2 * task), {args})",
        ]

    def pair_numpy(self) -> list[str]:
        _, npy = self._printers()
        outputs = [self.nngp, self.ntk, *self.grads]
        src = ["def _pairs_numpy(G, P1, P2, params):",
               "    # K, Θ, then ∂K, ∂Θ by each of GRAD_PARAMS", "    dot = G"]
        src += ["    " + ln for ln in self._loads(outputs, npy, 1, "", "[:, None]")]
        src += ["    " + ln for ln in self._loads(outputs, npy, 2, "", "[None, :]")]
        body, outs = cse_block(outputs, npy, "    ", "t", needed_defs(self.pair_defs, outputs))
        src += body
        values = ", ".join(f"({o})" for o in outs)
        src += [f"    return [numpy.zeros(G.shape) + o for o in ({values},)]"]
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
            f"DIAG_NNGP = {len(self.point_outputs) - len(self.diag_outputs)}",
            "DIAG_NTK = DIAG_NNGP + 1  # point slots of K(x,x), Θ(x,x); then ∂K(x,x), ∂Θ(x,x)",
            f"GRAD_PARAMS = {tuple(self.grad_params)!r}  # by each of these: kernel(grad=True)",
            "",
            "# The recursion, one group per spec line (K: NNGP kernel, Θ: NTK):",
            *self.formulas(),
            "",
            "_np_erf = np.vectorize(math.erf, otypes=[np.float64])",
            "",
        ]
        parts = [head, _ACOS_DENSE.splitlines(), self.quadrature(), self.point_phase(), [""]]
        if "cpu" in self.targets:
            parts += [self.pair_phase("_pairs_nngp", [self.nngp]), [""],
                      self.pair_phase("_pairs_both", [self.nngp, self.ntk]), [""]]
            if self.grads:
                parts += [self.pair_phase("_pairs_grad", [self.nngp, self.ntk, *self.grads]),
                          [""]]
        parts.append(self.pair_numpy())
        src = "\n".join("\n".join(p) for p in parts) + "\n" + DRIVER
        if "cuda" in self.targets:
            from .cuda import CudaWriter  # the cuda emitter only when asked for

            src += CudaWriter(self).source()
        return src
