"""Shared fixtures: a purpose-built probe environment, a quick-run config helper, and the scripts as modules or
commands."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest

from rl_energy.config import RunConfig, resolve_config
from rl_energy.registry import get_agent

warnings.filterwarnings("ignore", category=DeprecationWarning)
# the atomistic label and dataset caches (rl_energy/atoms/labellers.py): a fresh one per test session unless the
# developer points RL_ENERGY_CACHE at a kept one
os.environ.setdefault("RL_ENERGY_CACHE", tempfile.mkdtemp(prefix="rl_energy_cache_"))


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, registered in ``sys.modules`` (where dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python scripts/<name>.py ARGS`` from the repository root, its output captured."""
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=SCRIPTS.parent)


class ProbeEnv(gym.Env):
    """Observation ``[episode, t]`` makes every transition traceable.

    Terminates when ``t == terminate_at`` (if set), is truncated by ``max_episode_steps``; actions
    must lie in the env's own bounds ``[-2, 2]`` (so rescaling from [-1, 1] is checked too). Reward is
    1 per step (or, with ``action_reward``, the action itself, so that returns depend on the policy), or
    NaN at global step ``nan_at``.
    """

    metadata = {"render_modes": []}

    def __init__(self, terminate_at: int | None = None, nan_at: int | None = None, even_terminate: bool = False,
                 action_reward: bool = False):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
        self.terminate_at = terminate_at
        self.even_terminate = even_terminate
        self.nan_at = nan_at
        self.action_reward = action_reward
        self.episode = -1
        self.t = 0
        self.global_step = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=np.float32)), action
        self.t += 1
        self.global_step += 1
        terminated = self.terminate_at is not None and self.t == self.terminate_at
        if self.even_terminate:  # terminate even-numbered episodes, truncate (TimeLimit) odd ones
            terminated = terminated and self.episode % 2 == 0
        reward = float(np.asarray(action).reshape(-1)[0]) if self.action_reward else 1.0
        if self.nan_at is not None and self.global_step == self.nan_at:
            reward = float("nan")
        return self._obs(), reward, terminated, False, {}


if "rl_energy_test/Probe-v0" not in gym.registry:
    gym.register("rl_energy_test/Probe-v0", entry_point=ProbeEnv, max_episode_steps=7)


def quick_config(agent: str = "sac", env_id: str = "rl_energy_test/Probe-v0", **train) -> RunConfig:
    """A small, fast config: tiny nets, short run, frequent logs, no periodic evaluation."""
    overrides = {
        "train.total_steps": 300,
        "train.learning_starts": 50,
        "train.batch_size": 32,
        "train.buffer_size": 10_000,
        "train.eval_every": 0,
        "train.eval_episodes": 2,
        "train.log_every": 50,
        "train.checkpoint_every": 0,
        "train.compile": "false",  # the compiled path has its own tests and runs in test_learning
    }
    if agent == "ebflow":
        overrides.update({"agent.flow_hidden": "[16, 16]", "agent.shift_hidden": "[32, 32]"})
    else:
        overrides["agent.hidden"] = "[32, 32]"
    overrides.update({f"train.{k}": v for k, v in train.items()})
    spec = get_agent(agent)
    return resolve_config(agent, env_id, spec.config_cls, None, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture
def probe_config():
    return quick_config
