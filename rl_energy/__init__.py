"""rl-energy: reinforcement learning with energy-based policies.

Importing the package registers rl-energy's environments with Gymnasium (``rl_energy/...`` ids)
without importing any env module. Develop with an editable install (``pip install -e ".[test]"``):
``agents/``, ``envs/`` and ``configs/`` are the subpackages ``rl_energy.agents``/``.envs``/``.configs``.
"""

from rl_energy import envs as _envs  # noqa: F401  (registers the rl_energy/ Gymnasium ids)

__version__ = "0.1.0"
