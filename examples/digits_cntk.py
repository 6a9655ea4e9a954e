"""Convolutional kernels against the fully connected NTK on scikit-learn's digits.

The same data, split, preprocessing, targets and diag_reg selection as
examples/digits_accuracy.py (its docstring says what they are); the images are
kept as 8x8x1 arrays for the convolutional networks:

* digits_cntk_gap.ntk:    3 x (conv 3x3 SAME + relu) + global average pooling + dense
* digits_cnn_flatten.ntk: the same convolutions read out by flatten
* digits_fc.ntk:          the fully connected network of digits_accuracy.py

Each Gram matrix (train x train for the largest training set, test x train) is
computed once per network; the nested training sets are its leading blocks.

    python examples/digits_cntk.py                   # table + examples/figures/digits_cntk.json
    python examples/digits_cntk.py --sizes 100 300   # a shorter run, prints only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import ntkc
from ntkc import predict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_accuracy import DIAG_REGS, FIGURES, load_data, targets

SPECS = ("digits_cntk_gap.ntk", "digits_cnn_flatten.ntk", "digits_fc.ntk")
SIZES = (100, 300, 1000)


def run(spec: str, sizes: list[int], x_pool, l_pool, x_test, l_test) -> dict:
    model = ntkc.load(HERE / spec)
    shape = (-1, *model.input_shape)
    xs, xt = x_pool[:max(sizes)].reshape(shape), x_test.reshape(shape)
    start = time.perf_counter()
    k_train = model.kernel(xs, progress=False)
    k_test = model.kernel(xt, xs, progress=False)
    seconds = time.perf_counter() - start
    rows = []
    for n in sizes:
        y = targets(l_pool[:n])
        row = {"n_train": n}
        for kernel in ("nngp", "ntk"):
            kk = getattr(k_train, kernel)[:n, :n]
            kt = getattr(k_test, kernel)[:, :n]
            reg = best_diag_reg(kk, y)
            if kernel == "nngp":  # the NNGP posterior mean
                mean = predict.gp_inference(kk, y, diag_reg=reg).predict(kt)
            else:  # the infinite-time ensemble trained by gradient descent: Θ regression
                ens = predict.gradient_descent_mse_ensemble({"ntk": kk}, y, diag_reg=reg)
                mean = ens.predict(None, {"ntk": kt}, get="ntk")
            pred = np.asarray(mean).argmax(axis=1)
            row[kernel] = {"accuracy": float(np.mean(pred == l_test)), "diag_reg": reg}
        rows.append(row)
        print(f"{spec}: n={n}: NNGP {row['nngp']['accuracy']:.4f} "
              f"NTK {row['ntk']['accuracy']:.4f}", flush=True)
    pairs = max(sizes) * (max(sizes) + 1) // 2 + max(sizes) * len(xt)
    return {"spec": spec, "kernel_seconds": seconds, "pairs": pairs, "rows": rows}


def best_diag_reg(k: np.ndarray, y: np.ndarray) -> float:
    """diag_reg from the grid by the negative log marginal likelihood (train data only)."""
    def nll(r: float) -> float:
        try:
            return predict.marginal_likelihood(k, y, r)
        except ValueError:  # not positive definite at this regulariser
            return float("inf")
    return min(DIAG_REGS, key=nll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="training-set sizes")
    p.add_argument("--specs", nargs="+", default=list(SPECS), help="specs in examples/")
    a = p.parse_args(argv)
    sizes = sorted(a.sizes or SIZES)
    x_pool, l_pool, x_test, l_test = load_data()
    results = [run(spec, sizes, x_pool, l_pool, x_test, l_test) for spec in a.specs]
    print()
    print("| network | " + " | ".join(f"{n}: NNGP / NTK" for n in sizes) + " | kernel time |")
    print("|---|" + "---:|" * (len(sizes) + 1))
    for r in results:
        cells = [f"{row['nngp']['accuracy']:.4f} / {row['ntk']['accuracy']:.4f}"
                 for row in r["rows"]]
        print(f"| {r['spec']} | " + " | ".join(cells) + f" | {r['kernel_seconds']:.1f} s |")
    if a.sizes is None and a.specs == list(SPECS):
        path = FIGURES / "digits_cntk.json"
        path.write_text(json.dumps({"n_test": len(x_test), "results": results}, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
