"""The agent contract shared by every algorithm in ``rl_energy.agents``.

An agent is built from ``(observation_space, action_space, config, device)``. It acts on batches of
observations and learns from batches of transitions; it never steps an environment or writes a file
(the :class:`~rl_energy.trainer.Trainer` does both). Continuous actions are always in ``[-1, 1]^A``
(the trainer rescales them to the environment's bounds); agents with ``discrete_actions`` act with
action indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn


class NonFiniteError(RuntimeError):
    """A loss, action or observation became NaN/inf; ``quantity`` names it."""

    def __init__(self, quantity: str, detail: str = "") -> None:
        self.quantity = quantity
        self.detail = detail
        super().__init__(f"non-finite {quantity}" + (f" ({detail})" if detail else ""))


def assert_finite(quantity: str, value: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` if ``value`` holds NaN or inf.

    Agents call this on each loss *before* the optimiser step, so a bad update never reaches the
    parameters and the trainer can checkpoint the last good state.
    """
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(quantity)


class CompiledFn:
    """``fn`` through ``torch.compile`` (static shapes), falling back to plain ``fn`` if compiling fails.

    Compilation happens at the first call. If it raises (no C++ compiler for Inductor, an unsupported
    op), the failure is reported once as a warning and every later call runs ``fn`` eagerly, so a run
    never dies for want of a compiler. Errors after the first successful call are re-raised.

    The compile lets AOTAutograd's partitioner recompute, in the backward pass, values computed from
    inputs that the forward reads long before (``ban_recompute_used_far_apart`` off). Without it the
    partitioner saves each dropout mask of :class:`rl_energy.nets.Dropout` (a hash of a seed input) as
    a bool tensor, and Inductor's CPU kernels store bool vectors slowly: 0.37 ms of a 2.6 ms EBFlow
    update, against recomputing the hash inside the backward kernels for free.
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        # Dynamo's guards already check every input's size and stride; Inductor's own re-check of
        # them at each call costs about 2% of an EBFlow update.
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=False, options={"size_asserts": False})
        self._warm = False

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args)
        if self._warm:
            return self.compiled(*args)
        try:
            with torch._functorch.config.patch(ban_recompute_used_far_apart=False):
                out = self.compiled(*args)  # compiles (see the class docstring for the patch)
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, keep training
            warnings.warn(f"torch.compile of {self.name} failed, running it uncompiled: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", stacklevel=2)
            self.compiled = None
            return self.fn(*args)
        self._warm = True
        return out


class Agent(nn.Module):
    """Base class: subclasses set ``Config`` and ``metric_names`` and implement ``act``/``update``."""

    Config: ClassVar[type]
    metric_names: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = True
    """False for controllers with nothing to learn (``rl-energy evaluate --agent NAME --env ID``)."""
    collection: ClassVar[Literal["steps", "trajectories", "contexts", "pairs"]] = "steps"
    """How its data is collected, which picks the training loop in :data:`rl_energy.trainer.LOOPS`:
    ``steps`` (transitions into a replay buffer: :class:`~rl_energy.trainer.Trainer`), ``trajectories``
    (whole trajectories through a GFlowNet DAG: :class:`~rl_energy.trainer.TrajectoryTrainer`, which builds
    the agent from the DAG) or ``contexts`` (batches of contexts of a one-step task:
    :class:`~rl_energy.trainer.ContextTrainer`) or ``pairs`` (offline preference pairs of a preference env:
    :class:`~rl_energy.trainer.pairs.PairTrainer`). Step agents run on one-step tasks too, through the
    ``contexts`` loop, as maximum-entropy contextual bandits."""
    uses_labels: ClassVar[bool] = False
    """``contexts`` agents: True for full-information learners, whose :meth:`update` gets the batch's
    ``obs`` and ``target``; False for reward-only ones, which act and get ``action`` and ``reward``."""

    discrete_actions: ClassVar[bool] = False
    """With ``collection = "steps"``: True for agents of ``Discrete`` action spaces (``act`` returns int64
    indices ``[B]``; the buffer's ``action`` column holds them as floats ``[B, 1]``), False for ``Box``
    ones (actions in ``[-1, 1]^A``)."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space | None,
        config: Any,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if self.collection in ("steps", "contexts"):
            space_cls = gym.spaces.Discrete if self.discrete_actions else gym.spaces.Box
            if not isinstance(action_space, space_cls):
                raise TypeError(f"{type(self).__name__} needs a {space_cls.__name__} action space, got {action_space}")
            if not isinstance(observation_space, gym.spaces.Box):
                raise TypeError(f"{type(self).__name__} needs a Box observation space, got {observation_space}")
            self.obs_dim = int(torch.tensor(observation_space.shape).prod())
            if self.discrete_actions:
                self.n_actions = int(action_space.n)
                self.action_dim = 1  # the replay buffer stores the action index
            else:
                self.action_dim = int(torch.tensor(action_space.shape).prod())
        self.config = config
        self.device = torch.device(device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.num_updates = 0
        """Gradient steps taken so far (a Python int: reading it costs no device sync)."""

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions in ``[-1, 1]`` (or int64 indices with ``discrete_actions``) for a batch of observations
        (no gradient)."""
        raise NotImplementedError

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch`` (keys obs, action, reward, next_obs, terminated).

        Returns detached 0-d tensors named as in ``metric_names``; the trainer converts them to
        floats only when it logs, so an update costs no host synchronisation.
        """
        raise NotImplementedError

    def observe_train_split(self, data: TensorDict) -> None:
        """``contexts`` agents: called once before training with the whole train split of the task
        (for data-level statistics such as CISIR's label density); the base class needs none."""

    def compile_update(self) -> bool:
        """Compile the hot part of :meth:`update` (``train.compile``); returns whether the agent has one
        (the base class has none)."""
        return False

    def checkpoint_state(self) -> dict[str, Any]:
        """Parameters, buffers and optimiser states (everything ``torch.save`` needs to resume)."""
        return {
            "modules": self.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "num_updates": self.num_updates,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.num_updates = int(state["num_updates"])

