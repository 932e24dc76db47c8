"""Continuous target shift: the ReTaSA importance weight and its baselines, in numpy.

Kim, Zhang, Zhao & Tian (ICLR 2024), "ReTaSA: a nonparametric functional estimation approach for addressing
continuous target shift" (arXiv 2401.16410; digest ``one-step-tasks.md`` §2). The source law ``p_s(x, y)`` is
labelled, the target law ``p_t(x, y)`` only through its inputs, and the shift is in the labels alone:
``p_t(x|y) = p_s(x|y)``, ``p_t(y) ≠ p_s(y)``. The importance weight ``ω(y) = p_t(y)/p_s(y)`` then makes the
source risk ``E_s[ω(Y) ℓ(f(X), Y)]`` equal to the target risk (weighted ERM, :func:`weighted_kernel_ridge`).

**The integral equation** (paper §2-§3; the digest's derivation, re-derived here [derived]). Write
``ρ = ω − 1``. Since ``p_t(x) = ∫ p(x|y) p_t(y) dy``,

    (Kρ)(x) := E_s[ρ(Y) | X = x] = p_t(x)/p_s(x) − 1 =: η(x),

a Fredholm equation of the first kind (ill-posed: ``K`` is compact). The Tikhonov solution
``ρ_α = argmin ‖Kρ − η‖² + α‖ρ‖²`` (norms of ``L²(p_s)``) solves the normal equation

    (αI + K*K) ρ = K*η,    (K*g)(y) = E_s[g(X) | Y = y],    K*η(y) = E_t[p_s(y|X)] / p_s(y) − 1.

**The KDE linear system** [derived; the paper's matrices may differ in detail]. At the ``n`` source labels,
with Gaussian kernels of bandwidths ``h_x``, ``h_y`` and the Nadaraya–Watson matrices

* ``A[i, k] = K_hy(y_i − y_k) / Σ_l K_hy(y_i − y_l)``  (``E_s[·|Y = y_i]``, the discrete ``K*``),
* ``B[k, j] = K_hx(x_k − x_j) / Σ_l K_hx(x_k − x_l)``  (``E_s[·|X = x_k]``, the discrete ``K``),
* ``B_t[r, k]``: the same weights for the ``m`` target inputs ``x'_r`` over the source inputs,

the plug-in of ``K*η`` is ``b = A c − 1`` with ``c_k = (n/m) Σ_r B_t[r, k]`` (a kernel estimate of
``p_t(x_k)/p_s(x_k)``: ``K*η(y_i) = E_t[p̂_s(y_i|X)]/p̂_s(y_i) − 1`` with the product-kernel KDE of ``p_s(x, y)``
gives exactly this), and ``ρ̂`` solves

    (αI + A B) ρ = b,       ω̂ = max(0, 1 + ρ̂)                                   (:func:`retasa_solve`).

Off the source labels the solution extends by its own equation, ``ρ̂(y) = a(y)ᵀ(c − Bρ̂) − 1)/α`` with ``a(y)``
the Nadaraya–Watson weights of ``y`` (exact at the source labels) [derived].

**Tuning** (:func:`retasa_weights`). Bandwidths by the normal-reference (Silverman) rule per coordinate
(:func:`bandwidth`). α on a log grid by a criterion that needs **no target labels** [ours, not the paper's]:
two-fold cross-fitting of the moment identity ``E_s[ω(Y) φ(X)] = E_t[φ(X)]`` for every feature ``φ`` of a
Gaussian RKHS: fit ``ω̂`` on one half of the source and target samples, extend it to the other half's labels,
and score the squared MMD between the ω̂-weighted held-out source inputs and the held-out target inputs
(:func:`weighted_mmd2`), averaged over four random partitions; the α with the smallest mean score wins and the
weight is refitted on all the data.

**Baselines.** :func:`kmm_weights`, kernel mean matching (Huang et al., NIPS 2006; Gretton et al. 2009):
per-source-point weights in ``[0, B]`` with ``|Σβ/n − 1| ≤ ε`` that match the kernel mean of the source inputs
to that of the target inputs (a quadratic program, solved by accelerated projected gradient with the exact
projection onto box ∩ slab). :func:`oracle_weights`: the true ``p_t(y)/p_s(y)``. No weighting is ω ≡ 1.

**Metric.** :func:`weight_error`: ``∫(ω̂ − ω)² p_s`` estimated by the mean over the source sample.

Every function raises ``ValueError`` naming the bad argument (empty or mismatched arrays, NaN/inf, a
non-positive bandwidth or α).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-4, 0, 9))
"""The log grid of Tikhonov parameters α that :func:`retasa_weights` cross-validates (1e-4 … 1)."""


# --------------------------------------------------------------------------------------------- validation
def as_samples(name: str, value: object, dim: int | None = None) -> np.ndarray:
    """``value`` as a float64 ``[N, d]`` array (a 1-D array is ``N`` scalars); ``ValueError`` naming ``name`` when it
    is empty, not numeric, more than 2-D, not finite, or (``dim`` given) not ``d = dim`` columns wide."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D (N scalars) or 2-D [N, d], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns (the dimension of the other inputs), got {arr.shape[1]}")
    return arr


