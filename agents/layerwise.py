"""Layer-wise training of a three-layer network (Wang, Nichani & Lee, ICLR 2024, "Learning hierarchical
polynomials with three-layer networks", arXiv 2311.13774, the layer-wise GD algorithm of §3; digest
``papers/one-step-tasks.md`` §10), with a two-layer end-to-end arm for comparison.

The network (paper §3, the three-layer architecture)::

    f(x) = Σ_i a_i σ₁(w_iᵀ σ₂(V x) + b_i) + c,

with ``V`` (``m₂ x d``, rows uniform on the unit sphere) random and **fixed**, ``W`` (``m₁ x m₂``) the
trained middle layer, ``σ₁ = ReLU`` and ``σ₂`` the inner random-feature activation (``agent.inner_activation``).
The default ``hermite`` is ``He_K(z)/√(K!)`` with ``K = agent.inner_degree = k``: for unit ``v``,
``He_K(vᵀx)`` lies in the degree-``K`` Hermite space, so the random features span exactly the degree-``k``
polynomials the paper's stage 1 projects on (``hermite_sum``, ``Σ_{j≤K} He_j/√(j!K)``, also keeps the lower
degrees, where for small d the even part of ``He_2(p)`` sits and lowers corr(feature, p): 0.65 against 0.84
at d = 8, n = 16 d³, measured; ReLU's kernel has no odd degree above 1 and cannot represent a cubic ``p``).

Layer-wise training (the paper's Algorithm 1, as recalled in the digest; the paper's text beyond the
abstract was not retrieved):

* **Stage 1** (``agent.stage1_updates`` updates): ``W`` starts at 0, ``a_i = ±agent.a_scale/m₁`` (balanced
  signs) and ``b_i = agent.stage1_bias`` are frozen, and ``W`` is trained on the squared loss with weight
  decay ``λ₁`` (``agent.weight_decay``, coupled L2 inside Adam, cosine learning-rate decay to 0), i.e. to
  convergence of the ridge-regularised problem — the digest's pilot found a single GD step too noisy
  (corr 0.4–0.6). ``a_scale`` and ``stage1_bias`` keep every hidden pre-activation positive (no ReLU ever
  cuts: measured 0 of 0.5M test pre-activations at d = 12), so the net stays in its linear regime around
  ``W = 0``, all rows of ``W`` stay copies ``±u`` (Adam's update of row ``i`` is ``sign(a_i)`` times a common one; with
  ``stage1_bias = 1`` the heavy tails of ``h`` cut some units, the rows drifted apart, down to correlation
  0.5, and stage 2 lost: relMSE 0.67 against 0.40) and the learned feature
  ``z(x) = Σ_i a_i σ₁'(b_i) w_iᵀσ₂(Vx)`` (:meth:`LayerwiseNet.feature`) is the ridge regression of ``h`` on the
  random features ``σ₂(Vx)``: with ``n ≈ d^k`` samples, the projection of ``h`` on the degree-``K``
  polynomials, ≈ ``p`` up to scale when ``g`` has a nonzero first Hermite coefficient (paper §4: "stage 1
  learns p"; for ``g = He_2`` and odd ``k`` that projection is 0).
* **Stage 2** (the next ``agent.stage2_updates`` updates): the biases are re-initialised at random,
  ``b_i = s_i u_i`` with ``u_i ~ U(-r, r)`` (``r = agent.bias_range``) and ``s_i`` the standard deviation of
  ``w_iᵀσ₂(Vx)`` on the training data, so the ReLU kinks cover the range of the learned feature; then
  the outer layer ``(a, c)`` is **ridge-fitted in closed form** on the features ``σ₁(Wσ₂(Vx) + b)``
  (``λ₂ = agent.ridge`` times the mean feature variance, intercept unpenalised). With the whole train split
  (:meth:`LayerwiseNet.observe_train_split`, which the ``contexts`` loop calls) the first stage-2 update fits
  on all of it and later updates change nothing; without it, each stage-2 update adds its batch to the
  accumulated normal equations and re-solves.

``agent.mode: end_to_end`` instead trains a standard two-layer ReLU net ``aᵀσ(Wx + b) + c`` of width
``agent.e2e_width`` (:func:`rl_energy.nets.mlp`) on the squared loss, every layer jointly by Adam, for the
same number of updates (cosine decay over ``stage1_updates + stage2_updates``).

A full-information ``contexts`` agent: it learns from ``obs`` and ``target`` and acts with predictions in
the task's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import torch
from tensordict import TensorDict
from torch import nn

from rl_energy.agent import Agent, assert_finite
from rl_energy.errors import require
from rl_energy.nets import mlp
from rl_energy.optim import adam, cosine_factor

MODES = ("layerwise", "end_to_end")
INNER_ACTIVATIONS = ("hermite", "hermite_sum", "relu", "tanh")
CHUNK = 8192
"""Rows per chunk when a whole split goes through the random features."""


@dataclass
class LayerwiseConfig:
    """Defaults: our CPU-sized version of the paper's setting (digest §10, "CPU experiment")."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 1_025 * 1_024, "batch_size": 1_024, "eval_every": 256 * 1_024,
        "log_every": 64 * 1_024, "checkpoint_every": 0,
    }
    """``train`` keys in contexts: ``total_steps = batch_size x (stage1_updates + stage2_updates)``."""

    mode: str = "layerwise"
    """``layerwise`` (the paper's three-layer net, trained stage by stage) or ``end_to_end`` (2-layer arm)."""
    width: int = 64
    """``m₁``: neurons of the trained hidden layer (and outer weights ``a``)."""
    inner_width: int = 0
    """``m₂``: fixed random features; 0 picks ``2 C(d + K - 1, K)``, twice the number of monomials of degree
    ``K`` in ``d`` variables (the dimension of the degree-``K`` Hermite space the ``hermite`` features span)."""
    inner_activation: str = "hermite"
    inner_degree: int = 3
    """``K``: Hermite degree of the ``hermite`` inner activation (``k`` of the target's ``p``), or the highest
    degree of ``hermite_sum``."""
    stage1_updates: int = 1_024
    stage1_lr: float = 3e-3
    weight_decay: float = 0.15
    """``λ₁``: L2 penalty on ``W`` in stage 1 (the paper's weight decay)."""
    a_scale: float = 10.0
    """``Σ_i |a_i|`` in stage 1 (keeps the hidden layer in its linear regime)."""
    stage1_bias: float = 4.0
    stage2_updates: int = 1
    bias_range: float = 3.0
    """Stage 2: ``b_i ~ s_i U(-r, r)``, ``s_i`` the std of neuron ``i``'s learned pre-activation."""
    ridge: float = 1e-2
    """``λ₂``, relative to the mean variance of the stage-2 features."""
    e2e_width: int = 512
    e2e_lr: float = 1e-3
    e2e_weight_decay: float = 0.0

    def validate(self) -> None:
        require(self, "mode", self.mode in MODES, f"one of {MODES}")
        require(self, "inner_activation", self.inner_activation in INNER_ACTIVATIONS, f"one of {INNER_ACTIVATIONS}")
        for key in ("width", "inner_degree", "stage1_updates", "stage2_updates", "e2e_width"):
            require(self, key, getattr(self, key) >= 1, ">= 1")
        require(self, "inner_width", self.inner_width >= 0, ">= 0 (0: automatic)")
        for key in ("stage1_lr", "a_scale", "stage1_bias", "bias_range", "ridge", "e2e_lr"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value > 0, "> 0")
        for key in ("weight_decay", "e2e_weight_decay"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value >= 0, ">= 0")
        require(self, "width", self.mode == "end_to_end" or self.width % 2 == 0, "even (balanced signs of a)")


