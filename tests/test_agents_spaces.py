"""Every registered agent on a space it accepts (SB3's "every algorithm x space" test): it builds through
its loop's factory, acts inside the action space, reports exactly its declared metrics, and survives
a checkpoint round trip with identical deterministic actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rl_energy.config import resolve_config
from rl_energy.registry import AGENTS, get_agent
from rl_energy.trainer import build_agent, collection_mode

SMALL = {"sac": ["agent.hidden=[16,16]"], "ddpg": ["agent.hidden=[16,16]"], "pfpe": ["agent.hidden=[16,16]"],
         "ebflow": ["agent.flow_hidden=[8,8]", "agent.shift_hidden=[16,16]"], "esf": ["agent.n_rotations=48"]}
ENV_KWARGS = {"rl_energy/HierPoly-v0": {"d": 4, "n_train": 256, "n_test": 128},
              "rl_energy/ImbalancedRegression-v0": {"n_train": 512, "n_test": 256},
              "rl_energy/HyperGrid-v0": {"ndim": 2, "height": 4},
              "rl_energy/EnergyMixture-v0": {"n_train": 256, "n_test": 128},
              "rl_energy/EntropicOT-v0": {"d": 2, "n_train": 256, "n_test": 128},
              "rl_energy/MatrixInverse-v0": {"n_train": 64, "n_test": 16},
              "rl_energy/Classification-v0": {"dataset": "wine"},
              "rl_energy/StructuredInterpretation-v0": {"n_train": 256, "n_test": 128},
              "rl_energy/S2EF-v0": {"n_train": 32, "n_test": 16},
              "rl_energy/Docking-v0": {"n_train": 16, "n_test": 8}}


CONTEXT_TASK = {"cisir": "rl_energy/ImbalancedRegression-v0", "ebm": "rl_energy/EnergyMixture-v0",
                "egeot": "rl_energy/EntropicOT-v0", "ired": "rl_energy/MatrixInverse-v0",
                "supervised": "rl_energy/Classification-v0", "mlff": "rl_energy/S2EF-v0", "esf": "rl_energy/Docking-v0",
                **dict.fromkeys(("sointer", "l2x", "mask_reinforce"), "rl_energy/StructuredInterpretation-v0")}
"""``contexts`` agents built for a task other than HierPoly."""


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in sorted(AGENTS):
        cls = get_agent(name).cls
        if cls.collection == "pairs":
            continue  # preference-pair agents build a language model from their env: tests/test_radpo.py
        if cls.collection == "trajectories":
            cases.append((name, "rl_energy/HyperGrid-v0"))
        elif cls.collection == "contexts":
            cases.append((name, CONTEXT_TASK.get(name, "rl_energy/HierPoly-v0")))
        elif name == "bubble_linear":
            cases.append((name, "rl_energy/BubblePosition-v0"))
        elif cls.discrete_actions:
            cases.append((name, "CartPole-v1"))
        else:
            cases += [(name, "Pendulum-v1"), (name, "rl_energy/HierPoly-v0")]  # an env, and a task as a bandit
    return cases


def _config(name: str, env_id: str):
    overrides = list(SMALL.get(name, []))
    overrides += [f"env_kwargs.{k}={v}" for k, v in ENV_KWARGS.get(env_id, {}).items()]
    if get_agent(name).cls.collection == "trajectories":
        overrides.append("agent.hidden=[16,16]")
    return resolve_config(name, env_id, get_agent(name).config_cls, overrides=overrides)


class Built:
    """An agent with what it acts on and learns from."""

    def __init__(self, name: str, env_id: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.cfg = _config(name, env_id)
        self.mode = collection_mode(name, env_id)
        self.env = gym.make(env_id, **self.cfg.env_kwargs)
        self.rng = np.random.default_rng(0)
        if self.mode == "trajectories":
            self.dag = self.env.unwrapped.dag
            self.agent = get_agent(name).cls(self.dag, self.cfg.agent, "cpu")
            self.obs = self.dag.encode(self.dag.initial_states(4))
            return
        space = self.env.observation_space
        self.agent = build_agent(self.cfg, space, self.env.action_space, torch.device("cpu"))
        if self.mode == "contexts":
            task = self.env.unwrapped
            self.agent.observe_train_split(task.contexts("train"))
            self.obs = task.contexts("test", 8, self.rng)["obs"]
        else:
            self.obs = torch.as_tensor(np.stack([space.sample() for _ in range(8)]), dtype=torch.float32)

    def act(self) -> torch.Tensor:
        if self.mode == "trajectories":
            return self.agent.forward_logits(self.obs)
        self.agent.train(False)
        torch.manual_seed(123)  # samplers (sampling tasks) act stochastically: the same draws on both sides
        return self.agent.act(self.obs, deterministic=True)

    def update(self) -> dict:
        if self.mode == "trajectories":
            from rl_energy.trajectories import sample_trajectories

            return self.agent.update(sample_trajectories(self.dag, self.agent.forward_logits, 8))
        task = self.env.unwrapped
        if self.mode == "contexts" and self.agent.uses_labels:
            return self.agent.update(task.contexts("train", 16, self.rng))
        n = 16
        obs = (task.contexts("train", n, self.rng)["obs"] if self.mode == "contexts" else
               torch.as_tensor(np.stack([self.env.observation_space.sample() for _ in range(n)]), dtype=torch.float32))
        action = self.agent.act(obs).float().reshape(n, -1)
        reward = torch.randn(n) if self.agent.collection != "contexts" else torch.randint(0, 2, (n,)).float()
        return self.agent.update(TensorDict({"obs": obs, "action": action, "reward": reward,
                                             "next_obs": obs, "terminated": torch.zeros(n, dtype=torch.bool)},
                                            batch_size=[n]))


@pytest.mark.parametrize(("name", "env_id"), _cases())
def test_agent_builds_acts_in_its_space_reports_its_metrics_and_round_trips(name, env_id):
    built = Built(name, env_id, seed=0)
    agent = built.agent
    action = built.act()
    assert torch.isfinite(action).all()
    if built.mode == "steps":
        space = built.env.action_space
        for a in action.numpy():
            if isinstance(space, gym.spaces.Discrete):
                assert space.contains(int(a))
            else:
                assert a.shape == space.shape and np.all(np.abs(a) <= 1.0 + 1e-6)  # [-1, 1]: the loop rescales
    elif built.mode == "contexts":
        assert action.shape == (8, *built.env.action_space.shape)
    if agent.trainable:
        metrics = built.update()
        assert set(metrics) == set(agent.metric_names), (set(metrics), agent.metric_names)
        assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    state = agent.checkpoint_state()
    other = Built(name, env_id, seed=1)
    other.obs = built.obs
    if agent.trainable:  # a different seed (and no update) gives other parameters ...
        mine, theirs = agent.state_dict(), other.agent.state_dict()
        assert any(not torch.equal(mine[k], theirs[k]) for k in mine if mine[k].is_floating_point())
    other.agent.load_checkpoint_state(state)
    torch.testing.assert_close(other.act(), built.act(), rtol=0, atol=0)  # ... until it loads the checkpoint
    for key, value in agent.state_dict().items():
        assert torch.equal(other.agent.state_dict()[key], value), key
