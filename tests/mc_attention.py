"""A finite self-attention network in plain numpy, for the Monte Carlo check of ntkc's
attention rule (tests/test_attention.py). Nothing here comes from ntkc.

The network, on inputs x of shape (L, C), Neural Tangents' conventions (NTK
parameterization: every weight N(0, 1), scaled in the forward pass):

    u = x·W1·w1/√C + b1·β1                   (a conv with a 1-wide filter)
    h = relu(u)                              (L, n)
    per head m < H:  k_m = h·Wk_m (L, n);  G_m = softmax_rows(wk²·k_m·k_mᵀ/(n·n))
                     (GlobalSelfAttention with linear scaling: queries are the keys)
                     v_m = h·Wv_m;  heads_m = G_m·v_m
    a = [heads_0 … heads_H-1]·Wo·wo·wv/√(n·H·n) + bo·βo        (L, n)
    z = mean over positions of a                                (a global average pool)
    f = z·r·wr/√n + br·βr                                       (the readout, one output)

``features`` gives z (the readout's Gaussian weights integrated out, K = wr²·z·z'/n + βr²)
and ``gradients`` every ∂f/∂θ by hand-written backprop, whose dot products over θ are the
empirical NTK. ``_check_gradients`` (run by the test) compares them with central
differences, so a wrong backprop cannot pass silently.
"""

from __future__ import annotations

import numpy as np

STDS = {"w1": 1.3, "b1": 0.2, "wk": 0.9, "wv": 1.1, "wo": 0.8, "bo": 0.3, "wr": 1.0,
        "br": 0.1}


def draw(rng: np.random.Generator, c: int, n: int, heads: int) -> dict[str, np.ndarray]:
    return {"W1": rng.standard_normal((c, n)), "b1": rng.standard_normal(n),
            "Wk": rng.standard_normal((heads, n, n)), "Wv": rng.standard_normal((heads, n, n)),
            "Wo": rng.standard_normal((heads * n, n)), "bo": rng.standard_normal(n),
            "r": rng.standard_normal(n), "br": rng.standard_normal(())}


def _forward(x: np.ndarray, th: dict) -> dict:
    s = STDS
    c, n = th["W1"].shape
    heads = th["Wk"].shape[0]
    u = x @ th["W1"] * s["w1"] / np.sqrt(c) + th["b1"] * s["b1"]
    h = np.maximum(u, 0.0)
    k = np.einsum("la,mab->mlb", h, th["Wk"])
    z = s["wk"] ** 2 * np.einsum("mib,mjb->mij", k, k) / (n * n)
    e = np.exp(z - z.max(-1, keepdims=True))
    g = e / e.sum(-1, keepdims=True)
    v = np.einsum("la,mab->mlb", h, th["Wv"])
    hd = np.einsum("mij,mjb->mib", g, v)
    cat = np.concatenate(list(hd), axis=-1)  # (L, H·n), head by head as NT
    so = s["wo"] * s["wv"] / np.sqrt(n * heads * n)
    a = cat @ th["Wo"] * so + th["bo"] * s["bo"]
    zp = a.mean(0)
    f = zp @ th["r"] * s["wr"] / np.sqrt(n) + th["br"] * s["br"]
    return {"u": u, "h": h, "k": k, "g": g, "v": v, "cat": cat, "so": so, "z": zp, "f": f}


def features(x: np.ndarray, th: dict) -> np.ndarray:
    """z for each input: (N, n)."""
    return np.stack([_forward(xi, th)["z"] for xi in x])


def gradients(x: np.ndarray, th: dict) -> dict[str, np.ndarray]:
    """∂f(x)/∂θ for one input (L, C), by backprop through the forward pass above."""
    s = STDS
    fw = _forward(x, th)
    c, n = th["W1"].shape
    heads = th["Wk"].shape[0]
    L = x.shape[0]
    out = {"r": fw["z"] * s["wr"] / np.sqrt(n), "br": np.asarray(s["br"])}
    d_z = th["r"] * s["wr"] / np.sqrt(n)  # ∂f/∂z
    d_a = np.broadcast_to(d_z / L, (L, n))  # the mean over positions
    out["bo"] = d_a.sum(0) * s["bo"]
    out["Wo"] = fw["cat"].T @ d_a * fw["so"]
    d_cat = d_a @ th["Wo"].T * fw["so"]
    d_hd = d_cat.reshape(L, heads, n).transpose(1, 0, 2)  # (H, L, n)
    g, v, k, h = fw["g"], fw["v"], fw["k"], fw["h"]
    d_v = np.einsum("mij,mib->mjb", g, d_hd)
    out["Wv"] = np.einsum("la,mlb->mab", h, d_v)
    d_g = np.einsum("mib,mjb->mij", d_hd, v)
    d_logit = g * (d_g - (d_g * g).sum(-1, keepdims=True))  # softmax's backward, per row
    d_k = s["wk"] ** 2 / (n * n) * np.einsum("mij,mjb->mib", d_logit + d_logit.transpose(0, 2, 1), k)
    out["Wk"] = np.einsum("la,mlb->mab", h, d_k)
    d_h = (np.einsum("mlb,mab->la", d_v, th["Wv"]) + np.einsum("mlb,mab->la", d_k, th["Wk"]))
    d_u = d_h * (fw["u"] > 0)
    out["W1"] = x.T @ d_u * s["w1"] / np.sqrt(c)
    out["b1"] = d_u.sum(0) * s["b1"]
    return out


def empirical_ntk(x1: np.ndarray, x2: np.ndarray, th: dict) -> np.ndarray:
    g1 = [gradients(x, th) for x in x1]
    g2 = [gradients(x, th) for x in x2]
    return np.array([[sum(float(np.vdot(a[k], b[k])) for k in a) for b in g2] for a in g1])


def check_gradients(rng: np.random.Generator, eps: float = 1e-6) -> float:
    """The largest relative difference between the backprop gradients and central
    differences, over a few random coordinates of every parameter (a tiny network)."""
    th = draw(rng, 3, 5, 2)
    x = rng.standard_normal((4, 3))
    grads = gradients(x, th)
    worst = 0.0
    for name, value in th.items():
        for _ in range(3):
            idx = tuple(rng.integers(0, d) for d in value.shape)
            plus, minus = dict(th), dict(th)
            plus[name], minus[name] = value.copy(), value.copy()
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric = (_forward(x, plus)["f"] - _forward(x, minus)["f"]) / (2 * eps)
            scale = max(abs(numeric), 1e-3)
            worst = max(worst, abs(grads[name][idx] - numeric) / scale)
    return worst
