"""Every class of spec error: message, file:line:col, the source line and a caret,
and through the CLI exit status 2 with no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ntkc.compiler import compile_text
from ntkc.errors import SpecError
from ntkc.frontend import program_from_text
from ntkc.runtime.model import import_module_file

HEAD = "network t\ninput x : vector[3]\n"
IMG = "network t\ninput x : image[4, 4, 3]\n"


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as e:
        compile_text(text, "t.ntk")
    return str(e.value)


CASES = [
    # (spec, "line:col", message fragment, caret line)
    (HEAD + "g = dense(x,, w_std=1)\noutput g\n", "3:13", "syntax error: unexpected ','", None),
    (HEAD + "g = dense(x $\noutput g\n", "3:13", "unexpected character '$'", None),
    (HEAD + "g = dense(q)\noutput g\n", "3:11", "undefined name 'q'", None),
    (HEAD + "g = dense(x)\nh = rleu(g)\noutput h\n", "4:5",
     "unknown operation 'rleu' (did you mean 'relu'?)", "        ^^^^"),
    (HEAD + "g = dense(x, w_sd=1)\noutput g\n", "3:14",
     "dense has no argument 'w_sd' (did you mean 'w_std'?)", None),
    (HEAD + "g = dense(x)\ng = dense(x)\noutput g\n", "4:1", "'g' is already defined on line 3",
     None),
    (HEAD + "g = dense(x, w_std=x)\noutput g\n", "3:20",
     "dense's w_std must be a number or a param, not the line 'x'", None),
    (HEAD + "g = dense(x)\nh = monomial(g, degree=1.5)\noutput h\n", "4:24",
     "monomial's degree must be a non-negative integer", None),
    (HEAD + "g = dense(x)\nh = relu(g)\nk = erf(h)\noutput k\n", "5:5",
     "erf needs a Gaussian input", None),
    (HEAD + "h = relu(x)\noutput h\n", "3:5", "'x' is the raw input", None),
    (HEAD + "g = dense(x)\n", "3:1", "no output", None),
    (HEAD + "g = dense(x)\nr = g / g\noutput r\n", "4:5", "not linear", None),  # g * g: a product
    (HEAD + "g = dense(x)\nr = g + dense(x)\noutput r\n", "4:9", "give it its own line", None),
    (HEAD + "nonlin f(z) = foo(z)\ng = dense(x)\nh = f(g)\noutput h\n", "3:15",
     "unknown function 'foo'", None),
    (HEAD + "nonlin f(z) = z + q\ng = dense(x)\nh = f(g)\noutput h\n", "3:19",
     "may not use 'q'", None),
    (IMG + "g = conv(x, filter=[5, 5], padding=valid)\noutput g\n", "3:5",
     "a window of 5 does not fit a VALID input of size 4", None),
    (IMG + "g = dense(x)\noutput g\n", "3:5", "apply flatten(...) or a global pool", None),
    (HEAD + "p = avg_pool(x, window=[2])\noutput p\n", "3:5",
     "avg_pool needs a sequence or image input, but 'x' is a vector", None),
    (IMG + "g = conv(x, filter=[3, 3], padding=same)\nh = conv(x, filter=[3, 3])\n"
     "r = g + h\noutput r\n", "5:1",
     "cannot add 'g' of shape [4, 4, ?] and 'h' of shape [2, 2, ?]", None),
    (IMG + "g = conv(x, filter=[3], padding=same)\noutput g\n", "3:5",
     "a filter of 1 dim(s)", None),
    (IMG + "g = conv(x, filter=[3, 3], padding=full)\noutput g\n", "3:36",
     "conv's padding must be one of same, valid, circular", None),
    (IMG + "g = conv(x, filter=[3, 0])\noutput g\n", "3:20",
     "conv's filter must be a list of positive integers", None),
    (IMG + "g = conv(x, filter=[3, 3])\nh = relu(g)\noutput h\n", "4:5",
     "the output of a convolutional network must be a vector", None),
    ("network t\nparameterization wide\ninput x : vector[2]\n", "2:18",
     "unknown parameterization 'wide'", None),
    (("network t\nparameterization standard\ninput x : vector[2]\ng = dense(x, w_std=1)\n"
      "h = relu(g)\ny = dense(h)\noutput y\n"), "6:5", "give width=", None),
    (HEAD + "g = dense(x)\nh = dense(x, width=4)\nc = concat(g, h)\nk = relu(c)\noutput k\n",
     "6:5", "'c' is a concat", None),
]


@pytest.mark.parametrize("text, where, message, caret", CASES)
def test_error_position_and_message(text, where, message, caret):
    report = error_of(text)
    first = report.splitlines()[0]
    assert first.startswith(f"t.ntk:{where}: error: "), report
    assert message in first, report
    line_no = int(where.split(":")[0])
    lines = report.splitlines()
    assert lines[1].strip() == text.splitlines()[line_no - 1].strip()
    col = int(where.split(":")[1])
    assert lines[2].index("^") == 4 + col - 1  # the caret sits under the column
    if caret:
        assert lines[2] == caret


def test_unused_definitions_warn():
    prog = program_from_text(
        HEAD + "param w = 2\nparam u = 1\nnonlin f(z) = z*z\ng = dense(x, w_std=w)\n"
        "d = dense(x)\noutput g\n", "t.ntk")
    text = "\n".join(prog.warnings)
    assert "t.ntk:7:5: warning: 'd' is never used by the output" in text
    assert "t.ntk:4:7: warning: param 'u' is never used" in text
    assert "t.ntk:5:8: warning: nonlin 'f' is never used" in text


def test_cli_reports_without_traceback(tmp_path):
    spec = tmp_path / "bad.ntk"
    spec.write_text(HEAD + "g = dense(x)\nh = rleu(g)\noutput h\n")
    run = subprocess.run([sys.executable, "-m", "ntkc.cli", "check", str(spec)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"{spec}:4:5: error: unknown operation 'rleu'" in run.stderr
    assert "h = rleu(g)" in run.stderr and "^^^^" in run.stderr


# The payload's marker file: a relative name, so executed code would create it in the
# working directory. The tests below run with cwd = tmp_path and look there.
PWNED = "pwned"


def test_spec_text_never_evaluated(tmp_path, monkeypatch):
    # A spec that would run code if it reached eval/sympify is just a syntax error.
    monkeypatch.chdir(tmp_path)
    text = HEAD + f"param w = __import__('os').system('touch {PWNED}')\n"
    with pytest.raises(SpecError):
        compile_text(text, "t.ntk")
    assert not (tmp_path / PWNED).exists()


@pytest.mark.parametrize("spec", [
    HEAD + "g = dense(x)\noutput g\n",  # the dense module writer
    IMG + "g = conv(x, filter=[3, 3])\nh = flatten(g)\ny = dense(h)\noutput y\n",  # spatial
], ids=["dense", "conv"])
def test_spec_path_never_executed(tmp_path, monkeypatch, spec):
    # The spec's path is written into the generated module (its docstring, SPEC_FILE). A
    # path that closes the docstring would otherwise run its own line on import.
    monkeypatch.chdir(tmp_path)
    name = f'a.ntk"""\nopen({PWNED!r}, "w").close()\n"""'
    try:
        source = compile_text(spec, name).source
    except SpecError:
        return  # refusing such a path is safe too
    module = tmp_path / "generated_pwn.py"
    module.write_text(source)
    import_module_file(module)  # as ntkc.load imports a compiled spec; cwd is tmp_path
    assert not (tmp_path / PWNED).exists(), "the generated module ran code from the spec path"
