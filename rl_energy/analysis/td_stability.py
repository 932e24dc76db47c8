"""Stability of TD with a target network: partially fitted policy evaluation (PFPE) on a linear MDP.

Fellows, Smith & Whiteson (ICML 2023), "Why target networks stabilise temporal difference methods"
(TD digest §1-§3). PFPE takes ``k`` semi-gradient steps against a frozen target ``w̄`` before copying
the online weights into it (``k = 1`` is TD, ``k → ∞`` fitted policy evaluation). With linear values
``V(s) = x(s)ᵀw``, data ``s ~ d, a ~ μ(·|s), s' ~ P(·|s, a)`` and importance ratio ``ρ = π(a|s)/μ(a|s)``
the expected inner step is

    w ← w + α (b + γΦ' w̄ − Φ w),   Φ = XᵀDX,  Φ' = XᵀD P_π X,  b = XᵀD r_π,

whose matrices are (digest §2)

* ``H = Φ`` (the Hessian of the inner loss ``L(w; w̄) = ½ E[ρ (r + γ x'ᵀw̄ − xᵀw)²]``),
* ``J_δ = γΦ'`` (the Jacobian with respect to the target),
* ``J_TD = γΦ' − Φ`` (TD's expected-update Jacobian: TD is stable iff its eigenvalues have negative
  real part),
* ``J_FPE = Φ⁺γΦ'`` (the iteration matrix of fitted evaluation).

One target period maps ``w̄_l`` to ``w̄_{l+1} = M_k w̄_l + c_k`` with the **PFPE iteration matrix**

    M_k = (I − αΦ)^k + Σ_{j<k} (I − αΦ)^j αγΦ',    c_k = Σ_{j<k} (I − αΦ)^j α b,

so the expected dynamics converge iff the spectral radius ``ρ(M_k) < 1``. When features outnumber
states ``Φ`` is singular: on its null space (weights that change no value) ``M_k`` is the identity, so
the radius is taken on ``range(Φ)``, which ``M_k`` maps into itself. :func:`condition_function` is the
paper's sufficient bound ``C(α, k)`` (Def. 1, reconstructed in digest §3).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LinearMDP:
    """A finite MDP with linear state-value features, a behaviour and a target policy.

    Shapes: ``features [S, F]``, ``rewards [S, A]`` (expected reward of each state-action),
    ``transitions [S, A, S]``, ``behaviour`` and ``target [S, A]`` (action probabilities),
    ``state_dist [S]`` (the distribution ``d`` the updates sample states from).
    """

    features: np.ndarray
    rewards: np.ndarray
    transitions: np.ndarray
    behaviour: np.ndarray
    target: np.ndarray
    state_dist: np.ndarray
    gamma: float

    def __post_init__(self) -> None:
        s, f = self.features.shape
        a = self.rewards.shape[1]
        shapes = {"rewards": (s, a), "transitions": (s, a, s), "behaviour": (s, a), "target": (s, a),
                  "state_dist": (s,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"LinearMDP.{name} must have shape {shape}, got {getattr(self, name).shape}")
        if np.any((self.target > 0) & (self.behaviour <= 0)):
            raise ValueError("LinearMDP: the target policy takes an action the behaviour policy never takes")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"LinearMDP.gamma must be in [0, 1), got {self.gamma}")

    @property
    def importance_ratios(self) -> np.ndarray:
        """``ρ(s, a) = π(a|s) / μ(a|s)`` (0 where μ is 0)."""
        return np.divide(self.target, self.behaviour, out=np.zeros_like(self.target), where=self.behaviour > 0)

    @property
    def target_transitions(self) -> np.ndarray:
        """``P_π[s, s'] = Σ_a π(a|s) P(s'|s, a)``."""
        return np.einsum("sa,sat->st", self.target, self.transitions)


@dataclass(frozen=True)
class TDMatrices:
    """The expected-update matrices of a :class:`LinearMDP` (module docstring)."""

    phi: np.ndarray
    phi_next: np.ndarray
    b: np.ndarray
    gamma: float
    range_basis: np.ndarray
    """Orthonormal columns spanning ``range(Φ)``: the weight directions that change some value."""

    @property
    def hessian(self) -> np.ndarray:
        return self.phi

    @property
    def j_delta(self) -> np.ndarray:
        return self.gamma * self.phi_next

    @property
    def j_td(self) -> np.ndarray:
        return self.gamma * self.phi_next - self.phi

    @property
    def j_fpe(self) -> np.ndarray:
        return np.linalg.pinv(self.phi) @ (self.gamma * self.phi_next)

    def on_range(self, m: np.ndarray) -> np.ndarray:
        """``m`` restricted to ``range(Φ)`` (in the coordinates of :attr:`range_basis`)."""
        return self.range_basis.T @ m @ self.range_basis


def td_matrices(mdp: LinearMDP, tol: float = 1e-10) -> TDMatrices:
    """``Φ = XᵀDX``, ``Φ' = XᵀDP_πX`` and ``b = XᵀD r_π`` of ``mdp`` (digest §2)."""
    x, d = mdp.features.astype(np.float64), mdp.state_dist.astype(np.float64)
    phi = x.T @ (d[:, None] * x)
    phi_next = x.T @ (d[:, None] * (mdp.target_transitions @ x))
    b = x.T @ (d * (mdp.target * mdp.rewards).sum(1))
    eigval, eigvec = np.linalg.eigh(phi)
    basis = eigvec[:, eigval > tol * max(1.0, eigval.max())]
    return TDMatrices(phi, phi_next, b, mdp.gamma, basis)


