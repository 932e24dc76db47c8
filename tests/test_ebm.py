"""EnergyMixture-v0 and the EBM trainer (agents/ebm.py): exact target, Jarzynski weights, losses, errors."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rl_energy  # noqa: F401  (registers the envs)
from rl_energy.agents.ebm import EBMConfig, EBMTrainer
from rl_energy.config import resolve_config
from rl_energy.envs.tasks.energy_mixture import EnergyMixtureTask
from rl_energy.errors import ConfigError
from rl_energy.samplers import SamplerError
from rl_energy.trainer import make_trainer

ENV_ID = "rl_energy/EnergyMixture-v0"


def test_target_is_normalised_and_its_grid_weights_are_exact() -> None:
    task = EnergyMixtureTask()
    points, area = task.grid(400)
    assert float(task.log_prob(points).exp().sum() * area) == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(task.grid_mode_weights(task.energy), task.weights, atol=1e-4)
    assert task.grid_kl(task.energy) == pytest.approx(0.0, abs=1e-9)
    # a wrong energy is caught: equal weights give w1 = 0.5 and a positive KL
    equal = EnergyMixtureTask(weights=(0.5, 0.5))
    assert float(task.grid_mode_weights(equal.energy)[0]) == pytest.approx(0.5, abs=1e-3)
    assert task.grid_kl(equal.energy) > 0.05


def test_exact_samples_score_well_and_wrong_ones_do_not() -> None:
    task = EnergyMixtureTask()
    test = task.contexts("test")
    gen = torch.Generator().manual_seed(0)
    good = task.metrics(test, task.sample(4096, gen))
    assert good["w_err"] < 0.02 and abs(good["w1"] - 0.2) < 0.02 and abs(good["mmd"]) < 2e-3
    bad = task.metrics(test, EnergyMixtureTask(weights=(0.5, 0.5)).sample(4096, gen))
    assert bad["w_err"] > 0.25 and bad["mmd"] > 0.01


def test_gym_side_rewards_log_density_and_gives_a_draw() -> None:
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=0)
    assert obs.shape == (1,) and info["target"].shape == (2,)
    a = np.array([2.0, 0.0], dtype=np.float32)  # the first mode (weight 0.2) sits at (radius, 0)
    _, r, term, trunc, _ = env.step(a)
    assert term and not trunc
    expected = math.log(0.2 / (2 * math.pi * 0.25) + 0.8 / (2 * math.pi * 0.25) * math.exp(-16 / 0.5))
    assert r == pytest.approx(expected, abs=1e-5)
    assert env.unwrapped.sampling


@pytest.mark.parametrize("kwargs, key", [({"weights": []}, "weights"), ({"weights": [0.2, -1]}, "weights"),
                                         ({"sigma": 0}, "sigma"), ({"radius": float("nan")}, "radius"),
                                         ({"n_train": 0}, "n_train"), ({"action_bound": 1.0}, "action_bound"),
                                         ({"weights": "0.2"}, "weights")])
def test_bad_task_kwargs_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        EnergyMixtureTask(**kwargs)


def make_agent(**kw: object) -> tuple[EnergyMixtureTask, EBMTrainer]:
    task = EnergyMixtureTask()
    cfg = EBMConfig(**kw)
    cfg.validate()
    agent = EBMTrainer(task.observation_space, task.action_space, cfg)
    agent.observe_train_split(task.contexts("train"))
    return task, agent


def test_jarzynski_weights_track_a_parameter_change() -> None:
    """Walkers exact for U_0 = |x|²/2; the parameters move the mean to m; after ULA moves the Jarzynski
    weights (parameter change + discretisation term) make the weighted walkers exact for U_1 = |x - m|²/2,
    while the unweighted walkers lag behind."""
    torch.manual_seed(0)
    _, agent = make_agent(loss="jarzynski", n_walkers=20000, mcmc_steps=3, step_size=0.05, resample_threshold=0.0)
    m = torch.tensor([0.6, -0.4])
    agent.walkers.copy_(torch.randn(20000, 2))
    agent.log_w.zero_()
    agent.energy = lambda x: 0.5 * (x * x).sum(1)  # θ_k
    from rl_energy.samplers import energy_and_grad

    e_old, g_old = energy_and_grad(agent.energy, agent.walkers)
    agent.energy = lambda x: 0.5 * ((x - m) ** 2).sum(1)  # θ_k+1
    agent._jarzynski_move(e_old, g_old)
    w = torch.softmax(agent.log_w, 0)
    weighted = (w[:, None] * agent.walkers).sum(0)
    se = 1 / math.sqrt(float(1 / (w * w).sum()))
    assert torch.allclose(weighted, m, atol=4 * se), (weighted, se)
    assert not torch.allclose(agent.walkers.mean(0), m, atol=0.2)
    var = (w[:, None] * (agent.walkers - weighted) ** 2).sum(0)
    assert torch.allclose(var, torch.ones(2), atol=0.06)


def train(loss: str, updates: int, tmp_path: Path, seed: int = 0, **agent: object) -> tuple[dict, object, float]:
    """Train through the ``contexts`` loop; also returns the grid KL of the untrained model."""
    overrides = [f"agent.loss={loss}", f"train.total_steps={updates * 256}", "train.batch_size=256",
                 f"train.seed={seed}", "train.eval_every=0", "train.checkpoint_every=0", "train.torch_threads=1",
                 "agent.act_temps=20", *[f"agent.{k}={v}" for k, v in agent.items()]]
    cfg = resolve_config("ebm", ENV_ID, EBMConfig, overrides=overrides)
    trainer = make_trainer(cfg, tmp_path / loss, verbose=False)
    kl0 = trainer.task.grid_kl(trainer.agent.energy)
    return trainer.train(), trainer, kl0


@pytest.mark.slow
def test_jarzynski_recovers_the_weights_that_cd_misses(tmp_path: Path) -> None:
    """300 updates: Jarzynski-weighted CD reads w1 ≈ 0.2 on the grid; CD-k started at the data does not."""
    _, jar, _ = train("jarzynski", 300, tmp_path)
    _, cd, _ = train("cd", 300, tmp_path)
    w_jar = float(jar.task.grid_mode_weights(jar.agent.energy)[0])
    w_cd = float(cd.task.grid_mode_weights(cd.agent.energy)[0])
    assert abs(w_jar - 0.2) < 0.06, w_jar
    assert abs(w_cd - 0.2) > 2 * abs(w_jar - 0.2), (w_cd, w_jar)


@pytest.mark.parametrize("loss", ["pcd", "dsm", "nce"])
def test_every_loss_trains_and_lowers_the_data_energy(loss: str, tmp_path: Path) -> None:
    result, trainer, kl0 = train(loss, 60, tmp_path)
    assert set(trainer.agent.metric_names) <= set(trainer.last_metrics)
    assert math.isfinite(result["w1"]) and math.isfinite(result["eval_return_mean"])
    # the model puts more mass near the data than at the start: the grid KL from the target falls
    assert trainer.task.grid_kl(trainer.agent.energy) < 0.7 * kl0


def test_walkers_and_weights_are_in_the_checkpoint() -> None:
    _, agent = make_agent(loss="jarzynski", n_walkers=64)
    state = agent.checkpoint_state()["modules"]
    assert state["walkers"].shape == (64, 2) and state["log_w"].shape == (64,)


@pytest.mark.parametrize("key, value", [("loss", "ml"), ("step_size", 0), ("step_size", -0.1),
                                        ("step_size", float("nan")), ("step_size", 1e6), ("step_size", "a"),
                                        ("mcmc_steps", 0), ("n_walkers", 1), ("n_walkers", 2.5), ("hidden", []),
                                        ("restart_prob", 1.5), ("lr", float("inf")), ("sampler", "hmc"),
                                        ("act_temps", 0), ("base_scale", -1)])
def test_bad_agent_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        resolve_config("ebm", ENV_ID, EBMConfig, overrides=[f"agent.{key}={value}"])


def test_a_non_finite_energy_stops_sampling_with_the_sampler_and_step() -> None:
    task, agent = make_agent(loss="pcd")
    with torch.no_grad():
        agent.f[-1].bias.fill_(float("nan"))
    with pytest.raises(SamplerError, match=r"sampler '(ula|smc)', step \d+"):
        agent.update(task.contexts("train", 32, np.random.default_rng(0)))


def test_ebflow_runs_as_an_amortised_sampler(tmp_path: Path) -> None:
    from rl_energy.agents.ebflow import EBFlowConfig

    cfg = resolve_config("ebflow", ENV_ID, EBFlowConfig,
                         overrides=["train.total_steps=640", "train.eval_every=0", "train.checkpoint_every=0",
                                    "train.compile=false", "train.torch_threads=1"])
    assert cfg.agent.alpha == 1.0 and not cfg.agent.autotune
    result = make_trainer(cfg, tmp_path / "ebflow", verbose=False).train()
    assert 0.0 <= result["w1"] <= 1.0 and math.isfinite(result["mmd"])