def _vector(name: str, value: object, n: int) -> np.ndarray:
    arr = as_samples(name, value)
    if arr.shape[1] != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must hold {n} numbers (one per sample), got shape {np.shape(value)}")
    return arr[:, 0]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _bandwidth_vector(name: str, h: float | Sequence[float] | np.ndarray, dim: int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(h, dtype=np.float64))
    if arr.ndim != 1 or arr.shape[0] not in (1, dim):
        raise ValueError(f"{name} must be a number or {dim} numbers (one per coordinate), got shape {arr.shape}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got {h!r}")
    return np.broadcast_to(arr, (dim,)).copy()


# ------------------------------------------------------------------------------------------------ kernels
def bandwidth(x: object, rule: str = "silverman") -> np.ndarray:
    """Per-coordinate Gaussian-kernel bandwidths of the sample ``x`` ``[N, d]``.

    ``silverman``: the normal-reference rule ``h_j = (4/((d+2)N))^{1/(d+4)} σ_j`` with the robust scale
    ``σ_j = min(sd_j, IQR_j/1.349)`` (Silverman 1986, Eq. (3.31) and (4.14); ``1.06 σ N^{-1/5}`` for ``d = 1``).
    ``scott``: ``h_j = N^{-1/(d+4)} sd_j`` (Scott 1992; scipy's ``gaussian_kde`` default factor, sd with ddof 1).
    A constant coordinate gets bandwidth 1 (any value gives the same Nadaraya–Watson weights)."""
    x = as_samples("x", x)
    n, d = x.shape
    sd = x.std(axis=0, ddof=1) if n > 1 else np.zeros(d)
    if rule == "silverman":
        q75, q25 = np.percentile(x, [75, 25], axis=0)
        iqr = (q75 - q25) / 1.349
        scale = np.where(iqr > 0, np.minimum(sd, iqr), sd)
        h = (4.0 / ((d + 2) * n)) ** (1.0 / (d + 4)) * scale
    elif rule == "scott":
        h = n ** (-1.0 / (d + 4)) * sd
    else:
        raise ValueError(f"rule must be 'silverman' or 'scott', got {rule!r}")
    return np.where(h > 0, h, 1.0)


