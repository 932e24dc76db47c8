"""A clean re-implementation of the official MEow training loop, for timing beside our EBFlow (``bench_sps.py
--agent ebflow --meow-ref``).

Written from the paper's description (Chao et al., NeurIPS 2024, Algorithm 1) and the structure of its CleanRL-based
code as summarised in ``papers/ebflow-meow.md`` §2–§5 and §7 (no code copied). It computes the same loss as
``agents/ebflow.py`` (a test maps our weights onto it and compares), but keeps the reference's structure, which is
what sets its speed:

* **masked couplings**: each NICE coupling net reads the whole action-sized vector ``b ⊙ z`` with the state and
  writes a whole action-sized shift, multiplied by ``1 - b`` (ours: half-width inputs and outputs);
* **the batch stacked twice** for the two reward-shift heads (first half -> ``b_1``, second half -> ``b_2``), in the
  current-Q pass and in the target-V pass, and two separate shift MLPs (ours: one pass, a fused ensemble);
* **a full target copy** of the policy, Polyak-averaged parameter by parameter in a Python loop (ours: only the
  log-std and shift nets, one ``foreach`` call);
* ``torch.optim.Adam`` over all parameters with ``clip_grad_norm_`` (ours: one flat fused Adam), eager PyTorch
  (ours: the loss compiled), standard dropout;
* SB3's ``ReplayBuffer`` (the official code's buffer), one env, random actions up to ``learning_starts``, then one
  action, one env step and one gradient step per transition.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl_energy.flows import ACTION_CLAMP, SQUASH_EPS
from rl_energy.nets import Swish


def _net(in_dim: int, hidden: list[int], out_dim: int, coupling: bool, dropout: float = 0.0) -> nn.Sequential:
    """A coupling net (``Linear -> LayerNorm -> Swish(β) -> Dropout`` per hidden layer, orthogonal weights) or, with
    ``coupling=False``, the log-std net or a shift head (``Linear -> SiLU``, every weight zero), MEow §2."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, width), nn.LayerNorm(width), Swish(width), nn.Dropout(dropout)] if coupling \
            else [nn.Linear(last, width), nn.SiLU()]
        last = width
    layers.append(nn.Linear(last, out_dim))
    for m in layers:
        if isinstance(m, nn.Linear):
            (nn.init.orthogonal_ if coupling else nn.init.zeros_)(m.weight)
    return nn.Sequential(*layers)


