"""Goal curricula for multi-goal RL: SVGG, the paper's baselines MEGA and RANDOM, and two uniform references.

**SVGG** (Castanet, Sigaud & Lamprier, ICML 2023, "Stein Variational Goal Generation"; SVGG digest §2).
Goals of intermediate difficulty are sampled by Stein variational gradient descent on the energy-based
target density

    log p(g) = β · Beta_{a,b}(D_φ(s0, g)) + log p_valid(g)                        (digest §2b)

* ``D_φ(s0, g)``: the **success predictor**, an MLP (64, 64; LayerNorm, GELU; sigmoid) trained by binary
  cross-entropy on the last ``history`` episodes (label: the goal was reached at some step), classes
  balanced by oversampling, retrained every ``predictor_every`` env steps (§2a);
* ``Beta_{a,b}``: the Beta *density value* on the predicted success, (2, 2) peaks at D = 0.5 (§2b);
* ``p_valid``: the **validity model**, a one-class SVM (ν, RBF γ) on recently achieved goals, calibrated
  to a probability by a 1-D logistic regression on its decision function (§2c);
* ``n`` **particles** moved by SVGD with an RBF kernel of width σ: the Stein direction
  ``φ(x_i) = 1/n Σ_j [k(x_j, x_i) ∇ log p(x_j) + ∇_{x_j} k(x_j, x_i)]`` is applied as the gradient
  ``−φ`` of an Adam step (lr 0.1) every ``svgd_every`` env steps (§2d);
* each episode's goal is a uniformly chosen particle (§2e).

**MEGA** (Pitis et al., ICML 2020, "Maximum Entropy Gain Exploration"), the SVGG paper's main baseline,
as its code (``mrl``'s ``DensityAchievedGoalCuriosity``) sets it up: at each reset, ``mega_candidates``
achieved goals are drawn from everything the agent has achieved; those whose value ``Q(s0, g)`` (the
agent's critic at its own action) lies below a **cutoff** are dropped; of the rest, the goal of lowest
density under a Gaussian KDE (bandwidth 0.1 on standardised coordinates, fitted to ``kde_samples``
achieved goals) is pursued. The cutoff starts at ``−3`` and moves by 1 after every 10 curriculum
episodes: down (harder goals allowed) when their success rate is ≥ 0.7, up when ≤ 0.3, never below
``min_cutoff`` (the lowest candidate value seen, at least ``−(1 − γ^{0.8T})/(1 − γ)``) nor above ``−3``
(:meth:`AchievedGoalCurriculum.update_cutoff`). If no candidate passes, the highest-valued one is taken.
**RANDOM** is the same with a uniform choice among the candidates that pass.

References: ``uniform_box`` draws goals uniformly over the maze's bounding box, walls included (a naive
curriculum that does not know which goals are valid); ``uniform_valid`` draws them uniformly over the
valid goals (an oracle given the valid set).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rl_energy.errors import ConfigError, import_optional, require

CURRICULA = ("none", "uniform_box", "uniform_valid", "svgg", "mega", "random")

QFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``q_fn(start [d], goals [n, goal_dim]) -> [n]``: the agent's value of pursuing each goal from ``start``."""


