"""Goal-conditioned RL on Gymnasium goal envs with goal-agnostic agents.

A goal env (Gymnasium-Robotics convention) observes a dict with ``observation``, ``achieved_goal`` and
``desired_goal`` and has a vectorised ``compute_reward(achieved_goal, desired_goal, info)``.
:class:`FlattenGoal` turns the dict into one Box vector ``[observation, achieved_goal, desired_goal]``
(layout in :class:`GoalLayout`), so DDPG and SAC train on it unchanged; the HER replay buffer
(:class:`rl_energy.buffers.HERReplayBuffer`) uses the layout to relabel goals, and
:class:`CurriculumGoals` lets a curriculum (:mod:`rl_energy.curricula`) choose each episode's goal and
hear how it went. :func:`success_coverage` is the SVGG paper's evaluation metric (SVGG digest §5).

:class:`GoalExtension` brings all of it to the step loop through its hooks
(:class:`rl_energy.trainer.hooks.StepExtension`), with its own config sections ``goals``
(:class:`GoalConfig`) and ``curriculum`` (:class:`rl_energy.curricula.CurriculumConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from rl_energy.errors import ConfigError, require
from rl_energy.trainer.hooks import StepExtension

if TYPE_CHECKING:
    from rl_energy.agent import Agent
    from rl_energy.buffers import ReplayBuffer
    from rl_energy.config import RunConfig
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


@dataclass
class GoalConfig:
    """The ``goals`` config section: how the step loop treats goal envs."""

    her_ratio: float = 0.8
    """Fraction of replayed transitions relabelled with a future achieved goal (HER's ``future``
    strategy, :class:`rl_energy.buffers.HERReplayBuffer`); 0 disables HER."""
    terminate_on_success: bool = False
    """Replay transitions that reach their goal (reward 0, relabelled or not) as terminal (the SVGG agent's
    ``first_visit_succ``): values bootstrap only until success."""
    coverage_goals_per_cell: int = 4
    """Goal mazes: evaluation goals per free cell of the success-coverage metric (0 disables it)."""

    def validate(self) -> None:
        require(self, "her_ratio", 0.0 <= self.her_ratio <= 1.0, "in [0, 1]", "goals")
        require(self, "coverage_goals_per_cell", self.coverage_goals_per_cell >= 0, ">= 0", "goals")


class GoalExtension(StepExtension):
    """Goal envs in the step loop: flattened observations, the HER buffer, success coverage at each
    evaluation, a goal curriculum (``curriculum`` section) and its state in checkpoints, and the resume
    of an env's goal schedule (``set_elapsed_steps``, e.g. a maze switch)."""

    def __init__(self, cfg: RunConfig, training: bool) -> None:
        from rl_energy.curricula import make_curriculum

        self.cfg = cfg.goals
        self.curriculum: Curriculum | None = make_curriculum(cfg.curriculum) if training else None
        self.goal_env: gym.Env | None = None
        """The first training env, unwrapped (HER's reward function, coverage and curricula use it)."""
        self.episode_length = 50
        self.eval_seed = cfg.train.eval_seed
        self.last_coverage: float | None = None
        self._envs: list[gym.Env] = []
        self.columns = ("success_coverage",) + (self.curriculum.metric_names if self.curriculum is not None else ())

    @classmethod
    def for_run(cls, cfg: RunConfig, env: gym.Env, training: bool) -> GoalExtension | None:
        if is_goal_space(env.observation_space):
            return cls(cfg, training)
        from rl_energy.config import changed_keys

        given = (["curriculum.name"] if cfg.curriculum.name != "none" else []) + changed_keys(cfg, "goals")
        if given:
            raise ConfigError(f"config key '{given[0]}' applies to goal envs (dict observations with "
                              f"observation/achieved_goal/desired_goal); '{cfg.env_id}' is not one")
        return None

    def wrappers(self) -> Sequence[Callable[[gym.Env], gym.Env]]:
        if self.curriculum is None:
            return (FlattenGoal,)
        curriculum = self.curriculum
        return (lambda e: CurriculumGoals(e, curriculum), FlattenGoal)

    def eval_wrappers(self) -> Sequence[Callable[[gym.Env], gym.Env]]:
        return (FlattenGoal,)  # evaluation episodes keep the env's own goals

    def bind(self, envs: gym.vector.VectorEnv) -> None:
        self._envs = envs.unwrapped.envs
        sub = self._envs[0]
        self.goal_env = sub.unwrapped
        self.episode_length = sub.spec.max_episode_steps or 50
        if self.curriculum is not None:
            self.curriculum.bind(self.goal_env)

    def bind_agent(self, agent: Agent) -> None:
        """Give a curriculum that ranks goals by value (MEGA, RANDOM) the agent's ``Q(s0, g)``."""
        if self.curriculum is None or not self.curriculum.needs_values:
            return
        if not hasattr(agent, "value"):
            raise ConfigError(f"curriculum '{self.curriculum.name}' ranks goals by the agent's critic value: "
                              "use --agent ddpg or sac")
        layout = GoalLayout.of(self.goal_env.observation_space)

        @torch.inference_mode()
        def q_fn(start: np.ndarray, goals: np.ndarray) -> np.ndarray:
            n = len(goals)  # the point mazes: observation = achieved goal = position
            here = np.broadcast_to(start, (n, len(start)))
            obs = layout.flatten({"observation": here, "achieved_goal": here, "desired_goal": goals})
            return agent.value(torch.as_tensor(obs, device=agent.device)).cpu().numpy()

        self.curriculum.bind_values(q_fn, float(agent.config.gamma), self.episode_length)

    def make_buffer(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], action_dim: int,
                    device: Any, seed: int) -> ReplayBuffer | None:
        from rl_energy.buffers import HERReplayBuffer

        if self.cfg.her_ratio == 0:
            return None
        env = self.goal_env
        return HERReplayBuffer(capacity, num_envs, obs_shape, action_dim, GoalLayout.of(env.observation_space),
                               lambda achieved, desired: env.compute_reward(achieved, desired, None),
                               self.cfg.her_ratio, device, seed=seed,
                               terminate_on_success=self.cfg.terminate_on_success)

    def eval_row(self, agent: Agent) -> dict[str, float]:
        """Success coverage (SVGG digest §5) on the training env's current maze."""
        env, per_cell = self.goal_env, self.cfg.coverage_goals_per_cell
        if env is None or per_cell == 0 or not hasattr(env, "maze"):
            return {}
        goals = env.maze.coverage_goals(per_cell, seed=self.eval_seed)
        self.last_coverage = float(success_coverage(agent, env, goals, self.episode_length, self.eval_seed).mean())
        return {"success_coverage": self.last_coverage}

    def row(self) -> dict[str, float]:
        return self.curriculum.metrics() if self.curriculum is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": None if self.curriculum is None else self.curriculum.state_dict()}

    def load_state_dict(self, state: dict[str, Any], steps_per_env: int) -> None:
        if self.curriculum is not None and state.get("curriculum") is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        if hasattr(self.goal_env, "set_elapsed_steps"):
            for env in self._envs:  # envs that keep a schedule (a maze switch) are told how far
                env.unwrapped.set_elapsed_steps(steps_per_env)
