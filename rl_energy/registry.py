"""Agents by name, and Gymnasium environments by id.

Agents register with :func:`register_agent`; the agent modules in ``rl_energy.agents`` are imported
on first use. Environments are plain Gymnasium registrations: rl-energy's own live under the
``rl_energy/`` namespace and are registered when :mod:`rl_energy` is imported; any other Gymnasium id
(MuJoCo included) works as well.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from rl_energy.config import ConfigError

AGENT_MODULES = ("sac", "ddpg", "ebflow", "bubble_linear", "gflownet", "pfpe")
"""Modules of ``rl_energy.agents`` imported to fill the registry."""


class UnknownNameError(ConfigError):
    """An agent or environment name that is not registered; the message lists the valid ones."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    cls: type
    config_cls: type
    summary: str


_AGENTS: dict[str, AgentSpec] = {}


def register_agent(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: ``@register_agent("sac", SACConfig)``."""

    def deco(cls: type) -> type:
        doc = (cls.__doc__ or "").strip().splitlines()
        _AGENTS[name] = AgentSpec(name, cls, config_cls, doc[0] if doc else "")
        cls.Config = config_cls
        return cls

    return deco


def _load_agents() -> None:
    for mod in AGENT_MODULES:
        importlib.import_module(f"rl_energy.agents.{mod}")


def agent_specs() -> dict[str, AgentSpec]:
    _load_agents()
    return dict(sorted(_AGENTS.items()))


def get_agent(name: str) -> AgentSpec:
    specs = agent_specs()
    if name not in specs:
        hint = difflib.get_close_matches(name, specs, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownNameError(f"unknown agent '{name}'. Valid agents: {', '.join(specs)}.{extra}")
    return specs[name]


def env_ids() -> list[str]:
    """Every id in the Gymnasium registry (rl_energy's own ones included)."""
    import rl_energy.envs  # noqa: F401  (registers the rl_energy/ namespace)

    return sorted(gym.registry)


def check_env_id(env_id: str) -> None:
    """Raise :class:`UnknownNameError` listing the valid ids if ``env_id`` is not registered."""
    ids = env_ids()
    if env_id in ids:
        return
    hint = difflib.get_close_matches(env_id, ids, n=3)
    extra = f"\nDid you mean: {', '.join(hint)}?" if hint else ""
    raise UnknownNameError(f"unknown environment '{env_id}'. Valid environment ids:\n  " + "\n  ".join(ids) + extra)
