"""Random valid ntkc programs, for differential fuzzing.

One generator, two sources of randomness: ``random_program(random.Random(seed))`` for the
campaign (fast, reproducible by seed) and the hypothesis strategy ``programs()`` for pytest
(derandomized, shrinkable). Both drive :func:`build` through a small chooser interface.

Coverage: inputs vector/sequence/image; dense (w_std, b_std or none, width), conv and
conv_local (filter, stride, padding valid|same|circular, w_std, b_std, width),
avg_pool/sum_pool (window, stride, padding), global_avg_pool, global_sum_pool, flatten;
every builtin nonlinearity with random arguments; user nonlins with a closed form
(polynomials) and without (tanh, sigmoid: dense networks only, conv networks refuse them);
linear combinations (the same line twice, lines read by several later lines), concat,
layer_norm (axes channels or all), unused lines, params as w_std, b_std, coefficients and
nonlinearity arguments; both parameterizations.

The typing rules the generator respects (the compiler refuses the rest, see
tests/test_spec_errors.py):
- a nonlinearity or layer_norm needs a Gaussian input: dense/conv outputs, linear
  combinations and layer_norms of them, pools/flatten of Gaussian lines;
- dense needs a vector, conv/pools need a sequence/image; a conv net ends in a vector;
- under parameterization standard, dense/conv need the channels of their input (width=);
- a pool line is combined (sum, concat) only with the same pool of other lines, and lines
  linear in the raw input never with nonlinearity outputs (the derivation refuses those
  cross covariances);
- spatial networks: no nonlinearity without a closed form, no mixed expectation of two
  different nonlinearities of correlated Gaussians (both would need quadrature), no
  constant covariance under a spatial op (monomial degree 0 before a conv).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Chooser", "GenProgram", "build", "programs", "random_program"]


class Chooser:
    """Random decisions; subclasses give the source of randomness."""

    def integer(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def floating(self, lo: float, hi: float) -> float:
        raise NotImplementedError

    def choice(self, seq):
        seq = list(seq)
        return seq[self.integer(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        return self.integer(0, 999) < int(p * 1000)


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def floating(self, lo, hi):
        return self.rng.uniform(lo, hi)


class DrawChooser(Chooser):
    def __init__(self, draw):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def integer(self, lo, hi):
        return self.draw(self.st.integers(lo, hi))

    def floating(self, lo, hi):
        return self.draw(self.st.floats(lo, hi, allow_nan=False, allow_infinity=False))


@dataclass
class Line:
    name: str
    spatial: tuple[int, ...] | None  # None: a vector
    channels: int | None
    gaussian: bool
    kind: str  # "input" | "affine" | "nonlin" | "linear" | "concat"
    roots: frozenset = frozenset()  # the fresh affine lines a Gaussian line is linear in
    pool: tuple | None = None  # the pooling op a line descends from (see module doc)
    act: tuple | None = None  # (nonlin key, its Gaussian input) for nonlin outputs
    acts: frozenset = frozenset()  # nonlin outputs this line is linear in
    constant: bool = False  # its covariance is constant (monomial degree 0 …)
    raw: bool = False  # linear in the raw input (which has no correlation with a φ(g))


@dataclass
class GenProgram:
    text: str
    spatial: bool
    ops: set[str] = field(default_factory=set)  # ops and attributes exercised (coverage)


def _num(x: float) -> str:
    s = f"{x:.4g}"
    return s if "e" in s or "." in s else s + ".0"


BUILTIN_NONLINS = ("relu", "leaky_relu", "abrelu", "abs", "erf", "gelu", "sin", "cos", "exp",
                   "gaussian", "sign", "monomial", "rectified_monomial", "polynomial",
                   "identity")
CLOSED_FORM_USER = ("poly2", "poly3", "cubic_p")
QUADRATURE_USER = ("my_tanh", "my_sigmoid")


class _Gen:
    def __init__(self, c: Chooser):
        self.c = c
        self.lines: list[Line] = []
        self.body: list[str] = []
        self.ops: set[str] = set()
        self.params: dict[str, float] = {}
        self.used_params: set[str] = set()
        self.nonlins: dict[str, str] = {}
        self.counter = 0

    # -- helpers ---------------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def scalar(self, lo: float, hi: float, param_ok: bool = True) -> str:
        """A number literal, or a param (declared with a value in [lo, hi])."""
        if param_ok and self.params and self.c.chance(0.25):
            name = self.c.choice(sorted(self.params))
            lo_p, hi_p = self.params[name]
            if lo <= lo_p and hi_p <= hi:
                self.used_params.add(name)
                self.ops.add("param-use")
                return name
        return _num(self.c.floating(lo, hi))

    def add(self, line: Line, rhs: str) -> Line:
        self.lines.append(line)
        self.body.append(f"{line.name} = {rhs}")
        return line

    def recent(self, pred) -> Line | None:
        cands = [ln for ln in self.lines if pred(ln)]
        if not cands:
            return None
        # Prefer recent lines (deeper networks), but read older ones too.
        if self.c.chance(0.6):
            return cands[-1]
        return self.c.choice(cands)

    # -- ops -------------------------------------------------------------------------------
    def width(self) -> tuple[str, int | None]:
        if self.standard or self.c.chance(0.3):
            w = self.c.integer(1, 8)
            self.ops.add("width")
            return f", width={w}", w
        return "", None

    def affine_args(self) -> tuple[str, int | None]:
        s = ""
        if self.c.chance(0.8):
            s += f", w_std={self.scalar(0.3, 2.0)}"
            self.ops.add("w_std")
        if self.c.chance(0.6):
            b = "0" if self.c.chance(0.1) else self.scalar(0.0, 0.6)
            s += f", b_std={b}"
            self.ops.add("b_std")
        w, width = self.width()
        return s + w, width

    def dense(self, src: Line) -> Line:
        args, width = self.affine_args()
        name = self.fresh("g")
        self.ops.add("dense")
        return self.add(Line(name, None, width, True, "affine", frozenset([name])),
                        f"dense({src.name}{args})")

    def conv(self, src: Line) -> Line | None:
        n = len(src.spatial)
        pad = self.c.choice(("valid", "same", "circular"))
        filt = [self.c.integer(1, 3) for _ in range(n)]
        if pad == "valid":
            filt = [min(f, s) for f, s in zip(filt, src.spatial)]
        stride = [self.c.integer(1, 2) for _ in range(n)] if self.c.chance(0.4) else None
        out = _out_shape(src.spatial, filt, stride or [1] * n, pad)
        if not all(out):
            return None
        args = f"filter={_ints(filt)}"
        if stride is not None:
            args += f", stride={_ints(stride)}"
            self.ops.add("conv-stride")
        if pad != "valid" or self.c.chance(0.5):
            args += f", padding={pad}"
        self.ops.add(f"conv-{pad}")
        op = "conv_local" if self.c.chance(0.25) else "conv"  # weights per position
        self.ops.add(op)
        more, width = self.affine_args()
        name = self.fresh("g")
        return self.add(Line(name, out, width, True, "affine", frozenset([name])),
                        f"{op}({src.name}, {args}{more})")

    def pool(self, src: Line) -> Line | None:
        op = self.c.choice(("avg_pool", "sum_pool"))
        n = len(src.spatial)
        pad = self.c.choice(("valid", "same", "circular"))
        win = [self.c.integer(1, 3) for _ in range(n)]
        if pad == "valid":
            win = [min(f, s) for f, s in zip(win, src.spatial)]
        stride = [self.c.integer(1, 2) for _ in range(n)] if self.c.chance(0.5) else None
        out = _out_shape(src.spatial, win, stride or win, pad)
        if not all(out):
            return None
        args = f"window={_ints(win)}"
        if stride is not None:
            args += f", stride={_ints(stride)}"
        if pad != "valid" or self.c.chance(0.5):
            args += f", padding={pad}"
        self.ops.add(op)
        self.ops.add(f"pool-{pad}")
        sig = (op, args, src.spatial, src.channels)
        line = Line(self.fresh("p"), out, src.channels, src.gaussian, "linear", src.roots, sig,
                    acts=src.acts | ({src.name} if src.act else set()), constant=src.constant,
                    raw=src.raw or src.kind == "input")
        return self.add(line, f"{op}({src.name}, {args})")

    def reduce(self, src: Line) -> Line:
        op = self.c.choice(("flatten", "global_avg_pool", "global_sum_pool"))
        self.ops.add(op)
        P = 1
        for s in src.spatial:
            P *= s
        ch = None if src.channels is None else src.channels * (P if op == "flatten" else 1)
        sig = (op, "", src.spatial, src.channels)
        line = Line(self.fresh("f"), None, ch, src.gaussian, "linear", src.roots, sig,
                    acts=src.acts | ({src.name} if src.act else set()), constant=src.constant,
                    raw=src.raw or src.kind == "input")
        return self.add(line, f"{op}({src.name})")

    def nonlin(self, src: Line) -> Line:
        c = self.c
        user = [n for n in self.nonlins if self.spatial_net is False or n in CLOSED_FORM_USER]
        if user and c.chance(0.25):
            fn = c.choice(user)
            call, key = f"{fn}({src.name})", ("user", fn)
            self.ops.add(f"nonlin-{fn}")
            constant = False
        else:
            fn = c.choice(BUILTIN_NONLINS)
            self.ops.add(fn)
            args, constant = self.builtin_args(fn)
            call, key = f"{fn}({src.name}{args})", (fn, args)
        line = Line(self.fresh("h"), src.spatial, src.channels, False, "nonlin",
                    act=(key, src.name), acts=frozenset(), constant=constant)
        line.roots = src.roots
        return self.add(line, call)

    def builtin_args(self, fn: str) -> tuple[str, bool]:
        c = self.c
        kw = c.chance(0.5)

        def args(*pairs):
            if kw:
                return "".join(f", {k}={v}" for k, v in pairs)
            return "".join(f", {v}" for _, v in pairs)

        if fn == "leaky_relu":
            return args(("alpha", self.scalar(-1.0, 1.0))), False
        if fn == "abrelu":
            return args(("a", self.scalar(-1.0, 1.0)), ("b", self.scalar(-1.0, 1.0))), False
        if fn in ("erf", "sin", "cos"):
            if c.chance(0.3):
                return "", False
            return args(("a", self.scalar(0.3, 2.0)), ("b", self.scalar(0.3, 1.5)),
                        ("c", self.scalar(-0.5, 0.5))), False
        if fn == "exp":
            if c.chance(0.3):
                return "", False
            return args(("a", self.scalar(0.3, 1.5)), ("b", self.scalar(0.1, 0.6))), False
        if fn == "gaussian":
            if c.chance(0.3):
                return "", False
            return args(("a", self.scalar(0.3, 2.0)), ("b", self.scalar(-2.0, -0.2))), False
        if fn in ("monomial", "rectified_monomial"):
            lo = 1 if self.spatial_net else 0
            d = c.integer(lo, 3)
            return args(("degree", str(d))), d == 0 and fn == "monomial"
        if fn == "polynomial":
            coefs = [self.scalar(-1.0, 1.0) for _ in range(c.integer(2, 4))]
            coefs[1] = _num(c.choice((-1, 1)) * c.floating(0.3, 1.0))  # not constant
            return args(("coef", "[" + ", ".join(coefs) + "]")), False
        return "", False

    def layer_norm(self, src: Line) -> Line:
        self.ops.add("layer_norm")
        axes = ""
        if src.spatial and self.c.chance(0.4):  # the mean variance over positions
            axes = ", axes=all"
            self.ops.add("layer_norm-all")
        line = Line(self.fresh("n"), src.spatial, src.channels, True, "linear", src.roots,
                    src.pool, acts=src.acts)
        return self.add(line, f"layer_norm({src.name}{axes})")

    def combinable(self, terms: list[Line]) -> bool:
        first = terms[0]
        if any(t.spatial != first.spatial for t in terms):
            return False
        if len({t.pool for t in terms}) > 1:
            return False
        raw = any(t.raw or t.kind == "input" for t in terms)
        if raw and any(t.act or t.acts for t in terms):
            return False  # a φ(g) would need its correlation with the raw input
        if self.spatial_net:
            acts = set()
            for t in terms:
                acts |= {t.name} if t.act else set(t.acts)
            by = {a: next(ln for ln in self.lines if ln.name == a) for a in acts}
            items = list(by.values())
            for i, a in enumerate(items):
                for b in items[i + 1:]:
                    if a.act != b.act and a.roots & b.roots:
                        return False
            # Stein E[u φ(v)] with u Gaussian needs φ's mean slope: closed form for builtins.
        return True

    def lincomb(self, terms: list[Line]) -> Line | None:
        if not self.combinable(terms):
            return None
        chans = {t.channels for t in terms if t.channels is not None}
        if len(chans) > 1:
            return None
        parts, totals = [], {}
        for i, t in enumerate(terms):
            coef = "" if self.c.chance(0.3) else f"{self.scalar(0.2, 1.5)} * "
            sign = " - " if i and self.c.chance(0.2) else " + "
            parts.append((sign if i else "") + coef + t.name)
            value = self.params[coef[:-3]][0] if coef[:-3] in self.params else (
                float(coef[:-3]) if coef else 1.0)
            totals[t.name] = totals.get(t.name, 0.0) + (-value if sign == " - " else value)
        # Terms that cancel (`g - g`) give a zero line: no layer_norm or φ of it below.
        cancels = all(abs(v) < 1e-12 for v in totals.values())
        self.ops.add("lincomb")
        if len(terms) > len({t.name for t in terms}):
            self.ops.add("lincomb-same-line")
        gaussian = all(t.gaussian for t in terms)
        roots = frozenset().union(*(t.roots for t in terms))
        acts = frozenset().union(*(t.acts | ({t.name} if t.act else set()) for t in terms))
        line = Line(self.fresh("r"), terms[0].spatial, chans.pop() if chans else None, gaussian,
                    "linear", roots, terms[0].pool, acts=acts,
                    constant=cancels or all(t.constant for t in terms),
                    raw=any(t.raw or t.kind == "input" for t in terms))
        if cancels:
            self.ops.add("lincomb-cancelling")
        return self.add(line, "".join(parts))

    def concat(self, terms: list[Line]) -> Line | None:
        if not self.combinable(terms) or len({t.name for t in terms}) < len(terms):
            return None
        chans = [t.channels for t in terms]
        self.ops.add("concat")
        acts = frozenset().union(*(t.acts | ({t.name} if t.act else set()) for t in terms))
        line = Line(self.fresh("c"), terms[0].spatial, None if None in chans else sum(chans),
                    False, "concat", frozenset().union(*(t.roots for t in terms)),
                    terms[0].pool, acts=acts, raw=any(t.raw or t.kind == "input" for t in terms))
        return self.add(line, f"concat({', '.join(t.name for t in terms)})")

    # -- the program -----------------------------------------------------------------------
    def program(self) -> GenProgram:
        c = self.c
        kind = c.choice(("vector", "vector", "sequence", "image"))
        self.spatial_net = kind != "vector"
        self.standard = c.chance(0.25)
        head = [f"network fuzz{c.integer(0, 999)}"]
        if self.standard:
            head.append("parameterization standard")
            self.ops.add("standard")
        elif c.chance(0.3):
            head.append("parameterization ntk")
        for i in range(c.integer(0, 2)):
            lo = c.floating(0.3, 1.0)
            name = f"w{i}"
            self.params[name] = (lo, lo)
            head.append(f"param {name} = {_num(lo)}")
        if c.chance(0.4):
            self.nonlins["poly2"] = "z^2 - 0.5 * z"
            self.nonlins["cubic_p"] = "0.3 * z^3 + z"
            if self.params and c.chance(0.5):
                p = min(self.params)
                self.nonlins["poly3"] = f"{p} * z * z + z - 1"
                self.used_params.add(p)
        if not self.spatial_net and c.chance(0.3):
            self.nonlins["my_tanh"] = "tanh(z)"
            self.nonlins["my_sigmoid"] = "sigmoid(z) - 0.5"
        if kind == "vector":
            dims = [c.integer(1, 4)]
        elif kind == "sequence":
            dims = [c.integer(1, 8), c.integer(1, 3)]
        else:
            dims = [c.integer(1, 3), c.integer(1, 3), c.integer(1, 3)]
        self.ops.add(kind)
        x = Line("x", tuple(dims[:-1]) if self.spatial_net else None, dims[-1], False, "input")
        self.lines.append(x)
        if self.spatial_net:
            self.spatial_phase()
        else:
            self.vector_phase(c.integer(1, 6))
        out = self.lines[-1]
        if out.spatial is not None or c.chance(0.7) or out.kind == "input":
            out = self.dense(self.recent(lambda ln: ln.spatial is None))
        body = list(self.body)
        if c.chance(0.15):  # an unused line
            self.ops.add("unused-line")
            body.insert(c.integer(0, len(body) - 1), f"unused{self.counter} = dense(x)"
                        if not self.spatial_net else
                        f"unused{self.counter} = flatten(x)")
        nonlin_lines = [f"nonlin {n}(z) = {b}" for n, b in self.nonlins.items()]
        text = "\n".join(head + nonlin_lines + [f"input x : {kind}[{', '.join(map(str, dims))}]"]
                         + body + [f"output {out.name}"]) + "\n"
        return GenProgram(text, self.spatial_net, self.ops)

    def step(self, spatial: bool) -> Line | None:
        c = self.c
        on = [ln for ln in self.lines if (ln.spatial is not None) == spatial]
        gauss = [ln for ln in on if ln.gaussian and not ln.constant]
        ops = ["affine", "affine", "nonlin", "nonlin", "lincomb", "concat", "layer_norm"]
        if spatial:
            ops += ["pool"]
        op = c.choice(ops)
        if op == "affine":
            src = self.recent(lambda ln: (ln.spatial is not None) == spatial
                              and (not self.standard or ln.channels is not None)
                              and not (spatial and ln.constant))
            if src is None:
                return None
            return self.conv(src) if spatial else self.dense(src)
        if op == "nonlin" and gauss:
            return self.nonlin(gauss[-1] if c.chance(0.6) else c.choice(gauss))
        if op == "layer_norm" and gauss:
            return self.layer_norm(gauss[-1] if c.chance(0.6) else c.choice(gauss))
        if op == "pool":
            src = self.recent(lambda ln: ln.spatial is not None and not ln.constant)
            return self.pool(src)
        if op in ("lincomb", "concat") and len(on) >= 2:
            k = c.integer(1 if op == "lincomb" else 2, 3)
            terms = [on[-1]] + [c.choice(on) for _ in range(k - 1)]
            if op == "lincomb" and c.chance(0.15):
                terms = [on[-1], on[-1]]  # the same line twice
            if op == "concat" and self.standard and any(t.channels is None for t in terms):
                return None
            return self.lincomb(terms) if op == "lincomb" else self.concat(terms)
        return None

    def vector_phase(self, n: int) -> None:
        # Start from a dense of the input so the nonlinearities have something to read.
        made = 0
        for _ in range(4 * n):
            if made >= n:
                break
            if len(self.lines) == 1 or self.step(False) is not None:
                if len(self.lines) == 1:
                    self.dense(self.lines[0])
                made += 1

    def spatial_phase(self) -> None:
        c = self.c
        n = c.integer(1, 3)
        made = 0
        for _ in range(4 * n):
            if made >= n:
                break
            if len(self.lines) == 1:
                if c.chance(0.15):
                    self.pool(self.lines[0]) or self.conv(self.lines[0])
                else:
                    self.conv(self.lines[0])
                made += 1
            elif self.step(True) is not None:
                made += 1
        src = self.recent(lambda ln: ln.spatial is not None and not ln.constant
                          and ln.kind != "input")
        self.reduce(src or self.lines[0])
        if c.chance(0.5):
            self.step(False)


def _ints(xs) -> str:
    return "[" + ", ".join(map(str, xs)) + "]"


def _out_shape(spatial, win, stride, pad) -> tuple[int, ...]:
    out = []
    for n, f, s in zip(spatial, win, stride):
        if pad == "valid":
            out.append((n - f) // s + 1 if f <= n else 0)
        else:
            out.append(-(-n // s))
    return tuple(out)


def build(c: Chooser) -> GenProgram:
    return _Gen(c).program()


def random_program(rng: random.Random) -> GenProgram:
    return build(RandomChooser(rng))


def programs(mode: str = "mixed"):
    """A hypothesis strategy of GenProgram (``.text`` is the spec).

    mode "drawn": every decision is a hypothesis draw (shrinks well, but hypothesis' draws
    favour boundary values: fewer kinds of programs per example); "seeded": a drawn seed
    drives random.Random (the campaign's distribution; shrinks only the seed); "mixed":
    either, per example.
    """
    from hypothesis import strategies as st

    @st.composite
    def drawn(draw):
        return build(DrawChooser(draw))

    seeded = st.builds(lambda seed: random_program(random.Random(seed)),
                       st.integers(0, 2**32 - 1))
    if mode == "drawn":
        return drawn()
    if mode == "seeded":
        return seeded
    return st.one_of(seeded, drawn())
