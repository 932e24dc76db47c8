"""R3D: regression discontinuity with distribution-valued outcomes, and its uniform inference.

Van Dijcke (2025), "Regression discontinuity design with distribution-valued outcomes" (arXiv 2504.03992;
R package ``Davidvandijcke/R3D``); digest ``papers/one-step-tasks.md`` §3.

Unit ``i`` has a running variable ``X_i`` and a *sample* of outcomes ``Y_i = (Y_i1, ..., Y_im_i)``; its
outcome is the quantile function ``Q_i(q)``. The estimand is the **local average quantile treatment effect**

    τ(q) = lim_{x↓c} E[Q_i(q) | X = x] − lim_{x↑c} E[Q_i(q) | X = x],

which differs from the effect on the quantiles of the *pooled* outcome distribution (what a naive
quantile RD on all ``Y_ij`` estimates) whenever the units' distributions differ in shape: the mean of
quantile functions is not the quantile function of the mixture (:func:`pooled_quantile_rd`, the biased
baseline of the abstract).

The estimator, as :func:`r3d` computes it:

1. the empirical quantile matrix ``Q̂[i, k] = Q̂_i(q_k)`` (:func:`quantile_matrix`);
2. one-sided local polynomials of order ``p`` (default 2) of ``Q̂(q_k)`` on ``X − c`` with a kernel
   (Epanechnikov, triangular or uniform) and bandwidth ``h``: the side intercepts ``m̂₊(q)``, ``m̂₋(q)``.
   ``method="simple"`` takes one MSE-optimal bandwidth per quantile; ``method="frechet"`` one bandwidth
   for all quantiles (the integrated MSE) and projects each side's curve ``q ↦ m̂±(q)`` onto monotone
   functions (:func:`isotonic`, the L² projection that makes it a quantile function: the local Fréchet
   regression in Wasserstein space), so that its quantiles never cross;
3. ``τ̂(q) = m̂₊(q) − m̂₋(q)``; the fuzzy design divides by the jump of the treatment probability (the
   Wald ratio) estimated the same way;
4. **robust bias correction** (Calonico, Cattaneo & Titiunik 2014): the leading bias
   ``h^{p+1} μ^{(p+1)}/(p+1)! · B_n`` of each side is estimated with a local polynomial of order
   ``p + 1`` at the pilot bandwidth ``b`` (default ``b = h``) and subtracted, and the variance is that of
   the corrected estimator, a linear smoother ``Σ_i w_i^{bc}(q) Q̂_i(q)``;
5. the **uniform band** by a Gaussian multiplier bootstrap: ``T*(q) = Σ_i ξ_i w_i^{bc}(q) ê_i(q)``,
   ``ξ_i ~ N(0, 1)``, studentised by ``σ̂(q) = (Σ_i w_i^{bc}(q)² ê_i(q)²)^{1/2}``; the critical value is the
   ``1 − α`` quantile of ``sup_q |T*(q)|/σ̂(q)`` and the band ``τ̂_bc(q) ± c* σ̂(q)``. With few effective units
   (a local quadratic with its cubic bias correction puts most weight on a few dozen units near the cutoff)
   the studentised estimate has heavier tails than the Gaussian draws: by default (``dof_correction``) the
   band is widened at each ``q`` by the ratio of the Student-t to the normal quantile at the level of ``c*``,
   at the Satterthwaite degrees of freedom ``ν(q) = (Σ_i w_i²)² / Σ_i w_i⁴`` of the weights, with HC2
   residuals: the small-sample recipe of Imbens & Kolesár (2016, "Robust standard errors in small samples")
   carried to the sup-t band;
6. tests from the same draws: **nullity** (``τ ≡ 0`` on a range of quantiles; rejects when the band
   leaves 0) and **homogeneity** (``τ`` constant in ``q``; the draws centred at their mean over ``q``).

The residuals ``ê_i`` are those of the order-``p + 1`` fit at ``b`` (the fit that corrects the bias), scaled
for leverage (``vce``: ``hc0``, ``hc2`` (default) or ``hc3``, rdrobust's options), and
the bandwidth rule is the rule of thumb of the package [read code]: global polynomials of order ``p + 1``
on each side give the pilot derivative ``μ^{(p+1)}`` and residual variance ``σ²``, a Gaussian-reference KDE
the density ``f(c)``, and

    h_MSE = [ C_v (σ₊² + σ₋²) / f(c)  /  (2(p+1) n B²) ]^{1/(2p+3)},
    B = C_b (μ₊^{(p+1)} − (−1)^{p+1} μ₋^{(p+1)}) / (p+1)!,

with the boundary kernel constants ``C_b = e₀ᵀΓ⁻¹Λ`` and ``C_v = e₀ᵀΓ⁻¹ΨΓ⁻¹e₀`` (``Γ = ∫₀¹K r rᵀ``,
``Λ = ∫₀¹ u^{p+1} K r``, ``Ψ = ∫₀¹ K² r rᵀ``, ``r(u) = (1, u, …, u^p)``); ``method="frechet"`` averages
``B²`` and the variance term over the quantile grid. The bandwidth is clipped so that each side keeps at
least ``max(2(p + 2), 10)`` units inside it.

Everything is numpy: one fit of 500 units × 9 quantiles with its 200-draw bootstrap takes a few
milliseconds, so Monte Carlo studies loop over replications, never over observations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

KERNELS = ("epanechnikov", "triangular", "uniform")
METHODS = ("simple", "frechet")
VCES = ("hc0", "hc2", "hc3")
Kernel = Literal["epanechnikov", "triangular", "uniform"]


WEAK_FIRST_STAGE_T = math.sqrt(10.0)
"""A fuzzy first stage below this many robust standard errors (F < 10, Staiger & Stock's rule of thumb) warns."""


class R3DError(ValueError):
    """Input an RD estimate cannot be computed from (too few units on a side, a bandwidth with no data)."""


class WeakFirstStageWarning(RuntimeWarning):
    """The fuzzy design's first stage jumps by less than :data:`WEAK_FIRST_STAGE_T` robust standard errors."""


# ------------------------------------------------------------------------------------------ basics
def kernel_values(u: np.ndarray, kernel: Kernel = "epanechnikov") -> np.ndarray:
    """``K(u)`` on ``[-1, 1]`` (zero outside): Epanechnikov ``¾(1 − u²)``, triangular ``1 − |u|``, uniform ``½``."""
    u = np.asarray(u, dtype=np.float64)
    inside = np.abs(u) <= 1.0
    if kernel == "epanechnikov":
        return np.where(inside, 0.75 * (1.0 - u * u), 0.0)
    if kernel == "triangular":
        return np.where(inside, 1.0 - np.abs(u), 0.0)
    if kernel == "uniform":
        return np.where(inside, 0.5, 0.0)
    raise R3DError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")


def quantile_matrix(samples: np.ndarray | Sequence[np.ndarray], q: np.ndarray,
                    quantile_method: str = "linear") -> np.ndarray:
    """The empirical quantile matrix ``Q̂[i, k] = Q̂_i(q_k)`` (step 1).

    ``samples`` is an ``[n, m]`` array (every unit has ``m`` outcomes; vectorised) or a sequence of 1-D
    arrays of any lengths ≥ 1. ``quantile_method`` is numpy's (``"linear"``, the R/numpy default;
    ``"normal_unbiased"`` removes most of the ``O(1/m)`` bias of sample quantiles of normal-like outcomes).
    """
    q = _check_q(q)
    if isinstance(samples, np.ndarray) and samples.ndim == 2:
        if samples.shape[1] < 1:
            raise R3DError("every unit needs at least one outcome draw")
        _check_finite("samples", samples)
        return np.quantile(samples, q, axis=1, method=quantile_method).T
    rows = []
    for i, s in enumerate(samples):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.size == 0:
            raise R3DError(f"unit {i} has an empty outcome sample")
        _check_finite(f"samples[{i}]", s)
        rows.append(np.quantile(s, q, method=quantile_method))
    if not rows:
        raise R3DError("no units")
    return np.stack(rows)


def isotonic(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The weighted L² projection of each row of ``y`` onto non-decreasing sequences (pool adjacent
    violators). This is the Fréchet step: the closest quantile function to a fitted curve ``q ↦ m̂(q)``."""
    y = np.asarray(y, dtype=np.float64)
    flat = y.reshape(-1, y.shape[-1])
    w = np.ones(y.shape[-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (y.shape[-1],) or np.any(w <= 0):
        raise R3DError("isotonic weights must be positive, one per column")
    out = np.empty_like(flat)
    for r, row in enumerate(flat):
        # blocks of (weighted mean, weight, length); merge while the last two violate the order
        means, wts, lens = [], [], []
        for v, wv in zip(row, w, strict=True):
            means.append(v)
            wts.append(wv)
            lens.append(1)
            while len(means) > 1 and means[-2] > means[-1]:
                m2, w2, l2 = means.pop(), wts.pop(), lens.pop()
                wsum = wts[-1] + w2
                means[-1] = (means[-1] * wts[-1] + m2 * w2) / wsum
                wts[-1] = wsum
                lens[-1] += l2
        out[r] = np.repeat(means, lens)
    return out.reshape(y.shape)


def crossing(curves: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Whether each row of ``curves`` (quantile functions on an increasing grid) decreases somewhere."""
    return np.any(np.diff(np.asarray(curves), axis=-1) < -tol, axis=-1)


# ------------------------------------------------------------------------------- local polynomials
def local_poly_operator(x: np.ndarray, cutoff: float, h: np.ndarray | float, p: int, side: int,
                        kernel: Kernel = "epanechnikov") -> np.ndarray:
    """The linear operator of a one-sided local polynomial fit at the cutoff: ``L[..., k, i]`` with
    ``β̂_k = Σ_i L[k, i] Y_i = μ̂^{(k)}(c)/k!`` (so ``k = 0`` is the boundary intercept), for bandwidths
    ``h`` (a scalar or an array of any shape, giving ``L`` of shape ``h.shape + (p+1, n)``).

    ``side = +1`` fits the units with ``X ≥ c``, ``side = −1`` those with ``X < c``. Raises
    :class:`R3DError` when a bandwidth leaves fewer than ``p + 1`` units with positive kernel weight on
    the side (the fit is not identified).
    """
    x = np.asarray(x, dtype=np.float64)
    h_arr = np.asarray(h, dtype=np.float64)
    if np.any(~np.isfinite(h_arr)) or np.any(h_arr <= 0):
        raise R3DError(f"bandwidths must be finite and > 0, got {h_arr.ravel()[:5]}")
    d = x - cutoff
    on_side = d >= 0 if side > 0 else d < 0
    hs = h_arr.reshape(-1, 1)
    u = d[None, :] / hs                                                  # [H, n]
    k = kernel_values(u, kernel) * on_side[None, :]
    counts = (k > 0).sum(axis=1)
    if np.any(counts < p + 1):
        bad = float(hs[np.argmin(counts), 0])
        where = "above" if side > 0 else "below"
        raise R3DError(f"bandwidth h={bad:.4g} leaves {int(counts.min())} units with positive kernel weight {where} "
                       f"the cutoff {cutoff:g}; a local polynomial of order {p} needs at least {p + 1}: "
                       f"use a larger bandwidth or more units {where} the cutoff")
    powers = np.arange(p + 1)
    r = u[..., None] ** powers                                           # [H, n, p+1]
    gram = np.einsum("hn,hnj,hnk->hjk", k, r, r)
    rhs = np.einsum("hn,hnj->hjn", k, r)                                 # [H, p+1, n]
    try:
        coef = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        raise R3DError("singular local polynomial design (repeated running-variable values inside the "
                       "bandwidth?): use a larger bandwidth or a lower order p") from None
    coef = coef / hs[:, :, None] ** powers[None, :, None]                # scale u-coefficients back to x - c
    return coef.reshape(h_arr.shape + (p + 1, x.size))


@dataclass
class _Side:
    """One side's linear smoothers: conventional intercept, bias-corrected intercept, residual operator."""

    w_conv: np.ndarray    # [K, n] intercept weights (order p, bandwidth h)
    w_bc: np.ndarray      # [K, n] bias-corrected intercept weights
    fit_q: np.ndarray     # [K, p+2, n]: coefficient operator of the order-(p+1) fit at b
    in_window: np.ndarray  # [K, n] units with positive weight in either fit


def _side(x: np.ndarray, cutoff: float, h: np.ndarray, b: np.ndarray, p: int, side: int, kernel: Kernel) -> _Side:
    # one operator per distinct bandwidth (a single one for frechet), gathered back to the K quantiles
    hu, hi = np.unique(h, return_inverse=True)
    bu, bi = np.unique(b, return_inverse=True)
    lp = local_poly_operator(x, cutoff, hu, p, side, kernel)[hi]           # [K, p+1, n]
    lq = local_poly_operator(x, cutoff, bu, p + 1, side, kernel)[bi]       # [K, p+2, n]
    d = x - cutoff
    bias_const = lp[:, 0, :] @ d ** (p + 1)                                # [K]: exact finite-sample bias factor
    w_bc = lp[:, 0, :] - bias_const[:, None] * lq[:, p + 1, :]
    on_side = d >= 0 if side > 0 else d < 0
    reach = np.maximum(h, b)[:, None]
    in_window = on_side[None, :] & (np.abs(d)[None, :] <= reach)
    return _Side(lp[:, 0, :], w_bc, lq, in_window)


def _residuals(side: _Side, x: np.ndarray, cutoff: float, y: np.ndarray, vce: str) -> np.ndarray:
    """``ê_i(q_k)``: residuals of the order-``p+1`` fit at ``b`` for the units in the side's window, 0 elsewhere,
    scaled by the leverage ``ℓ_i`` of that fit as ``vce`` says (``hc0``: none, ``hc2``: ``1/√(1 − ℓ_i)``, ``hc3``:
    ``1/(1 − ℓ_i)``; MacKinnon & White 1985). ``y`` is ``[n, K]`` (one column per smoother)."""
    beta = np.einsum("kjn,nk->kj", side.fit_q, y)                          # [K, p+2]
    d = x - cutoff
    design = d[:, None] ** np.arange(beta.shape[1])                        # [n, p+2]
    resid = y - design @ beta.T                                            # [n, K]
    if vce != "hc0":
        leverage = np.einsum("nj,kjn->nk", design, side.fit_q)             # ℓ_i: ∂ fitted_i / ∂ y_i
        one_minus = np.clip(1.0 - leverage, 1e-3, None)
        resid = resid / (np.sqrt(one_minus) if vce == "hc2" else one_minus)
    return np.where(side.in_window.T, resid, 0.0)


# ------------------------------------------------------------------------------------- bandwidths
def _kernel_constants(p: int, kernel: Kernel, grid: int = 4001) -> tuple[float, float]:
    """``C_b = e₀ᵀΓ⁻¹Λ`` and ``C_v = e₀ᵀΓ⁻¹ΨΓ⁻¹e₀`` of the boundary (one-sided) kernel of order ``p``."""
    u = np.linspace(0.0, 1.0, grid)
    k = kernel_values(u, kernel)
    r = u[:, None] ** np.arange(p + 1)
    wq = np.full(grid, 1.0 / (grid - 1))
    wq[[0, -1]] *= 0.5                                                     # trapezoid rule
    gamma = (r * (k * wq)[:, None]).T @ r
    lam = (r * (k * wq * u ** (p + 1))[:, None]).sum(axis=0)
    psi = (r * (k * k * wq)[:, None]).T @ r
    g_inv = np.linalg.inv(gamma)
    return float((g_inv @ lam)[0]), float((g_inv @ psi @ g_inv)[0, 0])


def _global_pilot(d: np.ndarray, y: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading coefficient (``μ^{(order)}/order!``) and residual variance of a global polynomial fit of each
    column of ``y`` on ``d``."""
    design = d[:, None] ** np.arange(order + 1)
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    dof = max(d.size - order - 1, 1)
    return beta[order], (resid ** 2).sum(axis=0) / dof


def min_bandwidth(x: np.ndarray, cutoff: float, p: int, min_units: int | None = None) -> float:
    """The smallest bandwidth that keeps ``min_units`` (default ``max(2(p + 2), 10)``) units strictly inside
    it on each side of the cutoff."""
    need = max(2 * (p + 2), 10) if min_units is None else int(min_units)
    d = np.asarray(x, dtype=np.float64) - cutoff
    out = []
    for side in (d[d >= 0], -d[d < 0]):
        if side.size < need:
            raise R3DError(f"too few units on one side of the cutoff {cutoff:g}: {side.size} "
                           f"(above: {int((d >= 0).sum())}, below: {int((d < 0).sum())}); the order-{p} fit and its "
                           f"bias correction need at least {need} on each side")
        out.append(np.partition(side, need - 1)[need - 1])
    return float(max(out) * (1.0 + 1e-9) + 1e-12)


def mse_bandwidth(x: np.ndarray, qmat: np.ndarray, cutoff: float = 0.0, p: int = 2,
                  kernel: Kernel = "epanechnikov", method: str = "simple") -> np.ndarray:
    """The rule-of-thumb MSE-optimal bandwidth (module docstring): one per column of ``qmat`` for
    ``method="simple"``, one (integrated over the quantile grid, returned repeated) for ``"frechet"``.
    Clipped to ``[min_bandwidth, max |X − c|]``."""
    x = np.asarray(x, dtype=np.float64)
    qmat = np.asarray(qmat, dtype=np.float64).reshape(x.size, -1)
    d = x - cutoff
    lo = min_bandwidth(x, cutoff, p)
    hi = float(np.abs(d).max())
    c_b, c_v = _kernel_constants(p, kernel)
    above, below = d >= 0, d < 0
    coef_p, var_p = _global_pilot(d[above], qmat[above], p + 1)
    coef_m, var_m = _global_pilot(d[below], qmat[below], p + 1)
    bias = c_b * (coef_p - (-1) ** (p + 1) * coef_m)                       # μ^{(p+1)}/(p+1)! already in coef
    # density of X at the cutoff: Gaussian-reference bandwidth, the chosen kernel
    s = float(np.std(x, ddof=1)) if x.size > 1 else 1.0
    c_n = 1.06 * max(s, 1e-12) * x.size ** (-0.2)
    f_c = float(np.mean(kernel_values(d / c_n, kernel)) / c_n)
    variance = c_v * (var_p + var_m) / max(f_c, 1e-12)
    n = x.size
    if method == "frechet":
        b2, v = float(np.mean(bias ** 2)), float(np.mean(variance))
        h = (v / (2 * (p + 1) * n * b2)) ** (1 / (2 * p + 3)) if b2 > 1e-14 else hi
        return np.full(qmat.shape[1], float(np.clip(h, lo, max(lo, hi))))
    if method != "simple":
        raise R3DError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (variance / (2 * (p + 1) * n * bias ** 2)) ** (1 / (2 * p + 3))
    h = np.where(np.isfinite(h), h, hi)
    return np.clip(h, lo, max(lo, hi))


# ------------------------------------------------------------------------------------ the estimator
@dataclass
class TestResult:
    """A bootstrap test: statistic, critical value at ``alpha``, p-value, and whether it rejects."""

    name: str
    statistic: float
    critical_value: float
    p_value: float
    alpha: float

    @property
    def reject(self) -> bool:
        return self.statistic > self.critical_value


@dataclass
class R3DResult:
    """What :func:`r3d` estimates, on the quantile grid ``q``.

    ``tau`` is the conventional estimate (order ``p`` at ``h``), ``tau_bc`` the bias-corrected one (the
    band's centre), ``se`` the robust standard error of ``tau_bc``, ``lower``/``upper`` the uniform band.
    ``m_plus``/``m_minus`` are the side limits of ``E[Q(q)|X=x]`` (projected to be monotone for
    ``frechet``; for the fuzzy design, of the reduced form). ``boot`` holds the raw multiplier draws
    ``T*(q)`` ``[B, K]``.
    """

    q: np.ndarray
    tau: np.ndarray
    tau_bc: np.ndarray
    se: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    critical_value: float
    alpha: float
    h: np.ndarray
    b: np.ndarray
    m_plus: np.ndarray
    m_minus: np.ndarray
    method: str
    p: int
    kernel: str
    n_plus: int
    n_minus: int
    first_stage: float | None = None
    boot: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    dof: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    """Satterthwaite degrees of freedom ``(Σ w_i²)² / Σ w_i⁴`` of each quantile's bias-corrected weights."""
    scale: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    """The small-sample widening of the band at each quantile (1 without ``dof_correction``)."""

    def covers(self, truth: np.ndarray | float) -> bool:
        """Whether the uniform band contains ``truth(q)`` at every grid point."""
        t = np.broadcast_to(np.asarray(truth, dtype=np.float64), self.q.shape)
        return bool(np.all((self.lower <= t) & (t <= self.upper)))

    def _scale(self) -> np.ndarray:
        return self.scale if self.scale.size == self.q.size else np.ones(self.q.size)

    def _range(self, q_range: tuple[float, float] | None) -> np.ndarray:
        if q_range is None:
            return np.ones(self.q.size, dtype=bool)
        lo, hi = q_range
        sel = (self.q >= lo - 1e-12) & (self.q <= hi + 1e-12)
        if not sel.any():
            raise R3DError(f"no quantile of the grid lies in {q_range}")
        return sel

    def nullity_test(self, q_range: tuple[float, float] | None = None) -> TestResult:
        """H0: ``τ(q) = 0`` for every ``q`` in ``q_range`` (default: the whole grid). Studentised sup-test
        with the multiplier draws (and the band's small-sample widening): over the whole grid it rejects
        exactly when the uniform band leaves 0."""
        sel = self._range(q_range)
        se = self.se[sel]
        stat = float(np.max(np.abs(self.tau_bc[sel]) / (se * self._scale()[sel])))
        sup = np.max(np.abs(self.boot[:, sel]) / se, axis=1)
        return TestResult("nullity", stat, _upper_quantile(sup, self.alpha), float(np.mean(sup >= stat)), self.alpha)

    def homogeneity_test(self, q_range: tuple[float, float] | None = None) -> TestResult:
        """H0: ``τ(q)`` is constant over ``q_range``. Statistic ``sup_q |τ̂(q) − mean τ̂| / s(q)`` with the draws
        centred at their own mean over ``q`` and ``s(q)`` their standard deviation."""
        sel = self._range(q_range)
        if sel.sum() < 2:
            raise R3DError("the homogeneity test needs at least two quantiles in the range")
        tau = self.tau_bc[sel]
        draws = self.boot[:, sel] - self.boot[:, sel].mean(axis=1, keepdims=True)
        s = np.sqrt(np.maximum(np.einsum("bk,bk->k", draws, draws) / draws.shape[0], 1e-300))
        stat = float(np.max(np.abs(tau - tau.mean()) / (s * self._scale()[sel])))
        sup = np.max(np.abs(draws) / s, axis=1)
        return TestResult("homogeneity", stat, _upper_quantile(sup, self.alpha), float(np.mean(sup >= stat)),
                          self.alpha)


def r3d(x: np.ndarray, samples: np.ndarray | Sequence[np.ndarray], cutoff: float = 0.0,
        q: np.ndarray | Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), *,
        method: str = "frechet", p: int = 2, kernel: Kernel = "epanechnikov",
        h: float | np.ndarray | None = None, b: float | np.ndarray | None = None,
        treatment: np.ndarray | None = None, n_boot: int = 200, alpha: float = 0.05,
        rng: np.random.Generator | int | None = None, quantile_method: str = "linear",
        vce: str = "hc2", dof_correction: bool = True) -> R3DResult:
    """Estimate the local average quantile treatment effect ``τ(q)`` and its uniform band (module docstring).

    ``x``: running variable ``[n]``; ``samples``: ``[n, m]`` outcome draws or ``n`` 1-D arrays; ``treatment``:
    the 0/1 treatment taken, for the **fuzzy** design (``None``: sharp, treated iff ``x ≥ cutoff``); its first
    stage gets its own MSE-optimal bandwidth; it must jump by more than one robust standard error
    (:class:`R3DError` otherwise) and warns (:class:`WeakFirstStageWarning`) below √10 of them. ``h``:
    bandwidth (scalar, or one per quantile for ``simple``; ``None`` = :func:`mse_bandwidth`), ``b``: the bias
    correction's pilot bandwidth (``None`` = ``h``). ``n_boot`` multiplier draws give the ``1 − alpha``
    uniform band and the tests' null distribution.
    """
    if method not in METHODS:
        raise R3DError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if vce not in VCES:
        raise R3DError(f"vce must be one of {', '.join(VCES)}, got {vce!r}")
    if kernel not in KERNELS:
        raise R3DError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or not 0 <= p <= 5:
        raise R3DError(f"p must be an integer in [0, 5], got {p!r}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise R3DError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise R3DError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(cutoff, float | int | np.floating | np.integer) and math.isfinite(cutoff)):
        raise R3DError(f"cutoff must be a finite number, got {cutoff!r}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    _check_finite("x", x)
    q = _check_q(q)
    qmat = quantile_matrix(samples, q, quantile_method)
    if qmat.shape[0] != x.size:
        raise R3DError(f"x has {x.size} units but samples has {qmat.shape[0]}")
    n_plus, n_minus = int((x >= cutoff).sum()), int((x < cutoff).sum())
    if min(n_plus, n_minus) < p + 2:
        raise R3DError(f"too few units on one side of the cutoff {cutoff:g} (above: {n_plus}, below: {n_minus}); "
                       f"an order-{p} fit with its bias correction needs at least {p + 2} on each side")
    k = q.size
    if h is None:
        h_vec = mse_bandwidth(x, qmat, cutoff, p, kernel, method)
    else:
        h_vec = _bandwidth_vector("h", h, k, method)
    b_vec = h_vec.copy() if b is None else _bandwidth_vector("b", b, k, method)

    plus = _side(x, cutoff, h_vec, b_vec, p, +1, kernel)
    minus = _side(x, cutoff, h_vec, b_vec, p, -1, kernel)
    m_plus = np.einsum("kn,nk->k", plus.w_conv, qmat)
    m_minus = np.einsum("kn,nk->k", minus.w_conv, qmat)
    bc_plus = np.einsum("kn,nk->k", plus.w_bc, qmat)
    bc_minus = np.einsum("kn,nk->k", minus.w_bc, qmat)
    if method == "frechet":
        m_plus, m_minus = isotonic(m_plus), isotonic(m_minus)
        bc_plus, bc_minus = isotonic(bc_plus), isotonic(bc_minus)
    # influence of each unit on the bias-corrected effect: w_bc(q) ê(q), both sides in one [n, K] matrix
    infl = (plus.w_bc.T * _residuals(plus, x, cutoff, qmat, vce)
            - minus.w_bc.T * _residuals(minus, x, cutoff, qmat, vce))
    tau, tau_bc = m_plus - m_minus, bc_plus - bc_minus

    first_stage = None
    if treatment is not None:
        t = np.asarray(treatment, dtype=np.float64).reshape(-1)
        if t.size != x.size or not np.all((t == 0) | (t == 1)):
            raise R3DError(f"treatment must be {x.size} values in {{0, 1}}")
        # the first stage has its own MSE-optimal bandwidth (or the median of given outcome bandwidths)
        ht = mse_bandwidth(x, t[:, None], cutoff, p, kernel, "frechet") if h is None \
            else np.array([float(np.median(h_vec))])
        bt = ht.copy() if b is None else np.array([float(np.median(b_vec))])
        tp, tm = _side(x, cutoff, ht, bt, p, +1, kernel), _side(x, cutoff, ht, bt, p, -1, kernel)
        jump = float(tp.w_conv[0] @ t - tm.w_conv[0] @ t)
        jump_bc = float(tp.w_bc[0] @ t - tm.w_bc[0] @ t)
        infl_t = (tp.w_bc[0] * _residuals(tp, x, cutoff, t[:, None], vce)[:, 0]
                  - tm.w_bc[0] * _residuals(tm, x, cutoff, t[:, None], vce)[:, 0])
        se_t = float(np.sqrt((infl_t ** 2).sum()))
        if abs(jump_bc) < se_t or abs(jump) < 1e-3:
            raise R3DError(f"the treatment probability does not jump at the cutoff (estimated jump {jump_bc:.3g}, "
                           f"robust se {se_t:.3g}): the fuzzy (Wald) ratio is not identified by this first stage")
        if abs(jump_bc) < WEAK_FIRST_STAGE_T * se_t:
            warnings.warn(f"weak first stage: the treatment jump {jump_bc:.3g} is {abs(jump_bc) / se_t:.2f} robust "
                          f"standard errors (< {WEAK_FIRST_STAGE_T:.2f}, i.e. F < 10): the Wald ratio and its band "
                          "may be unreliable", WeakFirstStageWarning, stacklevel=2)
        tau, tau_bc = tau / jump, tau_bc / jump_bc
        infl = (infl - tau_bc[None, :] * infl_t[:, None]) / jump_bc         # delta method of the ratio
        first_stage = jump

    se = np.sqrt(np.maximum((infl ** 2).sum(axis=0), 1e-300))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    active = np.flatnonzero(np.any(infl != 0.0, axis=1))                  # units inside some window
    boot = gen.standard_normal((int(n_boot), active.size)) @ infl[active]   # T*(q) [B, K]
    sup = np.max(np.abs(boot) / se, axis=1)
    crit = _upper_quantile(sup, alpha)
    w_all = plus.w_bc - minus.w_bc                                          # [K, n]
    dof = (w_all ** 2).sum(axis=1) ** 2 / np.maximum((w_all ** 4).sum(axis=1), 1e-300)
    scale = _t_over_normal(crit, dof) if dof_correction else np.ones(k)
    half = crit * se * scale
    return R3DResult(q=q, tau=tau, tau_bc=tau_bc, se=se, lower=tau_bc - half, upper=tau_bc + half,
                     critical_value=crit, alpha=float(alpha), h=h_vec, b=b_vec, m_plus=m_plus, m_minus=m_minus,
                     method=method, p=int(p), kernel=kernel, n_plus=n_plus, n_minus=n_minus,
                     first_stage=first_stage, boot=boot, dof=dof, scale=scale)


# --------------------------------------------------------------------------- the naive baseline
def pooled_quantile_rd(x: np.ndarray, samples: np.ndarray, cutoff: float = 0.0,
                       q: np.ndarray | Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9), *,
                       h: float, p: int = 1, kernel: Kernel = "epanechnikov", grid_size: int = 512) -> np.ndarray:
    """The naive quantile RD on the **pooled** outcomes: a local polynomial (order ``p``) of the pooled CDF
    ``F_i(y) = (1/m) Σ_j 1[Y_ij ≤ y]`` at the cutoff on each side, made monotone and inverted at ``q``
    (the quantile RD of Frandsen, Frölich & Melly 2012 applied to all draws). It estimates the jump of the
    quantiles of the *mixture* of the units' distributions, not the LAQTE (digest §3, DGP3)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] != x.size:
        raise R3DError(f"samples must be an [n, m] array with n = {x.size} units")
    _check_finite("samples", samples)
    q = _check_q(q)
    grid = np.quantile(samples, np.linspace(0.0, 1.0, grid_size))
    # F_i(grid) for all units, in chunks of units so the [chunk, m, G] comparison stays small
    chunk = max(1, 4_000_000 // (samples.shape[1] * grid.size))
    cdf = np.concatenate([(samples[i:i + chunk, :, None] <= grid).mean(axis=1)
                          for i in range(0, x.size, chunk)])                                  # [n, G]
    out = []
    for side in (+1, -1):
        w = local_poly_operator(x, cutoff, float(h), p, side, kernel)[0]                      # intercept weights
        f = np.clip(w @ cdf, 0.0, 1.0)
        f = np.maximum.accumulate(f)                                                          # rearranged CDF
        idx = np.minimum(np.searchsorted(f, q, side="left"), grid.size - 1)
        out.append(grid[idx])
    return out[0] - out[1]


# --------------------------------------------------------------------------------------- helpers
def _check_q(q: np.ndarray | Sequence[float]) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    if q.size == 0 or np.any(~np.isfinite(q)) or np.any((q <= 0) | (q >= 1)) or np.any(np.diff(q) <= 0):
        raise R3DError(f"q must be a non-empty increasing grid inside (0, 1), got {q[:6]}")
    return q


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.size == 0:
        raise R3DError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise R3DError(f"{name} holds NaN or inf values")


def _bandwidth_vector(name: str, value: float | np.ndarray, k: int, method: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size == 1:
        v = np.full(k, float(v[0]))
    if v.size != k:
        raise R3DError(f"{name} must be a scalar or one bandwidth per quantile ({k}), got {v.size} values")
    if method == "frechet" and np.ptp(v) > 0:
        raise R3DError(f"method='frechet' uses one bandwidth for all quantiles; got several values of {name}")
    if np.any(~np.isfinite(v)) or np.any(v <= 0):
        raise R3DError(f"{name} must be finite and > 0, got {value!r}")
    return v


def _t_over_normal(z: float, dof: np.ndarray) -> np.ndarray:
    """``t_ν⁻¹(Φ(z)) / z``: how much wider a Student-t quantile at ``ν`` degrees of freedom is than the normal
    one at the same level (the Cornish–Fisher expansion of Abramowitz & Stegun 26.7.5, ``ν`` floored at 4)."""
    nu = np.maximum(np.asarray(dof, dtype=np.float64), 4.0)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return (z + g1 / nu + g2 / nu ** 2 + g3 / nu ** 3) / z


def _upper_quantile(draws: np.ndarray, alpha: float) -> float:
    """The ``⌈(1 − α)(B + 1)⌉``-th smallest draw (the bootstrap critical value)."""
    srt = np.sort(draws)
    k = min(int(math.ceil((1 - alpha) * (srt.size + 1))), srt.size)
    return float(srt[k - 1])
