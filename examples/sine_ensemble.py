"""Finite-network ensemble vs ntkc's infinite-width prediction: the sine regression of
the Neural Tangents paper (Novak et al. 2020, section 2.1, and its "cookbook").

Setup (the paper's): 5 training inputs uniform in [-pi, pi], targets sin(x) + N(0, 0.1^2);
test grid of 50 points on [-pi, pi] with noise-free targets sin(x). Network: two hidden
Erf layers, W_std = 1.5, b_std = 0.05, NTK parameterization. Loss
0.5 * mean_i (f(x_i) - y_i)^2 (Neural Tangents' convention, ``||f - y||^2 / (2 y.size)``),
full-batch gradient descent with learning rate 0.1 up to the continuous time
t = sum of learning rates = 1000 (the paper's 10^4 steps).

The infinite-width theory is ``ntkc.predict.gradient_descent_mse_ensemble`` with the
kernels of the same network compiled by ntkc, ``learning_rate=1`` and t in those
continuous-time units: gradient descent with step ``lr`` is the Euler discretisation of
``df/dt = -(1 / y.size) Θ (f - y)`` with step ``lr``, so after steps lr_1..lr_k it is at
t = lr_1 + ... + lr_k. One deviation from the paper: the first unit of time is run with
steps of 0.01. With 5 points the largest NTK eigenvalue over y.size is about 7, so one
step of 0.1 multiplies that mode's residual by 1 - 0.7 = 0.3 where gradient flow gives
exp(-0.7) = 0.5; the small warm-up steps make the early times (t < 1) comparable with
the flow, and cost 100 extra steps. ``--warmup-time 0`` gives the paper's constant rate.

The finite networks are the same spec compiled as a finite JAX network (``ntkc compile
--target jax``, ``Model.finite()``: its ``init`` and ``apply``), trained independently by
gradient descent in jax (jax.grad of the loss, in float64); their outputs at the test grid
and the training inputs are recorded at log-spaced times. Outputs: PNGs and a JSON under
examples/figures/. Needs jax (``pip install -e ".[finite,examples]"``).

    python examples/sine_ensemble.py                 # 50 networks, width 512 (minutes)
    python examples/sine_ensemble.py --quick         # 20 networks, width 256, t <= 100
    python examples/sine_ensemble.py --networks 50 --width 1024
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import ntkc
from ntkc.predict import gradient_descent_mse_ensemble

# The network, as an ntkc spec. Kept here (rather than loading examples/erf_mlp.ntk) so
# that the finite networks and the kernels, both compiled from it, describe the same
# architecture even if the shipped example changes.
SPEC = """\
network sine_erf_mlp
parameterization ntk
param w = 1.5
param b = 0.05
input x : vector[1]
g1 = dense(x, w_std=w, b_std=b)
h1 = erf(g1)
g2 = dense(h1, w_std=w, b_std=b)
h2 = erf(g2)
y  = dense(h2, w_std=w, b_std=b)
output y
"""
W_STD, B_STD = 1.5, 0.05
FIGURES = Path(__file__).resolve().parent / "figures"


@dataclass(frozen=True)
class Config:
    networks: int = 50
    width: int = 512
    n_train: int = 5
    n_test: int = 50
    noise: float = 0.1
    lr: float = 0.1
    t_max: float = 1000.0
    warmup_lr: float = 0.01  # step size for t < warmup_time (see the module docstring)
    warmup_time: float = 1.0
    n_records: int = 60  # log-spaced record times (plus t = 0)
    seed: int = 0  # data; network e uses seed (seed, 1, e)
    chunk: int = 50  # networks trained together (one vmapped jax program)

    def step_sizes(self) -> np.ndarray:
        """Learning rate of every gradient-descent step; their cumulative sum is the time."""
        t_w = min(self.warmup_time, self.t_max)
        n_w = round(t_w / self.warmup_lr) if t_w > 0 else 0
        n_main = max(0, round((self.t_max - n_w * self.warmup_lr) / self.lr))
        return np.concatenate([np.full(n_w, self.warmup_lr), np.full(n_main, self.lr)])

    def step_times(self) -> np.ndarray:
        """Time after 0, 1, ..., S steps (length S + 1)."""
        return np.concatenate([[0.0], np.cumsum(self.step_sizes())])


def make_data(cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The paper's data: train x ~ U[-pi, pi] with noisy sin targets, a clean test grid."""
    rng = np.random.default_rng(cfg.seed)
    x_train = rng.uniform(-np.pi, np.pi, size=(cfg.n_train, 1))
    y_train = np.sin(x_train[:, 0]) + cfg.noise * rng.standard_normal(cfg.n_train)
    x_test = np.linspace(-np.pi, np.pi, cfg.n_test)[:, None]
    return x_train, y_train, x_test, np.sin(x_test[:, 0])


