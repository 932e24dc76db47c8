"""CISIR: correlation-aware importance sampling for imbalanced regression (Moukpe, Chan & Zhang, 2025,
arXiv 2509.16339; digest ``one-step-tasks.md`` §5).

A full-information learner for one-step regression tasks (``collection = "contexts"``,
``uses_labels = True``). Per batch ``B`` (digest §5, "Core"):

    L = Σ_i w_mse(y_i)(ŷ_i − y_i)² / Σ_i w_mse(y_i) + λ (1 − PCC_w(y, ŷ)),

with ``PCC_w`` the Pearson correlation of the batch weighted by ``w_pcc`` (:func:`weighted_pcc`). The
correlation is batch-level, so it lives in the learner's loss; the task's per-step reward stays the
unweighted ``−(ŷ − y)²``.

**Importance weights** come from a Gaussian KDE of the train labels, fitted once in
:meth:`CISIR.observe_train_split` and kept as buffers (checkpoints carry them):

* ``d(y)`` = KDE density at the label; *flattened* beyond ``|y| ≥ flatten_at`` (2): every label past the
  threshold on one side gets the smallest density of the train labels past it (the official code's
  ``smooth_blip``), which stops the gaps between the last few extreme labels from making weights jump;
* ``mdi`` (the paper's MDI importance): ``d̃ = d/(max d + ε)``, ``w = (1 − d̃^α)^{1/α}`` (:func:`mdi_importance`),
  a monotone decreasing involution of ``[0, 1]``, with separate ``α_mse`` and ``α_pcc``;
* ``reciprocal``: ``w = 1/d̃``;
* ``denseweight`` (Steininger et al., 2021, DenseWeight): ``w = max(1 − α p′(y), ε)`` with ``p′`` the
  min-max normalised density (:func:`denseweight_importance`);
* ``none``: ``w = 1`` (plain MSE, and the plain PCC).

Every weighting is normalised to mean 1 over the train labels (the batch loss divides by ``Σ w`` anyway).

**Stratified sampling** (the third ingredient of CISIR) is the task's ``sampling`` option
(``env_kwargs.sampling=stratified``), not the learner's: the ``contexts`` loop draws the batches.

Network: the digest's CPU setting, an MLP 64-32-16 (LeakyReLU, as the official SARCOS model), trained by
Adam with the L2 penalty ``weight_decay`` (``torch.optim.Adam``'s coupled form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import gymnasium as gym
import torch
from tensordict import TensorDict

from rl_energy.agent import Agent, assert_finite
from rl_energy.errors import require
from rl_energy.nets import ACTIVATIONS, mlp
from rl_energy.optim import adam

WEIGHTINGS = ("none", "mdi", "reciprocal", "denseweight")


@dataclass
class CISIRConfig:
    """Defaults: the digest's CPU setting (MLP 64-32-16, Adam) with the official SARCOS config's loss
    settings where they carry over (α_mse 0.2, α_pcc 0.05, flattening at |y| = 2); see configs/cisir/."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 1_280_000, "batch_size": 256, "eval_every": 128_000, "log_every": 12_800,
        "checkpoint_every": 0,
    }
    """``train`` keys in contexts (the ``contexts`` loop adds ``batch_size`` per update): 5,000 updates of 256
    (64 passes over the 20k train labels)."""

    hidden: list[int] = field(default_factory=lambda: [64, 32, 16])
    activation: str = "leaky_relu"
    lr: float = 1e-3
    weight_decay: float = 0.0
    """Adam's (coupled) L2 penalty."""
    lam: float = 0.5
    """λ, the weight of the correlation term ``1 − PCC_w``; 0 gives plain (weighted) MSE."""
    weighting: str = "mdi"
    """``none`` | ``mdi`` | ``reciprocal`` | ``denseweight`` (module docstring)."""
    alpha_mse: float = 0.2
    """MDI's α for the MSE weights (SARCOS config)."""
    alpha_pcc: float = 0.05
    """MDI's α for the correlation weights (SARCOS config)."""
    dense_alpha: float = 1.0
    """DenseWeight's α (Steininger et al., 2021)."""
    min_weight: float = 1e-6
    """DenseWeight's ε: the smallest weight before normalisation."""
    bandwidth: float = 0.07
    """KDE bandwidth factor: the kernel's standard deviation over the train labels' (scipy's ``bw_method``
    scalar; the official code's default 0.07)."""
    flatten_at: float = 2.0
    """Labels with ``|y| ≥ flatten_at`` share the smallest density on their side (digest: "flattened beyond
    |y| ≥ 2")."""
    density_eps: float = 1e-3
    """ε of ``d̃ = d/(max d + ε)``."""
    rare_threshold: float = 0.5
    """Only for the ``rare_weight_share`` metric: labels with ``|y| ≥ rare_threshold`` (the task's default)."""
    grid_points: int = 2048
    """Points of the density table between ``max(min y, −flatten_at)`` and ``min(max y, flatten_at)``;
    weights between them are interpolated linearly."""

    def validate(self) -> None:
        require(self, "hidden", len(self.hidden) > 0 and all(h > 0 for h in self.hidden), "a list of positive widths")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "lam", self.lam >= 0 and math.isfinite(self.lam), ">= 0")
        require(self, "weighting", self.weighting in WEIGHTINGS, f"one of {', '.join(WEIGHTINGS)}")
        for key in ("alpha_mse", "alpha_pcc", "dense_alpha", "bandwidth"):
            value = getattr(self, key)
            require(self, key, value > 0 and math.isfinite(value), "> 0")
        require(self, "min_weight", 0 < self.min_weight <= 1, "in (0, 1]")
        require(self, "flatten_at", self.flatten_at > 0, "> 0")
        require(self, "density_eps", self.density_eps >= 0, ">= 0")
        require(self, "rare_threshold", self.rare_threshold > 0, "> 0")
        require(self, "grid_points", self.grid_points >= 16, ">= 16")


