"""Discrete DAG environments for GFlowNet samplers, in a batched torch form and a Gymnasium form.

A GFlowNet samples terminal objects ``x`` by walking a directed acyclic graph of states from ``s0``
(GFlowNet digest §1). Each env family (``hypergrid.py``, ``set_generation.py``) implements
:class:`DAGEnv`: the DAG described on batches of states held as int64 tensors, so the trajectory
sampler steps thousands of trajectories at once without leaving the device. :class:`DAGGymEnv` wraps a
:class:`DAGEnv` into the registered single-trajectory ``gymnasium.Env``; the trainer reaches the
batched form through ``gym.make(id).unwrapped.dag``.

Conventions (those of torchgfn):

* Forward actions ``0 .. n_actions-2`` move to a child; the last one, :attr:`DAGEnv.exit_action`,
  ends the trajectory at the current state ``x`` and collects the reward ``R(x)``. A state whose only
  valid action is exit is *must-exit* (a complete object such as a full set).
* Backward action ``i`` undoes forward action ``i`` (``n_actions - 1`` backward actions).
* Every state has an energy ``E(s)``; where exit is allowed, ``log R(s) = -E(s)``. Energies of
  intermediate states are what the forward-looking objective FL-DB uses (digest §2).
* Small instances enumerate their states (:meth:`DAGEnv.all_states`, in topological order), which
  gives the exact target ``R(x)/Z`` and, by dynamic programming, the exact terminal distribution of a
  sampler (:mod:`rl_energy.analysis.gflownet`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

MAX_ENUMERATED_STATES = 2**20
"""Largest state space :meth:`DAGEnv.all_states` enumerates (1M states; the exact evaluation holds a few
arrays of that length times the number of actions)."""


class DAGEnv:
    """A batched, device-resident GFlowNet environment; subclasses fill in the DAG.

    States are int64 tensors ``[..., state_dim]``; every method accepts any leading batch shape.
    """

    state_dim: int
    n_actions: int
    """Forward actions including exit (the last one)."""
    obs_dim: int
    """Width of :meth:`encode`, the policy network's input."""
    max_length: int
    """Most transitions in a complete trajectory, the exit included."""
    num_states: int
    """Number of states of the DAG (possibly too many to enumerate)."""
    exit_is_forced: bool = False
    """True where exit is valid only in must-exit states (then the Gymnasium form has no exit action)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def to(self, device: torch.device | str) -> DAGEnv:
        """Move the env's tensors (and the states it creates) to ``device``; returns ``self``."""
        self.device = torch.device(device)
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(self.device))
        return self

    @property
    def exit_action(self) -> int:
        return self.n_actions - 1

    # ---------------------------------------------------------------------------- the DAG itself
    def initial_states(self, n: int) -> torch.Tensor:
        """``n`` copies of ``s0``: ``[n, state_dim]``."""
        raise NotImplementedError

    def forward_mask(self, states: torch.Tensor) -> torch.Tensor:
        """Valid forward actions, ``[..., n_actions]`` bool (exit included)."""
        raise NotImplementedError

    def backward_mask(self, states: torch.Tensor) -> torch.Tensor:
        """Valid backward actions (parents), ``[..., n_actions - 1]`` bool."""
        raise NotImplementedError

    def step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Children reached by non-exit ``actions`` (exit actions leave the state as it is)."""
        raise NotImplementedError

    def backward_step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Parents reached by backward ``actions``."""
        raise NotImplementedError

    def encode(self, states: torch.Tensor) -> torch.Tensor:
        """Float32 network input ``[..., obs_dim]``."""
        raise NotImplementedError

    def energy(self, states: torch.Tensor) -> torch.Tensor:
        """``E(s)`` for every state, float32 ``[...]``."""
        raise NotImplementedError

    def log_reward(self, states: torch.Tensor) -> torch.Tensor:
        """``log R(x) = -E(x)``; meaningful where exit is allowed."""
        return -self.energy(states)

    def level(self, states: torch.Tensor) -> torch.Tensor:
        """Transitions from ``s0`` to each state (the DAG is graded: every path has this length)."""
        raise NotImplementedError

    def is_mode(self, states: torch.Tensor) -> torch.Tensor | None:
        """Which states are modes of the reward (``None`` for families without a mode definition)."""
        return None

    # ---------------------------------------------------------------------------- enumeration
    @property
    def enumerable(self) -> bool:
        return self.num_states <= MAX_ENUMERATED_STATES

    def state_index(self, states: torch.Tensor) -> torch.Tensor:
        """A bijection from states to ``0 .. num_states-1``."""
        raise NotImplementedError

    def state_keys(self, states: torch.Tensor) -> list[int]:
        """Hashable keys of ``states [n, state_dim]`` (distinct states, distinct keys), for counting the
        distinct objects a sampler found; :meth:`state_index` by default."""
        return self.state_index(states).tolist()

    def _all_states(self) -> torch.Tensor:
        raise NotImplementedError

    def all_states(self) -> torch.Tensor:
        """Every state, in index order (``state_index(all_states()) == arange``)."""
        if not self.enumerable:
            raise ValueError(f"{type(self).__name__} has {self.num_states} states; exact enumeration is limited to "
                             f"{MAX_ENUMERATED_STATES} (use a smaller instance)")
        return self._all_states()

    def true_log_partition(self) -> float:
        """``log Z = log Σ_x R(x)`` over the terminable states (by enumeration; families may override)."""
        states = self.all_states()
        terminable = self.forward_mask(states)[:, self.exit_action]
        return float(torch.logsumexp(self.log_reward(states[terminable]).double(), 0))

    def target_distribution(self) -> torch.Tensor:
        """``R(x)/Z`` over :meth:`all_states` (zero where exit is not allowed), float64."""
        states = self.all_states()
        terminable = self.forward_mask(states)[:, self.exit_action]
        log_r = self.log_reward(states).double().masked_fill(~terminable, -torch.inf)
        return torch.softmax(log_r, 0)

    # ---------------------------------------------------------------------------- Gymnasium side
    def observation_space(self) -> gym.Space:
        """The Gymnasium observation space of a state (the raw state, not :meth:`encode`)."""
        raise NotImplementedError

    def describe(self, state: torch.Tensor) -> str:
        return str(state.tolist())


