"""R3D (digest §3): the local polynomial smoothers are exact where they must be, match rdrobust and
scikit-learn, the uniform band and tests are calibrated, the Fréchet estimate never crosses, the fuzzy
design recovers the effect, the naive pooled estimator is biased on DGP3, and bad input fails clearly."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from rl_energy.analysis.r3d import (
    R3DError,
    WeakFirstStageWarning,
    crossing,
    isotonic,
    local_poly_operator,
    mse_bandwidth,
    pooled_quantile_rd,
    quantile_matrix,
    r3d,
)
from rl_energy.envs.tasks.distributional_rdd import DistributionalRDDTask, simulate

Q9 = np.linspace(0.1, 0.9, 9)
Q5 = np.array([0.1, 0.25, 0.5, 0.75, 0.9])


def _polynomial_units(order: int, n: int = 300, seed: int = 0):
    """Units whose quantile functions are exact polynomials of degree ``order`` in x on each side,
    with a jump of (q + 1) at 0: samples are the quantile function itself on a fine grid."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    levels = (np.arange(200) + 0.5) / 200
    trend = sum((0.7 - 0.2 * k) * x ** k for k in range(1, order + 1))
    y = trend[:, None] + 2.0 * levels[None, :] + (x >= 0)[:, None] * (levels[None, :] + 1.0)
    return x, y


def test_local_polynomial_is_exact_up_to_its_order_and_bias_correction_one_order_more():
    x, y = _polynomial_units(order=2)
    qm = quantile_matrix(y, Q5)
    truth = np.quantile((np.arange(200) + 0.5) / 200, Q5) + 1.0        # the jump of every unit's quantiles
    res = r3d(x, y, q=Q5, p=2, h=0.8, method="simple", rng=0)
    np.testing.assert_allclose(res.tau, truth, atol=1e-8)
    np.testing.assert_allclose(res.tau_bc, truth, atol=1e-8)
    x3, y3 = _polynomial_units(order=3)
    res3 = r3d(x3, y3, q=Q5, p=2, h=0.8, method="simple", rng=0)
    assert np.max(np.abs(res3.tau - truth)) > 1e-3       # a cubic trend biases the quadratic fit...
    np.testing.assert_allclose(res3.tau_bc, truth, atol=1e-8)  # ...and the order-3 bias correction removes it
    # the operator's derivative rows are the Taylor coefficients: β_1 = μ'(c) on a polynomial in x
    lp = local_poly_operator(x, 0.0, 0.9, 2, +1)
    poly = 1.0 + 2.0 * x - 3.0 * x ** 2
    np.testing.assert_allclose(lp @ poly, [1.0, 2.0, -3.0], atol=1e-9)
    assert np.all(lp[:, x < 0] == 0) and qm.shape == (300, 5)


@pytest.mark.parametrize("vce", ["hc0", "hc2", "hc3"])
def test_the_scalar_estimate_at_one_quantile_matches_rdrobust(vce):
    rdrobust = pytest.importorskip("rdrobust").rdrobust
    s = simulate("dgp2", 400, 50, 1.0, rng=3)
    qm = quantile_matrix(s["y"], Q5)
    res = r3d(s["x"], s["y"], q=Q5, method="simple", h=0.6, rng=0, vce=vce)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rdrobust(qm[:, 2], s["x"], c=0, p=2, h=0.6, b=0.6, kernel="epanechnikov", vce=vce)
    conventional, _, robust = ref.coef.values.ravel()
    assert res.tau[2] == pytest.approx(conventional, rel=1e-9)
    assert res.tau_bc[2] == pytest.approx(robust, rel=1e-9)
    assert res.se[2] == pytest.approx(float(ref.se.values.ravel()[2]), rel=1e-9)


def test_isotonic_projection_matches_scikit_learn():
    iso = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = np.cumsum(rng.normal(0.1, 1.0, 15))
        w = rng.uniform(0.2, 2.0, 15)
        ref = iso.IsotonicRegression().fit_transform(np.arange(15), y, sample_weight=w)
        np.testing.assert_allclose(isotonic(y, w), ref, atol=1e-10)
    batch = rng.normal(size=(4, 9))
    assert not crossing(isotonic(batch)).any() and crossing(batch).any()


def test_quantile_matrix_accepts_ragged_samples_and_matches_numpy():
    rng = np.random.default_rng(2)
    samples = [rng.normal(size=k) for k in (3, 10, 57)]
    qm = quantile_matrix(samples, Q9)
    for row, s in zip(qm, samples, strict=True):
        np.testing.assert_allclose(row, np.quantile(s, Q9))
    square = rng.normal(size=(4, 20))
    np.testing.assert_allclose(quantile_matrix(square, Q9), np.quantile(square, Q9, axis=1).T)


