"""EgEOT: energy-guided entropic optimal transport (Mokrov, Korotin, Kolesov, Gushchin & Burnaev, ICLR 2024,
"Energy-guided Entropic Neural Optimal Transport", arXiv 2304.06094; digest ``papers/one-step-tasks.md`` §8).

**Plan.** A potential ``f_θ(y)`` (an MLP, :func:`rl_energy.nets.mlp`) defines the conditional plan (the paper's
energy-based form of the EOT plan; digest §8, "Core")::

    π_f(y|x) ∝ exp((f_θ(y) - c(x, y)) / ε),    c(x, y) = ½‖x - y‖²,

i.e. the energy ``E_x(y) = (½‖x - y‖² - f_θ(y)) / ε`` whose Langevin chains :meth:`EgEOT.sample` runs
(:func:`rl_energy.samplers.ula` or :func:`~rl_energy.samplers.mala`).

**Loss.** The weak dual of EOT, ``max_f E_{x~P}[-ε log ∫ exp((f(y) - c(x, y))/ε) dy] + E_{y~Q}[f(y)]``, has the
gradient of the contrastive loss (as in EBM training; digest §8, "Loss")::

    L(θ) = -E_{y~Q}[f_θ(y)] + E_{x~P, y~π_f(·|x)}[f_θ(y)],

with the model samples detached. ``c = 0`` would recover a plain EBM of ``Q``.

**Framing** (digest §8): a full-information ``contexts`` agent (``uses_labels = True``) on a one-step task
whose context is ``x ~ P`` (``obs``) and whose label is an independent ``y ~ Q`` (``target``); it acts by
sampling ``y ~ π_f(·|x)``. Actions are in the task's own units (``obs`` and actions live in the same space).

Choices and their reasons (the official Gaussian script, ``scripts/egeot_gauss2gauss_train.py``, uses 3x512
ReLU MLPs, 100 Langevin steps per update from a replay buffer with ``p = 0.95``, and 700 steps at test time):

* **ε** (``agent.eps``): 0 takes the task's ``ε`` from the ``eps`` column of its contexts (``rl_energy/EntropicOT-v0``
  provides one); a positive value that disagrees with the task's is a :class:`ConfigError`.
* **Output scale**: ``f_θ = ε · MLP_θ`` (``agent.scale_by_eps``, default on), so the network's output is in units
  of ``ε`` and the energy is ``½‖x - y‖²/ε - MLP_θ(y)``; the minimiser is unchanged (a reparameterisation). For
  ``ε = 10`` the optimal ``f`` is ``≈ -ε·½ yᵀΣ_Q⁻¹y``, which an unscaled MLP reaches only after many Adam steps.
* **Step size** ``h = agent.step_size · ε`` (the cost term's curvature is ``1/ε``, so ``step_size`` is the step
  relative to it). With ``sampler: mala`` and ``target_accept > 0``, ``h`` adapts after each of the first
  ``adapt_updates`` updates by ``h ← h·exp(target_accept_rate · (ā - target_accept))`` from the chains' mean
  acceptance ``ā``, then stays (it is kept in the checkpoint), so one setting serves every ``ε`` and dimension;
  ULA keeps ``h`` fixed. Adapting throughout failed at d = 64, ε = 0.1 (measured): as the potential sharpened
  the step shrank, the chains stopped leaving ``y = x``, and the contrastive loss ran away (BW2-UVP 1.7% at
  update 400, 17% at 600); with the step frozen after 100 updates the same run ends at 1.1%.
* **Chains** start at ``y = x`` (``agent.init: x``), or (``init: buffer``) from a persistent buffer of past
  samples with probability ``replay_prob`` (the paper's replay buffer, ``p = 0.95``) and at ``y = x`` otherwise.
  Evaluation (:meth:`EgEOT.act`) always starts at ``y = x`` and runs ``n_eval_steps`` steps.
* **Deterministic actions** (``act(obs, deterministic=True)``): the mode of ``π_f(·|x)`` found by
  ``n_eval_steps`` noise-free gradient steps from ``y = x`` (for Gaussians, the conditional mean).
* **Learning rate**: cosine decay from ``lr`` to ``lr_final_frac · lr`` over ``lr_decay_updates`` updates (the
  paper keeps Adam's rate constant; on CPU budgets the decay settles the noisy contrastive gradient).
* ``f_θ`` stays in float32 (``keep_fp32``): the sampler multiplies its rounding by ``1/ε``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch
from tensordict import TensorDict

from rl_energy.agent import Agent, assert_finite
from rl_energy.errors import ConfigError, require
from rl_energy.nets import ACTIVATIONS, mlp
from rl_energy.optim import adam
from rl_energy.samplers import SampleResult, energy_and_grad, mala, ula

SAMPLERS = ("ula", "mala")
INITS = ("x", "buffer")
MAX_STEP_SIZE = 2.0
"""Largest ``agent.step_size`` (``h/ε``) accepted: a gradient step ``y ← y - step_size·(y - x)`` on the cost term
alone overshoots and diverges beyond 2."""
MAX_CHAIN_STEPS = 100_000
CHUNK = 16_384
"""Contexts per chunk when :meth:`EgEOT.act` samples a whole split."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class EgEOTConfig:
    """Defaults: the digest's CPU setting (Gauss→Gauss, MLP 3x128, batch 256, 50–100 Langevin steps,
    2–3k updates; digest §8 "CPU experiment"); see ``configs/egeot/``."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 2_000 * 256, "batch_size": 256, "eval_every": 500 * 256, "log_every": 100 * 256,
        "checkpoint_every": 0,
    }
    """``train`` keys in contexts: 2,000 updates of 256 contexts."""

    eps: float = 0.0
    """Entropy weight ``ε`` of the plan; 0: the task's (its ``eps`` column)."""
    width: int = 128
    depth: int = 3
    activation: str = "silu"
    scale_by_eps: bool = True
    """``f_θ = ε · MLP_θ`` (see the module docstring)."""
    lr: float = 1e-3
    lr_decay_updates: int = 2_000
    """Cosine decay of the learning rate from ``lr`` to ``lr_final_frac · lr`` over this many updates, then
    constant (0: a constant ``lr``). The contrastive gradient is noisy: a constant ``lr`` leaves the plan's
    BW2-UVP oscillating (0.1–1.3% at d = 2 over updates 100–500, measured), the decay settles it."""
    lr_final_frac: float = 0.05
    grad_clip: float = 0.0
    """Clip the gradient norm of each update to this (0: no clipping)."""
    energy_reg: float = 0.0
    """``λ E[MLP(y⁺)² + MLP(y⁻)²]`` added to the loss (Du & Mordatch 2019's regulariser; 0: off, as the paper)."""
    sampler: str = "mala"
    """``mala`` (exact for ``π_f``, with the adaptive step) or ``ula`` (the paper's unadjusted Langevin, fixed
    step: with ``h = 0.05 ε`` it diverged at ε = 10 and under-mixed at ε = 0.1 in d = 2, measured)."""
    step_size: float = 0.05
    """Langevin step ``h`` in units of ``ε`` (``h = step_size · ε``); MALA's initial step when it adapts."""
    target_accept: float = 0.574
    """MALA only: acceptance rate the step size adapts to between updates (0: no adaptation)."""
    target_accept_rate: float = 0.5
    adapt_updates: int = 100
    """MALA: adapt the step during the first this many updates only, then keep it (0: adapt throughout)."""
    n_sampling_steps: int = 50
    """Langevin steps per update (the model samples of the loss)."""
    n_eval_steps: int = 200
    """Langevin steps of :meth:`EgEOT.act` (evaluation)."""
    init: str = "x"
    """Chain starts in training: ``x`` (``y = x``) or ``buffer`` (replay of past samples, the paper's)."""
    buffer_size: int = 10_000
    replay_prob: float = 0.95

    def validate(self) -> None:
        require(self, "eps", _number(self.eps) and self.eps >= 0, "a number >= 0 (0: the task's ε)")
        for key in ("width", "depth"):
            require(self, key, _integer(getattr(self, key)) and getattr(self, key) >= 1, "an integer >= 1")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {tuple(ACTIVATIONS)}")
        require(self, "scale_by_eps", isinstance(self.scale_by_eps, bool), "true or false")
        require(self, "lr", _number(self.lr) and 0 < self.lr <= 1, "in (0, 1]")
        require(self, "lr_decay_updates", _integer(self.lr_decay_updates) and self.lr_decay_updates >= 0,
                "an integer >= 0 (0: constant lr)")
        require(self, "lr_final_frac", _number(self.lr_final_frac) and 0 <= self.lr_final_frac <= 1, "in [0, 1]")
        for key in ("grad_clip", "energy_reg"):
            require(self, key, _number(getattr(self, key)) and getattr(self, key) >= 0, "a number >= 0")
        require(self, "sampler", self.sampler in SAMPLERS, f"one of {SAMPLERS}")
        require(self, "step_size", _number(self.step_size) and 0 < self.step_size <= MAX_STEP_SIZE,
                f"in (0, {MAX_STEP_SIZE:g}] (h = step_size·ε)")
        require(self, "target_accept", _number(self.target_accept) and 0 <= self.target_accept < 1,
                "in [0, 1) (0: no adaptation)")
        require(self, "target_accept_rate", _number(self.target_accept_rate) and 0 < self.target_accept_rate <= 10,
                "in (0, 10]")
        for key in ("n_sampling_steps", "n_eval_steps"):
            value = getattr(self, key)
            require(self, key, _integer(value) and 1 <= value <= MAX_CHAIN_STEPS,
                    f"an integer in [1, {MAX_CHAIN_STEPS}]")
        require(self, "adapt_updates", _integer(self.adapt_updates) and self.adapt_updates >= 0,
                "an integer >= 0 (0: adapt throughout)")
        require(self, "init", self.init in INITS, f"one of {INITS}")
        require(self, "buffer_size", _integer(self.buffer_size) and self.buffer_size >= 1, "an integer >= 1")
        require(self, "replay_prob", _number(self.replay_prob) and 0 <= self.replay_prob <= 1, "in [0, 1]")


