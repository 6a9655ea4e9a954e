"""Differential checks of one program: what every compiled network must satisfy.

``check_program(text, rng)`` returns a list of violations, each ``"<class>: <detail>"``;
the classes are CLASSES. The numpy reference backend is cheap (no numba compile) and is
checked on every program; ``numba=True`` adds the generated numba kernels (~1–5 s of
compile per program). The oracle (tests/oracle.py, a numeric joint-covariance
interpreter that shares only the parser and the closed-form duals with ntkc) is compared
when it can be imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import traceback
from pathlib import Path

import numpy as np

import ntkc
from ntkc.errors import SpecError

# "refused" is no violation: a generated kernel's documented refusal of inputs beyond its
# quadrature's accurate range (ValueError naming QUAD_TOL); campaigns count it.
CLASSES = ("refused", "rejected", "traceback", "non-finite", "asymmetric", "inconsistent", "non-psd",
           "backend", "oracle", "continuity", "hang", "oracle-error", "zero-input", "params",
           "float32", "tiles")

# Tolerances, relative to max |K| of the matrix compared.
TOL_BACKEND = 1e-10
TOL_SYMMETRY = 1e-12
TOL_PSD = 1e-10
TOL_ORACLE = 1e-8
TOL_CONTINUITY = 1e-6
TOL_PARAMS = 1e-12  # kernel(params=...) against the spec with that default
TOL_FLOAT32 = 1e-5  # float32 inputs against float64 (README, "Backends")
STEP = 1e-9  # relative perturbation of one w_std/b_std literal
# Quadrature (user nonlins without a closed form) is symmetric by construction, but its
# error (QUAD_TOL = 1e-6 in the generated kernels) separates it from the oracle's own rule.
TOL_QUADRATURE = 1e-5
# One input channel (vector[1], sequence[L, 1], image[H, W, 1]) puts every pair of inputs
# (and positions) at correlation exactly ±1, where acos/asin-based duals lose ~sqrt(eps):
# symmetry, PSD, consistency and the two backends are then compared at this level.
TOL_DEGENERATE = 1e-7

_LITERAL = re.compile(r"\b([wb]_std)\s*=\s*((?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)")
_POSITIONED = re.compile(r"^[^\n]*:\d+:\d+: error: ", re.MULTILINE)


def oracle_function():
    """tests/oracle.py's oracle_kernels, or None while it does not exist."""
    try:
        from oracle import oracle_kernels
    except ImportError:
        return None
    return oracle_kernels


def _workdir() -> Path:
    root = Path(os.environ.get("NTKC_CACHE_DIR") or tempfile.gettempdir()) / "fuzz-specs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_text(text: str):
    """ntkc.load of spec text (written to a file named by its hash)."""
    sha = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = _workdir() / f"spec_{sha}.ntk"
    if not path.exists():
        path.write_text(text)
    return ntkc.load(path, target="cpu")


def uses_quadrature(model) -> bool:
    from ntkc.semantics.quadrature import GaussExpectation

    rec = model.compiled.recursion
    return any(a.expr.atoms(GaussExpectation) for a in rec.point + rec.pair
               if a.stencil is None)


def _scale(*mats) -> float:
    m = max(float(np.abs(a).max()) if a.size else 0.0 for a in mats)
    return m if m > 0 and np.isfinite(m) else 1.0


def _err(a, b) -> float:
    return float(np.abs(a - b).max()) / _scale(a, b)


def perturbed(text: str, rng: np.random.Generator) -> str | None:
    """The spec with one nonzero w_std/b_std literal scaled by 1 + STEP, or None."""
    hits = [m for m in _LITERAL.finditer(text) if float(m.group(2)) != 0.0]
    if not hits:
        return None
    m = hits[int(rng.integers(len(hits)))]
    value = float(m.group(2)) * (1 + STEP)
    return text[:m.start(2)] + repr(value) + text[m.end(2):]


def inputs(model, rng: np.random.Generator, n1: int = 3, n2: int = 4):
    shape = model.input_shape
    return rng.standard_normal((n1, *shape)), rng.standard_normal((n2, *shape))


