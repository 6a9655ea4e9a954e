"""Syntax fuzzing: inputs that are anything but guaranteed valid, and the one invariant.

Invariant: ``ntkc.compiler.compile_text`` returns, or raises SpecError whose report has the
``file:line:col: error:`` form wherever the diagnostic has a position; never another
exception, never a hang. When it returns, the generated source is valid Python.

Input families (``syntax_inputs(rng, n)`` mixes them):
- grammar-valid statements with random names, expressions and arguments;
- random byte strings (decoded leniently) and random printable junk;
- mutations of every examples/*.ntk: deleted, duplicated and swapped lines, huge / zero /
  negative / NaN-like numbers, keywords and op names as names, deep nesting in nonlin
  bodies, CRLF, tabs, a BOM, unicode identifiers;
- one 10,000-line spec.
"""

from __future__ import annotations

import random
import re
import signal
import traceback
from pathlib import Path

from ntkc.compiler import compile_text
from ntkc.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.ntk"))

KEYWORDS = ["network", "parameterization", "param", "input", "nonlin", "output", "dense", "conv",
            "relu", "erf", "flatten", "concat", "layer_norm", "avg_pool", "global_avg_pool",
            "vector", "image", "sequence", "ntk", "standard", "same", "valid", "circular",
            "w_std", "b_std", "width", "none", "tanh", "exp", "x", "z", "nan", "inf"]
NUMBERS = ["0", "0.0", "-1", "-0.5", "1e400", "1e-400", "99999999999999999999999", "1e308",
           "nan", "NaN", "inf", "-inf", "1e99999", ".5", "5.", "00", "1_000", "0x10", "-0",
           "1e", "3.4e+38", "2147483648", "18446744073709551617"]
UNICODE = ["gé", "λ", "Ωmega", "x²", "ｘ", "名字", "g\u200b1", "e\u0301"]


class Hang(BaseException):  # not an Exception: no `except Exception` swallows it
    """Raised by the alarm: an input ran past its time limit."""


def _alarm(signum, frame):
    raise Hang()