def test_the_robust_standard_error_and_the_uniform_band_are_calibrated():
    """Across 80 replications of DGP1 the robust se tracks the spread of τ̂_bc, the multiplier draws have
    variance se², and the 95% uniform band covers the truth in (nearly) 95% of them."""
    reps = 80
    s = simulate("dgp1", 300, 30, 0.0, reps=reps, rng=11)
    taus, ses, covered = [], [], []
    for r in range(reps):
        res = r3d(s["x"][r], s["y"][r], q=Q9, n_boot=400, rng=r)
        taus.append(res.tau_bc)
        ses.append(res.se)
        covered.append(res.covers(0.0))
        if r == 0:
            np.testing.assert_allclose(res.boot.std(axis=0), res.se, rtol=0.15)
            assert res.nullity_test().reject == (not res.covers(0.0))
    ratio = np.std(taus, axis=0) / np.mean(ses, axis=0)
    # the small-sample widening: above 1, and fading as the effective number of units grows
    big = simulate("dgp1", 5000, 10, 0.0, rng=12)
    wide = r3d(big["x"], big["y"], q=Q9, rng=0)
    assert np.all(res.scale > 1.0) and np.all(wide.scale < res.scale) and np.all(wide.scale < 1.02)
    assert np.all(wide.dof > 10 * res.dof.min())
    plain = r3d(s["x"][0], s["y"][0], q=Q9, rng=0, dof_correction=False)
    np.testing.assert_allclose(plain.upper - plain.tau_bc, plain.critical_value * plain.se)
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio
    assert 0.85 <= np.mean(covered) <= 1.0


def test_tests_have_power_where_the_null_is_false():
    s = simulate("dgp1", 500, 50, 1.0, rng=4)
    res = r3d(s["x"], s["y"], q=Q9, rng=0)
    assert res.nullity_test().reject and res.nullity_test().p_value < 0.01
    assert res.covers(1.0)
    assert res.nullity_test((0.4, 0.6)).statistic <= res.nullity_test().statistic
    hetero = simulate("dgp3", 2000, 50, 0.5, 2.0, rng=5)            # τ(q) = 0.5 + 2 E[σ] Φ⁻¹(q): not constant
    res3 = r3d(hetero["x"], hetero["y"], q=Q9, rng=0)
    assert res3.homogeneity_test().reject


def test_frechet_never_crosses_while_per_quantile_bandwidths_can():
    """With few draws per unit and a fine grid, the simple estimator's side curves cross in some
    replications; the Fréchet projection's never do."""
    s = simulate("dgp3", 120, 4, 0.0, 0.0, reps=40, rng=6)
    q = np.linspace(0.05, 0.95, 19)
    simple_crosses, frechet_crosses = 0, 0
    for r in range(40):
        a = r3d(s["x"][r], s["y"][r], q=q, method="simple", rng=r)
        b = r3d(s["x"][r], s["y"][r], q=q, method="frechet", rng=r)
        simple_crosses += bool(crossing(np.stack([a.m_plus, a.m_minus])).any())
        frechet_crosses += bool(crossing(np.stack([b.m_plus, b.m_minus])).any())
    assert simple_crosses > 0 and frechet_crosses == 0


def test_fuzzy_wald_ratio_recovers_the_effect():
    s = simulate("dgp1", 3000, 30, 1.5, fuzzy=True, p_treat=(0.2, 0.8), rng=7)
    res = r3d(s["x"], s["y"], q=Q9, treatment=s["d"], rng=0)
    assert res.first_stage == pytest.approx(0.6, abs=0.1)
    assert res.covers(1.5)
    assert np.all(np.abs(res.tau_bc - 1.5) < 4 * res.se)
    sharp = r3d(s["x"], s["y"], q=Q9, rng=0)                          # ignoring non-compliance: diluted
    assert np.mean(sharp.tau_bc) == pytest.approx(0.6 * 1.5, abs=0.25)


def test_naive_pooled_quantile_rd_estimates_the_mixture_not_the_laqte():
    task = DistributionalRDDTask(dgp="dgp3", delta=0.5, gamma=0.5, n_units=20, n_test=1, samples_per_unit=2)
    np.testing.assert_allclose(task.true_effect(Q5), [-0.349, 0.053, 0.5, 0.947, 1.349], atol=1e-3)
    np.testing.assert_allclose(task.pooled_effect(Q5), [-0.291, 0.19, 0.5, 0.809, 1.287], atol=5e-3)
    s = simulate("dgp3", 4000, 50, 0.5, 0.5, rng=8)
    pooled = pooled_quantile_rd(s["x"], s["y"], q=Q5, h=1.0, p=1)
    gap = np.abs(task.pooled_effect(Q5) - task.true_effect(Q5))
    assert np.all(np.abs(pooled - task.pooled_effect(Q5))[[1, 3]] < 0.5 * gap[[1, 3]])


