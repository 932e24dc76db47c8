"""Deep Deterministic Policy Gradient (Lillicrap et al., 2016, "Continuous control with deep RL").

Algorithm 1 of the paper, with Gaussian instead of Ornstein-Uhlenbeck exploration noise (as in
TD3/CleanRL; the bubble-control paper uses DDPG as its agent):

1. act ``a = clip(μ(s) + N(0, σ²), -1, 1)``;
2. target ``y = r + γ (1 - terminated) Q̄(s', μ̄(s'))`` with target actor μ̄ and critic Q̄;
3. critic loss ``E[(Q(s, a) - y)²]``;
4. actor loss ``-E[Q(s, μ(s))]`` (deterministic policy gradient), critic parameters detached;
5. Polyak averaging of both target networks with rate τ.

``target_clip`` optionally clamps ``y`` to the range the returns can take (mrl's ``clip_target_range``, used by
the SVGG paper's goal-conditioned agent).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from rl_energy.agent import Agent, assert_finite
from rl_energy.config import validate_actor_critic
from rl_energy.errors import require
from rl_energy.nets import ACTIVATIONS, EnsembleMLP, mlp, polyak_update
from rl_energy.optim import adam


@dataclass
class DDPGConfig:
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    """Hidden-layer activation of actor and critic: ``relu`` or ``tanh`` (the bubble-control code)."""
    exploration_noise: float = 0.1
    """Standard deviation of the Gaussian action noise, in units of the [-1, 1] action range."""
    actor_update_every: int = 1
    target_clip: list[float] = field(default_factory=list)
    """``[low, high]``: clamp the TD target ``y`` to the range the returns can take (the SVGG agent's
    ``(−1/(1−γ), 0)`` = ``[-50, 0]`` for a −1/0 reward at γ 0.98); empty: no clamp."""

    def validate(self) -> None:
        validate_actor_critic(self, ("actor_lr", "critic_lr"))
        clip = self.target_clip
        require(self, "target_clip", clip == [] or (len(clip) == 2 and all(math.isfinite(v) for v in clip)
                                                    and clip[0] < clip[1]),
                "empty or two finite numbers [low, high] with low < high")
        require(self, "exploration_noise", self.exploration_noise >= 0, ">= 0")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")


class DDPG(Agent):
    """Deep Deterministic Policy Gradient with Gaussian exploration noise."""

    Config = DDPGConfig

    metric_names = ("critic_loss", "actor_loss", "q_mean")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: DDPGConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        act = ACTIVATIONS[c.activation]
        self.actor = mlp(self.obs_dim, c.hidden, self.action_dim, activation=act, output_activation=nn.Tanh)
        self.critic = EnsembleMLP(1, self.obs_dim + self.action_dim, c.hidden, 1, activation=act)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.to(self.device)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), c.actor_lr),
            "critic": adam(self.critic.parameters(), c.critic_lr),
        }

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        action = self.actor(obs)
        if deterministic or self.config.exploration_noise == 0:
            return action
        return (action + self.config.exploration_noise * torch.randn_like(action)).clamp(-1.0, 1.0)

    @torch.inference_mode()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``Q(s, μ(s))``: the critic at the policy's action (MEGA's goal cutoff reads it)."""
        return self.critic(torch.cat([obs, self.actor(obs)], -1))[0, :, 0]

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c, opt = self.config, self.optimizers
        obs, next_obs = batch["obs"], batch["next_obs"]
        update_actor = self.num_updates % c.actor_update_every == 0
        self.num_updates += 1

        with torch.no_grad():
            q_next = self.critic_target(torch.cat([next_obs, self.actor_target(next_obs)], -1))[0, :, 0]
            y = batch["reward"] + c.gamma * (1.0 - batch["terminated"].float()) * q_next
            if c.target_clip:
                y = y.clamp(c.target_clip[0], c.target_clip[1])
        q = self.critic(torch.cat([obs, batch["action"]], -1))[0, :, 0]
        critic_loss = (q - y).pow(2).mean()
        assert_finite("critic_loss", critic_loss)
        opt["critic"].zero_grad(set_to_none=True)
        critic_loss.backward()
        opt["critic"].step()
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

        if update_actor:
            actor_loss = -self.critic(torch.cat([obs, self.actor(obs)], -1), detach_params=True).mean()
            assert_finite("actor_loss", actor_loss)
            opt["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            opt["actor"].step()
            metrics["actor_loss"] = actor_loss.detach()
            polyak_update(self.actor_target, self.actor, c.tau)
        polyak_update(self.critic_target, self.critic, c.tau)
        return metrics
