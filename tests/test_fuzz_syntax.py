"""Syntax fuzzing (issue 9): whatever the text, ``compile_text`` returns or raises a
positioned SpecError; never another exception, never a hang; what it returns is valid
Python. The CLI exits 0 or 2 without a traceback.

Inputs (tests/fuzz/syntax.py): grammar-valid random statements, random bytes and junk,
mutations of every examples/*.ntk (deleted, duplicated and swapped lines, huge / zero /
negative / NaN numbers, keywords as names, deep nesting in nonlin bodies, CRLF, tabs, a BOM,
unicode identifiers) and a 10,000-line spec. Bounded to about a minute.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from fuzz.syntax import (
    EXAMPLES,
    check_syntax,
    grammar_program,
    long_comment_spec,
    long_spec,
    mutate,
    random_bytes,
    random_junk,
)

LIMIT = 20  # seconds per input

# Open findings: crashes that match these fragments are known (see the issue) and do not
# fail CI until their fix lands; remove an entry then. (None open at the moment.)
KNOWN: list[str] = []


def unexpected(violations: list[str]) -> list[str]:
    return [v for v in violations if not any(k in v for k in KNOWN)]


def _run(inputs):
    bad = []
    for label, text in inputs:
        for v in unexpected(check_syntax(text, LIMIT)):
            bad.append(f"{label}: {v}\n{text[:400]!r}")
    assert not bad, "\n\n".join(bad[:5])


def test_grammar_valid_random_programs():
    rng = random.Random(9)
    _run((f"grammar {k}", grammar_program(rng)) for k in range(150))


def test_random_bytes_and_junk():
    rng = random.Random(10)
    _run([(f"bytes {k}", random_bytes(rng)) for k in range(100)]
         + [(f"junk {k}", random_junk(rng)) for k in range(100)])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_mutated_examples(path):
    rng = random.Random(path.stem)
    text = path.read_text()
    _run((f"{path.stem} mutation {k}", mutate(text, rng)) for k in range(40))


@pytest.mark.parametrize("text", [
    "\ufeffnetwork t\ninput x : vector[2]\ng = dense(x)\noutput g\n",  # BOM
    "network t\r\ninput x : vector[2]\r\ng = dense(x)\r\noutput g\r\n",  # CRLF
    "network\tt\ninput\tx\t:\tvector[2]\ng\t=\tdense(x)\noutput\tg\n",  # tabs
    "network t\ninput x : vector[2]\ngé = dense(x)\noutput gé\n",  # unicode identifier
    "network t\ninput x : vector[2]\ng = dense(x, w_std=1e400)\noutput g\n",
    "network t\ninput x : vector[2]\ng = dense(x, w_std=0)\noutput g\n",
    "network t\ninput x : vector[2]\ng = dense(x, w_std=-1)\noutput g\n",
    "network t\ninput x : vector[2]\ng = dense(x, w_std=nan)\noutput g\n",
    "network t\ninput x : vector[99999999999999999999]\ng = dense(x)\noutput g\n",
    "network t\ninput x : image[0, 3, 1]\ng = conv(x, filter=[1, 1])\noutput g\n",
    "network t\ninput dense : vector[2]\ng = dense(dense)\noutput g\n",
    "network t\ninput x : vector[2]\noutput = dense(x)\noutput output\n",
    "network t\nnonlin f(z) = " + "(" * 50 + "z" + ")" * 50
    + "\ninput x : vector[2]\ng = dense(x)\nh = f(g)\noutput h\n",
    "", "\n\n\n", "# only a comment", "\x00", "output", "network",
], ids=lambda t: repr(t[:24]))
def test_edge_cases(text):
    assert unexpected(check_syntax(text, LIMIT)) == []


# Findings of the syntax campaigns, all fixed: exactly no violation now.
FIXED = {
    "deep_parens": "network t\nnonlin f(z) = " + "(" * 400 + "z" + ")" * 400
    + "\ninput x : vector[2]\ng = dense(x)\nh = f(g)\noutput h\n",
    "long_sum": "network t\nnonlin f(z) = " + " + ".join(["z"] * 400)
    + "\ninput x : vector[2]\ng = dense(x)\nh = f(g)\noutput h\n",
    "deeper_parens": "network t\nnonlin f(z) = " + "(" * 2000 + "z" + ")" * 2000
    + "\ninput x : vector[2]\ng = dense(x)\nh = f(g)\noutput h\n",
    "nested_exp": "network t\nnonlin f(z) = " + "exp(" * 200 + "z" + ")" * 200
    + "\ninput x : vector[2]\ng = dense(x)\nh = f(g)\noutput h\n",
    "cancelling_lincomb": "network t\ninput x : vector[2]\ng = dense(x)\nr = g - g\noutput r\n",
    "cancelling_input": "network t\ninput x : vector[4]\nr = x - x\noutput x\n",
    "zero_coefficient": "network t\ninput x : vector[2]\ng = dense(x)\nr = 0 * g\noutput r\n",
    "huge_literal": "network t\ninput x : vector[2]\ng = dense(x, w_std=1e99999)\noutput g\n",
    "huge_stride": "network t\ninput x : sequence[5, 3]\ng = conv(x, filter=[3], "
    "stride=[3.4e+38])\nf = flatten(g)\ny = dense(f)\noutput y\n",
    "huge_exponent": "network t\nnonlin f(z) = z^1e99999\ninput x : vector[2]\ng = dense(x)\n"
    "output g\n",
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_finding(name):
    assert check_syntax(FIXED[name], LIMIT) == []


def test_ten_thousand_lines():
    assert check_syntax(long_comment_spec(10_000), LIMIT) == []
    assert check_syntax(long_spec(10_000), 60) == []


CLI_INPUTS = {
    "ok.ntk": (("network t\ninput x : vector[2]\ng = dense(x)\nh = relu(g)\ny = dense(h)\n"
                "output y\n"), 0),
    "typo.ntk": ("network t\ninput x : vector[2]\ng = dense(x)\nh = rleu(g)\noutput h\n", 2),
    "junk.ntk": ("\x00\xff$$ = = (\n", 2),
    "bom_crlf.ntk": ("\ufeffnetwork t\r\ninput x : vector[2]\r\ng = dense(x)\r\noutput g\r\n",
                     None),
    "empty.ntk": ("", 2),
}


def test_cli_exit_codes_and_no_traceback(tmp_path):
    for name, (text, want) in CLI_INPUTS.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        r = subprocess.run([sys.executable, "-m", "ntkc.cli", "check", str(path)],
                           capture_output=True, text=True, timeout=120, check=False)
        assert "Traceback" not in r.stderr, (name, r.stderr)
        assert r.returncode in (0, 2), (name, r.returncode, r.stderr)
        if want is not None:
            assert r.returncode == want, (name, r.returncode, r.stdout, r.stderr)
