"""Every spec is also a finite network (DESIGN §8): the generated JAX networks
(``ntkc compile --target jax``) converge to the generated analytic kernels.

For every example spec (examples/*.ntk) and every Neural Tangents reference case whose
ops ntkc has, S = 16 networks are drawn by the module's ``init`` at each of three widths
(32, 128, 512 hidden units; on images and sequences 8, 32, 128 channels: their layers cost
P·F times more) and their empirical kernels (the module's ``empirical_kernel``, jax
autodiff) compared with the analytic Gram matrices on 3 inputs (float64 throughout):

* NNGP: the output inner products over a readout of n units (the readout's units are
  independent draws of the same Gaussian process given the layers below, so one network's
  estimate fluctuates O(1/√n); with one unit it would fluctuate O(1) at any width);
* NTK: the Jacobian inner products of the readout's first unit (the same expectation: the
  units are exchangeable; every unit would cost one backward pass each).

(a) Rate: one network's error, the RMS over networks and Gram entries of
(kernel - analytic)/s_ij with s_ij = sqrt(analytic_ii · analytic_jj), is a fluctuation
O(1/√n) plus a bias O(1/n), so the least-squares slope of log error on log width should be
about -1/2: asked ≤ -0.3. Measured (S = 16, these seeds): -0.37 … -0.69 for every spec
but fc_polynomials (-1.2 NNGP, -1.4 NTK: a cubic of a cubic has heavy tails that dominate
at width 32, and they fall faster). A network that computes something else has an error that stops
falling at the mismatch: its slope goes to 0.

(b) Agreement at the largest width, per Gram entry: |mean - analytic| ≤ K·SE, with SE the
standard error of the mean over the networks. Its std is pooled over the three widths,
each scaled by √(n/n_max) (the fluctuation is O(1/√n)), so the SE has 45 degrees of
freedom instead of 15. K = 6: Student's t with 45 dof exceeds 6 with probability 3e-7
per entry, ~500 entries in all (measured: at most 3.2 SE). The O(1/n) bias is about half
an SE at n_max or less (a deep ReLU network's bias·n is ~1-3 in units of s_ij, the SE
~1.5% of s_ij), and a scale wrong by 10% in any layer moves a kernel by ≫ 6 SE.

Under the standard parameterization the NTK grows with the widths the spec declares
(n_in·K per dense), so fc_standard_param is compiled with every hidden width set to n.
One jit compile per spec and width (init, apply and its Jacobians, ~1-1.5 s each) is most
of the time: about 140 s for the file on 2 shared cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reference_cases import AWAITING_OPS, case_names, load_case, spec_text

import ntkc
from ntkc.codegen.jax_target import compile_finite
from ntkc.frontend import program_from_file
from ntkc.runtime.model import import_module_file
from ntkc.semantics.rules import RULES

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.ntk"))
CASES = [n for n in case_names("") if n not in AWAITING_OPS]
DENSE_WIDTHS, CONV_WIDTHS = (32, 128, 512), (8, 32, 128)
SAMPLES, K = 16, 6.0
SLOPE = -0.3
# sign's derivative is 0, so fc_gelu_sign's Θ(x, x) is w² + b² in every network: an SE of
# 0, and a mean equal to the analytic one up to rounding
ROUNDING = 1e-12


def _samples(module, x: np.ndarray, width: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(S, N, N) NNGPs of networks with `width` units on every line (the readout too) and
    NTKs of their readout's first unit, from one compiled program (lax.map over keys)."""
    assert module.OUTPUT in module.WIDTHS, "the readout must be a dense or conv line"
    widths = {line: width for line in module.WIDTHS}

    def one(key):
        draw, masks = jax.random.split(key)  # masks: dropout_fc's
        p = module.init(draw, widths, input_size=x.shape[-1])  # open_mlp's is the data's
        first = {**p, module.OUTPUT: {k: v[..., :1] for k, v in p[module.OUTPUT].items()}}
        return (module.empirical_kernel(p, x, get="nngp", key=masks),
                module.empirical_kernel(first, x, get="ntk", key=masks))

    keys = jax.random.split(jax.random.PRNGKey(seed), SAMPLES)
    return tuple(np.asarray(a) for a in jax.jit(lambda k: jax.lax.map(one, k))(keys))


