"""The training loop under Gymnasium 1.x autoreset, seeding, the NaN guard and checkpoints."""

import csv

import pytest
import torch

from rl_energy.agents.sac import SAC
from rl_energy.checkpoint import load_checkpoint
from rl_energy.trainer import Trainer, TrainingError
from tests.conftest import quick_config


def rows(run_dir):
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("num_envs", [1, 3])
def test_truncation_stores_true_final_obs_and_termination_flags(tmp_path, num_envs):
    # even episodes terminate at t=4, odd ones are truncated by the TimeLimit at t=7
    cfg = quick_config(total_steps=200, num_envs=num_envs)
    cfg.env_kwargs = {"terminate_at": 4, "even_terminate": True}
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    trainer.train()
    assert 200 <= trainer.step < 200 + num_envs  # reset steps are not counted

    batch = trainer.buffer.sample(4096)
    obs, nxt, term = batch["obs"], batch["next_obs"], batch["terminated"]
    assert torch.equal(nxt[:, 0], obs[:, 0])  # never crosses into the next episode (no reset transition)
    assert torch.equal(nxt[:, 1], obs[:, 1] + 1)
    even = obs[:, 0] % 2 == 0
    assert torch.equal(term, even & (nxt[:, 1] == 4))  # terminated only at termination
    truncated_final = ~even & (nxt[:, 1] == 7)
    assert truncated_final.any() and not term[truncated_final].any()  # truncation: true final obs, bootstrapped
    assert (batch["action"].abs() <= 1).all()  # agent-side actions are in [-1, 1]; env saw [-2, 2]

    for r in rows(tmp_path / "run"):  # reward is 1 per step: an episode's return is its length
        if r["episode_return"]:
            assert float(r["episode_return"]) == pytest.approx(float(r["episode_length"]))


def test_sac_target_bootstraps_on_truncation_not_on_termination():
    import gymnasium as gym

    from rl_energy.agents.sac import SACConfig

    box = gym.spaces.Box(-1, 1, (2,))
    agent = SAC(box, box, SACConfig(hidden=[16]))
    reward = torch.tensor([1.0, 1.0])
    next_obs = torch.ones(2, 2)
    alpha = torch.tensor(0.2)
    torch.manual_seed(0)
    y = agent.soft_target(reward, next_obs, torch.tensor([True, False]), alpha)
    assert y[0] == 1.0  # terminated: no bootstrap
    torch.manual_seed(0)
    a, logp = agent.actor.sample(next_obs)
    q = agent.critic_target(torch.cat([next_obs, a], -1)).squeeze(-1).min(0).values
    expected = 1.0 + 0.99 * (q[1] - 0.2 * logp[1])
    torch.testing.assert_close(y[1], expected)  # truncated/ongoing: bootstrap from the target critics
    assert y[1] != 1.0


def test_same_seed_same_run(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = quick_config(total_steps=200, seed=5)
        Trainer(cfg, tmp_path / name, verbose=False).train()
        runs.append([{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in rows(tmp_path / name)])
    assert runs[0] == runs[1]


def test_nan_reward_stops_with_step_and_quantity_and_checkpoints(tmp_path):
    cfg = quick_config(total_steps=300)
    cfg.env_kwargs = {"nan_at": 120}
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    with pytest.raises(TrainingError, match=r"step \d+: non-finite observation/reward"):
        trainer.train()
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert 100 <= state["step"] <= 120


def test_nan_loss_stops_before_the_bad_update_reaches_the_parameters(tmp_path, monkeypatch):
    cfg = quick_config(total_steps=300)
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    agent = trainer.agent
    original = agent.critic.forward
    calls = {"n": 0}

    def poisoned(x, detach_params=False):
        out = original(x, detach_params)
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 200 else out

    monkeypatch.setattr(agent.critic, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"stopped at step \d+: non-finite critic_loss"):
        trainer.train()
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints")
    params = state["agent"]["modules"]
    assert all(torch.isfinite(v).all() for v in params.values() if v.is_floating_point())
    assert state["step"] > 50


@pytest.mark.parametrize("agent", ["sac", "ebflow"])
def test_save_load_round_trip_gives_identical_actions(tmp_path, agent):
    cfg = quick_config(agent, total_steps=150)
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    trainer.train()
    obs = torch.randn(64, 2)
    fresh = Trainer(cfg, tmp_path / "run2", verbose=False).agent
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints")
    fresh.load_checkpoint_state(state["agent"])
    torch.testing.assert_close(fresh.act(obs, deterministic=True), trainer.agent.act(obs, deterministic=True),
                               rtol=0, atol=0)
    torch.manual_seed(1)
    a = trainer.agent.act(obs)
    torch.manual_seed(1)
    b = fresh.act(obs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, fresh.act(obs))  # the stochastic policy does sample


def test_compile_is_recorded_only_for_agents_that_compile(tmp_path):
    trainer = Trainer(quick_config("sac", compile="true"), tmp_path, verbose=False)
    assert trainer.cfg.resolved["compile"] is False  # SAC has nothing to compile: config.yaml says so
    assert "compile: false" in (tmp_path / "config.yaml").read_text()
    trainer.envs.close()
    trainer.eval_envs.close()
