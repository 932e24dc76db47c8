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
        return self._gather(self._sample_slots(batch_size))

    def _sample_slots(self, batch_size: int) -> torch.Tensor:
        """Slot indices of ``batch_size`` uniformly drawn valid transitions."""
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
        return idx

    def _gather(self, idx: torch.Tensor) -> TensorDict:
        s = self.storage
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
            batch_size=[len(idx)],
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


class HERReplayBuffer(ReplayBuffer):
    """:class:`ReplayBuffer` with hindsight relabelling (Andrychowicz et al. 2017, the ``future`` strategy).

    Observations are flattened goal observations (:class:`rl_energy.goals.GoalLayout`). A sampled
    transition at time ``t`` is relabelled with probability ``her_ratio`` (0.8 is HER's ``k = 4``): its
    desired goal, in ``obs`` and ``next_obs``, becomes the achieved goal of an observation drawn
    uniformly from the same episode at times ``t+1 … T`` (``T``: the episode's final observation, or the
    newest one while it runs), and its reward is recomputed by ``reward_fn(achieved, desired)`` (the
    env's vectorised ``compute_reward``) at the next observation.

    Each slot records the row holding its episode's final observation (``episode_end``), written when the
    episode's autoreset slot arrives (``valid=False``; :meth:`close_stream` on resume ends them too).
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        action_dim: int,
        layout: Any,
        reward_fn: Any,
        her_ratio: float = 0.8,
        device: torch.device | str = "cpu",
        seed: int = 0,
        terminate_on_success: bool = False,
    ) -> None:
        super().__init__(capacity, num_envs, obs_shape, action_dim, device, seed)
        if not 0.0 <= her_ratio <= 1.0:
            raise ValueError(f"her_ratio must be in [0, 1], got {her_ratio}")
        self.layout, self.reward_fn, self.her_ratio = layout, reward_fn, her_ratio
        self.terminate_on_success = terminate_on_success
        """Mark every sampled transition that reaches its (possibly relabelled) goal, reward 0, as terminal: the
        value then bootstraps only until success (the SVGG/mrl agent's ``first_visit_succ``)."""
        self.storage["episode_end"] = torch.full((self.capacity,), -1, dtype=torch.long, device=self.device)
        self.episode_start = np.zeros(num_envs, dtype=np.int64)
        """Row of each env's current episode's first observation."""

    def add(self, obs: Any, action: Any, reward: Any, terminated: Any, valid: Any) -> None:
        row = self.row
        super().add(obs, action, reward, terminated, valid)
        self.storage["episode_end"][row * self.num_envs: (row + 1) * self.num_envs] = -1
        ended = np.flatnonzero(~np.asarray(valid, dtype=bool))
        for env in ended:  # ``obs`` is the final observation of the episode that began at episode_start
            length = (row - self.episode_start[env]) % self.rows
            rows = (self.episode_start[env] + torch.arange(length, device=self.device)) % self.rows
            self.storage["episode_end"][rows * self.num_envs + int(env)] = row
        self.episode_start[ended] = (row + 1) % self.rows

    def sample(self, batch_size: int) -> TensorDict:
        batch = self._sample_relabelled(batch_size)
        if self.terminate_on_success:
            batch["terminated"] = batch["terminated"] | (batch["reward"] == 0)
        return batch

    def _sample_relabelled(self, batch_size: int) -> TensorDict:
        idx = self._sample_slots(batch_size)
        batch = self._gather(idx)
        relabel = torch.rand(batch_size, generator=self.generator, device=self.device) < self.her_ratio
        if not bool(relabel.any()):
            return batch
        idx, batch_rel = idx[relabel], batch[relabel]
        row, env = idx // self.num_envs, idx % self.num_envs
        end = self.storage["episode_end"].index_select(0, idx)
        end = torch.where(end < 0, (self.row - 1) % self.rows, end)  # the episode is still running
        span = (end - row) % self.rows  # >= 1: the next observation is always there
        u = torch.rand(len(idx), generator=self.generator, device=self.device)
        offset = 1 + (u * span).long().clamp(max=span - 1)
        future = ((row + offset) % self.rows) * self.num_envs + env
        goal = self.storage["obs"].index_select(0, future)[:, self.layout.achieved]
        obs, next_obs = batch_rel["obs"], batch_rel["next_obs"]
        obs[:, self.layout.desired] = goal
        next_obs[:, self.layout.desired] = goal
        reward = self.reward_fn(next_obs[:, self.layout.achieved].cpu().numpy(), goal.cpu().numpy())
        batch["obs"][relabel] = obs
        batch["next_obs"][relabel] = next_obs
        batch["reward"][relabel] = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "episode_start": torch.as_tensor(self.episode_start)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.episode_start = state["episode_start"].numpy().astype(np.int64)