class DAGGymEnv(gym.Env):
    """One trajectory through a :class:`DAGEnv` as a Gymnasium episode.

    The observation is the raw state; ``info`` carries ``action_mask`` (also :meth:`action_masks`) and
    ``energy`` (``E(s)`` of the new state). The reward is 0 for a move and ``log R(x)`` for the exit
    action, which terminates the episode (``info["log_reward"]``). Where exit is never a choice
    (``dag.exit_is_forced``: set generation exits exactly when the set is full) the action space has
    no exit action and the move that completes the object terminates the episode. An invalid action
    raises ``ValueError`` naming the valid ones: a masked sampler never proposes one.
    """

    metadata = {"render_modes": []}

    def __init__(self, dag: DAGEnv) -> None:
        self.dag = dag
        self._n = dag.n_actions - 1 if dag.exit_is_forced else dag.n_actions
        self.action_space = gym.spaces.Discrete(self._n)
        self.observation_space = dag.observation_space()
        self._state: torch.Tensor | None = None

    def _obs_info(self) -> tuple[np.ndarray, dict[str, Any]]:
        assert self._state is not None
        state = self._state
        info = {
            "action_mask": self.dag.forward_mask(state)[: self._n].cpu().numpy(),
            "energy": float(self.dag.energy(state)),
        }
        return state.cpu().numpy().astype(self.observation_space.dtype), info

    def action_masks(self) -> np.ndarray:
        """Valid actions in the current state (bool ``[n_actions]``)."""
        if self._state is None:
            raise RuntimeError("call reset() before action_masks()")
        return self.dag.forward_mask(self._state)[: self._n].cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._state = self.dag.initial_states(1)[0]
        return self._obs_info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        mask = self.action_masks()
        if not (0 <= a < self._n and mask[a]):
            raise ValueError(f"action {action} is invalid in state {self.dag.describe(self._state)}; "
                             f"valid actions: {np.flatnonzero(mask).tolist()}")
        if a != self.dag.exit_action:
            self._state = self.dag.step(self._state[None], torch.tensor([a], device=self.dag.device))[0]
            if not (self.dag.exit_is_forced and self.dag.forward_mask(self._state)[self.dag.exit_action]):
                obs, info = self._obs_info()
                return obs, 0.0, False, False, info
        obs, info = self._obs_info()
        log_r = float(self.dag.log_reward(self._state))
        info["log_reward"] = log_r
        self._state = None
        return obs, log_r, True, False, info
