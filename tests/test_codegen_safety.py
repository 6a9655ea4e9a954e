"""Generated source is safe by construction, and generated modules work under any
loader without shadowing other modules (issue 9).

- Hostile spec file names (triple quotes, backslashes, newlines, non-ASCII) compile
  to modules that run nothing on import and compute the right kernels.
- Code names are unique (``a__b`` + ``c`` and ``a`` + ``b__c`` once met) and never
  meet the module's own names; conv loop counters shadow no argument.
- A network named numpy does not replace sys.modules["numpy"].
- Processes loading one spec on an empty cache all succeed.
- numba's on-disk cache works across processes for a module loaded by a plain
  importlib loader (nothing registered in sys.modules), and for ntkc.load after it.

Small dense specs and the numpy backend wherever the property is not about numba:
numba compile time adds up.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ntkc
from ntkc.codegen.driver_template import comment, identifier
from ntkc.codegen.emit import ModuleWriter
from ntkc.codegen.emit_spatial import SpatialWriter
from ntkc.compiler import compile_text
from ntkc.errors import SpecError
from ntkc.frontend import program_from_text
from ntkc.runtime.model import import_module_file, module_name
from ntkc.semantics.derive import derive

TINY = """network {name}
input x : vector[2]
g1 = dense(x, w_std=1.3, b_std=0.2)
h1 = relu(g1)
y = dense(h1)
output y
"""
X = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.1], [-0.3, 0.7]])


def _reference(name: str = "ref"):
    """The tiny network's kernels from a plainly named spec (numpy backend)."""
    model = ntkc.load(_spec(Path(os.environ["NTKC_CACHE_DIR"]), f"{name}.ntk", name))
    return model.kernel(X, backend="numpy")


def _spec(directory: Path, filename: str, network: str = "tiny", text: str = TINY) -> Path:
    path = directory / filename
    path.write_text(text.format(name=network))
    return path


def _nothing_ran(*dirs: Path) -> None:
    assert not [p for d in dirs for p in d.rglob("PWNED")]


PAYLOAD = '__import__("os").system("touch PWNED")'
HOSTILE = [
    f'a"""+{PAYLOAD}+""".ntk',
    f"b'''+{PAYLOAD}+'''.ntk",
    'c\\"""\\.ntk',  # a backslash before the quotes: once a SyntaxError
    f'd\n"""\n{PAYLOAD}\n""".ntk',  # a newline, also in the comments' reach
    "é网络\u2028\x0c.ntk",  # non-ASCII, a Unicode line separator, a form feed
]


@pytest.mark.parametrize("filename", HOSTILE)
def test_hostile_spec_names_run_nothing(filename, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        spec = _spec(tmp_path, filename, network="hostile")
    except OSError:
        pytest.skip(f"the filesystem refuses the name {filename!r}")
    cache = Path(os.environ["NTKC_CACHE_DIR"])
    model = ntkc.load(spec)  # compiled to the cache, imported from there
    _nothing_ran(tmp_path, cache)
    assert model.module.SPEC_FILE == spec.as_posix()
    ref = _reference()
    got = model.kernel(X, backend="numpy")
    np.testing.assert_allclose(got.nngp, ref.nngp, rtol=1e-13)
    np.testing.assert_allclose(got.ntk, ref.ntk, rtol=1e-13)
    # The same module written next to the spec (ntkc compile's layout) and loaded by path.
    out = tmp_path / "out"
    out.mkdir()
    compiled = compile_text(spec.read_text(), filename=spec.as_posix(), spec_name=f"../{filename}")
    (out / "hostile.py").write_text(compiled.source)
    module = import_module_file(out / "hostile.py")
    _nothing_ran(tmp_path, cache)
    assert ntkc.load(out / "hostile.py").module is module  # its spec is found: not stale
    np.testing.assert_allclose(module.kernel(X, backend="numpy").ntk, ref.ntk, rtol=1e-13)


def test_hostile_name_numba_kernel(tmp_path, monkeypatch):
    # One hostile module through numba too (the others use the numpy backend).
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, HOSTILE[0], network="hostile_nb")
    got = ntkc.load(spec).kernel(X)
    _nothing_ran(tmp_path, Path(os.environ["NTKC_CACHE_DIR"]))
    ref = _reference()
    np.testing.assert_allclose(got.nngp, ref.nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, ref.ntk, rtol=1e-12)


