"""A 2-D Gaussian mixture with known mode weights as a one-step sampling task (the Hitchhiker's guide to
EBMs, Carbone, arXiv 2406.13661; the mode-weight test of Carbone, Hua, Coste & Vanden-Eijnden, NeurIPS
2023, "Efficient training of energy-based models using Jarzynski equality"; digest
``papers/one-step-tasks.md`` §11, "Framing").

The target is ``p(a) = Σ_k w_k N(a; μ_k, σ² I)`` in ``ℝ²`` with ``K = len(weights)`` modes on a circle of
radius ``radius`` (angles ``2πk/K``; two modes sit at ``(±radius, 0)``, ``2·radius/σ`` standard deviations
apart). The defaults, ``w = (0.2, 0.8)``, ``σ = 0.5``, ``radius = 2``, put the modes 8σ apart: a local
sampler (ULA, MALA, HMC) at ``E = -log p`` essentially never crosses between them, which is what makes
the mode weights hard for EBM training (digest §11, "Compare").

Framing: the observation is a constant (the task has one context: ``obs = [0]``); the action ``a ∈ ℝ²`` is
a sample; the reward is ``r(a) = log p(a)``, so the maximum-entropy policy at temperature ``α = 1`` is ``p``
itself (``π* ∝ exp(r/α)``; EBFlow and SAC run as MaxEnt bandits). Full information: each context carries
one draw of ``p`` in ``target`` (the data an EBM trains on). The task is a ``sampling`` task: evaluations
sample actions, and its metrics are about their distribution:

* ``w_err``: total-variation distance between the fractions of actions nearest to each mode and ``w``
  (for two modes ``|ŵ₁ - w₁|``); ``w1``: the fraction at the first (minority) mode;
* ``mmd``: the squared maximum mean discrepancy (Gaussian kernel of bandwidth ``σ``) between the actions
  and the test split's draws of ``p`` (an unbiased estimate: about 0 for exact samples).

:meth:`EnergyMixtureTask.grid_mode_weights` reads the mode weights of any energy by quadrature on a
grid (the digest's "read the mode weights by grid integration") and :meth:`EnergyMixtureTask.grid_kl`
the KL divergence from ``p`` on that grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.diffusion import mmd2
from rl_energy.envs.tasks.base import OneStepTask, Split

GRID = 200
"""Grid points per axis of :meth:`EnergyMixtureTask.grid_mode_weights` (the digest's 200 x 200 grid)."""


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"EnergyMixtureTask kwarg '{name}' must be a positive number, got {value!r}")
    return float(value)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"EnergyMixtureTask kwarg '{name}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