def spectral_radius(m: np.ndarray) -> float:
    return float(np.abs(np.linalg.eigvals(m)).max())


def pfpe_map(mats: TDMatrices, alpha: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M_k, c_k)``: one target period of expected PFPE, ``w̄ ← M_k w̄ + c_k``."""
    if k < 1:
        raise ValueError(f"the target period k must be >= 1, got {k}")
    n = mats.phi.shape[0]
    a = np.eye(n) - alpha * mats.phi
    power, geometric = np.eye(n), np.zeros((n, n))  # A^j and Σ_{i<j} A^i
    for _ in range(k):
        geometric += power
        power = a @ power
    return power + geometric @ (alpha * mats.j_delta), geometric @ (alpha * mats.b)


def pfpe_radius(mats: TDMatrices, alpha: float, k: int) -> float:
    """``ρ(M_k)`` on ``range(Φ)``: the expected dynamics converge iff it is below 1."""
    return spectral_radius(mats.on_range(pfpe_map(mats, alpha, k)[0]))


def smallest_stable_k(mats: TDMatrices, alpha: float, k_max: int = 100_000) -> int | None:
    """The smallest target period ``k`` with ``ρ(M_k) < 1`` at step size ``alpha`` (None up to ``k_max``).

    Builds ``M_k`` incrementally (``M_{k+1} = A M_k + αγΦ'`` with ``A = I − αΦ``), one matrix product per k.
    """
    n = mats.phi.shape[0]
    a, step = np.eye(n) - alpha * mats.phi, alpha * mats.j_delta
    m = a + step
    for k in range(1, k_max + 1):
        if spectral_radius(mats.on_range(m)) < 1.0:
            return k
        m = a @ m + step
    return None


def _operator_norm(m: np.ndarray) -> float:
    return float(np.linalg.norm(m, 2))


def _condition_terms(mats: TDMatrices, alpha: float) -> tuple[float, float, float]:
    """``(|1 − αλ*_H|, ‖I + αJ_TD‖, ‖J_FPE‖)`` on ``range(Φ)``: the ingredients of ``C(α, k)``."""
    lam = np.linalg.eigvalsh(mats.on_range(mats.phi))
    eye = np.eye(mats.range_basis.shape[1])
    return (float(np.abs(1.0 - alpha * lam).max()), _operator_norm(eye + alpha * mats.on_range(mats.j_td)),
            _operator_norm(mats.on_range(mats.j_fpe)))


def condition_function(mats: TDMatrices, alpha: float, k: int | np.ndarray) -> np.ndarray:
    """The paper's bound (Def. 1, digest §3), operator 2-norms on ``range(Φ)``:

        C(α, k) = |1 − αλ*_H|^{k−1} ‖I + αJ_TD‖ + (1 + |1 − αλ*_H|^{k−1}) ‖J_FPE‖,

    with ``λ*_H`` the nonzero Hessian eigenvalue maximising ``|1 − αλ|``. ``C < 1`` is sufficient for
    geometric convergence (Thm. 3); it needs ``‖J_FPE‖ < 1`` (the FPE-stability Assumption 5).
    """
    contraction, td_norm, fpe_norm = _condition_terms(mats, alpha)
    decay = contraction ** (np.asarray(k, dtype=np.float64) - 1.0)
    return decay * td_norm + (1.0 + decay) * fpe_norm


def condition_threshold_k(mats: TDMatrices, alpha: float) -> float | None:
    """Theorem 4's ``k*``: the smallest real ``k`` with ``C(α, k) < 1``, or None if no k reaches it
    (``‖J_FPE‖ ≥ 1``, or ``|1 − αλ*_H| ≥ 1``)."""
    contraction, td_norm, fpe_norm = _condition_terms(mats, alpha)
    if fpe_norm >= 1.0 or contraction >= 1.0:
        return None
    if td_norm + 2 * fpe_norm < 1.0:
        return 1.0
    return 1.0 + math.log((1.0 - fpe_norm) / (td_norm + fpe_norm)) / math.log(contraction)


def expected_pfpe(mats: TDMatrices, alpha: float, k: int, w0: np.ndarray, updates: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Expected PFPE from ``w̄_0 = w0`` for ``updates`` inner steps: ``(update counts, weights)`` at the
    start and after every target period (whole periods through ``w̄ ← M_k w̄ + c_k``; a last partial
    period, if any, step by step)."""
    m, c = pfpe_map(mats, alpha, k)
    w = np.asarray(w0, dtype=np.float64).copy()
    steps, out = [0], [w.copy()]
    with np.errstate(over="ignore", invalid="ignore"):
        for period in range(1, updates // k + 1):
            w = m @ w + c
            steps.append(period * k)
            out.append(w.copy())
        if updates % k:
            a, target = np.eye(len(w)) - alpha * mats.phi, alpha * (mats.j_delta @ w + mats.b)
            for _ in range(updates % k):
                w = a @ w + target
            steps.append(updates)
            out.append(w.copy())
    return np.asarray(steps), np.asarray(out)


def sampled_pfpe(mdp: LinearMDP, alpha: float, k: int, w0: np.ndarray, updates: int, seeds: int = 5,
                 record_every: int = 100, seed: int = 0) -> np.ndarray:
    """Sampled PFPE, ``seeds`` independent runs at once: each update draws ``s ~ d``, ``a ~ μ(·|s)``,
    ``s' ~ P(·|s, a)`` and applies ``w ← w + α ρ (r + γ x(s')ᵀw̄ − x(s)ᵀw) x(s)``; the target copies
    ``w`` every ``k`` updates. Returns the weights every ``record_every`` updates, ``[seeds, points, F]``
    (non-finite once a run overflows)."""
    rng = np.random.default_rng(seed)
    x = mdp.features.astype(np.float64)
    n_states, n_actions = mdp.rewards.shape
    rho = mdp.importance_ratios
    cum_d = np.cumsum(mdp.state_dist)
    cum_mu = np.cumsum(mdp.behaviour, 1)
    cum_p = np.cumsum(mdp.transitions, 2)
    w = np.tile(np.asarray(w0, dtype=np.float64), (seeds, 1))
    w_bar = w.copy()
    out = [w.copy()]
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(1, updates + 1):
            u = rng.random((seeds, 3))
            s = np.minimum(np.searchsorted(cum_d, u[:, 0], side="right"), n_states - 1)
            a = np.minimum((u[:, 1:2] >= cum_mu[s]).sum(1), n_actions - 1)
            s2 = np.minimum((u[:, 2:3] >= cum_p[s, a]).sum(1), n_states - 1)
            xs = x[s]
            delta = mdp.rewards[s, a] + mdp.gamma * (x[s2] * w_bar).sum(1) - (xs * w).sum(1)
            w = w + (alpha * rho[s, a] * delta)[:, None] * xs
            if i % k == 0:
                w_bar = w.copy()
            if i % record_every == 0:
                out.append(w.copy())
    return np.stack(out, 1)


# --------------------------------------------------------------------------------------------------
# Report: the table and figures of ``rl-energy analyze td``
# --------------------------------------------------------------------------------------------------

DIVERGED, CONVERGED = 100.0, 0.1
"""Outcome thresholds on the value error ratio ``‖Xw_N‖_D / ‖Xw_0‖_D`` (see :func:`outcome`)."""


def value_error(mdp: LinearMDP, w: np.ndarray) -> np.ndarray:
    """``‖X w − v_π‖_D``, the d-weighted RMS error of the values (``w`` may be batched ``[..., F]``),
    against the true ``v_π = (I − γP_π)⁻¹ r_π``."""
    p = mdp.target_transitions
    v_true = np.linalg.solve(np.eye(len(p)) - mdp.gamma * p, (mdp.target * mdp.rewards).sum(1))
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.asarray(w) @ mdp.features.T - v_true
        return np.sqrt((err**2 * mdp.state_dist).sum(-1))


def outcome(ratio: float) -> str:
    """``diverged`` (non-finite, or the value error grew over ``DIVERGED``-fold), ``converged`` (it fell
    below ``CONVERGED`` times its start) or ``undecided``."""
    if not math.isfinite(ratio) or ratio > DIVERGED:
        return "diverged"
    return "converged" if ratio < CONVERGED else "undecided"


@dataclass
class TDRow:
    k: int
    radius: float
    condition: float
    expected_w_norm: float
    expected_ratio: float
    sampled_w_norm: float
    """Median over seeds."""
    sampled_ratios: list[float]
    expected_curve: tuple[np.ndarray, np.ndarray]
    sampled_curve: tuple[np.ndarray, np.ndarray]
    """Update counts and the value error of each seed ``[seeds, points]``."""

    @property
    def stable(self) -> bool:
        return self.radius < 1.0


def td_report(mdp: LinearMDP, alpha: float, ks: list[int], w0: np.ndarray, updates: int = 50_000,
              seeds: int = 5, seed: int = 0) -> list[TDRow]:
    """Per ``k``: ``ρ(M_k)``, ``C(α, k)``, and ``updates`` expected and sampled PFPE updates from ``w0``."""
    mats = td_matrices(mdp)
    start = float(value_error(mdp, w0))
    rows = []
    for k in ks:
        steps, w_exp = expected_pfpe(mats, alpha, k, w0, updates)
        every = max(1, updates // 500)
        w_smp = sampled_pfpe(mdp, alpha, k, w0, updates, seeds=seeds, record_every=every, seed=seed)
        err_smp = value_error(mdp, w_smp)
        with np.errstate(over="ignore", invalid="ignore"):
            rows.append(TDRow(
                k=k,
                radius=pfpe_radius(mats, alpha, k),
                condition=float(condition_function(mats, alpha, k)),
                expected_w_norm=float(np.linalg.norm(w_exp[-1])),
                expected_ratio=float(value_error(mdp, w_exp[-1])) / start,
                sampled_w_norm=float(np.median(np.linalg.norm(w_smp[:, -1], axis=-1))),
                sampled_ratios=(err_smp[:, -1] / start).tolist(),
                expected_curve=(steps, value_error(mdp, w_exp)),
                sampled_curve=(np.arange(err_smp.shape[1]) * every, err_smp),
            ))
    return rows


def format_report(rows: list[TDRow], mdp: LinearMDP, alpha: float, updates: int, env_id: str = "") -> str:
    mats = td_matrices(mdp)
    eig = np.linalg.eigvals(mats.j_td)
    k_star = smallest_stable_k(mats, alpha)
    k_bound = condition_threshold_k(mats, alpha)
    fpe = _condition_terms(mats, alpha)[2]
    lines = [
        f"TD stability of {env_id or 'the linear MDP'}: alpha = {alpha}, gamma = {mdp.gamma}, "
        f"{len(mdp.state_dist)} states, {mdp.features.shape[1]} features",
        f"eigenvalues of J_TD (real parts): {', '.join(f'{v:+.4f}' for v in np.sort(eig.real))}",
        f"TD (k = 1) expected dynamics: {'unstable' if eig.real.max() > 1e-12 else 'stable'} "
        f"(largest real part {eig.real.max():+.4f})",
        f"rho(J_FPE) = {spectral_radius(mats.on_range(mats.j_fpe)):.4f}, ||J_FPE||_2 = {fpe:.4f}",
        f"smallest k with rho(M_k) < 1: {k_star if k_star is not None else 'none up to 100000'}",
        "smallest k with C(alpha, k) < 1 (Thm. 4 bound): "
        + (f"{math.ceil(k_bound)}" if k_bound is not None else f"none (needs ||J_FPE|| < 1, here {fpe:.3f})"),
        "",
        f"value error ratio = ||Xw - v||_D after {updates} updates / at the start; "
        f"diverged > {DIVERGED:g}, converged < {CONVERGED:g}",
        f"{'k':>6} {'rho(M_k)':>10} {'stable':>7} {'C(a,k)':>8} {'|w| exp':>10} {'ratio exp':>10} "
        f"{'expected':>10} {'|w| smp':>10} {'sampled (per seed)':>20}",
    ]
    for r in rows:
        outcomes = [outcome(x) for x in r.sampled_ratios]
        summary = ", ".join(f"{outcomes.count(o)} {o}" for o in ("diverged", "converged", "undecided")
                            if outcomes.count(o))
        lines.append(f"{r.k:>6} {r.radius:>10.5f} {'yes' if r.stable else 'no':>7} {r.condition:>8.3f} "
                     f"{r.expected_w_norm:>10.3g} {r.expected_ratio:>10.3g} {outcome(r.expected_ratio):>10} "
                     f"{r.sampled_w_norm:>10.3g} {summary:>20}")
    return "\n".join(lines)


def write_figures(rows: list[TDRow], mdp: LinearMDP, alpha: float, out_dir: str | Path) -> list[Path]:
    """``value_error.png`` (per k: expected, and the sampled seeds' median) and ``spectral_radius.png``
    (``ρ(M_k)`` and ``C(α, k)`` against k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        color = f"C{i}"
        ax.plot(*r.expected_curve, color=color, label=f"k = {r.k} expected")
        steps, err = r.sampled_curve
        with warnings.catch_warnings():  # all seeds overflowed: the median is NaN, nothing is drawn
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(steps, np.nanmedian(np.where(np.isfinite(err), err, np.nan), 0), color=color, ls="--",
                    label=f"k = {r.k} sampled (median)")
    ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("value error ||Xw - v||_D")
    ax.set_title(f"PFPE, alpha = {alpha}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = [out / "value_error.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    mats = td_matrices(mdp)
    ks = np.unique(np.geomspace(1, max(2000, 2 * max(r.k for r in rows)), 120).astype(int))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [pfpe_radius(mats, alpha, int(k)) for k in ks], label="rho(M_k)")
    ax.plot(ks, condition_function(mats, alpha, ks), label="C(alpha, k)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("target period k")
    ax.set_title(f"alpha = {alpha}")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "spectral_radius.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
