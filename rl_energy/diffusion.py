"""Energy-parameterised diffusion models distilled from a score teacher, and Feynman–Kac SMC over the
diffusion steps for composition (products of models) and low-temperature sampling.

Thornton, Béthune, Zhang, Bradley, Nakkiran & Zhai, "Composition and control with distilled energy diffusion
models and sequential Monte Carlo", AISTATS 2025 (PMLR 258:3259–3267; arXiv 2502.12786; digest
``papers/one-step-tasks.md`` §7). No official code was found; the equations below are those of the digest.

* A diffusion model is a time-indexed family of EBMs: at noise level ``t`` the marginal ``p_t`` has score
  ``s_t = ∇ log p_t = -∇E_t``.
* **Distillation** (digest §7, "Distillation loss"): a scalar energy ``E_θ(x, t)`` is fitted to a pretrained
  score teacher by ``min_θ E_t λ(t) E_{x_t} ‖∇ₓE_θ(x_t, t) + s_teacher(x_t, t)‖²`` (:func:`distil_energy`; by
  default the levels are drawn with probability ∝ ``1/σ_t``, i.e. ``λ(t) ∝ 1/σ_t`` under uniform levels, which
  halved the energies' errors at the low-noise levels that fix the composed mode weights).
* **Sampling** is a Feynman–Kac model over the reverse diffusion (digest §7, "SMC"; :func:`energy_smc`):
  particles move by a reverse (DDPM) step ``q(x_{t-1}|x_t)`` driven by the combined score ``Σ_k s^k_t`` (a
  product of models) or the scaled score ``β s_t`` (low temperature); the intermediate targets are
  ``γ_t = exp(-Σ_k E^k_t)`` or ``exp(-β E_t)``; the incremental weight is
  ``γ_{t-1}(x_{t-1}) L(x_t|x_{t-1}) / (γ_t(x_t) q(x_{t-1}|x_t))`` with ``L`` the forward-noising kernel
  (:func:`fk_log_weight`); particles are resampled when the effective sample size is low. The final target
  ``γ_1`` is the exact product ``Π_k p^k_1`` (or ``p_1^β``) when the energies are exact, whatever the
  intermediate ``γ_t`` are (they are *not* the noised product): that is what score-only composition lacks.
  Because the energy terms telescope, the composed mode weights are set by the *lowest-level* energies: their
  relative offsets between separated modes, which gradient matching pins only through the low-density gaps,
  are the accuracy that matters (``last_weighted_level`` stops the weighting at a higher, better-fitted level).

Ground truths in closed form: :class:`GaussianMixture` (log-density, score, sampling, its noised marginal
``N(√ᾱ μ, ᾱΣ + (1-ᾱ)I)`` per component and the product of two mixtures, again a mixture) and
:class:`GridDensity` (``p^β`` of a 2-D density by grid quadrature: ``p^β`` of a mixture is not a mixture).
Distances: :func:`sliced_w2` (:class:`SlicedW2`), :func:`mmd2`, :func:`mode_tv`.

Conventions. Levels ``t = 0..T`` with ``ᾱ_0 = 1`` (data), forward kernel
``L(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t I)``; networks are defined for ``t ≥ 1``; the reverse step is
``x_{t-1} = (x_t + β_t s_t(x_t))/√α_t + √β_t ξ`` (see :data:`PROPOSALS` for the cooled variant). Samplers return
the level-1 particles (a model's distribution is its lowest level ``p_1 = p * N(0, σ_1²)``): the usual noise-free
last DDPM step is left out because, driven by a summed or β-scaled score, it denoises every factor and
over-shrinks the modes. Errors: bad arguments raise :class:`~rl_energy.errors.ConfigError` naming
the argument; a non-finite energy or score during sampling raises :class:`~rl_energy.samplers.SamplerError`
naming the sampler and the level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rl_energy.errors import ConfigError
from rl_energy.nets import mlp
from rl_energy.optim import adam, cosine_factor
from rl_energy.samplers import (
    SamplerError,
    SampleResult,
    effective_sample_size,
    energy_and_grad,
    log_mean_exp,
    mala_step,
    systematic_resample,
)

LevelFn = Callable[[torch.Tensor, int], torch.Tensor]
"""``(x [N, d], t) -> [N]`` (an energy) or ``[N, d]`` (a score) at diffusion level ``t``."""


# ------------------------------------------------------------------------------------------ checks
def _count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"'{name}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"'{name}' must be a positive finite number, got {value!r}")
    return float(value)


def _finite_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not torch.is_floating_point(value):
        raise ConfigError(f"'{name}' must be a floating-point tensor, got {type(value).__name__}")
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(f"'{name}' holds NaN or inf")
    return value


def _check_finite(sampler: str, level: int, quantity: str, v: torch.Tensor) -> None:
    bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(1)
    if bool(bad.any()):
        raise SamplerError(sampler, level, quantity, int(bad.sum()), v.shape[0])


# ---------------------------------------------------------------------------------------- schedule
class VPSchedule:
    """Discrete variance-preserving schedule (DDPM, Ho et al. 2020): ``β_t`` linear from ``beta_min`` to
    ``beta_max`` for ``t = 1..T``, ``α_t = 1 - β_t``, ``ᾱ_t = Π_{s≤t} α_s`` (``ᾱ_0 = 1``), ``σ_t = √(1-ᾱ_t)``.

    All tables are float64 tensors of length ``T + 1`` indexed by the level. The defaults (T = 100,
    ``β ∈ [1e-3, 0.2]``) give ``σ_1 ≈ 0.03`` and ``ᾱ_T ≈ 4e-5``: the last level is N(0, I) to four decimals for
    data of scale 5. (The reproduction uses ``β_min = 0.01``, ``σ_1 = 0.1``: see its docstring.)
    """

    def __init__(self, n_steps: int = 100, beta_min: float = 1e-3, beta_max: float = 0.2) -> None:
        self.n_steps = _count("n_steps", n_steps, 2)
        _positive("beta_min", beta_min)
        _positive("beta_max", beta_max)
        if not beta_min <= beta_max < 1:
            raise ConfigError(f"'beta_max' must be in [beta_min, 1), got beta_min={beta_min!r}, beta_max={beta_max!r}")
        betas = torch.zeros(n_steps + 1, dtype=torch.float64)
        betas[1:] = torch.linspace(beta_min, beta_max, n_steps, dtype=torch.float64)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        self.sigmas = (1.0 - self.alpha_bars).sqrt()

    def level(self, t: int) -> int:
        """``t`` checked to be a network level ``1..T``."""
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= self.n_steps:
            raise ConfigError(f"diffusion level 't' must be an integer in [1, {self.n_steps}], got {t!r}")
        return t

    def noise(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t = √ᾱ_t x_0 + σ_t ε`` for per-sample levels ``t [N]``; returns ``(x_t, ε)``."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        ab = self.alpha_bars.to(x0)[t].unsqueeze(-1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, eps

    def reverse_mean(self, x: torch.Tensor, score: torch.Tensor, t: int) -> torch.Tensor:
        """Mean of the DDPM reverse step ``t → t-1``: ``(x_t + β_t s_t(x_t)) / √α_t``."""
        return (x + float(self.betas[t]) * score) / math.sqrt(float(self.alphas[t]))


# ------------------------------------------------------------------------------------ ground truths
class GaussianMixture:
    """``p(x) = Σ_k w_k N(x; μ_k, Σ_k)`` with full covariances, evaluated in float64.

    ``weights [K]`` (normalised here), ``means [K, d]``, ``covs [K, d, d]`` (symmetric positive definite).
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> None:
        w = _finite_tensor("weights", torch.as_tensor(weights, dtype=torch.float64))
        mu = _finite_tensor("means", torch.as_tensor(means, dtype=torch.float64))
        cov = _finite_tensor("covs", torch.as_tensor(covs, dtype=torch.float64))
        if mu.dim() != 2 or w.shape != mu.shape[:1] or cov.shape != (*mu.shape, mu.shape[1]):
            raise ConfigError(f"mixture shapes must be weights [K], means [K, d], covs [K, d, d], got "
                              f"{tuple(w.shape)}, {tuple(mu.shape)}, {tuple(cov.shape)}")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ConfigError("mixture 'weights' must be non-negative with a positive sum")
        chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(-1, -2)))
        if bool((info != 0).any()):
            raise ConfigError("mixture 'covs' must be symmetric positive definite")
        self.weights, self.means, self.covs, self.chol = w / w.sum(), mu, cov, chol
        self.precisions = torch.cholesky_inverse(chol)
        self.log_dets = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    @classmethod
    def isotropic(cls, weights: Sequence[float] | torch.Tensor, means: Sequence[Sequence[float]] | torch.Tensor,
                  stds: float | Sequence[float] | torch.Tensor) -> GaussianMixture:
        """Components ``N(μ_k, s_k² I)``."""
        mu = torch.as_tensor(means, dtype=torch.float64)
        s = torch.as_tensor(stds, dtype=torch.float64).expand(mu.shape[0])
        if bool((s <= 0).any()) or not bool(torch.isfinite(s).all()):
            raise ConfigError(f"mixture 'stds' must be positive and finite, got {s.tolist()}")
        eye = torch.eye(mu.shape[1], dtype=torch.float64)
        return cls(torch.as_tensor(weights, dtype=torch.float64), mu, s[:, None, None] ** 2 * eye)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log w_k + log N(x; μ_k, Σ_k)``, shape ``[N, K]`` (float64)."""
        diff = x.double()[:, None, :] - self.means  # [N, K, d]
        z = torch.linalg.solve_triangular(self.chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
        maha = (z * z).sum(-1)
        return self.weights.log() - 0.5 * (maha + self.log_dets + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` ``[N]`` in the dtype of ``x``."""
        return torch.logsumexp(self.component_log_probs(x), 1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities ``[N, K]`` (float64)."""
        return torch.softmax(self.component_log_probs(x), 1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the most responsible component ``[N]`` (the "mode" a point belongs to)."""
        return self.component_log_probs(x).argmax(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``∇ log p(x) = Σ_k r_k(x) Σ_k⁻¹ (μ_k - x)`` in closed form, ``[N, d]`` in the dtype of ``x``."""
        diff = self.means - x.double()[:, None, :]
        comp = torch.einsum("kij,nkj->nki", self.precisions, diff)
        return (self.responsibilities(x).unsqueeze(-1) * comp).sum(1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, float32 ``[n, d]``."""
        _count("n", n)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, 1, generator=generator, dtype=torch.float64)
        return (self.means[idx] + (self.chol[idx] @ z).squeeze(-1)).float()

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of ``√ᾱ x + √(1-ᾱ) ε`` for ``x ~ p``: components ``N(√ᾱ μ_k, ᾱ Σ_k + (1-ᾱ) I)``."""
        if not 0 < alpha_bar <= 1:
            raise ConfigError(f"'alpha_bar' must be in (0, 1], got {alpha_bar!r}")
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, math.sqrt(alpha_bar) * self.means,
                               alpha_bar * self.covs + (1 - alpha_bar) * eye)

    def noised_score(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Score of :meth:`noised` with a per-point ``alpha_bar [N]`` (batched; ``[N, d]`` in the dtype of ``x``)."""
        ab = alpha_bar.double().reshape(-1, 1, 1, 1)  # [N, 1, 1, 1]
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov = ab * self.covs + (1 - ab) * eye  # [N, K, d, d]
        diff = (ab.squeeze(-1).sqrt() * self.means - x.double()[:, None, :]).unsqueeze(-1)  # [N, K, d, 1]
        chol = torch.linalg.cholesky(cov)
        sol = torch.cholesky_solve(diff, chol).squeeze(-1)  # Σ⁻¹ (μ - x)
        log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_comp = self.weights.log() - 0.5 * ((diff.squeeze(-1) * sol).sum(-1) + log_det)
        return (torch.softmax(log_comp, 1).unsqueeze(-1) * sol).sum(1).to(x.dtype)

    def product(self, other: GaussianMixture, min_weight: float = 0.0) -> GaussianMixture:
        """The normalised product ``p·q / ∫p q``, a mixture over pairs ``(i, j)``:
        ``C = (Σ_i⁻¹ + Λ_j⁻¹)⁻¹``, ``m = C(Σ_i⁻¹ μ_i + Λ_j⁻¹ ν_j)``, weight ∝ ``w_i v_j N(μ_i; ν_j, Σ_i + Λ_j)``.
        Pairs of relative weight below ``min_weight`` are dropped."""
        if other.dim != self.dim:
            raise ConfigError(f"cannot multiply mixtures of dimensions {self.dim} and {other.dim}")
        p_i, p_j = self.precisions[:, None], other.precisions[None, :]
        cov = torch.linalg.inv(p_i + p_j)  # [K, L, d, d]
        rhs = (p_i @ self.means[:, None, :, None]) + (p_j @ other.means[None, :, :, None])
        mean = (cov @ rhs).squeeze(-1)
        s = self.covs[:, None] + other.covs[None, :]
        diff = (self.means[:, None] - other.means[None, :]).unsqueeze(-1)
        maha = (diff.transpose(-1, -2) @ torch.linalg.solve(s, diff)).squeeze(-1).squeeze(-1)
        log_w = (self.weights.log()[:, None] + other.weights.log()[None, :]
                 - 0.5 * (maha + torch.logdet(s) + self.dim * math.log(2 * math.pi)))
        w = torch.softmax(log_w.reshape(-1), 0)
        keep = w >= min_weight * float(w.max())
        d = self.dim
        return GaussianMixture(w[keep], mean.reshape(-1, d)[keep], cov.reshape(-1, d, d)[keep])

    def log_normaliser_of_product(self, other: GaussianMixture) -> float:
        """``log ∫ p(x) q(x) dx`` (the mass the normalised :meth:`product` divides by)."""
        s = self.covs[:, None] + other.covs[None, :]
        diff = (self.means[:, None] - other.means[None, :]).unsqueeze(-1)
        maha = (diff.transpose(-1, -2) @ torch.linalg.solve(s, diff)).squeeze(-1).squeeze(-1)
        log_w = (self.weights.log()[:, None] + other.weights.log()[None, :]
                 - 0.5 * (maha + torch.logdet(s) + self.dim * math.log(2 * math.pi)))
        return float(torch.logsumexp(log_w.reshape(-1), 0))


class GridDensity:
    """A 2-D density ``∝ exp(log_density)`` tabulated on a regular grid over ``[-half_width, half_width]²``
    (midpoint quadrature): the ground truth of ``p^β`` (digest §7, "ground truth by grid quadrature").

    Sampling draws a cell by its mass and a uniform point inside it (exact for the piecewise-constant density;
    the discretisation error is below 1e-3 in SW2 for cells of width 0.02 on the default targets).
    """

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor], half_width: float = 6.0,
                 n_cells: int = 600) -> None:
        self.half_width = _positive("half_width", half_width)
        self.n_cells = _count("n_cells", n_cells, 2)
        self.cell = 2 * self.half_width / n_cells
        axis = -self.half_width + self.cell * (torch.arange(n_cells, dtype=torch.float64) + 0.5)
        gx, gy = torch.meshgrid(axis, axis, indexing="ij")
        self.centres = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
        log_p = log_density(self.centres).double()
        if not bool(torch.isfinite(log_p).all()):
            raise ConfigError("GridDensity: 'log_density' returned NaN or inf on the grid")
        self.log_z = float(torch.logsumexp(log_p, 0)) + 2 * math.log(self.cell)
        self.probs = torch.softmax(log_p, 0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples, float32 ``[n, 2]``."""
        _count("n", n)
        idx = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * self.cell
        return (self.centres[idx] + jitter).float()

    def masses(self, assign: Callable[[torch.Tensor], torch.Tensor], n_modes: int) -> torch.Tensor:
        """Mass of each mode ``[n_modes]`` when every cell belongs to mode ``assign(centre)``."""
        return torch.zeros(n_modes, dtype=torch.float64).index_add_(0, assign(self.centres), self.probs)


# ---------------------------------------------------------------------------------------- networks
class TimeEmbedding(nn.Module):
    """Sinusoidal features ``[sin(f_k τ), cos(f_k τ)]`` of the noise level ``τ = σ_t`` (a table over the levels),
    ``f_k`` geometric in ``[1, max_freq]``.

    Embedding ``σ_t`` rather than ``t/T`` keeps nearby low-noise levels (whose marginals barely differ when the
    data has non-zero width) close in feature space, and a moderate ``max_freq`` keeps the network smooth in
    the level: with ``t/T`` and frequencies up to 200 the distilled energies jittered from level to level."""

    def __init__(self, schedule: VPSchedule, n_freq: int = 16, max_freq: float = 30.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.logspace(0, math.log10(max_freq), n_freq))
        self.register_buffer("tau", schedule.sigmas.float())
        self.dim = 2 * n_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = self.tau[t].unsqueeze(-1) * self.freqs
        return torch.cat([a.sin(), a.cos()], -1)


def _levels(t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.to(device=x.device, dtype=torch.long).expand(x.shape[0])
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


class DenoiserNet(nn.Module):
    """The score teacher: an ε-prediction MLP ``ε_φ(x_t, t)`` (:func:`rl_energy.nets.mlp` on ``[x, emb(t)]``),
    score ``s_φ(x, t) = -ε_φ(x, t) / σ_t`` (Ho et al. 2020; denoising score matching)."""

    def __init__(self, schedule: VPSchedule, dim: int = 2, hidden: Sequence[int] = (128, 128, 128),
                 n_freq: int = 16) -> None:
        super().__init__()
        self.schedule = schedule
        self.embed = TimeEmbedding(schedule, n_freq)
        self.net = mlp(dim + self.embed.dim, list(hidden), dim, activation=nn.SiLU)
        self.register_buffer("sigmas", schedule.sigmas.float())

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        lv = _levels(t, x)
        return self.net(torch.cat([x, self.embed(lv)], -1))

    def score(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        lv = _levels(t, x)
        with torch.no_grad():
            return -self.forward(x, lv) / self.sigmas[lv].unsqueeze(-1)


class EnergyNet(nn.Module):
    """The distilled energy ``E_θ(x, t) = ½‖x‖² + h_θ(x, t)``, ``h_θ`` a scalar MLP on ``[x, emb(t)]``.

    The parameterisation is ours (the digest gives only the loss): ``½‖x‖²`` is the exact energy of the
    N(0, I) limit at ``t = T``. We tried ``h_θ / σ_t`` (the ``1/σ_t`` scale of an ε-prediction score) first: it
    amplified the network's errors at the lowest levels tenfold, and data of non-zero width has a bounded score
    there anyway. A per-level constant is free (gradient matching cannot fix it) and cancels in the SMC
    weights, which only compare particles at the same level.
    """

    def __init__(self, schedule: VPSchedule, dim: int = 2, hidden: Sequence[int] = (128, 128, 128),
                 n_freq: int = 16) -> None:
        super().__init__()
        self.schedule = schedule
        self.embed = TimeEmbedding(schedule, n_freq)
        self.net = mlp(dim + self.embed.dim, list(hidden), 1, activation=nn.SiLU)

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        lv = _levels(t, x)
        h = self.net(torch.cat([x, self.embed(lv)], -1)).squeeze(-1)
        return 0.5 * (x * x).sum(-1) + h

    def grad(self, x: torch.Tensor, t: int | torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``∇ₓE_θ(x, t)`` ``[N, d]``."""
        with torch.enable_grad():
            x = x if create_graph else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.forward(x, t).sum(), x, create_graph=create_graph)
        return g

    def score(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return -self.grad(x, t).detach()


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Cosine decay from ``lr`` to ``lr / 20``."""
    return lr * cosine_factor(step, steps, floor=0.05)


def _stable_target(xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, data: torch.Tensor, reference_size: int,
                   schedule: VPSchedule, generator: torch.Generator | None) -> torch.Tensor:
    """The stable-target-field regression target (Xu et al., ICLR 2023): ``(x_t - √ᾱ x̂_0)/σ_t`` with ``x̂_0`` the
    posterior mean of ``x_0`` given ``x_t`` over a reference set = the batch's own ``x_0`` plus ``reference_size``
    random training points (self-normalised Gaussian weights ``N(x_t; √ᾱ x_0^j, σ_t² I)``)."""
    extra = data[torch.randint(0, data.shape[0], (reference_size,), generator=generator)]
    ref = torch.cat([x0, extra])  # [R, d]
    ab = schedule.alpha_bars.to(xt)[t].unsqueeze(-1)
    sig = (1 - ab).sqrt()
    # log N(x_t; √ᾱ x_0^j, σ² I) up to a per-row constant: (√ᾱ x_t·x_0^j - ᾱ|x_0^j|²/2) / σ²
    logw = (ab.sqrt() * (xt @ ref.T) - 0.5 * ab * (ref * ref).sum(1)) / (sig * sig)  # [B, R]
    w = torch.softmax(logw, 1)
    x0_hat = w @ ref
    return (xt - ab.sqrt() * x0_hat) / sig


def train_denoiser(data: torch.Tensor, schedule: VPSchedule, steps: int = 4000, batch_size: int = 512,
                   lr: float = 2e-3, hidden: Sequence[int] = (128, 128, 128), reference_size: int = 0,
                   generator: torch.Generator | None = None) -> DenoiserNet:
    """Train the teacher by denoising score matching, ``min E_{t, x_0, ε} ‖ε_φ(√ᾱ_t x_0 + σ_t ε, t) - ε‖²``
    with ``t`` uniform on ``1..T`` and ``x_0`` from the training set ``data [n, d]`` (Ho et al. 2020, Eq. 14).

    With ``reference_size > 0`` the target ``ε`` is replaced by its stable-target-field estimate (lower variance,
    same minimiser as the batch grows; Xu et al., ICLR 2023), see :func:`_stable_target`."""
    data = _finite_tensor("data", data)
    if data.dim() != 2:
        raise ConfigError(f"'data' must have shape [n, d], got {tuple(data.shape)}")
    _count("steps", steps)
    _count("batch_size", batch_size)
    _count("reference_size", reference_size, 0)
    _positive("lr", lr)
    net = DenoiserNet(schedule, data.shape[1], hidden)
    opt = adam(net.parameters(), lr)
    for k in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(k, steps, lr)
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]
        t = torch.randint(1, schedule.n_steps + 1, (batch_size,), generator=generator)
        xt, eps = schedule.noise(x0, t, generator)
        if reference_size:
            eps = _stable_target(xt, t, x0, data, reference_size, schedule, generator)
        loss = ((net(xt, t) - eps) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def distil_energy(teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: torch.Tensor,
                  schedule: VPSchedule, steps: int = 4000, batch_size: int = 512, lr: float = 2e-3,
                  hidden: Sequence[int] = (128, 128, 128), weighting: str = "uniform",
                  level_sampling: str = "inv_sigma", generator: torch.Generator | None = None) -> EnergyNet:
    """Distil a score teacher into an energy (digest §7, "Distillation loss"):
    ``min_θ E_t λ(t) E_{x_t} ‖∇ₓE_θ(x_t, t) + s_teacher(x_t, t)‖²`` with ``λ(t) = σ_t²``, ``t`` uniform on
    ``1..T`` and ``x_t`` the training set ``data`` noised by the forward process.

    ``teacher(x [B, d], t [B]) -> s [B, d]`` is the teacher's score (a trained :class:`DenoiserNet` ``.score``
    or an analytic mixture score); it is evaluated without gradients."""
    data = _finite_tensor("data", data)
    if data.dim() != 2:
        raise ConfigError(f"'data' must have shape [n, d], got {tuple(data.shape)}")
    _count("steps", steps)
    _count("batch_size", batch_size)
    _positive("lr", lr)
    if weighting not in ("uniform", "sigma2"):
        raise ConfigError(f"'weighting' must be 'uniform' or 'sigma2', got {weighting!r}")
    if level_sampling not in ("uniform", "inv_sigma"):
        raise ConfigError(f"'level_sampling' must be 'uniform' or 'inv_sigma', got {level_sampling!r}")
    level_p = torch.ones(schedule.n_steps) if level_sampling == "uniform" else 1 / schedule.sigmas[1:].float()
    net = EnergyNet(schedule, data.shape[1], hidden)
    opt = adam(net.parameters(), lr)
    sig = schedule.sigmas.float()
    for k in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(k, steps, lr)
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]
        t = torch.multinomial(level_p, batch_size, replacement=True, generator=generator) + 1
        xt, _ = schedule.noise(x0, t, generator)
        with torch.no_grad():
            target = teacher(xt, t)
        xt.requires_grad_(True)
        grad = net.grad(xt, t, create_graph=True)
        w = sig[t].unsqueeze(-1) if weighting == "sigma2" else 1.0
        loss = ((w * (grad + target)) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


# ---------------------------------------------------------------------------- models as EBM sequences
@dataclass
class LevelModel:
    """A diffusion model seen as a sequence of EBMs: ``energy(x, t) = E_t(x)`` (``None`` for a score-only
    model) and ``score(x, t)`` (the proposal's drift). ``precision`` is the coefficient of ``½‖x‖²`` in
    ``E_T`` (1 for one model, the number of factors for a product, ``β`` for ``p^β``): the initial particles
    are drawn from ``N(0, I / precision)``."""

    score: LevelFn
    energy: LevelFn | None = None
    precision: float = 1.0


def analytic_model(mixture: GaussianMixture, schedule: VPSchedule) -> LevelModel:
    """Exact energies ``-log p_t`` and scores of a mixture's noised marginals (the oracle)."""
    cache: dict[int, GaussianMixture] = {}

    def at(t: int) -> GaussianMixture:
        if t not in cache:
            schedule.level(t)
            cache[t] = mixture.noised(float(schedule.alpha_bars[t]))
        return cache[t]

    return LevelModel(score=lambda x, t: at(t).score(x), energy=lambda x, t: -at(t).log_prob(x))


def analytic_teacher(mixture: GaussianMixture, schedule: VPSchedule,
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact score of a mixture's noised marginals at per-point levels, ``(x [B, d], t [B]) -> [B, d]``: the
    digest's CPU experiment distils analytic teachers (§7, "CPU experiment")."""
    return lambda x, t: mixture.noised_score(x, schedule.alpha_bars[t])


def learned_model(energy: EnergyNet | None = None, teacher: DenoiserNet | None = None) -> LevelModel:
    """A trained model: the proposal uses the teacher's score when given (else ``-∇E_θ``); the energy (if
    any) gives the SMC potentials."""
    if energy is None and teacher is None:
        raise ConfigError("learned_model needs an 'energy' or a 'teacher'")
    source = teacher if teacher is not None else energy
    assert source is not None

    def score(x: torch.Tensor, t: int) -> torch.Tensor:
        return source.score(x, t)

    if energy is None:
        return LevelModel(score=score)
    net = energy

    def e(x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            return net(x, t)

    return LevelModel(score=score, energy=e)


def product_model(models: Sequence[LevelModel]) -> LevelModel:
    """``Π_k p^k``: energies and scores add (digest §7, target ``exp(-E¹ - E²)``)."""
    if len(models) < 1:
        raise ConfigError("'models' must hold at least one model")
    models = list(models)

    def score(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.stack([m.score(x, t) for m in models]).sum(0)

    def energy(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.stack([m.energy(x, t) for m in models]).sum(0)  # type: ignore[misc]

    has_energy = all(m.energy is not None for m in models)
    return LevelModel(score=score, energy=energy if has_energy else None,
                      precision=sum(m.precision for m in models))


def tempered_model(model: LevelModel, beta: float) -> LevelModel:
    """``p^β``: energy and score scaled by ``β`` (digest §7, target ``exp(-βE)``)."""
    b = _positive("beta", beta)
    base_energy = model.energy

    def score(x: torch.Tensor, t: int) -> torch.Tensor:
        return b * model.score(x, t)

    def energy(x: torch.Tensor, t: int) -> torch.Tensor:
        assert base_energy is not None
        return b * base_energy(x, t)

    return LevelModel(score=score, energy=None if base_energy is None else energy, precision=b * model.precision)


# ---------------------------------------------------------------------------------------- samplers
def _init_std(model: LevelModel, init_std: float | None) -> float:
    return 1.0 / math.sqrt(model.precision) if init_std is None else _positive("init_std", init_std)


PROPOSALS = ("ddpm", "cooled")
"""Reverse steps ``t → t-1`` for a model of ``precision`` κ with combined score ``s`` (the forward kernel ``L``
of the weights uses the same variance): ``ddpm``: mean ``(x + β_t s)/√α_t``, variance ``β_t`` (the standard
step driven by the combined/scaled score); ``cooled``: mean ``(x + (β_t/κ) s)/√α_t``, variance ``β_t/κ``, the
DDPM step of the forward process run at temperature ``1/κ`` (noise ``β_t/κ``), whose marginals are exactly the
``γ_t`` of ``p^β`` for a Gaussian ``p`` (and of a product of Gaussians of equal covariance). ``cooled`` is ours:
with exact energies it kept the ESS high where ``ddpm`` (whose variance is too large for ``γ_t``) collapsed."""


def _proposal(model: LevelModel, schedule: VPSchedule, x: torch.Tensor, t: int, kind: str,
              sampler: str) -> tuple[torch.Tensor, float]:
    s = model.score(x, t)
    _check_finite(sampler, t, "score", s)
    var = float(schedule.betas[t]) / (model.precision if kind == "cooled" else 1.0)
    return (x + var * s) / math.sqrt(float(schedule.alphas[t])), var


def _check_proposal(proposal: str) -> str:
    if proposal not in PROPOSALS:
        raise ConfigError(f"'proposal' must be one of {PROPOSALS}, got {proposal!r}")
    return proposal


def reverse_diffusion(model: LevelModel, schedule: VPSchedule, n_particles: int, dim: int = 2,
                      init_std: float | None = None, proposal: str = "ddpm",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Score-only sampling: ancestral DDPM steps driven by ``model.score`` from ``x_T ~ N(0, init_std² I)``
    (for a product or a tempered model this is the naive score-sum / score-scaling composition)."""
    _count("n_particles", n_particles)
    _count("dim", dim)
    _check_proposal(proposal)
    std = _init_std(model, init_std)
    x = std * torch.randn(n_particles, dim, generator=generator)
    for t in range(schedule.n_steps, 1, -1):
        mean, var = _proposal(model, schedule, x, t, proposal, "reverse_diffusion")
        x = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator)
    return x


def _gauss_log_density(x: torch.Tensor, mean: torch.Tensor, var: float | torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, var I)`` per row, float64 (``var`` a number or ``[N]``)."""
    d = x.shape[-1]
    v = torch.as_tensor(var, dtype=torch.float64)
    sq = ((x.double() - mean.double()) ** 2).sum(-1)
    return -0.5 * (sq / v + d * torch.log(2 * math.pi * v))


def fk_log_weight(energy_prev: torch.Tensor, energy_t: torch.Tensor, x_prev: torch.Tensor, x_t: torch.Tensor,
                  alpha_t: float, forward_var: float, proposal_mean: torch.Tensor,
                  proposal_var: float | torch.Tensor) -> torch.Tensor:
    """The Feynman–Kac incremental log-weight of the move ``x_t → x_{t-1}`` (digest §7, "SMC"):

    ``log [γ_{t-1}(x_{t-1}) L(x_t|x_{t-1}) / (γ_t(x_t) q(x_{t-1}|x_t))]`` with ``γ = exp(-E)``, the forward
    kernel ``L(x_t|x_{t-1}) = N(x_t; √α_t x_{t-1}, β_t I)`` and the Gaussian proposal
    ``q = N(proposal_mean, proposal_var I)``. Returns float64 ``[N]``."""
    log_l = _gauss_log_density(x_t, math.sqrt(alpha_t) * x_prev, forward_var)
    log_q = _gauss_log_density(x_prev, proposal_mean, proposal_var)
    return -energy_prev.double() + energy_t.double() + log_l - log_q


def energy_smc(model: LevelModel, schedule: VPSchedule, n_particles: int, dim: int = 2,
               resample_threshold: float = 0.5, init_std: float | None = None, n_mala: int = 0,
               mala_scale: float = 0.1, proposal: str = "cooled", last_weighted_level: int = 1,
               generator: torch.Generator | None = None) -> SampleResult:
    """Feynman–Kac SMC over the reverse diffusion (digest §7, "SMC"), targets ``γ_t = exp(-model.energy(·, t))``.

    ``x_T ~ N(0, init_std² I)`` weighted by ``γ_T / N(0, init_std² I)``; for ``t = T..2`` a DDPM step driven by
    ``model.score`` proposes ``x_{t-1}``, the weight is multiplied by :func:`fk_log_weight`, and the particles
    are resampled (systematic) when the ESS falls below ``resample_threshold · N``; optionally ``n_mala``
    MALA steps leave ``γ_{t-1}`` invariant (step ``mala_scale · σ_{t-1}² / precision``). At
    ``last_weighted_level`` (default 1) the particles are resampled by their final weights; below it they take
    plain (unweighted) reverse steps down to level 1, which are returned.

    Returns :class:`~rl_energy.samplers.SampleResult` with equal-weight ``samples [N, dim]``, ``ess`` (the
    final weights' ESS as a fraction of N, before the last resampling), ``log_z`` (estimate of
    ``log ∫γ`` at the last weighted level, up to the energies' free per-level constants) and ``info`` =
    ``ess_per_level`` (ESS/N after each weighted step, before any resampling), ``resamples`` and ``acceptance``
    (MALA)."""
    if model.energy is None:
        raise ConfigError("energy_smc needs a model with an 'energy' (a score-only model has no potentials)")
    _count("n_particles", n_particles)
    _count("dim", dim)
    _count("n_mala", n_mala, 0)
    _positive("mala_scale", mala_scale)
    _check_proposal(proposal)
    stop = _count("last_weighted_level", last_weighted_level)
    if stop >= schedule.n_steps:
        raise ConfigError(f"'last_weighted_level' must be below n_steps = {schedule.n_steps}, got {stop}")
    ok = isinstance(resample_threshold, (int, float)) and not isinstance(resample_threshold, bool)
    if not ok or not 0 <= resample_threshold <= 1:
        raise ConfigError(f"'resample_threshold' must be in [0, 1], got {resample_threshold!r}")
    energy = model.energy
    name = "energy_smc"
    std = _init_std(model, init_std)
    T, n = schedule.n_steps, n_particles
    x = std * torch.randn(n, dim, generator=generator)
    e = energy(x, T)
    _check_finite(name, T, "energy", e)
    log_w = -e.double() - _gauss_log_density(x, torch.zeros_like(x), std * std)
    log_z = 0.0
    ess_trace: list[float] = []
    accs: list[float] = []
    resamples = 0
    for t in range(T, stop, -1):
        mean, var = _proposal(model, schedule, x, t, proposal, name)
        x_new = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator)
        e_new = energy(x_new, t - 1)
        _check_finite(name, t - 1, "energy", e_new)
        log_w = log_w + fk_log_weight(e_new, e, x_new, x, float(schedule.alphas[t]), var, mean, var)
        x, e = x_new, e_new
        ess = float(effective_sample_size(log_w)) / n
        ess_trace.append(ess)
        if t - 1 > stop and resample_threshold > 0 and ess < resample_threshold:
            log_z += float(log_mean_exp(log_w))
            idx = systematic_resample(log_w, generator)
            x, e = x[idx], e[idx]
            log_w = torch.zeros_like(log_w)
            resamples += 1
        if n_mala:
            level = t - 1
            h = mala_scale * float(schedule.sigmas[level]) ** 2 / model.precision
            target = lambda z, lv=level: energy(z, lv)  # noqa: E731
            e, g = energy_and_grad(target, x, name, level)
            for _ in range(n_mala):
                x, e, g, acc = mala_step(target, x, e, g, h, generator, name, level)
                accs.append(float(acc.mean()))
    final_ess = float(effective_sample_size(log_w)) / n
    log_z += float(log_mean_exp(log_w))
    x = x[systematic_resample(log_w, generator)]
    for t in range(stop, 1, -1):  # below the last weighted level: plain reverse steps
        mean, var = _proposal(model, schedule, x, t, proposal, name)
        x = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator)
    info = {"ess_per_level": ess_trace, "resamples": resamples}
    return SampleResult(samples=x, ess=final_ess, log_z=log_z,
                        acceptance=sum(accs) / len(accs) if accs else None, info=info)


# ----------------------------------------------------------------------------------------- metrics
class SlicedW2:
    """Sliced 2-Wasserstein distance to a fixed ``reference [m, d]``: ``(E_θ W2²(θᵀx, θᵀy))^{1/2}`` over
    ``n_projections`` random unit directions drawn once (so every sample is scored on the same directions), each
    1-D W2 between the empirical quantile functions (torch; samples of different sizes are compared on
    ``max(n, m)`` quantile levels by linear interpolation). The reference's sorted projections are cached."""

    def __init__(self, reference: torch.Tensor, n_projections: int = 256,
                 generator: torch.Generator | None = None) -> None:
        _count("n_projections", n_projections)
        ref = _finite_tensor("reference", reference).double()
        theta = torch.randn(ref.shape[1], n_projections, generator=generator, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        self.ref_sorted = (self.theta.T @ ref.T).sort(1).values  # [P, m]: sort along contiguous rows

    @staticmethod
    def _quantiles(p: torch.Tensor, m: int) -> torch.Tensor:
        if p.shape[1] == m:
            return p
        pos = (torch.arange(m, dtype=torch.float64) + 0.5) / m * p.shape[1] - 0.5
        lo = pos.floor().clamp(0, p.shape[1] - 1).long()
        hi = (lo + 1).clamp(max=p.shape[1] - 1)
        frac = (pos - lo.double()).clamp(0, 1)
        return p[:, lo] * (1 - frac) + p[:, hi] * frac

    def __call__(self, x: torch.Tensor) -> float:
        px = (self.theta.T @ x.double().T).sort(1).values
        m = max(px.shape[1], self.ref_sorted.shape[1])
        diff = self._quantiles(px, m) - self._quantiles(self.ref_sorted, m)
        return float(diff.square().mean().sqrt())


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
              generator: torch.Generator | None = None) -> float:
    """Sliced W2 between two samples (see :class:`SlicedW2`, which caches a fixed reference)."""
    return SlicedW2(y, n_projections, generator)(x)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0)) -> float:
    """Unbiased squared MMD with the sum of Gaussian kernels ``exp(-‖a-b‖²/(2h²))`` over ``bandwidths``."""
    x, y = x.double(), y.double()

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).square_()
        out = torch.zeros_like(d2)
        for h in bandwidths:
            out += torch.exp(d2 * (-0.5 / (h * h)))
        return out

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    nb = len(bandwidths)
    sxx = (kxx.sum() - nb * n) / (n * (n - 1))
    syy = (kyy.sum() - nb * m) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def mode_tv(samples: torch.Tensor, assign: Callable[[torch.Tensor], torch.Tensor], true_masses: torch.Tensor,
            ) -> float:
    """Total variation ``½ Σ_k |p̂_k - p_k|`` between the samples' mode frequencies (each sample goes to mode
    ``assign(x)``) and the true mode masses ``[K]``."""
    k = true_masses.shape[0]
    counts = torch.bincount(assign(samples), minlength=k).double()
    return float(0.5 * (counts / counts.sum() - true_masses.double()).abs().sum())
