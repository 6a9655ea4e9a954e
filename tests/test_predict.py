"""Tests for ntkc.predict against independent dense-linear-algebra computations.

References use np.linalg.solve / np.linalg.inv, scipy.linalg.expm of the explicit
matrix, scipy.integrate.solve_ivp of the gradient-flow ODE, covariance propagation
through the explicit linear map f_t = f_0 + A (y - f_0,train), and
scipy.stats.multivariate_normal. Everything is float64 with rtol <= 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats

from ntkc import predict

N, M, C = 20, 7, 3
RTOL = 1e-8


def close(actual, desired, rtol=RTOL, atol_rel=0.0):
    """assert_allclose with an optional absolute floor relative to max|desired|."""
    desired = np.asarray(desired)
    atol = atol_rel * float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)


def features(rng, n, d):
    return rng.normal(size=(n, d)) / np.sqrt(d)


@pytest.fixture(scope="module")
def data():
    """Jointly PSD kernels on N train + M test points; NTK = NNGP + another PSD part."""
    rng = np.random.default_rng(1234)
    phi = features(rng, N + M, 60)
    psi = features(rng, N + M, 80)
    k = phi @ phi.T
    theta = k + 0.7 * psi @ psi.T
    y = rng.normal(size=(N, C))
    return {
        "k": k[:N, :N],
        "k_st": k[N:, :N],
        "k_ss": k[N:, N:],
        "th": theta[:N, :N],
        "th_st": theta[N:, :N],
        "th_ss": theta[N:, N:],
        "y": y,
        "k_full": k,
    }


def reg_matrix(k, diag_reg, absolute):
    r = diag_reg if absolute else diag_reg * np.mean(np.diag(k))
    return k + r * np.eye(k.shape[0])


REGS = [(0.0, False), (1e-2, False), (0.05, True)]


# ----------------------------------------------------------------------------- GP inference


@pytest.mark.parametrize("diag_reg,absolute", REGS)
def test_gp_inference_matches_direct_solve(data, diag_reg, absolute):
    a = reg_matrix(data["k"], diag_reg, absolute)
    gp = predict.gp_inference(data["k"], data["y"], diag_reg, absolute)
    mean_ref = data["k_st"] @ np.linalg.solve(a, data["y"])
    cov_ref = data["k_ss"] - data["k_st"] @ np.linalg.solve(a, data["k_st"].T)
    close(gp.predict(data["k_st"]), mean_ref)
    out = gp(data["k_st"], data["k_ss"])
    assert isinstance(out, predict.Gaussian)
    close(out.mean, mean_ref)
    close(out.covariance, cov_ref, atol_rel=1e-12)
    assert out.covariance.shape == (M, M)


def test_gp_inference_1d_targets(data):
    y1 = data["y"][:, 1]
    out = predict.gp_inference(data["k"], y1).predict(data["k_st"], data["k_ss"])
    assert out.mean.shape == (M,)
    close(out.mean, data["k_st"] @ np.linalg.solve(data["k"], y1))


# ----------------------------------------------------------------------------- gradient descent


def expm_reference(th, th_st, y, t, lr, f0, ft0, diag_reg=0.0, absolute=False):
    """f_t from the explicit matrix exponential (NT: rate = lr / y.size)."""
    a = reg_matrix(th, diag_reg, absolute)
    tau = lr * t / y.size
    y2, f02 = y.reshape(len(y), -1), np.broadcast_to(f0, y.shape).reshape(len(y), -1)
    e = np.eye(len(a)) - scipy.linalg.expm(-tau * a)
    f_train = f02 + e @ (y2 - f02)
    f_test = ft0 + th_st @ np.linalg.solve(a, e @ (y2 - f02))
    return f_train.reshape(y.shape), f_test


@pytest.mark.parametrize("diag_reg,absolute", REGS)
def test_gradient_descent_vs_expm(data, diag_reg, absolute):
    rng = np.random.default_rng(5)
    f0, ft0 = rng.normal(size=(N, C)), rng.normal(size=(M, C))
    lr = 0.7
    gd = predict.gradient_descent_mse(data["th"], data["y"], lr, diag_reg, absolute)
    for t in [1e-6, 3.0, 40.0, 500.0]:
        ref_train, ref_test = expm_reference(
            data["th"], data["th_st"], data["y"], t, lr, f0, ft0, diag_reg, absolute
        )
        f_train, f_test = gd.predict(t, f0, ft0, data["th_st"])
        close(f_train, ref_train)
        close(f_test, ref_test)


def test_gradient_descent_small_time_uses_expm1(data):
    """At tiny t the update is tau * Θ_* (y - f0) to first order (no cancellation)."""
    gd = predict.gradient_descent_mse(data["th"], data["y"])
    t = 1e-9
    _, f_test = gd.predict(t, 0.0, None, data["th_st"])
    close(f_test, t / data["y"].size * data["th_st"] @ data["y"], rtol=1e-7)


def test_gradient_descent_vs_ode(data):
    """Integrate df/dt = -(lr / y.size) Θ (f - y) on train and test jointly.

    With rtol=1e-12, atol=1e-14 the DOP853 global error on this stable, non-stiff
    linear system (decay rates lr*lambda/y.size in 0.017-0.065, horizon t <= 300,
    ~10-20 e-folds) stays ~3e-11 relative (measured), so rtol=1e-8 holds with a
    large margin; the absolute floor 1e-10 * max|f| only guards entries near zero.
    """
    rng = np.random.default_rng(6)
    th, th_st, y = data["th"], data["th_st"], data["y"]
    f0, ft0 = rng.normal(size=(N, C)), rng.normal(size=(M, C))
    lr = 1.3
    rate = lr / y.size

    def rhs(_, z):
        f = z[: N * C].reshape(N, C)
        g = -rate * (f - y)
        return np.concatenate([(th @ g).ravel(), (th_st @ g).ravel()])

    ts = np.array([0.5, 7.0, 60.0, 300.0])
    sol = scipy.integrate.solve_ivp(
        rhs,
        (0.0, ts[-1]),
        np.concatenate([f0.ravel(), ft0.ravel()]),
        method="DOP853",
        t_eval=ts,
        rtol=1e-12,
        atol=1e-14,
    )
    assert sol.success
    f_train, f_test = predict.gradient_descent_mse(th, y, lr).predict(ts, f0, ft0, th_st)
    for i in range(len(ts)):
        close(f_train[i], sol.y[: N * C, i].reshape(N, C), atol_rel=1e-10)
        close(f_test[i], sol.y[N * C :, i].reshape(M, C), atol_rel=1e-10)


def test_gradient_descent_singular_kernel_vs_ode():
    """Rank-deficient kernel: clipped zero modes must give finite, correct outputs."""
    rng = np.random.default_rng(7)
    phi = features(rng, N + M, 5)
    k = phi @ phi.T
    th, th_st = k[:N, :N], k[N:, :N]
    y = rng.normal(size=N)
    rate = 1.0 / N

    def rhs(_, z):
        g = -rate * (z[:N] - y)
        return np.concatenate([th @ g, th_st @ g])

    sol = scipy.integrate.solve_ivp(
        rhs,
        (0.0, 50.0),
        np.zeros(N + M),
        method="DOP853",
        t_eval=[50.0],
        rtol=1e-12,
        atol=1e-14,
    )
    f_train, f_test = predict.gradient_descent_mse(th, y).predict(50.0, 0.0, 0.0, th_st)
    assert f_train.shape == (N,) and f_test.shape == (M,)
    close(f_train, sol.y[:N, 0], atol_rel=1e-10)
    close(f_test, sol.y[N:, 0], atol_rel=1e-10)


@pytest.mark.parametrize("diag_reg,absolute", REGS)
def test_gradient_descent_infinite_time(data, diag_reg, absolute):
    rng = np.random.default_rng(8)
    f0, ft0 = rng.normal(size=(N, C)), rng.normal(size=(M, C))
    a = reg_matrix(data["th"], diag_reg, absolute)
    ref = ft0 + data["th_st"] @ np.linalg.solve(a, data["y"] - f0)
    gd = predict.gradient_descent_mse(data["th"], data["y"], 2.0, diag_reg, absolute)
    for t in (None, np.inf, [np.inf]):
        f_train, f_test = gd.predict(t, f0, ft0, data["th_st"])
        lead = (1,) if isinstance(t, list) else ()
        assert f_test.shape == lead + (M, C)
        close(f_train.reshape(N, C), data["y"], atol_rel=1e-12)
        close(f_test.reshape(M, C), ref)


def test_gradient_descent_array_of_times_and_1d(data):
    y1 = data["y"][:, 0]
    f0 = np.linspace(-1, 1, N)
    ts = np.array([[0.0, 1.0, 10.0], [100.0, 1e3, 1e4]])
    gd = predict.gradient_descent_mse(data["th"], y1, learning_rate=0.3)
    f_train, f_test = gd.predict(ts, f0, 0.5, data["th_st"])
    assert f_train.shape == (2, 3, N) and f_test.shape == (2, 3, M)
    for idx in np.ndindex(ts.shape):
        ref_train, ref_test = expm_reference(data["th"], data["th_st"], y1, ts[idx], 0.3, f0, 0.5)
        close(f_train[idx], ref_train)
        close(f_test[idx], ref_test[:, 0])
    close(f_train[0, 0], f0)  # t = 0 is the initialisation


def test_gradient_descent_defaults_and_none(data):
    gd = predict.gradient_descent_mse(data["th"], data["y"])
    f_train, f_test = gd.predict(5.0)
    assert f_test is None
    ref_train, ref_test = expm_reference(data["th"], data["th_st"], data["y"], 5.0, 1.0, 0.0, 0.0)
    close(f_train, ref_train)
    f_train, f_test = gd.predict(5.0, None, None, data["th_st"])
    assert f_train is None
    close(f_test, ref_test)
    assert gd.normalization == N * C


# ----------------------------------------------------------------------------- ensemble


def ensemble_reference(k, k_st, k_ss, th, th_st, y, t, lr, diag_reg=0.0, absolute=False):
    """Lee et al. 2019 eq. 16 written with expm, and by covariance propagation."""
    k_r, th_r = reg_matrix(k, diag_reg, absolute), reg_matrix(th, diag_reg, absolute)
    tau = lr * t / y.size
    out = {}
    # NT: 'nngp' mode uses the regularised K throughout (t = inf is then the GP
    # posterior with noise), 'ntk' mode sandwiches the unregularised NNGP K.
    for g, (kk, kk_st, mid) in {"nngp": (k_r, k_st, k_r), "ntk": (th_r, th_st, k)}.items():
        e = np.eye(N) - scipy.linalg.expm(-tau * kk)
        a = kk_st @ np.linalg.inv(kk) @ e  # f_t,test = f_0,test + a (y - f_0,train)
        mean = a @ y
        cov = k_ss + a @ mid @ a.T - (a @ k_st.T + (a @ k_st.T).T)
        # same covariance by pushing the joint prior N(0, K_full) through [-a, I]
        lin = np.hstack([-a, np.eye(M)])
        k_full = np.block([[mid, k_st.T], [k_st, k_ss]])
        close(cov, lin @ k_full @ lin.T, rtol=1e-10, atol_rel=1e-12)
        out[g] = (mean, cov)
    return out


@pytest.mark.parametrize("diag_reg,absolute", REGS)
def test_ensemble_finite_time_vs_expm(data, diag_reg, absolute):
    d = data
    ens = predict.gradient_descent_mse_ensemble(
        {"nngp": d["k"], "ntk": d["th"]}, d["y"], 0.8, diag_reg, absolute
    )
    ts = np.array([0.3, 20.0, 400.0])
    out = ens.predict(
        ts, {"nngp": d["k_st"], "ntk": d["th_st"]}, {"nngp": d["k_ss"]}, compute_cov=True
    )
    assert out._fields == ("nngp", "ntk")
    for i, t in enumerate(ts):
        ref = ensemble_reference(
            d["k"], d["k_st"], d["k_ss"], d["th"], d["th_st"], d["y"], t, 0.8, diag_reg, absolute
        )
        for g in ("nngp", "ntk"):
            close(getattr(out, g).mean[i], ref[g][0], atol_rel=1e-12)
            close(getattr(out, g).covariance[i], ref[g][1], atol_rel=1e-12)


@pytest.mark.parametrize("diag_reg,absolute", REGS)
def test_ensemble_infinite_time_closed_form(data, diag_reg, absolute):
    d = data
    k_r, th_r = reg_matrix(d["k"], diag_reg, absolute), reg_matrix(d["th"], diag_reg, absolute)
    ens = predict.gradient_descent_mse_ensemble(
        {"nngp": d["k"], "ntk": d["th"]}, d["y"], 1.0, diag_reg, absolute
    )
    kts = {"nngp": d["k_st"], "ntk": d["th_st"]}
    out = ens.predict(None, kts, d["k_ss"], get=("ntk", "nngp"), compute_cov=True)
    # NTK: kernel regression with Θ; covariance Lee et al. eq. 16 at t = inf
    a = d["th_st"] @ np.linalg.inv(th_r)
    close(out.ntk.mean, a @ d["y"])
    cov = d["k_ss"] + a @ d["k"] @ a.T - a @ d["k_st"].T - d["k_st"] @ a.T
    close(out.ntk.covariance, cov, atol_rel=1e-12)
    # NNGP: the GP posterior
    gp = predict.gp_inference(d["k"], d["y"], diag_reg, absolute).predict(d["k_st"], d["k_ss"])
    close(out.nngp.mean, gp.mean)
    close(out.nngp.covariance, gp.covariance, atol_rel=1e-12)
    close(out.nngp.mean, d["k_st"] @ np.linalg.solve(k_r, d["y"]))
    # t = np.inf through the eigenbasis agrees
    inf = ens.predict(np.inf, kts, {"nngp": d["k_ss"]}, get="ntk", compute_cov=True)
    close(inf.mean, out.ntk.mean, rtol=1e-9)
    close(inf.covariance, out.ntk.covariance, rtol=1e-9, atol_rel=1e-10)


def test_ensemble_ntk_mean_equals_gradient_descent_from_zero(data):
    d = data
    y1 = d["y"][:, 2]
    ens = predict.gradient_descent_mse_ensemble({"ntk": d["th"]}, y1, learning_rate=0.5)
    mean = ens.predict([2.0, 30.0], {"ntk": d["th_st"]}, get="ntk")
    assert mean.shape == (2, M)
    _, f_test = predict.gradient_descent_mse(d["th"], y1, 0.5).predict(
        [2.0, 30.0], 0.0, 0.0, d["th_st"]
    )
    close(mean, f_test)


def test_ensemble_train_set_matches_test_formula_with_train_as_test(data):
    d = data
    kd = {"nngp": d["k"], "ntk": d["th"]}
    ens = predict.gradient_descent_mse_ensemble(kd, d["y"])
    t = [1.0, 50.0]
    train = ens.predict(t, compute_cov=True)
    as_test = ens.predict(t, kd, {"nngp": d["k"]}, compute_cov=True)
    for g in ("nngp", "ntk"):
        close(getattr(train, g).mean, getattr(as_test, g).mean, atol_rel=1e-11)
        close(
            getattr(train, g).covariance, getattr(as_test, g).covariance, rtol=1e-7, atol_rel=1e-10
        )
    inf = ens.predict(None, get="nngp", compute_cov=True)
    close(inf.mean, d["y"])
    assert not inf.covariance.any()


# ----------------------------------------------------------------------------- marginal likelihood


@pytest.mark.parametrize("diag_reg,absolute", REGS)
@pytest.mark.parametrize("one_d", [False, True])
def test_marginal_likelihood_vs_scipy(data, diag_reg, absolute, one_d):
    y = data["y"][:, 0] if one_d else data["y"]
    a = reg_matrix(data["k"], diag_reg, absolute)
    cols = y.reshape(N, -1).T
    ref = -sum(scipy.stats.multivariate_normal(np.zeros(N), a).logpdf(c) for c in cols)
    nll = predict.marginal_likelihood(data["k"], y, diag_reg, absolute)
    assert isinstance(nll, float)
    close(nll, ref)


# ----------------------------------------------------------------------------- errors


def test_not_positive_definite_message_and_way_out():
    rng = np.random.default_rng(9)
    phi = features(rng, N, 4)
    k = phi @ phi.T - 1e-3 * np.eye(N)  # indefinite
    y = rng.normal(size=N)
    with pytest.raises(ValueError, match=r"not positive definite.*increase diag_reg.*float64"):
        predict.gp_inference(k, y)
    with pytest.raises(ValueError, match="not positive definite"):
        predict.marginal_likelihood(k, y)
    gd = predict.gradient_descent_mse(k, y)  # eigenbasis still works at finite t
    assert np.isfinite(gd.predict(3.0)[0]).all()
    with pytest.raises(ValueError, match="not positive definite"):
        gd.predict(None, 0.0, 0.0, k)
    ens = predict.gradient_descent_mse_ensemble({"nngp": k}, y)
    with pytest.raises(ValueError, match=r"kernels_train_train\['nngp'\].*not positive definite"):
        ens.predict(None, {"nngp": k}, get="nngp")
    predict.gp_inference(k, y, diag_reg=1e-2)  # the way out works


@pytest.mark.parametrize("fn", ["gp", "gd", "ml", "ens"])
def test_bad_train_inputs(data, fn):
    k, y = data["k"], data["y"]

    def build(kk, yy):
        if fn == "gp":
            return predict.gp_inference(kk, yy)
        if fn == "gd":
            return predict.gradient_descent_mse(kk, yy)
        if fn == "ml":
            return predict.marginal_likelihood(kk, yy)
        return predict.gradient_descent_mse_ensemble({"nngp": kk}, yy)

    with pytest.raises(ValueError, match=r"square matrix.*got shape \(20, 19\)"):
        build(k[:, :19], y)
    with pytest.raises(ValueError, match=r"square matrix.*got shape \(20,\)"):
        build(k[0], y)
    with pytest.raises(ValueError, match="training set is empty"):
        build(np.zeros((0, 0)), y[:0])
    with pytest.raises(ValueError, match="training set is empty"):
        build(k, y[:0])
    with pytest.raises(
        ValueError, match=r"y_train has shape \(19, 3\) but .* has shape \(20, 20\)"
    ):
        build(k, y[:19])
    with pytest.raises(ValueError, match=r"y_train must have shape \(N,\) or \(N, C\)"):
        build(k, y[:, :, None])
    k_asym = k.copy()
    k_asym[3, 5] += 1e-6
    with pytest.raises(ValueError, match=r"not symmetric.*K\[3,5\] - K\[5,3\]"):
        build(k_asym, y)
    k_tiny = k.copy()
    k_tiny[3, 5] += 1e-13  # inside the 1e-8 relative tolerance
    build(k_tiny, y)
    k_nan = k.copy()
    k_nan[2, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*index \(2, 2\)"):
        build(k_nan, y)
    y_inf = y.copy()
    y_inf[4, 1] = np.inf
    with pytest.raises(ValueError, match=r"y_train contains 1 non-finite.*\(4, 1\)"):
        build(k, y_inf)
    with pytest.raises(ValueError, match="real numbers"):
        build(k.astype(str), y)
    with pytest.raises(ValueError, match="diag_reg must be a finite number >= 0"):
        (predict.marginal_likelihood if fn == "ml" else predict.gp_inference)(k, y, -1.0)


def test_bad_test_inputs(data):
    d = data
    gp = predict.gp_inference(d["k"], d["y"])
    with pytest.raises(ValueError, match=r"k_test_train has shape \(7, 19\).*\(n_test, 20\)"):
        gp.predict(d["k_st"][:, :19])
    with pytest.raises(ValueError, match=r"k_test_test has shape \(6, 6\).*\(7, 7\)"):
        gp.predict(d["k_st"], d["k_ss"][:6, :6])
    bad = d["k_st"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="k_test_train contains 1 non-finite"):
        gp.predict(bad)

    gd = predict.gradient_descent_mse(d["th"], d["y"])
    with pytest.raises(ValueError, match="fx_test_0 was given but k_test_train is None"):
        gd.predict(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"fx_train_0 has shape \(5,\).*\(20, 3\)"):
        gd.predict(1.0, np.zeros(5))
    with pytest.raises(ValueError, match=r"fx_test_0 has shape \(8, 3\).*\(7, 3\)"):
        gd.predict(1.0, 0.0, np.zeros((8, 3)), d["th_st"])
    with pytest.raises(ValueError, match="fx_train_0 contains"):
        gd.predict(1.0, np.full((N, C), np.inf))
    with pytest.raises(ValueError, match="t must be >= 0"):
        gd.predict([1.0, -2.0])
    with pytest.raises(ValueError, match="t contains NaN"):
        gd.predict(np.nan)
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        predict.gradient_descent_mse(d["th"], d["y"], learning_rate=0.0)


def test_bad_ensemble_inputs(data):
    d = data
    with pytest.raises(ValueError, match="must be a dict"):
        predict.gradient_descent_mse_ensemble(d["k"], d["y"])
    with pytest.raises(ValueError, match=r"keys among \('nngp', 'ntk'\), got \['nngpp'\]"):
        predict.gradient_descent_mse_ensemble({"nngpp": d["k"]}, d["y"])
    with pytest.raises(ValueError, match="kernels_train_train have different shapes"):
        predict.gradient_descent_mse_ensemble({"nngp": d["k"], "ntk": d["th"][:5, :5]}, d["y"])
    ens = predict.gradient_descent_mse_ensemble({"ntk": d["th"]}, d["y"])
    with pytest.raises(ValueError, match=r"needs kernels_train_train \['nngp'\]"):
        ens.predict(1.0, {"ntk": d["th_st"]}, get="ntk", compute_cov=True)
    with pytest.raises(ValueError, match="get must be 'nngp', 'ntk'"):
        ens.predict(1.0, get="ntkgp")
    ens = predict.gradient_descent_mse_ensemble({"nngp": d["k"], "ntk": d["th"]}, d["y"])
    with pytest.raises(ValueError, match=r"kernels_test_train lacks \['nngp'\]"):
        ens.predict(1.0, {"ntk": d["th_st"]}, get="ntk", compute_cov=True)
    with pytest.raises(ValueError, match="needs kernels_test_test"):
        ens.predict(1.0, {"ntk": d["th_st"], "nngp": d["k_st"]}, compute_cov=True)
    with pytest.raises(ValueError, match="must contain the key 'nngp'"):
        ens.predict(
            1.0, {"ntk": d["th_st"], "nngp": d["k_st"]}, {"ntk": d["th_ss"]}, compute_cov=True
        )
    with pytest.raises(ValueError, match=r"kernels_test_train have different shapes"):
        ens.predict(1.0, {"ntk": d["th_st"], "nngp": d["k_st"][:3]})
    with pytest.raises(ValueError, match=r"kernels_test_test\['nngp'\] has shape \(3, 3\)"):
        ens.predict(
            1.0,
            {"ntk": d["th_st"], "nngp": d["k_st"]},
            {"nngp": d["k_ss"][:3, :3]},
            compute_cov=True,
        )
