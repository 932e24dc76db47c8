"""Replay storage on preallocated TensorDicts.

:class:`ReplayBuffer` is a ring buffer over the *observation stream* of each vector env. It stores
every observation exactly once: the next observation of slot ``i`` is the observation in slot
``i + num_envs`` (the same env one step later). This is what Gymnasium 1.x's ``NEXT_STEP`` autoreset
hands us: when an episode ends at step ``t`` the returned observation is the true final one (stored as
the next observation, so truncated transitions bootstrap from it), and the following ``step`` call
only resets the env. That reset "transition" is stored with ``valid=False`` and never sampled.

Memory: one observation, one action, a reward and two flags per slot. 1M Humanoid-v4 slots
(obs 376 floats, action 17) take 1.58 GB instead of 3.08 GB with a separate ``next_obs`` array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict


class ReplayBuffer:
    """Uniform replay over ``capacity`` transitions from ``num_envs`` parallel environments."""

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        action_dim: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if capacity < 2 * num_envs:
            raise ValueError("replay capacity must hold at least two steps of every env")
        self.num_envs = num_envs
        self.rows = capacity // num_envs
        self.capacity = self.rows * num_envs
        self.device = torch.device(device)
        cap = self.capacity
        # torch.empty: pages are committed only when written, so a large buffer costs what it holds.
        self.storage = TensorDict(
            {
                "obs": torch.empty(cap, *obs_shape, dtype=torch.float32, device=self.device),
                "action": torch.empty(cap, action_dim, dtype=torch.float32, device=self.device),
                "reward": torch.empty(cap, dtype=torch.float32, device=self.device),
                "terminated": torch.zeros(cap, dtype=torch.bool, device=self.device),
                "valid": torch.zeros(cap, dtype=torch.bool, device=self.device),
            },
            batch_size=[cap],
            device=self.device,
        )
        self.row = 0  # next row to write
        self.full = False
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # ------------------------------------------------------------------------------------------ write
    def add(
        self,
        obs: np.ndarray | torch.Tensor,
        action: np.ndarray | torch.Tensor,
        reward: np.ndarray | torch.Tensor,
        terminated: np.ndarray | torch.Tensor,
        valid: np.ndarray | torch.Tensor,
    ) -> None:
        """Append one vector step: ``obs`` is where ``action`` was taken; leading dim ``num_envs``.

        ``valid=False`` marks an autoreset step (``obs`` is a final observation, ``action`` was
        ignored by the env): the slot keeps ``obs`` as the previous transition's next observation but
        is itself never sampled.
        """
        start = self.row * self.num_envs
        sl = slice(start, start + self.num_envs)
        s = self.storage
        s["obs"][sl] = torch.as_tensor(obs, dtype=torch.float32).reshape(s["obs"][sl].shape)
        s["action"][sl] = torch.as_tensor(action, dtype=torch.float32).reshape(self.num_envs, -1)
        s["reward"][sl] = torch.as_tensor(reward, dtype=torch.float32)
        s["terminated"][sl] = torch.as_tensor(terminated, dtype=torch.bool)
        s["valid"][sl] = torch.as_tensor(valid, dtype=torch.bool)
        self.row += 1
        if self.row == self.rows:
            self.row = 0
            self.full = True

    def close_stream(self, obs: np.ndarray | torch.Tensor) -> None:
        """Store ``obs`` as the last observation of every env's stream (no transition from it).

        Used when the env is re-created (resume): the last stored transitions keep their true next
        observation, and the fresh episode starts in the following slot.
        """
        n = self.num_envs
        self.add(obs, torch.zeros(n, self.action_dim), torch.zeros(n), torch.zeros(n, dtype=torch.bool),
                 torch.zeros(n, dtype=torch.bool))

    # ------------------------------------------------------------------------------------------- read
    @property
    def action_dim(self) -> int:
        return self.storage["action"].shape[1]

    @property
    def rows_written(self) -> int:
        return self.rows if self.full else self.row

    def __len__(self) -> int:
        """Slots that hold a complete transition (valid or not): all written rows but the newest."""
        return max(self.rows_written - 1, 0) * self.num_envs

    def sample(self, batch_size: int) -> TensorDict:
        """A uniform batch of valid transitions with keys obs, action, reward, next_obs, terminated."""
        n = len(self)
        if n == 0:
            raise RuntimeError("cannot sample from a replay buffer with no complete transition")
        start = (self.row * self.num_envs) if self.full else 0  # oldest slot
        s = self.storage
        idx = torch.randint(n, (batch_size,), generator=self.generator, device=self.device)
        if start:
            idx = (idx + start) % self.capacity
        valid = s["valid"].index_select(0, idx)
        tries = 0
        while not bool(valid.all()):  # autoreset slots: about one per episode, so this loop is rare and short
            tries += 1
            if tries > 100:
                raise RuntimeError("replay buffer holds no valid transition to sample")
            bad = ~valid
            redraw = torch.randint(n, (int(bad.sum()),), generator=self.generator, device=self.device)
            idx[bad] = (start + redraw) % self.capacity
            valid = s["valid"].index_select(0, idx)
        next_idx = (idx + self.num_envs) % self.capacity
        obs = s["obs"]
        return TensorDict(
            {
                "obs": obs.index_select(0, idx),
                "action": s["action"].index_select(0, idx),
                "reward": s["reward"].index_select(0, idx),
                "next_obs": obs.index_select(0, next_idx),
                "terminated": s["terminated"].index_select(0, idx),
            },
            batch_size=[batch_size],
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.storage.values())

    # ------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The written part of the storage plus the write position and sampler RNG."""
        used = self.rows_written * self.num_envs
        return {
            "rows": self.rows,
            "num_envs": self.num_envs,
            "row": self.row,
            "full": self.full,
            "generator": self.generator.get_state(),
            "storage": {k: v[:used].clone() if used < self.capacity else v for k, v in self.storage.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rows"] != self.rows or state["num_envs"] != self.num_envs:
            raise ValueError(
                f"checkpointed buffer has {state['rows']}x{state['num_envs']} slots, "
                f"this one {self.rows}x{self.num_envs}: keep train.buffer_size and train.num_envs when resuming"
            )
        self.row = int(state["row"])
        self.full = bool(state["full"])
        self.generator.set_state(state["generator"])
        for key, value in state["storage"].items():
            self.storage[key][: value.shape[0]] = value.to(self.device)
