"""rl-energy's own environments, registered with Gymnasium under the ``rl_energy/`` namespace.

Each env family lives in its own module; :data:`ENV_SPECS` names its classes by import path, so
importing :mod:`rl_energy` registers every id without importing the (possibly heavy) env modules,
and ``gym.make("rl_energy/<Name>-v0")`` imports the one it needs.
"""

from __future__ import annotations

import gymnasium as gym

ENV_SPECS: dict[str, dict] = {
    "rl_energy/BubblePosition-v0": {
        "entry_point": "rl_energy.envs.bubble:BubblePositionEnv",
        "vector_entry_point": "rl_energy.envs.bubble:BubblePositionVectorEnv",
    },
    "rl_energy/Baird-v0": {"entry_point": "rl_energy.envs.baird:BairdEnv", "max_episode_steps": 1000},
    "rl_energy/PointMaze-Open-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                    "max_episode_steps": 30, "kwargs": {"maze": "open"}},
    "rl_energy/PointMaze-UMaze-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                     "max_episode_steps": 30, "kwargs": {"maze": "umaze"}},
    "rl_energy/PointMaze-MultiRoom-v0": {"entry_point": "rl_energy.envs.point_maze:PointMazeEnv",
                                         "max_episode_steps": 30, "kwargs": {"maze": "multiroom"}},
    "rl_energy/HyperGrid-v0": {"entry_point": "rl_energy.envs.hypergrid:HyperGridEnv"},
    "rl_energy/SetGeneration-v0": {"entry_point": "rl_energy.envs.set_generation:SetGenerationEnv"},
}
"""``id -> gymnasium.register keyword arguments`` for every env family module."""

LINEAR_MDP_ENV_IDS = ("rl_energy/Baird-v0",)
"""The envs whose ``unwrapped.linear_mdp()`` gives a :class:`rl_energy.analysis.td_stability.LinearMDP`
(for ``rl-energy analyze td``)."""

GFLOWNET_ENV_IDS = ("rl_energy/HyperGrid-v0", "rl_energy/SetGeneration-v0")
"""The envs whose ``unwrapped.dag`` is a :class:`rl_energy.envs.dag.DAGEnv` (for GFlowNet agents)."""


def register_all() -> None:
    for env_id, kwargs in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)


register_all()
