"""rl-energy: reinforcement learning with energy-based policies.

Importing the package registers rl-energy's environments with Gymnasium (``rl_energy/...`` ids).
"""

from pathlib import Path as _Path

# Installed, ``agents/``, ``envs/`` and ``configs/`` are the subpackages rl_energy.agents/.envs/.configs
# (pyproject's package-dir mapping). Imported straight from a source checkout (a test run or script in
# the repository root, where this folder shadows the installed copy) they sit beside this folder instead.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "envs").is_dir() and (_checkout / "envs" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (the package's own search path)

from rl_energy import envs as _envs  # noqa: E402, F401  (registers the rl_energy/ Gymnasium ids)

__version__ = "0.1.0"
