"""Logged units of a regression discontinuity with distribution-valued outcomes (R3D's Monte Carlo designs).

Van Dijcke (2025), arXiv 2504.03992; digest ``one-step-tasks.md`` §3. The DGPs are those of the R
package's Monte Carlo harness [read code] plus the digest's DGP3 [derived]; ``x ~ U(−1, 1)``, cutoff 0,
``m`` outcome draws per unit, ``d`` the treatment:

* ``dgp1``: ``y_ij ~ N(5 + 5x + δd, sd = max(|1 + x|, 0.1))``, so ``τ(q) = δ``;
* ``dgp2``: ``y_ij = 2x + δd + N(0, 1) + 2·Exp(λ_i)`` with rate ``λ_i = clip(1 + 0.5x, 0.5, 1.5)``; ``τ(q) = δ``;
* ``dgp3``: a random scale ``σ_i ~ LogNormal(0, 0.75)``, ``y_ij = δ + (1 + γ)σ_i ε_ij`` if treated and
  ``σ_i ε_ij`` if not. The LAQTE is ``δ + γ E[σ] Φ⁻¹(q)`` while the quantile effect of the *pooled* draws is
  ``δ + γ Q_mix(q)`` (``Q_mix`` the quantile of the scale mixture ``σε``): at ``δ = γ = 0.5`` and
  ``q = (.1, .25, .5, .75, .9)`` they are ``(−0.349, 0.053, 0.5, 0.947, 1.349)`` and
  ``(−0.291, 0.19, 0.5, 0.809, 1.287)`` (:meth:`DistributionalRDDTask.true_effect`,
  :meth:`DistributionalRDDTask.pooled_effect`).

**Sharp or fuzzy.** Sharp: ``d = 1[x ≥ 0]``. Fuzzy (``fuzzy=True``): ``d ~ Bernoulli(π₁)`` above the cutoff
and ``Bernoulli(π₀)`` below, so the Wald ratio recovers ``τ`` (a complier effect; the effect is the same for
everyone here).

**The env (what RL users know as off-policy evaluation).** A context is a unit's running variable
``x`` (observation ``[1]``); the action is a treatment probability in ``[0, 1]`` (treated iff ``≥ 0.5``); the
reward is a functional of the unit's outcome sample under that treatment (its mean, or its
``reward_quantile``), computed from the simulated *potential* outcome samples (common random numbers
for both arms). As a full-information task the label (``target``, ``info["target"]``) is the pair of
potential outcome samples ``[2, m]`` (untreated, treated): the reward of either action. The train split is
also the **log** of the threshold policy ``a = 1[x ≥ c]`` (or the fuzzy take-up): ``logged_action`` holds the
treatment taken, and :meth:`DistributionalRDDTask.logged` gives what a statistician observes, ``x``, the
treatment and the outcome sample of the treatment taken only. R3D (:func:`rl_energy.analysis.r3d.r3d`)
evaluates, from that log alone, the distributional effect at the cutoff of switching the treatment on;
:meth:`DistributionalRDDTask.score` is the ground truth against which such an off-policy estimate can be
checked. There is no policy to train.

:func:`simulate` draws ``reps`` independent data sets at once (``[reps, n]`` running variables,
``[reps, n, m]`` outcomes): Monte Carlo studies vectorise over replications.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split, is_int, is_number

DGPS = ("dgp1", "dgp2", "dgp3")
SIGMA_LOG_SD = 0.75
"""DGP3's ``σ_i ~ LogNormal(0, 0.75)``."""


