"""The cuda target: numba.cuda kernels agree with the CPU kernels.

CI has no GPU, so the kernels run under numba's CUDA simulator. numba reads
NUMBA_ENABLE_CUDASIM when numba.cuda is first imported, so every check that runs
cuda code does it in a subprocess with the variable set; the pytest process itself
never imports numba.cuda. numba (0.59 to 0.68 at least) ships numba.cuda and its
simulator built in, so these tests need numba only; with the numba-cuda package
installed (`pip install 'ntkc[cuda]'`, what real GPUs need with new numba versions),
numba.cuda is numba-cuda's, and its simulator passes the same tests.

The simulator runs each GPU thread as a Python thread: inputs are small (6 to 10
points), and some cases shrink CUDA_BLOCK to 4 (the simulator reads it at run time)
so that a tile spans several thread blocks, some of them wholly below the diagonal.
Convolutional networks (ntkc.codegen.cuda_spatial: a thread block per pair, its
threads over positions) are tiny 4×4×2 image nets, one with pools and global pooling,
one with flatten (a strided circular conv); some cases allow fewer blocks than pairs
(CUDA_MAX_BLOCKS), so a block computes several pairs in its scratch row in turn. The
simulator runs 16 threads per block; most of these tests' time is numba compiling the
CPU kernels they are compared with (and whose point phase the cuda target uses).
On a machine with a GPU, test_real_gpu_matches_cpu runs the same comparison for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ntkc
from ntkc.compiler import compile_file

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "generated"
DENSE = [GENERATED / f"{n}.py" for n in
         ("digits_fc", "erf_mlp", "relu_mlp", "residual_mlp", "tanh_mlp")]
CONV = [GENERATED / f"{n}.py" for n in ("digits_cnn_flatten", "digits_cntk_gap")]

# Tiny convolutional nets for the simulator: pools and global pooling (full structure:
# every pixel pair), and flatten (diagonal structure), with relu and erf.
CONV_GAP = """network tiny_gap
input x : image[4, 4, 2]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)
h1 = relu(g1)
p1 = avg_pool(h1, window=[2, 2], stride=[2, 2], padding=valid)
g2 = conv(p1, filter=[2, 2], padding=same, w_std=1.3, b_std=0.2)
h2 = relu(g2)
q = global_avg_pool(h2)
y = dense(q, w_std=1.0, b_std=0.1)
output y
"""
CONV_FLAT = """network tiny_flat
input x : image[4, 4, 2]
g1 = conv(x, filter=[3, 3], padding=same, w_std=1.4, b_std=0.1)
h1 = relu(g1)
g2 = conv(h1, filter=[3, 3], stride=[2, 1], padding=circular, w_std=1.4, b_std=0.1)
h2 = erf(g2)
f = flatten(h2)
y = dense(f, w_std=1.0, b_std=0.1)
output y
"""

# Runs in a subprocess: compares device="cuda" with device="cpu" for each case and
# prints one JSON record per case. argv: module path, cases as JSON, and optionally the
# constant memory a conv module's tables may take (0: all of them in device memory).
COMPARE = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import numpy as np
    import ntkc
    from ntkc.runtime.model import import_module_file

    m = import_module_file(Path(sys.argv[1]))
    model = ntkc.load(sys.argv[1])
    rng = np.random.default_rng(0)
    default_block = getattr(m, "CUDA_BLOCK", None)
    default_blocks = getattr(m, "CUDA_MAX_BLOCKS", None)
    records = []
    for case in json.loads(sys.argv[2]):
        block = case.get("block") or default_block
        m.CUDA_BLOCK, m.CUDA_ROW = block, (block or 0) + 1  # dense: threads per block edge
        m.CUDA_MAX_BLOCKS = case.get("blocks") or default_blocks  # conv: grid-stride
        dtype = case.get("dtype", "float64")
        x1 = rng.standard_normal((case["n1"], *m.INPUT_SHAPE)).astype(dtype)
        x2 = None
        if case.get("n2"):
            x2 = rng.standard_normal((case["n2"], *m.INPUT_SHAPE)).astype(dtype)
        get = case.get("get", "both")
        names = ("nngp", "ntk") if get == "both" else (get,)
        cpu = m.kernel(x1, x2, get=names, device="cpu")
        if "host_tile" in case:  # through ntkc.Model: host tiles, each on the device
            gpu = model.kernel(x1, x2, get=names, device="cuda", tile=case["host_tile"],
                               device_tile=case.get("tile"), progress=False)
        else:
            gpu = m.kernel(x1, x2, get=names, device="cuda", device_tile=case.get("tile"))
        for name, c, g in zip(names, cpu, gpu):
            records.append({
                "case": case, "output": name, "dtype": str(g.dtype), "shape": list(g.shape),
                "err": float(np.abs(g - c).max() / np.abs(c).max()),
                "symmetric": bool(np.array_equal(g, g.T)) if x2 is None else None,
                "finite": bool(np.isfinite(g).all()),
            })
    print("RESULT " + json.dumps(records))
''')


def _run(code: str, *args: str, simulator: bool, timeout: int = 900):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout, check=False)


def _compare(module: Path, cases: list[dict], simulator: bool = True) -> list[dict]:
    proc = _run(COMPARE, str(module), json.dumps(cases), simulator=simulator)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def _check(records: list[dict], rtol64: float = 1e-10, rtol32: float = 1e-5) -> None:
    for r in records:
        what = f"{r['case']} {r['output']}"
        assert r["finite"], what
        assert r["dtype"] == r["case"].get("dtype", "float64"), what
        # float64: the same recursion, dot products summed in another order: rounding
        # only. float32: the CPU's sgemm rounds x·x' in float32, the GPU sums in float64.
        rtol = rtol32 if r["dtype"] == "float32" else rtol64
        assert r["err"] <= rtol, f"{what}: max |cuda - cpu| / max |cpu| = {r['err']:.2e}"
        assert r["symmetric"] in (None, True), f"{what}: not exactly symmetric"


# x2 given and x2=None, float64 and float32, one output or both, whole-matrix tiles
# and small device tiles (partial edge tiles, tiles across the diagonal), and blocks of
# 4 so that one tile holds several blocks, some of them below the diagonal.
DENSE_CASES = [
    {"n1": 6, "n2": 5},
    {"n1": 6},
    {"n1": 6, "dtype": "float32"},
    {"n1": 6, "n2": 5, "dtype": "float32", "get": "nngp"},
    {"n1": 10, "block": 4},
    {"n1": 10, "block": 4, "tile": 4, "get": "ntk"},
    {"n1": 10, "n2": 7, "block": 4, "tile": [4, 3]},
    {"n1": 10, "block": 4, "tile": [8, 3], "dtype": "float32"},
    {"n1": 9, "block": 4, "tile": 4, "host_tile": 5},
]


@pytest.mark.slow
def test_simulator_dense_closed_form_matches_cpu():
    _check(_compare(GENERATED / "relu_mlp.py", DENSE_CASES))


@pytest.mark.slow
def test_simulator_quadrature_matches_cpu():
    # tanh has no closed form: the @cuda.jit(device=True) Gauss-Hermite helpers.
    cases = [{"n1": 6, "n2": 5}, {"n1": 6}, {"n1": 6, "dtype": "float32"},
             {"n1": 7, "block": 4, "tile": [4, 6]}]
    _check(_compare(GENERATED / "tanh_mlp.py", cases))


@pytest.mark.slow
def test_simulator_erf_and_residual_match_cpu():
    for name in ("erf_mlp", "residual_mlp"):
        _check(_compare(GENERATED / f"{name}.py", [{"n1": 5, "n2": 4}, {"n1": 5}]))


@pytest.fixture(scope="module")
def conv_modules(tmp_path_factory) -> dict[str, Path]:
    """The tiny conv nets compiled (target all) next to their specs."""
    tmp = tmp_path_factory.mktemp("conv_cuda")
    out = {}
    for text in (CONV_GAP, CONV_FLAT):
        name = text.split()[1]
        (tmp / f"{name}.ntk").write_text(text)
        compiled = compile_file(tmp / f"{name}.ntk", spec_name=f"{name}.ntk")
        (tmp / f"{name}.py").write_text(compiled.source)
        out[name] = tmp / f"{name}.py"
    return out


# Conv cases: x2 given and x2=None, float64 and float32, one output or both; then fewer
# blocks than pairs (CUDA_MAX_BLOCKS), so each block computes several pairs in its
# scratch row, with device tiles across the diagonal and host tiles (ntkc.Model).
CONV_CASES = [
    {"n1": 3, "n2": 2},
    {"n1": 3},
    {"n1": 3, "n2": 2, "dtype": "float32", "get": "ntk"},
    {"n1": 3, "dtype": "float32"},
    {"n1": 5, "blocks": 2, "tile": [2, 3]},
    {"n1": 4, "n2": 3, "blocks": 1, "tile": 2, "get": "nngp"},
    {"n1": 5, "blocks": 2, "host_tile": 3},
]


@pytest.mark.slow
def test_simulator_conv_global_pool_matches_cpu(conv_modules):
    _check(_compare(conv_modules["tiny_gap"], CONV_CASES))


@pytest.mark.slow
def test_simulator_conv_flatten_matches_cpu(conv_modules):
    _check(_compare(conv_modules["tiny_flat"], CONV_CASES[:4]))


def test_generated_modules_have_both_targets():
    for path in DENSE + CONV:
        text = path.read_text()
        assert "TARGETS = ('cpu', 'cuda')" in text, path.name
        # numba.cuda is imported inside _cuda() only, never at module level
        assert "\nfrom numba import cuda" not in text and "\nimport numba.cuda" not in text


def test_cuda_import_is_lazy():
    code = textwrap.dedent('''
        import sys
        import numpy as np
        import ntkc
        model = ntkc.load(sys.argv[1])
        model.kernel(np.ones((3, *model.input_shape)))
        assert "numba.cuda" not in sys.modules, "numba.cuda imported by a CPU kernel call"
    ''')
    proc = _run(code, str(GENERATED / "erf_mlp.py"), simulator=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = "import sys, ntkc\nntkc.load(sys.argv[1])\nassert 'numba.cuda' not in sys.modules"
    for path in CONV:  # importing a conv module with a cuda target imports no numba.cuda
        proc = _run(code, str(path), simulator=False)
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_cpu_only_module_refuses_cuda(tmp_path):
    compiled = compile_file(ROOT / "examples" / "relu_mlp.ntk", target="cpu")
    assert "TARGETS = ('cpu',)" in compiled.source and "def _cuda(" not in compiled.source
    path = tmp_path / "relu_cpu_only.py"
    path.write_text(compiled.source)
    model = ntkc.load(path)
    assert model.targets == ("cpu",)
    x = np.ones((2, 64))
    with pytest.raises(ValueError, match=r"without the cuda target .*--target all"):
        model.kernel(x, device="cuda")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        model.kernel(x, device="gpu")


def test_cuda_only_module(tmp_path):
    compiled = compile_file(ROOT / "examples" / "erf_mlp.ntk", target="cuda")
    assert "def _pairs_both(" not in compiled.source  # no CPU pair kernels
    path = tmp_path / "erf_cuda_only.py"
    path.write_text(compiled.source)
    model = ntkc.load(path)
    assert model.targets == ("cuda",)
    x = np.linspace(-1, 1, 4)[:, None]
    with pytest.raises(ValueError, match=r"without the cpu target"):
        model.kernel(x, device="cpu")
    ref = ntkc.load(GENERATED / "erf_mlp.py").kernel(x, backend="numpy")
    mine = model.kernel(x, backend="numpy")  # the numpy reference is in every module
    np.testing.assert_allclose(mine.ntk, ref.ntk, rtol=1e-14)


def test_bad_target_refused():
    with pytest.raises(ValueError, match="target must be 'cpu', 'cuda' or 'all'"):
        compile_file(ROOT / "examples" / "erf_mlp.ntk", target="gpu")


def test_cli_target(tmp_path, capsys):
    from ntkc.cli import main

    spec = str(ROOT / "examples" / "erf_mlp.ntk")
    assert main(["compile", spec, "-o", str(tmp_path / "cpu"), "--target", "cpu"]) == 0
    assert "TARGETS = ('cpu',)" in (tmp_path / "cpu" / "erf_mlp.py").read_text()
    assert main(["compile", spec, "-o", str(tmp_path / "all")]) == 0  # the default: all
    assert "TARGETS = ('cpu', 'cuda')" in (tmp_path / "all" / "erf_mlp.py").read_text()


def test_conv_targets(tmp_path):
    spec = tmp_path / "cnn.ntk"
    spec.write_text("network tiny_cnn\ninput x : image[4, 4, 1]\n"
                    "g = conv(x, filter=[3, 3], padding=same)\nf = flatten(g)\n"
                    "y = dense(f)\noutput y\n")
    both = compile_file(spec).source  # the default: all
    assert "TARGETS = ('cpu', 'cuda')" in both and "def _pair_rows(" in both
    assert "def _cuda(" in both and "\nfrom numba import cuda" not in both
    cuda_only = compile_file(spec, target="cuda").source
    assert "def _pair_rows(" not in cuda_only and "def _point_rows(" in cuda_only
    path = tmp_path / "cnn_cuda_only.py"
    path.write_text(cuda_only)
    model = ntkc.load(path)
    assert model.targets == ("cuda",)
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 1))
    with pytest.raises(ValueError, match=r"without the cpu target"):
        model.kernel(x, device="cpu")
    ref = ntkc.load(spec).kernel(x, backend="numpy")
    np.testing.assert_array_equal(model.kernel(x, backend="numpy").ntk, ref.ntk)
    cpu_only = tmp_path / "cnn_cpu_only.py"
    cpu_only.write_text(compile_file(spec, target="cpu").source)
    with pytest.raises(ValueError, match=r"without the cuda target .*--target all"):
        ntkc.load(cpu_only).kernel(x, device="cuda")


@pytest.fixture(scope="module")
def gpu_present() -> bool:
    proc = _run("from numba import cuda; print(cuda.is_available())", simulator=False)
    return proc.stdout.strip().endswith("True")


def test_no_gpu_is_a_clear_error(gpu_present):
    if gpu_present:
        pytest.skip("a GPU is present")
    code = textwrap.dedent('''
        import sys
        import numpy as np
        import ntkc
        model = ntkc.load(sys.argv[1])
        try:
            model.kernel(np.ones((3, *model.input_shape)), device="cuda")
        except RuntimeError as e:
            print(e)
        else:
            raise SystemExit("no error without a GPU")
    ''')
    for path in (GENERATED / "erf_mlp.py", CONV[0]):  # dense and conv: the same error
        proc = _run(code, str(path), simulator=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert "no CUDA GPU is available" in proc.stdout or "cannot be imported" in proc.stdout
        assert 'use device="cpu"' in proc.stdout and "NUMBA_ENABLE_CUDASIM=1" in proc.stdout


def test_real_gpu_matches_cpu(gpu_present):
    if not gpu_present:
        pytest.skip("no CUDA GPU here (the simulator tests cover the kernels)")
    cases = [{"n1": 700, "n2": 500}, {"n1": 700}, {"n1": 700, "dtype": "float32"},
             {"n1": 300, "tile": [64, 48]}, {"n1": 300, "n2": 200, "get": "nngp"}]
    _check(_compare(GENERATED / "relu_mlp.py", cases, simulator=False))
    _check(_compare(GENERATED / "tanh_mlp.py", cases[:3], simulator=False))
    conv = [{"n1": 60, "n2": 40}, {"n1": 60}, {"n1": 60, "dtype": "float32"},
            {"n1": 50, "tile": [16, 24], "blocks": 200}]
    for path in CONV:
        _check(_compare(path, conv, simulator=False))


PTX = textwrap.dedent('''
    # Compile the kernels for sm_90 without a GPU (numba-cuda with NVVM): a check that
    # the simulator cannot make (it runs the Python source, never numba's CUDA typing).
    import sys, types
    from pathlib import Path
    try:
        from numba import cuda
        import numba.cuda.dispatcher as dispatcher
        if getattr(cuda, "implementation", "") != "NVIDIA" or cuda.is_available():
            raise ImportError
        dispatcher.get_current_device  # device functions ask it for the compute capability

        def probe(a):
            a[0] = 1.0

        cuda.compile_ptx(probe, "void(float64[:])", cc=(9, 0))  # NVVM is there
    except Exception:
        raise SystemExit(77)
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    cuda.is_available = lambda: True
    from ntkc.runtime.model import import_module_file
    for path in sys.argv[1:]:
        m = import_module_file(Path(path))
        m._cuda()
        for dt in ("float32", "float64"):
            arr = f"{dt}[:, ::1]"
            if hasattr(m, "_pairs_block_cuda"):  # conv: (n, P, C) inputs, scratch S
                x = "float64[:, :, ::1]"
                sig = (f"void({x}, {x}, float64[:, ::1], float64[:, ::1], float64[::1], "
                       f"{arr}, {arr}, {arr}, int64, int64, boolean)")
                cuda.compile_ptx(m._pairs_block_cuda.py_func, sig, cc=(9, 0))
                continue
            head = f"{arr}, {arr}, float64[:, ::1], float64[:, ::1], float64[::1]"
            for kern, outs in ((m._pairs_nngp_cuda, 1), (m._pairs_both_cuda, 2)):
                sig = f"void({head}, {', '.join([arr] * outs)}, int64, int64, boolean)"
                cuda.compile_ptx(kern.py_func, sig, cc=(9, 0))
    print("compiled")
''')


@pytest.mark.slow
def test_kernels_compile_to_ptx():
    proc = _run(PTX, *map(str, DENSE + CONV), simulator=False)
    if proc.returncode == 77:
        pytest.skip("numba-cuda with NVVM is not installed (pip install 'numba-cuda[cu12]')")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-5000:]