def test_mse_bandwidth_follows_its_rate_and_hits_the_range_without_curvature():
    """With a clear third derivative the rule-of-thumb bandwidth scales as n^(-1/7) (p = 2); without
    curvature the MSE has no bias term and the bandwidth is the whole range."""
    x, y = _polynomial_units(order=1, n=400)
    h_lin = mse_bandwidth(x, quantile_matrix(y, Q9), method="frechet")
    assert np.allclose(h_lin, np.abs(x).max())
    hs = []
    for n in (1000, 16000):
        rng = np.random.default_rng(n)
        xs = rng.uniform(-1, 1, n)
        ys = 5 * xs[:, None] ** 3 + 0.3 * rng.standard_normal((n, 10))
        hs.append(mse_bandwidth(xs, quantile_matrix(ys, Q9), method="frechet")[0])
    assert hs[1] / hs[0] == pytest.approx(16 ** (-1 / 7), rel=0.1)


def test_bad_input_gives_clear_errors():
    s = simulate("dgp1", 200, 20, 1.0, rng=10)
    one_sided = np.abs(s["x"][:50])
    one_sided[:2] *= -1                                               # two units below the cutoff
    with pytest.raises(R3DError, match="too few units on one side"):
        r3d(one_sided, s["y"][:50])
    x = s["x"]
    with pytest.raises(R3DError, match="positive kernel weight"):
        r3d(x, s["y"], h=1e-4)
    with pytest.raises(R3DError, match="NaN"):
        r3d(np.where(np.arange(200) == 3, np.nan, x), s["y"])
    with pytest.raises(R3DError, match="q must be"):
        r3d(x, s["y"], q=[0.0, 0.5])
    with pytest.raises(R3DError, match="frechet"):
        r3d(x, s["y"], q=[0.25, 0.5], h=[0.5, 0.6], method="frechet")
    with pytest.raises(R3DError, match="method"):
        r3d(x, s["y"], method="wasserstein")
    with pytest.raises(R3DError, match="does not jump"):
        r3d(x, s["y"], treatment=np.ones(200))                      # everyone treated: no first stage
    weak = simulate("dgp1", 400, 20, 1.0, fuzzy=True, p_treat=(0.45, 0.6), rng=13)
    with pytest.warns(WeakFirstStageWarning, match="weak first stage"):
        r3d(weak["x"], weak["y"], treatment=weak["d"])
    with pytest.raises(R3DError, match="units"):
        r3d(x[:10], s["y"])


def test_env_logs_the_threshold_policy_and_scores_with_potential_outcomes():
    env = gym.make("rl_energy/DistributionalRDD-v0", dgp="dgp1", delta=2.0, n_units=400, n_test=100,
                   samples_per_unit=20)
    task = env.unwrapped
    logged = task.logged("train")
    np.testing.assert_array_equal(logged["d"], (logged["x"] >= 0).astype(float))
    batch = task.contexts("test")
    n = batch.batch_size[0]
    treat_all = task.score(batch, np.ones((n, 1), np.float32))
    treat_none = task.score(batch, np.zeros((n, 1), np.float32))
    np.testing.assert_allclose((treat_all - treat_none).numpy(), 2.0, atol=1e-4)  # common random numbers
    metrics = task.metrics(batch, np.ones((n, 1), np.float32))
    assert metrics["treated_fraction"] == 1.0 and metrics["value"] > metrics["value_threshold"]
    res = r3d(logged["x"], logged["y"], q=Q9, rng=0)                  # off-policy: from the logged data only
    assert res.covers(task.true_effect(Q9))
    fuzzy = DistributionalRDDTask(fuzzy=True, n_units=100, n_test=10, samples_per_unit=5)
    assert set(np.unique(fuzzy.logged()["d"])) <= {0.0, 1.0}


@pytest.mark.parametrize(("kwarg", "value"), [("dgp", "dgp9"), ("n_units", 5), ("samples_per_unit", 0),
                                              ("delta", float("nan")), ("gamma", -2.0), ("fuzzy", "yes"),
                                              ("reward_quantile", 1.5), ("p_treat", [0.5, 0.5, 0.5])])
def test_env_rejects_bad_kwargs_naming_them(kwarg, value):
    kwargs = {"n_units": 50, "n_test": 5, "samples_per_unit": 3, kwarg: value}
    with pytest.raises(ValueError, match=kwarg):
        DistributionalRDDTask(**kwargs)


def test_env_rejects_a_fuzzy_design_without_a_jump():
    with pytest.raises(ValueError, match="p_treat"):
        DistributionalRDDTask(fuzzy=True, p_treat=[0.5, 0.5], n_units=50, n_test=5, samples_per_unit=3)


def test_cli_analyze_rdd_prints_the_band_and_rejects_bad_input(capsys):
    from rl_energy.cli import main

    assert main(["analyze", "rdd", "--set", "n_units=300", "--set", "delta=2", "--q", "0.25,0.5,0.75",
                 "--boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "nullity test" in out and "covers the truth" in out and "0.75" in out
    assert main(["analyze", "rdd", "--set", "dgp=dgp9"]) == 2
    assert "dgp1, dgp2, dgp3" in capsys.readouterr().err
    assert main(["analyze", "rdd", "--bandwidth", "1e-5"]) == 2
    assert "positive kernel weight" in capsys.readouterr().err
    assert main(["analyze", "rdd", "--env", "rl_energy/Baird-v0"]) == 2
