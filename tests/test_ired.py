"""IRED (Du, Mao & Tenenbaum, ICML 2024; digest §9): the matrix reasoning tasks and the energy-diffusion agent."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import rl_energy.envs  # noqa: F401  (registers the envs)
from rl_energy.agents.ired import IRED, IREDConfig, cosine_schedule
from rl_energy.config import resolve_config
from rl_energy.envs.tasks.matrix_reasoning import MatrixCompletionTask, MatrixInverseTask
from rl_energy.errors import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_agent(task, **kwargs) -> IRED:
    kwargs.setdefault("hidden", [64, 64])
    cfg = IREDConfig(**kwargs)
    cfg.validate()
    agent = IRED(task.observation_space, task.action_space, cfg)
    agent.observe_train_split(task.contexts("train"))
    return agent


def train(agent: IRED, task, updates: int, batch: int = 128, seed: int = 0) -> None:
    data = task.contexts("train")
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        agent.update(data[torch.as_tensor(rng.integers(len(data), size=batch))])


# ------------------------------------------------------------------------------------------ the tasks
def test_registered_tasks_pass_check_env():
    for env_id in ("rl_energy/MatrixInverse-v0", "rl_energy/MatrixCompletion-v0"):
        task = gym.make(env_id, n_train=64, n_test=16).unwrapped
        check_env(task, skip_render_check=True)
        assert np.isfinite(task.action_space.high).all()


def test_inverse_reward_is_zero_at_the_inverse_and_negative_elsewhere():
    task = MatrixInverseTask(n_train=64, n_test=256)
    data = task.contexts("test")
    exact = task.score(data, data["target"])
    assert exact.abs().max() < 1e-6
    rng = torch.Generator().manual_seed(0)
    for perturbed in (data["target"] + 0.01 * torch.randn(data["target"].shape, generator=rng),
                      torch.zeros_like(data["target"]), data["target"] * 1.1):
        assert (task.score(data, perturbed) < -1e-8).all()
    # label-free: the reward reads only A (obs), never the label
    no_label = data.clone()
    no_label["target"] = torch.full_like(data["target"], float("nan"))
    assert torch.equal(task.score(no_label, data["target"]), exact)
    # the batched score equals the gymnasium step's reward
    env = gym.make("rl_energy/MatrixInverse-v0", n_train=32, n_test=8)
    obs, info = env.reset(seed=1)
    a = obs.reshape(5, 5)
    _, reward, terminated, _, _ = env.step(np.linalg.inv(a).reshape(-1))
    assert terminated and reward <= 0 and abs(reward) < 1e-6
    _, reward, _, _, _ = env.step(np.zeros(25, dtype=np.float32))
    assert reward == pytest.approx(-5 / 25)


def test_hard_split_is_harder_and_inside_the_box():
    hard = MatrixInverseTask(n_train=2000, n_test=2000)
    same = MatrixInverseTask(n_train=2000, n_test=2000, test_split="same")
    c_train, c_hard = hard.condition_numbers("train"), hard.condition_numbers("test")
    c_same = same.condition_numbers("test")
    assert c_hard.median() > 2.5 * c_train.median()
    assert c_same.median() == pytest.approx(float(c_train.median()), rel=0.1)
    assert hard.contexts("test")["target"].abs().max() > 3 * hard.contexts("train")["target"].abs().max()
    for task in (hard, same):
        for split in ("train", "test"):
            assert task.contexts(split)["target"].abs().max() <= task.action_space.high[0]
    # splits are fixed functions of data_seed, and the test split does not depend on n_train
    again = MatrixInverseTask(n_train=10, n_test=2000)
    assert torch.equal(again.contexts("test")["obs"], hard.contexts("test")["obs"])
    other = MatrixInverseTask(n_train=10, n_test=2000, data_seed=1)
    assert not torch.equal(other.contexts("test")["obs"], hard.contexts("test")["obs"])


def test_completion_task_masks_and_harder_split():
    task = MatrixCompletionTask(n_train=2000, n_test=2000)
    train, test = task.contexts("train"), task.contexts("test")
    d = task.n * task.n
    mask = train["obs"][:, d:]
    assert set(mask.unique().tolist()) == {0.0, 1.0} and abs(float(mask.mean()) - 0.5) < 0.02
    assert torch.equal(train["obs"][:, :d], train["target"] * mask)  # hidden entries read as 0
    assert test["target"].std() > 3 * train["target"].std()
    assert test["target"].abs().max() < task.action_space.high[0]
    assert task.score(test, test["target"]).abs().max() == 0
    assert (task.score(test, test["target"] + 0.1) < 0).all()
    m = task.metrics(test, test["obs"][:, :d])  # observed entries right, hidden ones 0
    assert m["mse_hidden"] == pytest.approx(float((test["target"] ** 2 * (1 - test["obs"][:, d:])).sum()
                                                 / (1 - test["obs"][:, d:]).sum()), rel=1e-5)


@pytest.mark.parametrize("cls,kwargs,key", [
    (MatrixInverseTask, {"n": 0}, "'n'"), (MatrixInverseTask, {"ridge": -1.0}, "'ridge'"),
    (MatrixInverseTask, {"test_split": "ood"}, "'test_split'"),
    (MatrixInverseTask, {"action_bound": 0}, "'action_bound'"),
    (MatrixCompletionTask, {"rank": 0}, "'rank'"), (MatrixCompletionTask, {"noise": -0.1}, "'noise'"),
    (MatrixCompletionTask, {"hard_scale": "x"}, "'hard_scale'"),
])
def test_task_kwargs_are_validated(cls, kwargs, key):
    with pytest.raises(ValueError, match=key):
        cls(**kwargs)


# ------------------------------------------------------------------------------------------ the agent
def test_cosine_schedule_anneals_from_smooth_to_sharp():
    beta, abar = cosine_schedule(10)
    assert abar.shape == (10,) and (abar[1:] < abar[:-1]).all()
    assert abar[0] > 0.9 and abar[-1] < 0.01
    _, single = cosine_schedule(1)
    assert single.shape == (1,) and float(single[0]) == pytest.approx(float(abar[0]))


def plain_descent(agent: IRED, x, z, k: int, scale: float, steps: int) -> torch.Tensor:
    """Energies along ``steps`` gradient steps with the agent's clamp but no rejection ``[steps, B]``."""
    levels = torch.full((x.shape[0],), k)
    out = []
    for _ in range(steps):
        with torch.enable_grad():
            zz = z.clone().requires_grad_(True)
            e = agent.energy(x, zz, levels)
            (g,) = torch.autograd.grad(e.sum(), zz)
        out.append(e.detach())
        z = agent._clamp(z - scale * agent.eta[k] * g, levels)
    return torch.stack(out)