class MaskedCoupling(nn.Module):
    """``z' = b ⊙ z + (1 - b) ⊙ (z ± t(b ⊙ z, s))`` with a full-width net ``t``."""

    def __init__(self, mask: torch.Tensor, obs_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = _net(mask.numel() + obs_dim, hidden, mask.numel(), True, dropout)

    def forward(self, z: torch.Tensor, obs: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        t = self.net(torch.cat([z * self.mask, obs], -1)) * (1.0 - self.mask)
        return z + t if sign > 0 else z - t


class MEowPolicy(nn.Module):
    """Tanh squash ∘ masked couplings ∘ state scale, and two reward-shift heads (MEow §2–§4)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], shift_hidden: list[int],
                 num_couplings: int, dropout: float, log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        even = (torch.arange(action_dim) % 2 == 0).float()  # b = [1, 0, 1, 0, ...], then 1 - b, alternating
        self.couplings = nn.ModuleList(
            MaskedCoupling(even if k % 2 == 0 else 1.0 - even, obs_dim, hidden, dropout) for k in range(num_couplings))
        self.log_std_net = _net(obs_dim, hidden, action_dim, False)
        self.shifts = nn.ModuleList(_net(obs_dim, shift_hidden, 1, False) for _ in range(2))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.log_norm_const = 0.5 * action_dim * math.log(2 * math.pi)

    def log_std(self, obs: torch.Tensor) -> torch.Tensor:
        return self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(self.log_std_net(obs)) + 1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """``ε ~ N(0, I)``, ``z = σ(s) ε``, the couplings, ``a = tanh(z)``."""
        log_std = self.log_std(obs)
        z = torch.randn_like(log_std) * log_std.exp()
        for coupling in self.couplings:
            z = coupling(z, obs)
        return torch.tanh(z).clamp(-1.0, 1.0)

    def _shift(self, obs2: torch.Tensor) -> torch.Tensor:
        """The stacked batch's reward shifts: head 1 on the first half, head 2 on the second, ``[2B]``."""
        first, second = obs2.chunk(2)
        return torch.cat([self.shifts[0](first), self.shifts[1](second)]).squeeze(-1)

    def q_values(self, obs2: torch.Tensor, action2: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``Q`` of the stacked batch ``[2B]``: the density pass (squash, couplings inverted, scale) plus ``b_k``."""
        a = action2.clamp(-ACTION_CLAMP, ACTION_CLAMP)
        z = torch.atanh(a)
        for coupling in reversed(self.couplings):
            z = coupling(z, obs2, sign=-1.0)
        eps = z * torch.exp(-self.log_std(obs2))
        energy = -0.5 * eps.square().sum(-1) - torch.log1p(SQUASH_EPS - a.square()).sum(-1)
        return alpha * (energy + self._shift(obs2))

    def v_values(self, obs2: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``V`` of the stacked batch ``[2B]``: the scale's log-determinant and the prior's normaliser plus ``b_k``."""
        return alpha * (self.log_norm_const + self.log_std(obs2).sum(-1) + self._shift(obs2))


class MEowReference:
    """The policy, its full target copy, one Adam over every parameter, and the update of Algorithm 1."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: Any) -> None:
        c = cfg
        self.policy = MEowPolicy(obs_dim, action_dim, list(c.flow_hidden), list(c.shift_hidden), c.num_couplings,
                                 c.dropout, c.log_std_min, c.log_std_max)
        self.target = copy.deepcopy(self.policy)
        self.target.eval()  # no dropout in the target-V pass
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=c.lr)
        self.alpha = torch.tensor(c.alpha)
        self.gamma, self.tau, self.grad_clip = c.gamma, c.tau, c.grad_clip or math.inf  # 0: no clipping

    def loss(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
             done: torch.Tensor) -> torch.Tensor:
        """``y = r + γ (1 - d) min_k V̄_k(s')`` and the MSE of the stacked ``[Q_1; Q_2]`` against ``[y; y]``, NaN
        entries zeroed. ``reward`` and ``done`` are ``[B]``."""
        with torch.no_grad():
            v_next = self.target.v_values(torch.cat([next_obs, next_obs]), self.alpha)
            y = reward + self.gamma * (1.0 - done) * torch.minimum(*v_next.chunk(2))
        q = self.policy.q_values(torch.cat([obs, obs]), torch.cat([action, action]), self.alpha)
        err = F.mse_loss(q, torch.cat([y, y]), reduction="none")
        return torch.where(torch.isnan(err), torch.zeros_like(err), err).mean()

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
               done: torch.Tensor) -> float:
        loss = self.loss(obs, action, reward, next_obs, done)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            for p, tp in zip(self.policy.parameters(), self.target.parameters(), strict=True):
                tp.data.copy_(self.tau * p.data + (1.0 - self.tau) * tp.data)
        return loss.item()


def train_sps(env_id: str, cfg: Any, learning_starts: int, steps: int, seed: int,
              snapshot: Callable[[], Any] = lambda: None) -> tuple[float, tuple[Any, float, Any, float]]:
    """Train the reference for ``learning_starts + steps`` transitions on one env; return its SPS over the learning
    phase (from just after the first update to the end, as ``bench_sps.py`` times every side) and the
    ``(snapshot(), start, snapshot(), end)`` window of that phase."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.buffers import ReplayBuffer

    torch.manual_seed(seed)
    env = gym.wrappers.RescaleAction(gym.make(env_id), min_action=-1.0, max_action=1.0)
    space = env.action_space
    # float32 observations in the buffer (MuJoCo's are float64), as the reference casts its observation space
    obs_space = gym.spaces.Box(env.observation_space.low, env.observation_space.high, dtype=np.float32)
    rb = ReplayBuffer(cfg.train.buffer_size, obs_space, space, "cpu", handle_timeout_termination=False)
    obs_dim, action_dim = env.observation_space.shape[0], space.shape[0]
    agent = MEowReference(obs_dim, action_dim, cfg.agent)
    agent.policy.train()  # dropout in the current-Q pass
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    start = None
    start_step = 0
    window_start = None
    for step in range(learning_starts + steps):
        if step < learning_starts:
            action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
        else:
            agent.policy.eval()  # no dropout when acting (MEow §5)
            with torch.no_grad():
                action = agent.policy.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            agent.policy.train()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rb.add(obs, next_obs, action, np.array([reward]), np.array([terminated]), [{}])
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= learning_starts:
            data = rb.sample(cfg.train.batch_size)
            agent.update(data.observations, data.actions, data.rewards.flatten(), data.next_observations,
                         data.dones.flatten())
            if start is None:  # the clock starts after the first update, as for the other sides
                window_start, start, start_step = snapshot(), time.perf_counter(), step + 1
    end = time.perf_counter()
    env.close()
    if start is None or learning_starts + steps <= start_step:
        raise RuntimeError("the MEow reference took no timed step after its first update: raise --steps")
    return (learning_starts + steps - start_step) / (end - start), (window_start, start, snapshot(), end)