class EnergyMixtureTask(OneStepTask):
    """Sample ``a ~ p``, a 2-D Gaussian mixture with known weights; reward ``log p(a)`` (see the module)."""

    metric_names: ClassVar[tuple[str, ...]] = ("w_err", "w1", "mmd")
    sampling: ClassVar[bool] = True

    def __init__(
        self,
        weights: Sequence[float] = (0.2, 0.8),
        sigma: float = 0.5,
        radius: float = 2.0,
        n_train: int = 16384,
        n_test: int = 4096,
        data_seed: int = 0,
        action_bound: float = 0.0,
    ) -> None:
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) < 1:
            raise ValueError(f"EnergyMixtureTask kwarg 'weights' must be a list of positive numbers, got {weights!r}")
        w = [_positive("weights", v) for v in weights]
        self.weights = torch.tensor(w, dtype=torch.float32) / sum(w)
        self.sigma = _positive("sigma", sigma)
        self.radius = _positive("radius", radius)
        self.n_train = _count("n_train", n_train, 1)
        self.n_test = _count("n_test", n_test, 2)
        self.data_seed = _count("data_seed", data_seed, 0)
        k = len(w)
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        self.means = (self.radius * torch.stack([angles.cos(), angles.sin()], 1)).float()
        self.means[self.means.abs() < 1e-9] = 0.0
        if isinstance(action_bound, bool) or not isinstance(action_bound, (int, float)) or not (
            math.isfinite(action_bound) and action_bound >= 0
        ):
            raise ValueError(f"EnergyMixtureTask kwarg 'action_bound' must be >= 0 (0: radius + 6 sigma), "
                             f"got {action_bound!r}")
        self.bound = float(action_bound) or self.radius + 6 * self.sigma
        if self.bound <= self.radius:
            raise ValueError(f"EnergyMixtureTask kwarg 'action_bound' must exceed radius = {self.radius}, "
                             f"got {action_bound!r}")
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-self.bound, self.bound, (2,), np.float32)

    # ------------------------------------------------------------------------------- the target
    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        """``log p(a)`` for ``a [n, 2]`` (exact, normalised)."""
        means, w = self.means.to(a), self.weights.to(a)
        d2 = ((a[:, None, :] - means) ** 2).sum(-1)
        return torch.logsumexp(w.log() - d2 / (2 * self.sigma**2), 1) - math.log(2 * math.pi * self.sigma**2)

    def energy(self, a: torch.Tensor) -> torch.Tensor:
        """``E(a) = -log p(a)``, the energy whose Boltzmann density is the target."""
        return -self.log_prob(a)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws of ``p``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.sigma * torch.randn(n, 2, generator=generator)

    def mode_of(self, a: torch.Tensor) -> torch.Tensor:
        """Index of the nearest mode of each point (the mode's Voronoi cell)."""
        return torch.cdist(a.float(), self.means.to(a.device)).argmin(1)

    def sample_mode_weights(self, a: torch.Tensor) -> torch.Tensor:
        """Fractions of the points ``a`` in each mode's cell."""
        return torch.bincount(self.mode_of(a), minlength=len(self.weights)).float().cpu() / a.shape[0]

    def grid(self, n: int = GRID) -> tuple[torch.Tensor, float]:
        """Cell centres ``[n², 2]`` of an ``n x n`` grid over the action box, and the cell area."""
        h = 2 * self.bound / n
        axis = -self.bound + h * (torch.arange(n, dtype=torch.float32) + 0.5)
        gx, gy = torch.meshgrid(axis, axis, indexing="ij")
        return torch.stack([gx.flatten(), gy.flatten()], 1), h * h

    def grid_density(self, energy: Callable[[torch.Tensor], torch.Tensor], n: int = GRID) -> torch.Tensor:
        """``exp(-E)`` normalised over the grid cells ``[n²]`` (the model's mass per cell)."""
        points, _ = self.grid(n)
        with torch.no_grad():
            e = torch.cat([energy(c).float().flatten().cpu() for c in points.split(8192)])
        return torch.softmax(-e.double(), 0)

    def grid_mode_weights(self, energy: Callable[[torch.Tensor], torch.Tensor], n: int = GRID) -> torch.Tensor:
        """Mode weights of ``exp(-E)`` by quadrature on the grid: its mass in each mode's cell."""
        points, _ = self.grid(n)
        mass = self.grid_density(energy, n)
        return torch.zeros(len(self.weights), dtype=torch.float64).index_add_(0, self.mode_of(points), mass).float()

    def grid_kl(self, energy: Callable[[torch.Tensor], torch.Tensor], n: int = GRID) -> float:
        """``KL(p || exp(-E)/Z)`` on the grid (both normalised over its cells)."""
        p = self.grid_density(self.energy, n)
        q = self.grid_density(energy, n)
        return float((p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum())

    # --------------------------------------------------------------------------- one-step task
    def _split(self, split: Split) -> TensorDict:
        n = self.n_train if split == "train" else self.n_test
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.data_seed, 0 if split == "train" else 1])
                                                .generate_state(1)[0]))
        target = self.sample(n, gen)
        return TensorDict({"obs": torch.zeros(n, 1), "target": target}, batch_size=[n])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        return self.log_prob(action.reshape(-1, 2).float())

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        a = action.reshape(-1, 2).float()
        w_hat = self.sample_mode_weights(a)
        out = {"w_err": 0.5 * float((w_hat - self.weights).abs().sum()), "w1": float(w_hat[0])}
        n = min(a.shape[0], 4096)
        out["mmd"] = mmd2(a[:n].cpu(), batch["target"][:n].float().cpu(), bandwidths=(self.sigma,))
        return out