#: Times always recorded (when reached): the panels of the band figure and the table.
CHECKPOINTS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def record_steps(cfg: Config) -> np.ndarray:
    """Step 0, the steps nearest ``n_records`` log-spaced times and the CHECKPOINTS."""
    t = cfg.step_times()
    if len(t) == 1:
        return np.array([0])
    targets = np.geomspace(t[1], t[-1], cfg.n_records)
    targets = np.concatenate([targets, [c for c in CHECKPOINTS if c <= t[-1] * (1 + 1e-9)]])
    idx = np.clip(np.searchsorted(t, targets), 1, len(t) - 1)
    nearer_left = np.abs(t[idx - 1] - targets) < np.abs(t[idx] - targets)
    idx = np.where(nearer_left & (idx > 1), idx - 1, idx)
    return np.unique(np.concatenate([[0], idx, [len(t) - 1]]))


# ---------------------------------------------------------------- finite networks


def train_chunk(cfg: Config, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Train networks seeds (network e: key fold_in(fold_in(PRNGKey(seed), 1), e)) of the
    spec's finite network, vmapped; outputs at the record steps on (test grid, train
    inputs): arrays (R, B, n_test) and (R, B, n_train).

    Each network is ``module.init(key, width)`` (NTK parameterization: W, β ~ N(0, 1),
    applied as W_std/sqrt(fan_in)·h W + b_std·β; one readout unit) trained on its own by
    full-batch gradient descent on 0.5 * mean((f - y)^2): θ ← θ - lr·∇θ."""
    import jax

    jax.config.update("jax_enable_x64", True)  # as the numpy networks this replaced
    module = load_model().finite()
    x_train, y_train, x_test, _ = make_data(cfg)
    root = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)
    keys = jax.numpy.stack([jax.random.fold_in(root, e) for e in seeds])
    params = jax.vmap(lambda k: module.init(k, cfg.width))(keys)

    def loss(p):
        return 0.5 * jax.numpy.mean((module.apply(p, x_train)[:, 0] - y_train) ** 2)

    def step(p, lr):
        return jax.tree_util.tree_map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))

    lrs = jax.numpy.asarray(cfg.step_sizes())

    @jax.jit
    def advance(p, start, stop):  # steps start..stop-1 of every network: one program
        return jax.lax.fori_loop(start, stop, lambda k, q: jax.vmap(step, (0, None))(
            q, lrs[k]), p)

    @jax.jit
    def outputs(p):
        out = jax.vmap(lambda q: (module.apply(q, x_test)[:, 0],
                                  module.apply(q, x_train)[:, 0]))(p)
        return out

    out_test, out_train, done = [], [], 0
    for k in record_steps(cfg):
        params = advance(params, done, int(k))
        done = int(k)
        f_test, f_train = outputs(params)
        out_test.append(np.asarray(f_test))
        out_train.append(np.asarray(f_train))
    return np.array(out_test), np.array(out_train)


def train_ensemble(cfg: Config, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All networks, in chunks of cfg.chunk. Shapes (R, E, n_test), (R, E, n_train)."""
    seeds = list(range(cfg.networks))
    chunks = [seeds[i : i + cfg.chunk] for i in range(0, len(seeds), cfg.chunk)]
    start = time.perf_counter()
    results = []
    for i, ch in enumerate(chunks):
        results.append(train_chunk(cfg, ch))
        _report(progress, i + 1, len(chunks), start)
    if progress:
        print(file=sys.stderr)
    return (
        np.concatenate([r[0] for r in results], axis=1),
        np.concatenate([r[1] for r in results], axis=1),
    )


