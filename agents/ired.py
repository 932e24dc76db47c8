"""IRED: iterative reasoning through energy diffusion (Du, Mao & Tenenbaum, ICML 2024, "Learning Iterative
Reasoning through Energy Diffusion", arXiv 2406.11179; digest ``papers/one-step-tasks.md`` §9; the facts
below were read in the official code ``yilundu/ired_code_release``,
``diffusion_lib/denoising_diffusion_pytorch_1d.py``).

**Energy.** ``E_θ(x, y, k) = ‖f_θ(x̃, ỹ, onehot(k))‖²`` (paper §3, the energy is the squared norm of a net's
output) over ``K = agent.landscapes`` annealed landscapes, ``f_θ`` an :func:`rl_energy.nets.mlp`. The agent
works in standardised units: ``x̃`` and ``ỹ`` are the observation and the answer standardised per coordinate
with the training split's mean and standard deviation. Landscape ``k`` is the energy of the diffused answer
``y_k = √ᾱ_k y + √(1 - ᾱ_k) ε`` with the cosine schedule (Nichol & Dhariwal 2021) of ``K`` steps; its step
size is ``η_k = β_k √(1/(1 - ᾱ_k))`` (the code's ``opt_step_size``). With ``K = 1`` (the IREM-like single
landscape) the lone level is the sharpest of a 10-level schedule (``ᾱ = 0.97``), not the pure-noise one.

**Training** (paper §3.2, Eqs. 5–7; code ``p_losses``): for a random landscape ``k`` per sample,

* denoising: ``L_mse = ‖∇_y E_θ(x, y_k, k) - ε‖²`` (the noise is predicted through the energy's gradient);
* contrastive: a positive ``y⁺ = √ᾱ_k y + √(1 - ᾱ_k) ε'`` and a negative made by ``agent.negative_steps``
  (2) descent steps (with rejection) on landscape ``k`` from the 3x-noised ``√ᾱ_k y + 3√(1 - ᾱ_k) ε'``,
  rescaled to an answer, clamped and re-noised with the same ``ε'``; ``L_ce = CE(-[E(y⁺), E(y⁻)], 0)``
  ``= softplus(E(y⁺) - E(y⁻))``;
* ``L = L_mse + agent.contrastive_scale · L_ce`` (0.5 for continuous tasks in the code).

**Inference** (paper §3.3, Algorithm 2; code ``p_sample_loop``/``opt_step``): ``y`` starts as Gaussian noise;
from the smoothest landscape ``k = K - 1`` to the sharpest ``k = 0``: a denoising jump
``ŷ₀ = (y - √(1 - ᾱ_k)∇E)/√ᾱ_k``, ``y = √ᾱ_k ŷ₀``, then gradient steps ``y ← y - η_k ∇_y E(x, y, k)``
clamped to ``√ᾱ_k`` times the answer's box, and **a step that raises the energy is rejected** (the sample
keeps its previous ``y``); then ``y`` is rescaled to the next landscape's level. ``agent.inference``:

* ``fixed``: ``agent.steps_per_landscape`` steps per landscape (the code's 5) for every sample;
* ``adaptive``: per sample, steps continue while each accepted step lowers the energy by more than
  ``agent.tolerance`` relative to it; a rejected step halves that sample's step size instead (backtracking),
  and the sample stops after ``agent.max_halvings`` halvings or ``agent.max_steps_per_landscape`` steps —
  harder instances (slower descent) get more steps (the paper's "adaptive computation").

:meth:`IRED.infer` runs inference with a given step budget and returns the predictions and the steps spent
(the error-vs-steps curve). With ``agent.temperature = τ > 0``, ``act(deterministic=False)`` replaces the
descent by Langevin dynamics at temperature ``τ`` (:func:`rl_energy.samplers.ula` on ``E/τ`` with step
``η_k τ``); deterministic actions draw the initial noise from a generator seeded with ``agent.infer_seed``
(same observations, same answers).

``agent.mode: feedforward`` is the baseline of the paper's tables: a regressor ``x̃ → ỹ`` of the same
hidden sizes trained on the squared error.

A full-information ``contexts`` agent: it learns from ``obs`` and ``target`` and acts in the task's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import gymnasium as gym
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from rl_energy.agent import Agent, assert_finite
from rl_energy.errors import ConfigError, require
from rl_energy.nets import ACTIVATIONS, mlp
from rl_energy.optim import adam
from rl_energy.samplers import energy_and_grad, ula

MODES = ("ired", "feedforward")
INFERENCE = ("adaptive", "fixed")
METRICS: dict[str, tuple[str, ...]] = {
    "ired": ("loss", "loss_mse", "loss_contrastive", "e_pos", "e_neg"),
    "feedforward": ("loss",),
}
CHUNK = 4096
"""Rows per chunk when a whole split goes through inference."""


@dataclass
class IREDConfig:
    """Defaults: the digest's CPU experiment (§9): MLP 3 x 256, K = 10, 6,000 updates of 256."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 6_000 * 256, "batch_size": 256, "eval_every": 1_500 * 256, "log_every": 375 * 256,
        "checkpoint_every": 0,
    }
    """``train`` keys in contexts (one problem each): 6,000 updates of 256."""

    mode: str = "ired"
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    activation: str = "silu"
    energy_dim: int = 0
    """Output width of ``f_θ``; the energy is its squared norm. 0: the answer's dimension (the official
    code's energy head has the output's width, so the zero set of ``f_θ(x, ·, k)`` is generically isolated
    points; with width 1 it would be a hypersurface)."""
    lr: float = 3e-3
    lr_final: float = 1e-4
    lr_decay_updates: int = 0
    """Cosine decay of the learning rate from ``lr`` to ``lr_final`` over this many updates (then ``lr_final``);
    0: a constant ``lr``."""
    landscapes: int = 10
    """``K`` (the code's ``timesteps = 10`` for the continuous tasks); 1: the IREM-like single landscape."""
    contrastive_scale: float = 0.5
    negative_noise: float = 3.0
    negative_steps: int = 2
    inference: str = "adaptive"
    steps_per_landscape: int = 5
    """``fixed`` inference: steps per landscape (the code's 5)."""
    max_steps_per_landscape: int = 20
    """``adaptive`` inference: cap per landscape."""
    tolerance: float = 1e-3
    """``adaptive``: a step must lower the energy by more than ``tolerance · |E|`` to go on."""
    max_halvings: int = 3
    step_scale: float = 1.0
    """Multiplies every ``η_k``."""
    clamp: float = 0.0
    """Clamp of the standardised answer: 0 = the task's action box (standardised), else ``±clamp``."""
    temperature: float = 0.0
    """``τ`` of Langevin inference for ``act(deterministic=False)``; 0: stochastic acts only redraw the start."""
    infer_seed: int = 0

    def validate(self) -> None:
        def number(key: str) -> bool:
            v = getattr(self, key)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def integer(key: str, low: int) -> None:
            v = getattr(self, key)
            require(self, key, isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}")

        require(self, "mode", self.mode in MODES, f"one of {MODES}")
        require(self, "inference", self.inference in INFERENCE, f"one of {INFERENCE}")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {tuple(ACTIVATIONS)}")
        require(self, "hidden", isinstance(self.hidden, list) and len(self.hidden) >= 1
                and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden),
                "a non-empty list of positive integers")
        for key in ("lr", "lr_final", "step_scale", "negative_noise"):
            require(self, key, number(key) and getattr(self, key) > 0, "a positive number")
        for key in ("contrastive_scale", "tolerance", "clamp", "temperature"):
            require(self, key, number(key) and getattr(self, key) >= 0, "a number >= 0")
        integer("energy_dim", 0)
        integer("lr_decay_updates", 0)
        integer("landscapes", 1)
        integer("negative_steps", 0)
        integer("steps_per_landscape", 0)
        integer("max_steps_per_landscape", 1)
        integer("max_halvings", 0)
        integer("infer_seed", 0)
        require(self, "landscapes", self.landscapes <= 1000, "<= 1000")