@dataclass
class CurriculumConfig:
    name: str = "none"
    """``none`` (the env's own goals), ``uniform_box``, ``uniform_valid``, ``svgg``, ``mega`` or ``random``."""
    particles: int = 100
    kernel_sigma: float = 1.0
    svgd_lr: float = 0.1
    svgd_every: int = 20
    """Env steps between SVGD steps."""
    beta: float = 10.0
    """Temperature of the Beta term."""
    beta_a: float = 2.0
    beta_b: float = 2.0
    validity_weight: float = 1.0
    """Weight ``λ`` of ``log p_valid`` in the target (1 in the paper)."""
    history: int = 300
    """Episodes the predictor trains on."""
    predictor_hidden: list[int] = field(default_factory=lambda: [64, 64])
    predictor_every: int = 4000
    """Env steps between predictor (and validity model) refits."""
    predictor_epochs: int = 60
    predictor_batch: int = 64
    predictor_lr: float = 1e-3
    validity_samples: int = 5000
    """Achieved goals kept for the one-class SVM."""
    svm_nu: float = 0.01
    svm_gamma: float = 2.0
    """RBF γ of the one-class SVM. The SVGG code's 0.5 suits its thin walls (the SVM only has to find
    the map's edges); our wall blocks are one cell thick and need a kernel of about half a cell
    (measured on the multi-room maze: mean p_valid in walls 0.70 at γ = 0.5, 0.30 at 2, in free cells 0.78
    and 0.71)."""
    snapshot_every: int = 0
    """SVGG, MEGA, RANDOM: keep a copy of the particles (SVGG) or of the last 100 chosen goals every this
    many env steps (in the checkpoint; 0: none)."""
    mega_candidates: int = 100
    """MEGA/RANDOM: achieved goals drawn at each reset."""
    kde_samples: int = 10000
    """MEGA: achieved goals the KDE is fitted to (redrawn at every env step that has a reset)."""
    kde_bandwidth: float = 0.1
    """MEGA: the Gaussian kernel's bandwidth, on standardised coordinates."""
    initial_cutoff: float = -3.0
    """MEGA/RANDOM: the starting (and highest) Q cutoff."""
    cutoff_window: int = 10
    """MEGA/RANDOM: curriculum episodes between cutoff moves."""
    cutoff_success: list[float] = field(default_factory=lambda: [0.3, 0.7])
    """MEGA/RANDOM: success rates at or below / at or above which the cutoff goes up / down by 1."""
    achieved_capacity: int = 1_000_000
    """MEGA/RANDOM: achieved goals kept (a ring; the replay buffer's size in the code)."""
    seed: int = 0

    def validate(self) -> None:
        sec = "curriculum"
        require(self, "snapshot_every", self.snapshot_every >= 0, ">= 0", sec)
        require(self, "name", self.name in CURRICULA, f"one of {', '.join(CURRICULA)}", sec)
        for key in ("particles", "svgd_every", "history", "predictor_every", "predictor_epochs",
                    "predictor_batch", "validity_samples"):
            require(self, key, getattr(self, key) >= 1, ">= 1", sec)
        for key in ("kernel_sigma", "svgd_lr", "beta_a", "beta_b", "predictor_lr", "svm_gamma"):
            require(self, key, getattr(self, key) > 0, "> 0", sec)
        require(self, "beta", self.beta >= 0, ">= 0", sec)
        require(self, "validity_weight", self.validity_weight >= 0, ">= 0", sec)
        require(self, "svm_nu", 0 < self.svm_nu <= 1, "in (0, 1]", sec)
        for key, most in (("mega_candidates", 100_000), ("kde_samples", 1_000_000), ("cutoff_window", 100_000),
                          ("achieved_capacity", 100_000_000)):
            require(self, key, 1 <= getattr(self, key) <= most, f"in [1, {most:,}]", sec)
        require(self, "kde_bandwidth", self.kde_bandwidth > 0, "> 0", sec)
        require(self, "initial_cutoff", -1e6 <= self.initial_cutoff <= 0, "in [-1e6, 0] (a value of a -1/0 reward)",
                sec)
        low, high = (self.cutoff_success + [math.nan, math.nan])[:2]
        require(self, "cutoff_success", len(self.cutoff_success) == 2 and 0 <= low <= high <= 1,
                "two success rates [low, high] with 0 <= low <= high <= 1", sec)


