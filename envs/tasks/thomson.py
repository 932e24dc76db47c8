"""The Thomson problem as a one-step optimisation bandit (minimum hyperspherical energy, Liu et al.,
NeurIPS 2018, arXiv 1805.09298, §3; digest ``papers/one-step-tasks.md`` §18, "Framing (a)").

Place ``N`` points on the unit sphere ``S^{d-1}`` to minimise their hyperspherical energy

    E_s(ŵ_1, ..., ŵ_N) = Σ_{i<j} f_s(‖ŵ_i − ŵ_j‖),   f_s(z) = z^{−s} (s > 0),   f_0(z) = log(1/z)

(:func:`rl_energy.nets.hyperspherical_energy`, the one home of the energy). ``s = 1``, ``d = 3`` is J. J.
Thomson's problem of ``N`` electrons on a sphere; its minima are known (:data:`THOMSON_MINIMA`).

Framing: one context (``obs = [0]``); the action is the ``N x d`` matrix of raw points, flattened, in
``Box(-1, 1, (N d,))``; each row is projected on the sphere (``ŵ = w/‖w‖``, so any nonzero row is a
point) and the reward is ``−E_s``. A reward-only bandit: there is no label (``full_information = False``);
the known minimum is only used by the metrics:

* ``energy``: the mean energy of the actions; ``best_energy``: the lowest;
* ``rel_gap``: ``(best_energy − E*)/E*`` against the known minimum ``E*`` (NaN where none is tabulated).

:func:`minimize_energy` is the task's reference optimiser: L-BFGS (float64, strong-Wolfe line search) on
the raw points from many random starts in one batch, the best kept. Because ``E`` is invariant to the
norm of each row, its gradient is tangent to the sphere, and L-BFGS on the raw rows is a Riemannian
descent up to the row norms (which it leaves near 1).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split
from rl_energy.nets import hyperspherical_energy

THOMSON_MINIMA: dict[int, float] = {
    2: 0.500000000, 3: 1.732050808, 4: 3.674234614, 5: 6.474691495, 6: 9.985281374, 7: 14.452977414,
    8: 19.675287861, 9: 25.759986531, 10: 32.716949460, 11: 40.596450510, 12: 49.165253058,
    24: 223.347074052, 32: 412.261274651,
}
"""Known minimum Coulomb energies (``s = 1`` on ``S²``) of the Thomson problem, from the published tables
(N = 12: 49.165253058, the icosahedron; the digest re-derived N = 4, 5, 6, 12, 24 numerically)."""


def minimize_energy(
    n_points: int, s: float = 1.0, dim: int = 3, restarts: int = 32, max_iter: int = 2_000, seed: int = 0,
    tol: float = 1e-12,
) -> tuple[torch.Tensor, float]:
    """Lowest energy configuration found from ``restarts`` uniform random starts: ``(points [N, dim] on the
    sphere, float64; energy)``. All starts descend together (their energies summed: the problems are
    independent, so the joint L-BFGS is each one's); ``tol`` is L-BFGS's change tolerance."""
    for name, value, minimum in (("n_points", n_points, 2), ("dim", dim, 2), ("restarts", restarts, 1),
                                 ("max_iter", max_iter, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"minimize_energy: '{name}' must be an integer >= {minimum}, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(restarts, n_points, dim, generator=gen, dtype=torch.float64)
    x = (x / x.norm(dim=-1, keepdim=True)).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, history_size=50, tolerance_grad=1e-14,
                            tolerance_change=tol, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = hyperspherical_energy(x, s, reduction="sum").sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        points = x / x.norm(dim=-1, keepdim=True)
        energies = hyperspherical_energy(points, s, reduction="sum")
        best = int(energies.argmin())
    return points[best].detach(), float(energies[best])


class ThomsonTask(OneStepTask):
    """``N`` points on ``S^{d-1}``; reward ``−E_s`` of their projections (see the module docstring)."""

    metric_names: ClassVar[tuple[str, ...]] = ("energy", "best_energy", "rel_gap")
    full_information: ClassVar[bool] = False

    def __init__(self, n_points: int = 12, s: float = 1.0, dim: int = 3) -> None:
        for name, value, minimum in (("n_points", n_points, 2), ("dim", dim, 2)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"ThomsonTask kwarg '{name}' must be an integer >= {minimum}, got {value!r}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s >= 0):
            raise ValueError(f"ThomsonTask kwarg 's' must be a finite number >= 0, got {s!r}")
        self.n_points, self.dim, self.s = int(n_points), int(dim), float(s)
        self.known_minimum = THOMSON_MINIMA.get(self.n_points) if (self.s == 1.0 and self.dim == 3) else None
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.n_points * self.dim,), dtype=np.float32)

    def points(self, action: torch.Tensor) -> torch.Tensor:
        """Actions ``[n, N d]`` -> points ``[n, N, d]`` on the sphere."""
        w = torch.as_tensor(action).reshape(-1, self.n_points, self.dim)
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def energy(self, action: torch.Tensor) -> torch.Tensor:
        """``E_s`` ``[n]`` of each action's points (float64)."""
        return hyperspherical_energy(self.points(torch.as_tensor(action, dtype=torch.float64)), self.s,
                                     reduction="sum")

    # ------------------------------------------------------------------------- OneStepTask side
    def _split(self, split: Split) -> TensorDict:
        return TensorDict({"obs": torch.zeros(1, 1)}, batch_size=[1])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-action reward ``−E_s`` ``[n]``."""
        return -self.energy(action).float()

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, Any]:
        e = self.energy(action)
        best = float(e.min())
        gap = (best - self.known_minimum) / self.known_minimum if self.known_minimum else float("nan")
        return {"energy": float(e.mean()), "best_energy": best, "rel_gap": gap}
