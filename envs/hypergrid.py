"""``rl_energy/HyperGrid-v0``: the hypergrid of Bengio et al. (2021) as used by torchgfn (GFlowNet digest §5).

States are points ``s ∈ {0, …, H-1}^D`` starting at the origin. Action ``i < D`` increments
coordinate ``i`` (masked at ``H-1``); action ``D`` exits, and every state may exit. The reward is

    R(s) = R0 + R1 · Π_d 1[0.25 < |s_d/(H-1) - 0.5|] + R2 · Π_d 1[0.3 < |s_d/(H-1) - 0.5| < 0.4]

with ``R0, R1, R2 = 0.1, 0.5, 2.0``, so the ``2^D`` corners hold the modes (``R = R0 + R1 + R2``).
The energy of every state is ``E(s) = -log R(s)``: the reward is not additive along a trajectory, so
forward-looking flows help less here than on set generation (digest §5).

The network sees the ``D·H`` one-hot encoding (torchgfn's ``KHotPreprocessor``).
"""

from __future__ import annotations

import gymnasium as gym
import torch

from rl_energy.envs.dag import DAGEnv, DAGGymEnv


class HyperGrid(DAGEnv):
    """The batched hypergrid DAG (see the module docstring)."""

    def __init__(self, ndim: int = 4, height: int = 8, r0: float = 0.1, r1: float = 0.5, r2: float = 2.0,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        if ndim < 1 or height < 2:
            raise ValueError(f"HyperGrid needs ndim >= 1 and height >= 2, got ndim={ndim}, height={height}")
        if r0 <= 0 or r1 < 0 or r2 < 0:
            raise ValueError(f"HyperGrid rewards need r0 > 0 and r1, r2 >= 0, got {r0}, {r1}, {r2}")
        self.ndim, self.height = ndim, height
        self.r0, self.r1, self.r2 = r0, r1, r2
        self.state_dim = ndim
        self.n_actions = ndim + 1
        self.obs_dim = ndim * height
        self.max_length = ndim * (height - 1) + 1
        self.num_states = height**ndim
        self._strides = height ** torch.arange(ndim, device=self.device)
        self._eye = torch.eye(ndim, dtype=torch.long, device=self.device)
        self._offsets = torch.arange(ndim, device=self.device) * height

    def initial_states(self, n: int) -> torch.Tensor:
        return torch.zeros(n, self.ndim, dtype=torch.long, device=self.device)

    def forward_mask(self, states: torch.Tensor) -> torch.Tensor:
        move = states < self.height - 1
        return torch.cat([move, torch.ones_like(move[..., :1])], -1)

    def backward_mask(self, states: torch.Tensor) -> torch.Tensor:
        return states > 0

    def step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # one_hot of the exit action ``D`` is cut away, so exit leaves the state unchanged
        return states + torch.nn.functional.one_hot(actions, self.n_actions)[..., : self.ndim]

    def backward_step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return states - self._eye[actions]

    def encode(self, states: torch.Tensor) -> torch.Tensor:
        hot = torch.zeros(*states.shape[:-1], self.obs_dim, device=states.device)
        return hot.scatter_(-1, states + self._offsets, 1.0)

    def reward(self, states: torch.Tensor) -> torch.Tensor:
        ax = (states.float() / (self.height - 1) - 0.5).abs()
        outer = (ax > 0.25).all(-1).float()
        band = ((ax > 0.3) & (ax < 0.4)).all(-1).float()
        return self.r0 + self.r1 * outer + self.r2 * band

    def energy(self, states: torch.Tensor) -> torch.Tensor:
        return -self.reward(states).log()

    def level(self, states: torch.Tensor) -> torch.Tensor:
        return states.sum(-1)

    def is_mode(self, states: torch.Tensor) -> torch.Tensor:
        return self.reward(states) >= self.r0 + self.r1 + self.r2 - 1e-6

    def state_index(self, states: torch.Tensor) -> torch.Tensor:
        return (states * self._strides).sum(-1)

    def _all_states(self) -> torch.Tensor:
        idx = torch.arange(self.num_states, device=self.device)
        return (idx[:, None] // self._strides) % self.height

    @property
    def num_modes(self) -> int:
        """Mode states of the grid (``R = R0 + R1 + R2``), counted exactly per coordinate."""
        c = torch.arange(self.height, dtype=torch.float32) / (self.height - 1) - 0.5
        per_dim = int(((c.abs() > 0.3) & (c.abs() < 0.4)).sum())
        return per_dim**self.ndim if self.r2 > 0 else 0

    def observation_space(self) -> gym.Space:
        return gym.spaces.MultiDiscrete([self.height] * self.ndim)


class HyperGridEnv(DAGGymEnv):
    """``gym.make("rl_energy/HyperGrid-v0", ndim=4, height=8)``: one trajectory through :class:`HyperGrid`."""

    def __init__(self, ndim: int = 4, height: int = 8, r0: float = 0.1, r1: float = 0.5, r2: float = 2.0) -> None:
        super().__init__(HyperGrid(ndim, height, r0, r1, r2))
