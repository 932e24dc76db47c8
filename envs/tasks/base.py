"""The one-step task contract (ARCHITECTURE.md, "One-step tasks").

A supervised or statistical paper becomes a contextual bandit: an episode of one step whose
observation is an input (a *context*), whose action is the model's output and whose reward is the
task's score of that output. Full-information tasks also hand the label over in ``info["target"]``.

Besides the Gymnasium side (``reset``/``step``, written here once), a task has a batched side that
the ``contexts`` loop (:mod:`rl_energy.trainer.contexts`) uses without a Python step per sample:

* :meth:`OneStepTask.contexts` draws a batch of contexts of a split as a TensorDict (``obs`` and, for
  full-information tasks, ``target``); the ``test`` split is fixed and ``n=None`` returns all of it;
* :meth:`OneStepTask.score` turns a batch of actions into per-sample rewards;
* :meth:`OneStepTask.metrics` gives batch-level figures (a correlation, a relative error), which are
  never per-step rewards.

Subclasses set ``observation_space``, ``action_space`` (a bounded Box, so that step agents acting in
``[-1, 1]`` can be rescaled to it) and the data of each split in :meth:`_split`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

Split = Literal["train", "test"]


class OneStepTask(gym.Env):
    """A gymnasium env whose episode is one step, plus a batched side for the ``contexts`` loop."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    metric_names: ClassVar[tuple[str, ...]] = ()
    """Names of the batch-level figures :meth:`metrics` returns (logged at each evaluation)."""
    sampling: ClassVar[bool] = False
    """True for tasks whose score is about a *distribution* of actions (a sampler's mode weights, a
    transport plan): evaluations then sample actions (``deterministic=False``) instead of taking the
    agent's deterministic ones."""
    full_information: ClassVar[bool] = True
    """Whether :meth:`contexts` gives the labels (``target``) and ``step`` puts them in ``info``."""

    # ----------------------------------------------------------------------------- to implement
    def _split(self, split: Split) -> TensorDict:
        """The whole ``split`` as a TensorDict of ``[N, ...]`` float32 tensors (``obs``, optionally
        ``target`` and any task-private keys the score needs). Built once, deterministically."""
        raise NotImplementedError

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-context rewards ``[n]`` of ``action`` (``[n, *action_space.shape]``, in the task's units)."""
        raise NotImplementedError

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """Batch-level figures named in :attr:`metric_names` (e.g. relative MSE, a correlation)."""
        return {}

    # ------------------------------------------------------------------------------ batched side
    def split_size(self, split: Split) -> int:
        return int(self._cached(split).batch_size[0])

    def _cached(self, split: Split) -> TensorDict:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        cache = self.__dict__.setdefault("_splits", {})
        if split not in cache:
            cache[split] = self._split(split)
        return cache[split]

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Which training contexts a batch of ``n`` draws (uniform with replacement; tasks with a
        sampling option, such as stratified batches, override this)."""
        return rng.integers(self.split_size("train"), size=n)

    def contexts(self, split: Split, n: int | None = None, rng: np.random.Generator | None = None) -> TensorDict:
        """``n`` contexts of ``split`` (``obs`` and, for full-information tasks, ``target``); ``n=None``:
        the whole split in its fixed order."""
        data = self._cached(split)
        if n is None:
            return data
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rng = rng if rng is not None else np.random.default_rng()
        if split == "train":
            idx = self.sample_indices(n, rng)
        else:
            idx = rng.integers(self.split_size(split), size=n)
        return data[torch.as_tensor(idx, dtype=torch.long)]

    # ---------------------------------------------------------------------------- gymnasium side
    def _info(self) -> dict[str, Any]:
        if not self.full_information:
            return {}
        return {"target": self._context["target"][0].numpy().copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._context = self.contexts("train", 1, self.np_random)
        return self._context["obs"][0].numpy().copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if getattr(self, "_context", None) is None:
            raise RuntimeError("call reset() before step()")
        # the context stays: stepping again (an ended episode) scores the same context
        a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(1, *self.action_space.shape)
        reward = float(self.score(self._context, a)[0])
        return self._context["obs"][0].numpy().copy(), reward, True, False, self._info()


def is_number(value: Any) -> bool:
    """A finite real number (``bool`` excluded): the check of every numeric task kwarg."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def is_int(value: Any) -> bool:
    """An integer (``bool`` excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