def simulate(dgp: str, n: int, m: int, delta: float = 1.0, gamma: float = 0.5, *, reps: int | None = None,
             fuzzy: bool = False, p_treat: tuple[float, float] = (0.2, 0.8),
             rng: np.random.Generator | int | None = None) -> dict[str, np.ndarray]:
    """Draw logged units of ``dgp``: ``x`` ``[*, n]``, potential outcome samples ``y0``/``y1`` ``[*, n, m]``
    (common random numbers), the treatment taken ``d`` ``[*, n]`` and the observed sample ``y`` ``[*, n, m]``.
    ``reps=None`` drops the leading replication axis. ``p_treat = (π₀, π₁)`` are the fuzzy take-up rates."""
    if dgp not in DGPS:
        raise ValueError(f"dgp must be one of {', '.join(DGPS)}, got {dgp!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    r = 1 if reps is None else int(reps)
    x = gen.uniform(-1.0, 1.0, size=(r, n))
    xe = x[..., None]
    if dgp == "dgp1":
        noise = np.maximum(np.abs(1.0 + xe), 0.1) * gen.standard_normal((r, n, m))
        y0 = 5.0 + 5.0 * xe + noise
        y1 = y0 + delta
    elif dgp == "dgp2":
        lam = np.clip(1.0 + 0.5 * xe, 0.5, 1.5)
        base = 2.0 * xe + gen.standard_normal((r, n, m)) + 2.0 * gen.exponential(1.0, size=(r, n, m)) / lam
        y0, y1 = base, base + delta
    else:
        sigma = np.exp(SIGMA_LOG_SD * gen.standard_normal((r, n, 1)))
        eps = sigma * gen.standard_normal((r, n, m))
        y0, y1 = eps, delta + (1.0 + gamma) * eps
    above = x >= 0.0
    if fuzzy:
        p0, p1 = p_treat
        d = gen.random((r, n)) < np.where(above, p1, p0)
    else:
        d = above
    y = np.where(d[..., None], y1, y0)
    out = {"x": x, "y0": y0, "y1": y1, "d": d.astype(np.float64), "y": y}
    return {k: v[0] for k, v in out.items()} if reps is None else out


def _normal_ppf(q: np.ndarray) -> np.ndarray:
    from statistics import NormalDist
    return np.array([NormalDist().inv_cdf(float(v)) for v in np.atleast_1d(q)])


def _mixture_quantile(q: np.ndarray, log_sd: float = SIGMA_LOG_SD, nodes: int = 80) -> np.ndarray:
    """Quantiles of ``σε`` with ``log σ ~ N(0, log_sd²)``, ``ε ~ N(0, 1)``: the CDF ``E_σ[Φ(y/σ)]`` by
    Gauss–Hermite quadrature over ``log σ``, inverted by bisection."""
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    sig, w = np.exp(log_sd * t), w / w.sum()
    erf = np.vectorize(math.erf)

    def cdf(y: np.ndarray) -> np.ndarray:
        return (w * 0.5 * (1.0 + erf(y[:, None] / (sig * math.sqrt(2.0))))).sum(axis=1)

    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    lo, hi = np.full(q.shape, -60.0), np.full(q.shape, 60.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


class DistributionalRDDTask(OneStepTask):
    """Logged RD units with outcome samples (digest §3), as a one-step env; see the module docstring.

    Keyword arguments (``env_kwargs``): ``dgp`` (``"dgp1"``), ``n_units`` (500, the logged train split),
    ``n_test`` (500), ``samples_per_unit`` (50, ``m``), ``delta`` (1.0), ``gamma`` (0.5, DGP3's scale jump),
    ``fuzzy`` (False), ``p_treat`` (``[0.2, 0.8]``, fuzzy take-up below/above), ``reward_quantile`` (``None``:
    the reward is the sample mean; a level in (0, 1): that sample quantile), ``data_seed`` (0).
    """

    metric_names: ClassVar[tuple[str, ...]] = ("value", "treated_fraction", "value_threshold")
    full_information: ClassVar[bool] = True
    cutoff: ClassVar[float] = 0.0

    def __init__(self, dgp: str = "dgp1", n_units: int = 500, n_test: int = 500, samples_per_unit: int = 50,
                 delta: float = 1.0, gamma: float = 0.5, fuzzy: bool = False,
                 p_treat: tuple[float, float] | list[float] = (0.2, 0.8), reward_quantile: float | None = None,
                 data_seed: int = 0) -> None:
        super().__init__()
        p_treat = tuple(p_treat) if isinstance(p_treat, list | tuple) else p_treat
        checks: list[tuple[str, Any, bool, str]] = [
            ("dgp", dgp, dgp in DGPS, f"one of {', '.join(DGPS)}"),
            ("n_units", n_units, is_int(n_units) and n_units >= 20, "an integer >= 20"),
            ("n_test", n_test, is_int(n_test) and n_test >= 1, "an integer >= 1"),
            ("samples_per_unit", samples_per_unit, is_int(samples_per_unit) and 1 <= samples_per_unit <= 100_000,
             "an integer in [1, 100000]"),
            ("delta", delta, is_number(delta) and abs(delta) <= 1e6, "a finite number"),
            ("gamma", gamma, is_number(gamma) and -1 < gamma <= 1e3, "a number in (-1, 1000]"),
            ("fuzzy", fuzzy, isinstance(fuzzy, bool), "true or false"),
            ("p_treat", p_treat, isinstance(p_treat, tuple) and len(p_treat) == 2
             and all(is_number(v) and 0 <= v <= 1 for v in p_treat), "two probabilities [below, above]"),
            ("reward_quantile", reward_quantile, reward_quantile is None
             or (is_number(reward_quantile) and 0 < reward_quantile < 1), "null or a level in (0, 1)"),
            ("data_seed", data_seed, is_int(data_seed) and data_seed >= 0, "an integer >= 0"),
        ]
        for name, value, ok, requirement in checks:
            if not ok:
                raise ValueError(f"DistributionalRDDTask kwarg '{name}' must be {requirement}, got {value!r}")
        if fuzzy and abs(p_treat[1] - p_treat[0]) < 0.05:
            raise ValueError(f"DistributionalRDDTask kwarg 'p_treat' must jump at the cutoff for a fuzzy design "
                             f"(|π₁ − π₀| >= 0.05), got {p_treat!r}")
        self.dgp, self.n_units, self.n_test, self.m = dgp, int(n_units), int(n_test), int(samples_per_unit)
        self.delta, self.gamma, self.fuzzy, self.p_treat = float(delta), float(gamma), fuzzy, p_treat
        self.reward_quantile, self.data_seed = reward_quantile, int(data_seed)
        self._data = self._generate()
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)

    # ----------------------------------------------------------------------------------- data
    def logged(self, split: Split = "train") -> dict[str, np.ndarray]:
        """The logged data of ``split`` as float64 numpy arrays: ``x`` ``[n]``, ``y`` ``[n, m]``, ``d`` ``[n]``
        (the input of :func:`rl_energy.analysis.r3d.r3d`)."""
        data = self._cached(split)
        d = data["logged_action"][:, 0] >= 0.5
        y = torch.where(d[:, None], data["target"][:, 1], data["target"][:, 0])
        return {"x": data["obs"][:, 0].double().numpy(), "y": y.double().numpy(), "d": d.double().numpy()}

    def _generate(self) -> dict[str, TensorDict]:
        seeds = np.random.SeedSequence(self.data_seed).spawn(2)
        out = {}
        for seed, (split, n) in zip(seeds, (("train", self.n_units), ("test", self.n_test)), strict=True):
            s = simulate(self.dgp, n, self.m, self.delta, self.gamma, fuzzy=self.fuzzy, p_treat=self.p_treat,
                         rng=np.random.default_rng(seed))
            out[split] = TensorDict({
                "obs": torch.as_tensor(s["x"], dtype=torch.float32).reshape(n, 1),
                "target": torch.as_tensor(np.stack([s["y0"], s["y1"]], axis=1), dtype=torch.float32),
                "logged_action": torch.as_tensor(s["d"], dtype=torch.float32).reshape(n, 1),
            }, batch_size=[n])
        return out

    def _split(self, split: Split) -> TensorDict:
        return self._data[split]

    # ------------------------------------------------------------------------------- the truth
    def true_effect(self, q: np.ndarray) -> np.ndarray:
        """The LAQTE ``τ(q)`` at the cutoff (population quantiles)."""
        q = np.asarray(q, dtype=np.float64)
        if self.dgp == "dgp3":
            mean_sigma = math.exp(SIGMA_LOG_SD ** 2 / 2)
            return self.delta + self.gamma * mean_sigma * _normal_ppf(q).reshape(q.shape)
        return np.full(q.shape, self.delta)

    def pooled_effect(self, q: np.ndarray) -> np.ndarray:
        """The jump of the quantiles of the *pooled* outcome distribution at the cutoff (what a naive quantile
        RD on all draws estimates)."""
        q = np.asarray(q, dtype=np.float64)
        if self.dgp == "dgp3":
            return self.delta + self.gamma * _mixture_quantile(q).reshape(q.shape)
        return np.full(q.shape, self.delta)  # dgp1, dgp2: a location shift of one law at the cutoff

    # -------------------------------------------------------------------------------- scoring
    def _functional(self, y: torch.Tensor) -> torch.Tensor:
        if self.reward_quantile is None:
            return y.mean(dim=-1)
        return torch.quantile(y, float(self.reward_quantile), dim=-1)

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """The reward of treating (action ≥ 0.5) or not: the mean (or ``reward_quantile``) of the unit's
        potential outcome sample under that treatment."""
        treat = torch.as_tensor(action, dtype=torch.float32).reshape(-1) >= 0.5
        y = torch.where(treat[:, None], batch["target"][:, 1], batch["target"][:, 0])
        return self._functional(y)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``value`` (mean reward of the actions), ``treated_fraction`` and ``value_threshold`` (the mean
        reward of the logged threshold policy ``1[x ≥ c]`` on the same units)."""
        a = torch.as_tensor(action, dtype=torch.float32).reshape(-1)
        threshold = (batch["obs"][:, 0] >= self.cutoff).float()
        return {"value": float(self.score(batch, a).mean()), "treated_fraction": float((a >= 0.5).float().mean()),
                "value_threshold": float(self.score(batch, threshold).mean())}

