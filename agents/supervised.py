"""Supervised learning on a one-step task: an MLP fitted to the labels by SGD, Adam, or SSO's target-based
surrogates (Lavington, Vaswani, Babanezhad, Schmidt & Le Roux, ICML 2023, "Target-based surrogates for
stochastic optimization", arXiv 2302.02607; digest ``papers/one-step-tasks.md`` §12).

A full-information ``contexts`` agent (``uses_labels = True``): each update gets a batch of ``obs`` and
``target`` and takes one step on the mean batch loss

    L(θ) = ℓ(f(θ; X)) + R(θ),      ℓ(z) = (1/n) Σ_i ℓ_i(z_i, y_i),

with ``f`` the network (:func:`rl_energy.nets.mlp`; ``agent.hidden: []`` is a linear / multinomial-logistic
model) and ``R`` = :meth:`Supervised.regularizer`: 0, or with ``agent.mhe`` the minimum hyperspherical energy
regulariser (Liu et al., NeurIPS 2018, Eq. (3); :func:`rl_energy.nets.mhe_regularizer`, digest §18)
``λ_h Σ_hidden E(W_l) + λ_o E(W_out)`` with ``λ_h = agent.mhe_hidden`` and ``λ_o = agent.mhe_output``.

Losses (``agent.loss``):

* ``ce``: ``ℓ_i = −log softmax(z_i)[y_i]``, for logits ``z_i`` and a class index ``y_i`` (the task's reward is
  its negative on ``rl_energy/Classification-v0``);
* ``mse``: ``ℓ_i = ‖z_i − y_i‖²`` summed over the output dimensions (the reward ``−‖a − a*‖²`` of regression
  and imitation tasks);
* ``auto``: ``ce`` when the target is one number per sample while the action has more than one dimension (a
  class index for logits: nothing else matches those shapes), ``mse`` when the target has the action's
  shape. Resolved from the shapes of the first batch (or of the train split, :meth:`observe_train_split`).

Optimisers (``agent.optimizer``), each update counting as **one expensive gradient** (one gradient of
``ℓ`` with respect to the model's outputs, i.e. one batch of labels used):

* ``sgd``: ``torch.optim.SGD`` (``lr``, heavy-ball ``momentum``, coupled ``weight_decay``);
* ``adam``: the project's Adam (:func:`rl_energy.optim.adam`; ``weight_decay`` coupled L2);
* ``sso``: :class:`rl_energy.optim.TargetSurrogate` (paper Algorithm 1): one expensive target gradient
  ``g_t = ∇_z ℓ(z_t)``, then ``sso_m`` cheap inner steps on ``q_t(θ) = ℓ(z_t) + ⟨g_t, f(θ) − z_t⟩ +
  (1/2η)(1/n)‖f(θ) − z_t‖² + R(θ) + (λ/2)‖θ‖²`` (``η`` = ``sso_eta``, per sample: see the class) by SGD
  (``sso_inner: sgd``, step ``sso_inner_lr``, ``momentum``) or Armijo line search (``sso_inner: armijo``,
  first trial step ``sso_inner_lr`` at every outer step). ``lr`` is unused.

**Importance weights.** A batch with a ``weight`` key (``[n]``, e.g. ReTaSA's ω̂ on
``rl_energy/TargetShiftRegression-v0``) replaces the mean by the weighted mean ``Σ_i w_i ℓ_i / Σ_i w_i``
(importance-weighted ERM, digest §2), in every optimiser's loss.

``agent.lr_milestones`` (update counts) multiply the ``sgd``/``adam`` step size by ``agent.lr_decay`` at each
milestone passed (the step schedule of the MHE paper's training).

Logged: ``loss`` (the batch's ``ℓ`` before the step, without ``R``), ``expensive_grads`` (cumulative target gradients),
``model_grads`` (cumulative backward passes through the network: one per update for sgd/adam, ``sso_m``
per update for sso), ``step_size`` (``lr``, or SSO's last inner step size).

The network keeps float32 matrix products (``keep_fp32``): bfloat16 rounding would blur the small
differences between optimisers that the SSO comparison measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from rl_energy.agent import Agent, NonFiniteError, assert_finite
from rl_energy.errors import ConfigError, require
from rl_energy.nets import ACTIVATIONS, MHE_VARIANTS, mhe_regularizer, mlp
from rl_energy.optim import INNER_OPTIMIZERS, TargetSurrogate, adam

LOSSES = ("auto", "ce", "mse")
OPTIMIZERS = ("sgd", "adam", "sso")
CHUNK = 8192
"""Rows per chunk when acting on a whole split."""


@dataclass
class SupervisedConfig:
    """Defaults: a small MLP trained by Adam; configs/supervised/ holds the per-task settings (SSO)."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 250_000, "batch_size": 125, "eval_every": 25_000, "log_every": 2_500, "checkpoint_every": 0,
    }
    """``train`` keys in contexts: 2,000 updates of 125 contexts (the digest's batch size 125)."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the MLP; ``[]`` gives a linear (logistic, for ``ce``) model."""
    activation: str = "relu"
    loss: str = "auto"
    """``auto`` | ``ce`` | ``mse`` (module docstring)."""
    optimizer: str = "adam"
    """``sgd`` | ``adam`` | ``sso``."""
    lr: float = 1e-3
    """Step size of ``sgd`` and ``adam`` (unused by ``sso``: see ``sso_eta`` and ``sso_inner_lr``)."""
    momentum: float = 0.0
    """Heavy-ball momentum of ``sgd`` and of SSO's ``sgd`` inner steps."""
    weight_decay: float = 0.0
    """Coupled L2 penalty ``(λ/2)‖θ‖²`` (all optimisers)."""
    sso_m: int = 10
    """SSO: inner steps per expensive gradient (paper: m ∈ {1, 5, 10, 100})."""
    sso_eta: float = 1.0
    """SSO: η, the per-sample target-space step (``q_t ≥ ℓ`` when every ``ℓ_i`` is 1/η-smooth: η ≤ 2 for ``ce``,
    η ≤ 1/2 for ``mse``)."""
    sso_inner: str = "armijo"
    """SSO: ``sgd`` | ``armijo`` inner optimiser."""
    lr_milestones: list[int] = field(default_factory=list)
    """``sgd``/``adam``: the updates after which the step size is multiplied by ``lr_decay`` (e.g. ``[750, 1125]``)."""
    lr_decay: float = 0.1
    mhe: str = "none"
    """``none`` or an MHE variant: ``s0``, ``s1``, ``s2`` (distance), ``a0``-``a2`` (angular), ``half_`` + any of
    them (half-space, hidden layers only); :data:`rl_energy.nets.MHE_VARIANTS`."""
    mhe_hidden: float = 1.0
    """``λ_h``, the weight of the hidden layers' energies (the paper's 1 for distance variants, 0.1 for angular)."""
    mhe_output: float = 10.0
    """``λ_o``, the weight of the output layer's energy (the paper's 10 for distance variants, 1 for angular)."""
    sso_inner_lr: float = 10.0
    """SSO: the inner SGD step size, or the Armijo search's first trial step at each outer step (the official
    code restarts its line search at 10)."""

    def validate(self) -> None:
        require(self, "hidden", isinstance(self.hidden, list) and all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden),
            "a list of positive widths ([] for a linear model)")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        require(self, "loss", self.loss in LOSSES, f"one of {', '.join(LOSSES)}")
        require(self, "optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
        for key in ("lr", "sso_eta", "sso_inner_lr"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value > 0, "> 0")
        require(self, "momentum", 0 <= self.momentum < 1, "in [0, 1)")
        require(self, "weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0")
        require(self, "sso_m", self.sso_m >= 1, ">= 1")
        require(self, "lr_milestones", isinstance(self.lr_milestones, list) and all(
            isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in self.lr_milestones),
            "a list of positive update counts")
        require(self, "lr_decay", math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1, "in (0, 1]")
        require(self, "mhe", self.mhe == "none" or self.mhe in MHE_VARIANTS,
                f"none or one of {', '.join(sorted(MHE_VARIANTS))}")
        for key in ("mhe_hidden", "mhe_output"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value >= 0, ">= 0")
        require(self, "sso_inner", self.sso_inner in INNER_OPTIMIZERS, f"one of {', '.join(INNER_OPTIMIZERS)}")
        require(self, "momentum", not (self.optimizer == "sso" and self.sso_inner == "armijo" and self.momentum),
                "0 with agent.optimizer=sso and agent.sso_inner=armijo (the line search takes plain gradient steps)")


class Supervised(Agent):
    """An MLP fitted to a one-step task's labels by SGD, Adam or SSO (see the module docstring)."""

    Config = SupervisedConfig
    collection = "contexts"
    uses_labels = True
    metric_names = ("loss", "expensive_grads", "model_grads", "step_size")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: SupervisedConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        self.net = mlp(self.obs_dim, c.hidden, self.action_dim, activation=ACTIVATIONS[c.activation])
        self.net.keep_fp32 = True
        self.to(self.device)
        self.loss_kind: str | None = None if c.loss == "auto" else c.loss
        if c.loss == "ce" and self.action_dim < 2:
            raise ConfigError(f"config key 'agent.loss' must not be ce for a {self.action_dim}-dimensional action "
                              "(cross-entropy needs one logit per class), got 'ce'")
        params = list(self.net.parameters())
        if c.optimizer == "sso":
            opt: Any = TargetSurrogate(params, m=c.sso_m, eta=c.sso_eta, inner=c.sso_inner, inner_lr=c.sso_inner_lr,
                                       momentum=c.momentum, weight_decay=c.weight_decay)
        elif c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        else:
            opt = adam([{"params": params, "weight_decay": c.weight_decay}], c.lr)
        self.optimizers = {"net": opt}

    # ------------------------------------------------------------------------------- the loss
    def resolve_loss(self, target: torch.Tensor) -> str:
        """``ce`` or ``mse`` for targets shaped like ``target`` (``[N, ...]``): ``agent.loss``, or for ``auto`` the
        rule of the module docstring. Raises ``ValueError`` when the shapes fit neither."""
        per_sample = int(target[0].numel()) if target.dim() > 1 else 1
        kind = self.loss_kind
        if kind is None:
            if per_sample == self.action_dim:
                kind = "mse"
            elif per_sample == 1 and self.action_dim > 1:
                kind = "ce"
            else:
                raise ValueError(f"agent.loss=auto cannot match targets of {per_sample} numbers per sample to "
                                 f"{self.action_dim}-dimensional actions; set agent.loss")
            self.loss_kind = kind
        if kind == "mse" and per_sample != self.action_dim:
            raise ValueError(f"agent.loss=mse needs targets shaped like the action ({self.action_dim} numbers per "
                             f"sample), got {per_sample}")
        if kind == "ce" and per_sample != 1:
            raise ValueError(f"agent.loss=ce needs one class index per sample, got {per_sample} numbers per sample")
        return kind

    def data_loss(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``ℓ``: the mean over the batch of the per-sample losses of outputs ``pred`` ``[n, A]`` (module docstring), or
        with per-sample ``weight`` ``[n]`` the weighted mean ``Σ w_i ℓ_i / Σ w_i`` (importance-weighted ERM)."""
        if self.resolve_loss(target) == "ce":
            per_sample = F.cross_entropy(pred, target.reshape(-1).long(), reduction="none")
        else:
            per_sample = (pred - target.reshape(pred.shape)).pow(2).sum(-1)
        if weight is None:
            return per_sample.mean()
        weight = weight.reshape(-1).to(per_sample)
        return (weight * per_sample).sum() / weight.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)

    def regularizer(self) -> torch.Tensor:
        """``R(θ)``, a penalty on the parameters added to every optimiser's objective (and to SSO's surrogate,
        where it is a cheap term): the MHE regulariser of ``agent.mhe`` (module docstring), or 0."""
        c = self.config
        if c.mhe == "none":
            return torch.zeros((), device=self.device)
        return mhe_regularizer(self.net, c.mhe, c.mhe_hidden, c.mhe_output)

    def objective(self, pred: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, ℓ)`` with ``L = ℓ(pred) + R(θ)``, the loss that ``sgd`` and ``adam`` minimise (SSO takes ``ℓ`` and
        ``R`` apart: ``ℓ`` is the targets' loss, ``R`` a cheap term of its surrogate)."""
        data = self.data_loss(pred, target, weight)
        return data + self.regularizer(), data

    # ------------------------------------------------------------------------------- acting
    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The network's outputs in the task's units (logits, controls, predictions); deterministic either way."""
        obs = obs.to(self.device).reshape(-1, self.obs_dim)
        if not len(obs):
            return obs.new_zeros(0, self.action_dim)
        return torch.cat([self.net(chunk) for chunk in obs.split(CHUNK)])

    # ------------------------------------------------------------------------------- training
    def observe_train_split(self, data: TensorDict) -> None:
        """Resolve ``agent.loss=auto`` from the train split's target shape (before the first update)."""
        if "target" in data.keys():
            self.resolve_loss(data["target"])

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        obs = batch["obs"].to(self.device).reshape(-1, self.obs_dim)
        target = batch["target"].to(self.device)
        weight = batch["weight"].to(self.device) if "weight" in batch.keys() else None
        opt = self.optimizers["net"]
        if isinstance(opt, TargetSurrogate):
            def checked_loss(z: torch.Tensor) -> torch.Tensor:
                value = self.data_loss(z, target, weight)
                assert_finite("loss", value)
                return value

            start = [p.detach().clone() for p in self.net.parameters()]
            out = opt.step(lambda: self.net(obs), checked_loss, extra=self.regularizer)
            if not all(bool(torch.isfinite(p).all()) for p in self.net.parameters()):
                with torch.no_grad():  # the bad step never stays in the parameters
                    for p, p0 in zip(self.net.parameters(), start, strict=True):
                        p.copy_(p0)
                raise NonFiniteError("parameters", "an SSO inner step diverged: lower agent.sso_inner_lr")
            self.num_updates += 1
            return {"loss": out["loss"], "expensive_grads": torch.tensor(float(opt.expensive_calls)),
                    "model_grads": torch.tensor(float(opt.model_grads)), "step_size": out["step_size"]}
        total, data = self.objective(self.net(obs), target, weight)
        assert_finite("loss", total)
        lr = self.config.lr * self.config.lr_decay ** sum(self.num_updates >= m for m in self.config.lr_milestones)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        total.backward()
        opt.step()
        self.num_updates += 1
        count = torch.tensor(float(self.num_updates))
        return {"loss": data.detach(), "expensive_grads": count, "model_grads": count.clone(),
                "step_size": torch.tensor(lr)}

    def expensive_grads(self) -> int:
        """Expensive (target) gradients used so far: SSO's counter, or one per update for sgd/adam."""
        opt = self.optimizers["net"]
        return opt.expensive_calls if isinstance(opt, TargetSurrogate) else self.num_updates
