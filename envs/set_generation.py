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
are ``round(U(-1, 1), 1)`` drawn from ``energy_seed`` (values repeat), or given as ``energies``.

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
        if universe > 62:
            raise ValueError(f"SetGeneration supports universes of at most 62 elements, got {universe}")
        self.universe, self.set_size = universe, set_size
        self.element_energy = torch.tensor(energies, dtype=torch.float32, device=self.device)
        self.state_dim = universe
        self.n_actions = universe + 1
        self.obs_dim = universe
        self.max_length = set_size + 1
        self.num_states = 2**universe
        self._bits = 2 ** torch.arange(universe, device=self.device)

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
        return (states * self._bits).sum(-1)

    def _all_states(self) -> torch.Tensor:
        idx = torch.arange(self.num_states, device=self.device)
        return (idx[:, None] // self._bits) % 2

    def true_log_partition(self) -> float:
        """``log e_k(w)`` with ``w_u = exp(-e(u))``: ``L_j ← logaddexp(L_j, L_{j-1} - e(u))`` per element."""
        log_e = torch.full((self.set_size + 1,), -torch.inf, dtype=torch.float64)
        log_e[0] = 0.0
        for e in self.element_energy.double().cpu():
            log_e[1:] = torch.logaddexp(log_e[1:], log_e[:-1] - e)
        return float(log_e[-1])

    def observation_space(self) -> gym.Space:
        return gym.spaces.MultiBinary(self.universe)

    def describe(self, state: torch.Tensor) -> str:
        return "{" + ", ".join(str(u) for u in torch.nonzero(state).flatten().tolist()) + "}"


class SetGenerationEnv(DAGGymEnv):
    """``gym.make("rl_energy/SetGeneration-v0", size="small")`` (or ``universe=…, set_size=…``)."""

    def __init__(self, size: str = "small", universe: int | None = None, set_size: int | None = None,
                 energy_seed: int = 0, energies: Sequence[float] | None = None) -> None:
        if size not in SIZES:
            raise ValueError(f"SetGeneration size must be one of {', '.join(SIZES)}, got {size!r}")
        n, k = SIZES[size]
        n = universe if universe is not None else n
        k = set_size if set_size is not None else k
        super().__init__(SetGeneration(n, k, energies if energies is not None else element_energies(n, energy_seed)))