# ------------------------------------------------------------------------------------------------ SVGD
def rbf_kernel(x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``K[j, i] = exp(−‖x_j − x_i‖² / 2σ²)`` and ``Σ_j ∇_{x_j} K[j, i]`` (the repulsive term), for ``x [n, d]``."""
    diff = x[:, None, :] - x[None, :, :]  # [j, i, d] = x_j - x_i
    k = torch.exp(-diff.square().sum(-1) / (2 * sigma**2))
    grad_k = -(k[..., None] * diff / sigma**2).sum(0)  # Σ_j ∇_{x_j} k(x_j, x_i)
    return k, grad_k


def stein_direction(x: torch.Tensor, score: torch.Tensor, sigma: float) -> torch.Tensor:
    """``φ(x_i) = 1/n Σ_j [k(x_j, x_i) ∇ log p(x_j) + ∇_{x_j} k(x_j, x_i)]`` (Liu & Wang 2016, eq. 8)."""
    k, grad_k = rbf_kernel(x, sigma)
    return (k.T @ score + grad_k) / x.shape[0]


class SVGDParticles:
    """Particles moved along the Stein direction by Adam (the SVGG code's optimiser)."""

    def __init__(self, init: torch.Tensor, sigma: float, lr: float) -> None:
        self.x = init.clone().float().requires_grad_(True)
        self.sigma = sigma
        self.optimizer = torch.optim.Adam([self.x], lr=lr)

    def step(self, log_density: Callable[[torch.Tensor], torch.Tensor]) -> None:
        x = self.x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(log_density(x).sum(), x)
        score = torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)  # as the SVGG code: NaNs zeroed
        with torch.no_grad():
            phi = stein_direction(x, score, self.sigma)
        self.optimizer.zero_grad(set_to_none=True)
        self.x.grad = -phi
        self.optimizer.step()


# ------------------------------------------------------------------------------------------- models
def balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices that oversample the minority class of binary ``labels`` to the majority's count (all
    indices if one class is absent)."""
    pos, neg = np.flatnonzero(labels > 0.5), np.flatnonzero(labels <= 0.5)
    if not (len(pos) and len(neg)):
        return np.arange(len(labels))
    n = max(len(pos), len(neg))
    return np.concatenate([rng.choice(pos, n), rng.choice(neg, n)])


class SuccessPredictor(nn.Module):
    """``D_φ(s0, g) ∈ (0, 1)``: MLP with LayerNorm and GELU, sigmoid output (digest §2a)."""

    def __init__(self, in_dim: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.LayerNorm(width), nn.GELU()]
            last = width
        layers.append(nn.Linear(last, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x).squeeze(-1))

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float,
            rng: np.random.Generator) -> float:
        """BCE on ``(x, y)`` with the minority class oversampled to balance; returns the last epoch's loss."""
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
        idx = balanced_indices(y, rng)
        xt, yt = torch.as_tensor(x[idx]), torch.as_tensor(y[idx])
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        loss = torch.zeros(())
        for _ in range(epochs):
            order = torch.as_tensor(rng.permutation(len(idx)))
            for start in range(0, len(idx), batch):
                b = order[start: start + batch]
                p = self(xt[b]).clamp(1e-6, 1 - 1e-6)
                loss = nn.functional.binary_cross_entropy(p, yt[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return float(loss.detach())


class ValidityModel:
    """``p_valid(g)``: a one-class SVM on achieved goals, its decision function mapped to a probability
    by a 1-D logistic regression fitted to the SVM's own inlier/outlier labels (classes balanced);
    evaluated in torch so that ``∇ log p_valid`` flows to the particles (digest §2c)."""

    def __init__(self, nu: float, gamma: float) -> None:
        self.nu, self.gamma = nu, gamma
        self.fitted = False

    def fit(self, goals: np.ndarray, rng: np.random.Generator) -> None:
        OneClassSVM = import_optional("sklearn.svm", "the SVGG curriculum's validity model").OneClassSVM

        svm = OneClassSVM(nu=self.nu, gamma=self.gamma).fit(goals)
        self.support = torch.as_tensor(svm.support_vectors_, dtype=torch.float32)
        self.coef = torch.as_tensor(svm.dual_coef_[0], dtype=torch.float32)
        self.offset = float(svm.intercept_[0])
        score = self.decision(torch.as_tensor(goals, dtype=torch.float32)).numpy()
        # calibrate on the goals and on points spread around them (outliers), classes balanced
        spread = goals[rng.integers(len(goals), size=len(goals))] + rng.normal(0, 1.0, size=goals.shape)
        s = np.concatenate([score, self.decision(torch.as_tensor(spread, dtype=torch.float32)).numpy()])
        label = (s >= 0).astype(np.float32)
        pick = balanced_indices(label, rng)
        s, label = s[pick], label[pick]
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.1)
        st, lt = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(label)
        scale = float(np.std(s)) + 1e-8
        for _ in range(200):
            loss = nn.functional.binary_cross_entropy_with_logits(w[0] * st / scale + w[1], lt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.a, self.b = float(w[0].detach()) / scale, float(w[1].detach())
        self.fitted = True

    def decision(self, g: torch.Tensor) -> torch.Tensor:
        """The SVM decision function ``Σ_i α_i exp(−γ‖g − x_i‖²) + intercept``."""
        d2 = (g[:, None, :] - self.support[None]).square().sum(-1)
        return torch.exp(-self.gamma * d2) @ self.coef + self.offset

    def log_prob(self, g: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return torch.zeros(g.shape[0])
        return nn.functional.logsigmoid(self.a * self.decision(g) + self.b)


def beta_density(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The Beta(a, b) probability density value at ``x ∈ (0, 1)``."""
    x = x.clamp(1e-6, 1 - 1e-6)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return torch.exp(log_norm + (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x))


# --------------------------------------------------------------------------------------------- curricula
class Curriculum:
    """Chooses episode goals (``sample_goal``) and hears back (``record_episode``, ``on_step``)."""

    name = "none"

    def __init__(self, config: CurriculumConfig, goal_space: Any = None) -> None:
        self.config = config
        self.goal_space = goal_space
        self.rng = np.random.default_rng(config.seed)
        self.steps = 0
        self.episodes = 0
        self.successes: deque[float] = deque(maxlen=100)

    def bind(self, goal_space: Any) -> None:
        """Use ``goal_space`` (an object with ``sample_box`` and ``sample_valid``, e.g. the unwrapped
        :class:`rl_energy.envs.point_maze.PointMazeEnv`, whose maze may change) from now on."""
        for method in ("sample_box", "sample_valid"):
            if not hasattr(goal_space, method):
                raise ConfigError(f"curriculum '{self.name}' needs an env whose goal space offers {method}() "
                                  "(the rl_energy/PointMaze-* envs)")
        self.goal_space = goal_space

    needs_values = False
    """Whether the curriculum needs the agent's values (:meth:`bind_values`)."""
    metric_names: tuple[str, ...] = ("goal_success",)

    def bind_values(self, q_fn: QFunction, gamma: float, episode_length: int) -> None:
        """Give the curriculum the agent's goal values (MEGA's Q cutoff)."""

    def sample_goal(self, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
        """The goal of an episode that starts at ``start`` (the goal space's coordinates)."""
        raise NotImplementedError

    def record_episode(self, start: np.ndarray, goal: np.ndarray, success: bool, achieved: np.ndarray) -> None:
        self.episodes += 1
        self.successes.append(float(success))

    def on_step(self) -> None:
        self.steps += 1

    def metrics(self) -> dict[str, float]:
        """Logged beside the training metrics: the success rate of the last 100 curriculum episodes."""
        return {"goal_success": float(np.mean(self.successes))} if self.successes else {}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "episodes": self.episodes, "successes": list(self.successes),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.episodes = int(state["steps"]), int(state["episodes"])
        self.successes = deque(state["successes"], maxlen=100)
        self.rng.bit_generator.state = state["rng"]


class UniformBox(Curriculum):
    """Goals uniform over the bounding box, walls included (the naive curriculum)."""

    name = "uniform_box"

    def sample_goal(self, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
        return self.goal_space.sample_box(1, rng)[0]


class UniformValid(Curriculum):
    """Goals uniform over the valid goals (an oracle that is given the valid set)."""

    name = "uniform_valid"

    def sample_goal(self, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
        return self.goal_space.sample_valid(1, rng)[0]


class SVGG(Curriculum):
    """Stein Variational Goal Generation (module docstring)."""

    name = "svgg"

    def __init__(self, config: CurriculumConfig, goal_space: Any = None) -> None:
        super().__init__(config, goal_space)
        c = config
        torch_gen = torch.Generator().manual_seed(c.seed)
        self.goal_dim = 2
        self.particles = SVGDParticles(torch.randn(c.particles, self.goal_dim, generator=torch_gen),
                                       c.kernel_sigma, c.svgd_lr)
        self.start_dim: int | None = None
        self.predictor: SuccessPredictor | None = None
        self.validity = ValidityModel(c.svm_nu, c.svm_gamma)
        self.history: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=c.history)
        self.achieved: deque[np.ndarray] = deque(maxlen=c.validity_samples)
        self.start_mean: np.ndarray | None = None
        self.fits = 0
        self.snapshots: list[tuple[int, torch.Tensor]] = []
        """``(env step, particles)`` every ``snapshot_every`` steps."""

    def sample_goal(self, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
        x = self.particles.x.detach()
        return x[int(rng.integers(len(x)))].numpy().astype(np.float64)

    def record_episode(self, start: np.ndarray, goal: np.ndarray, success: bool, achieved: np.ndarray) -> None:
        super().record_episode(start, goal, success, achieved)
        self.history.append((np.asarray(start, dtype=np.float32), np.asarray(goal, dtype=np.float32), float(success)))
        self.achieved.extend(np.asarray(achieved, dtype=np.float32))

    def on_step(self) -> None:
        super().on_step()
        c = self.config
        if self.steps % c.predictor_every == 0 and len(self.history) >= 10:
            self.refit()
        if self.predictor is not None and self.steps % c.svgd_every == 0:
            self.particles.step(self.log_density)
        if c.snapshot_every and self.steps % c.snapshot_every == 0:
            self.snapshots.append((self.steps, self.particles.x.detach().clone()))

    def refit(self) -> None:
        """Retrain the success predictor and the validity model on recent data (§2a, §2c)."""
        c = self.config
        starts, goals, labels = (np.stack(v) for v in zip(*self.history, strict=True))
        if self.predictor is None:
            self.start_dim = starts.shape[1]
            self.predictor = SuccessPredictor(self.start_dim + self.goal_dim, c.predictor_hidden)
        self.start_mean = starts.mean(0)
        self.predictor.fit(np.concatenate([starts, goals], 1), labels, c.predictor_epochs, c.predictor_batch,
                           c.predictor_lr, self.rng)
        self._fit_validity()
        self.fits += 1

    def _fit_validity(self) -> None:
        achieved = np.stack(self.achieved)
        if len(achieved) > 2000:  # the SVM's cost grows quadratically: a random subset as in the code's 5k
            achieved = achieved[self.rng.choice(len(achieved), 2000, replace=False)]
        self.validity.fit(achieved, self.rng)

    def predicted_success(self, goals: torch.Tensor) -> torch.Tensor:
        start = torch.as_tensor(self.start_mean, dtype=torch.float32).expand(goals.shape[0], -1)
        return self.predictor(torch.cat([start, goals], -1))

    def log_density(self, goals: torch.Tensor) -> torch.Tensor:
        """``β Beta_{a,b}(D_φ(s0, g)) + λ log p_valid(g)`` (digest §2b; λ = ``validity_weight``, 1 there)."""
        c = self.config
        return (c.beta * beta_density(self.predicted_success(goals), c.beta_a, c.beta_b)
                + c.validity_weight * self.validity.log_prob(goals))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(particles=self.particles.x.detach().clone(), svgd_opt=self.particles.optimizer.state_dict(),
                     history=torch.as_tensor(np.array([np.concatenate([s, g, [y]]) for s, g, y in self.history],
                                                      dtype=np.float32)),
                     achieved=torch.as_tensor(np.array(self.achieved, dtype=np.float32).reshape(-1, self.goal_dim)),
                     predictor=None if self.predictor is None else self.predictor.state_dict(),
                     start_dim=self.start_dim, fits=self.fits,
                     snapshot_steps=torch.tensor([t for t, _ in self.snapshots], dtype=torch.long),
                     snapshots=torch.stack([x for _, x in self.snapshots]) if self.snapshots else torch.zeros(0))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.particles.x.copy_(state["particles"])
        self.particles.optimizer.load_state_dict(state["svgd_opt"])
        self.start_dim = state["start_dim"]
        d = self.start_dim or 0
        self.history = deque(((h[:d], h[d:d + self.goal_dim], float(h[-1])) for h in state["history"].numpy()),
                             maxlen=self.config.history)
        self.achieved = deque(state["achieved"].numpy(), maxlen=self.config.validity_samples)
        self.fits = int(state["fits"])
        self.snapshots = list(zip(state["snapshot_steps"].tolist(), state["snapshots"], strict=True))
        if state["predictor"] is not None:
            self.predictor = SuccessPredictor(d + self.goal_dim, self.config.predictor_hidden)
            self.predictor.load_state_dict(state["predictor"])
            # the SVM is not in the checkpoint: refit it on the restored achieved goals
            self.start_mean = np.stack([s for s, _, _ in self.history]).mean(0)
            self._fit_validity()


def kde_log_density(points: np.ndarray, samples: np.ndarray, bandwidth: float) -> np.ndarray:
    """Log density of ``points [m, d]`` under the Gaussian KDE of ``samples [n, d]`` with ``bandwidth``
    (exact: every pair)."""
    x, y = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(samples, dtype=torch.float64)
    d2 = torch.cdist(x, y).square()
    n, d = y.shape
    log_norm = math.log(n) + d * math.log(bandwidth * math.sqrt(2 * math.pi))
    return (torch.logsumexp(-d2 / (2 * bandwidth**2), dim=1) - log_norm).numpy()


class BinnedKDE:
    """A 2-D Gaussian KDE on a grid: the samples are binned with a spacing of ``bandwidth / bins_per_bw``
    (linear binning), the histogram is smoothed by the Gaussian kernel (``scipy.ndimage``), and points read
    the density by bilinear interpolation. One fit costs about a millisecond and a query is nearly free,
    where the exact sum over 10k samples costs ~15 ms per 100 points on one core. Points whose binned
    density is below ``exact_below`` (the tails, where binning's relative error grows and the Gaussian's
    truncation at 5 bandwidths gives 0) get the exact sum, so the lowest-density point is ranked right; a
    test checks the two agree (MEGA's KDE, ``mrl``'s ``RawKernelDensity``)."""

    def __init__(self, samples: np.ndarray, bandwidth: float, bins_per_bw: int = 4) -> None:
        gaussian_filter = import_optional("scipy.ndimage", "MEGA's density model").gaussian_filter
        samples = np.asarray(samples, dtype=np.float64)
        self.step = bandwidth / bins_per_bw
        self.origin = samples.min(0) - 5 * bandwidth
        shape = np.ceil((samples.max(0) + 5 * bandwidth - self.origin) / self.step).astype(int) + 2
        u = (samples - self.origin) / self.step
        i0 = np.floor(u).astype(int)
        frac = u - i0
        hist = np.zeros(shape)
        for dx in (0, 1):  # linear binning: each sample split over its 4 nearest grid nodes
            for dy in (0, 1):
                w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                np.add.at(hist, (i0[:, 0] + dx, i0[:, 1] + dy), w)
        smooth = gaussian_filter(hist, sigma=bins_per_bw, mode="constant", truncate=5.0)
        # the filter's kernel sums to 1 over the grid: divide by n and the cell area for a density
        self.density = smooth / (len(samples) * self.step**2)
        self.samples, self.bandwidth = samples, bandwidth
        self.exact_below = 1e-3

    def log_density(self, points: np.ndarray) -> np.ndarray:
        map_coordinates = import_optional("scipy.ndimage", "MEGA's density model").map_coordinates
        u = ((np.asarray(points, dtype=np.float64) - self.origin) / self.step).T
        value = map_coordinates(self.density, u, order=1, mode="constant", cval=0.0)
        out = np.log(np.maximum(value, 1e-300))
        tail = value < self.exact_below
        if tail.any():
            out[tail] = kde_log_density(np.asarray(points)[tail], self.samples, self.bandwidth)
        return out


class AchievedGoalCurriculum(Curriculum):
    """Goals among past achieved goals that pass MEGA's Q cutoff (module docstring); :meth:`score` ranks
    the candidates that pass (lowest first)."""

    needs_values = True
    metric_names = ("goal_success", "goal_cutoff", "goal_pass")

    def __init__(self, config: CurriculumConfig, goal_space: Any = None) -> None:
        super().__init__(config, goal_space)
        self.store = np.zeros((min(config.achieved_capacity, 1024), 2), dtype=np.float32)
        self.count = 0
        """Achieved goals stored so far (the ring holds the last ``achieved_capacity``)."""
        self.q_fn: QFunction | None = None
        self.cutoff = self.min_cutoff = config.initial_cutoff
        self.min_min_cutoff = -math.inf
        self.recent: deque[float] = deque(maxlen=config.cutoff_window)
        self.chosen: deque[np.ndarray] = deque(maxlen=100)
        self.snapshots: list[tuple[int, torch.Tensor]] = []
        self.passed: deque[float] = deque(maxlen=1000)
        """Fraction of the candidates that passed the cutoff, at each recent reset."""

    def bind_values(self, q_fn: QFunction, gamma: float, episode_length: int) -> None:
        self.q_fn = q_fn
        r = min(gamma, 0.99)  # mrl's floor on the cutoff: the value of a goal 80 % of an episode away
        self.min_min_cutoff = -(1 - r ** (episode_length * 0.8)) / (1 - r) if r < 1 else -0.8 * episode_length
        self.min_cutoff = max(self.config.initial_cutoff, self.min_min_cutoff)
        self.cutoff = max(self.cutoff, self.min_min_cutoff)

    def update_cutoff(self, q_values: np.ndarray) -> None:
        """mrl's dynamic cutoff: after ``cutoff_window`` curriculum episodes, down by 1 at a success rate
        ≥ the high threshold, up by 1 at ≤ the low one (between ``min_cutoff`` and ``initial_cutoff``)."""
        c = self.config
        if len(self.recent) < c.cutoff_window:
            return
        self.min_cutoff = max(self.min_min_cutoff, min(float(np.min(q_values)), self.min_cutoff))
        rate = float(np.mean(self.recent))
        if rate >= c.cutoff_success[1]:
            self.cutoff = max(self.min_cutoff, self.cutoff - 1.0)
            self.recent.clear()
        elif rate <= c.cutoff_success[0]:
            self.cutoff = max(min(c.initial_cutoff, self.cutoff + 1.0), self.min_min_cutoff)
            self.recent.clear()

    def score(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rank of each candidate, lower is pursued first."""
        raise NotImplementedError

    def sample_goal(self, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
        if self.count == 0 or self.q_fn is None or start is None:
            return np.zeros(2) if start is None else np.asarray(start, dtype=np.float64)  # nothing achieved yet
        held = min(self.count, len(self.store))
        candidates = self.store[self.rng.integers(held, size=self.config.mega_candidates)].astype(np.float64)
        q = np.asarray(self.q_fn(np.asarray(start, dtype=np.float32), candidates.astype(np.float32)), dtype=np.float64)
        self.update_cutoff(q)
        ok = q >= self.cutoff
        self.passed.append(float(ok.mean()))
        if ok.any():
            scores = np.where(ok, self.score(candidates, self.rng), np.inf)
            goal = candidates[int(np.argmin(scores))]
        else:  # mrl: bad candidates score −1e-8·Q, so the highest-valued one
            goal = candidates[int(np.argmax(q))]
        self.chosen.append(goal.astype(np.float32))
        return goal

    def record_episode(self, start: np.ndarray, goal: np.ndarray, success: bool, achieved: np.ndarray) -> None:
        super().record_episode(start, goal, success, achieved)
        self.recent.append(float(success))
        achieved = np.asarray(achieved, dtype=np.float32).reshape(-1, 2)
        cap = self.config.achieved_capacity
        if self.count + len(achieved) > len(self.store) and len(self.store) < cap:  # grow the ring to its capacity
            grown = np.zeros((min(cap, max(2 * len(self.store), self.count + len(achieved))), 2), dtype=np.float32)
            grown[: len(self.store)] = self.store
            self.store = grown
        rows = (self.count + np.arange(len(achieved))) % len(self.store)
        self.store[rows] = achieved
        self.count += len(achieved)

    def on_step(self) -> None:
        super().on_step()
        c = self.config
        if c.snapshot_every and self.steps % c.snapshot_every == 0 and self.chosen:
            self.snapshots.append((self.steps, torch.as_tensor(np.stack(self.chosen))))

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if self.q_fn is not None:
            out["goal_cutoff"] = self.cutoff
        if self.passed:
            out["goal_pass"] = float(np.mean(self.passed))
        return out

    def state_dict(self) -> dict[str, Any]:
        held = min(self.count, len(self.store))
        return {**super().state_dict(), "store": torch.as_tensor(self.store[:held].copy()), "count": self.count,
                "cutoff": self.cutoff, "min_cutoff": self.min_cutoff, "recent": list(self.recent),
                "snapshot_steps": torch.tensor([t for t, _ in self.snapshots], dtype=torch.long),
                "snapshots": [x for _, x in self.snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        held = state["store"].numpy()
        # the ring's size as it was saved: grown to hold the goals, never beyond its capacity
        self.store = np.zeros((max(len(held), min(self.config.achieved_capacity, 1024)), 2), dtype=np.float32)
        self.store[: len(held)] = held
        self.count = int(state["count"])
        self.cutoff, self.min_cutoff = float(state["cutoff"]), float(state["min_cutoff"])
        self.recent = deque(state["recent"], maxlen=self.config.cutoff_window)
        self.snapshots = list(zip(state["snapshot_steps"].tolist(), state["snapshots"], strict=True))


class MEGA(AchievedGoalCurriculum):
    """MEGA: the lowest-density achieved goal that passes the Q cutoff (module docstring)."""

    name = "mega"

    def __init__(self, config: CurriculumConfig, goal_space: Any = None) -> None:
        super().__init__(config, goal_space)
        import_optional("scipy.ndimage", "MEGA's density model")  # fail at the start of a run, not mid-way
        self._kde: tuple[int, BinnedKDE, np.ndarray, np.ndarray] | None = None

    def score(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if self._kde is None or self._kde[0] != self.steps:  # one fit serves every reset of an env step
            held = self.store[: min(self.count, len(self.store))]
            sample = held[rng.integers(len(held), size=c.kde_samples)].astype(np.float64)
            mean, std = sample.mean(0), sample.std(0) + 1e-4  # mrl standardises the KDE's samples
            self._kde = (self.steps, BinnedKDE((sample - mean) / std, c.kde_bandwidth), mean, std)
        _, kde, mean, std = self._kde
        return kde.log_density((candidates - mean) / std)


class RandomAchieved(AchievedGoalCurriculum):
    """RANDOM: a uniform choice among the achieved goals that pass the Q cutoff."""

    name = "random"

    def score(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.random(len(candidates))


def make_curriculum(config: CurriculumConfig, goal_space: Any = None) -> Curriculum | None:
    """The curriculum named by ``config.name`` (None for ``none``); :meth:`Curriculum.bind` gives it its
    goal space (the trainer binds it to the first training env)."""
    if config.name == "none":
        return None
    kinds = {"uniform_box": UniformBox, "uniform_valid": UniformValid, "svgg": SVGG, "mega": MEGA,
             "random": RandomAchieved}
    curriculum = kinds[config.name](config)
    if goal_space is not None:
        curriculum.bind(goal_space)
    return curriculum
