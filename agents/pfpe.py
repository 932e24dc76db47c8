"""Partially fitted policy evaluation (PFPE): TD learning against a target network (Fellows, Smith &
Whiteson, ICML 2023, "Why target networks stabilise temporal difference methods"; TD digest §1, §5).

With a hard target (``target_update: hard``), per gradient step ``i``:

1. sample a batch ``(s, a, r, s', done)`` from the replay buffer;
2. the TD target uses the frozen weights ``w̄``:
   * ``control`` (DQN): ``y = r + γ (1 − done) max_a' Q_w̄(s', a')``, loss ``½ E[(y − Q_w(s, a))²]``;
   * ``evaluation`` (off-policy evaluation of a fixed target policy π from behaviour-policy data μ, with
     state values): ``y = r + γ (1 − done) V_w̄(s')``, loss ``½ E[ρ (y − V_w(s))²]`` with the importance
     ratio ``ρ = π(a)/μ(a)`` (Sutton & Barto eq. 11.2); the agent acts with μ;
3. one optimiser step on ``w`` (plain SGD: ``w ← w + α ρ δ ∇V_w(s)``, the paper's PFPE step);
4. every ``k = target_period`` steps ``w̄ ← w`` (``k = 1`` is TD, ``k → ∞`` fitted evaluation).

Other target updates: ``polyak`` (``w̄ ← (1 − τ) w̄ + τ w`` every step) and ``momentum`` (every ``k``
steps, heavy-ball on the target sequence, ``w̄_{l+1} = w + μ (w̄_l − w̄_{l−1})``: the digest's reading of
the paper's "periodic target update with momentum", §5). Values are ``linear`` in the observation or an
``mlp``. The expected dynamics of the linear case are analysed in :mod:`rl_energy.analysis.td_stability`.
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
from rl_energy.errors import ConfigError, require
from rl_energy.nets import ACTIVATIONS, mlp, polyak_update
from rl_energy.optim import adam

MODES = ("control", "evaluation")
TARGET_UPDATES = ("hard", "polyak", "momentum")


@dataclass
class PFPEConfig:
    mode: str = "control"
    """``control`` (DQN: greedy targets, ε-greedy acting) or ``evaluation`` (state values of
    ``target_policy`` learned from ``behaviour_policy`` data with importance ratios)."""
    gamma: float = 0.99
    function: str = "mlp"
    """``linear`` (``V = wᵀx`` / ``Q(·, a) = w_aᵀx``) or ``mlp``."""
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    activation: str = "relu"
    bias: bool = True
    """Linear values only: whether they have a bias term (Baird's features have none)."""
    optimizer: str = "adam"
    """``sgd`` (the analysed PFPE step) or ``adam``."""
    lr: float = 1e-3
    target_update: str = "hard"
    target_period: int = 5
    """``k``: gradient steps per target refresh (``hard`` and ``momentum``)."""
    tau: float = 0.005
    """``polyak`` rate."""
    momentum: float = 0.0
    """``momentum`` coefficient μ of the target sequence."""
    epsilon: float = 0.05
    """``control``: probability of a uniformly random action when acting."""
    behaviour_policy: list[float] = field(default_factory=list)
    """``evaluation``: μ(a), the same in every state (e.g. Baird's ``[6/7, 1/7]``)."""
    target_policy: list[float] = field(default_factory=list)
    """``evaluation``: π(a), the same in every state."""
    init_weights: list[float] = field(default_factory=list)
    """``linear``: the initial weights, row-major ``[outputs, features]`` (empty: PyTorch's default)."""
    double: bool = False
    """float64 weights and values (a diverging TD run then overflows much later)."""

    def validate(self) -> None:
        require(self, "mode", self.mode in MODES, f"one of {', '.join(MODES)}")
        require(self, "function", self.function in ("linear", "mlp"), "linear or mlp")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        require(self, "optimizer", self.optimizer in ("sgd", "adam"), "sgd or adam")
        require(self, "target_update", self.target_update in TARGET_UPDATES, f"one of {', '.join(TARGET_UPDATES)}")
        require(self, "gamma", 0.0 <= self.gamma < 1.0, "in [0, 1)")
        require(self, "lr", self.lr > 0 and math.isfinite(self.lr), "> 0")
        require(self, "target_period", self.target_period >= 1, ">= 1")
        require(self, "tau", 0.0 < self.tau <= 1.0, "in (0, 1]")
        require(self, "momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")
        require(self, "epsilon", 0.0 <= self.epsilon <= 1.0, "in [0, 1]")
        require(self, "hidden", all(h > 0 for h in self.hidden), "positive widths")
        require(self, "init_weights", not self.init_weights or self.function == "linear",
                "empty unless agent.function is linear")
        if self.mode == "evaluation":
            for key in ("behaviour_policy", "target_policy"):
                probs = getattr(self, key)
                require(self, key, bool(probs) and min(probs) >= 0 and abs(sum(probs) - 1) < 1e-6,
                        "a probability vector (non-negative, summing to 1) in evaluation mode")
            require(self, "behaviour_policy", len(self.behaviour_policy) == len(self.target_policy)
                    and all(m > 0 for m, p in zip(self.behaviour_policy, self.target_policy, strict=True) if p > 0),
                    "as long as agent.target_policy and > 0 wherever it is")


class PFPE(Agent):
    """Partially fitted policy evaluation / DQN: TD against a target network refreshed every k steps."""

    Config = PFPEConfig

    discrete_actions = True
    metric_names = ("loss", "q_mean", "weight_norm")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Discrete,
        config: PFPEConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        self.dtype = torch.float64 if c.double else torch.float32
        evaluation = c.mode == "evaluation"
        out_dim = 1 if evaluation else self.n_actions
        if evaluation and len(c.behaviour_policy) != self.n_actions:
            raise ConfigError(f"config key 'agent.behaviour_policy' must have one probability per action "
                              f"({self.n_actions}), got {len(c.behaviour_policy)}")
        if c.function == "linear":
            self.q: nn.Module = nn.Linear(self.obs_dim, out_dim, bias=c.bias)
            if c.init_weights:
                if len(c.init_weights) != out_dim * self.obs_dim:
                    raise ConfigError(f"config key 'agent.init_weights' needs {out_dim * self.obs_dim} values "
                                      f"({out_dim} x {self.obs_dim} features), got {len(c.init_weights)}")
                with torch.no_grad():
                    self.q.weight.copy_(torch.tensor(c.init_weights).view(out_dim, self.obs_dim))
                    if self.q.bias is not None:
                        self.q.bias.zero_()
        else:
            self.q = mlp(self.obs_dim, c.hidden, out_dim, activation=ACTIVATIONS[c.activation])
            # bfloat16 autocast costs more than it saves on DQN-sized nets (32 wide: 0.94x SB3's SPS
            # with it, 1.06x without, CartPole-v1), and float64 runs must stay float64
            self.q.keep_fp32 = True
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.q_target_prev = copy.deepcopy(self.q).requires_grad_(False) if c.target_update == "momentum" else None
        self.to(device=self.device, dtype=self.dtype)
        if evaluation:
            mu = torch.tensor(c.behaviour_policy, dtype=self.dtype, device=self.device)
            pi = torch.tensor(c.target_policy, dtype=self.dtype, device=self.device)
            self.register_buffer("behaviour", mu)
            self.register_buffer("ratio", torch.where(mu > 0, pi / mu.clamp(min=1e-30), 0.0))
            self.greedy_target = int(torch.argmax(pi))
        params = list(self.q.parameters())
        self._online, self._target = params, list(self.q_target.parameters())
        self._target_prev = list(self.q_target_prev.parameters()) if self.q_target_prev is not None else []
        self.optimizers = {"q": torch.optim.SGD(params, lr=c.lr) if c.optimizer == "sgd" else adam(params, c.lr)}

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Control: ε-greedy in ``Q`` (greedy if ``deterministic``). Evaluation: a draw from the behaviour
        policy μ (the target policy's most likely action if ``deterministic``)."""
        c, n = self.config, obs.shape[0]
        if c.mode == "evaluation":
            if deterministic:
                return torch.full((n,), self.greedy_target, dtype=torch.long, device=obs.device)
            return torch.multinomial(self.behaviour, n, replacement=True)
        action = self.q(obs.to(self.dtype)).argmax(-1)
        if deterministic or c.epsilon == 0:
            return action
        explore = torch.rand(n, device=obs.device) < c.epsilon
        return torch.where(explore, torch.randint_like(action, self.n_actions), action)

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c = self.config
        obs, next_obs = batch["obs"].to(self.dtype), batch["next_obs"].to(self.dtype)
        action = batch["action"].long().squeeze(-1)
        not_done = 1.0 - batch["terminated"].to(self.dtype)
        reward = batch["reward"].to(self.dtype)
        with torch.no_grad():
            if c.mode == "evaluation":
                next_value = self.q_target(next_obs).squeeze(-1)
                weight = self.ratio[action]
            else:
                next_value = self.q_target(next_obs).amax(-1)
                weight = None
            y = reward + c.gamma * not_done * next_value
        out = self.q(obs)
        q = out.squeeze(-1) if c.mode == "evaluation" else out.gather(-1, action[:, None]).squeeze(-1)
        sq = (y - q).square()
        loss = 0.5 * (sq if weight is None else weight * sq).mean()
        assert_finite("td_loss", loss)
        opt = self.optimizers["q"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.num_updates += 1
        self._update_target()
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._online)))
        return {"loss": loss.detach(), "q_mean": q.detach().mean(), "weight_norm": norm}

    @torch.no_grad()
    def _update_target(self) -> None:
        c = self.config
        online, target, prev = self._online, self._target, self._target_prev
        if c.target_update == "polyak":
            polyak_update(target, online, c.tau)
        elif self.num_updates % c.target_period == 0:
            if c.target_update == "momentum":
                new = [w + c.momentum * (t - p) for w, t, p in zip(online, target, prev, strict=True)]
                torch._foreach_copy_(prev, target)
                torch._foreach_copy_(target, new)
            else:
                torch._foreach_copy_(target, online)
