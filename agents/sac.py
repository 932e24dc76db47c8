"""Soft Actor-Critic (Haarnoja et al., 2018, "SAC: Off-Policy Maximum Entropy Deep RL with a
Stochastic Actor", and the 2018 "Algorithms and Applications" version with automatic temperature).

Per gradient step, in Stable-Baselines3's order (so that our figures compare like with like):

1. sample ``a ~ π(·|s)`` with the reparameterisation trick (Eq. 11), tanh-squashed (Appendix C);
2. temperature: ``J(α) = E[-α (log π(a|s) + H̄)]`` with ``H̄ = -|A|`` (Eq. 18);
3. soft Bellman target ``y = r + γ (1 - terminated) [min_k Q̄_k(s', a') - α log π(a'|s')]``,
   ``a' ~ π(·|s')``, with the target critics Q̄ (Eq. 3, 5, clipped double Q);
4. critic loss ``Σ_k ½ E[(Q_k(s, a) - y)²]`` (Eq. 5) over the fused twin critics;
5. actor loss ``E[α log π(a|s) - min_k Q_k(s, a)]`` (Eq. 12), through the updated critics with
   their parameters detached;
6. Polyak averaging of the target critics with rate τ.

Truncated episodes bootstrap (``terminated`` is the termination flag only).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import gymnasium as gym
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from rl_energy.agent import Agent, assert_finite
from rl_energy.config import validate_actor_critic
from rl_energy.errors import require
from rl_energy.nets import EnsembleMLP, mlp, polyak_update
from rl_energy.optim import adam


@dataclass
class SACConfig:
    """Defaults follow Stable-Baselines3's SAC (learning_starts lives in ``train``)."""

    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    alpha: float = 1.0
    """Initial temperature with ``autotune``, the fixed one without."""
    autotune: bool = True
    target_entropy: float | None = None
    """``None``: ``-|A|`` (the paper's heuristic)."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    actor_update_every: int = 1
    """Actor (and temperature) update period in gradient steps (CleanRL uses 2, SB3 1)."""

    def validate(self) -> None:
        validate_actor_critic(self, ("actor_lr", "critic_lr", "alpha_lr", "alpha"))
        require(self, "log_std_min", self.log_std_min < self.log_std_max, "below agent.log_std_max")


class TanhGaussianActor(nn.Module):
    """``a = tanh(μ(s) + σ(s) ε)``, ``ε ~ N(0, I)``, with the exact log-density of the squashed sample."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], log_std_min: float, log_std_max: float):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and ``log π(a|s)`` (SAC Appendix C, Eq. 21); ``eps ~ N(0, I)`` drawn here
        unless given."""
        mean, log_std = self(obs)
        if eps is None:
            eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; μ, σ) - Σ log(1 - tanh(u)²), the latter as 2 (log 2 - u - softplus(-2u)) for stability
        log_prob = (-0.5 * eps.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob


class SAC(Agent):
    """Soft Actor-Critic with twin critics and automatic entropy tuning (SB3/CleanRL-equivalent)."""

    Config = SACConfig

    metric_names = ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: SACConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        self.actor = TanhGaussianActor(self.obs_dim, self.action_dim, c.hidden, c.log_std_min, c.log_std_max)
        self.critic = EnsembleMLP(2, self.obs_dim + self.action_dim, c.hidden, 1)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(c.alpha)), requires_grad=c.autotune)
        self.target_entropy = -float(self.action_dim) if c.target_entropy is None else c.target_entropy
        self.to(self.device)
        # The temperature shares the actor's optimiser step (its own learning rate, its own parameter
        # group): its gradient only depends on log π of the current batch, exactly as in SB3's order.
        actor_groups = [{"params": list(self.actor.parameters()), "lr": c.actor_lr}]
        if c.autotune:
            actor_groups.append({"params": [self.log_alpha], "lr": c.alpha_lr})
        self.optimizers = {
            "actor": adam(actor_groups, c.actor_lr, flat=True),
            "critic": adam(self.critic.parameters(), c.critic_lr, flat=True),
        }
        self._polyak_pairs = (list(self.critic_target.parameters()), list(self.critic.parameters()))

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self.actor(obs)[0])
        return self.actor.sample(obs)[0]

    @torch.inference_mode()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``min_k Q_k(s, tanh μ(s))``: the critics at the policy's mean action (MEGA's goal cutoff)."""
        action = torch.tanh(self.actor(obs)[0])
        return self.critic(torch.cat([obs, action], -1)).squeeze(-1).min(0).values

    @torch.no_grad()
    def soft_target(
        self, reward: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor, alpha: torch.Tensor,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``y = r + γ (1 - terminated) [min_k Q̄_k(s', a') - α log π(a'|s')]`` (Eq. 3, clipped double Q)."""
        a_next, logp_next = self.actor.sample(next_obs, eps)
        q_next = self.critic_target(torch.cat([next_obs, a_next], -1)).squeeze(-1).min(0).values
        return reward + self.config.gamma * (1.0 - terminated.float()) * (q_next - alpha * logp_next)

    def critic_loss(
        self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
        terminated: torch.Tensor, alpha: torch.Tensor, eps_next: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5 summed over the twins, ``Σ_k ½ E[(Q_k(s, a) - y)²]``, and the mean Q (a diagnostic)."""
        y = self.soft_target(reward, next_obs, terminated, alpha, eps_next)
        q = self.critic(torch.cat([obs, action], -1)).squeeze(-1)  # [2, B]
        return 0.5 * (q - y).pow(2).mean(-1).sum(), q.detach().mean()

    def actor_loss(
        self, obs: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 12 through the critics (parameters detached), plus Eq. 18 with ``autotune``; returns the loss
        to minimise, the actor loss alone and the entropy estimate ``-E[log π]``."""
        a_pi, logp_pi = self.actor.sample(obs, eps)
        q_pi = self.critic(torch.cat([obs, a_pi], -1), detach_params=True).squeeze(-1).min(0).values
        actor_loss = (alpha * logp_pi - q_pi).mean()
        loss = actor_loss
        if self.config.autotune:
            loss = loss - (self.log_alpha * (logp_pi.detach() + self.target_entropy)).mean()
        return loss, actor_loss.detach(), -logp_pi.detach().mean()

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c, opt = self.config, self.optimizers
        obs = batch["obs"]
        update_actor = self.num_updates % c.actor_update_every == 0
        self.num_updates += 1
        alpha = self.log_alpha.detach().exp()  # the temperature before this step's update (as in SB3)
        # the noise of a ~ π(·|s) first, then of a' ~ π(·|s') (SB3's order of draws)
        eps_pi = torch.randn(obs.shape[0], self.action_dim, device=obs.device) if update_actor else None
        eps_next = torch.randn(obs.shape[0], self.action_dim, device=obs.device)

        critic_loss, q_mean = self.critic_loss(
            obs, batch["action"], batch["reward"], batch["next_obs"], batch["terminated"], alpha, eps_next)
        assert_finite("critic_loss", critic_loss)
        opt["critic"].zero_grad(set_to_none=True)
        critic_loss.backward()
        opt["critic"].step()
        metrics = {"critic_loss": critic_loss.detach(), "alpha": alpha, "q_mean": q_mean}

        if update_actor:  # the actor (and α) through the updated critics; the actor is unchanged so far
            loss, actor_loss, entropy = self.actor_loss(obs, eps_pi, alpha)
            assert_finite("actor_loss", actor_loss)
            opt["actor"].zero_grad(set_to_none=True)
            loss.backward()
            opt["actor"].step()
            metrics["actor_loss"] = actor_loss
            metrics["entropy"] = entropy

        polyak_update(*self._polyak_pairs, c.tau)
        return metrics
