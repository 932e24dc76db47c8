"""HierPoly-v0 (h = g∘p, Wang, Nichani & Lee, ICLR 2024; digest §10) and the layer-wise three-layer net."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tensordict import TensorDict

import rl_energy.envs  # noqa: F401  (registers the envs)
from rl_energy.agents.layerwise import LayerwiseConfig, LayerwiseNet
from rl_energy.config import resolve_config
from rl_energy.envs.tasks.hierpoly import HierPolyTask, link, pearson
from rl_energy.errors import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    """One PyTorch thread: these small matrix products only lose time to thread handoffs (and the
    machine may be shared); the previous setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ the task
def test_check_env_passes():
    env = gym.make("rl_energy/HierPoly-v0", d=6, n_train=256, n_test=64)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.unwrapped.action_space.shape == (1,)
    assert np.isfinite(env.unwrapped.action_space.high).all()  # bounded, for step agents


def test_batched_score_equals_step_reward():
    task = HierPolyTask(d=6, n_train=256, n_test=64, data_seed=3)
    obs, info = task.reset(seed=11)
    action = np.array([0.7], dtype=np.float32)
    _, reward, terminated, _, info = task.step(action)
    assert terminated
    batch = TensorDict({"obs": torch.as_tensor(obs)[None], "target": torch.as_tensor(info["target"])[None]},
                       batch_size=[1])
    assert float(task.score(batch, torch.tensor([[0.7]]))[0]) == pytest.approx(reward, rel=1e-6)
    assert float(info["target"][0]) == pytest.approx(float(task.h(torch.as_tensor(obs)[None])[0]), rel=1e-5)
    assert reward == pytest.approx(-(0.7 - float(info["target"][0])) ** 2, rel=1e-5)
    # the batched side: the same rewards for a batch of contexts
    ctx = task.contexts("train", 32, np.random.default_rng(0))
    act = torch.randn(32, 1)
    torch.testing.assert_close(task.score(ctx, act), -(act[:, 0] - ctx["target"][:, 0]) ** 2)


def test_test_split_fixed_by_data_seed():
    a = HierPolyTask(d=6, n_train=100, data_seed=5).contexts("test")
    b = HierPolyTask(d=6, n_train=900, data_seed=5).contexts("test")  # n_train does not move the test split
    c = HierPolyTask(d=6, data_seed=6).contexts("test")
    torch.testing.assert_close(a["obs"], b["obs"])
    torch.testing.assert_close(a["target"], b["target"])
    assert not torch.equal(a["obs"], c["obs"])
    assert a["obs"].dtype == torch.float32 and a["target"].shape == (4096, 1)


