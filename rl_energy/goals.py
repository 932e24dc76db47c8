"""Goal-conditioned RL on Gymnasium goal envs with goal-agnostic agents.

A goal env (Gymnasium-Robotics convention) observes a dict with ``observation``, ``achieved_goal`` and
``desired_goal`` and has a vectorised ``compute_reward(achieved_goal, desired_goal, info)``.
:class:`FlattenGoal` turns the dict into one Box vector ``[observation, achieved_goal, desired_goal]``
(layout in :class:`GoalLayout`), so DDPG and SAC train on it unchanged; the HER replay buffer
(:class:`rl_energy.buffers.HERReplayBuffer`) uses the layout to relabel goals, and
:class:`CurriculumGoals` lets a curriculum (:mod:`rl_energy.curricula`) choose each episode's goal and
hear how it went. :func:`success_coverage` is the SVGG paper's evaluation metric (SVGG digest §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

if TYPE_CHECKING:
    from rl_energy.agent import Agent
    from rl_energy.curricula import Curriculum

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


def is_goal_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Dict) and set(space.spaces) == set(GOAL_KEYS)


@dataclass(frozen=True)
class GoalLayout:
    """Where the parts of a flattened goal observation sit: ``[observation, achieved_goal, desired_goal]``."""

    obs_dim: int
    goal_dim: int

    @property
    def achieved(self) -> slice:
        return slice(self.obs_dim, self.obs_dim + self.goal_dim)

    @property
    def desired(self) -> slice:
        return slice(self.obs_dim + self.goal_dim, self.obs_dim + 2 * self.goal_dim)

    @property
    def size(self) -> int:
        return self.obs_dim + 2 * self.goal_dim

    @classmethod
    def of(cls, space: gym.spaces.Dict) -> GoalLayout:
        return cls(int(np.prod(space["observation"].shape)), int(np.prod(space["achieved_goal"].shape)))

    def flatten(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``[..., size]`` from a (possibly batched) goal observation dict."""
        lead = np.asarray(obs["desired_goal"]).shape[:-1]
        parts = [np.asarray(obs[k], dtype=np.float32).reshape(*lead, -1) for k in GOAL_KEYS]
        return np.concatenate(parts, -1)


class FlattenGoal(gym.ObservationWrapper):
    """Goal-env dict observations -> ``Box([observation, achieved_goal, desired_goal])``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if not is_goal_space(space):
            raise TypeError(f"FlattenGoal needs a goal-env Dict observation space, got {space}")
        self.layout = GoalLayout.of(space)
        low = np.concatenate([np.broadcast_to(space[k].low, space[k].shape).ravel() for k in GOAL_KEYS])
        high = np.concatenate([np.broadcast_to(space[k].high, space[k].shape).ravel() for k in GOAL_KEYS])
        self.observation_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.layout.flatten(observation)


class CurriculumGoals(gym.Wrapper):
    """Each episode's goal comes from ``curriculum.sample_goal``; at its end the curriculum gets the
    start observation, the goal, whether it was reached at any step, and the achieved goals."""

    def __init__(self, env: gym.Env, curriculum: Curriculum) -> None:
        super().__init__(env)
        self.curriculum = curriculum
        self.unwrapped.goal_sampler = curriculum.sample_goal
        self._start: np.ndarray | None = None
        self._goal: np.ndarray | None = None
        self._success = False
        self._achieved: list[np.ndarray] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._start, self._goal = obs["observation"].copy(), obs["desired_goal"].copy()
        self._success = bool(info.get("is_success", False))
        self._achieved = [obs["achieved_goal"].copy()]
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._success |= bool(info.get("is_success", False))
        self._achieved.append(obs["achieved_goal"].copy())
        self.curriculum.on_step()
        if terminated or truncated:
            self.curriculum.record_episode(self._start, self._goal, self._success, np.stack(self._achieved))
        return obs, reward, terminated, truncated, info


@torch.inference_mode()
def success_coverage(agent: Agent, env: gym.Env, goals: np.ndarray, episode_length: int, seed: int = 0
                     ) -> np.ndarray:
    """Whether a deterministic ``agent`` reaches each of ``goals`` within ``episode_length`` steps (any
    step counts), all goals rolled out at once through the env's vectorised ``maze.move``.

    ``env`` is the unwrapped goal env (its current maze and success radius are used); the returned
    mean is the *success coverage* when ``goals`` covers the valid goal set evenly.
    """
    rng = np.random.default_rng(seed)
    maze = env.maze
    n = len(goals)
    pos = maze.start_positions(n, rng)
    layout = GoalLayout.of(env.observation_space)
    success = np.zeros(n, dtype=bool)
    was_training = agent.training
    agent.train(False)
    low, high = env.action_space.low, env.action_space.high
    try:
        for _ in range(episode_length):
            obs = layout.flatten({"observation": pos, "achieved_goal": pos, "desired_goal": goals})
            action = agent.act(torch.as_tensor(obs, device=agent.device), deterministic=True).cpu().numpy()
            action = low + (action + 1.0) * 0.5 * (high - low)  # the trainer's [-1, 1] -> env bounds
            pos = maze.move(pos, action)
            success |= env.compute_reward(pos, goals, None) == 0.0
    finally:
        agent.train(was_training)
    return success
