"""One-step tasks: supervised and statistical papers framed as contextual bandits (``OneStepTask``)."""

from rl_energy.envs.tasks.base import OneStepTask

__all__ = ["OneStepTask"]