def check_program(text: str, rng: np.random.Generator, numba: bool = False,
                  oracle: bool = True, continuity: bool = True,
                  zero_inputs: bool = False, render: bool = True) -> list[str]:
    """Violations of the kernel invariants by one program (an empty list: none)."""
    try:
        model = load_text(text)
    except SpecError as e:
        first = str(e).splitlines()[0]
        return [f"rejected: {first}"]
    except Exception:  # noqa: BLE001 - any other exception is the finding
        return ["traceback: compile: " + _last(traceback.format_exc())]
    try:
        from ntkc.show import show

        for style in ("text", "latex", "sympy") if render else ():  # `ntkc show` of it
            show(model.compiled.recursion, style, structure=style == "text")
    except Exception:  # noqa: BLE001 - any exception is the finding
        return ["traceback: show: " + _last(traceback.format_exc())]
    try:
        out = _check_model(model, text, rng, numba, oracle, continuity)
        if zero_inputs and not out:
            out += _check_zero_inputs(model, text, rng, numba)
        return out
    except ValueError as e:
        if "QUAD_TOL" in str(e):  # a documented refusal: the quadrature would be inaccurate
            return ["refused: " + str(e).split(":")[0]]
        return ["traceback: kernel: " + _last(traceback.format_exc())]
    except Exception:  # noqa: BLE001 - any other exception is the finding
        return ["traceback: kernel: " + _last(traceback.format_exc())]


def _last(tb: str) -> str:
    """The innermost two frames and the exception line of a traceback, on one line."""
    lines = [ln.strip() for ln in tb.strip().splitlines() if ln.strip()]
    frames = [ln for ln in lines if ln.startswith("File ")]
    return " | ".join(frames[-2:] + lines[-1:])[:500]


def _check_model(model, text, rng, numba, oracle, continuity) -> list[str]:
    out: list[str] = []
    x1, x2 = inputs(model, rng)
    xs = np.concatenate([x1, x2])
    n1 = len(x1)
    sym_tol, psd_tol, backend_tol = TOL_SYMMETRY, TOL_PSD, TOL_BACKEND
    oracle_tol = TOL_QUADRATURE if uses_quadrature(model) else TOL_ORACLE
    if model.input_shape[-1] == 1:
        sym_tol = psd_tol = backend_tol = TOL_DEGENERATE
        oracle_tol = max(oracle_tol, TOL_DEGENERATE)

    def ker(*args, backend="numpy"):
        k = model.kernel(*args, backend=backend)
        return {"nngp": np.asarray(k.nngp), "ntk": np.asarray(k.ntk)}

    k12, k21, gram = ker(x1, x2), ker(x2, x1), ker(xs)
    for name in ("nngp", "ntk"):
        a, b, g = k12[name], k21[name], gram[name]
        if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(g).all()):
            out.append(f"non-finite: {name} has NaN/Inf")
            continue
        if (e := _err(a, b.T)) > sym_tol:
            out.append(f"asymmetric: {name} K(x1,x2) vs K(x2,x1)^T off by {e:.3g} (rel)")
        if (e := _err(g, g.T)) > sym_tol:
            out.append(f"asymmetric: {name} Gram K(x,x) not symmetric, off by {e:.3g} (rel)")
        if (e := _err(g[:n1, n1:], a)) > max(sym_tol, 1e-10):
            out.append(f"inconsistent: {name} Gram block [x1,x2] vs K(x1,x2) off by "
                       f"{e:.3g} (rel)")
        eig = np.linalg.eigvalsh((g + g.T) / 2)
        if eig.min() < -psd_tol * max(abs(eig.max()), 1e-300) and eig.min() < -1e-300:
            out.append(f"non-psd: {name} Gram min eig {eig.min():.3g}, max {eig.max():.3g}")
    if out:
        return out
    if continuity:
        other = perturbed(text, rng)
        if other is not None:
            kp = _kernels_of(other, x1, x2)
            for name in ("nngp", "ntk"):
                if (e := _err(kp[name], k12[name])) > TOL_CONTINUITY:
                    out.append(f"continuity: {name} moved by {e:.3g} (rel) for a {STEP:g} "
                               "relative change of one w_std/b_std literal")
    out += _check_runtime_options(model, text, x1, x2, xs, k12, gram, rng, sym_tol)
    if numba:
        f12, fg = ker(x1, x2, backend="numba"), ker(xs, backend="numba")
        for name in ("nngp", "ntk"):
            for got, want, what in ((f12, k12, "K(x1,x2)"), (fg, gram, "Gram")):
                if not np.isfinite(got[name]).all():
                    out.append(f"non-finite: numba {name} {what} has NaN/Inf")
                elif (e := _err(got[name], want[name])) > backend_tol:
                    out.append(f"backend: numba vs numpy {name} {what} off by {e:.3g} (rel)")
    fn = oracle_function() if oracle else None
    if fn is not None:
        try:
            ref = fn(text, x1, x2)
        except Exception:  # noqa: BLE001 - the oracle's own limits, not ntkc's
            return out + ["oracle-error: " + _last(traceback.format_exc())]
        for name in ("nngp", "ntk"):
            if (e := _err(np.asarray(ref[name]), k12[name])) > oracle_tol:
                out.append(f"oracle: {name} K(x1,x2) off the oracle by {e:.3g} (rel)")
    return out


