"""Linear-theory controller for ``rl_energy/BubblePosition-v0`` (the baseline of Klapcsik et al. 2023;
``papers/bubble-control.md`` §5).

For a small-amplitude (linearised) bubble the time-averaged primary Bjerknes force of the
dual-frequency standing wave is ``⟨F⟩(x) = a_1 P_1² sin(4π x) + a_2 P_2² sin(8π x)`` (``x`` in ``λ_0``,
:func:`rl_energy.envs.bubble_dynamics.bjerknes_force_linear`), with ``a_1, a_2 > 0`` for a 60 µm bubble
(both 25 and 50 kHz below its 55 kHz resonance). An equilibrium at the target ``x_T`` needs
``(P_2/P_1)² = -a_1 sin(4π x_T) / (a_2 sin(8π x_T))``, which is positive only for
``x_T ∈ (0.125, 0.25]``; there it is stable (``d⟨F⟩/dx < 0``). The controller holds that amplitude ratio,
with the larger amplitude at ``amplitude`` bar, for the whole episode: the bubble drifts to the
target at the drag-limited speed. Targets below ``0.125 λ_0`` are out of the linear theory's reach; for
them the controller parks the bubble at the nearest reachable equilibrium, ``0.125 λ_0`` (50 kHz only).

It has nothing to learn: ``rl-energy evaluate --agent bubble_linear --env rl_energy/BubblePosition-v0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.agent import Agent
from rl_energy.envs.bubble import OBS_SCALE
from rl_energy.envs.bubble_dynamics import BubbleParams, bjerknes_force_linear
from rl_energy.errors import require

LOWEST_REACHABLE = 0.125
"""The 50 kHz pressure antinode (``λ_0/8``): the lowest stable linear equilibrium."""


@dataclass
class BubbleLinearConfig:
    amplitude: float = 0.2
    """Pressure amplitude (bar) of the larger of the two components; the other follows the ratio."""
    R0: float = 60e-6
    """Equilibrium radius (m) of the bubble the theory is evaluated for (the env's ``R0``)."""

    def validate(self) -> None:
        require(self, "amplitude", 0 < self.amplitude <= 1, "in (0, 1] bar")
        require(self, "R0", self.R0 > 0, "> 0")


def equilibrium_amplitudes(target: np.ndarray, amplitude: float, params: BubbleParams | None = None) -> np.ndarray:
    """``[n, 2]`` amplitudes (bar) placing a stable linear equilibrium at each ``target`` (λ_0 units);
    targets below 0.125 get the 0.125 equilibrium, targets above 0.25 the 0.25 one."""
    params = params or BubbleParams()
    a1 = float(bjerknes_force_linear(1 / 8, 1.0, 0.0, params))  # a_i: force per Pa² where sin(2 k_i x) = 1
    a2 = float(bjerknes_force_linear(1 / 16, 0.0, 1.0, params))
    x = np.clip(np.asarray(target, dtype=np.float64), LOWEST_REACHABLE, 0.25)
    s1, s2 = np.sin(4 * math.pi * x), np.sin(8 * math.pi * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(np.maximum(-a1 * s1 / (a2 * s2), 0.0))  # P_2 / P_1
        ratio = np.where(x <= LOWEST_REACHABLE, np.inf, ratio)  # 0.125: the 50 kHz antinode, P_1 = 0
        p1 = np.where(ratio <= 1, 1.0, 1.0 / ratio)
    p2 = np.where(ratio <= 1, ratio, 1.0)
    return amplitude * np.stack([p1, p2], -1)


class BubbleLinear(Agent):
    """Amplitudes from the linear theory of the primary Bjerknes force; no parameters, no training."""

    Config = BubbleLinearConfig

    trainable = False

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, config: BubbleLinearConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(observation_space, action_space, config, device)
        if self.obs_dim != 3 or self.action_dim != 2:
            raise ValueError("bubble_linear controls rl_energy/BubblePosition-v0 (3 observations, 2 amplitudes); "
                             f"got {self.obs_dim} observations and {self.action_dim} actions")
        self.params = BubbleParams(R0=config.R0)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Unit actions (``[-1, 1]`` maps to ``[0, 1]`` bar) for observations ``[x_T, x, x_prev] / 0.25``."""
        target = obs[:, 0].double().cpu().numpy() * OBS_SCALE
        bar = equilibrium_amplitudes(target, self.config.amplitude, self.params)
        return torch.as_tensor(2 * bar - 1, dtype=torch.float32, device=obs.device)

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        raise RuntimeError("bubble_linear has nothing to learn; run `rl-energy evaluate --agent bubble_linear "
                           "--env rl_energy/BubblePosition-v0` instead of training it")