def run_limited(fn, seconds: int):
    """fn() under signal.alarm(seconds); raises Hang when it runs past."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_POS = re.compile(r"^\S.*?:(\d+):(\d+): (error|warning): ", re.MULTILINE)


def check_syntax(text: str, seconds: int = 20, compile_source: bool = True) -> list[str]:
    """Violations of the front-end invariant by one input (empty: none)."""
    try:
        compiled = run_limited(lambda: compile_text(text, "fuzz.ntk", target="cpu"), seconds)
    except Hang:
        return [f"hang: compile_text ran past {seconds} s"]
    except SpecError as e:
        report = str(e)
        out = []
        if not report.strip():
            out.append("unpositioned: empty SpecError report")
        for d in e.diagnostics:
            if d.pos is not None and f"fuzz.ntk:{d.pos.line}:{d.pos.col}: " not in report:
                out.append(f"unpositioned: a positioned diagnostic renders without "
                           f"file:line:col: {report[:200]!r}")
            if d.pos is not None and not (d.pos.line >= 1 and d.pos.col >= 1):
                out.append(f"unpositioned: position {d.pos} out of range")
        return out
    except RecursionError:
        return ["traceback: RecursionError: " + _last(traceback.format_exc())]
    except Exception as e:  # noqa: BLE001 - anything else is a crash
        return [f"traceback: {type(e).__name__}: " + _last(traceback.format_exc())]
    if compile_source:
        try:
            compile(compiled.source, "<generated>", "exec")
        except SyntaxError as e:
            return [f"bad-source: generated module does not compile: {e}"]
    return []


def _last(tb: str) -> str:
    lines = [ln.strip() for ln in tb.strip().splitlines() if ln.strip()]
    frames = [ln for ln in lines if ln.startswith("File ")]
    return " | ".join(frames[-2:] + lines[-1:])[:500]


# -- input families --------------------------------------------------------------------------
def random_expr(rng: random.Random, depth: int = 0) -> str:
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice(NUMBERS[:6] + ["1.5", "2", "x", "g", "w", "z", "none"])
    if r < 0.5:
        op = rng.choice(["+", "-", "*", "/", "^", "**"])
        return f"{random_expr(rng, depth + 1)} {op} {random_expr(rng, depth + 1)}"
    if r < 0.6:
        return f"-{random_expr(rng, depth + 1)}"
    if r < 0.7:
        return f"({random_expr(rng, depth + 1)})"
    if r < 0.8:
        return "[" + ", ".join(random_expr(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    fn = rng.choice(KEYWORDS + ["sin", "monomial", "polynomial", "sum_pool", "foo"])
    args = [random_expr(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    args += [f"{rng.choice(KEYWORDS)}={random_expr(rng, depth + 1)}"
             for _ in range(rng.randint(0, 2))]
    return f"{fn}({', '.join(args)})"


def grammar_statement(rng: random.Random) -> str:
    name = rng.choice(KEYWORDS + ["g", "h", "y", "w", "q1"] + UNICODE[:1])
    kind = rng.randrange(7)
    if kind == 0:
        return f"network {name}"
    if kind == 1:
        return f"parameterization {rng.choice(['ntk', 'standard', name])}"
    if kind == 2:
        return f"param {name} = {random_expr(rng)}"
    if kind == 3:
        dims = ", ".join(rng.choice(["0", "1", "3", "8", "100000"])
                         for _ in range(rng.randint(1, 4)))
        return f"input {name} : {rng.choice(['vector', 'sequence', 'image', name])}[{dims}]"
    if kind == 4:
        return f"nonlin {name}(z) = {random_expr(rng)}"
    if kind == 5:
        return f"output {name}"
    return f"{name} = {random_expr(rng)}"


def grammar_program(rng: random.Random) -> str:
    """Grammar-valid (mostly semantically invalid) programs."""
    lines = [grammar_statement(rng) for _ in range(rng.randint(1, 10))]
    if rng.random() < 0.5:
        lines = ["network t", "input x : vector[3]", "g = dense(x)"] + lines + ["output g"]
    return "\n".join(lines) + "\n"


def random_bytes(rng: random.Random) -> str:
    n = rng.randint(0, 200)
    data = bytes(rng.randrange(256) for _ in range(n))
    return data.decode(rng.choice(["utf-8", "latin-1"]), errors="replace")


def random_junk(rng: random.Random) -> str:
    alphabet = "abcxyz_ 0123456789.,=()[]+-*/^#:\n\t\r\"'$@!{}~`\\e"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))


def _lines(text: str) -> list[str]:
    return text.split("\n")


def mutate(text: str, rng: random.Random) -> str:
    """One or more random mutations of a valid spec."""
    for _ in range(rng.randint(1, 3)):
        lines = _lines(text)
        m = rng.randrange(12)
        i = rng.randrange(len(lines))
        j = rng.randrange(len(lines))
        if m == 0:  # delete a line
            del lines[i]
        elif m == 1:  # duplicate a line
            lines.insert(i, lines[i])
        elif m == 2:  # swap two lines
            lines[i], lines[j] = lines[j], lines[i]
        elif m == 3:  # a strange number
            nums = list(re.finditer(r"\d+(\.\d*)?([eE][+-]?\d+)?", text))
            if nums:
                n = rng.choice(nums)
                text = text[:n.start()] + rng.choice(NUMBERS) + text[n.end():]
                continue
        elif m == 4:  # keywords and op names as names
            names = list(re.finditer(r"^(\w+) *=", text, re.MULTILINE))
            if names:
                old = rng.choice(names).group(1)
                text = re.sub(rf"\b{old}\b", rng.choice(KEYWORDS), text)
                continue
        elif m == 5:  # deep nesting in a nonlin body
            d = rng.choice([10, 100, 400, 2000])
            body = rng.choice(["(" * d + "z" + ")" * d, "-" * d + "z",
                               "exp(" * min(d, 200) + "z" + ")" * min(d, 200),
                               " + ".join(["z"] * d), "z" + "^z" * min(d, 50)])
            lines.insert(rng.randint(1, len(lines)), f"nonlin deep(z) = {body}")
            if rng.random() < 0.5:
                text = "\n".join(lines).replace("relu(", "deep(").replace("erf(", "deep(")
                continue
        elif m == 6:
            text = text.replace("\n", "\r\n")
            continue
        elif m == 7:
            text = text.replace(" ", "\t")
            continue
        elif m == 8:
            text = "\ufeff" + text
            continue
        elif m == 9:  # unicode identifiers
            names = list(re.finditer(r"^(\w+) *=", text, re.MULTILINE))
            if names:
                old = rng.choice(names).group(1)
                text = re.sub(rf"\b{old}\b", rng.choice(UNICODE), text)
                continue
        elif m == 10:  # truncate
            text = text[:rng.randrange(len(text) + 1)]
            continue
        else:  # a random character somewhere
            k = rng.randrange(len(text) + 1)
            text = text[:k] + rng.choice("()[],=:#\n\t\x00\x0c\u2028é$") + text[k:]
            continue
        text = "\n".join(lines)
    return text


def long_spec(n: int = 10_000) -> str:
    """A valid n-line spec: a few params, then a long dense/relu chain and comments."""
    lines = ["network long", "input x : vector[2]", "g0 = dense(x, b_std=0.1)"]
    prev = "g0"
    k = 0
    while len(lines) < n - 1:
        k += 1
        if k % 5 == 0:
            lines.append(f"# comment {k}")
            continue
        if k % 2:
            lines.append(f"h{k} = relu({prev})")
        else:
            lines.append(f"g{k} = dense({prev}, w_std=1.4, b_std=0.1)")
        prev = f"{'h' if k % 2 else 'g'}{k}"
    lines.append(f"output {prev}")
    return "\n".join(lines) + "\n"


def long_comment_spec(n: int = 10_000) -> str:
    """10,000 lines, mostly comments, blank lines and unused params around a tiny net."""
    lines = ["network long_comments"]
    for k in range(n - 6):
        lines.append(f"param p{k} = {k}" if k % 3 == 0 else "# " + "x" * (k % 50)
                     if k % 3 == 1 else "")
    lines += ["input x : vector[2]", "g = dense(x, b_std=0.1)", "h = relu(g)", "y = dense(h)",
              "output y"]
    return "\n".join(lines) + "\n"


def example_texts() -> list[str]:
    return [p.read_text() for p in EXAMPLES]


def syntax_inputs(rng: random.Random, n: int):
    """n (label, text) pairs mixing every family."""
    from .programs import random_program

    examples = example_texts()
    for k in range(n):
        r = k % 6
        if r == 0:
            yield "grammar", grammar_program(rng)
        elif r == 1:
            yield "bytes", random_bytes(rng)
        elif r == 2:
            yield "junk", random_junk(rng)
        elif r == 3:
            yield "mutated-generated", mutate(random_program(rng).text, rng)
        else:
            yield "mutated-example", mutate(rng.choice(examples), rng)