def test_descent_never_accepts_an_uphill_step_and_more_steps_never_raise_the_energy():
    torch.manual_seed(0)
    task = MatrixInverseTask(n_train=512, n_test=64)
    agent = small_agent(task)
    train(agent, task, 20)
    x = agent.norm_obs(task.contexts("test")["obs"])
    z0 = torch.randn(x.shape[0], agent.action_dim, generator=torch.Generator().manual_seed(0))
    k = 0
    levels = torch.full((x.shape[0],), k)
    # large steps, so that the test is meaningful: without the rejection they go uphill somewhere
    for scale in (30.0, 100.0, 300.0, 1000.0):
        plain = plain_descent(agent, x, z0, k, scale, 15)
        if (plain[1:] > plain[:-1]).any():
            break
    assert (plain[1:] > plain[:-1]).any()
    agent.config.step_scale = scale
    path: list[torch.Tensor] = []
    with torch.no_grad():
        agent.descend(x, z0, k, 15, trace=path)
    energies = torch.stack(path)
    assert energies.shape == (16, x.shape[0])
    assert (energies[1:] <= energies[:-1]).all()
    finals = [agent.energy(x, agent.descend(x, z0, k, s)[0], levels).detach() for s in (0, 2, 8)]
    assert (finals[1] <= finals[0]).all() and (finals[2] <= finals[1]).all()
    assert (finals[2] < finals[0]).any()
    # the whole annealed inference: non-increasing energy within every landscape, fixed and adaptive
    for inference in ("fixed", "adaptive"):
        out = agent.infer(task.contexts("test")["obs"], 6, inference, trace=True)
        assert len(out.trace) == agent.config.landscapes
        for _, e_path in out.trace:
            assert (e_path[1:] <= e_path[:-1]).all()