def test_comment_and_identifier_checks():
    for text in ("a\nimport os", "a\r\nb", "a\u2028b", "a\x00b", "a\x0cb", "a\x85b"):
        line = "# " + comment(text)
        assert len(line.splitlines()) == 1 and "\x00" not in line
        ast.parse(line + "\nx = 1\n")
    assert comment("K[h](x,x') = √Θ") == "K[h](x,x') = √Θ"  # printable text unchanged
    assert identifier("relu_mlp") == "relu_mlp"
    for bad in ("a b", "é", "a\n", "1a", "a.b", ""):
        with pytest.raises(ValueError):
            identifier(bad)


@pytest.mark.parametrize("name", ["h\u00e9", "h\nimport os", "a.b"])
def test_line_names_are_plain_identifiers(name):
    # The grammar's NAME is [A-Za-z_][A-Za-z0-9_]*: no name that could end a comment line.
    with pytest.raises(SpecError):
        program_from_text(TINY.format(name="n").replace("h1", name))


# Both K[a, b__c] and K[a__b, c] once had the code name K_a__b__c; a later read of the
# first (s3, after the conv g) then got the second.
COLLIDE = """network collide
input x : image[3, 3, 1]
a = conv(x, filter=[2, 2], padding=same)
b__c = relu(a)
s1 = a + b__c
a__b = conv(s1, filter=[2, 2], padding=same)
c = relu(a__b)
s2 = a__b + c
g = conv(s2, filter=[2, 2], padding=same)
s3 = a + b__c
z = g + s3
f = flatten(z)
y = dense(f)
output y
"""
RENAMED = {"a__b": "r", "b__c": "q", "a": "p", "c": "t"}


def _renamed(text: str) -> str:
    return re.sub(r"\b(a__b|b__c|a|c)\b", lambda m: RENAMED[m.group(1)], text)


def _module(source: str, tmp_path: Path, stem: str):
    path = tmp_path / f"{stem}.py"
    path.write_text(source)
    return import_module_file(path)


def test_code_names_are_unique(tmp_path):
    rec = derive(program_from_text(COLLIDE))
    names = list(rec.code_names.values())
    assert len(names) == len(set(names))
    assert "s2 = r + t" in _renamed(COLLIDE) and "__" not in _renamed(COLLIDE)
    x = np.random.default_rng(0).standard_normal((3, 3, 3, 1))
    got = _module(compile_text(COLLIDE, target="cpu").source, tmp_path, "collide")
    ref = _module(compile_text(_renamed(COLLIDE), target="cpu").source, tmp_path, "renamed")
    k, r = got.kernel(x, backend="numpy"), ref.kernel(x, backend="numpy")
    np.testing.assert_allclose(k.nngp, r.nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, r.ntk, rtol=1e-12)


CODE_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_[0-9]")
POOLED = """network pooled
input x : image[4, 4, 1]
g1 = conv(x, filter=[3, 3], padding=same)
h1 = relu(g1)
p = avg_pool(h1, window=[2, 2])
g2 = conv(p, filter=[2, 2], padding=same)
f = flatten(g2)
y = dense(f)
output y
"""
# Lines named like the module's own names: they must reach code only code-named.
INTERNAL = """network numpy
input x1 : vector[2]
np = dense(x1, w_std=1.3, b_std=0.2)
math = relu(np)
dot = dense(math)
output dot
"""


def _identifiers(source: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            out.add(node.name)
    return out


@pytest.mark.parametrize("spec", [INTERNAL, COLLIDE, POOLED])
def test_code_names_never_meet_module_names(spec):
    rec = derive(program_from_text(spec))
    if rec.spatial:
        source = SpatialWriter(rec, "all").module("s.ntk", spec, {})
        names = set(rec.code_names.values())  # with the hoisted roots' names
    else:
        writer = ModuleWriter(rec, target="all")
        source = writer.module("s.ntk", spec, {})
        names = set(writer.names.values())
    idents = _identifiers(source)
    names -= {"dot", "sq", "sq2"}  # the input's dot products: the module's own names
    assert all(CODE_NAME.match(n) for n in names & idents)
    assert not [n for n in idents - names if CODE_NAME.match(n)]
    if rec.spatial:  # the loops' counters shadow none of the phase functions' args
        fns = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)
               and re.fullmatch(r"_pair_rows|_point_rows|_local\d+", n.name)]
        assert len(fns) >= 3
        for fn in fns:
            args = {a.arg for a in fn.args.args}
            stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                      and isinstance(n.ctx, ast.Store)}
            assert not args & stored, (fn.name, args & stored)
            if spec is POOLED and fn.name == "_pair_rows":
                assert "_r" in stored  # the full convs' row loops


