"""rl-energy's own environments, registered with Gymnasium under the ``rl_energy/`` namespace.

Each env family lives in its own module and adds its ids to :data:`ENV_SPECS`; importing
:mod:`rl_energy` registers them, after which ``gym.make("rl_energy/<Name>-v0")`` works.
"""

from __future__ import annotations

import gymnasium as gym

ENV_SPECS: dict[str, dict] = {}
"""``id -> gymnasium.register keyword arguments`` for every env family module."""


def register_all() -> None:
    for env_id, kwargs in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)


register_all()
