"""``rl_energy/SetGeneration-v0``: build a set of ``k`` elements of a universe ``U``, one element per step
(Pan et al., 2023, set generation; GFlowNet digest §3).

A state is the membership vector of the partial set. Action ``u < |U|`` adds element ``u`` (masked if
present or if the set is full); the exit action is valid only, and then compulsory, once the set has
``k`` elements. Each element has a fixed energy ``e(u) ∈ [-1, 1]``; the energy is additive,

    E(s) = Σ_{u ∈ s} e(u),   R(x) = exp(-E(x)),

so every transition carries its own reward increment ``exp(-e(u))``: the local credit that the
forward-looking objective FL-DB exploits. Sizes of the paper: small ``|U| = 30, k = 20``, medium
``80, 60``, large ``100, 80``. In the Gymnasium form the move that fills the set ends the episode
(the compulsory exit is not an action there). The paper hard-codes its energy lists (with repeated values); here they
are ``round(U(-1, 1), 1)`` drawn from ``energy_seed`` (values repeat), given as ``energies``, or
``energies="paper"``: the code's lists for the named size (ten values, each repeated ``|U|/10`` times).

``log Z`` is exact at any size: ``Z = e_k(exp(-e(u)))``, the k-th elementary symmetric polynomial,
by dynamic programming over the elements. Instances with ``|U| ≤ 22`` also enumerate their states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

from rl_energy.envs.dag import DAGEnv, DAGGymEnv

SIZES = {"small": (30, 20), "medium": (80, 60), "large": (100, 80)}

PAPER_ENERGY_VALUES = {
    "small": (0.6961474461702144, 0.883494921538938, -0.2745059751263419, 0.7442282139370466, -0.40046449111789073,
              0.6261749162235306, -0.4381397850674522, 0.4110535720923896, 0.8206350287761408, 0.013149744911117978),
    "medium": (-0.5230497555411129, 0.5731802451199923, 0.6881812517688572, -0.7866830411595669,
               -0.41860806745880197, 0.7396350970666805, 0.6009291618806774, -0.7837872949891345,
               -0.3855205729595568, 0.2961218224370139),
    "large": (-0.15382957507887518, -0.8596854107736154, 0.13832182722858843, -0.4589997720511263,
              0.9244538380742333, -0.5938789622812419, 0.7326989860019331, 0.3925029176153736,
              0.7231982581431591, -0.5596177369051512),
}
"""The FL-GFN set code's energies: per size, ten values, each given to ``|U| / 10`` elements (the code lists
them shuffled; the task is symmetric under relabelling the elements, so the order is immaterial)."""


def paper_energies(size: str) -> list[float]:
    """The FL-GFN set code's element energies of a named size (``energies: paper``)."""
    return [e for e in PAPER_ENERGY_VALUES[size] for _ in range(SIZES[size][0] // 10)]


def element_energies(universe: int, seed: int) -> list[float]:
    """The fixed per-element energies of a seed: ``round(U(-1, 1), 1)``."""
    return np.round(np.random.default_rng(seed).uniform(-1.0, 1.0, universe), 1).tolist()


class SetGeneration(DAGEnv):
    """The batched set-generation DAG (see the module docstring)."""

    exit_is_forced = True

    def __init__(self, universe: int, set_size: int, energies: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        if not 1 <= set_size <= universe:
            raise ValueError(f"SetGeneration needs 1 <= set_size <= universe, got set_size={set_size}, "
                             f"universe={universe}")
        if len(energies) != universe or not all(math.isfinite(e) for e in energies):
            raise ValueError(f"SetGeneration needs {universe} finite element energies, got {len(energies)}")
        self.universe, self.set_size = universe, set_size
        self.element_energy = torch.tensor(energies, dtype=torch.float32, device=self.device)
        self.state_dim = universe
        self.n_actions = universe + 1
        self.obs_dim = universe
        self.max_length = set_size + 1
        self.num_states = 2**universe
        self._bits = 2 ** torch.arange(min(universe, 62), device=self.device)

    def initial_states(self, n: int) -> torch.Tensor:
        return torch.zeros(n, self.universe, dtype=torch.long, device=self.device)

    def forward_mask(self, states: torch.Tensor) -> torch.Tensor:
        size = states.sum(-1, keepdim=True)
        return torch.cat([(states == 0) & (size < self.set_size), size == self.set_size], -1)

    def backward_mask(self, states: torch.Tensor) -> torch.Tensor:
        return states == 1

    def step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return states + torch.nn.functional.one_hot(actions, self.n_actions)[..., : self.universe]

    def backward_step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return states - torch.nn.functional.one_hot(actions, self.universe)

    def encode(self, states: torch.Tensor) -> torch.Tensor:
        return states.float()

    def energy(self, states: torch.Tensor) -> torch.Tensor:
        return states.float() @ self.element_energy

    def level(self, states: torch.Tensor) -> torch.Tensor:
        return states.sum(-1)

    def state_index(self, states: torch.Tensor) -> torch.Tensor:
        if self.universe > 62:
            raise ValueError(f"SetGeneration indexes states of universes of at most 62 elements (int64), got "
                             f"{self.universe}; use state_keys")
        return (states * self._bits).sum(-1)

    def state_keys(self, states: torch.Tensor) -> list[int]:
        """The membership bits as a Python integer (exact for every universe size)."""
        if self.universe <= 62:
            return self.state_index(states).tolist()
        words = [(states[:, i : i + 62] * self._bits[: min(62, self.universe - i)]).sum(-1).tolist()
                 for i in range(0, self.universe, 62)]
        return [sum(w << (62 * j) for j, w in enumerate(ws)) for ws in zip(*words, strict=True)]

    def _all_states(self) -> torch.Tensor:
        idx = torch.arange(self.num_states, device=self.device)
        return (idx[:, None] // self._bits) % 2

    def _log_partition(self, theta: torch.Tensor) -> torch.Tensor:
        """``log e_k(w)`` with ``w_u = exp(-θ e(u))``: ``L_j ← logaddexp(L_j, L_{j-1} - θ e(u))`` per element
        (differentiable in ``θ``; ``-1e30`` stands for ``log 0`` without the nan gradients of ``-inf``)."""
        log_e = torch.full((self.set_size + 1,), -1e30, dtype=torch.float64)
        log_e[0] = 0.0
        for e in self.element_energy.double().cpu():
            log_e = torch.cat([log_e[:1], torch.logaddexp(log_e[1:], log_e[:-1] - theta * e)])
        return log_e[-1]

    def true_log_partition(self) -> float:
        """``log Z = log e_k(exp(-e(u)))``."""
        return float(self._log_partition(torch.ones((), dtype=torch.float64)))

    def target_mean_log_reward(self) -> float:
        """``E_{x ~ R/Z}[log R(x)] = d log Z(θ)/dθ`` at ``θ = 1`` for ``Z(θ) = Σ_x exp(-θ E(x))``: how sharp
        an exact sampler is."""
        theta = torch.ones((), dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(self._log_partition(theta), theta)
        return float(grad)

    def observation_space(self) -> gym.Space:
        return gym.spaces.MultiBinary(self.universe)

    def describe(self, state: torch.Tensor) -> str:
        return "{" + ", ".join(str(u) for u in torch.nonzero(state).flatten().tolist()) + "}"


class SetGenerationEnv(DAGGymEnv):
    """``gym.make("rl_energy/SetGeneration-v0", size="small")`` (or ``universe=…, set_size=…``)."""

    def __init__(self, size: str = "small", universe: int | None = None, set_size: int | None = None,
                 energy_seed: int = 0, energies: Sequence[float] | str | None = None) -> None:
        if size not in SIZES:
            raise ValueError(f"SetGeneration size must be one of {', '.join(SIZES)}, got {size!r}")
        n, k = SIZES[size]
        n = universe if universe is not None else n
        k = set_size if set_size is not None else k
        if isinstance(energies, str):
            if energies != "paper":
                raise ValueError(f"SetGeneration energies must be a list of numbers or 'paper', got {energies!r}")
            if (n, k) != SIZES[size]:
                raise ValueError(f"SetGeneration energies='paper' needs the paper's size {size} = {SIZES[size]}, "
                                 f"got universe={n}, set_size={k}")
            energies = paper_energies(size)
        super().__init__(SetGeneration(n, k, energies if energies is not None else element_energies(n, energy_seed)))
