"""The hooks through which optional extensions (goal envs: :class:`rl_energy.goals.GoalExtension`)
plug into the step loop (:class:`rl_energy.trainer.steps.Trainer`), so that the loop itself knows
nothing about any of them. Every hook has a no-op default."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    from rl_energy.agent import Agent
    from rl_energy.buffers import ReplayBuffer
    from rl_energy.config import RunConfig


class StepExtension:
    """One extension of a step run; built by the class method :meth:`for_run`, which returns None where
    the extension does not apply (and raises :class:`~rl_energy.errors.ConfigError` where its settings
    are given but cannot apply)."""

    columns: tuple[str, ...] = ()
    """``progress.csv`` columns this extension fills."""

    @classmethod
    def for_run(cls, cfg: RunConfig, env: gym.Env, training: bool) -> StepExtension | None:
        """``env`` is one un-wrapped instance of the run's env; ``training`` is False for evaluation-only use."""
        raise NotImplementedError

    def wrappers(self) -> Sequence[Callable[[gym.Env], gym.Env]]:
        """Wrappers for every sub-env of the vector env, innermost first."""
        return ()

    def eval_wrappers(self) -> Sequence[Callable[[gym.Env], gym.Env]]:
        """Wrappers for the evaluation envs (which choose no goals of their own), innermost first."""
        return self.wrappers()

    def bind(self, envs: gym.vector.VectorEnv) -> None:
        """Called once with the training vector env."""

    def bind_agent(self, agent: Agent) -> None:
        """Called once with the agent, after :meth:`bind`."""

    def make_buffer(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], action_dim: int,
                    device: Any, seed: int) -> ReplayBuffer | None:
        """A replay buffer to use instead of the plain one, or None."""
        return None

    def eval_row(self, agent: Agent) -> dict[str, float]:
        """Figures logged at each evaluation."""
        return {}

    def row(self) -> dict[str, float]:
        """Figures logged at each row."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], steps_per_env: int) -> None:
        """Restore; ``steps_per_env`` says how far the resumed run is (for env schedules)."""


STEP_EXTENSIONS: dict[str, str] = {"goals": "rl_energy.goals:GoalExtension"}
"""The extensions the step loop offers to every run (``name -> "module:Class"``); each decides in
:meth:`StepExtension.for_run` whether it applies."""


def step_extensions(cfg: RunConfig, env: gym.Env, training: bool) -> dict[str, StepExtension]:
    """The extensions that apply to ``cfg`` on ``env`` (see :data:`STEP_EXTENSIONS`)."""
    import importlib

    out = {}
    for name, path in STEP_EXTENSIONS.items():
        module, _, attr = path.partition(":")
        ext = getattr(importlib.import_module(module), attr).for_run(cfg, env, training)
        if ext is not None:
            out[name] = ext
    return out
