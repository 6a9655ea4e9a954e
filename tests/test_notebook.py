"""Formulas for people: `ntkc show --latex` (a standalone document) and a Model's
rendering in Jupyter (_repr_latex_, _repr_html_). No TeX is installed here, so the
document is checked for what breaks a TeX run: unbalanced braces and environments,
characters pdflatex cannot read in math, and spec text that would act as markup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ntkc
from ntkc.cli import main
from ntkc.compiler import compile_text
from ntkc.show import latex_document

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.ntk"))

HOSTILE = """# \\input{/etc/passwd} $x$ } \\end{document} <script>alert(1)</script> & %
network hostile
input x : image[4, 4, 1]
g1 = conv(x, filter=[3, 3], padding=same)   # \\def\\a{b} ^_~
h1 = relu(g1)
p = global_avg_pool(h1)
y = dense(p)
output y
"""


def _balanced(tex: str) -> bool:
    depth = 0
    for c in re.sub(r"\\[{}]", "", tex):  # \{ and \} are characters, not groups
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def _check_document(tex: str) -> None:
    assert tex.startswith("\\documentclass") and tex.rstrip().endswith("\\end{document}")
    assert _balanced(tex)
    begins = re.findall(r"\\begin\{(\w+\*?)\}", tex)
    ends = re.findall(r"\\end\{(\w+\*?)\}", tex)
    assert sorted(begins) == sorted(ends) and tex.count("\\end{document}") == 1
    # math mode is ASCII (Θ, 𝒜, x̃, ·, ² are spelled as TeX commands); text may be UTF-8
    math = tex.split("\\section*{Recursion}", 1)[1]
    assert math.isascii(), sorted({c for c in math if not c.isascii()})


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_latex_document_of_every_example(spec):
    tex = latex_document(compile_text(spec.read_text(), spec.name).recursion, expand=True)
    _check_document(tex)


def test_spec_text_is_never_markup():
    rec = compile_text(HOSTILE, "hostile.ntk").recursion
    tex = latex_document(rec)
    _check_document(tex)
    assert "\\input{" not in tex and "\\def\\a" not in tex
    assert "\\textbackslash{}input\\{/etc/passwd\\}" in tex
    html_text = ntkc.Model(None, compile_text(HOSTILE, "hostile.ntk"))._repr_html_()
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text


def test_model_renders_in_jupyter(tmp_path):
    spec = ROOT / "examples" / "erf_mlp.ntk"
    model = ntkc.load(spec)
    latex = model._repr_latex_()
    assert latex.startswith("$$\\begin{aligned}") and latex.endswith("\\end{aligned}$$")
    assert "\\mathrm{NTK}(x,x')" in latex and _balanced(latex)
    html_text = model._repr_html_()
    assert "<pre>" in html_text and "erf_mlp" in html_text and "$$" in html_text
    generated = ntkc.load(ROOT / "generated" / "erf_mlp.py")  # no spec: the plain repr
    assert generated._repr_latex_() is None and generated._repr_html_() is None


def test_cli_show_latex_writes_a_document(capsys):
    assert main(["show", "--latex", str(ROOT / "examples" / "digits_cntk_gap.ntk")]) == 0
    tex = capsys.readouterr().out
    _check_document(tex)
    assert "\\section*{Covariance structure}" in tex  # a conv network: its structure too
