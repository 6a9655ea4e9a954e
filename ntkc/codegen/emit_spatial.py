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

from itertools import groupby

import numpy as np

from ..derive import Recursion
from ..quadrature import GaussExpectation
from ..structure import DIAG, FULL, SCALAR, analyse
from .conv_loops import conv_loops
from .emit import TARGETS
from .fast_acos import ACOS_SOURCE
from .hoist import hoist_roots
from .printers import ArrayPrinter, CpuPrinter, cse_block
from .spatial_driver import SPATIAL_DRIVER, module_head, pairs_driver
from .spatial_stages import (
    NUMPY_STENCILS,
    Slot,
    layout,
    nb_elem,
    nb_stencil,
    np_stencil,
    np_value,
)


class SpatialWriter:
    def __init__(self, rec: Recursion, target: str = "cpu"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.targets = TARGETS[target]
        self.rec = rec
        self.prog = rec.program
        if any(e.atoms(GaussExpectation) for e in
               [a.expr for a in rec.point + rec.pair if a.stencil is None]):
            raise NotImplementedError(
                "user nonlinearities without a closed form are not supported in "
                "convolutional networks yet")
        self.structure = analyse(rec)
        self.params = {p.symbol: f"params[{i}]" for i, p in enumerate(self.prog.params.values())}
        nodes = self.prog.nodes.values()
        slack = max(int(np.prod(n.shape.spatial)) for n in nodes if n.shape.spatial)
        self.pslots, used = layout(rec.point, self.structure, "point", slack)
        twins = {2: dict(rec.twins), 3: dict(rec.twins3 or {})}
        per_input = {a.symbol for a in rec.point if self.structure[a.symbol] != FULL}
        self.exprs, self.roots = hoist_roots(
            {a.symbol: a.expr for a in rec.point + rec.pair if a.stencil is None},
            per_input, twins, rec.code_names)
        for r in self.roots:  # the roots live in the point row after the quantities
            base = self.pslots[r.base]
            self.pslots[r.symbol] = Slot("pt", used["pt"], base.rows, base.cols, base.storage)
            used["pt"] += self.pslots[r.symbol].size()
        self.n_point, self.n_w = used["pt"] + slack + 2, used["w"] + slack
        self.sslots, used = layout(rec.pair, self.structure, "pair", slack)
        self.n_s = used["s"] + slack
        self.consts: dict[str, np.ndarray] = {}  # index and mask arrays of the conv loops
        self.taps: dict[int, str] = {}
        for a in rec.point + rec.pair:
            w = a.stencil.window if a.stencil else None
            if w is not None and id(w) not in self.taps:
                self.taps[id(w)] = f"_TAPS{len(self.taps)}"
        self.windows = {id(a.stencil.window): a.stencil.window
                        for a in rec.point + rec.pair if a.stencil and a.stencil.window}
        self.twin_of = {t: s for s, t in twins[2].items()}
        self.twin3_of = {t: s for s, t in twins[3].items()}

    # -- element references -----------------------------------------------------------------
    def _ref_nb(self, sym, phase: str, loop: str) -> str:
        j = "j" if loop == FULL else "i"
        if sym in self.params:
            return self.params[sym]
        if phase == "pair" and sym in self.sslots:
            slot = self.sslots[sym]
            return self.rec.code_names[sym] if slot.storage == SCALAR else \
                nb_elem(slot, "s", "i", j)
        if sym in self.pslots:
            slot = self.pslots[sym]
            return nb_elem(slot, "pt1" if phase == "pair" else slot.array, "i", j)
        if sym in self.twin_of:
            return nb_elem(self.pslots[self.twin_of[sym]], "pt2", j, j)
        if sym in self.twin3_of:
            return nb_elem(self.pslots[self.twin3_of[sym]], "pt", j, j)
        raise KeyError(sym)

    def _ref_np(self, sym, phase: str, loop: str) -> str:
        if sym in self.params:
            return self.params[sym]
        full = loop == FULL
        if phase == "pair" and sym in self.sslots:
            return np_value(self.sslots[sym], self.rec.code_names[sym], loop)
        if sym in self.pslots:
            slot = self.pslots[sym]
            if phase == "point":
                if slot.storage == FULL:
                    return self.rec.code_names[sym]
                v = _np_slice("pt", ":", slot)
                return f"{v}[:, :, None]" if full else v
            v = _np_slice("P1", "a", slot)
            return f"{v}[:, None]" if full else v
        twin = self.twin_of.get(sym) or self.twin3_of.get(sym)
        slot = self.pslots[twin]
        v = _np_slice("P2" if sym in self.twin_of else "pt", ":", slot)
        return f"{v}[:, None, :]" if full else v

    # -- phases -----------------------------------------------------------------------------
    def _stages(self, assignments, phase: str):
        """Runs of consecutive local assignments of one loop shape, convs through one
        window (K and Θ of a line), and single stencils."""
        slots = self.sslots if phase == "pair" else self.pslots

        def key(a):
            st = a.stencil
            if st is not None and st.op == "conv":
                return ("conv", id(st.window), slots[a.symbol].storage)
            if st is not None:
                return ("stencil", id(a))
            return ("local", self.structure[a.symbol], a.spatial)
        same_input = {**self.twin3_of, **{r.symbol: r.base for r in self.roots}}
        for k, run in groupby(schedule(assignments, self.prog, same_input), key):
            yield k, list(run)

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

    def _nb_local(self, run, phase: str, indent: str) -> list[str]:
        targets, exprs = self._local_exprs(run)
        src = self._nb_loop(targets, exprs, self.structure[run[0].symbol], run[0].spatial,
                            phase, indent)
        if phase == "point":  # the (x, x̃) diagonal: exactly the per-input variance
            slots = self.pslots
            for a in run:
                if a.diag is not None and self.structure[a.symbol] == FULL:
                    d = CpuPrinter({v: self._ref_nb(v, "point", DIAG)
                                      for v in a.diag.free_symbols}, {}).doprint(a.diag)
                    src += [f"{indent}for i in range({a.spatial[0]}):",
                            f"{indent}    {nb_elem(slots[a.symbol], 'w', 'i', 'i')} = {d}"]
        return src

    def _nb_loop(self, targets, exprs, loop: str, spatial, phase: str,
                 indent: str) -> list[str]:
        slots = self.sslots if phase == "pair" else self.pslots
        ind = indent
        src = []
        if loop == FULL:
            rows, cols = spatial
            src += [f"{ind}for i in range({rows}):", f"{ind}    for j in range({cols}):"]
            ind += "        "
        elif loop == DIAG:
            src += [f"{ind}for i in range({spatial[0]}):"]
            ind += "    "
        names = {s: self._ref_nb(s, phase, loop)
                 for e in exprs for s in e.free_symbols}
        printer = CpuPrinter(names, {})
        body, outs = cse_block(exprs, printer, ind)
        src += body
        for t, o in zip(targets, outs):
            slot = slots[t]
            if slot.storage == SCALAR and not slot.array:
                src.append(f"{ind}{self.rec.code_names[t]} = {o}")
            else:
                arr = ("pt1" if slot.array == "pt" and phase == "pair" else slot.array)
                src.append(f"{ind}{nb_elem(slot, arr, 'i', 'j' if loop == FULL else 'i')} = {o}")
        return src

    def _nb_source(self, sym, phase: str):
        if phase == "pair" and sym in self.sslots:
            return "s", self.sslots[sym]
        slot = self.pslots[sym]
        return slot.array, slot

    def _nb_stencil(self, run, phase: str, indent: str) -> list[str]:
        slots = self.sslots if phase == "pair" else self.pslots
        st = run[0].stencil
        if st.op == "conv":
            pairs = [(slots[a.symbol].array, slots[a.symbol],
                      *self._nb_source(a.stencil.source, phase)) for a in run]
            out_slot, src_slot = pairs[0][1], pairs[0][3]
            # One array per phase; a source is at least as full as its conv (structure).
            assert all(p[0] == p[2] == pairs[0][0] for p in pairs)
            name = f"_C{len(self.consts)}_"
            lines, consts = conv_loops(
                [(p[3].offset, p[1].offset) for p in pairs], st.window.taps,
                src_slot.cols, st.window.out_spatial[-1], out_slot.storage == FULL,
                pairs[0][0], repr(float(st.scale)), name, indent,
                diagonal_of_full=src_slot.storage != out_slot.storage)
            self.consts.update(consts or {name: np.zeros(1, dtype=np.int64)})
            return lines
        (a,) = run
        out_slot = slots[a.symbol]
        if out_slot.storage == SCALAR:  # flatten / global pools: one number
            out = nb_elem(out_slot, out_slot.array, "", "") or self.rec.code_names[a.symbol]
        else:
            out = out_slot.array
        src, src_slot = (None, None) if st.source is None else \
            self._nb_source(st.source, phase)
        x = ("x1", "x2") if phase == "pair" else ("x", "x")
        taps = self.taps.get(id(st.window), "")
        return nb_stencil(a, out, src, out_slot, src_slot, taps, x, repr(float(st.scale)),
                          indent)

    def numba_point(self) -> list[str]:
        src = ["@numba.njit(cache=True)", "def _point_one(x, pt, params):",
               f"    w = np.full({self.n_w}, np.nan)  # a read before a write shows as NaN"]
        for (kind, *_), run in self._stages(self.rec.point, "point"):
            if kind != "local":
                src += self._nb_stencil(run, "point", "    ")
                targets, exprs = self._stencil_roots(run)
                if targets:
                    src += self._nb_loop(targets, exprs, self.structure[run[0].symbol],
                                         run[0].spatial, "point", "    ")
            else:
                src += self._nb_local(run, "point", "    ")
        outs = [self.rec.outputs["nngp_diag"], self.rec.outputs["ntk_diag"]]
        names = {s: self._ref_nb(s, "point", SCALAR) for e in outs for s in e.free_symbols}
        pr = CpuPrinter(names, {})
        src += [f"    pt[{self.n_point - 2}] = {pr.doprint(outs[0])}",
                f"    pt[{self.n_point - 1}] = {pr.doprint(outs[1])}", "",
                "@numba.njit(parallel=True, cache=True)", "def _point_numba(X, params, out):",
                "    for n in numba.prange(X.shape[0]):",
                "        _point_one(X[n], out[n], params)", ""]
        return src

    def numba_pair(self) -> list[str]:
        # Undecorated: numba-compiled per target (see module()); the text is plain numba
        # code both targets accept (no allocation, helpers looked up as module globals).
        src = ["def _pair_one_py(x1, x2, pt1, pt2, params, s):"]
        for (kind, *_), run in self._stages(self.rec.pair, "pair"):
            if kind != "local":
                src += self._nb_stencil(run, "pair", "    ")
            else:
                src += self._nb_local(run, "pair", "    ")
        outs = [self.rec.outputs["nngp"], self.rec.outputs["ntk"]]
        names = {s: self._ref_nb(s, "pair", SCALAR) for e in outs for s in e.free_symbols}
        pr = CpuPrinter(names, {})
        src += [f"    return {pr.doprint(outs[0])}, {pr.doprint(outs[1])}", ""]
        return src

    def numpy_point(self) -> list[str]:
        src = ["def _point_numpy(X, params):",
               f"    pt = numpy.zeros((X.shape[0], {self.n_point}))", "    x = X"]
        src += self._np_phase(self.rec.point, "point")
        for k, key in ((2, "nngp_diag"), (1, "ntk_diag")):
            e = self.rec.outputs[key]
            names = {s: self._ref_np(s, "point", SCALAR) for s in e.free_symbols}
            src.append(f"    pt[:, {self.n_point - k}] = {ArrayPrinter(names, {}).doprint(e)}")
        return src + ["    return pt", ""]

    def numpy_pair(self) -> list[str]:
        src = ["def _pairs_numpy(X1, X2, P1, P2, params):",
               "    nngp = numpy.empty((X1.shape[0], X2.shape[0]))",
               "    ntk = numpy.empty_like(nngp)",
               "    for a in range(X1.shape[0]):",
               "        x1, x2 = numpy.broadcast_to(X1[a], X2.shape), X2"]
        src += ["    " + ln for ln in self._np_phase(self.rec.pair, "pair")]
        for key, target in (("nngp", "nngp"), ("ntk", "ntk")):
            e = self.rec.outputs[key]
            names = {s: self._ref_np(s, "pair", SCALAR) for s in e.free_symbols}
            src.append(f"        {target}[a] = {ArrayPrinter(names, {}).doprint(e)}")
        return src + ["    return nngp, ntk", ""]

    def _np_phase(self, assignments, phase: str) -> list[str]:
        src = []
        slots = self.sslots if phase == "pair" else self.pslots
        for (kind, *_), run in self._stages(assignments, phase):
            if kind == "local":
                src += self._np_local(run, phase, slots)
                continue
            for a in run:
                st = a.stencil
                s = None
                if st.source is not None:
                    view = DIAG if st.op == "flatten" or (
                        st.op == "conv" and slots[a.symbol].storage == DIAG) else FULL
                    s = self._ref_np(st.source, phase, view) if not (
                        phase == "point" and self.pslots[st.source].storage == FULL) else \
                        self.rec.code_names[st.source]
                    if phase == "point" and st.source in self.pslots and view == DIAG:
                        s = _np_slice("pt", ":", self.pslots[st.source])
                x = ("x1", "x2") if phase == "pair" else ("x", "x")
                e = np_stencil(a, s, slots[a.symbol], self.taps.get(id(st.window), ""), x,
                               repr(float(st.scale)))
                src.append(f"    {self._np_target(a.symbol, phase)} = {e}")
            targets, exprs = self._stencil_roots(run)
            if targets:
                src += self._np_loop(targets, exprs, self.structure[run[0].symbol], phase)
        return src

    def _np_loop(self, targets, exprs, loop: str, phase: str, spatial=None) -> list[str]:
        names = {s: self._ref_np(s, phase, loop) for e in exprs for s in e.free_symbols}
        src, outs = cse_block(exprs, ArrayPrinter(names, {}), "    ")
        if spatial is not None and loop != SCALAR:
            # a constant array (layer_norm's variance, φ of a zero line) is an array all
            # the same: the stencils below read it with its batch and position axes
            batch = "x2.shape[0]" if phase == "pair" else "x.shape[0]"
            shape = f"({batch}, {spatial[0]}" + (f", {spatial[1]})" if loop == FULL else ")")
            outs = [f"numpy.full({shape}, {o})" if e.is_Number else o
                    for e, o in zip(exprs, outs)]
        return src + [f"    {self._np_target(t, phase)} = {o}" for t, o in zip(targets, outs)]

    def _np_local(self, run, phase: str, slots) -> list[str]:
        loop = self.structure[run[0].symbol]
        targets, exprs = self._local_exprs(run)
        src = self._np_loop(targets, exprs, loop, phase, run[0].spatial)
        for a in run:
            if phase == "point" and a.diag is not None and loop == FULL:
                name = self.rec.code_names[a.symbol]
                d = ArrayPrinter({v: self._ref_np(v, "point", DIAG)
                                  for v in a.diag.free_symbols}, {}).doprint(a.diag)
                src.append(f"    {name} = {name} + numpy.zeros((x.shape[0], "
                           f"{a.spatial[0]}, {a.spatial[1]}))")
                src.append(f"    {name}[:, numpy.arange({a.spatial[0]}), "
                           f"numpy.arange({a.spatial[0]})] = {d}")
        return src

    def _np_target(self, symbol, phase: str) -> str:
        slot = (self.sslots if phase == "pair" else self.pslots)[symbol]
        if phase == "point" and slot.storage != FULL:
            return _np_slice("pt", ":", slot)
        return self.rec.code_names[symbol]

    def module(self, spec_name: str, spec_text: str, options: dict) -> str:
        code = [self.numba_point(), self.numba_pair()]  # fills self.consts
        cuda = ""
        if "cuda" in self.targets:
            from .cuda_spatial import cuda_source  # the cuda emitter only when asked for

            cuda = cuda_source(self, code[1])
        head = module_head(self, spec_name, spec_text, options)
        for wid, name in self.taps.items():
            head.append(f"{name} = {_int_array(self.windows[wid].taps)}")
        if self.consts:
            head.append("# Index and mask arrays of the unrolled conv loops (ntkc.codegen.conv_loops)")
            head += [f"{k} = {_int_array(v)}" for k, v in self.consts.items()]
        if "cpu" in self.targets:
            code.append(pairs_driver(self.n_s))
        parts = [head, [""], ACOS_SOURCE.splitlines(), *code,
                 NUMPY_STENCILS.splitlines(), self.numpy_point(), self.numpy_pair()]
        return "\n".join("\n".join(p) for p in parts) + "\n" + SPATIAL_DRIVER + cuda


def _int_array(a) -> str:
    dtype = "np.bool_" if a.dtype == bool else "np.int64"
    return f"np.array({a.ravel().tolist()!r}, dtype={dtype}).reshape({a.shape!r})"


def schedule(assignments, program, same_input: dict) -> list:
    """The assignments reordered by layer, each layer's stencils before its local
    formulas, so K and Θ of a line share one loop (and one arccos). Falls back to
    the derivation order if that would break a dependency. same_input maps the
    copies of per-input symbols (at x̃) to the symbols they copy."""
    order = {name: k for k, name in enumerate(program.nodes)}

    def deps(a) -> set:
        if a.stencil:
            return {a.stencil.source}
        found = a.expr.free_symbols | (a.diag.free_symbols if a.diag is not None else set())
        out = set()
        for d in found:
            while d in same_input:
                d = same_input[d]
            out.add(d)
        return out

    rank: dict = {}
    for a in assignments:
        rank[a.symbol] = max([order[a.line]] + [rank[d] for d in deps(a) if d in rank])
    out = sorted(assignments, key=lambda a: (rank[a.symbol], a.stencil is None))
    seen: set = set()
    for a in out:
        if any(d in rank and d not in seen for d in deps(a)):
            return list(assignments)
        seen.add(a.symbol)
    return out


def _np_slice(array: str, row: str, slot) -> str:
    if slot.storage == SCALAR:
        return f"{array}[{row}, {slot.offset}]"
    return f"{array}[{row}, {slot.offset}:{slot.offset + slot.rows}]"


__all__ = ["SpatialWriter", "np"]