def _report(show: bool, done: int, total: int, start: float) -> None:
    if show:
        el = time.perf_counter() - start
        print(
            f"\rtrained {done}/{total} chunks, {el:.0f} s, ~{el * (total / done - 1):.0f} s left",
            end="", file=sys.stderr, flush=True,
        )


# ---------------------------------------------------------------- theory


@functools.cache  # parsing + deriving the spec takes seconds; do it once per process
def load_model() -> ntkc.Model:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sine_erf_mlp.ntk"
        path.write_text(SPEC)
        return ntkc.load(path)


def theory(
    cfg: Config,
    times: np.ndarray,
    model: ntkc.Model | None = None,
    params: dict[str, float] | None = None,
) -> dict:
    """Infinite-width ensemble (get='ntk'): means and covariances at ``times``.

    On the test grid and on the training inputs (as "test" points, which gives the
    ensemble's spread there too). ``params`` overrides the network's (w, b) — only to
    check that a mis-specified theory is detected (tests/test_sine_ensemble.py).
    """
    model = model or load_model()
    x_train, y_train, x_test, _ = make_data(cfg)
    params = {"w": W_STD, "b": B_STD, **(params or {})}
    k_tr = model.kernel(x_train, params=params)
    # diag_reg = 0: the finite networks are not regularised either, and finite times
    # go through the eigenbasis, which needs no regulariser.
    ens = gradient_descent_mse_ensemble(
        {"nngp": k_tr.nngp, "ntk": k_tr.ntk}, y_train, learning_rate=1.0
    )
    out = {}
    for name, xs in (("test", x_test), ("train", x_train)):
        k_st = model.kernel(xs, x_train, params=params)
        k_ss = model.kernel(xs, get="nngp", params=params)
        g = ens.predict(
            times, {"nngp": k_st.nngp, "ntk": k_st.ntk}, {"nngp": k_ss}, get="ntk",
            compute_cov=True,
        )
        out[name] = (g.mean, g.covariance)
    out["ntk_eigenvalues"] = np.linalg.eigvalsh(k_tr.ntk)
    return out


def expected_loss(mean: np.ndarray, var: np.ndarray, y: np.ndarray) -> np.ndarray:
    """E[0.5 * mean_i (f_i - y_i)^2] for f ~ N(mean, diag var), over the last axis."""
    return 0.5 * np.mean((mean - y) ** 2 + var, axis=-1)


# ---------------------------------------------------------------- experiment