def cosine_schedule(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(β, ᾱ)`` of the cosine schedule with ``k`` levels (Nichol & Dhariwal 2021, offset 0.008, ``β <= 0.999``),
    as float64 ``[k]``; ``k = 1`` returns the sharpest level of the 10-level schedule (see the module)."""
    if k == 1:
        beta, abar = cosine_schedule(10)
        return beta[:1], abar[:1]
    s = 0.008
    t = torch.linspace(0, k, k + 1, dtype=torch.float64)
    f = torch.cos((t / k + s) / (1 + s) * math.pi * 0.5) ** 2
    beta = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return beta, torch.cumprod(1 - beta, 0)


@dataclass
class Inference:
    """What :meth:`IRED.infer` returns: predictions in the task's units ``[B, A]``, the mean number of descent
    steps per sample (all landscapes), and with ``trace=True`` the energies after each step of each landscape
    (``trace[i] = (k, [steps + 1, B] energies along the kept path)``)."""

    pred: torch.Tensor
    steps: float
    trace: list[tuple[int, torch.Tensor]] | None = None


class IRED(Agent):
    """Energy diffusion over annealed landscapes, or the same-size feed-forward regressor (see the module)."""

    Config = IREDConfig
    collection = "contexts"
    uses_labels = True
    metric_names = METRICS["ired"]
    """The instance's names depend on ``agent.mode`` (:data:`METRICS`)."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, config: IREDConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        low = torch.as_tensor(action_space.low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_space.high, dtype=torch.float32).reshape(-1)
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ConfigError("agent 'ired' needs a bounded action space (its answers are clamped to the box)")
        self.action_shape = tuple(action_space.shape)
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.obs_dim))
        self.register_buffer("y_mean", (low + high) / 2)
        self.register_buffer("y_std", torch.ones(self.action_dim))
        self.register_buffer("stats_set", torch.zeros((), dtype=torch.bool))
        beta, abar = cosine_schedule(c.landscapes)
        self.register_buffer("abar", abar.float())
        self.register_buffer("eta", (beta * torch.sqrt(1 / (1 - abar))).float())
        act = ACTIVATIONS[c.activation]
        if c.mode == "feedforward":
            self.net = mlp(self.obs_dim, c.hidden, self.action_dim, act)
        else:
            width = c.energy_dim or self.action_dim
            self.net = mlp(self.obs_dim + self.action_dim + c.landscapes, c.hidden, width, act)
            self.net.keep_fp32 = True  # energy gradients (and their gradients) amplify bf16 rounding
        self.metric_names = METRICS[c.mode]
        self.to(self.device)
        self.optimizers = {"net": adam(self.net.parameters(), c.lr)}

    # ------------------------------------------------------------------------------ normalisation
    def observe_train_split(self, data: TensorDict) -> None:
        """Per-coordinate mean and standard deviation of the training observations and answers."""
        self._set_stats(data["obs"], data["target"])

    def _set_stats(self, obs: torch.Tensor, target: torch.Tensor) -> None:
        obs = obs.reshape(obs.shape[0], -1).float().to(self.device)
        y = target.reshape(target.shape[0], -1).float().to(self.device)
        self.obs_mean.copy_(obs.mean(0))
        self.obs_std.copy_(obs.std(0, correction=0).clamp(min=1e-6) if len(obs) > 1 else torch.ones_like(obs[0]))
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0, correction=0).clamp(min=1e-6) if len(y) > 1 else torch.ones_like(y[0]))
        self.stats_set.fill_(True)

    def norm_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.reshape(obs.shape[0], -1).float().to(self.device) - self.obs_mean) / self.obs_std

    def to_task(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised answers -> the task's units, inside the action box."""
        y = z * self.y_std + self.y_mean
        return torch.maximum(torch.minimum(y, self.high), self.low).reshape(-1, *self.action_shape)

    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clamp of a standardised answer (``agent.clamp`` or the standardised action box)."""
        if self.config.clamp > 0:
            b = torch.full_like(self.y_mean, self.config.clamp)
            return -b, b
        return (self.low - self.y_mean) / self.y_std, (self.high - self.y_mean) / self.y_std

    def _clamp_answer(self, z: torch.Tensor) -> torch.Tensor:
        """Clamp a standardised answer (level-free) to its bounds."""
        lo, hi = self._bounds()
        return torch.maximum(torch.minimum(z, hi), lo)

    def _clamp(self, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Clamp ``z`` at level ``k`` ``[B]`` to ``√ᾱ_k`` times the answer's bounds (code ``opt_step``)."""
        lo, hi = self._bounds()
        s = self.abar[k].sqrt().unsqueeze(-1)
        return torch.maximum(torch.minimum(z, s * hi), s * lo)

    # ------------------------------------------------------------------------------------ energy
    def energy(self, x: torch.Tensor, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``E_θ(x, z, k) = ‖f_θ(x, z, onehot(k))‖²`` ``[B]`` for standardised ``x [B, O]``, ``z [B, A]``, ``k [B]``."""
        if self.config.mode != "ired":
            raise ValueError("energy() needs agent.mode: ired")
        onehot = F.one_hot(k, self.config.landscapes).to(z.dtype)
        return self.net(torch.cat([x, z, onehot], dim=1)).pow(2).sum(-1)

    def _levels(self, k: int | torch.Tensor, n: int) -> torch.Tensor:
        if isinstance(k, int):
            return torch.full((n,), k, dtype=torch.long, device=self.device)
        return k

    def descend(self, x: torch.Tensor, z: torch.Tensor, k: int | torch.Tensor, steps: int,
                adaptive: bool = False, trace: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient steps ``z ← z - η_k ∇_z E(x, z, k)`` on landscape ``k`` with clamping, **rejecting every step
        that raises the energy** (code ``opt_step``). ``steps`` is the number of steps (``fixed``) or the cap
        (``adaptive``: see the module). Returns the final ``z`` and the steps each sample took ``[B]``; with
        ``trace`` (a list) appends the energies of the kept path, one ``[B]`` tensor per step (first: the start).
        """
        c = self.config
        levels = self._levels(k, z.shape[0])

        def energy(zz: torch.Tensor) -> torch.Tensor:
            return self.energy(x, zz, levels)

        e, g = energy_and_grad(energy, z, "ired")
        if trace is not None:
            trace.append(e.clone())
        eta = (c.step_scale * self.eta[levels]).unsqueeze(-1)
        lr = eta.clone()
        active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        halvings = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        count = torch.zeros(z.shape[0], device=z.device)
        for _ in range(steps):
            z_new = self._clamp(z - lr * g, levels)
            e_new, g_new = energy_and_grad(energy, z_new, "ired")
            accept = (e_new <= e) & active
            count += active.float()
            if adaptive:
                small = accept & (e - e_new <= c.tolerance * e.abs())
                rejected = active & ~accept
                halvings += rejected.long()
                lr = torch.where(rejected.unsqueeze(-1), lr * 0.5, lr)
                active = active & ~small & (halvings <= c.max_halvings)
            keep = accept.unsqueeze(-1)
            z = torch.where(keep, z_new, z)
            g = torch.where(keep, g_new, g)
            e = torch.where(accept, e_new, e)
            if trace is not None:
                trace.append(e.clone())
            if adaptive and not bool(active.any()):
                break
        return z, count

    @torch.no_grad()
    def infer(self, obs: torch.Tensor, steps_per_landscape: int | None = None, inference: str | None = None,
              generator: torch.Generator | None = None, langevin: bool = False,
              trace: bool = False) -> Inference:
        """Annealed inference through the ``K`` landscapes (see the module) with a given step budget:
        ``steps_per_landscape`` (default: ``agent.steps_per_landscape`` for ``fixed``,
        ``agent.max_steps_per_landscape`` for ``adaptive``) and ``inference`` (default ``agent.inference``).
        Returns the predictions in the task's units and the mean number of descent steps per sample."""
        c = self.config
        if c.mode != "ired":
            pred = self.act(obs, deterministic=True)
            return Inference(pred, 0.0, [] if trace else None)
        inference = inference or c.inference
        if inference not in INFERENCE:
            raise ValueError(f"inference must be one of {INFERENCE}, got {inference!r}")
        if steps_per_landscape is None:
            steps_per_landscape = c.steps_per_landscape if inference == "fixed" else c.max_steps_per_landscape
        if steps_per_landscape < 0:
            raise ValueError(f"steps_per_landscape must be >= 0, got {steps_per_landscape}")
        preds, counts, traces = [], [], []
        for chunk in obs.to(self.device).split(CHUNK):
            x = self.norm_obs(chunk)
            n = x.shape[0]
            z = torch.randn(n, self.action_dim, generator=generator, device=self.device)
            total = torch.zeros(n, device=self.device)
            for k in reversed(range(c.landscapes)):
                levels = self._levels(k, n)
                ab = float(self.abar[k])
                _, g = energy_and_grad(lambda zz, lv=levels, xx=x: self.energy(xx, zz, lv), z, "ired")
                z0 = self._clamp_answer((z - math.sqrt(1 - ab) * g) / math.sqrt(ab))
                z = self._clamp(math.sqrt(ab) * z0, levels)
                if langevin and c.temperature > 0 and steps_per_landscape > 0:
                    tau, h = c.temperature, float(self.eta[k]) * c.step_scale * c.temperature
                    z = ula(lambda zz, lv=levels, xx=x, tt=tau: self.energy(xx, zz, lv) / tt, z, h,
                            steps_per_landscape, generator=generator).samples
                    z = self._clamp(z, levels)
                    total += steps_per_landscape
                else:
                    path: list[torch.Tensor] | None = [] if trace else None
                    z, count = self.descend(x, z, k, steps_per_landscape, adaptive=inference == "adaptive",
                                            trace=path)
                    total += count
                    if path is not None:
                        traces.append((k, torch.stack(path)))
                z0 = z / math.sqrt(ab)
                if k > 0:
                    z = math.sqrt(float(self.abar[k - 1])) * z0
            preds.append(self.to_task(z0))
            counts.append(total)
        steps = float(torch.cat(counts).mean()) if counts else 0.0
        pred = torch.cat(preds) if preds else obs.new_zeros(0, *self.action_shape)
        return Inference(pred, steps, traces if trace else None)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Answers in the task's units ``[B, *action_shape]``: the feed-forward prediction, or IRED's annealed
        inference (deterministic: a seeded start; otherwise a random start, and Langevin if ``τ > 0``)."""
        obs = obs.to(self.device)
        if self.config.mode == "feedforward":
            with torch.no_grad():
                out = [self.to_task(self.net(self.norm_obs(ch))) for ch in obs.split(CHUNK)]
            return torch.cat(out) if out else obs.new_zeros(0, *self.action_shape)
        gen = None
        if deterministic:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self.config.infer_seed)
        return self.infer(obs, generator=gen, langevin=not deterministic).pred

    # ------------------------------------------------------------------------------------ training
    def _lr(self) -> float:
        c = self.config
        if c.lr_decay_updates <= 0:
            return c.lr
        frac = min(self.num_updates, c.lr_decay_updates) / c.lr_decay_updates
        return c.lr_final + 0.5 * (c.lr - c.lr_final) * (1 + math.cos(math.pi * frac))

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c = self.config
        obs, target = batch["obs"], batch["target"]
        if not bool(self.stats_set):
            self._set_stats(obs, target)
        x = self.norm_obs(obs)
        z0 = (target.reshape(target.shape[0], -1).float().to(self.device) - self.y_mean) / self.y_std
        opt = self.optimizers["net"]
        for group in opt.param_groups:
            group["lr"] = self._lr()
        if c.mode == "feedforward":
            loss = (self.net(x) - z0).pow(2).mean()
            metrics: dict[str, torch.Tensor] = {}
        else:
            loss, metrics = self._ired_loss(x, z0)
        assert_finite("loss", loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.num_updates += 1
        return {"loss": loss.detach(), **metrics}

    def _ired_loss(self, x: torch.Tensor, z0: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising MSE through ``∇E`` plus the contrastive term (code ``p_losses``, continuous branch)."""
        c = self.config
        n = x.shape[0]
        k = torch.randint(c.landscapes, (n,), device=self.device)
        sa = self.abar[k].sqrt().unsqueeze(-1)
        sb = (1 - self.abar[k]).sqrt().unsqueeze(-1)
        eps = torch.randn_like(z0)
        zk = (sa * z0 + sb * eps).requires_grad_(True)
        e = self.energy(x, zk, k)
        (grad,) = torch.autograd.grad(e.sum(), zk, create_graph=True)
        loss_mse = (grad - eps).pow(2).mean()
        if c.contrastive_scale == 0:
            zero = loss_mse.new_zeros(())
            return loss_mse, {"loss_mse": loss_mse.detach(), "loss_contrastive": zero, "e_pos": zero, "e_neg": zero}
        eps2 = torch.randn_like(z0)
        pos = sa * z0 + sb * eps2
        neg = sa * z0 + c.negative_noise * sb * eps2
        if c.negative_steps > 0:
            neg, _ = self.descend(x, neg, k, c.negative_steps)
        neg0 = self._clamp_answer(neg / sa)
        neg = sa * neg0 + sb * eps2
        energies = self.energy(torch.cat([x, x]), torch.cat([pos, neg.detach()]), torch.cat([k, k]))
        e_pos, e_neg = energies[:n], energies[n:]
        loss_ce = F.softplus(e_pos - e_neg).mean()  # CE(-[E+, E-]) with the positive as the class
        loss = loss_mse + c.contrastive_scale * loss_ce
        return loss, {"loss_mse": loss_mse.detach(), "loss_contrastive": loss_ce.detach(),
                      "e_pos": e_pos.mean().detach(), "e_neg": e_neg.mean().detach()}