def test_p_has_unit_variance_and_h_is_normalised():
    torch.manual_seed(0)
    x = torch.randn(200_000, 8)
    task = HierPolyTask(d=8, g="he1_he2")
    p = task.p(x).double()
    assert float(p.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(p.var()) == pytest.approx(1.0, abs=0.05)
    ep3, ep4 = task.p_moments()  # exact moments against Monte Carlo
    assert ep3 == pytest.approx(0.0, abs=1e-9)  # p is odd for k = 3
    assert float((p**4).mean()) == pytest.approx(ep4, rel=0.1)
    assert float(task.h(x).double().var()) == pytest.approx(1.0, abs=0.1)
    even = HierPolyTask(d=5, k=2, g="he1_he2")  # k = 2: E p³ != 0 enters the normalisation
    pe = even.p(x[:, :5]).double()
    assert even.p_moments()[0] == pytest.approx(float((pe**3).mean()), abs=0.1)
    assert float(even.h(x[:, :5]).double().var()) == pytest.approx(1.0, abs=0.05)
    assert float(link("he2", torch.tensor(1.0))) == 0.0


def test_metrics():
    task = HierPolyTask(d=6, n_test=512)
    test = task.contexts("test")
    perfect = task.metrics(test, test["target"])
    assert perfect["rel_mse"] == pytest.approx(0.0, abs=1e-9) and perfect["corr"] == pytest.approx(1.0)
    constant = task.metrics(test, torch.full_like(test["target"], float(test["target"].mean())))
    assert constant["rel_mse"] == pytest.approx(1.0, rel=1e-5)
    assert set(perfect) == set(task.metric_names)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"d": 2, "k": 3}, "'k'"), ({"n_train": 0}, "'n_train'"), ({"d": 8.5}, "'d'"), ({"g": "cubic"}, "'g'"),
    ({"data_seed": -1}, "'data_seed'"), ({"n_test": 1}, "'n_test'"), ({"action_bound": 0.0}, "'action_bound'"),
    ({"k": True}, "'k'"), ({"d": 200, "k": 4}, "'d'"),
])
def test_bad_kwargs_name_the_kwarg(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HierPolyTask(**kwargs)


# ---------------------------------------------------------------------------------------- the agent
def train_agent(d: int, ratio: float, g: str, seed: int = 0, mode: str = "layerwise", updates: int = 300,
                batch: int = 512) -> tuple[LayerwiseNet, HierPolyTask]:
    torch.manual_seed(seed)
    task = HierPolyTask(d=d, g=g, n_train=round(ratio * d**3), n_test=2048, data_seed=seed)
    cfg = LayerwiseConfig(mode=mode, stage1_updates=updates)
    cfg.validate()
    agent = LayerwiseNet(task.observation_space, task.action_space, cfg)
    agent.observe_train_split(task.contexts("train"))
    rng = np.random.default_rng(seed)
    for _ in range(updates + 1):
        metrics = agent.update(task.contexts("train", batch, rng))
    assert set(metrics) == set(agent.metric_names) and all(v.dim() == 0 for v in metrics.values())
    return agent, task


def scores(agent: LayerwiseNet, task: HierPolyTask) -> tuple[float, float]:
    test = task.contexts("test")
    rel = task.metrics(test, agent.act(test["obs"], deterministic=True))["rel_mse"]
    return rel, pearson(agent.feature(test["obs"]), task.latent("test"))


def test_layerwise_learns_h_and_stage1_recovers_p():
    # measured (seeds 0-2): relMSE 0.40-0.52, corr(feature, p) 0.73-0.87; untrained: relMSE 1, corr 0
    agent, task = train_agent(d=6, ratio=16, g="he1_he2")
    untrained = LayerwiseNet(task.observation_space, task.action_space, agent.config)
    rel0, corr0 = scores(untrained, task)
    assert rel0 == pytest.approx(1.0, abs=0.05) and corr0 == 0.0  # W = 0: constant output, zero feature
    rel, corr = scores(agent, task)
    assert rel < 0.7
    assert corr > 0.6


def test_he2_negative_control_does_not_recover_p():
    # g = He_2 has no linear term: the degree-3 projection of h is 0 (measured |corr| <= 0.2 at d = 12,
    # while g = z + He_2/sqrt 2 gives about 0.65 at this size)
    agent, task = train_agent(d=12, ratio=4, g="he2", seed=1)
    rel, corr = scores(agent, task)
    assert abs(corr) < 0.35
    assert rel > 0.6


def test_checkpoint_round_trip():
    for mode in ("layerwise", "end_to_end"):
        agent, task = train_agent(d=5, ratio=4, g="he1_he2", mode=mode, updates=20, batch=64)
        torch.manual_seed(123)
        fresh = LayerwiseNet(task.observation_space, task.action_space, agent.config)
        obs = task.contexts("test")["obs"][:256]
        assert not torch.equal(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))
        fresh.load_checkpoint_state(agent.checkpoint_state())
        torch.testing.assert_close(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True),
                                   rtol=0, atol=0)
        assert fresh.num_updates == agent.num_updates == 21


def test_stage2_without_train_split_accumulates_batches():
    torch.manual_seed(0)
    task = HierPolyTask(d=5, n_train=500, n_test=256)
    agent = LayerwiseNet(task.observation_space, task.action_space, LayerwiseConfig(stage1_updates=5,
                                                                                    stage2_updates=3))
    rng = np.random.default_rng(0)
    for _ in range(8):
        out = agent.update(task.contexts("train", 100, rng))
    assert float(out["stage"]) == 2 and not bool(agent.full_fit)
    assert float(agent.gram[-1, -1]) == 300  # three batches of 100 in the normal equations
    assert torch.isfinite(agent.act(task.contexts("test")["obs"])).all()


def test_config_errors_name_the_key():
    for key, value in (("ridge", -1), ("mode", "sideways"), ("stage1_updates", 0), ("width", 7)):
        with pytest.raises(ConfigError, match=f"agent.{key}"):
            resolve_config("layerwise", "rl_energy/HierPoly-v0", LayerwiseConfig, overrides=[f"agent.{key}={value}"])
    cfg = resolve_config("layerwise", "rl_energy/HierPoly-v0", LayerwiseConfig)
    a = cfg.agent
    assert cfg.train.total_steps == cfg.train.batch_size * (a.stage1_updates + a.stage2_updates)


def test_trains_through_the_contexts_loop(tmp_path):
    from rl_energy.trainer import make_trainer

    overrides = ["env_kwargs.d=5", "env_kwargs.n_train=500", "env_kwargs.n_test=256", "agent.stage1_updates=30",
                 "train.batch_size=128", f"train.total_steps={128 * 31}", "train.eval_every=0",
                 "train.log_every=1024", "train.checkpoint_every=0", "train.device=cpu"]
    cfg = resolve_config("layerwise", "rl_energy/HierPoly-v0", LayerwiseConfig, overrides=overrides)
    result = make_trainer(cfg, tmp_path / "run", verbose=False).train()
    assert {"rel_mse", "corr", "eval_return_mean"} <= set(result)
    assert math.isfinite(result["rel_mse"]) and result["rel_mse"] < 1.5