def _spec(tmp_path: Path, name: str, width: int) -> Path:
    """The spec of an example or a reference case (standard: hidden widths set to width)."""
    if name in EXAMPLES:
        return ROOT / "examples" / f"{name}.ntk"
    case = load_case(name)
    if case["parameterization"] == "standard":
        case["layers"] = [[op, {**a, "width": width} if "width" in a and a["width"] != 1 else a]
                          for op, a in case["layers"]]
    path = tmp_path / f"{name}_{width}.ntk"  # width 1: only read, for its input shape
    path.write_text(spec_text(case))
    return path


def _module(tmp_path: Path, spec: Path):
    out = tmp_path / f"{spec.stem}_jax.py"
    out.write_text(compile_finite(spec.read_text(), str(spec)))
    return import_module_file(out)


def _convergence(tmp_path: Path, name: str) -> dict:
    """Per width: one network's RMS relative error; at the largest width, the largest
    |mean - analytic| in pooled standard errors."""
    spatial = program_from_file(_spec(tmp_path, name, 1)).input_shape.spatial
    widths = CONV_WIDTHS if spatial else DENSE_WIDTHS
    jobs, module = [], None
    for width in widths:
        spec = _spec(tmp_path, name, width)
        if module is None or spec.stem.endswith(f"_{width}"):  # recompiled per width
            module = _module(tmp_path, spec)
            shape = tuple(5 if s is None else s for s in module.INPUT_SHAPE)  # vector[*]: 5
            x = np.random.default_rng(1).standard_normal((3, *shape))
            analytic = ntkc.load(spec).kernel(x, backend="numpy")
        jobs.append((module, x, width, analytic))
    samples = [_samples(*job[:3]) for job in jobs]
    stats: dict = {"widths": list(widths), "err": {"nngp": [], "ntk": []}, "z": {}}
    rels: dict = {"nngp": [], "ntk": []}
    for (_, _, _, analytic), sample in zip(jobs, samples):
        for kind, s in zip(("nngp", "ntk"), sample):
            exact = getattr(analytic, kind)
            rel = (s - exact) / np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
            stats["err"][kind].append(float(np.sqrt(np.mean(rel**2))))
            rels[kind].append(rel)
    for kind, rows in rels.items():
        var = np.mean([r.var(axis=0, ddof=1) * w / widths[-1] for r, w in zip(rows, widths)],
                      axis=0)
        se = np.maximum(np.sqrt(var / SAMPLES), ROUNDING)
        stats["z"][kind] = float(np.max(np.abs(rows[-1].mean(axis=0)) / se))
    return stats


@pytest.mark.parametrize("name", EXAMPLES + CASES)
def test_monte_carlo_converges_to_the_analytic_kernel(tmp_path, name):
    stats = _convergence(tmp_path, name)
    logw = np.log(stats["widths"])
    for kind, err in stats["err"].items():
        slope = np.polyfit(logw, np.log(err), 1)[0]
        assert slope <= SLOPE, (
            f"{kind}: one network's error {np.round(err, 4)} at widths {stats['widths']}: "
            f"slope {slope:.2f}, not about -1/2")
        assert stats["z"][kind] <= K, (
            f"{kind}: the mean of {SAMPLES} networks of width {stats['widths'][-1]} is "
            f"{stats['z'][kind]:.1f} standard errors from the analytic kernel")


def test_every_op_has_a_finite_forward():
    missing = sorted(op for op, rule in RULES.items() if rule.finite is None)
    assert missing == [], f"ops without a finite forward (Rule.finite): {missing}"