class EgEOT(Agent):
    """Energy-guided entropic OT: a potential ``f_θ`` and Langevin sampling of ``π_f(·|x)`` (see the module)."""

    Config = EgEOTConfig
    collection = "contexts"
    uses_labels = True
    metric_names = ("loss", "f_data", "f_model", "acceptance", "step_size", "lr")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: EgEOTConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        if tuple(observation_space.shape) != tuple(action_space.shape) or len(action_space.shape) != 1:
            raise ConfigError(f"agent 'egeot' transports x to y in one space: the observation shape "
                              f"{tuple(observation_space.shape)} and action shape {tuple(action_space.shape)} must "
                              "be equal vectors (e.g. rl_energy/EntropicOT-v0)")
        self.dim = self.action_dim
        self.net = mlp(self.dim, [c.width] * c.depth, 1, ACTIVATIONS[c.activation])
        self.net.keep_fp32 = True
        self.register_buffer("eps_value", torch.tensor(float(c.eps)))
        self.register_buffer("log_step", torch.tensor(math.log(c.step_size)))
        """``log(h/ε)``: the current step size in units of ε (adapted for MALA)."""
        self.register_buffer("chains", torch.zeros(c.buffer_size, self.dim))
        self.register_buffer("n_chains", torch.zeros((), dtype=torch.long))
        self.to(self.device)
        self.optimizers = {"potential": adam(self.net.parameters(), c.lr)}

    # ------------------------------------------------------------------------------- ε and f
    @property
    def eps(self) -> float:
        value = float(self.eps_value)
        if value <= 0:
            raise ConfigError("agent 'egeot' does not know ε: set agent.eps or train on a task whose contexts "
                              "carry an 'eps' column (rl_energy/EntropicOT-v0)")
        return value

    def _take_eps(self, data: TensorDict) -> None:
        """Adopt the task's ε (``agent.eps = 0``) or check that it matches ``agent.eps``."""
        if "eps" not in data.keys():
            return
        task_eps = float(data["eps"].reshape(-1)[0])
        if self.config.eps == 0:
            self.eps_value.fill_(task_eps)
        elif not math.isclose(task_eps, self.config.eps, rel_tol=1e-5):
            raise ConfigError(f"config key 'agent.eps' is {self.config.eps!r} but the task's ε is {task_eps!r} "
                              "(env_kwargs.eps): set agent.eps=0 to use the task's, or make them equal")

    def potential(self, y: torch.Tensor) -> torch.Tensor:
        """``f_θ(y)`` ``[N]``."""
        out = self.net(y).squeeze(-1)
        return out * self.eps if self.config.scale_by_eps else out

    def energy_fn(self, x: torch.Tensor) -> Any:
        """``y ↦ E_x(y) = (½‖x - y‖² - f_θ(y)) / ε`` ``[N]`` for contexts ``x [N, d]``."""
        eps = self.eps
        scaled = self.config.scale_by_eps

        def energy(y: torch.Tensor) -> torch.Tensor:
            cost = 0.5 * (y - x).pow(2).sum(-1) / eps
            f = self.net(y).squeeze(-1)
            return cost - (f if scaled else f / eps)

        return energy

    @property
    def step(self) -> float:
        """The Langevin step ``h`` (absolute units)."""
        return math.exp(float(self.log_step)) * self.eps

    # ------------------------------------------------------------------------------- sampling
    def sample(self, x: torch.Tensor, n_steps: int, y0: torch.Tensor | None = None) -> SampleResult:
        """``y ~ π_f(·|x)`` by ``n_steps`` of the configured sampler from ``y0`` (default ``y = x``)."""
        x = x.to(self.device).float()
        y0 = x.clone() if y0 is None else y0
        energy = self.energy_fn(x)
        if self.config.sampler == "mala":
            return mala(energy, y0, self.step, n_steps)
        return ula(energy, y0, self.step, n_steps)

    @torch.no_grad()
    def mode(self, x: torch.Tensor, n_steps: int) -> torch.Tensor:
        """``n_steps`` noise-free gradient steps on ``E_x`` from ``y = x``: the mode of ``π_f(·|x)``."""
        energy = self.energy_fn(x)
        y, h = x.clone(), self.step
        for t in range(n_steps):
            _, g = energy_and_grad(energy, y, "egeot mode", t)
            y = y - h * g
        return y

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """``y ~ π_f(·|x)`` (``n_eval_steps`` steps from ``y = x``), or the mode with ``deterministic``."""
        obs = obs.to(self.device).float().reshape(-1, self.dim)
        n = self.config.n_eval_steps
        out = [self.mode(chunk, n) if deterministic else self.sample(chunk, n).samples for chunk in obs.split(CHUNK)]
        return torch.cat(out) if out else obs.new_zeros(0, self.dim)

    # ------------------------------------------------------------------------------- training
    def observe_train_split(self, data: TensorDict) -> None:
        """Read the task's ε (see :attr:`EgEOTConfig.eps`)."""
        self._take_eps(data)

    def _starts(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        y0 = x.clone()
        stored = int(self.n_chains)
        if c.init == "buffer" and stored > 0:
            replay = torch.rand(len(x), device=x.device) < c.replay_prob
            idx = torch.randint(min(stored, c.buffer_size), (len(x),), device=x.device)
            y0 = torch.where(replay[:, None], self.chains[idx], y0)
        return y0

    def _store(self, y: torch.Tensor) -> None:
        c = self.config
        stored = int(self.n_chains)
        slots = (stored + torch.arange(len(y), device=y.device)) % c.buffer_size
        self.chains[slots[-c.buffer_size:]] = y[-c.buffer_size:]
        self.n_chains.fill_(stored + len(y))

    def learning_rate(self, update: int) -> float:
        """The learning rate of update number ``update`` (0-based; see :attr:`EgEOTConfig.lr_decay_updates`)."""
        c = self.config
        if c.lr_decay_updates == 0:
            return c.lr
        t = min(update, c.lr_decay_updates) / c.lr_decay_updates
        return c.lr * (c.lr_final_frac + (1 - c.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """One step on the contrastive weak-dual loss ``-E_Q f + E_{P, π_f} f`` (module docstring)."""
        c = self.config
        self._take_eps(batch)
        x = batch["obs"].to(self.device).float().reshape(-1, self.dim)
        y_data = batch["target"].to(self.device).float().reshape(-1, self.dim)
        index = self.num_updates  # 0-based; counted once the step is taken (a failed update changes nothing)
        result = self.sample(x, c.n_sampling_steps, self._starts(x))
        y_model = result.samples.detach()
        out_data, out_model = self.net(y_data).squeeze(-1), self.net(y_model).squeeze(-1)
        scale = self.eps if c.scale_by_eps else 1.0
        loss = scale * (out_model.mean() - out_data.mean())
        if c.energy_reg > 0:
            loss = loss + c.energy_reg * (out_data.pow(2).mean() + out_model.pow(2).mean())
        assert_finite("egeot loss", loss)
        opt = self.optimizers["potential"]
        for group in opt.param_groups:
            group["lr"] = self.learning_rate(index)
        opt.zero_grad()
        loss.backward()
        if c.grad_clip > 0:
            opt.clip_step(c.grad_clip)
        else:
            opt.step()
        self.num_updates += 1
        if c.init == "buffer":
            self._store(y_model)
        acceptance = 1.0 if result.acceptance is None else result.acceptance
        adapting = c.adapt_updates == 0 or index < c.adapt_updates
        if c.sampler == "mala" and c.target_accept > 0 and adapting:
            self.log_step.add_(c.target_accept_rate * (acceptance - c.target_accept))
        return {"loss": loss.detach(), "f_data": scale * out_data.mean().detach(),
                "f_model": scale * out_model.mean().detach(), "acceptance": torch.tensor(acceptance),
                "step_size": torch.tensor(self.step), "lr": torch.tensor(opt.param_groups[0]["lr"])}
