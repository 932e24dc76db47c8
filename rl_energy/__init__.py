"""rl-energy: reinforcement learning with energy-based policies.

Importing the package registers rl-energy's environments with Gymnasium (``rl_energy/...`` ids).
"""

from rl_energy import envs as _envs  # noqa: F401  (registers the rl_energy/ Gymnasium ids)

__version__ = "0.1.0"