def hermite_features(z: torch.Tensor, degree: int, cumulative: bool = False) -> torch.Tensor:
    """``He_K(z)/√(K!)`` (``K = degree``), or with ``cumulative`` ``Σ_{j=1..K} He_j(z)/√(j! K)``: unit variance
    for ``z ~ N(0, 1)``."""
    if degree == 3 and not cumulative:  # the default, in two fused passes: He_3(z) = z³ - 3z
        return z * (z * z - 3.0) * (1.0 / math.sqrt(6.0))
    prev, cur = torch.ones_like(z), z
    out = z.clone() if cumulative else z
    for j in range(1, degree):
        prev, cur = cur, z * cur - j * prev  # He_{j+1} = z He_j - j He_{j-1}
        if cumulative:
            out = out + cur / math.sqrt(math.factorial(j + 1))
    return out / math.sqrt(degree) if cumulative else cur / math.sqrt(math.factorial(degree))


class LayerwiseNet(Agent):
    """The paper's three-layer net trained layer-wise, or a two-layer net end to end (see the module)."""

    Config = LayerwiseConfig
    collection = "contexts"
    uses_labels = True
    metric_names = ("loss", "stage", "lr")

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        config: LayerwiseConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, config, device)
        c = config
        if self.action_dim != 1:
            raise ValueError(f"LayerwiseNet predicts one scalar; the action space has shape {action_space.shape}")
        self._train_split: TensorDict | None = None
        if c.mode == "end_to_end":
            self.net = mlp(self.obs_dim, [c.e2e_width], 1)
            self.to(self.device)
            self.optimizers = {"net": adam([{"params": list(self.net.parameters()),
                                             "weight_decay": c.e2e_weight_decay}], c.e2e_lr)}
            return
        m1 = c.width
        m2 = c.inner_width or 2 * math.comb(self.obs_dim + c.inner_degree - 1, c.inner_degree)
        v = torch.randn(m2, self.obs_dim)
        self.register_buffer("V", v / v.norm(dim=1, keepdim=True))
        self.W = nn.Parameter(torch.zeros(m1, m2))
        signs = torch.ones(m1)
        signs[m1 // 2:] = -1.0
        self.register_buffer("a1", signs[torch.randperm(m1)] * (c.a_scale / m1))  # stage 1's frozen a
        self.register_buffer("a", self.a1.clone())  # the outer layer (ridge-fitted in stage 2)
        self.register_buffer("b", torch.full((m1,), c.stage1_bias))
        self.register_buffer("c", torch.zeros(()))
        # stage 2's normal equations (float64 sums over the fitted samples) and whether they hold the full split
        self.register_buffer("gram", torch.zeros(m1 + 1, m1 + 1, dtype=torch.float64))
        self.register_buffer("moment", torch.zeros(m1 + 1, dtype=torch.float64))
        self.register_buffer("full_fit", torch.zeros((), dtype=torch.bool))
        self.to(self.device)
        self.optimizers = {"W": adam([{"params": [self.W], "weight_decay": c.weight_decay}], c.stage1_lr)}

    # ------------------------------------------------------------------------------- the network
    def inner(self, obs: torch.Tensor) -> torch.Tensor:
        """Fixed random features ``σ₂(Vx)`` ``[B, m₂]``."""
        z = obs.reshape(-1, self.obs_dim) @ self.V.T
        name = self.config.inner_activation
        if name in ("hermite", "hermite_sum"):
            return hermite_features(z, self.config.inner_degree, cumulative=name == "hermite_sum")
        if name == "relu":  # centred and scaled to unit variance under z ~ N(0, 1)
            return (torch.relu(z) - 1 / math.sqrt(2 * math.pi)) / math.sqrt(0.5 - 1 / (2 * math.pi))
        return torch.tanh(z)

    def hidden(self, obs: torch.Tensor) -> torch.Tensor:
        """Outer-layer features ``σ₁(W σ₂(Vx) + b)`` ``[B, m₁]``."""
        return torch.relu(self.inner(obs) @ self.W.T + self.b)

    def predict(self, obs: torch.Tensor) -> torch.Tensor:
        """``f(x)`` ``[B, 1]`` (with gradients)."""
        if self.config.mode == "end_to_end":
            return self.net(obs)
        return (self.hidden(obs) @ self.a + self.c).unsqueeze(-1)

    @torch.no_grad()
    def feature(self, obs: torch.Tensor) -> torch.Tensor:
        """The stage-1 feature ``z(x) = Σ_i a_i σ₁'(b_i) w_iᵀσ₂(Vx)`` ``[B]`` with stage 1's ``a`` and ``b``
        (``σ₁' = 1`` at ``b_i = stage1_bias > 0``): the linearisation of the stage-1 network at ``W = 0``,
        which stage 1 fits to ``h`` (paper §4: ≈ ``p`` up to scale)."""
        if self.config.mode == "end_to_end":
            raise ValueError("feature() is the layer-wise net's stage-1 feature; agent.mode is end_to_end")
        out = [(self.inner(chunk) @ self.W.T) @ self.a1 for chunk in obs.to(self.device).split(CHUNK)]
        return torch.cat(out)

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Predictions ``ŷ`` ``[B, 1]`` in the task's units (deterministic either way)."""
        obs = obs.to(self.device)
        return torch.cat([self.predict(chunk) for chunk in obs.split(CHUNK)]) if len(obs) else obs.new_zeros(0, 1)

    # ------------------------------------------------------------------------------- training
    def observe_train_split(self, data: TensorDict) -> None:
        """Keep the whole train split for stage 2's closed-form ridge fit (not saved in checkpoints)."""
        self._train_split = data

    def _lr(self, step: int, total: int, base: float) -> float:
        return base * cosine_factor(step, total)

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c = self.config
        obs = batch["obs"].to(self.device)
        y = batch["target"].to(self.device).reshape(-1, 1)
        step = self.num_updates
        self.num_updates += 1
        if c.mode == "end_to_end":
            lr = self._lr(step, c.stage1_updates + c.stage2_updates, c.e2e_lr)
            loss = self._adam_step("net", obs, y, lr)
            return self._metrics(loss, 0, lr)
        if step < c.stage1_updates:
            lr = self._lr(step, c.stage1_updates, c.stage1_lr)
            return self._metrics(self._adam_step("W", obs, y, lr), 1, lr)
        if step < c.stage1_updates + c.stage2_updates:
            self._stage2(obs, y, first=step == c.stage1_updates)
            stage = 2
        else:
            stage = 3  # both stages done: nothing left to train
        with torch.no_grad():
            loss = (self.predict(obs) - y).pow(2).mean()
        return self._metrics(loss, stage, 0.0)

    def _metrics(self, loss: torch.Tensor, stage: int, lr: float) -> dict[str, torch.Tensor]:
        return {"loss": loss.detach(), "stage": torch.tensor(float(stage)), "lr": torch.tensor(lr)}

    def _adam_step(self, name: str, obs: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        opt = self.optimizers[name]
        for group in opt.param_groups:
            group["lr"] = lr
        loss = (self.predict(obs) - y).pow(2).mean()
        assert_finite("loss", loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    @torch.no_grad()
    def _stage2(self, obs: torch.Tensor, y: torch.Tensor, first: bool) -> None:
        """Re-initialise ``b`` (first stage-2 update), add data to the normal equations, ridge-solve ``(a, c)``."""
        c = self.config
        split = self._train_split
        if first:
            data_obs = split["obs"].to(self.device) if split is not None else obs
            pre_std = torch.cat([self.inner(ch) @ self.W.T for ch in data_obs.split(CHUNK)]).std(0)
            u = (torch.rand(c.width, device=self.device) * 2.0 - 1.0) * c.bias_range
            self.b.copy_(pre_std * u)
            self.gram.zero_()
            self.moment.zero_()
            if split is not None:
                self.full_fit.fill_(True)
                for ch_x, ch_y in zip(split["obs"].split(CHUNK), split["target"].split(CHUNK), strict=True):
                    self._accumulate(ch_x.to(self.device), ch_y.to(self.device).reshape(-1, 1))
        if not bool(self.full_fit):
            self._accumulate(obs, y)
        elif not first:
            return
        self._solve()

    def _accumulate(self, obs: torch.Tensor, y: torch.Tensor) -> None:
        feats = torch.cat([self.hidden(obs), torch.ones(len(obs), 1, device=self.device)], 1).double()
        self.gram += feats.T @ feats
        self.moment += feats.T @ y.double().reshape(-1)

    def _solve(self) -> None:
        """Ridge regression of ``y`` on the features with an unpenalised intercept, from the sums."""
        m1 = self.config.width
        n = float(self.gram[-1, -1])
        mean_f = self.gram[-1, :m1] / n
        mean_y = self.moment[-1] / n
        cov = self.gram[:m1, :m1] / n - torch.outer(mean_f, mean_f)
        cross = self.moment[:m1] / n - mean_f * mean_y
        lam = self.config.ridge * float(torch.diagonal(cov).mean().clamp(min=1e-12))
        a = torch.linalg.solve(cov + lam * torch.eye(m1, dtype=cov.dtype, device=cov.device), cross)
        self.a.copy_(a.float())
        self.c.copy_((mean_y - mean_f @ a).float())
