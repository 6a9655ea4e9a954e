"""A small run of examples/sine_ensemble.py: finite Erf networks trained by gradient
descent agree with ntkc's infinite-width ensemble prediction (mean and variance of the
outputs on a test grid, at every recorded time from initialisation to t = 20).

Size: 40 networks of width 512, 290 gradient-descent steps (100 of 0.01, then 0.1),
about 40 s of CPU (the spec's finite JAX networks, vmapped: one compiled training loop).

Tolerances, pointwise over the 50 test inputs x and all ~50 recorded times t. Two
independent sources of disagreement, added:

* Monte Carlo (ensemble size E = 40). At infinite width the outputs f(x, t) of the
  networks are Gaussian with the predicted mean m and variance v, so the ensemble mean
  has standard error sqrt(v / E) and the (ddof=1) ensemble variance has standard error
  v * sqrt(2 / (E - 1)). We allow 4 standard errors: the tests compare ~2500 correlated
  points (about 50 x-positions resolved by the kernel's length scale times ~10 distinct
  time scales, so O(100) effectively independent ones); 4 sigma keeps the chance of a
  false alarm among them below 1 %, and the seeds are fixed anyway.
* Finite width (n = 512). A network of width n deviates from its infinite-width limit
  by O(1/sqrt(n)): its NTK fluctuates around Θ and moves during training by O(1/sqrt(n))
  (Lee et al. 2019), which changes the trained function by O(1/sqrt(n)) times the scale
  of the targets (|y| <= 1.2 here); the output variance changes by O(1/sqrt(n)) times the
  prior variance v0 = max_x K(x, x) (~1.3). We allow C / sqrt(n) with C = 1 in those
  units: 1 / sqrt(512) = 0.044 in the mean, 1.3 / sqrt(512) = 0.058 in the variance.
  (Measured with 64 networks at widths 128 / 256 / 512, the excess of |mean error| over
  3 standard errors was 0.016 / 0.011 / 0.002, i.e. about 0.2 / sqrt(n), and the excess
  in the variance at most 0.004: C = 1 leaves a margin of ~5.)

The test also shows it can fail: the same ensemble compared with the theory of a
mis-specified network (W_std 1.3 instead of 1.5) violates these tolerances.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sine_ensemble.py"

NETWORKS, WIDTH, T_MAX = 40, 512, 20.0
K_SE = 4.0  # Monte Carlo standard errors allowed
C_WIDTH = 1.0  # finite-width constant, in units of the target / prior-variance scale


def load_example():
    name = "ntkc_example_sine_ensemble"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def result(example):
    cfg = example.Config(networks=NETWORKS, width=WIDTH, t_max=T_MAX)
    return cfg, example.run(cfg, progress=False)


def violations(res: dict, mean_th: np.ndarray, var_th: np.ndarray, width: int) -> tuple:
    """Worst ratio |ensemble - theory| / tolerance, for the mean and for the variance."""
    e = res["config"]["networks"]
    ens = res["ensemble"]
    y_scale = float(np.abs(res["data"]["y_train"]).max())
    v0 = float(var_th[0].max())  # t = 0: the NNGP prior variance
    tol_mean = K_SE * np.sqrt(var_th / e) + C_WIDTH * y_scale / np.sqrt(width)
    tol_var = K_SE * np.sqrt(2.0 / (e - 1)) * var_th + C_WIDTH * v0 / np.sqrt(width)
    r_mean = np.abs(ens["mean_test"] - mean_th) / tol_mean
    r_var = np.abs(ens["var_test"] - var_th) / tol_var
    return float(r_mean.max()), float(r_var.max())


def test_ensemble_matches_infinite_width_prediction(result):
    cfg, res = result
    assert res["times"][0] == 0.0
    assert res["times"][-1] == pytest.approx(T_MAX)
    assert res["ensemble"]["mean_test"].shape == (len(res["times"]), cfg.n_test)
    th = res["theory"]
    r_mean, r_var = violations(res, th["mean_test"], th["var_test"], WIDTH)
    assert r_mean <= 1.0, f"ensemble mean off by {r_mean:.2f} x tolerance"
    assert r_var <= 1.0, f"ensemble variance off by {r_var:.2f} x tolerance"
    # Training happened: the networks fit the training targets well by t = 20.
    assert res["ensemble"]["loss_train"][-1] < 0.05 * res["ensemble"]["loss_train"][0]


def test_mis_specified_theory_is_detected(example, result):
    cfg, res = result
    wrong = example.theory(cfg, res["times"], params={"w": 1.3})
    m, c = wrong["test"]
    r_mean, r_var = violations(res, m, np.diagonal(c, axis1=-2, axis2=-1), WIDTH)
    assert max(r_mean, r_var) > 1.0


def test_step_schedule_and_records(example):
    cfg = example.Config(t_max=100.0)
    lrs = cfg.step_sizes()
    assert lrs[:100].tolist() == [0.01] * 100 and (lrs[100:] == 0.1).all()
    assert cfg.step_times()[-1] == pytest.approx(100.0)
    t = cfg.step_times()[example.record_steps(cfg)]
    assert t[0] == 0.0 and (np.diff(t) > 0).all()
    for c in (0.1, 1.0, 10.0, 100.0):
        assert np.min(np.abs(t - c)) < 1e-9
    flat = example.Config(t_max=10.0, warmup_time=0.0).step_sizes()
    assert len(flat) == 100 and (flat == 0.1).all()