# ------------------------------------------------------------------------------ weights and losses
def gaussian_kde(query: torch.Tensor, samples: torch.Tensor, bandwidth: float, chunk: int = 256) -> torch.Tensor:
    """Gaussian kernel density of ``samples`` (1-D) at ``query`` (1-D), kernel std ``bandwidth · std(samples)``
    (scipy's ``gaussian_kde(samples, bw_method=bandwidth)``), computed in float64 in chunks of ``query``."""
    x = samples.double().reshape(-1)
    h = bandwidth * float(x.std(correction=1))
    if not h > 0:
        raise ValueError("the labels are constant: their density has no bandwidth")
    out = []
    for q in query.double().reshape(-1).split(chunk):
        u = (q[:, None] - x[None, :]) / h
        out.append(torch.exp(-0.5 * u.square()).mean(1) / (h * math.sqrt(2 * math.pi)))
    return torch.cat(out) if out else query.double().new_zeros(0)


def mdi_importance(d_tilde: torch.Tensor, alpha: float) -> torch.Tensor:
    """MDI importance ``(1 − d̃^α)^{1/α}`` of the normalised density ``d̃ ∈ [0, 1]`` (digest §5): 1 at
    ``d̃ = 0``, 0 at ``d̃ = 1``, monotone decreasing, and its own inverse on ``[0, 1]``."""
    d = d_tilde.clamp(0.0, 1.0)
    return (1.0 - d.pow(alpha)).clamp_min(0.0).pow(1.0 / alpha)


def denseweight_importance(density: torch.Tensor, d_min: torch.Tensor | float, d_max: torch.Tensor | float,
                           alpha: float, min_weight: float) -> torch.Tensor:
    """DenseWeight (Steininger et al., 2021): ``max(1 − α p′, ε)`` with ``p′ = (d − d_min)/(d_max − d_min)`` the
    min-max normalised density (``d_min``, ``d_max`` over the train labels), before the normalisation to mean 1."""
    span = float(d_max - d_min)
    p = ((density - d_min) / span).clamp(0.0, 1.0) if span > 0 else torch.zeros_like(density)
    return (1.0 - alpha * p).clamp_min(min_weight)


