"""Agents by name, and Gymnasium environments by id.

Agents register by import path in :data:`AGENTS`, as the environments do in
:data:`rl_energy.envs.ENV_SPECS`: looking an agent up imports its module and nothing else, so
``rl-energy train --agent sac`` never imports another agent's (optional) dependencies, and an agent
whose optional package is missing fails alone, with a one-line error naming the extra to install.
Environments are plain Gymnasium registrations: rl-energy's own live under the ``rl_energy/``
namespace and are registered when :mod:`rl_energy` is imported; any other Gymnasium id (MuJoCo
included) works as well.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from functools import cache

import gymnasium as gym

from rl_energy.errors import ConfigError, MissingExtraError, missing_extra_message

AGENTS: dict[str, str] = {
    "sac": "rl_energy.agents.sac:SAC",
    "ddpg": "rl_energy.agents.ddpg:DDPG",
    "ebflow": "rl_energy.agents.ebflow:EBFlow",
    "bubble_linear": "rl_energy.agents.bubble_linear:BubbleLinear",
    "pfpe": "rl_energy.agents.pfpe:PFPE",
    "db": "rl_energy.agents.gflownet:DBGFlowNet",
    "tb": "rl_energy.agents.gflownet:TBGFlowNet",
    "subtb": "rl_energy.agents.gflownet:SubTBGFlowNet",
    "fldb": "rl_energy.agents.gflownet:FLDBGFlowNet",
    "layerwise": "rl_energy.agents.layerwise:LayerwiseNet",
    "cisir": "rl_energy.agents.cisir:CISIR",
    "ebm": "rl_energy.agents.ebm:EBMTrainer",
    "egeot": "rl_energy.agents.egeot:EgEOT",
    "ired": "rl_energy.agents.ired:IRED",
    "supervised": "rl_energy.agents.supervised:Supervised",
    "sointer": "rl_energy.agents.sointer:SOInter",
    "l2x": "rl_energy.agents.sointer:L2X",
    "mask_reinforce": "rl_energy.agents.sointer:MaskREINFORCE",
    "dpo": "rl_energy.agents.radpo:DPO",
    "tdpo": "rl_energy.agents.radpo:TDPO",
    "radpo": "rl_energy.agents.radpo:RaDPO",
    "mlff": "rl_energy.agents.mlff:MLFF",
    "esf": "rl_energy.agents.esf:ESF",
}
"""``name -> "module:Class"``; the class sets ``Config`` (its config dataclass)."""


class UnknownNameError(ConfigError):
    """An agent or environment name that is not registered; the message lists the valid ones."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    cls: type
    config_cls: type
    summary: str


@cache
def _load(name: str) -> AgentSpec:
    module, _, attr = AGENTS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing.startswith("rl_energy"):
            raise
        raise MissingExtraError(missing_extra_message(missing, f"agent '{name}'")) from None
    doc = (cls.__doc__ or "").strip().splitlines()
    return AgentSpec(name, cls, cls.Config, doc[0] if doc else "")


def agent_names() -> list[str]:
    return sorted(AGENTS)


def get_agent(name: str) -> AgentSpec:
    """The agent registered as ``name`` (imports its module only)."""
    if name not in AGENTS:
        hint = difflib.get_close_matches(name, AGENTS, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownNameError(f"unknown agent '{name}'. Valid agents: {', '.join(agent_names())}.{extra}")
    return _load(name)


def agent_specs() -> dict[str, AgentSpec | MissingExtraError]:
    """Every agent (importing all of them): its spec, or the error saying which extra it lacks."""
    out: dict[str, AgentSpec | MissingExtraError] = {}
    for name in agent_names():
        try:
            out[name] = get_agent(name)
        except MissingExtraError as exc:
            out[name] = exc
    return out


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


def env_class(env_id: str) -> type | None:
    """The class behind a registered id's ``entry_point`` (imports its module), or None for a callable
    or an unloadable one."""
    entry = gym.spec(env_id).entry_point
    if not isinstance(entry, str):
        return entry if isinstance(entry, type) else None
    module, _, attr = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise MissingExtraError(missing_extra_message(getattr(exc, "name", "") or module,
                                                      f"environment '{env_id}'")) from None