_PARAM = re.compile(r"^param\s+(\w+)\s*=\s*(\S+)\s*$", re.MULTILINE)


def _check_runtime_options(model, text, x1, x2, xs, k12, gram, rng, tile_tol) -> list[str]:
    """Params are runtime arguments (kernel(params=...) equals the spec with that default),
    float32 inputs track float64 (README: 1e-5), host tiles change nothing."""
    out = []
    params = _PARAM.findall(text)
    if params:
        name, value = params[int(rng.integers(len(params)))]
        new = float(value) * 1.1
        got = model.kernel(x1, x2, params={name: new}, backend="numpy")
        edited = _PARAM.sub(lambda m: f"param {name} = {new!r}" if m.group(1) == name
                            else m.group(0), text)
        want = _kernels_of(edited, x1, x2)
        for key in ("nngp", "ntk"):
            if (e := _err(np.asarray(getattr(got, key)), want[key])) > TOL_PARAMS:
                out.append(f"params: {key} with params={{{name!r}: {new:.4g}}} is {e:.3g} (rel) "
                           "off the spec with that default")
    if model.input_shape[-1] > 1:  # one channel: correlation ±1, see TOL_DEGENERATE
        k32 = model.kernel(x1.astype(np.float32), x2.astype(np.float32), backend="numpy")
        for key in ("nngp", "ntk"):
            got = np.asarray(getattr(k32, key))
            if got.dtype != np.float32:
                out.append(f"float32: {key} of float32 inputs is {got.dtype}")
            elif (e := _err(got.astype(np.float64), k12[key])) > TOL_FLOAT32:
                out.append(f"float32: {key} {e:.3g} (rel) off float64")
    tiled = model.kernel(xs, tile=3, backend="numpy")
    for key in ("nngp", "ntk"):
        if (e := _err(np.asarray(getattr(tiled, key)), gram[key])) > tile_tol:
            out.append(f"tiles: {key} Gram in 3-row tiles {e:.3g} (rel) off the whole one")
    return out


def _check_zero_inputs(model, text, rng, numba) -> list[str]:
    """Zero inputs (vectors) and zero-valued leading positions (spatial inputs: blank
    patches) give zero pre-activation variances without a bias. The NNGP stays well defined
    (E[φ(0)φ(v)] = φ(0)·E[φ(v)]); layer_norm of a zero-variance line does not."""
    if "layer_norm(" in text:
        return []
    x, _ = inputs(model, rng, 3, 1)
    if len(model.input_shape) == 1:
        x[1] = 0.0
    else:
        x[:, : max(1, model.input_shape[0] // 2)] = 0.0
    out = []
    for backend in ("numpy", "numba") if numba else ("numpy",):
        try:
            with np.errstate(all="ignore"):
                k = model.kernel(x, get="nngp", backend=backend)
        except ValueError:
            continue  # a clean refusal
        except Exception:  # noqa: BLE001 - a crash is the finding
            out.append(f"zero-input: {backend} crashed: " + _last(traceback.format_exc()))
            continue
        if not np.isfinite(k).all():
            out.append(f"zero-input: {backend} nngp has NaN/Inf with zero inputs/positions")
    return out


def _kernels_of(text, x1, x2):
    k = load_text(text).kernel(x1, x2, backend="numpy")
    return {"nngp": np.asarray(k.nngp), "ntk": np.asarray(k.ntk)}


def violation_class(v: str) -> str:
    return v.split(":", 1)[0]


def positioned(report: str) -> bool:
    """Whether a SpecError report starts with ``file:line:col: error:``."""
    return bool(_POSITIONED.match(report))
