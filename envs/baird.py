"""``rl_energy/Baird-v0``: Baird's (1995) counterexample, the 7-state star MDP where off-policy TD with
linear features diverges (Sutton & Barto 2018, Ex. 11.1 and Fig. 11.1; TD digest §4).

States 0-5 are the "upper" states and state 6 the "lower" one. Two actions: ``0`` = dashed, which
jumps to one of the six upper states uniformly at random, and ``1`` = solid, which goes to the lower
state. Every reward is 0, so the true value function is 0 and representable. The observation is the
state's feature vector (8 features, more than states):

    x(i) = 2 e_i + e_8 (upper state i),   x(6) = e_7 + 2 e_8,

so ``V(i) = 2w_i + w_8`` and ``V(6) = w_7 + 2w_8``. The **behaviour policy** μ takes dashed with
probability 6/7 and solid with 1/7, which keeps the state distribution uniform; the **target policy** π
always takes solid. ``info["importance_ratio"]`` is ``π(a|s)/μ(a|s)`` of the action taken (7 for solid,
0 for dashed). The task is continuing; episodes are cut (truncated) after ``max_episode_steps`` only
to bound a run's bookkeeping. :meth:`BairdEnv.linear_mdp` returns the MDP for the TD-stability analysis
(:mod:`rl_energy.analysis.td_stability`) with γ = 0.99 and the standard start ``w0 = (1,1,1,1,1,1,10,1)``
in :data:`INIT_WEIGHTS`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rl_energy.analysis.td_stability import LinearMDP

N_STATES, N_FEATURES = 7, 8
LOWER = 6
DASHED, SOLID = 0, 1
BEHAVIOUR_POLICY = (6 / 7, 1 / 7)
"""μ(dashed), μ(solid): the same in every state."""
TARGET_POLICY = (0.0, 1.0)
"""π(dashed), π(solid)."""
GAMMA = 0.99
INIT_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 1.0)
"""The customary start (Sutton & Barto Fig. 11.2)."""


def baird_features() -> np.ndarray:
    """The ``[7, 8]`` feature matrix (module docstring)."""
    x = np.zeros((N_STATES, N_FEATURES))
    for i in range(N_STATES - 1):
        x[i, i], x[i, 7] = 2.0, 1.0
    x[LOWER, 6], x[LOWER, 7] = 1.0, 2.0
    return x


class BairdEnv(gym.Env):
    """``gym.make("rl_energy/Baird-v0")``: observations are the 8 features of the current state."""

    metadata = {"render_modes": []}

    def __init__(self, gamma: float = GAMMA) -> None:
        self.gamma = gamma
        self.features = baird_features().astype(np.float32)
        self.observation_space = gym.spaces.Box(0.0, 2.0, shape=(N_FEATURES,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.state = 0
        self.init_weights = np.array(INIT_WEIGHTS)
        """The start of ``rl-energy analyze td``'s runs."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = int(self.np_random.integers(N_STATES))  # μ's stationary distribution is uniform
        return self.features[self.state].copy(), {"state": self.state}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"Baird-v0 actions are 0 (dashed) and 1 (solid), got {action!r}")
        action = int(action)
        ratio = TARGET_POLICY[action] / BEHAVIOUR_POLICY[action]
        self.state = LOWER if action == SOLID else int(self.np_random.integers(N_STATES - 1))
        return self.features[self.state].copy(), 0.0, False, False, {"state": self.state, "importance_ratio": ratio}

    def linear_mdp(self) -> LinearMDP:
        """Baird's MDP as a :class:`LinearMDP`: uniform ``d``, μ and π as above."""
        transitions = np.zeros((N_STATES, 2, N_STATES))
        transitions[:, DASHED, :LOWER] = 1.0 / (N_STATES - 1)
        transitions[:, SOLID, LOWER] = 1.0
        return LinearMDP(
            features=baird_features(),
            rewards=np.zeros((N_STATES, 2)),
            transitions=transitions,
            behaviour=np.tile(BEHAVIOUR_POLICY, (N_STATES, 1)),
            target=np.tile(TARGET_POLICY, (N_STATES, 1)),
            state_dist=np.full(N_STATES, 1.0 / N_STATES),
            gamma=self.gamma,
        )