def weighted_pcc(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 eps: float = 1e-12) -> torch.Tensor:
    """Weighted Pearson correlation of two 1-D tensors (digest §5's ``PCC_w``): with ``p = w/Σw``,
    ``m_a = Σ p a``, ``cov = Σ p (ŷ − m_ŷ)(y − m_y)``, ``PCC_w = cov / sqrt(var_ŷ var_y + eps)``.
    ``weight=None`` is the plain Pearson correlation."""
    if weight is None:
        p = torch.full_like(pred, 1.0 / pred.numel())
    else:
        p = weight / weight.sum()
    dp = pred - (p * pred).sum()
    dt = target - (p * target).sum()
    cov = (p * dp * dt).sum()
    return cov / torch.sqrt((p * dp.square()).sum() * (p * dt.square()).sum() + eps)


def cisir_loss(pred: torch.Tensor, target: torch.Tensor, w_mse: torch.Tensor | None, w_pcc: torch.Tensor | None,
               lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, weighted MSE, PCC_w)`` of digest §5: ``L = Σ w_mse (ŷ − y)² / Σ w_mse + λ (1 − PCC_w)``."""
    sq = (pred - target).square()
    mse = sq.mean() if w_mse is None else (w_mse * sq).sum() / w_mse.sum()
    if lam > 0:
        pcc = weighted_pcc(pred, target, w_pcc)
        return mse + lam * (1.0 - pcc), mse, pcc
    with torch.no_grad():
        pcc = weighted_pcc(pred.detach(), target, w_pcc)
    return mse, mse, pcc


# ----------------------------------------------------------------------------------------- agent
class CISIR(Agent):
    """CISIR (Moukpe, Chan & Zhang, 2025): MDI-weighted MSE plus a weighted correlation term, on a regressor."""

    Config = CISIRConfig
    collection = "contexts"
    uses_labels = True
    metric_names = ("loss", "mse_w", "pcc_w", "rare_weight_share")
    """``rare_weight_share``: the share of the batch's MSE weight on labels with ``|y| ≥ rare_threshold``."""

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: CISIRConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        self.net = mlp(self.obs_dim, c.hidden, self.action_dim, activation=ACTIVATIONS[c.activation])
        self.net.keep_fp32 = True  # labels span three orders of magnitude: bfloat16 rounding shows in the MAE
        # The density table (observe_train_split): grid [G], weights [2 (mse, pcc), G], tail weights
        # [2 (mse, pcc), 2 (below -flatten_at, above +flatten_at)]; zeros until fitted.
        self.register_buffer("grid", torch.zeros(c.grid_points))
        self.register_buffer("grid_weights", torch.zeros(2, c.grid_points))
        self.register_buffer("tail_weights", torch.zeros(2, 2))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.to(self.device)
        self.optimizers = {"net": adam([{"params": list(self.net.parameters()), "weight_decay": c.weight_decay}], c.lr)}

    # ------------------------------------------------------------------------------------ density
    @torch.no_grad()
    def observe_train_split(self, data: TensorDict) -> None:
        """Fit the label KDE on the whole train split and tabulate the MSE and PCC weights (digest §5, MDI)."""
        c = self.config
        y = data["target"].reshape(-1).double().cpu()
        if c.weighting == "none":
            self.fitted.fill_(True)
            return
        lo = max(float(y.min()), -c.flatten_at)
        hi = min(float(y.max()), c.flatten_at)
        grid = torch.linspace(lo, hi, c.grid_points, dtype=torch.float64)
        dens_grid = gaussian_kde(grid, y, c.bandwidth)
        # flattening: past ±flatten_at, the smallest density of the train labels on that side
        tails = []
        for side in (y <= -c.flatten_at, y >= c.flatten_at):
            if bool(side.any()):
                tails.append(gaussian_kde(y[side], y, c.bandwidth).min())
            else:  # no label there: the table's end value (queries are clamped to the grid)
                tails.append(dens_grid[0] if len(tails) == 0 else dens_grid[-1])
        dens_tail = torch.stack(tails)
        dens_train = self._lookup(y, grid, dens_grid, dens_tail)  # the density of every train label
        d_max = dens_train.max()
        weights, tail_weights = [], []
        for alpha in (c.alpha_mse, c.alpha_pcc):
            def importance(d: torch.Tensor, alpha: float = alpha) -> torch.Tensor:
                if c.weighting == "mdi":
                    return mdi_importance(d / (d_max + c.density_eps), alpha)
                if c.weighting == "reciprocal":
                    return (d_max + c.density_eps) / d.clamp_min(1e-300)
                return denseweight_importance(d, dens_train.min(), d_max, c.dense_alpha, c.min_weight)

            mean = importance(dens_train).mean()
            if not float(mean) > 0:
                raise ValueError("every train label has zero importance (is the density constant?)")
            weights.append(importance(dens_grid) / mean)
            tail_weights.append(importance(dens_tail) / mean)
        self.grid.copy_(grid.float())
        self.grid_weights.copy_(torch.stack(weights).float())
        self.tail_weights.copy_(torch.stack(tail_weights).float())
        self.fitted.fill_(True)

    def _lookup(self, y: torch.Tensor, grid: torch.Tensor, table: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """Values of ``table`` (``[..., G]`` on ``grid``) at labels ``y``, linearly interpolated inside the grid;
        ``tail[..., 0]`` at ``y ≤ −flatten_at`` and ``tail[..., 1]`` at ``y ≥ flatten_at``."""
        c = self.config
        g = grid.numel()
        step = (grid[-1] - grid[0]) / (g - 1)
        if float(step) > 0:
            pos = ((y - grid[0]) / step).clamp(0, g - 1)
        else:
            pos = torch.zeros_like(y)
        i0 = pos.floor().long().clamp(max=g - 2)
        frac = (pos - i0).to(table.dtype)
        out = table[..., i0] * (1 - frac) + table[..., i0 + 1] * frac
        out = torch.where(y <= -c.flatten_at, tail[..., 0:1], out)
        return torch.where(y >= c.flatten_at, tail[..., 1:2], out)

    def weights(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(w_mse, w_pcc)`` at the labels ``target`` (``[B]`` or ``[B, 1]``), or ``None`` with
        ``weighting: none``; each has mean 1 over the train labels."""
        if self.config.weighting == "none":
            return None
        if not bool(self.fitted):
            raise RuntimeError("CISIR needs observe_train_split(train data) before its weights are known")
        w = self._lookup(target.reshape(-1).float(), self.grid, self.grid_weights, self.tail_weights)
        return w[0], w[1]

    # ---------------------------------------------------------------------------------- act/learn
    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Predictions ``ŷ`` ``[B, 1]`` in the task's units (a regressor: stochastic and deterministic agree)."""
        return self.net(obs.to(self.device, torch.float32))

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """One Adam step on the CISIR loss of ``batch`` (``obs``, ``target``), digest §5."""
        obs = batch["obs"].to(self.device, torch.float32)
        target = batch["target"].to(self.device, torch.float32).reshape(-1)
        w = self.weights(target)
        w_mse, w_pcc = (None, None) if w is None else w
        pred = self.net(obs).reshape(-1)
        loss, mse, pcc = cisir_loss(pred, target, w_mse, w_pcc, self.config.lam)
        assert_finite("cisir loss", loss)
        opt = self.optimizers["net"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.num_updates += 1
        with torch.no_grad():
            rare = (target.abs() >= self.config.rare_threshold).float()
            wm = torch.ones_like(target) if w_mse is None else w_mse
            share = (wm * rare).sum() / wm.sum()
        return {"loss": loss.detach(), "mse_w": mse.detach(), "pcc_w": pcc.detach(), "rare_weight_share": share}