def test_network_named_like_a_module_shadows_nothing(tmp_path):
    numpy_module = sys.modules["numpy"]
    model = ntkc.load(_spec(tmp_path, "numpy.ntk", text=INTERNAL))
    assert sys.modules["numpy"] is numpy_module and np.ones(2).sum() == 2.0
    assert model.module.__name__.startswith("ntkc_generated_numpy_")
    assert sys.modules[model.module.__name__] is model.module
    ref = _reference()
    got = model.kernel(X)  # numba: the lines named np, math, dot, x1 shadow nothing
    np.testing.assert_allclose(got.nngp, ref.nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, ref.ntk, rtol=1e-12)
    # Loaded by path, a module file called numpy.py does not shadow numpy either.
    module = import_module_file(shutil.copy(model.module.__file__, tmp_path / "numpy.py"))
    assert sys.modules["numpy"] is numpy_module
    assert module.__name__ == module_name(tmp_path / "numpy.py")


def _load_specs(cache: str, specs: list[str], barrier, results) -> None:
    os.environ["NTKC_CACHE_DIR"] = cache
    names = []
    try:
        for spec in specs:
            barrier.wait(timeout=120)  # every process writes the same file at once
            model = ntkc.load(spec)
            names.append(model.module.__name__)
            model.kernel(X, backend="numpy")
        results.put(("ok", names))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put(("error", repr(e)))


def test_concurrent_loads_on_an_empty_cache(tmp_path):
    # 6 processes × 3 specs: each spec is compiled and written by 6 processes at once.
    specs = [str(_spec(tmp_path, f"c{k}.ntk", f"concurrent{k}",
                       TINY.replace("1.3", str(1.0 + k / 10)))) for k in range(3)]
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_load_specs, args=(str(cache), specs, barrier, results))
             for _ in range(6)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    assert len({tuple(names) for _, names in outcomes}) == 1  # one module per spec
    assert sorted(p.suffix for p in cache.iterdir() if p.is_file()) == [".py"] * 3


PLAIN_LOADER = """
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("some_name", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # registers nothing in sys.modules
k = module.kernel(np.array({x}))
stats = module._pairs_both.stats
print(json.dumps([module.__name__, k.ntk.tolist(), sum(stats.cache_hits.values()),
                  sum(stats.cache_misses.values())]))
"""
NTKC_LOADER = """
import json, sys
import numpy as np
import ntkc
model = ntkc.load(sys.argv[1])
k = model.kernel(np.array({x}))
stats = model.module._pairs_both.stats
print(json.dumps([model.module.__name__, k.ntk.tolist(), sum(stats.cache_hits.values()),
                  sum(stats.cache_misses.values())]))
"""


def _run(script: str, path: Path) -> list:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", script.format(x=X.tolist()), str(path)],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_numba_cache_across_processes_with_a_plain_loader(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(compile_text(TINY.format(name="tiny"), target="cpu").source)
    first = _run(PLAIN_LOADER, path)  # compiles, writes numba's cache next to the file
    assert list((tmp_path / "__pycache__").glob("tiny._pairs_both-*.nbi"))
    second = _run(PLAIN_LOADER, path)  # once: ModuleNotFoundError inside numba's cache
    third = _run(NTKC_LOADER, path)  # another loader, another name given: the same cache
    assert first[0] == second[0] == third[0] == module_name(path)
    # (cache hits, misses) of the pair kernel: compiled once, then loaded twice.
    assert (first[2:], second[2:], third[2:]) == ([0, 1], [1, 0], [1, 0])
    np.testing.assert_allclose(second[1], first[1], rtol=1e-14)
    np.testing.assert_allclose(third[1], first[1], rtol=1e-14)
    ref = _reference()
    np.testing.assert_allclose(first[1], ref.ntk, rtol=1e-12)


def test_module_name_matches_the_modules_own(tmp_path):
    path = tmp_path / "we.ird-name.py"
    path.write_text(compile_text(TINY.format(name="tiny"), target="cpu").source)
    code = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("x", {str(path)!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        print(m.__name__)
    """)
    exec_name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120, check=True).stdout.strip()
    assert exec_name == module_name(path) == import_module_file(path).__name__
    assert re.fullmatch(r"ntkc_generated_we_ird_name_[0-9a-f]{12}", exec_name)
