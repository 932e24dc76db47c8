"""ReTaSA (Kim, Zhang, Zhao & Tian, ICLR 2024; digest one-step-tasks.md §2): the KDE and Nadaraya–Watson pieces,
the Tikhonov linear system, the weight's consistency, KMM, weighted kernel ridge, the target-shift task and
importance-weighted ERM in the supervised agent."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_energy.analysis.target_shift import (
    bandwidth,
    gaussian_kde,
    kmm_weights,
    median_lengthscale,
    nadaraya_watson,
    retasa_solve,
    retasa_system,
    retasa_weights,
    weight_error,
    weighted_kernel_ridge,
    weighted_mmd2,
)
from rl_energy.envs.tasks.target_shift import TargetShiftRegressionTask, draw, true_weight

ENV_ID = "rl_energy/TargetShiftRegression-v0"


def shifted_sample(n: int, law: str = "gaussian", dim: int = 1, seed: int = 0, n_test: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = draw(rng, n, "source", dim)
    xt, _ = draw(rng, n, law, dim)
    out = [xs, ys, xt]
    if n_test:
        out.extend(draw(rng, n_test, law, dim))
    return out


# ---------------------------------------------------------------------------------------- kernels
def test_kde_matches_scipy_in_1d_and_a_diagonal_gaussian_mixture_in_2d() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    data = rng.standard_normal(300) * 1.7 + 0.4
    points = np.linspace(-5, 5, 41)
    h = 0.35
    ref = stats.gaussian_kde(data, bw_method=h / data.std(ddof=1))(points)
    np.testing.assert_allclose(gaussian_kde(points, data, h), ref, rtol=1e-10, atol=1e-14)
    data2, pts2, h2 = rng.standard_normal((50, 2)), rng.standard_normal((7, 2)), np.array([0.3, 0.8])
    ref2 = np.mean([stats.multivariate_normal(mean=d, cov=np.diag(h2**2)).pdf(pts2) for d in data2], axis=0)
    np.testing.assert_allclose(gaussian_kde(pts2, data2, h2), ref2, rtol=1e-10)


def test_bandwidth_rules() -> None:
    x = np.random.default_rng(1).standard_normal((400, 1)) * 2.0
    sd = x.std(ddof=1)
    np.testing.assert_allclose(bandwidth(x, "scott"), [sd * 400 ** (-0.2)])
    h = bandwidth(x, "silverman")[0]
    assert 1.06 * 0.9 * sd * 400 ** (-0.2) < h <= 1.0601 * sd * 400 ** (-0.2)  # 1.06 min(sd, IQR/1.349) n^-1/5
    with pytest.raises(ValueError, match="rule"):
        bandwidth(x, "plugin")


def test_nadaraya_watson_rows_sum_to_one_and_far_queries_go_to_the_nearest_point() -> None:
    data = np.array([[0.0], [1.0], [2.0]])
    w = nadaraya_watson(np.array([[0.5], [100.0]]), data, 0.1)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w[0], [0.5, 0.5, 0.0], atol=1e-10)
    np.testing.assert_allclose(w[1], [0.0, 0.0, 1.0], atol=1e-12)


# ---------------------------------------------------------------------------------------- ReTaSA
def test_the_solution_satisfies_the_tikhonov_system_and_its_extension_agrees_at_the_labels() -> None:
    xs, ys, xt = shifted_sample(200, dim=5)
    system = retasa_system(xs, ys, xt)
    np.testing.assert_allclose(system.A.sum(1), 1.0)
    np.testing.assert_allclose(system.B.sum(1), 1.0)
    np.testing.assert_allclose(system.b, system.A @ system.c - 1.0)
    alpha = 0.05
    rho = retasa_solve(system, alpha)
    np.testing.assert_allclose(alpha * rho + system.A @ (system.B @ rho), system.b, atol=1e-10)
    np.testing.assert_allclose(system.extend(rho, alpha, ys), rho, atol=1e-8)
    # a huge alpha shrinks rho to 0 (the unweighted solution)
    assert np.abs(retasa_solve(system, 1e8)).max() < 1e-6


def test_without_shift_the_weight_stays_near_one() -> None:
    rng = np.random.default_rng(3)
    xs, ys = draw(rng, 600, "source", 1)
    xt, _ = draw(rng, 600, "source", 1)
    fit = retasa_weights(xs, ys, xt)
    assert weight_error(fit.omega, np.ones(600)) < 0.05


def test_retasa_weight_approaches_the_oracle_as_n_grows() -> None:
    errs = {}
    for n in (200, 1500):
        e = []
        for seed in range(2):
            xs, ys, xt = shifted_sample(n, seed=seed)
            omega = true_weight(ys, "gaussian")
            fit = retasa_weights(xs, ys, xt)
            assert set(fit.cv_scores) and fit.alpha in fit.cv_scores
            e.append(weight_error(fit.omega, omega))
            unweighted = weight_error(np.ones(n), omega)
        errs[n] = float(np.mean(e))
        assert errs[n] < 0.3 * unweighted
    assert errs[1500] < 0.15
    assert errs[1500] < errs[200]


def test_kmm_matches_kernel_means_better_than_uniform_and_respects_its_constraints() -> None:
    xs, ys, xt = shifted_sample(300)
    beta = kmm_weights(xs, xt, upper=8.0)
    assert beta.min() >= 0 and beta.max() <= 8.0 + 1e-12
    assert abs(beta.mean() - 1.0) <= 1.0 / np.sqrt(300) + 1e-9
    ell = median_lengthscale(np.concatenate([xs, xt]))
    assert weighted_mmd2(xs, beta, xt, ell) < 0.2 * weighted_mmd2(xs, np.ones(300), xt, ell)
    # the weight of a target shift is a function of y: KMM gets closer to it than no weighting
    omega = true_weight(ys, "gaussian")
    assert weight_error(beta, omega) < weight_error(np.ones(300), omega)


def test_weighted_kernel_ridge_with_oracle_weights_lowers_the_target_mse() -> None:
    xs, ys, xt, x_test, y_test = shifted_sample(800, n_test=2000)
    mse = {}
    for name, w in (("none", None), ("oracle", true_weight(ys, "gaussian"))):
        model = weighted_kernel_ridge(xs, ys, w, lam=1e-4)
        mse[name] = float(np.mean((model.predict(x_test) - y_test) ** 2))
    assert mse["oracle"] < 0.97 * mse["none"]
    # zero weights drop points: the fit equals the fit on the kept points alone
    w = np.r_[np.ones(400), np.zeros(400)]
    full = weighted_kernel_ridge(xs, ys, w, lam=1e-3, lengthscale=0.5)
    # w̃ = 2 on the kept points: (2K + 800λ) c = 2y is the unweighted system (K + 400λ) c = y on the 400 points
    half = weighted_kernel_ridge(xs[:400], ys[:400], None, lam=1e-3, lengthscale=0.5)
    np.testing.assert_allclose(full.predict(x_test[:50]), half.predict(x_test[:50]), atol=1e-8)


@pytest.mark.parametrize(("call", "name"), [
    (lambda: gaussian_kde([], [1.0], 0.5), "points"),
    (lambda: gaussian_kde([0.0], [1.0, np.nan], 0.5), "data"),
    (lambda: gaussian_kde([0.0], [1.0], 0.0), "h"),
    (lambda: retasa_system(np.zeros((5, 2)), np.zeros(4), np.zeros((5, 2))), "y_source"),
    (lambda: retasa_system(np.zeros((5, 2)), np.zeros(5), np.zeros((5, 3))), "x_target"),
    (lambda: retasa_weights(np.random.rand(20, 1), np.random.rand(20), np.random.rand(20, 1), alpha=-1.0), "alpha"),
    (lambda: retasa_weights(np.random.rand(20, 1), np.random.rand(20), np.random.rand(20, 1), folds=1), "folds"),
    (lambda: kmm_weights(np.random.rand(20, 1), np.random.rand(20, 1), upper=0.0), "upper"),
    (lambda: weight_error(np.ones(3), np.ones(4)), "omega"),
    (lambda: weighted_kernel_ridge(np.random.rand(5, 1), np.random.rand(5), -np.ones(5)), "weights"),
    (lambda: weighted_kernel_ridge(np.random.rand(5, 1), np.random.rand(5), lam=0.0), "lam"),
])
def test_bad_input_names_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


# ------------------------------------------------------------------------------------------- task
def test_task_is_registered_passes_check_env_and_carries_weights() -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make(ENV_ID, n_source=200, n_target=200, n_test=100, weights="oracle")
    task = env.unwrapped
    assert isinstance(task, TargetShiftRegressionTask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the boxes are the data ranges, not [-1, 1]
        check_env(task, skip_render_check=True)
    train = task.contexts("train")
    assert set(train.keys()) >= {"obs", "target", "weight"}
    np.testing.assert_allclose(train["weight"].numpy(), task.oracle_weight(train["target"].numpy()[:, 0]), rtol=1e-5)
    assert task.weight_error == 0.0
    assert "weight" not in task.contexts("test").keys()
    assert task.target_inputs().shape == (200, 1)
    assert np.abs(train["obs"].numpy()).max() <= task.observation_space.high[0]


def test_weights_none_gives_ones_retasa_beats_it_and_the_data_is_deterministic() -> None:
    none = TargetShiftRegressionTask(n_source=400, n_target=400, n_test=50, dim=5, target="bimodal", weights="none")
    np.testing.assert_array_equal(none.contexts("train")["weight"].numpy(), np.ones(400, dtype=np.float32))
    retasa = TargetShiftRegressionTask(n_source=400, n_target=400, n_test=50, dim=5, target="bimodal",
                                       weights="retasa")
    np.testing.assert_array_equal(none.contexts("train")["obs"].numpy(), retasa.contexts("train")["obs"].numpy())
    np.testing.assert_array_equal(none.target_inputs(), retasa.target_inputs())
    assert retasa.weight_error < 0.5 * none.weight_error
    test = none.contexts("test")
    metrics = none.metrics(test, test["target"] + 0.5)
    assert metrics["mse"] == pytest.approx(0.25, rel=1e-5)
    assert metrics["weight_error"] == none.weight_error


@pytest.mark.parametrize(("kwarg", "value"), [
    ("weights", "iw"), ("target", "uniform"), ("dim", 3), ("n_source", 5), ("data_seed", -1), ("n_test", 1.5)])
def test_bad_kwargs_raise_naming_the_kwarg(kwarg: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{kwarg}'"):
        TargetShiftRegressionTask(**{"n_source": 50, "n_target": 50, "n_test": 10, kwarg: value})


# -------------------------------------------------------------------------------- weighted ERM agent
def test_supervised_agent_minimises_the_weighted_loss() -> None:
    from rl_energy.agents.supervised import Supervised, SupervisedConfig

    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-1, 1, shape=(1,), dtype=np.float32)
    act_space = gym.spaces.Box(-10, 10, shape=(1,), dtype=np.float32)
    y = torch.tensor([[0.0], [1.0], [4.0]])
    w = torch.tensor([1.0, 3.0, 0.5])
    batch = TensorDict({"obs": torch.zeros(3, 1), "target": y, "weight": w}, batch_size=[3])
    for optimizer, steps in (("adam", 1500), ("sso", 60)):
        agent = Supervised(obs_space, act_space, SupervisedConfig(hidden=[], loss="mse", optimizer=optimizer,
                                                                  lr=0.05, sso_eta=0.5))
        # a linear model on zero inputs: only the bias moves, a constant prediction
        for _ in range(steps):
            agent.update(batch)
        pred = float(agent.act(torch.zeros(1, 1))[0, 0])
        assert pred == pytest.approx(float((w * y[:, 0]).sum() / w.sum()), abs=1e-2), optimizer
        unweighted = float(y.mean())
        assert abs(pred - unweighted) > 0.5
    # without the key, the plain mean
    agent = Supervised(obs_space, act_space, SupervisedConfig(hidden=[], loss="mse", lr=0.05))
    for _ in range(1500):
        agent.update(batch.exclude("weight"))
    assert float(agent.act(torch.zeros(1, 1))[0, 0]) == pytest.approx(float(y.mean()), abs=1e-2)
