"""Energy-based model training with interchangeable losses (the Hitchhiker's guide to EBMs, Carbone,
arXiv 2406.13661, "training methods"; digest ``papers/one-step-tasks.md`` §11).

The model is ``ρ_θ(x) = exp(-U_θ(x))/Z_θ`` with ``U_θ(x) = f_θ(x) + |x|²/(2 s²)``: an MLP ``f_θ`` plus a
fixed, wide Gaussian confinement (``s = agent.base_scale``, by default the action box's half-width) so
that ``Z_θ`` is finite whatever the net does far from the data. ``agent.loss`` picks the estimator of the
maximum-likelihood gradient ``∇_θ = E_data[∇_θU] - E_model[∇_θU]`` (or a substitute for it):

* ``cd`` (contrastive divergence, CD-k): model samples from ``k = agent.mcmc_steps`` MCMC steps started at
  the data batch;
* ``pcd`` (persistent CD): the chains (``agent.n_walkers``) carry on from one update to the next (a
  fraction ``agent.restart_prob`` restarts uniformly in the box each update: 0 is plain PCD, 0.05 the
  "replay buffer with 5% noise restarts" of short-run EBMs);
* ``dsm`` (denoising score matching, Vincent 2011): ``E‖σ∇U(x + σξ) - ξ‖²/2`` for ``ξ ~ N(0, I)``,
  ``σ = agent.dsm_sigma``; no sampling at all;
* ``nce`` (noise-contrastive estimation, Gutmann & Hyvärinen 2010): logistic classification of the data
  against as many draws of a Gaussian ``q`` fitted to the training data, with logit ``-U_θ(x) - log q(x)``
  (the net's output bias plays ``-log Z``);
* ``jarzynski`` (Carbone, Hua, Coste & Vanden-Eijnden, NeurIPS 2023, Eqs. 10–12): the persistent
  walkers carry log-weights ``A``. Per update: the gradient uses the *weighted* walkers,
  ``E_data[∇_θU] - Σ_i softmax(A)_i ∇_θU(X_i)``; then each walker makes a ULA step under the old
  parameters, ``X' = X - h∇U_θk(X) + √(2h)ξ``, and
  ``A += -U_θk+1(X') - |X - X' + h∇U_θk+1(X')|²/(4h) + U_θk(X) + |X' - X + h∇U_θk(X)|²/(4h)``
  (the Jarzynski/AIS weight of the move, which accounts for both the parameter change and the ULA
  discretisation). Walkers are resampled (systematic) when their ESS falls below
  ``agent.resample_threshold · n_walkers``.

CD, PCD and DSM are blind to the relative weights of well-separated modes (the chains never cross the
barrier; the score vanishes between modes), the known failure that the Jarzynski weights correct
(``scripts/reproduce_ebm_training.py``).

A full-information ``contexts`` agent on :class:`~rl_energy.envs.tasks.energy_mixture.EnergyMixtureTask`:
it learns from the draws of the target in ``target``; :meth:`EBMTrainer.act` samples the learned model by
annealed SMC (:func:`rl_energy.samplers.smc`) from a Gaussian of scale ``s``, so the samples carry the
model's mode weights whatever the barrier. MCMC is :mod:`rl_energy.samplers` (``agent.sampler``: ula or
mala for CD/PCD; Jarzynski uses ULA, whose bias its weights correct).
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
from rl_energy.samplers import effective_sample_size, energy_and_grad, mala, smc, systematic_resample, ula

LOSSES = ("cd", "pcd", "dsm", "nce", "jarzynski")
CHAIN_SAMPLERS = ("ula", "mala")
METRICS: dict[str, tuple[str, ...]] = {
    "cd": ("loss", "e_data", "e_model"), "pcd": ("loss", "e_data", "e_model"), "dsm": ("loss", "e_data"),
    "nce": ("loss", "e_data", "e_model"), "jarzynski": ("loss", "e_data", "e_model", "ess"),
}
"""Logged per loss: mean energies of the data and of the negatives (NCE: the noise draws), the walkers' ESS."""


