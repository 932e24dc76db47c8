"""TD stability analysis (Fellows et al. 2023) on Baird's counterexample, the Baird env, and the PFPE agent."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tensordict import TensorDict

from rl_energy.analysis import td_stability as td
from rl_energy.checkpoint import load_checkpoint
from rl_energy.cli import main
from rl_energy.config import ConfigError, resolve_config
from rl_energy.envs.baird import BEHAVIOUR_POLICY, INIT_WEIGHTS, TARGET_POLICY, BairdEnv
from rl_energy.registry import get_agent
from rl_energy.trainer import Trainer

W0 = np.array(INIT_WEIGHTS)


@pytest.fixture(scope="module")
def baird():
    mdp = BairdEnv().linear_mdp()
    return mdp, td.td_matrices(mdp)


def random_mdp(rng, states=6, actions=3, features=4, on_policy=False) -> td.LinearMDP:
    p = rng.dirichlet(np.ones(states), size=(states, actions))
    mu = rng.dirichlet(np.ones(actions), size=states)
    pi = mu if on_policy else rng.dirichlet(np.ones(actions), size=states)
    if on_policy:  # d = the stationary distribution of μ: on-policy TD is stable (Tsitsiklis & Van Roy)
        p_mu = np.einsum("sa,sat->st", mu, p)
        vals, vecs = np.linalg.eig(p_mu.T)
        d = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1))]))
        d /= d.sum()
    else:
        d = rng.dirichlet(np.ones(states))
    return td.LinearMDP(rng.normal(size=(states, features)), rng.normal(size=(states, actions)), p, mu, pi, d, 0.9)


# ------------------------------------------------------------------------------------------ analysis
def test_baird_td_jacobian_has_eigenvalues_with_positive_real_part(baird):
    _, mats = baird
    real = np.sort(np.linalg.eigvals(mats.j_td).real)
    assert real.max() > 0.2  # TD's expected dynamics are unstable: it diverges
    np.testing.assert_allclose(real[-2:], [0.0222, 0.2393], atol=1e-4)  # digest §4
    np.testing.assert_allclose(real[:5], -4 / 7, atol=1e-4)
    assert td.spectral_radius(mats.on_range(mats.j_fpe)) == pytest.approx(0.99, abs=1e-9)


def test_baird_pfpe_radius_falls_below_one_for_large_k(baird):
    _, mats = baird
    assert td.pfpe_radius(mats, 0.01, 1) == pytest.approx(1.0 + 0.01 * 0.2393, abs=1e-5)
    assert td.pfpe_radius(mats, 0.01, 10) > 1.0
    assert td.pfpe_radius(mats, 0.01, 76) > 1.0 > td.pfpe_radius(mats, 0.01, 77)
    assert all(td.pfpe_radius(mats, 0.01, k) < 1.0 for k in (100, 500, 1000, 5000))
    assert [td.smallest_stable_k(mats, a) for a in (0.01, 0.05, 0.1)] == [77, 16, 9]  # digest §4


def test_expected_updates_diverge_for_td_and_converge_above_the_threshold(baird):
    mdp, mats = baird
    k_star = td.smallest_stable_k(mats, 0.01)
    start = td.value_error(mdp, W0)
    _, w_td = td.expected_pfpe(mats, 0.01, 1, W0, 20_000)
    assert td.value_error(mdp, w_td[-1]) > 1e15 * start
    _, w_stable = td.expected_pfpe(mats, 0.01, 100, W0, 50_000)
    assert 100 > k_star and td.value_error(mdp, w_stable[-1]) < 1e-3 * start
    # the digest's table of the (unweighted) ‖Xw‖ after 50k expected updates, given to 2-3 digits
    for k, norm in ((1, 1.2e54), (10, 9.6e42), (100, 0.013), (500, 13.2), (1000, 20.0)):
        _, w = td.expected_pfpe(mats, 0.01, k, W0, 50_000)
        assert np.linalg.norm(mdp.features @ w[-1]) == pytest.approx(norm, rel=0.05)


def brute_force_pfpe(mdp: td.LinearMDP, alpha: float, k: int, w0: np.ndarray, updates: int) -> np.ndarray:
    """The expected PFPE step written out over states, actions and next states (no Φ matrices)."""
    x, n_s, n_a = mdp.features, *mdp.rewards.shape
    w, w_bar = w0.astype(np.float64).copy(), w0.astype(np.float64).copy()
    for i in range(1, updates + 1):
        step = np.zeros_like(w)
        for s in range(n_s):
            for a in range(n_a):
                if mdp.behaviour[s, a] == 0:
                    continue
                rho = mdp.target[s, a] / mdp.behaviour[s, a]
                for s2 in range(n_s):
                    prob = mdp.state_dist[s] * mdp.behaviour[s, a] * mdp.transitions[s, a, s2]
                    delta = mdp.rewards[s, a] + mdp.gamma * x[s2] @ w_bar - x[s] @ w
                    step += prob * rho * delta * x[s]
        w = w + alpha * step
        if i % k == 0:
            w_bar = w.copy()
    return w


@pytest.mark.parametrize("k", [1, 7, 40])
def test_analysis_matches_brute_force_iteration(baird, k):
    mdp, mats = baird
    for m, w0 in ((mdp, W0), (random_mdp(np.random.default_rng(k)), np.ones(4))):
        mats = td.td_matrices(m)
        _, w = td.expected_pfpe(mats, 0.05, k, w0, 123)  # 123 updates: whole periods through M_k, then the rest
        ref = brute_force_pfpe(m, 0.05, k, w0, 123)
        assert np.abs(w[-1] - ref).max() <= 1e-8 * max(1.0, np.abs(ref).max())
        # one period is exactly M_k
        m_k, c_k = td.pfpe_map(mats, 0.05, k)
        np.testing.assert_allclose(m_k @ w0 + c_k, brute_force_pfpe(m, 0.05, k, w0, k), rtol=1e-10, atol=1e-12)


def test_on_policy_td_is_stable_and_off_policy_matrices_are_consistent():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mats = td.td_matrices(random_mdp(rng, on_policy=True))
        assert np.linalg.eigvals(mats.j_td).real.max() < 0
        np.testing.assert_allclose(mats.j_td, mats.j_delta - mats.hessian)
        np.testing.assert_allclose(mats.phi @ mats.j_fpe, mats.j_delta, atol=1e-10)  # Φ J_FPE = γΦ'


def test_condition_function_limits_and_threshold():
    rng = np.random.default_rng(1)
    for _ in range(50):  # find an instance whose fitted evaluation is a contraction (Assumption 5)
        mats = td.td_matrices(random_mdp(rng, on_policy=True, features=3))
        fpe = np.linalg.norm(mats.on_range(mats.j_fpe), 2)
        if fpe < 0.8:
            break
    assert fpe < 0.8
    alpha = 0.5 / np.linalg.eigvalsh(mats.phi).max()
    c = td.condition_function(mats, alpha, np.array([1, 2, 10, 100, 10_000]))
    assert np.all(np.diff(c) <= 1e-12)  # monotone in k
    assert c[-1] == pytest.approx(fpe, rel=1e-6)  # k -> ∞: ‖J_FPE‖
    k_star = td.condition_threshold_k(mats, alpha)
    if k_star > 1:
        assert td.condition_function(mats, alpha, k_star) == pytest.approx(1.0, abs=1e-9)
    assert td.pfpe_radius(mats, alpha, int(np.ceil(k_star))) < 1.0  # the bound is sufficient
    assert td.condition_threshold_k(td.td_matrices(BairdEnv().linear_mdp()), 0.01) is None  # ‖J_FPE‖ = 1.74


def test_sampled_updates_average_to_the_expected_update(baird):
    mdp, mats = baird
    w1 = td.sampled_pfpe(mdp, 0.01, 1, W0, 1, seeds=400_000, record_every=1, seed=3)[:, -1]
    _, w_exp = td.expected_pfpe(mats, 0.01, 1, W0, 1)
    stderr = w1.std(0) / np.sqrt(len(w1)) + 1e-12
    assert np.all(np.abs(w1.mean(0) - w_exp[-1]) < 5 * stderr)


# --------------------------------------------------------------------------------------------- env
def test_baird_env_dynamics_and_importance_ratios():
    env = gym.make("rl_energy/Baird-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, BairdEnv().features[info["state"]])
    rng = np.random.default_rng(0)
    counts = np.zeros(7)
    for _ in range(7000):
        a = int(rng.random() < BEHAVIOUR_POLICY[1])  # the behaviour policy
        obs, r, term, trunc, info = env.step(a)
        assert r == 0.0 and not term
        assert (info["state"] == 6) == (a == 1)
        assert info["importance_ratio"] == pytest.approx(TARGET_POLICY[a] / BEHAVIOUR_POLICY[a])
        counts[info["state"]] += 1
    assert np.all(np.abs(counts / counts.sum() - 1 / 7) < 0.02)  # μ keeps the state distribution uniform
    with pytest.raises(ValueError, match="dashed"):
        env.unwrapped.step(2)


# ------------------------------------------------------------------------------------------- agent
def make_cfg(env_id: str, *overrides: str):
    return resolve_config("pfpe", env_id, get_agent("pfpe").config_cls, overrides=list(overrides))


def test_pfpe_sgd_step_is_the_importance_weighted_td_step():
    cfg = make_cfg("rl_energy/Baird-v0", "agent.target_period=3")
    env = BairdEnv()
    agent = get_agent("pfpe").cls(env.observation_space, env.action_space, cfg.agent)
    x = torch.tensor(env.features, dtype=torch.float32)
    batch = TensorDict({"obs": x[[2, 4]], "action": torch.tensor([[1.0], [0.0]]), "reward": torch.zeros(2),
                        "next_obs": x[[6, 1]], "terminated": torch.zeros(2, dtype=torch.bool)}, batch_size=[2])
    w = torch.tensor(INIT_WEIGHTS, dtype=torch.float64)
    xd = x.double()
    # only the solid transition counts (ρ = 7); the dashed one has ρ = 0; the batch mean halves it
    expected = w + 0.01 * 0.5 * 7.0 * (0.99 * xd[6] @ w - xd[2] @ w) * xd[2]
    agent.update(batch)
    torch.testing.assert_close(agent.q.weight[0], expected)
    torch.testing.assert_close(agent.q_target.weight[0], w)  # frozen until k = 3 updates
    agent.update(batch)
    agent.update(batch)
    torch.testing.assert_close(agent.q_target.weight, agent.q.weight)


def test_momentum_and_polyak_targets():
    cfg = make_cfg("CartPole-v1", "agent.target_update=momentum", "agent.momentum=0.5", "agent.target_period=2")
    env = gym.make("CartPole-v1")
    agent = get_agent("pfpe").cls(env.observation_space, env.action_space, cfg.agent)
    batch = TensorDict({"obs": torch.randn(8, 4), "action": torch.randint(2, (8, 1)).float(),
                        "reward": torch.ones(8), "next_obs": torch.randn(8, 4),
                        "terminated": torch.zeros(8, dtype=torch.bool)}, batch_size=[8])
    params = lambda m: torch.cat([p.flatten() for p in m.parameters()]).clone()  # noqa: E731
    bars = [params(agent.q_target)]
    for _ in range(2):
        agent.update(batch)
        agent.update(batch)
        bars.append(params(agent.q_target))
    # w̄_1 = w_2 + μ(w̄_0 − w̄_{-1}) with w̄_{-1} = w̄_0; w̄_2 = w_4 + μ(w̄_1 − w̄_0)
    torch.testing.assert_close(bars[2], params(agent.q) + 0.5 * (bars[1] - bars[0]))
    cfg = make_cfg("CartPole-v1", "agent.target_update=polyak", "agent.tau=0.25")
    agent = get_agent("pfpe").cls(env.observation_space, env.action_space, cfg.agent)
    before = params(agent.q_target)
    agent.update(batch)
    torch.testing.assert_close(params(agent.q_target), 0.75 * before + 0.25 * params(agent.q))


def test_pfpe_through_the_trainer_follows_the_analysed_dynamics_on_baird(tmp_path):
    mdp = BairdEnv().linear_mdp()
    mats = td.td_matrices(mdp)
    for k, spread in ((1, 20.0), (200, 2.0)):
        cfg = make_cfg("rl_energy/Baird-v0", f"agent.target_period={k}", "train.total_steps=6000",
                       "train.log_every=6000")
        trainer = Trainer(cfg, tmp_path / f"k{k}", verbose=False)
        trainer.train()
        norm = float(trainer.agent.q.weight.detach().norm())
        _, w = td.expected_pfpe(mats, 0.01, k, W0, trainer.updates)
        expected = float(np.linalg.norm(w[-1]))  # k = 1: 7.6e7 after 6k updates (TD diverges); k = 200: 19
        assert expected / spread < norm < expected * spread


def test_dqn_on_cartpole_smoke_and_resume(tmp_path):
    overrides = ["train.total_steps=3000", "train.learning_starts=500", "train.eval_every=0", "train.log_every=500",
                 "train.eval_episodes=2", "train.checkpoint_every=1500", "train.buffer_size=10000"]
    cfg = make_cfg("CartPole-v1", *overrides)
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    result = trainer.train()
    assert np.isfinite(result.mean) and trainer.updates == pytest.approx(0.2 * 2500, abs=2)
    state, buffer = load_checkpoint(tmp_path / "run" / "checkpoints")
    actions = buffer["storage"]["action"][:3000]
    assert set(actions.unique().tolist()) <= {0.0, 1.0}
    cfg.train.total_steps = 4000
    resumed = Trainer(cfg, tmp_path / "run", resume=True, verbose=False)
    assert resumed.step == 3000 and resumed.updates == trainer.updates
    resumed.train()
    final, final_buffer = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert final["step"] == 4000 and final["updates"] > state["updates"]
    torch.testing.assert_close(final_buffer["storage"]["obs"][:3000], buffer["storage"]["obs"][:3000])


def test_pfpe_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="agent.target_period"):
        make_cfg("CartPole-v1", "agent.target_period=0")
    with pytest.raises(ConfigError, match="agent.behaviour_policy"):
        make_cfg("rl_energy/Baird-v0", "agent.behaviour_policy=[0.0, 1.0]", "agent.target_policy=[1.0, 0.0]")
    cfg = make_cfg("rl_energy/Baird-v0", "agent.init_weights=[1.0, 2.0]")
    with pytest.raises(ConfigError, match="agent.init_weights"):
        get_agent("pfpe").cls(BairdEnv().observation_space, BairdEnv().action_space, cfg.agent)


def test_cli_analyze_td_prints_the_table_and_writes_figures(tmp_path, capsys):
    assert main(["analyze", "td", "--env", "rl_energy/Baird-v0", "--alpha", "0.01", "--k", "1,100",
                 "--updates", "3000", "--seeds", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smallest k with rho(M_k) < 1: 77" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["100"])}
    assert rows["1"][1] == "1.00239" and rows["1"][2] == "no" and rows["100"][2] == "yes"
    assert (tmp_path / "value_error.png").stat().st_size > 0 and (tmp_path / "spectral_radius.png").is_file()
    assert main(["analyze", "td", "--env", "CartPole-v1"]) == 2
    assert "rl_energy/Baird-v0" in capsys.readouterr().err