def _sq_dists(a: np.ndarray, b: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``‖(a_i − b_j)/h‖²`` ``[N_a, N_b]`` (clipped at 0 against rounding)."""
    a, b = a / h, b / h
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def gaussian_kernel(a: object, b: object, h: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """The unnormalised Gaussian kernel matrix ``exp(−½‖(a_i − b_j)/h‖²)`` ``[N_a, N_b]`` (``h`` per coordinate)."""
    a = as_samples("a", a)
    b = as_samples("b", b, dim=a.shape[1])
    return np.exp(-0.5 * _sq_dists(a, b, _bandwidth_vector("h", h, a.shape[1])))


def gaussian_kde(points: object, data: object, h: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Kernel density estimate ``p̂(z) = (1/N) Σ_k N(z; data_k, diag(h²))`` at ``points`` ``[M]`` (Parzen–Rosenblatt;
    with a scalar ``h`` in 1-D it is scipy's ``gaussian_kde(data, bw_method=h/sd)``)."""
    data = as_samples("data", data)
    points = as_samples("points", points, dim=data.shape[1])
    h = _bandwidth_vector("h", h, data.shape[1])
    norm = np.prod(h) * (2.0 * np.pi) ** (data.shape[1] / 2.0)
    return np.exp(-0.5 * _sq_dists(points, data, h)).mean(axis=1) / norm


def nadaraya_watson(query: object, data: object, h: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Nadaraya–Watson weights ``W[r, k] = K_h(q_r − d_k)/Σ_l K_h(q_r − d_l)`` ``[M, N]`` (rows sum to 1).

    Computed as a row softmax of ``−½‖(q − d)/h‖²``, so a query far from every data point still gets weights
    (on its nearest points) instead of 0/0."""
    data = as_samples("data", data)
    query = as_samples("query", query, dim=data.shape[1])
    logits = -0.5 * _sq_dists(query, data, _bandwidth_vector("h", h, data.shape[1]))
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------- ReTaSA
@dataclass(frozen=True)
class RetasaSystem:
    """The discretised normal equation ``(αI + A B) ρ = b`` (module docstring) and what extends its solution.

    ``y_source [n, 1]``, ``h_y [1]``: the source labels and their bandwidth (for :meth:`extend`);
    ``A [n, n]``, ``B [n, n]``: Nadaraya–Watson matrices of ``E_s[·|Y]`` and ``E_s[·|X]`` at the source sample;
    ``c [n]``: the kernel estimate of ``p_t(x_k)/p_s(x_k)``; ``b = A c − 1``."""

    y_source: np.ndarray
    h_y: np.ndarray
    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    b: np.ndarray

    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    def matrix(self, alpha: float) -> np.ndarray:
        """``αI + A B``."""
        alpha = _positive("alpha", alpha)
        M = self.A @ self.B
        M[np.diag_indices_from(M)] += alpha
        return M

    def extend(self, rho: np.ndarray, alpha: float, y: object) -> np.ndarray:
        """``ρ̂(y) = (a(y)ᵀ(c − Bρ̂) − 1)/α`` at new labels ``y`` (equal to ``ρ̂`` at the source labels) [derived]."""
        alpha = _positive("alpha", alpha)
        rho = _vector("rho", rho, self.n)
        a = nadaraya_watson(as_samples("y", y, dim=1), self.y_source, self.h_y)
        return (a @ (self.c - self.B @ rho) - 1.0) / alpha


def retasa_system(x_source: object, y_source: object, x_target: object,
                  h_x: float | Sequence[float] | np.ndarray | None = None,
                  h_y: float | None = None) -> RetasaSystem:
    """Build ``A``, ``B``, ``c`` and ``b`` (module docstring) from the labelled source sample ``(x_source [n, d],
    y_source [n])`` and the unlabelled target inputs ``x_target [m, d]``. Bandwidths default to
    :func:`bandwidth` (``silverman``) of the source inputs and labels."""
    xs = as_samples("x_source", x_source)
    ys = as_samples("y_source", y_source, dim=1)
    if ys.shape[0] != xs.shape[0]:
        raise ValueError(f"y_source must hold one label per row of x_source ({xs.shape[0]}), got {ys.shape[0]}")
    xt = as_samples("x_target", x_target, dim=xs.shape[1])
    hx = bandwidth(xs) if h_x is None else _bandwidth_vector("h_x", h_x, xs.shape[1])
    hy = bandwidth(ys) if h_y is None else _bandwidth_vector("h_y", h_y, 1)
    n, m = xs.shape[0], xt.shape[0]
    A = nadaraya_watson(ys, ys, hy)
    B = nadaraya_watson(xs, xs, hx)
    c = (n / m) * nadaraya_watson(xt, xs, hx).sum(axis=0)
    return RetasaSystem(y_source=ys, h_y=hy, A=A, B=B, c=c, b=A @ c - 1.0)


def retasa_solve(system: RetasaSystem, alpha: float) -> np.ndarray:
    """``ρ̂ = (αI + A B)⁻¹ b``, the Tikhonov-regularised solution at the source labels (paper §3) [derived]."""
    return np.linalg.solve(system.matrix(alpha), system.b)


def weighted_mmd2(x_source: object, weights: object, x_target: object, lengthscale: float) -> float:
    """Squared MMD ``‖(1/n)Σ_i w_i φ(x_i) − (1/m)Σ_r φ(x'_r)‖²`` in the RKHS of the Gaussian kernel
    ``exp(−‖x − x'‖²/(2ℓ²))`` (the moment identity ``E_s[ω(Y)φ(X)] = E_t[φ(X)]`` that a correct weight satisfies)."""
    xs = as_samples("x_source", x_source)
    xt = as_samples("x_target", x_target, dim=xs.shape[1])
    w = _vector("weights", weights, xs.shape[0])
    ell = _positive("lengthscale", lengthscale)
    n, m = xs.shape[0], xt.shape[0]
    kss = gaussian_kernel(xs, xs, ell)
    kst = gaussian_kernel(xs, xt, ell)
    ktt = gaussian_kernel(xt, xt, ell)
    return float(w @ kss @ w / n**2 - 2.0 * w @ kst.sum(1) / (n * m) + ktt.sum() / m**2)


def median_lengthscale(x: object, max_points: int = 1000) -> float:
    """The median heuristic: the median pairwise Euclidean distance of (at most ``max_points`` of) ``x``."""
    x = as_samples("x", x)[:max_points]
    d2 = _sq_dists(x, x, np.ones(x.shape[1]))
    dist = np.sqrt(d2[np.triu_indices(x.shape[0], k=1)])
    med = float(np.median(dist)) if dist.size else 0.0
    return med if med > 0 else 1.0


def _held_out_scores(xs: np.ndarray, ys: np.ndarray, xt: np.ndarray, xs_v: np.ndarray, ys_v: np.ndarray,
                     xt_v: np.ndarray, grid: list[float], rule: str, ell: float) -> np.ndarray:
    """The held-out weighted MMD² (:func:`weighted_mmd2`) of ω̂ fitted on ``(xs, ys, xt)`` with each α of ``grid``
    and extended to the held-out labels ``ys_v``, against the held-out target inputs ``xt_v``."""
    system = retasa_system(xs, ys, xt, h_x=bandwidth(xs, rule), h_y=float(bandwidth(ys, rule)[0]))
    AB = system.A @ system.B
    kss = gaussian_kernel(xs_v, xs_v, ell)  # the held-out kernel matrices, shared by every α
    kst_row = gaussian_kernel(xs_v, xt_v, ell).sum(1)
    n_v, m_v = len(xs_v), len(xt_v)
    ktt = gaussian_kernel(xt_v, xt_v, ell).sum() / m_v**2
    out = np.empty(len(grid))
    for g, a in enumerate(grid):
        M = AB.copy()
        M[np.diag_indices_from(M)] += a
        rho = np.linalg.solve(M, system.b)
        w = np.maximum(0.0, 1.0 + system.extend(rho, a, ys_v))
        out[g] = w @ kss @ w / n_v**2 - 2.0 * w @ kst_row / (n_v * m_v) + ktt
    return out


@dataclass
class RetasaFit:
    """A fitted ReTaSA weight: ``omega`` ``[n]`` at the source labels, the chosen ``alpha``, the system, and the
    cross-validation scores (mean held-out squared MMD per α of the grid; empty when α was given)."""

    omega: np.ndarray
    rho: np.ndarray
    alpha: float
    system: RetasaSystem
    cv_scores: dict[float, float] = field(default_factory=dict)

    def __call__(self, y: object) -> np.ndarray:
        """``ω̂(y) = max(0, 1 + ρ̂(y))`` at any labels (the extension of :meth:`RetasaSystem.extend`)."""
        return np.maximum(0.0, 1.0 + self.system.extend(self.rho, self.alpha, y))


def retasa_weights(x_source: object, y_source: object, x_target: object, alpha: float | None = None,
                   alphas: Sequence[float] = DEFAULT_ALPHAS, rule: str = "silverman", folds: int = 2,
                   repeats: int = 4, one_se: bool = False, seed: int = 0) -> RetasaFit:
    """ReTaSA's importance weight ``ω̂ = max(0, 1 + ρ̂)`` at the source labels (module docstring).

    ``alpha``: the Tikhonov parameter; ``None`` picks it from ``alphas`` by ``folds``-fold cross-fitting of the
    held-out weighted MMD, over ``repeats`` random partitions (module docstring, "Tuning"; needs no target
    labels): the α of the smallest mean score, or with ``one_se`` the largest α within one standard error (over
    the ``folds × repeats`` held-out scores) of it (Hastie, Tibshirani & Friedman, ESL §7.10). Measured (mean
    weight error over replications of ``scripts/reproduce_retasa.py``'s data): more partitions remove most of the
    lucky tiny α that give wild weights (gaussian, d = 1, n = 300, 8 replications: 1 -> 2 partitions 0.51 ->
    0.075; n = 500, 20 replications: 2 -> 4 partitions 0.176 -> 0.133, bimodal 0.172 -> 0.153); the one-SE rule
    over-smooths the bimodal weight (n = 500: 0.172 -> 0.216), hence off by default. Bandwidths follow ``rule``
    (:func:`bandwidth`) on each fit's own source sample."""
    xs = as_samples("x_source", x_source)
    ys = as_samples("y_source", y_source, dim=1)
    if ys.shape[0] != xs.shape[0]:
        raise ValueError(f"y_source must hold one label per row of x_source ({xs.shape[0]}), got {ys.shape[0]}")
    xt = as_samples("x_target", x_target, dim=xs.shape[1])
    if rule not in ("silverman", "scott"):
        raise ValueError(f"rule must be 'silverman' or 'scott', got {rule!r}")
    scores: dict[float, float] = {}
    if alpha is None:
        grid = [_positive("alphas", a) for a in alphas]
        if not grid:
            raise ValueError("alphas must hold at least one value")
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
        if min(xs.shape[0], xt.shape[0]) < 2 * folds:
            raise ValueError(f"cross-validating alpha with folds={folds} needs at least {2 * folds} source and target "
                             f"samples, got {xs.shape[0]} and {xt.shape[0]}")
        rng = np.random.default_rng(seed)
        ell = median_lengthscale(np.concatenate([xs, xt]))
        held_out = []  # one row of scores over the grid per (repeat, fold)
        for _ in range(int(repeats)):
            fs = np.array_split(rng.permutation(xs.shape[0]), folds)
            ft = np.array_split(rng.permutation(xt.shape[0]), folds)
            for k in range(folds):
                tr_s, tr_t = np.concatenate(fs[:k] + fs[k + 1:]), np.concatenate(ft[:k] + ft[k + 1:])
                held_out.append(_held_out_scores(xs[tr_s], ys[tr_s], xt[tr_t], xs[fs[k]], ys[fs[k]], xt[ft[k]],
                                                 grid, rule, ell))
        table = np.asarray(held_out)
        mean = table.mean(axis=0)
        best = int(np.argmin(mean))
        if one_se and table.shape[0] > 1:
            limit = mean[best] + table[:, best].std(ddof=1) / np.sqrt(table.shape[0])
            best = max((g for g in range(len(grid)) if mean[g] <= limit), key=lambda g: grid[g])
        scores = {a: float(v) for a, v in zip(grid, mean, strict=True)}
        alpha = grid[best]
    alpha = _positive("alpha", alpha)
    system = retasa_system(xs, ys, xt, h_x=bandwidth(xs, rule), h_y=float(bandwidth(ys, rule)[0]))
    rho = retasa_solve(system, alpha)
    return RetasaFit(omega=np.maximum(0.0, 1.0 + rho), rho=rho, alpha=alpha, system=system, cv_scores=scores)


# ---------------------------------------------------------------------------------------------- baselines
def _project_box_slab(v: np.ndarray, upper: float, lo: float, hi: float) -> np.ndarray:
    """Euclidean projection onto ``{0 ≤ β ≤ upper, lo ≤ Σβ ≤ hi}``: ``clip(v − τ)`` with ``τ = 0`` when the clipped
    sum is inside the slab, else the ``τ`` (found by bisection; the sum is monotone in τ) that puts it on the
    violated face (the KKT conditions of the projection)."""
    p = np.clip(v, 0.0, upper)
    s = p.sum()
    if lo <= s <= hi:
        return p
    target = hi if s > hi else lo
    t_lo, t_hi = v.min() - upper - 1.0, v.max() + 1.0  # sum(clip(v − t)) is n·upper at t_lo and 0 at t_hi
    for _ in range(100):
        t = 0.5 * (t_lo + t_hi)
        if np.clip(v - t, 0.0, upper).sum() > target:
            t_lo = t
        else:
            t_hi = t
    return np.clip(v - 0.5 * (t_lo + t_hi), 0.0, upper)


def kmm_weights(x_source: object, x_target: object, upper: float = 10.0, eps: float | None = None,
                lengthscale: float | None = None, iters: int = 500) -> np.ndarray:
    """Kernel mean matching (Huang, Smola, Gretton, Borgwardt & Schölkopf, NIPS 2006, Eq. (6)): the weights
    ``β [n]`` of the source inputs that solve

        min_β ½ βᵀKβ − κᵀβ,   0 ≤ β_i ≤ upper,   |Σ_i β_i / n − 1| ≤ eps,

    with ``K_ij = k(x_i, x_j)``, ``κ_i = (n/m) Σ_r k(x_i, x'_r)`` (equivalently the weighted MMD of
    :func:`weighted_mmd2` times ``n²/2`` up to a constant). Gaussian kernel with the median-heuristic lengthscale
    of the pooled inputs unless ``lengthscale``; ``eps`` defaults to ``1/√n`` (Huang et al.'s ``B/√n`` scale with
    ``B = 1``). Solved by ``iters`` steps of FISTA (step ``1/λ_max(K)``) with the exact projection onto the box ∩
    slab. The weights are per *point* (KMM knows nothing about the labels): a covariate-shift method applied to
    a target shift, hence a baseline."""
    xs = as_samples("x_source", x_source)
    xt = as_samples("x_target", x_target, dim=xs.shape[1])
    upper = _positive("upper", upper)
    n, m = xs.shape[0], xt.shape[0]
    eps = 1.0 / np.sqrt(n) if eps is None else eps
    if isinstance(eps, bool) or not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    if upper * n < n * (1 - eps):
        raise ValueError(f"upper={upper} is too small: the weights could not average 1 - eps = {1 - eps:.3g}")
    ell = median_lengthscale(np.concatenate([xs, xt])) if lengthscale is None else _positive("lengthscale",
                                                                                            lengthscale)
    K = gaussian_kernel(xs, xs, ell)
    kappa = (n / m) * gaussian_kernel(xs, xt, ell).sum(1)
    v = np.ones(n) / np.sqrt(n)  # λ_max(K) by power iteration
    for _ in range(50):
        v = K @ v
        v /= np.linalg.norm(v)
    step = 1.0 / max(float(v @ K @ v), 1e-12)
    lo, hi = n * max(1.0 - eps, 0.0), n * (1.0 + eps)
    beta = _project_box_slab(np.ones(n), upper, lo, hi)
    z, t = beta.copy(), 1.0
    for _ in range(int(iters)):
        new = _project_box_slab(z - step * (K @ z - kappa), upper, lo, hi)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        z = new + ((t - 1.0) / t_new) * (new - beta)
        beta, t = new, t_new
    return beta


def oracle_weights(y: object, source_logpdf: Callable[[np.ndarray], np.ndarray],
                   target_logpdf: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The true weight ``ω(y) = p_t(y)/p_s(y) = exp(log p_t(y) − log p_s(y))`` from the two label laws' log densities
    (vectorised callables of a 1-D array)."""
    y = as_samples("y", y, dim=1)[:, 0]
    ls, lt = np.asarray(source_logpdf(y), dtype=np.float64), np.asarray(target_logpdf(y), dtype=np.float64)
    if ls.shape != y.shape or lt.shape != y.shape:
        raise ValueError(f"source_logpdf and target_logpdf must return one value per label ({y.shape}), "
                         f"got {ls.shape} and {lt.shape}")
    return np.exp(lt - ls)


def weight_error(omega_hat: object, omega: object) -> float:
    """``∫(ω̂ − ω)² p_s``, estimated by the mean of ``(ω̂(y_i) − ω(y_i))²`` over source labels ``y_i ~ p_s`` (digest §2,
    "Metric"). No weighting (``ω̂ ≡ 1``) scores ``E_s[(ω − 1)²] = χ²(p_t ‖ p_s)``."""
    w = as_samples("omega_hat", omega_hat, dim=1)[:, 0]
    true = _vector("omega", omega, w.shape[0])
    return float(np.mean((w - true) ** 2))


# ------------------------------------------------------------------------------------------ weighted ERM
@dataclass(frozen=True)
class KernelRidge:
    """A fitted kernel ridge regressor ``f(x) = Σ_i coef_i k(x, x_i)`` (:func:`weighted_kernel_ridge`)."""

    x_train: np.ndarray
    coef: np.ndarray
    lengthscale: float

    def predict(self, x: object) -> np.ndarray:
        """``f(x)`` ``[M]``."""
        x = as_samples("x", x, dim=self.x_train.shape[1])
        return gaussian_kernel(x, self.x_train, self.lengthscale) @ self.coef


def weighted_kernel_ridge(x: object, y: object, weights: object | None = None, lam: float = 1e-3,
                          lengthscale: float | None = None) -> KernelRidge:
    """Importance-weighted ERM in closed form: the Gaussian-kernel ridge regressor minimising

        (1/n) Σ_i w̃_i (y_i − f(x_i))² + λ ‖f‖²_H,      w̃ = w / mean(w),

    whose representer coefficients solve ``(W̃K + nλI) coef = W̃ y`` (zero-weight points get ``coef = 0``).
    ``weights=None`` is plain ERM; ``lengthscale`` defaults to the median heuristic of ``x``."""
    x = as_samples("x", x)
    yv = _vector("y", y, x.shape[0])
    n = x.shape[0]
    w = np.ones(n) if weights is None else _vector("weights", weights, n)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    lam = _positive("lam", lam)
    ell = median_lengthscale(x) if lengthscale is None else _positive("lengthscale", lengthscale)
    w = w / w.mean()
    K = gaussian_kernel(x, x, ell)
    M = w[:, None] * K
    M[np.diag_indices_from(M)] += n * lam
    return KernelRidge(x_train=x, coef=np.linalg.solve(M, w * yv), lengthscale=ell)
