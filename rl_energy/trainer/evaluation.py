"""Episode evaluation of step agents and the final line ``train`` and ``evaluate`` print."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from rl_energy.agent import Agent


@dataclass
class EvalResult:
    mean: float
    std: float
    returns: list[float]


def evaluate_policy(agent: Agent, envs: gym.vector.VectorEnv, seed: int, deterministic: bool = True) -> EvalResult:
    """One episode in each of ``envs.num_envs`` envs, reset with seeds ``seed, seed+1, ...``."""
    n = envs.num_envs
    obs, _ = envs.reset(seed=[seed + i for i in range(n)])
    returns = np.zeros(n)
    active = np.ones(n, dtype=bool)
    was_training = agent.training
    agent.train(False)
    try:
        while active.any():
            action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device), deterministic)
            obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
            returns[active] += reward[active]
            active &= ~(terminated | truncated)
    finally:
        agent.train(was_training)
    return EvalResult(float(returns.mean()), float(returns.std()), returns.tolist())


def final_line(result: EvalResult, deterministic: bool = True) -> str:
    kind = "deterministic" if deterministic else "stochastic"
    return f"final eval return: {result.mean:.2f} ± {result.std:.2f} ({len(result.returns)} episodes, {kind})"
