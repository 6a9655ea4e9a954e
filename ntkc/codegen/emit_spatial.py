"""Code generation for convolutional networks: a Recursion with stencils → a module.

The recursion is a sequence of local assignments (one formula per array entry,
printed by the sympy printers inside a loop over the entries its structure
needs) and stencils (loops over taps, ntkc.codegen.spatial_stages). Consecutive
local assignments of one shape and structure share one loop: the layer's
pointwise rule, its affine scaling and any linear combination run fused, their
common subexpressions eliminated (sympy.cse). Per input, the point phase
computes the per-position variances (and the (x, x̃) arrays pools read) once;
per pair, one numba function runs the whole depth in scratch arrays. The pair
function is printed once, undecorated: the CPU target compiles it with numba.njit,
the cuda target (ntkc.codegen.cuda_spatial) with cuda.jit(device=True).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..semantics.derive import Recursion
from ..semantics.positions import POSITIONS, I
from ..semantics.quadrature import GaussExpectation
from ..semantics.structure import DIAG, FULL, SCALAR, analyse
from ..semantics.tangent import output_key
from . import matrix_stencils
from .emit import TARGETS
from .fast_acos import ACOS_SOURCE
from .hoist import hoist_roots
from .printers import CpuPrinter, cse_block
from .spatial_driver import SPATIAL_DRIVER, module_head
from .spatial_numpy import NumpyPhases
from .spatial_plan import Group, Slot, StageKind, allocate, block_width, groups, schedule, stages
from .spatial_stages import NUMPY_STENCILS, OutlinedArgs, nb_conv, nb_elem, nb_stencil

# The compiled stencils: the text of ntkc/codegen/stencil_kernels.py below its marker.
_MARKER = "# --- module text below: pasted into the generated modules"
_KERNELS = Path(__file__).with_name("stencil_kernels.py").read_text(encoding="utf-8")
STENCIL_SOURCE = _KERNELS[_KERNELS.index(_MARKER):].split("\n", 1)[1]


class SpatialWriter(NumpyPhases):
    def __init__(self, rec: Recursion, target: str = "cpu"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.targets = TARGETS[target]
        self.rec = rec
        self.prog = rec.program
        if any(e.atoms(GaussExpectation) for e in
               [a.expr for a in rec.point + rec.pair if a.stencil is None]):
            raise NotImplementedError(
                "nonlinearities without a closed-form dual (the built-ins tanh, sigmoid, "
                "softplus, silu, swish, elu, selu, mish, and user nonlins that are not "
                "polynomials or ntkc's closed forms) are not supported in convolutional "
                "networks yet")
        self.structure = analyse(rec)
        self.params = {p.symbol: f"params[{i}]" for i, p in enumerate(self.prog.params.values())}
        twins = {2: dict(rec.twins), 3: dict(rec.twins3 or {})}
        per_input = {a.symbol for a in rec.point if self.structure[a.symbol] != FULL}
        self.exprs, self.roots = hoist_roots(
            {a.symbol: a.expr for a in rec.point + rec.pair if a.stencil is None},
            per_input, twins, rec.code_names)
        self.twin_of = {t: s for s, t in twins[2].items()}
        self.twin3_of = {t: s for s, t in twins[3].items()}
        self.windows: dict[int, object] = {}  # id → Window, in order of first use
        for a in rec.point + rec.pair:
            if a.stencil is not None and a.stencil.window is not None:
                self.windows.setdefault(id(a.stencil.window), a.stencil.window)
        self.geometry = {wid: f"_G{k}" for k, wid in enumerate(self.windows)}
        self.taps = {wid: f"_TAPS{k}" for k, wid in enumerate(self.windows)}
        same_input = {**self.twin3_of, **{r.symbol: r.base for r in self.roots}}
        self.plans = {}
        outputs = set().union(*(e.free_symbols for e in rec.outputs.values()))
        for phase, assignments in (("point", rec.point), ("pair", rec.pair)):
            ordered = schedule(assignments, self.prog, same_input, self.structure)
            self.plans[phase] = groups(stages(ordered, self.structure), self.structure)
            for group in self.plans[phase]:
                group.reads = self._reads(group)
        # symbols some stage or an output reads (a twin or x̃ copy reads its original)
        read = outputs | set().union(*(g.reads for p in self.plans.values() for g in p))
        read |= {self.twin_of.get(s) for s in read} | {self.twin3_of.get(s) for s in read}
        self.pslots, used = allocate(self.plans["point"], self.structure, "point", outputs, "w",
                                     read, blocks=True)
        self.n_rbw = max(used["rb"], 1)
        for r in self.roots:  # the roots live in the point row after the quantities
            base = self.pslots[r.base]
            self.pslots[r.symbol] = Slot("pt", used["pt"], base.rows, base.cols, base.storage)
            used["pt"] += self.pslots[r.symbol].size()
        # the point row ends in K(x,x), Θ(x,x), then with tangents their derivatives
        self.grad_params = [p.name for p in self.prog.params.values()
                            if output_key("nngp", p.name) in rec.outputs]
        self.diag_keys = ["nngp_diag", "ntk_diag"] + [
            output_key(w, p) for p in self.grad_params for w in ("nngp_diag", "ntk_diag")]
        self.pair_keys = ["nngp", "ntk"] + [
            output_key(w, p) for p in self.grad_params for w in ("nngp", "ntk")]
        self.n_point, self.n_w = used["pt"] + len(self.diag_keys), max(used["w"], 1)
        self.sslots, used = allocate(self.plans["pair"], self.structure, "pair", outputs, "s",
                                     read, blocks=True)
        self.n_s, self.n_rb = max(used["s"], 1), max(used["rb"], 1)
        # the GPU kernel runs a stage over all its entries before the next: no blocks
        self.cuda_slots, used = allocate(self.plans["pair"], self.structure, "pair", outputs,
                                         "s", read)
        # past the slots: a mix's A_p·S (ntkc.codegen.matrix_stencils.cuda_mix)
        self.cuda_mix_at = used["s"]
        self.n_s_cuda = max(used["s"] + max([0] + [a.spatial[0] ** 2 for a in rec.pair if
                                                   a.stencil and a.stencil.operands]), 1)
        self.n_tmp = max([1, matrix_stencils.buffer_size(rec)]
                         + [_tmp_size(w) for w in self.windows.values()])
        self.outlined: dict[str, str] = {}  # loop text → function name (_nb_loop)
        self.outlined_defs: list[list[str]] = []

    def _reads(self, group: Group) -> set:
        """The symbols a group's stages read (for the scratch slots' lifetimes)."""
        out: set = set()
        for stage in group.stages:
            if stage.kind is StageKind.LOCAL:
                for e in self._local_exprs(stage.run)[1]:
                    out |= e.free_symbols
                out |= {v for a in stage.run if a.diag is not None for v in a.diag.free_symbols}
            else:
                out |= {a.stencil.source for a in stage.run if a.stencil.source is not None}
                out |= {m for a in stage.run for m in a.stencil.operands}
        return out

    def operand(self, sym, phase: str) -> tuple[str, Slot]:
        """(array, slot) of a per-input matrix a stencil reads: its point row, at x
        (pt1 in the pair phase), at x' (pt2) or at the copy x̃ (the point phase's pt)."""
        if sym in self.pslots:
            return ("pt1" if phase == "pair" else "pt"), self.pslots[sym]
        if sym in self.twin_of:
            return "pt2", self.pslots[self.twin_of[sym]]
        return "pt", self.pslots[self.twin3_of[sym]]

    def scale_text(self, scale, printer=CpuPrinter) -> str:
        """A stencil's scale: a number, or an expression in params (attention's w_key²)."""
        if scale.is_Number:
            return repr(float(scale))
        return printer(dict(self.params), {}).doprint(scale)

    # -- element references -----------------------------------------------------------------
    def _ref_at(self, sym, phase: str, loop: str, pair_slots: dict | None = None
                ) -> str | tuple:
        """Where ``sym`` is read in a loop of shape ``loop``: a name (a param, a scalar
        local), or (array, slot, row index, column index). pair_slots: the pair phase's
        slots, if not the CPU kernels' (the GPU kernel's)."""
        j = "j" if loop == FULL else "i"
        if sym in self.params:
            return self.params[sym]
        if sym in POSITIONS:  # the entry's positions: the loop's counters (j = i on a diagonal)
            return "i" if sym == I else j
        sslots = self.sslots if pair_slots is None else pair_slots
        if phase == "pair" and sym in sslots:
            slot = sslots[sym]
            return self.rec.code_names[sym] if slot.storage == SCALAR else (
                slot.array, slot, "i", j)
        if sym in self.pslots:
            slot = self.pslots[sym]
            return ("pt1" if phase == "pair" else slot.array, slot, "i", j)
        if sym in self.twin_of:
            return ("pt2", self.pslots[self.twin_of[sym]], j, j)
        if sym in self.twin3_of:
            return ("pt", self.pslots[self.twin3_of[sym]], j, j)
        raise KeyError(sym)

    def _ref_nb(self, sym, phase: str, loop: str, pair_slots: dict | None = None) -> str:
        at = self._ref_at(sym, phase, loop, pair_slots)
        return at if isinstance(at, str) else nb_elem(at[1], at[0], at[2], at[3])

    def _local_exprs(self, run) -> tuple[list, list]:
        """(targets, expressions) of a fused loop: the run's assignments, then the
        per-input roots of any of them (computed in the same loop, entry by entry)."""
        inner: dict = {}
        targets = []
        for a in run:
            inner[a.symbol] = self.exprs[a.symbol].xreplace(inner)
            targets.append(a.symbol)
            for r in self.roots:
                if r.base == a.symbol:
                    inner[r.symbol] = r.value(inner[a.symbol])
                    targets.append(r.symbol)
        return targets, [inner[t] for t in targets]

    def _stencil_roots(self, run) -> tuple[list, list]:
        """(targets, expressions) of the per-input roots of a stencil run's outputs
        (a conv or flatten at x whose root a later pointwise rule reads)."""
        outs = {a.symbol for a in run}
        roots = [r for r in self.roots if r.base in outs]
        return [r.symbol for r in roots], [r.value(r.base) for r in roots]

    def _nb_group(self, group: Group, phase: str) -> list[str]:
        """A group's code: its stages in turn, or, for a full conv (and the local run
        fused with it), a block of output positions (part of an image row) of every
        stage at a time, column block by column block (ntkc.codegen.stencil_kernels)."""
        if group.rows is None:
            (stage,) = group.stages
            if stage.kind is StageKind.LOCAL:
                return self._nb_local(stage.run, phase, "    ")
            return self._nb_stencil(stage.run, phase, "    ")
        conv, *local = group.stages
        width, bw = block_width(conv.run[0].stencil.window)
        blocks = -(-width // bw)
        xlo, xhi = f"_c * {bw}", f"min(_c * {bw} + {bw}, {width})"
        src = [f"    for _c in range({blocks}):", f"        for _r in range({group.rows}):"]
        src += self._nb_stencil(conv.run, phase, "            ", rows=("_r", xlo, xhi))
        if local:
            src += self._nb_local(local[0].run, phase, "            ",
                                  rows=(f"_r * {width} + {xlo}", f"_r * {width} + {xhi}"))
        return src

    def _nb_local(self, run, phase: str, indent: str, rows: tuple = ()) -> list[str]:
        targets, exprs = self._local_exprs(run)
        src = self._nb_loop(targets, exprs, self.structure[run[0].symbol], run[0].spatial,
                            phase, indent, rows)
        if phase == "point":  # the (x, x̃) diagonal: exactly the per-input variance
            for a in run:
                if a.diag is not None and a.symbol in self.pslots and \
                        self.structure[a.symbol] == FULL:
                    d = CpuPrinter({v: self._ref_nb(v, "point", DIAG)
                                      for v in a.diag.free_symbols}, {}).doprint(a.diag)
                    bounds = ", ".join(rows) if rows else a.spatial[0]
                    src += [f"{indent}for i in range({bounds}):",
                            f"{indent}    {nb_elem(self.pslots[a.symbol], 'w', 'i', 'i')} = {d}"]
        return src

    def _nb_loop(self, targets, exprs, loop: str, spatial, phase: str,
                 indent: str, rows: tuple = ()) -> list[str]:
        """The loop of a local run: a call of an outlined function (the same one for
        every run whose code differs only in its arrays' offsets: the layers of a deep
        network share one, so numba's compile time does not grow with depth), or, for
        scalars, the statements inline."""
        slots = self.sslots if phase == "pair" else self.pslots
        outline = loop != SCALAR
        ind = {FULL: " " * 12, DIAG: " " * 8}.get(loop, indent)
        # An outlined loop reads through placeholders, numbered below in order of first
        # appearance: loops that differ only in their symbols' names print the same text.
        where: dict[str, tuple] = {}
        names = {}
        for sym in {s for e in exprs for s in e.free_symbols}:
            at = self._ref_at(sym, phase, loop)
            if isinstance(at, str) or not outline:
                names[sym] = at if isinstance(at, str) else nb_elem(at[1], at[0], *at[2:])
            else:
                names[sym] = f"_ref{len(where)}_"
                where[names[sym]] = at
        body, outs = cse_block(exprs, CpuPrinter(names, {}), ind)
        for t, o in zip(targets, outs):
            slot = slots.get(t)
            if slot is None:  # nothing reads it (ntkc.codegen.spatial_plan.allocate)
                continue
            if slot.storage == SCALAR and not slot.array:
                body.append(f"{ind}{self.rec.code_names[t]} = {o}")
                continue
            arr = ("pt1" if slot.array == "pt" and phase == "pair" else slot.array)
            at = (arr, slot, "i", "j" if loop == FULL else "i")
            if outline:
                where[f"_ref{len(where)}_"] = at
                body.append(f"{ind}_ref{len(where) - 1}_ = {o}")
            else:
                body.append(f"{ind}{nb_elem(slot, arr, *at[2:])} = {o}")
        first, stop = rows or ("0", str(spatial[0] if spatial else 1))
        args = OutlinedArgs(first) if outline else None
        if outline:
            text = "\n".join(body)
            refs = {}
            for m in re.finditer(r"_ref\d+_", text):
                if m.group() not in refs:
                    refs[m.group()] = args.ref(*where[m.group()], loop)
            body = [re.sub(r"_ref\d+_", lambda m: refs[m.group()], ln) for ln in body]
        if args is None:
            return body
        arrays = "x1, x2, pt1, pt2, s, rb" if phase == "pair" else "x, pt, w, rb"
        # _k counts from 0, so numba knows the views' index is ≥ 0 (no wraparound select)
        head = [*args.before, "    for _k in range(_i1 - _i0):", "        i = _i0 + _k",
                *args.per_row]
        if loop == FULL:
            head.append(f"        for j in range({spatial[1]}):")
        text = "\n".join(head + body)
        name = self.outlined.setdefault(text, f"_local{len(self.outlined)}")
        if len(self.outlined_defs) < len(self.outlined):
            self.outlined_defs.append(
                ["", "@numba.njit(cache=True, error_model=\"numpy\")",
                 f"def {name}({arrays}, params, _i0, _i1, {', '.join(args.names)}):",
                 *head, *body, ""])
        values = [f"_i64({off})" for off in (first, stop, *args.offsets)]
        return [f"{indent}{name}({arrays}, params, {', '.join(values)})"]

    def _nb_source(self, sym, phase: str):
        if phase == "pair" and sym in self.sslots:
            return "s", self.sslots[sym]
        slot = self.pslots[sym]
        return slot.array, slot

    def _nb_stencil(self, run, phase: str, indent: str, rows: tuple = ()) -> list[str]:
        slots = self.sslots if phase == "pair" else self.pslots
        st = run[0].stencil
        geometry = self.geometry.get(id(st.window), "")
        if st.op == "conv":
            scale = repr(float(st.scale))
            out = []
            for a in run:
                slot = slots[a.symbol]
                at = None
                if slot.array == "rb":  # the block's first output row at rb[offset]
                    oy, xlo, _ = rows
                    width = st.window.geometry[3]
                    at = f"{slot.offset} - ({oy} * {width} + {xlo}) * {slot.cols}"
                out.append(nb_conv(*self._nb_source(a.stencil.source, phase), slot.array,
                                   slot, geometry, scale, indent, ", ".join(rows), at))
            return out
        (a,) = run
        out_slot = slots[a.symbol]
        if out_slot.storage == SCALAR:  # flatten / global pools: one number
            out = nb_elem(out_slot, out_slot.array, "", "") or self.rec.code_names[a.symbol]
        else:
            out = out_slot.array
        src, src_slot = (None, None) if st.source is None else \
            self._nb_source(st.source, phase)
        if st.op in matrix_stencils.OPS:
            operands = [self.operand(m, phase) for m in st.operands]
            return [matrix_stencils.nb_matrix_stencil(st.op, src, src_slot, out, out_slot,
                                                      operands, self.scale_text(st.scale),
                                                      indent)]
        x = ("x1", "x2") if phase == "pair" else ("x", "x")
        return nb_stencil(a, out, src, out_slot, src_slot, geometry, x, repr(float(st.scale)),
                          indent)

    # The two phases are each one function over many inputs (pairs), run in threads by the
    # driver: numba links a callee's code into its caller and optimises it again, so a
    # parallel wrapper around a per-pair function would compile the recursion twice more.
    def numba_point(self) -> list[str]:
        body = []
        for group in self.plans["point"]:
            body += self._nb_group(group, "point")
            (stage,) = group.stages if group.rows is None else (None,)
            if stage is not None and stage.kind is not StageKind.LOCAL:
                targets, exprs = self._stencil_roots(stage.run)
                if targets:
                    body += self._nb_loop(targets, exprs, self.structure[stage.run[0].symbol],
                                          stage.run[0].spatial, "point", "    ")
        outs = [self.rec.outputs[k] for k in self.diag_keys]
        names = {s: self._ref_nb(s, "point", SCALAR) for e in outs for s in e.free_symbols}
        pr = CpuPrinter(names, {})
        first = self.n_point - len(outs)
        body += [f"    pt[{first + k}] = {pr.doprint(e)}" for k, e in enumerate(outs)]
        # pt: float64; the (x, x̃) arrays in the dtype of ``like`` (float32 inputs: float32)
        return ["@numba.njit(cache=True, nogil=True)",
                "def _point_rows(X, params, out, like, rows):",
                f"    w = np.full({self.n_w}, np.nan, like.dtype)  # a read before a write: NaN",
                f"    tmp = np.empty({self.n_tmp})  # float64: diagonal convs pass pt through it",
                f"    rb = np.empty({self.n_rbw}, like.dtype)  # blocks of conv outputs (spatial_plan)",
                "    for _n in rows:",
                "        x, pt = X[_n], out[_n]",
                *("    " + ln for ln in body), ""]

    def numba_pair(self) -> list[str]:
        body = []
        for group in self.plans["pair"]:
            body += self._nb_group(group, "pair")
        outs = [self.rec.outputs[k] for k in self.pair_keys]
        names = {s: self._ref_nb(s, "pair", SCALAR) for e in outs for s in e.free_symbols}
        pr = CpuPrinter(names, {})
        body += [f"    K[_a, _b] = {pr.doprint(outs[0])}", f"    T[_a, _b] = {pr.doprint(outs[1])}"]
        body += [f"    D[{k}, _a, _b] = {pr.doprint(e)}" for k, e in enumerate(outs[2:])]
        grads = ", D" if self.grad_params else ""
        # s and tmp in the dtype of K: float32 or float64 (one compiled version each)
        return ["@numba.njit(cache=True, nogil=True, error_model=\"numpy\")",
                f"def _pair_rows(X1, X2, P1, P2, params, K, T{grads}, symmetric, rows):",
                f"    s = np.full({self.n_s}, np.nan, K.dtype)  # a read before a write: NaN",
                f"    tmp = np.empty({self.n_tmp}, K.dtype)",
                f"    rb = np.empty({self.n_rb}, K.dtype)  # blocks of conv outputs (spatial_plan)",
                "    for _a in rows:",
                "        for _b in range(_a if symmetric else 0, X2.shape[0]):",
                "            x1, x2, pt1, pt2 = X1[_a], X2[_b], P1[_a], P2[_b]",
                *("        " + ln for ln in body), ""]

    def module(self, spec_name: str, spec_text: str, options: dict) -> str:
        code = [self.numba_point()] + ([self.numba_pair()] if "cpu" in self.targets else [])
        cuda = ""
        if "cuda" in self.targets:
            from .cuda_spatial import cuda_source  # the cuda emitter only when asked for

            cuda = cuda_source(self)
        head = module_head(self, spec_name, spec_text, options)
        head += ["", "# The compiled stencils (ntkc/codegen/stencil_kernels.py)", "",
                 *STENCIL_SOURCE.splitlines(), "",
                 ("# Geometry of the windows: "
                  "(hin, win, hout, wout, fh, fw, sh, sw, loh, low, circular)")]
        for wid, w in self.windows.items():
            head.append(f"{self.geometry[wid]} = np.array({list(w.geometry)!r}, dtype=np.int64)")
        head += ["", "# Tap tables of the numpy reference backend, built at import:",
                 "# the input position tap t of output o reads (-1: padding)"]
        for wid, w in self.windows.items():
            head.append(f"{self.taps[wid]} = _window_taps({w.in_spatial!r}, {w.shape!r}, "
                        f"{w.stride!r}, {w.padding!r})")
        numpy_stencils = NUMPY_STENCILS
        if matrix_stencils.uses(self.rec):  # attention's kernels, only where it is used
            head += matrix_stencils.NUMBA_SOURCE.splitlines()
            numpy_stencils += matrix_stencils.NUMPY_SOURCE
        parts = [head, [""], ACOS_SOURCE.splitlines(), *self.outlined_defs, *code,
                 numpy_stencils.splitlines(), self.numpy_point(), self.numpy_pair()]
        return "\n".join("\n".join(p) for p in parts) + "\n" + SPATIAL_DRIVER + cuda


def _tmp_size(w) -> int:
    """Entries of the stencils' buffer a window needs: a full conv's y-pass (win·hout·win)
    and its masks (fw·P_out), a pool row (P_in), or a diagonal conv's image, its sums
    along x and a mask (3·P_in)."""
    hin, win, hout, wout, _, fw = w.geometry[:6]
    return max(win * hout * win + fw * hout * wout, 3 * hin * win)


__all__ = ["SpatialWriter"]
