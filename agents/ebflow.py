"""MEow: maximum-entropy RL with an energy-based normalizing-flow policy (Chao, Feng et al., NeurIPS 2024).

The policy is a state-conditioned flow (:class:`rl_energy.flows.ConditionalFlow`); Q and V are read
off its factorised density (MEow Eq. 8–9, §3 of ``papers/ebflow-meow.md``)::

    Q_k(s, a) = α [ -½‖ε‖² - Σ log(1 - a² + ε_f) + b_k(s) ]      (non-linear layers + shift)
    V_k(s)    = α [ ½ A log 2π + Σ log σ(s) + b_k(s) ]             (linear layer + shift)

so ``Q_k - V_k = α log π(a|s)`` exactly, and ``b_1, b_2`` are the learnable reward shifts (LRS).
Algorithm 1, per gradient step:

1. target ``y = r + γ (1 - terminated) [V̄(s') + min(b̄_1(s'), b̄_2(s'))]`` from the target network
   (shifting-based clipped double Q, SCDQ); truncated episodes bootstrap;
2. loss ``L = E[½ (Q_1(s,a) - y)² + ½ (Q_2(s,a) - y)²]``, both heads from one pass over the batch
   (the flow's dropout mask is shared by the two heads);
3. one Adam step over all parameters (flow, scale net, shift nets, Swish β), gradient norm clipped;
4. Polyak averaging of the target network with rate τ.

There is no actor loss: acting samples the same flow (``ε ~ N(0, I)``); the deterministic action pushes
the prior mean ``ε = 0`` through it (MEow §6). With ``autotune`` the temperature follows SAC's
``J(α) = E[-α (log π + H̄)]`` on fresh samples (off by default, as in the paper).

The target network needs only ``V̄`` and ``b̄``, which depend on the scale net and the shift nets, so
only those are copied and averaged (the couplings never enter the target; MEow keeps a full copy).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from rl_energy.agent import Agent, CompiledFn, assert_finite
from rl_energy.errors import require
from rl_energy.flows import ConditionalFlow, FlowDensity
from rl_energy.nets import Dropout, EnsembleMLP, advance_dropout_seeds, polyak_update
from rl_energy.optim import adam


@dataclass
class EBFlowConfig:
    """Defaults are MEow's Hopper-v4 settings (paper §7); the per-env configs override α, τ and σ bounds."""

    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 1e-3
    alpha: float = 0.25
    """Temperature α (fixed per environment in the paper)."""
    autotune: bool = False
    target_entropy: float | None = None
    """With ``autotune``; ``None``: ``-|A|``."""
    grad_clip: float = 30.0
    """Maximum global gradient norm (0 disables clipping)."""
    flow_hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the coupling nets and of the scale net."""
    num_couplings: int = 4
    dropout: float = 0.1
    """Dropout in the coupling nets (training pass only)."""
    log_std_min: float = -5.0
    log_std_max: float = -0.3
    shift_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the two reward-shift nets b_1, b_2."""

    def validate(self) -> None:
        require(self, "gamma", 0 <= self.gamma <= 1, "in [0, 1]")
        require(self, "tau", 0 < self.tau <= 1, "in (0, 1]")
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "alpha", self.alpha > 0, "> 0")
        require(self, "grad_clip", self.grad_clip >= 0, ">= 0")
        require(self, "num_couplings", self.num_couplings >= 0, ">= 0")
        require(self, "dropout", 0 <= self.dropout < 1, "in [0, 1)")
        require(self, "log_std_min", self.log_std_min < self.log_std_max, "below agent.log_std_max")
        for key in ("flow_hidden", "shift_hidden"):
            widths = getattr(self, key)
            require(self, key, bool(widths) and min(widths) >= 1, "a list of positive widths")


