"""Record evaluation episodes as MP4 files (``rl-energy evaluate RUN --video DIR``)."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rl_energy.agent import Agent
from rl_energy.config import ConfigError, RunConfig


def record_episodes(agent: Agent, cfg: RunConfig, out_dir: Path, episodes: int, seed: int,
                    deterministic: bool = True) -> list[float]:
    """Run ``episodes`` episodes in one rendering env and write one video per episode to ``out_dir``."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise ConfigError("--video needs moviepy: pip install 'rl-energy[video]'") from None
    env = gym.make(cfg.env_id, render_mode="rgb_array", **cfg.env_kwargs)
    space = env.action_space
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    env = gym.wrappers.RecordVideo(env, str(out_dir), episode_trigger=lambda _: True, disable_logger=True)
    returns = []
    agent.train(False)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None], deterministic)
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns
