"""Entropic optimal transport between Gaussians as a one-step, full-information task (the Gaussian→Gaussian
benchmark of Mokrov, Korotin, Kolesov, Gushchin & Burnaev, "Energy-guided Entropic Neural Optimal
Transport", ICLR 2024, arXiv 2304.06094; digest ``papers/one-step-tasks.md`` §8).

The problem (entropic OT with the quadratic cost ``c(x, y) = ½‖x - y‖²`` and entropy weight ``ε``)::

    π* = argmin_{π ∈ Π(P, Q)}  E_π[c(x, y)] - ε E_{x~P} H(π(·|x)),

whose solution has the form ``π*(y|x) ∝ exp((f*(y) - c(x, y))/ε)`` for a potential ``f*`` (the paper's
Theorem 1 / the EOT optimality conditions). Minimising ``E c - ε E_P H(π(·|x))``, ``E c - ε H(π)`` or
``E c + ε KL(π ‖ P⊗Q)`` over ``Π(P, Q)`` gives the same plan (they differ by constants of the marginals).

Between Gaussians ``P = N(μ_P, Σ_P)`` and ``Q = N(μ_Q, Σ_Q)`` the plan is Gaussian with the two marginals
and a cross-covariance ``C`` in closed form (Janati, Muzellec, Peyré & Cuturi, NeurIPS 2020, Theorem 1;
Mallasto, Gerolin & Minh 2021), derived here in our units (:func:`gaussian_entropic_plan`):
``log π*(x, y)`` contains ``xᵀy/ε``, so the joint precision's off-diagonal block is ``-I/ε``. With
``K = Σ_P⁻¹C`` (the conditional-mean map ``E[y|x] = μ_Q + K(x - μ_P)``) and the Schur complement that
identity reads ``ε K = Σ_Q - Kᵀ Σ_P K``; ``K`` is then symmetric, and ``M = Σ_P^{½} K Σ_P^{½}`` solves
``M² + ε M = N`` with ``N = Σ_P^{½} Σ_Q Σ_P^{½}``, so

    M = (N + ε²/4 I)^{½} - ε/2 I,    C = Σ_P^{½} M Σ_P^{-½},    Cov(y|x) = Σ_Q - Kᵀ Σ_P K = ε K.

(In Janati et al.'s units, cost ``‖x - y‖²`` and weight ``2σ²``, this is their ``C_σ = ½(Σ_P^{½} D_σ Σ_P^{-½} -
σ² I)`` with ``σ² = ε``; it is also the covariance the official EgEOT code scores against.) As ``ε → 0``,
``K`` tends to the OT map ``Σ_P^{-½} N^{½} Σ_P^{-½}``; as ``ε → ∞``, ``C → 0`` (the independent coupling).

Framing (digest §8, "Framing"): a constrained maximum-entropy contextual bandit. The observation is
``x ~ P``; the action is ``y``; the reward is ``-c(x, y)``; the full-information label ``target`` is an
independent draw ``y ~ Q`` (the learning signal is samples of ``Q``, not a scalar reward). ``eps`` (a
constant column ``[n, 1]``) tells a solver which ``ε`` the task's reference uses. The task is a
``sampling`` task: evaluations score *sampled* actions, since the metrics are about the plan.

Data (from ``data_seed``): covariances ``R diag(λ) Rᵀ`` with ``λ`` log-spaced over ``[1/4, 4]`` (the
spectrum of the official benchmark's rotated Gaussians, whose weight matrices have singular values
log-spaced over ``[1/2, 2]``) and independent uniformly random rotations ``R`` for ``P`` and ``Q``;
means ``N(0, I/4)``. The train and test splits come from independent streams, so the test split does not
depend on ``n_train``.

Metrics (:meth:`EntropicOTTask.metrics`, the digest's "Metric"), from Gaussian fits of the batch's pairs
``(x, action)``:

* ``bw2_uvp``: BW2-UVP (%) of the joint plan against ``π*`` (:func:`bw2_uvp`);
* ``marg_bw2_uvp``: the same for the action marginal against ``Q``;
* ``cond_mean_uvp``: L2-UVP (%) of the fitted conditional-mean map ``x ↦ μ̂_y + K̂(x - μ̂_x)`` against
  ``x ↦ μ_Q + K(x - μ_P)`` over the batch's ``x``, ``100 E‖m̂(x) - m*(x)‖² / tr Σ_Q`` (Korotin et al. 2021's
  L2-UVP of the barycentric projection);
* ``cond_cov_err``: ``‖Σ̂_{y|x} - εK‖_F / ‖εK‖_F`` of the fitted conditional covariance.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split

SPECTRUM = (0.25, 4.0)
"""Range of the covariance eigenvalues of ``P`` and ``Q`` (log-spaced)."""
MAX_D = 1024


# ------------------------------------------------------------------------------------ closed forms
class GaussianPlan(NamedTuple):
    """The entropic OT plan between two Gaussians (see :func:`gaussian_entropic_plan`)."""

    mean: np.ndarray
    """``[2d]``: ``(μ_P, μ_Q)``."""
    cov: np.ndarray
    """``[2d, 2d]``: ``[[Σ_P, C], [Cᵀ, Σ_Q]]``."""
    cond_map: np.ndarray
    """``K`` ``[d, d]`` (symmetric): ``E[y|x] = μ_Q + K (x - μ_P)``."""
    cond_cov: np.ndarray
    """``Cov(y|x) = ε K`` ``[d, d]``."""


def _as_cov(name: str, cov: Any, d: int | None = None) -> np.ndarray:
    a = np.asarray(cov, dtype=np.float64)
    if a.ndim == 0:
        a = a.reshape(1, 1)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or (d is not None and a.shape[0] != d):
        want = f"[{d}, {d}]" if d is not None else "square"
        raise ValueError(f"'{name}' must be a {want} covariance matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"'{name}' holds NaN or inf")
    return 0.5 * (a + a.T)


def _as_mean(name: str, mean: Any, d: int) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float64).reshape(-1)
    if m.shape != (d,) or not np.isfinite(m).all():
        raise ValueError(f"'{name}' must be a finite vector of length {d}, got shape {m.shape}")
    return m


def sym_sqrt(a: np.ndarray, inverse: bool = False) -> np.ndarray:
    """``A^{½}`` (or ``A^{-½}``) of a symmetric positive semi-definite matrix, by eigendecomposition."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    w = np.clip(w, 0.0, None)
    if inverse:
        if w.min() <= 0:
            raise ValueError("the matrix is singular: no inverse square root")
        w = 1.0 / w
    return (v * np.sqrt(w)) @ v.T


def gaussian_entropic_plan(mu_p: Any, cov_p: Any, mu_q: Any, cov_q: Any, eps: float) -> GaussianPlan:
    """The entropic OT plan ``π*`` between ``N(mu_p, cov_p)`` and ``N(mu_q, cov_q)`` for the cost ``½‖x - y‖²``
    and entropy weight ``eps`` (Janati et al. 2020, Thm 1, in these units; derivation in the module docstring).

    ``cov_p`` must be positive definite (``Σ_P^{-½}`` enters ``C``); ``cov_q`` positive semi-definite.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"'eps' must be a positive finite number, got {eps!r}")
    cov_p = _as_cov("cov_p", cov_p)
    d = cov_p.shape[0]
    cov_q = _as_cov("cov_q", cov_q, d)
    mu_p, mu_q = _as_mean("mu_p", mu_p, d), _as_mean("mu_q", mu_q, d)
    if np.linalg.eigvalsh(cov_p).min() <= 0:
        raise ValueError("'cov_p' must be positive definite")
    if np.linalg.eigvalsh(cov_q).min() < -1e-12 * max(1.0, np.abs(cov_q).max()):
        raise ValueError("'cov_q' must be positive semi-definite")
    eps = float(eps)
    sp = sym_sqrt(cov_p)
    sp_inv = sym_sqrt(cov_p, inverse=True)
    n = sp @ cov_q @ sp
    m = sym_sqrt(n + 0.25 * eps * eps * np.eye(d)) - 0.5 * eps * np.eye(d)
    cross = sp @ m @ sp_inv
    k = sp_inv @ m @ sp_inv
    k = 0.5 * (k + k.T)
    cov = np.block([[cov_p, cross], [cross.T, cov_q]])
    return GaussianPlan(mean=np.concatenate([mu_p, mu_q]), cov=0.5 * (cov + cov.T), cond_map=k, cond_cov=eps * k)


def bw2(mean_a: Any, cov_a: Any, mean_b: Any, cov_b: Any) -> float:
    """Squared Bures–Wasserstein distance, the squared 2-Wasserstein distance between the Gaussians
    ``N(mean_a, cov_a)`` and ``N(mean_b, cov_b)``::

        ‖m_a - m_b‖² + tr Σ_a + tr Σ_b - 2 tr (Σ_a^{½} Σ_b Σ_a^{½})^{½}.
    """
    cov_a = _as_cov("cov_a", cov_a)
    d = cov_a.shape[0]
    cov_b = _as_cov("cov_b", cov_b, d)
    mean_a, mean_b = _as_mean("mean_a", mean_a, d), _as_mean("mean_b", mean_b, d)
    sa = sym_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sa @ cov_b @ sa), 0.0, None)).sum()
    value = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(value, 0.0)


def bw2_uvp(mean: Any, cov: Any, ref_mean: Any, ref_cov: Any) -> float:
    """BW2-UVP (%) of ``N(mean, cov)`` against the reference ``N(ref_mean, ref_cov)``.

    Korotin et al. (NeurIPS 2021, "Do neural optimal transport solvers work?") define
    ``BW²₂-UVP = 100 · BW²₂(model, ref) / (½ Var(ref))`` with their ``W²₂`` taken for the cost ``½‖x - y‖²``,
    i.e. half the usual squared Bures–Wasserstein distance, and ``Var = tr Σ``; the official EgEOT code
    (``src/gauss2gauss/metrics.py``) computes exactly that. In terms of the usual :func:`bw2`::

        BW2-UVP = 100 · bw2(model, ref) / tr Σ_ref.

    0 for a perfect fit; 100 for, e.g., a point mass at the reference mean.
    """
    ref_cov = _as_cov("ref_cov", ref_cov)
    scale = float(np.trace(ref_cov))
    if scale <= 0:
        raise ValueError("'ref_cov' must have a positive trace")
    return 100.0 * bw2(mean, cov, ref_mean, ref_cov) / scale


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"EntropicOTTask kwarg '{name}' must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"EntropicOTTask kwarg '{name}' must be {bound}, got {value!r}")
    return int(value)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"EntropicOTTask kwarg '{name}' must be a positive finite number, got {value!r}")
    return float(value)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal ``d x d`` matrix (QR of a Gaussian matrix with the signs of ``R``'s diagonal
    fixed; Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ------------------------------------------------------------------------------------------ the task
class EntropicOTTask(OneStepTask):
    """Gaussian→Gaussian entropic OT with cost ``½‖x - y‖²`` as a one-step task (see the module docstring)."""

    metric_names: ClassVar[tuple[str, ...]] = ("bw2_uvp", "marg_bw2_uvp", "cond_mean_uvp", "cond_cov_err")
    sampling: ClassVar[bool] = True

    def __init__(
        self,
        d: int = 2,
        eps: float = 1.0,
        n_train: int = 65_536,
        n_test: int = 8_192,
        data_seed: int = 0,
        action_sigmas: float = 8.0,
    ) -> None:
        self.d = _check_int("d", d, 1, MAX_D)
        self.eps = _check_positive("eps", eps)
        self.n_train = _check_int("n_train", n_train, 1)
        self.n_test = _check_int("n_test", n_test, 2)
        self.data_seed = _check_int("data_seed", data_seed, 0)
        self.action_sigmas = _check_positive("action_sigmas", action_sigmas)

        rng = np.random.default_rng([self.data_seed, 0])
        lam = np.geomspace(*SPECTRUM, self.d) if self.d > 1 else np.array([1.0])
        self.mu_p = 0.5 * rng.standard_normal(self.d)
        self.mu_q = 0.5 * rng.standard_normal(self.d)
        rot_p, rot_q = random_rotation(self.d, rng), random_rotation(self.d, rng)
        self.chol_p = rot_p * np.sqrt(lam)  # x = μ_P + L_P z,  L_P L_Pᵀ = Σ_P
        self.chol_q = rot_q * np.sqrt(lam)
        self.cov_p = self.chol_p @ self.chol_p.T
        self.cov_q = self.chol_q @ self.chol_q.T
        self.plan = gaussian_entropic_plan(self.mu_p, self.cov_p, self.mu_q, self.cov_q, self.eps)
        """The closed-form reference ``π*`` (:class:`GaussianPlan`)."""

        high = np.abs(self.mu_q) + self.action_sigmas * math.sqrt(float(lam.max()))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.d,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-high.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        """Bounded only so that step agents acting in ``[-1, 1]`` can be rescaled (``action_sigmas`` standard
        deviations of ``Q``'s widest direction around 0, beyond ``|μ_Q|``); the score never clips."""

    # ------------------------------------------------------------------------------ sampling
    def sample_p(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws of ``P`` ``[n, d]`` (float64)."""
        return self.mu_p + rng.standard_normal((n, self.d)) @ self.chol_p.T

    def sample_q(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws of ``Q`` ``[n, d]`` (float64)."""
        return self.mu_q + rng.standard_normal((n, self.d)) @ self.chol_q.T

    def sample_plan(self, x: Any, rng: np.random.Generator) -> np.ndarray:
        """Exact draws ``y ~ π*(·|x)`` ``[n, d]`` (the oracle: the metrics' floor at a given sample size)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.d)
        mean = self.mu_q + (x - self.mu_p) @ self.plan.cond_map.T
        w, v = np.linalg.eigh(self.plan.cond_cov)
        root = v * np.sqrt(np.clip(w, 0.0, None))
        return mean + rng.standard_normal(x.shape) @ root.T

    # ------------------------------------------------------------------------- OneStepTask side
    def _split(self, split: Split) -> TensorDict:
        n, stream = (self.n_train, 1) if split == "train" else (self.n_test, 2)
        rng = np.random.default_rng([self.data_seed, stream])
        x, y = self.sample_p(n, rng), self.sample_q(n, rng)
        return TensorDict({
            "obs": torch.as_tensor(x, dtype=torch.float32),
            "target": torch.as_tensor(y, dtype=torch.float32),
            "eps": torch.full((n, 1), self.eps, dtype=torch.float32),
        }, batch_size=[n])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-context reward ``-c(x, y) = -½‖x - y‖²`` ``[n]`` (digest §8, "Framing")."""
        x = batch["obs"].reshape(-1, self.d).float()
        y = torch.as_tensor(action, dtype=torch.float32, device=x.device).reshape(-1, self.d)
        return -0.5 * (x - y).pow(2).sum(-1)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """Gaussian-fit figures of the pairs ``(x, action)`` against the closed-form plan (module docstring)."""
        x = batch["obs"].detach().cpu().double().numpy().reshape(-1, self.d)
        y = torch.as_tensor(action).detach().cpu().double().numpy().reshape(-1, self.d)
        if len(x) < 2:
            raise ValueError(f"the metrics need at least 2 contexts, got {len(x)}")
        return plan_metrics(x, y, self.plan, self.mu_p, self.mu_q, self.cov_q)


def plan_metrics(x: np.ndarray, y: np.ndarray, plan: GaussianPlan, mu_p: np.ndarray, mu_q: np.ndarray,
                 cov_q: np.ndarray) -> dict[str, float]:
    """The task's metrics for pairs ``(x_i, y_i)`` (one ``y`` per ``x``) against ``plan``."""
    d = x.shape[1]
    joint = np.concatenate([x, y], 1)
    return moment_metrics(joint.mean(0), np.cov(joint, rowvar=False).reshape(2 * d, 2 * d), x, plan, mu_p, mu_q, cov_q)


def moment_metrics(mean: np.ndarray, cov: np.ndarray, x: np.ndarray, plan: GaussianPlan, mu_p: np.ndarray,
                   mu_q: np.ndarray, cov_q: np.ndarray) -> dict[str, float]:
    """The task's metrics from a joint mean ``[2d]`` and covariance ``[2d, 2d]`` of ``(x, y)`` (a Gaussian fit
    of samples, or the moments of a discrete plan), the conditional-mean error averaged over ``x`` ``[n, d]``."""
    d = x.shape[1]
    out = {"bw2_uvp": bw2_uvp(mean, cov, plan.mean, plan.cov),
           "marg_bw2_uvp": bw2_uvp(mean[d:], cov[d:, d:], mu_q, cov_q)}
    sxx, sxy, syy = cov[:d, :d], cov[:d, d:], cov[d:, d:]
    k_hat = np.linalg.lstsq(sxx, sxy, rcond=None)[0].T  # Σ_yx Σ_xx⁻¹
    m_hat = mean[d:] + (x - mean[:d]) @ k_hat.T
    m_true = mu_q + (x - mu_p) @ plan.cond_map.T
    out["cond_mean_uvp"] = 100.0 * float(((m_hat - m_true) ** 2).sum(1).mean()) / float(np.trace(cov_q))
    cond_cov = syy - k_hat @ sxy
    out["cond_cov_err"] = float(np.linalg.norm(cond_cov - plan.cond_cov) / np.linalg.norm(plan.cond_cov))
    return out