class EBFlow(Agent):
    """MEow: energy-based normalizing-flow policy; Q and V from one flow, one loss (MaxEnt RL)."""

    Config = EBFlowConfig

    metric_names = ("loss", "q_mean", "v_mean", "shift_gap", "log_std_mean", "alpha", "grad_norm")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: EBFlowConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        self.flow = ConditionalFlow(
            self.obs_dim, self.action_dim, c.flow_hidden, c.num_couplings, c.dropout, c.log_std_min, c.log_std_max
        )
        # The flow's outputs are divided by σ(s) (down to e^-5) in the density: its products stay in
        # float32 whatever train.matmul_precision says; the 256-wide shift nets may use bfloat16.
        for m in self.flow.modules():
            if hasattr(m, "keep_fp32"):
                m.keep_fp32 = True
        self.shift = EnsembleMLP(2, self.obs_dim, c.shift_hidden, 1, activation=nn.SiLU)  # LRS heads b_1, b_2
        for layer in self.shift.layers:
            nn.init.zeros_(layer.weight)
        self.scale_target = copy.deepcopy(self.flow.scale).requires_grad_(False)
        self.shift_target = copy.deepcopy(self.shift).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(c.alpha)), requires_grad=c.autotune)
        self.target_entropy = -float(self.action_dim) if c.target_entropy is None else c.target_entropy
        self.to(self.device)
        self._dropouts = [m for m in self.flow.modules() if isinstance(m, Dropout)]
        self._set_dropout(False)
        self._params = list(self.flow.parameters()) + list(self.shift.parameters())
        self.optimizers = {"model": adam(self._params, c.lr, flat=True)}  # every parameter trains every step
        if c.autotune:
            self.optimizers["alpha"] = adam([self.log_alpha], c.lr)
        self._loss = self.loss
        self._push = self.flow.push
        self._polyak_pairs = (  # (target, online) parameter lists; the Parameter objects never change
            [*self.scale_target.parameters(), *self.shift_target.parameters()],
            [*self.flow.scale.parameters(), *self.shift.parameters()],
        )

    def compile_update(self) -> bool:
        """Compile :meth:`loss` (target, density pass, shift heads and their backward) and the sampling
        map used by :meth:`act` with Inductor."""
        self._loss = CompiledFn(self.loss, "the EBFlow loss")
        self._push = CompiledFn(self.flow.push, "the EBFlow sampling map")
        return True

    def _set_dropout(self, on: bool) -> None:
        for m in self._dropouts:
            m.training = on

    def train(self, mode: bool = True) -> EBFlow:
        """Dropout is driven by :meth:`update` alone (on in the current-Q pass only, MEow §5), so acting
        is dropout-free whatever mode the trainer sets."""
        super().train(mode)
        self._set_dropout(False)
        return self

    # ---------------------------------------------------------------------------------- Q and V
    def heads(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[FlowDensity, torch.Tensor]:
        """One density pass of the flow and both reward shifts ``b_k(s)`` (``[2, B]``), batch not duplicated."""
        return self.flow.log_prob(action, obs), self.shift(obs).squeeze(-1)

    def q_values(self, obs: torch.Tensor, action: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``Q_k(s, a)`` for both shift heads, ``[2, B]`` (the non-linear part of the flow plus ``b_k``)."""
        density, shift = self.heads(obs, action)
        return alpha * (density.energy_term + shift)

    def v_values(self, obs: torch.Tensor, alpha: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``V_k(s)`` for both heads, ``[2, B]`` (the linear part of the flow plus ``b_k``); from the
        target network with ``target=True``."""
        scale, shift = (self.scale_target, self.shift_target) if target else (self.flow.scale, self.shift)
        return alpha * (self.flow.normaliser(obs, scale(obs)) + shift(obs).squeeze(-1))

    @torch.no_grad()
    def soft_target(
        self, reward: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        """SCDQ: ``y = r + γ (1 - terminated) min_k V̄_k(s')`` with the target network (Algorithm 1)."""
        v_next = self.v_values(next_obs, alpha, target=True).min(0).values
        return reward + self.config.gamma * (1.0 - terminated.float()) * v_next

    # ---------------------------------------------------------------------------------- acting
    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """``a = flow(ε; s)`` with ``ε ~ N(0, I)``, or ``ε = 0`` when ``deterministic`` (MEow §6)."""
        shape = (obs.shape[0], self.action_dim)
        eps = torch.zeros(shape, device=obs.device) if deterministic else torch.randn(shape, device=obs.device)
        return self._push(eps, obs)

    # ---------------------------------------------------------------------------------- learning
    def loss(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        alpha: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Algorithm 1, lines 1–2: the SCDQ target and ``E[½(Q_1 - y)² + ½(Q_2 - y)²]``.

        Returns the loss and its diagnostics (detached means of Q, V, ``|b_1 - b_2|`` and log σ). The
        flow's dropout is whatever :meth:`update` set (the target pass has none).
        """
        y = self.soft_target(reward, next_obs, terminated, alpha)
        density, shift = self.heads(obs, action)
        q = alpha * (density.energy_term + shift)
        loss = (q - y).pow(2).mean()  # mean over [2, B] = E[½(Q_1 - y)² + ½(Q_2 - y)²]
        with torch.no_grad():
            stats = {
                "q_mean": q.mean(),
                "v_mean": (alpha * (density.normaliser + shift)).mean(),
                "shift_gap": (shift[0] - shift[1]).abs().mean(),
                "log_std_mean": (density.normaliser.mean() - self.flow.log_norm_const) / self.action_dim,
            }
        return loss, stats

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c, opt = self.config, self.optimizers
        self.num_updates += 1
        alpha = self.log_alpha.detach().exp()
        obs = batch["obs"]
        self._set_dropout(c.dropout > 0)  # dropout in the current-Q pass only (MEow §5)
        try:
            loss, stats = self._loss(
                obs, batch["action"], batch["reward"], batch["next_obs"], batch["terminated"], alpha
            )
        finally:
            self._set_dropout(False)
        assert_finite("loss", loss)
        opt["model"].zero_grad(set_to_none=True)
        loss.backward()
        advance_dropout_seeds(self._dropouts)  # next update's masks (after the backward, which reads them)
        grad_norm = opt["model"].clip_step(c.grad_clip or math.inf)  # clip to c.grad_clip, one Adam step
        metrics = {"loss": loss.detach(), **stats, "alpha": alpha, "grad_norm": grad_norm}
        if c.autotune:  # SAC's temperature loss on fresh samples of the current policy
            with torch.no_grad():
                _, log_prob = self.flow.sample(obs, with_log_prob=True)
            alpha_loss = -(self.log_alpha * (log_prob + self.target_entropy)).mean()
            assert_finite("alpha_loss", alpha_loss)
            opt["alpha"].zero_grad(set_to_none=True)
            alpha_loss.backward()
            opt["alpha"].step()

        polyak_update(*self._polyak_pairs, c.tau)  # V̄ and b̄ only (Algorithm 1)
        return metrics
