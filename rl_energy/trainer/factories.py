"""Building what a run needs: the device, envs (single and vector) and step agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from rl_energy.errors import ConfigError
from rl_energy.registry import agent_specs, check_env_id, get_agent

if TYPE_CHECKING:
    from rl_energy.agent import Agent
    from rl_energy.config import RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is cuda but no CUDA device is available")
    return torch.device(name)


@contextmanager
def env_kwargs_errors(env_id: str) -> Iterator[None]:
    """Turn an env constructor's rejection of its arguments into a :class:`ConfigError` naming ``env_kwargs``."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config key 'env_kwargs' of '{env_id}': {exc}") from None


def make_env(env_id: str, env_kwargs: dict | None = None, **make_kwargs: Any) -> gym.Env:
    """``gym.make`` with the id checked and bad ``env_kwargs`` reported as a :class:`ConfigError`."""
    check_env_id(env_id)
    with env_kwargs_errors(env_id):
        return gym.make(env_id, **(env_kwargs or {}), **make_kwargs)


def make_vector_env(env_id: str, num_envs: int, env_kwargs: dict | None = None,
                    wrappers: Sequence[Callable[[gym.Env], gym.Env]] = ()) -> gym.vector.VectorEnv:
    """A vector env in ``NEXT_STEP`` autoreset mode with Box actions rescaled to [-1, 1] (Discrete ones
    are left as they are): with ``wrappers`` (from a loop extension, e.g. goal flattening) a synchronous
    one of wrapped envs; else the env's own vector implementation where an rl_energy env registers one
    (``vector_entry_point``, e.g. the bubble env's single kernel call for all sub-envs), else a
    synchronous one (Gymnasium's own vector classes, such as CartPole's, take one reset seed and are
    not used)."""
    make_env(env_id, env_kwargs).close()  # one env first: a clear error for bad names and env_kwargs
    sync = {"vectorization_mode": "sync", "vector_kwargs": {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}}
    if wrappers:
        envs = gym.make_vec(env_id, num_envs=num_envs, wrappers=list(wrappers), **sync, **(env_kwargs or {}))
    elif env_id.startswith("rl_energy/") and gym.spec(env_id).vector_entry_point is not None:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **(env_kwargs or {}))
        mode = envs.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            envs.close()
            raise ConfigError(f"environment '{env_id}': its vector env autoresets in {mode} mode, not NEXT_STEP")
    else:
        envs = gym.make_vec(env_id, num_envs=num_envs, **sync, **(env_kwargs or {}))
    space = envs.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return envs  # index actions (agents with ``discrete_actions``); build_agent checks the match
    try:
        unit_box_actions(space, env_id)
    except ConfigError:
        envs.close()
        raise
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        envs = gym.wrappers.vector.RescaleAction(envs, min_action=-1.0, max_action=1.0)
    return envs


def unit_box_actions(space: gym.Space, env_id: str) -> gym.spaces.Box:
    """The ``[-1, 1]`` Box that step agents act in for ``space`` (a bounded Box), or a ConfigError."""
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"environment '{env_id}' has a {type(space).__name__} action space; "
                          "rl-energy's step-collecting agents need a Box or a Discrete one")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"environment '{env_id}' has unbounded actions; cannot rescale them to [-1, 1]")
    return gym.spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)


def build_agent(cfg: RunConfig, observation_space: gym.Space, action_space: gym.Space,
                device: torch.device) -> Agent:
    """An agent built from spaces (step agents, and ``contexts`` agents on one-step tasks): the action
    space a step agent gets is ``[-1, 1]`` (the loop rescales), a ``contexts`` agent's is the task's own.
    Records the matmul precision and whether the update compiled in ``cfg.resolved``."""
    from rl_energy.nets import resolve_matmul_precision, set_matmul_precision

    spec = get_agent(cfg.agent_name)
    if not isinstance(observation_space, gym.spaces.Box):
        raise ConfigError(f"environment '{cfg.env_id}' has a {type(observation_space).__name__} observation "
                          f"space; agent '{cfg.agent_name}' needs a Box one")
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if spec.cls.collection == "steps" and discrete != spec.cls.discrete_actions:
        kind = "Discrete" if spec.cls.discrete_actions else "continuous (Box)"
        fitting = [name for name, s in agent_specs().items() if not isinstance(s, Exception)
                   and s.cls.collection == "steps" and s.cls.trainable and s.cls.discrete_actions == discrete]
        raise ConfigError(f"agent '{cfg.agent_name}' needs {kind} actions; environment '{cfg.env_id}' has "
                          f"{action_space}. Agents for it: {', '.join(fitting)}")
    if spec.cls.collection == "steps" and not discrete:
        action_space = unit_box_actions(action_space, cfg.env_id)
    agent = spec.cls(observation_space, action_space, cfg.agent, device)
    set_matmul_precision(agent, resolve_matmul_precision(cfg.train.matmul_precision, device))
    cfg.resolved["matmul_precision"] = "bf16" if any(getattr(m, "bf16", False) for m in agent.modules()) else "fp32"
    cfg.resolved["compile"] = bool(cfg.train.compile and agent.compile_update())
    return agent