@dataclass
class EBMConfig:
    """Defaults: a 2-D EBM in the spirit of the Jarzynski paper's Gaussian-mixture test (digest §11)."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 3_000 * 256, "batch_size": 256, "eval_every": 500 * 256, "log_every": 100 * 256,
        "checkpoint_every": 1_000 * 256,
    }
    """``train`` keys in contexts (one draw of the target each): 3,000 updates of 256."""

    loss: str = "jarzynski"
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    activation: str = "silu"
    lr: float = 1e-3
    base_scale: float = 0.0
    """``s`` of the confinement ``|x|²/(2s²)``; 0: the action box's half-width."""
    sampler: str = "ula"
    """MCMC for the negative samples of ``cd``/``pcd`` (``jarzynski`` always uses ULA)."""
    step_size: float = 0.02
    mcmc_steps: int = 5
    """``k`` of CD-k; MCMC steps per update for ``pcd`` and ``jarzynski``."""
    n_walkers: int = 1024
    """Persistent chains of ``pcd`` and ``jarzynski``."""
    restart_prob: float = 0.0
    resample_threshold: float = 0.5
    dsm_sigma: float = 0.1
    energy_reg: float = 0.0
    """``λ E[U(x⁺)² + U(x⁻)²]`` on the contrastive losses (Du & Mordatch 2019's regulariser; 0: off)."""
    act_temps: int = 50
    act_step_size: float = 0.05
    """Annealed SMC of :meth:`EBMTrainer.act`: temperatures and MALA step size."""

    def validate(self) -> None:
        require(self, "loss", self.loss in LOSSES, f"one of {LOSSES}")
        require(self, "sampler", self.sampler in CHAIN_SAMPLERS, f"one of {CHAIN_SAMPLERS}")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {tuple(ACTIVATIONS)}")
        require(self, "hidden", isinstance(self.hidden, list) and len(self.hidden) >= 1
                and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden),
                "a non-empty list of positive integers")
        for key in ("lr", "step_size", "dsm_sigma", "act_step_size"):
            value = getattr(self, key)
            require(self, key, isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value > 0, "a positive number")
        for key in ("base_scale", "energy_reg"):
            value = getattr(self, key)
            require(self, key, isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= 0, "a number >= 0")
        for key in ("restart_prob", "resample_threshold"):
            value = getattr(self, key)
            require(self, key, isinstance(value, (int, float)) and not isinstance(value, bool)
                    and 0 <= value <= 1, "in [0, 1]")
        for key, low in (("mcmc_steps", 1), ("n_walkers", 2), ("act_temps", 1)):
            value = getattr(self, key)
            require(self, key, isinstance(value, int) and not isinstance(value, bool) and value >= low, f">= {low}")
        require(self, "step_size", self.step_size <= 10.0, "<= 10 (a Langevin step this large diverges)")


