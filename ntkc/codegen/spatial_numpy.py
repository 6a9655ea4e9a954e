"""The numpy reference backend of a convolutional module: the same recursion, whole
arrays with a leading batch axis, the stencils through tap tables (ntkc.codegen.
spatial_stages.NUMPY_STENCILS). A mixin of ntkc.codegen.emit_spatial.SpatialWriter, whose
plan, slots and formulas it prints."""

from __future__ import annotations

from ..semantics.positions import POSITIONS, J
from ..semantics.structure import DIAG, FULL, SCALAR
from . import matrix_stencils
from .printers import ArrayPrinter, cse_block
from .spatial_plan import StageKind
from .spatial_stages import np_stencil, np_value


class NumpyPhases:
    def _ref_np(self, sym, phase: str, loop: str, spatial=None) -> str:
        if sym in self.params:
            return self.params[sym]
        full = loop == FULL
        if sym in POSITIONS:  # the entry's positions: index arrays (rows, or rows × cols)
            k = 1 if sym == J and full else 0
            n = spatial[k]
            return f"numpy.arange({n})" + (("[:, None]", "[None, :]")[k] if full else "")
        if phase == "pair" and sym in self.sslots:
            return np_value(self.sslots[sym], self.rec.code_names[sym], loop)
        if sym in self.pslots:
            slot = self.pslots[sym]
            if phase == "point":
                if slot.storage == FULL:
                    return self.rec.code_names[sym]
                v = _np_slice("pt", ":", slot)
                if slot.storage == SCALAR:  # one number per input, under every position
                    return _np_per_input(v, loop)
                return f"{v}[:, :, None]" if full else v
            v = _np_slice("P1", "a", slot)
            if slot.storage == SCALAR:  # x's: one number for the whole pair row
                return v
            return f"{v}[:, None]" if full else v
        twin = self.twin_of.get(sym) or self.twin3_of.get(sym)
        slot = self.pslots[twin]
        v = _np_slice("P2" if sym in self.twin_of else "pt", ":", slot)
        if slot.storage == SCALAR:
            return _np_per_input(v, loop)
        return f"{v}[:, None, :]" if full else v

    # -- phases -----------------------------------------------------------------------------
    def numpy_point(self) -> list[str]:
        src = ["def _point_numpy(X, params):",
               f"    pt = numpy.zeros((X.shape[0], {self.n_point}))", "    x = X"]
        src += self._np_phase(self.rec.point, "point")
        first = self.n_point - len(self.diag_keys)
        for k, key in enumerate(self.diag_keys):
            e = self.rec.outputs[key]
            names = {s: self._ref_np(s, "point", SCALAR) for s in e.free_symbols}
            src.append(f"    pt[:, {first + k}] = {ArrayPrinter(names, {}).doprint(e)}")
        return src + ["    return pt", ""]

    def numpy_pair(self) -> list[str]:
        src = ["def _pairs_numpy(X1, X2, P1, P2, params):",
               f"    out = numpy.empty(({len(self.pair_keys)}, X1.shape[0], X2.shape[0]))",
               "    # K, Θ, then ∂K, ∂Θ by each of GRAD_PARAMS",
               "    for a in range(X1.shape[0]):",
               "        x1, x2 = numpy.broadcast_to(X1[a], X2.shape), X2"]
        src += ["    " + ln for ln in self._np_phase(self.rec.pair, "pair")]
        for k, key in enumerate(self.pair_keys):
            e = self.rec.outputs[key]
            names = {s: self._ref_np(s, "pair", SCALAR) for s in e.free_symbols}
            src.append(f"        out[{k}, a] = {ArrayPrinter(names, {}).doprint(e)}")
        return src + ["    return out", ""]

    def _np_phase(self, assignments, phase: str) -> list[str]:
        src = []
        slots = self.sslots if phase == "pair" else self.pslots
        for stage in (st for g in self.plans[phase] for st in g.stages):
            run = stage.run
            if stage.kind is StageKind.LOCAL:
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
                if st.op in matrix_stencils.OPS:
                    src += self._np_matrix_stencil(a, s, phase, slots)
                    continue
                e = np_stencil(a, s, slots[a.symbol], self.taps.get(id(st.window), ""), x,
                               repr(float(st.scale)))
                src.append(f"    {self._np_target(a.symbol, phase)} = {e}")
            targets, exprs = self._stencil_roots(run)
            if targets:
                src += self._np_loop(targets, exprs, self.structure[run[0].symbol], phase)
        return src

    def _np_matrix_stencil(self, a, s: str, phase: str, slots) -> list[str]:
        """A weights or mix stencil (ntkc.codegen.matrix_stencils); a weights matrix is
        also stored in pt, where the pair phase reads it."""
        st = a.stencil
        operands = []
        for m in st.operands:
            array, slot = self.operand(m, phase)
            operands.append(self.rec.code_names[self.twin3_of.get(m, m)] if phase == "point"
                            else matrix_stencils.np_operand(
                                "P1" if array == "pt1" else "P2",
                                slot, "a" if array == "pt1" else ":"))
        e = matrix_stencils.np_matrix_stencil(st.op, s, slots[a.symbol], operands,
                                              self.scale_text(st.scale, ArrayPrinter))
        target = self._np_target(a.symbol, phase)
        src = [f"    {target} = {e}"]
        if st.op in matrix_stencils.MECHANISM:
            src.append("    " + matrix_stencils.np_keep(target, slots[a.symbol]))
        return src

    def _np_loop(self, targets, exprs, loop: str, phase: str, spatial=None) -> list[str]:
        names = {s: self._ref_np(s, phase, loop, spatial) for e in exprs
                 for s in e.free_symbols}
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
        slot = (self.sslots if phase == "pair" else self.pslots).get(symbol)
        if phase == "point" and slot is not None and slot.storage != FULL:
            return _np_slice("pt", ":", slot)
        return self.rec.code_names[symbol]


def _np_per_input(v: str, loop: str) -> str:
    """A per-input scalar (n,) in a loop over positions (layer_norm(axes=all)'s mean
    variance in a formula per entry): broadcast over the position axes."""
    return {DIAG: f"{v}[:, None]", FULL: f"{v}[:, None, None]"}.get(loop, v)


def _np_slice(array: str, row: str, slot) -> str:
    if slot.storage == SCALAR:
        return f"{array}[{row}, {slot.offset}]"
    return f"{array}[{row}, {slot.offset}:{slot.offset + slot.rows}]"