def run(cfg: Config, progress: bool = True) -> dict:
    """Train the ensemble, compute the theory, and compare; returns plain-data results."""
    x_train, y_train, x_test, y_test = make_data(cfg)
    steps = record_steps(cfg)
    times = cfg.step_times()[steps]
    t0 = time.perf_counter()
    f_test, f_train = train_ensemble(cfg, progress)  # (R, E, P)
    t_train = time.perf_counter() - t0
    th = theory(cfg, times)
    m_test, c_test = th["test"]
    m_train, c_train = th["train"]
    v_test = np.diagonal(c_test, axis1=-2, axis2=-1)
    v_train = np.diagonal(c_train, axis1=-2, axis2=-1)
    e = cfg.networks
    ens = {
        "mean_test": f_test.mean(axis=1),
        "var_test": f_test.var(axis=1, ddof=1),
        "mean_train": f_train.mean(axis=1),
        "var_train": f_train.var(axis=1, ddof=1),
        # Per-network losses averaged over the ensemble, with their standard error.
        "loss_train": (0.5 * np.mean((f_train - y_train) ** 2, axis=-1)).mean(axis=1),
        "loss_test": (0.5 * np.mean((f_test - y_test) ** 2, axis=-1)).mean(axis=1),
        "loss_train_se": (0.5 * np.mean((f_train - y_train) ** 2, axis=-1)).std(axis=1, ddof=1)
        / np.sqrt(e),
        "loss_test_se": (0.5 * np.mean((f_test - y_test) ** 2, axis=-1)).std(axis=1, ddof=1)
        / np.sqrt(e),
    }
    thy = {
        "mean_test": m_test,
        "var_test": v_test,
        "mean_train": m_train,
        "var_train": v_train,
        "loss_train": expected_loss(m_train, v_train, y_train),
        "loss_test": expected_loss(m_test, v_test, y_test),
    }
    # Discrepancies in units the test (tests/test_sine_ensemble.py) reasons with:
    # mean error over the Monte Carlo standard error sigma/sqrt(E), variance ratio.
    sd = np.sqrt(np.maximum(v_test, 1e-300))
    stats = {
        "max_abs_mean_diff": np.abs(ens["mean_test"] - m_test).max(axis=-1),
        "rms_mean_diff_over_se": np.sqrt(
            np.mean(((ens["mean_test"] - m_test) / (sd / np.sqrt(e))) ** 2, axis=-1)
        ),
        "var_ratio_median": np.median(ens["var_test"] / np.maximum(v_test, 1e-300), axis=-1),
        "max_abs_var_diff": np.abs(ens["var_test"] - v_test).max(axis=-1),
        "prior_var_max": float(v_test[0].max()),
    }
    return {
        "config": asdict(cfg),
        "seconds_training": t_train,
        "data": {
            "x_train": x_train[:, 0], "y_train": y_train, "x_test": x_test[:, 0],
            "y_test": y_test,
        },
        "steps": steps,
        "times": times,
        "ntk_eigenvalues": th["ntk_eigenvalues"],
        "ensemble": ens,
        "theory": thy,
        "stats": stats,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def plot(res: dict, out_dir: Path, stem: str, band_times: list[float]) -> list[Path]:
    """Loss curves and mean +- 2 sigma bands; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, t = res["config"], np.asarray(res["times"])
    # Arrays or (from a saved JSON, see --replot) nested lists.
    ens, thy, data = ({k: np.asarray(v) for k, v in res[g].items()}
                      for g in ("ensemble", "theory", "data"))
    label = f"{cfg['networks']} networks, width {cfg['width']}"
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    pos = t > 0  # log axis
    for key, colour, name in (("loss_train", "C0", "train"), ("loss_test", "C3", "test")):
        ax.loglog(t[pos], thy[key][pos], color=colour, lw=2, label=f"{name}: infinite width (ntkc)")
        m, se = ens[key][pos], ens[f"{key}_se"][pos]
        ax.loglog(t[pos], m, "o", ms=3, color=colour, label=f"{name}: ensemble ({label})")
        ax.fill_between(t[pos], np.maximum(m - 2 * se, 1e-12), m + 2 * se, color=colour, alpha=0.2)
    ax.set_xlabel("t = sum of learning rates over steps")
    ax.set_ylabel("loss  0.5 mean (f - y)^2")
    ax.set_title("Erf network on sin(x): loss vs training time (bands: 2 SE)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}_loss.png")
    fig.savefig(paths[-1], dpi=130)
    plt.close(fig)

    idx = [int(np.argmin(np.abs(t - bt))) for bt in band_times]
    fig, axes = plt.subplots(1, len(idx), figsize=(4.2 * len(idx), 3.8), sharey=True)
    xs = np.asarray(data["x_test"])
    for ax, i in zip(np.atleast_1d(axes), idx):
        mt, st = thy["mean_test"][i], np.sqrt(thy["var_test"][i])
        me, se = ens["mean_test"][i], np.sqrt(ens["var_test"][i])
        ax.fill_between(xs, mt - 2 * st, mt + 2 * st, color="C0", alpha=0.25,
                        label="infinite width: mean +- 2 sd")
        ax.plot(xs, mt, color="C0", lw=2)
        ax.plot(xs, me, "--", color="C3", label="ensemble mean")
        ax.plot(xs, me - 2 * se, ":", color="C3", label="ensemble +- 2 sd")
        ax.plot(xs, me + 2 * se, ":", color="C3")
        ax.plot(xs, data["y_test"], color="k", lw=0.8, alpha=0.6, label="sin(x)")
        ax.plot(data["x_train"], data["y_train"], "ko", ms=5, label="train")
        ax.set_title(f"t = {t[i]:g}")
        ax.set_xlabel("x")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(f"Erf network, NTK parameterization: {label} vs ntkc", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    paths.append(out_dir / f"{stem}_bands.png")
    fig.savefig(paths[-1], dpi=130)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", type=int, default=Config.networks, help="ensemble size")
    p.add_argument("--width", type=int, default=Config.width, help="hidden width")
    p.add_argument("--t-max", type=float, default=Config.t_max,
                   help="training time (= learning rate x steps)")
    p.add_argument("--lr", type=float, default=Config.lr, help="learning rate")
    p.add_argument("--warmup-time", type=float, default=Config.warmup_time,
                   help="time run with steps of 0.01 first (0: constant learning rate)")
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--quick", action="store_true",
                   help="20 networks of width 256, t <= 100: well under a minute")
    p.add_argument("--out", type=Path, default=FIGURES, help="output directory")
    p.add_argument("--replot", type=Path, metavar="JSON",
                   help="redraw the figures from a saved JSON (no training)")
    a = p.parse_args(argv)
    if a.replot:
        res = json.loads(a.replot.read_text())
        stem = a.replot.stem
    else:
        res, stem = _train_and_save(a)
    t = np.asarray(res["times"])
    band_times = [bt for bt in CHECKPOINTS[1:] if bt <= t[-1] * (1 + 1e-9)]
    a.out.mkdir(parents=True, exist_ok=True)
    paths = plot(res, a.out, stem, band_times)
    print("wrote " + ", ".join(str(q) for q in paths))
    _print_table(res, band_times)
    return 0


def _train_and_save(a: argparse.Namespace) -> tuple[dict, str]:
    if a.quick:
        cfg = Config(networks=20, width=256, t_max=100.0, lr=a.lr, seed=a.seed,
                     warmup_time=a.warmup_time)
    else:
        cfg = Config(networks=a.networks, width=a.width, t_max=a.t_max, lr=a.lr, seed=a.seed,
                     warmup_time=a.warmup_time)
    stem = "sine_ensemble_quick" if a.quick else "sine_ensemble"
    res = run(cfg)
    a.out.mkdir(parents=True, exist_ok=True)  # before plotting: fail early, not after training
    js = a.out / f"{stem}.json"
    js.write_text(json.dumps(_jsonable(res), indent=1))
    print(f"training: {res['seconds_training']:.1f} s; wrote {js}")
    return res, stem


def _print_table(res: dict, band_times: list[float]) -> None:
    t, s = np.asarray(res["times"]), res["stats"]
    print("\n| t | train loss ens | theory | test loss ens | theory "
          "| max abs mean diff | rms diff / SE | median var ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for i in [int(np.argmin(np.abs(t - bt))) for bt in [0.0, CHECKPOINTS[0], *band_times]]:
        print(f"| {t[i]:g} | {res['ensemble']['loss_train'][i]:.4g} "
              f"| {res['theory']['loss_train'][i]:.4g} | {res['ensemble']['loss_test'][i]:.4g} "
              f"| {res['theory']['loss_test'][i]:.4g} | {s['max_abs_mean_diff'][i]:.3g} "
              f"| {s['rms_mean_diff_over_se'][i]:.2f} | {s['var_ratio_median'][i]:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