class EBMTrainer(Agent):
    """An EBM ``exp(-U_θ)`` trained by CD, PCD, DSM, NCE or Jarzynski-weighted CD (see the module)."""

    Config = EBMConfig
    collection = "contexts"
    uses_labels = True
    metric_names = METRICS["jarzynski"]
    """The instance's names depend on ``agent.loss`` (:data:`METRICS`)."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, config: EBMConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        self.event_shape = tuple(action_space.shape)
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ConfigError("agent 'ebm' needs a bounded action space (its walkers restart in the box)")
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.base_scale = float(c.base_scale) or float(((high - low) / 2).max())
        self.f = mlp(self.action_dim, c.hidden, 1, ACTIVATIONS[c.activation])
        self.optimizers = {"energy": adam(self.f.parameters(), c.lr)}
        self.register_buffer("walkers", self._uniform(c.n_walkers))
        self.register_buffer("log_w", torch.zeros(c.n_walkers))
        self.register_buffer("noise_mean", torch.zeros(self.action_dim))
        self.register_buffer("noise_chol", torch.eye(self.action_dim))
        self.metric_names = METRICS[c.loss]
        self.to(self.device)

    # ------------------------------------------------------------------------------------ energy
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``U_θ(x) = f_θ(x) + |x|²/(2s²)`` for ``x [N, *event]`` -> ``[N]``."""
        flat = x.reshape(x.shape[0], -1)
        return self.f(flat).squeeze(-1) + (flat * flat).sum(1) / (2 * self.base_scale**2)

    def _uniform(self, n: int) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.rand(n, *self.event_shape, device=self.low.device)

    def observe_train_split(self, data: TensorDict) -> None:
        """NCE's noise: a Gaussian fitted to the training draws (mean and Cholesky factor of the covariance)."""
        x = data["target"].reshape(data.batch_size[0], -1).float()
        cov = torch.cov(x.T).reshape(self.action_dim, self.action_dim) + 1e-4 * torch.eye(self.action_dim,
                                                                                         device=x.device)
        self.noise_mean.copy_(x.mean(0))
        self.noise_chol.copy_(torch.linalg.cholesky(cov))

    # ----------------------------------------------------------------------------------- sampling
    def _chains(self, x0: torch.Tensor) -> torch.Tensor:
        c = self.config
        sampler = ula if c.sampler == "ula" else mala
        return sampler(self.energy, x0, c.step_size, c.mcmc_steps).samples

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Samples of the learned model, one per observation, by annealed SMC from ``N(0, s² I)``."""
        c, s = self.config, self.base_scale
        x0 = s * torch.randn(obs.shape[0], *self.event_shape, device=obs.device)
        d = self.action_dim
        out = smc(self.energy, lambda x: (x.reshape(x.shape[0], -1) ** 2).sum(1) / (2 * s * s), x0,
                  n_temps=c.act_temps, step_size=c.act_step_size, n_mcmc=2,
                  init_log_z=0.5 * d * math.log(2 * math.pi * s * s))
        return out.samples

    # ------------------------------------------------------------------------------------ updates
    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c = self.config
        x_data = batch["target"].reshape(-1, *self.event_shape).float()
        opt = self.optimizers["energy"]
        jarzynski_state = None
        if c.loss == "dsm":
            loss, e_data, e_model = self._dsm(x_data)
        elif c.loss == "nce":
            loss, e_data, e_model = self._nce(x_data)
        else:
            if c.loss == "cd":
                x_model, weights = self._chains(x_data), None
            elif c.loss == "pcd":
                if c.restart_prob > 0:
                    restart = torch.rand(c.n_walkers, device=self.walkers.device) < c.restart_prob
                    self.walkers[restart] = self._uniform(int(restart.sum()))
                self.walkers.copy_(self._chains(self.walkers))
                x_model, weights = self.walkers, None
            else:
                e_old, g_old = energy_and_grad(self.energy, self.walkers, "jarzynski", self.num_updates)
                jarzynski_state = (e_old, g_old)
                x_model, weights = self.walkers, torch.softmax(self.log_w, 0)
            e_pos = self.energy(x_data)
            e_neg = self.energy(x_model.detach())
            e_data = e_pos.mean()
            e_model = e_neg.mean() if weights is None else (weights * e_neg).sum()
            loss = e_data - e_model
            if c.energy_reg:
                loss = loss + c.energy_reg * (e_pos.square().mean() + e_neg.square().mean())
        assert_finite("loss", loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        metrics = {"loss": loss.detach(), "e_data": e_data.detach()}
        if e_model is not None:
            metrics["e_model"] = e_model.detach()
        if jarzynski_state is not None:
            metrics["ess"] = self._jarzynski_move(*jarzynski_state)
        self.num_updates += 1
        return metrics

    def _dsm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Denoising score matching at noise ``σ``: ``E‖σ∇U(x̃) - ξ‖²/2`` (the score of ``x̃|x`` is ``-ξ/σ``)."""
        sigma = self.config.dsm_sigma
        xi = torch.randn_like(x)
        noisy = (x + sigma * xi).requires_grad_(True)
        e = self.energy(noisy)
        (grad,) = torch.autograd.grad(e.sum(), noisy, create_graph=True)
        loss = 0.5 * (sigma * grad - xi).reshape(x.shape[0], -1).square().sum(1).mean()
        return loss, e.mean(), None

    def _nce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NCE with one Gaussian noise draw per data point: ``-log σ(ℓ(x⁺)) - log(1 - σ(ℓ(x⁻)))``,
        ``ℓ(x) = -U_θ(x) - log q(x)``."""
        flat = x.reshape(x.shape[0], -1)
        noise = self.noise_mean + torch.randn_like(flat) @ self.noise_chol.T
        q = torch.distributions.MultivariateNormal(self.noise_mean, scale_tril=self.noise_chol)
        e_pos = self.energy(x)
        e_neg = self.energy(noise.reshape(x.shape))
        logit_pos = -e_pos - q.log_prob(flat)
        logit_neg = -e_neg - q.log_prob(noise)
        loss = F.softplus(-logit_pos).mean() + F.softplus(logit_neg).mean()
        return loss, e_pos.mean(), e_neg.mean()

    @torch.no_grad()
    def _jarzynski_move(self, e_old: torch.Tensor, g_old: torch.Tensor) -> torch.Tensor:
        """ULA moves of the walkers with their Jarzynski log-weight increments (Carbone et al. 2023, Eq. 12),
        then systematic resampling when the ESS is low. Returns the ESS fraction before resampling."""
        c, h = self.config, self.config.step_size
        x, log_w = self.walkers, self.log_w.clone()
        for _ in range(c.mcmc_steps):
            xi = torch.randn_like(x)
            x_new = x - h * g_old + math.sqrt(2 * h) * xi
            e_new, g_new = energy_and_grad(self.energy, x_new, "jarzynski", self.num_updates)
            back = (x - x_new + h * g_new).reshape(x.shape[0], -1)
            # forward term |x' - x + h∇U_old(x)|²/(4h) = |ξ|²/2
            log_w += -e_new - back.square().sum(1) / (4 * h) + e_old + xi.reshape(x.shape[0], -1).square().sum(1) / 2
            x, e_old, g_old = x_new, e_new, g_new
        ess = effective_sample_size(log_w) / log_w.shape[0]
        if float(ess) < c.resample_threshold:
            x = x[systematic_resample(log_w)]
            log_w.zero_()
        else:
            log_w -= log_w.max()  # keep the weights in range (only their differences matter)
        self.walkers.copy_(x)
        self.log_w.copy_(log_w)
        return ess.float()
