"""EntropicOT-v0 (Gaussian→Gaussian entropic OT) and EgEOT (Mokrov et al., ICLR 2024; digest §8): the
closed-form plan against POT's Sinkhorn, the Bures–Wasserstein metric, the task's contract, the agent's
config errors, its sampler errors, its checkpoints, and a short training run that learns the plan."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import rl_energy.envs  # noqa: F401  (registers the envs)
from rl_energy.agents.egeot import EgEOT, EgEOTConfig
from rl_energy.cli import main
from rl_energy.config import resolve_config
from rl_energy.envs.tasks.entropic_ot import (
    EntropicOTTask,
    bw2,
    bw2_uvp,
    gaussian_entropic_plan,
    moment_metrics,
    sym_sqrt,
)
from rl_energy.errors import ConfigError, import_optional
from rl_energy.samplers import SamplerError

ENV_ID = "rl_energy/EntropicOT-v0"


@pytest.fixture(autouse=True)
def one_thread():
    """One PyTorch thread (small products; the machine may be shared); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gaussian_grid(mu: np.ndarray, cov: np.ndarray, n: int, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of an ``n^d`` grid over ``mu ± half·σ`` and weights ∝ the Gaussian density there (normalised)."""
    sd = np.sqrt(np.diag(cov))
    axes = [np.linspace(m - half * s, m + half * s, n) for m, s in zip(mu, sd, strict=True)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(mu))
    diff = pts - mu
    log_w = -0.5 * np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    w = np.exp(log_w - log_w.max())
    return pts, w / w.sum()


# ---------------------------------------------------------------------------------- closed form
@pytest.mark.parametrize("eps", [0.3, 1.0])
def test_closed_form_plan_matches_pot_sinkhorn_on_a_discretised_2d_gaussian(eps):
    """Acceptance test: POT's Sinkhorn between two correlated 2-D Gaussians discretised on 20x20
    grids, with the same cost ½‖x - y‖² and reg = ε, has the cross-covariance of the closed form.

    Why the tolerance can be tight: the Gibbs form ``u_i exp(-c_ij/ε) v_j`` of the discrete plan is that of the
    continuous plan evaluated on the grid, and Riemann sums of Gaussians on a grid finer than their widths are
    spectrally accurate, so the two agree up to the grid's truncation at ±5σ; feeding the closed form the
    discrete marginals' own moments removes that too (measured agreement ~1e-8 relative). A 5% error in ε
    moves the cross-covariance by ~1-2%, three orders of magnitude above the tolerance."""
    ot = import_optional("ot", "the Sinkhorn reference")
    mu_p, cov_p = np.array([0.3, -0.2]), np.array([[1.0, 0.5], [0.5, 0.8]])
    mu_q, cov_q = np.array([-0.4, 0.5]), np.array([[0.6, -0.3], [-0.3, 1.2]])
    xs, a = _gaussian_grid(mu_p, cov_p, 20, 5.0)
    ys, b = _gaussian_grid(mu_q, cov_q, 20, 5.0)
    plan = ot.sinkhorn(a, b, 0.5 * ot.dist(xs, ys), eps, numItermax=20_000, stopThr=1e-12)
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-12)
    mx, my = a @ xs, b @ ys
    cross = (xs - mx).T @ plan @ (ys - my)
    cov_x = (xs - mx).T @ (a[:, None] * (xs - mx))
    cov_y = (ys - my).T @ (b[:, None] * (ys - my))
    closed = gaussian_entropic_plan(mx, cov_x, my, cov_y, eps).cov[:2, 2:]
    np.testing.assert_allclose(cross, closed, rtol=0, atol=1e-6 * np.abs(closed).max())
    wrong = gaussian_entropic_plan(mx, cov_x, my, cov_y, 1.05 * eps).cov[:2, 2:]
    assert np.abs(wrong - cross).max() > 3e-3 * np.abs(closed).max()
    # and against the continuous Gaussians themselves (the grid truncation at ±5σ is ~1e-5)
    exact = gaussian_entropic_plan(mu_p, cov_p, mu_q, cov_q, eps).cov[:2, 2:]
    np.testing.assert_allclose(cross, exact, rtol=0, atol=1e-4 * np.abs(exact).max())


@pytest.mark.parametrize(("d", "eps"), [(1, 0.1), (3, 1.0), (8, 10.0), (16, 0.05)])
def test_joint_precision_off_diagonal_block_is_minus_identity_over_eps(d, eps):
    """log π*(x, y) holds xᵀy/ε, so the joint precision's xy block is -I/ε; the marginals are P and Q, the
    conditional covariance is ε K with K = Σ_P⁻¹C symmetric, and the joint covariance is positive definite."""
    task = EntropicOTTask(d=d, eps=eps, n_train=4, n_test=4, data_seed=d)
    plan = task.plan
    precision = np.linalg.inv(plan.cov)
    np.testing.assert_allclose(precision[:d, d:], -np.eye(d) / eps, atol=1e-8 / eps)
    np.testing.assert_allclose(plan.cov[:d, :d], task.cov_p, atol=1e-12)
    np.testing.assert_allclose(plan.cov[d:, d:], task.cov_q, atol=1e-12)
    cross = plan.cov[:d, d:]
    k = np.linalg.solve(task.cov_p, cross)
    np.testing.assert_allclose(k, k.T, atol=1e-9)
    np.testing.assert_allclose(plan.cond_map, k, atol=1e-9)
    np.testing.assert_allclose(task.cov_q - cross.T @ np.linalg.solve(task.cov_p, cross), eps * k, atol=1e-9)
    assert np.linalg.eigvalsh(plan.cov).min() > 0


def test_closed_form_in_one_dimension_and_its_limits():
    """1-D: C = √(σ_P²σ_Q² + ε²/4) - ε/2; ε → ∞ decouples (C → 0); ε → 0 gives the OT plan C = Σ_P T with
    T = Σ_P^{-½}(Σ_P^{½}Σ_QΣ_P^{½})^{½}Σ_P^{-½} the Monge map."""
    sp2, sq2, eps = 2.0, 0.5, 0.7
    plan = gaussian_entropic_plan([0.0], [[sp2]], [1.0], [[sq2]], eps)
    assert plan.cov[0, 1] == pytest.approx(math.sqrt(sp2 * sq2 + eps**2 / 4) - eps / 2, rel=1e-12)
    assert plan.cond_cov[0, 0] == pytest.approx(sq2 - plan.cov[0, 1] ** 2 / sp2, rel=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    cov_p, cov_q = a @ a.T + 0.5 * np.eye(3), b @ b.T + 0.5 * np.eye(3)
    assert np.abs(gaussian_entropic_plan(np.zeros(3), cov_p, np.zeros(3), cov_q, 1e6).cov[:3, 3:]).max() < 1e-4
    sp, sp_inv = sym_sqrt(cov_p), sym_sqrt(cov_p, inverse=True)
    monge = sp_inv @ sym_sqrt(sp @ cov_q @ sp) @ sp_inv
    np.testing.assert_allclose(gaussian_entropic_plan(np.zeros(3), cov_p, np.zeros(3), cov_q, 1e-7).cov[:3, 3:],
                               cov_p @ monge, atol=1e-6)


def test_closed_form_rejects_bad_input():
    with pytest.raises(ValueError, match="'eps'"):
        gaussian_entropic_plan([0.0], [[1.0]], [0.0], [[1.0]], 0.0)
    with pytest.raises(ValueError, match="'cov_p'"):
        gaussian_entropic_plan([0.0, 0.0], [[1.0, 0.0], [0.0, -1.0]], [0.0, 0.0], np.eye(2), 1.0)
    with pytest.raises(ValueError, match="'cov_q'"):
        gaussian_entropic_plan([0.0], [[1.0]], [0.0, 0.0], np.eye(2), 1.0)


# ------------------------------------------------------------------------------ BW2 and BW2-UVP
def test_bw2_is_zero_for_identical_gaussians_and_matches_known_values():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4))
    cov, mean = a @ a.T + np.eye(4), rng.standard_normal(4)
    assert bw2(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (m1 - m2)² + (s1 - s2)²
    assert bw2([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2, rel=1e-12)
    # commuting (diagonal) covariances: Σ_i (√a_i - √b_i)²
    assert bw2(np.zeros(2), np.diag([1.0, 9.0]), np.zeros(2), np.diag([4.0, 1.0])) == pytest.approx(1.0 + 4.0)
    # a general pair against POT's Bures–Wasserstein distance
    ot = import_optional("ot", "the Bures–Wasserstein reference")
    b = rng.standard_normal((4, 4))
    cov2, mean2 = b @ b.T + 0.3 * np.eye(4), rng.standard_normal(4)
    ref = float(ot.gaussian.bures_wasserstein_distance(mean, mean2, cov, cov2)) ** 2
    assert bw2(mean, cov, mean2, cov2) == pytest.approx(ref, rel=1e-8)
    # BW2-UVP: 100 · bw2 / tr Σ_ref; a point mass at the reference mean scores 100 %
    assert bw2_uvp(mean, np.zeros((4, 4)), mean, cov) == pytest.approx(100.0, rel=1e-9)
    assert bw2_uvp(mean2, cov2, mean, cov) == pytest.approx(100 * ref / np.trace(cov), rel=1e-8)


# -------------------------------------------------------------------------------------- the task
def test_task_contract_reset_step_contexts():
    env = gym.make(ENV_ID, d=3, eps=0.5, n_train=128, n_test=64)
    task = env.unwrapped
    check_env(task, skip_render_check=True)
    assert task.sampling and task.full_information
    assert task.observation_space.shape == task.action_space.shape == (3,)
    assert np.isfinite(task.action_space.high).all()
    obs, info = task.reset(seed=3)
    action = np.array([0.2, -0.1, 0.4], dtype=np.float32)
    _, reward, terminated, truncated, info2 = task.step(action)
    assert terminated and not truncated
    assert reward == pytest.approx(-0.5 * float(((obs - action) ** 2).sum()), rel=1e-5)
    np.testing.assert_array_equal(info["target"], info2["target"])
    batch = task.contexts("train", 32, np.random.default_rng(0))
    assert set(batch.keys()) == {"obs", "target", "eps"} and torch.all(batch["eps"] == 0.5)
    act = torch.randn(32, 3)
    torch.testing.assert_close(task.score(batch, act), -0.5 * (batch["obs"] - act).pow(2).sum(-1))
    assert set(task.metrics(batch, act)) == set(task.metric_names)
    # the test split is fixed by data_seed and does not move with n_train
    a = EntropicOTTask(d=3, n_train=10, n_test=64, data_seed=5).contexts("test")
    b = EntropicOTTask(d=3, n_train=900, n_test=64, data_seed=5).contexts("test")
    c = EntropicOTTask(d=3, n_train=10, n_test=64, data_seed=6).contexts("test")
    torch.testing.assert_close(a["obs"], b["obs"])
    torch.testing.assert_close(a["target"], b["target"])
    assert not torch.equal(a["obs"], c["obs"])


def test_task_samples_have_the_right_moments_and_the_metrics_tell_plans_apart():
    task = EntropicOTTask(d=4, eps=0.2, n_train=50_000, n_test=20_000, data_seed=2)
    train = task.contexts("train")
    x, y = train["obs"].double().numpy(), train["target"].double().numpy()
    np.testing.assert_allclose(np.cov(x, rowvar=False), task.cov_p, atol=0.06)
    np.testing.assert_allclose(y.mean(0), task.mu_q, atol=0.04)
    test = task.contexts("test")
    oracle = task.sample_plan(test["obs"].numpy(), np.random.default_rng(0))
    good = task.metrics(test, torch.as_tensor(oracle))
    independent = task.metrics(test, test["target"])  # the right marginal, the wrong coupling
    assert good["bw2_uvp"] < 0.2 and good["cond_mean_uvp"] < 0.2 and good["cond_cov_err"] < 0.05
    assert independent["marg_bw2_uvp"] < 0.2 and independent["bw2_uvp"] > 20 and independent["cond_mean_uvp"] > 50
    # exact moments give exactly 0
    exact = moment_metrics(task.plan.mean, task.plan.cov, test["obs"].double().numpy(), task.plan, task.mu_p,
                           task.mu_q, task.cov_q)
    assert max(exact.values()) < 1e-8


@pytest.mark.parametrize(("kwarg", "value"), [("d", 0), ("d", 2.5), ("eps", 0.0), ("eps", -1.0), ("eps", math.inf),
                                              ("eps", "big"), ("n_train", 0), ("n_test", 1), ("data_seed", -1),
                                              ("action_sigmas", 0.0)])
def test_task_bad_kwargs_name_the_kwarg(kwarg, value):
    with pytest.raises(ValueError, match=f"'{kwarg}'"):
        EntropicOTTask(**{kwarg: value})


# -------------------------------------------------------------------------------------- the agent
def _cfg(*overrides: str, env: dict | None = None):
    env = {"d": 2, "eps": 1.0, "n_train": 4096, "n_test": 1024, **(env or {})}
    ov = [f"env_kwargs.{k}={v}" for k, v in env.items()] + list(overrides)
    return resolve_config("egeot", ENV_ID, EgEOTConfig, overrides=ov)


def _agent(*overrides: str, env: dict | None = None) -> tuple[EgEOT, EntropicOTTask]:
    cfg = _cfg(*overrides, env=env)
    task = EntropicOTTask(**cfg.env_kwargs)
    agent = EgEOT(task.observation_space, task.action_space, cfg.agent)
    agent.observe_train_split(task.contexts("train"))
    return agent, task


@pytest.mark.parametrize(("key", "value"), [
    ("step_size", "0"), ("step_size", "-0.1"), ("step_size", "1e6"), ("step_size", "2.5"), ("step_size", "fast"),
    ("step_size", ".nan"),
    ("n_sampling_steps", "0"), ("n_sampling_steps", "-5"), ("n_sampling_steps", "2.5"), ("n_sampling_steps", "1e9"),
    ("n_eval_steps", "0"), ("width", "0"), ("depth", "-1"), ("lr", "0"), ("lr", "abc"), ("eps", "-1"),
    ("sampler", "hmc2"), ("init", "noise"), ("replay_prob", "1.5"), ("buffer_size", "0"), ("activation", "cube"),
    ("target_accept", "1.0"), ("grad_clip", "-1"), ("scale_by_eps", "maybe"), ("adapt_updates", "-1"),
    ("lr_decay_updates", "-3"), ("lr_final_frac", "2"),
])
def test_bad_agent_config_is_an_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"agent\\.{key}"):
        _cfg(f"agent.{key}={value}")


def test_eps_comes_from_the_task_and_a_mismatch_names_the_key():
    agent, _ = _agent(env={"eps": 0.3})
    assert agent.eps == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="agent\\.eps"):
        _agent("agent.eps=1.0", env={"eps": 0.3})
    cfg = _cfg()
    task = EntropicOTTask(**cfg.env_kwargs)
    blind = EgEOT(task.observation_space, task.action_space, cfg.agent)  # ε unknown until it sees the task
    with pytest.raises(ConfigError, match="agent\\.eps"):
        blind.act(torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="observation shape"):
        EgEOT(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)), cfg.agent)


@pytest.mark.parametrize("sampler", ["ula", "mala"])
def test_non_finite_energy_stops_with_the_sampler_and_its_step(sampler):
    agent, task = _agent(f"agent.sampler={sampler}")
    with torch.no_grad():
        agent.net[-1].bias.fill_(float("nan"))
    with pytest.raises(SamplerError, match=f"sampler '{sampler}', step 0"):
        agent.act(task.contexts("test")["obs"][:8])
    with pytest.raises(SamplerError, match=f"sampler '{sampler}'"):
        agent.update(task.contexts("train", 8, np.random.default_rng(0)))
    assert agent.num_updates == 0  # the failed update took no step


TINY_BUFFERED_MALA = ("agent.sampler=mala", "agent.step_size=0.001", "agent.init=buffer", "agent.buffer_size=64",
                      "agent.n_sampling_steps=5", "agent.width=16", "agent.n_eval_steps=20", "agent.adapt_updates=2")


def test_update_reports_its_metrics_adapts_mala_and_round_trips_a_checkpoint():
    torch.manual_seed(0)
    agent, task = _agent(*TINY_BUFFERED_MALA)
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(4):
        metrics = agent.update(task.contexts("train", 32, rng))
        steps.append(float(metrics["step_size"]))
    assert set(metrics) == set(agent.metric_names) and all(math.isfinite(float(v)) for v in metrics.values())
    assert steps[0] > 0.001 and steps[1] > steps[0]  # a tiny step is accepted almost always: it grows ...
    assert steps[3] == steps[2] == steps[1]  # ... during the first adapt_updates = 2 updates only
    assert int(agent.n_chains) == 4 * 32
    other, _ = _agent(*TINY_BUFFERED_MALA)
    obs = task.contexts("test")["obs"][:16]
    assert not torch.equal(other.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    other.load_checkpoint_state(agent.checkpoint_state())
    torch.testing.assert_close(other.act(obs, deterministic=True), agent.act(obs, deterministic=True), rtol=0, atol=0)
    assert other.step == agent.step and torch.equal(other.chains, agent.chains)
    torch.manual_seed(1)
    a = agent.act(obs)
    torch.manual_seed(1)
    torch.testing.assert_close(other.act(obs), a, rtol=0, atol=0)


def test_short_training_run_through_the_cli_learns_the_plan(tmp_path, capsys):
    """d = 2, ε = 1: 100 updates of 256 contexts bring the sampled plan's BW2-UVP from ~40% (f = 0: the
    chains sample N(x, εI)) to a few %; the run goes through `rl-energy train` and the contexts loop."""
    run = tmp_path / "egeot"
    args = ["train", "--agent", "egeot", "--env", ENV_ID, "--run-dir", str(run), "--quiet",
            "--set", "train.total_steps=25600", "--set", "train.eval_every=0", "--set", "train.log_every=12800",
            "--set", "env_kwargs.n_test=2048", "--set", "agent.lr_decay_updates=100", "--set", "agent.width=64",
            "--set", "agent.depth=2",
            "--set", "agent.n_sampling_steps=20", "--set", "agent.n_eval_steps=100", "--set", "train.seed=0"]
    assert main(args) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert final.startswith("final test: eval_return_mean") and "(2048 test contexts, sampled)" in final
    learned = float(final.split("bw2_uvp ")[1].split()[0])
    agent, task = _agent("agent.width=64", "agent.depth=2", "agent.n_eval_steps=100", env={"n_test": 2048})
    torch.manual_seed(0)
    before = task.metrics(task.contexts("test"), agent.act(task.contexts("test")["obs"]))["bw2_uvp"]
    assert before > 20 and learned < 6, (before, learned)
