"""Classification accuracy of an infinitely wide ReLU network on scikit-learn's digits.

Data: ``sklearn.datasets.load_digits`` (1797 8x8 grey images, 10 classes; shipped with
scikit-learn, nothing is downloaded). A fixed random split (seed 0) holds out 497 test
images; training sets are the first 100, 300, 1000 and all 1300 of the remaining images
(nested, so larger sets extend smaller ones).

Inputs: each image flattened to 64 values and standardised *per image* (zero mean, unit
variance over its 64 pixels, i.e. norm sqrt(64)). ntkc's input kernel is x.x'/d, so every
image then has input variance exactly 1 and the kernels depend only on the angle between
images; and, unlike per-feature standardisation, no statistics are estimated from the
training set, so every training-set size sees identically prepared inputs.

Targets: one-hot minus 0.1 (zero mean over the 10 classes, so the zero-mean prior of the
network is not biased towards "no class"). Prediction: argmax of the mean output.

Models: the network of examples/digits_fc.ntk (3 hidden ReLU layers, NTK
parameterization). "NNGP" is the posterior mean of the Bayesian network; "NTK" is the
infinite-time ensemble of networks trained by gradient descent on MSE (kernel regression
with Θ). For each size and kernel, ``diag_reg`` (relative to the mean diagonal) is chosen
from a small grid by the negative log marginal likelihood of the training targets
(``ntkc.predict.fit.select_diag_reg``); the test set plays no part in that choice.

    python examples/digits_accuracy.py            # table + examples/figures/digits_accuracy.*
    python examples/digits_accuracy.py --quick    # train 300, test 200; prints only
    python examples/digits_accuracy.py --quick --optimize   # + w, b, diag_reg fitted

``--optimize`` adds a third NNGP predictor whose params w, b and diag_reg maximise the
marginal likelihood (``fit(..., optimize=("w", "b", "diag_reg"))``: L-BFGS-B on the exact
gradients of the kernel, from the spec's defaults and the grid's diag_reg).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import ntkc
from ntkc.predict.fit import fit, select_diag_reg

HERE = Path(__file__).resolve().parent
SPEC = HERE / "digits_fc.ntk"
FIGURES = HERE / "figures"
N_TEST = 497
SIZES = (100, 300, 1000, 1300)
DIAG_REGS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
TARGET_OFFSET = 0.1  # one-hot minus 0.1


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_pool, labels_pool, x_test, labels_test): per-image standardised, fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True)  # no digit image is constant, so std > 0
    perm = np.random.default_rng(seed).permutation(len(x))
    test, pool = perm[:N_TEST], perm[N_TEST:]
    return x[pool], d.target[pool], x[test], d.target[test]


def targets(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    return np.eye(classes)[labels] - TARGET_OFFSET


def evaluate(
    model: ntkc.Model,
    x: np.ndarray,
    labels: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    diag_regs: tuple[float, ...] = DIAG_REGS,
    optimize: bool = False,
) -> dict:
    """Accuracy of NNGP and NTK predictors with marginal-likelihood-chosen diag_reg."""
    y = targets(labels)
    row: dict = {"n_train": len(x), "n_test": len(x_test)}
    for kernel in ("nngp", "ntk"):
        start = time.perf_counter()
        sel = select_diag_reg(model, x, y, kernel=kernel, candidates=diag_regs)
        fm = fit(model, x, y, kernel=kernel, diag_reg=sel.diag_reg)
        pred = fm.predict(x_test).argmax(axis=1)
        row[kernel] = {
            "accuracy": float(np.mean(pred == labels_test)),
            "diag_reg": sel.diag_reg,
            "nll": sel.nll,
            "nll_by_diag_reg": {f"{c:g}": sel.table[kernel, c] for c in diag_regs},
            "seconds": time.perf_counter() - start,
        }
    if optimize:  # from the defaults and the grid's choice, w, b, diag_reg by likelihood
        start = time.perf_counter()
        fm = fit(model, x, y, kernel="nngp", diag_reg=row["nngp"]["diag_reg"],
                 optimize=("w", "b", "diag_reg"))
        opt = fm.optimized
        row["nngp_optimized"] = {
            "accuracy": float(np.mean(fm.predict(x_test).argmax(axis=1) == labels_test)),
            "params": opt.params, "diag_reg": opt.diag_reg, "nll": opt.nll,
            "nll_start": opt.nll_start, "seconds": time.perf_counter() - start,
        }
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| train size | NNGP accuracy | NNGP diag_reg | NTK accuracy | NTK diag_reg |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_train']} | {r['nngp']['accuracy']:.4f} | {r['nngp']['diag_reg']:g} "
            f"| {r['ntk']['accuracy']:.4f} | {r['ntk']['diag_reg']:g} |"
        )
    opt = [r for r in rows if "nngp_optimized" in r]
    if opt:
        lines += ["", ("| train size | NNGP, w, b, diag_reg fitted | w | b | diag_reg "
                  "| −log ML: defaults + grid → fitted |"), "|---:|---:|---:|---:|---:|---:|"]
        for r in opt:
            o = r["nngp_optimized"]
            lines.append(f"| {r['n_train']} | {o['accuracy']:.4f} | {o['params']['w']:.3f} "
                         f"| {o['params']['b']:.3g} | {o['diag_reg']:.3g} "
                         f"| {o['nll_start']:.1f} → {o['nll']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n_train"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for kernel, marker in (("nngp", "o"), ("ntk", "s")):
        acc = [r[kernel]["accuracy"] for r in rows]
        regs = sorted({r[kernel]["diag_reg"] for r in rows})
        ax.semilogx(n, acc, marker=marker,
                    label=f"{kernel.upper()} (diag_reg {', '.join(f'{g:g}' for g in regs)})")
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("training-set size")
    ax.set_ylabel(f"test accuracy ({rows[0]['n_test']} held-out images)")
    ax.set_title("digits: infinitely wide 3-hidden-layer ReLU network\n"
                 "(diag_reg chosen by marginal likelihood)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="one training set of 300 and 200 test images; prints, writes nothing "
                        "unless --out is given")
    p.add_argument("--optimize", action="store_true",
                   help="also fit w, b and diag_reg by marginal likelihood (NNGP)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="training-set sizes")
    p.add_argument("--out", type=Path, default=None,
                   help=f"directory for the JSON and PNG (default {FIGURES}; none in --quick)")
    a = p.parse_args(argv)

    x_pool, l_pool, x_test, l_test = load_data()
    if a.quick:
        sizes, x_test, l_test = [300], x_test[:200], l_test[:200]
    else:
        sizes = a.sizes or list(SIZES)
    if max(sizes) > len(x_pool):
        p.error(f"training-set sizes are at most {len(x_pool)}")
    out = a.out if (a.out is not None or a.quick) else FIGURES

    start = time.perf_counter()
    model = ntkc.load(SPEC)
    print(f"compiled {SPEC.name} in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for n in sizes:
        rows.append(evaluate(model, x_pool[:n], l_pool[:n], x_test, l_test,
                             optimize=a.optimize))
        r = rows[-1]
        print(f"n={n}: NNGP {r['nngp']['accuracy']:.4f}, NTK {r['ntk']['accuracy']:.4f} "
              f"({r['nngp']['seconds'] + r['ntk']['seconds']:.1f} s)", flush=True)
    print()
    print(markdown(rows))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = "digits_accuracy_quick" if a.quick else "digits_accuracy"
        result = {
            "spec": SPEC.name,
            "params": model.params,
            "preprocessing": "per-image standardisation (zero mean, unit variance)",
            "targets": f"one-hot minus {TARGET_OFFSET}",
            "diag_reg_grid": list(DIAG_REGS),
            "diag_reg_relative": True,
            "split_seed": 0,
            "rows": rows,
        }
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        plot(rows, out / f"{stem}.png")
        print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