def test_adaptive_inference_spends_at_most_the_cap_and_fixed_spends_exactly_the_budget():
    task = MatrixInverseTask(n_train=512, n_test=64)
    agent = small_agent(task)
    train(agent, task, 20)
    obs = task.contexts("test")["obs"]
    fixed = agent.infer(obs, 4, "fixed")
    assert fixed.steps == pytest.approx(4 * agent.config.landscapes)
    adaptive = agent.infer(obs, 12, "adaptive")
    assert 0 < adaptive.steps <= 12 * agent.config.landscapes
    none = agent.infer(obs, 0, "fixed")
    assert none.steps == 0 and none.pred.shape == obs.shape


def test_short_training_beats_the_trivial_predictor_and_the_untrained_net():
    task = MatrixInverseTask(n=3, n_train=8192, n_test=256, test_split="same")
    test = task.contexts("test")
    trivial = task.metrics(test, task.contexts("train")["target"].mean(0).expand_as(test["target"]))["mse"]
    torch.manual_seed(0)
    agent = small_agent(task, hidden=[128, 128], lr=3e-3, lr_decay_updates=600)
    untrained = task.metrics(test, agent.act(test["obs"], deterministic=True))["mse"]
    train(agent, task, 600)
    trained = task.metrics(test, agent.act(test["obs"], deterministic=True))["mse"]
    assert trained < 0.2 * trivial and trained < 0.2 * untrained  # measured 0.008 vs 0.127 (trivial)
    ff = small_agent(task, mode="feedforward", hidden=[128, 128], lr=3e-3, lr_decay_updates=600)
    train(ff, task, 600)
    assert task.metrics(test, ff.act(test["obs"], deterministic=True))["mse"] < 0.2 * trivial


@pytest.mark.parametrize("key,value", [
    ("landscapes", 0), ("mode", "diffusion"), ("inference", "greedy"), ("hidden", []), ("lr", 0.0),
    ("contrastive_scale", -1.0), ("steps_per_landscape", -1), ("max_steps_per_landscape", 0), ("activation", "sine"),
])
def test_bad_config_values_raise_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        resolve_config("ired", "rl_energy/MatrixInverse-v0", IREDConfig, overrides=[f"agent.{key}={value}"])


def test_packaged_configs_resolve():
    for env_id in ("rl_energy/MatrixInverse-v0", "rl_energy/MatrixCompletion-v0"):
        cfg = resolve_config("ired", env_id, IREDConfig)
        assert cfg.agent.landscapes == 10 and cfg.agent.hidden == [256, 256, 256]
        assert cfg.env_kwargs["test_split"] == "hard"


def test_checkpoint_round_trip_gives_identical_deterministic_actions():
    task = MatrixCompletionTask(n_train=512, n_test=32)
    obs = task.contexts("test")["obs"]
    for mode in ("ired", "feedforward"):
        agent = small_agent(task, mode=mode)
        train(agent, task, 5)
        a1 = agent.act(obs, deterministic=True)
        assert torch.equal(a1, agent.act(obs, deterministic=True))  # deterministic means reproducible
        buf = io.BytesIO()
        torch.save(agent.checkpoint_state(), buf)
        buf.seek(0)
        fresh = IRED(task.observation_space, task.action_space, agent.config)
        assert not torch.equal(fresh.act(obs, deterministic=True), a1)
        fresh.load_checkpoint_state(torch.load(buf, weights_only=False))
        assert torch.equal(fresh.act(obs, deterministic=True), a1)
        assert (a1.abs() <= task.action_space.high[0]).all()


def test_langevin_acts_are_stochastic_and_finite():
    task = MatrixInverseTask(n_train=256, n_test=16)
    agent = small_agent(task, temperature=0.01, steps_per_landscape=2, inference="fixed")
    obs = task.contexts("test")["obs"]
    a, b = agent.act(obs), agent.act(obs)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
