"""Behaviour cloning of a linear-quadratic regulator as a one-step, full-information bandit (the imitation
setting of SSO: Lavington et al., ICML 2023, "Target-based surrogates for stochastic optimization",
arXiv 2302.02607, §5 online imitation; digest ``papers/one-step-tasks.md`` §12, framing (b) and "CPU
experiment": "a 6-D linear system with an LQR expert").

System (fixed by ``data_seed``): ``x_{t+1} = A x_t + B u_t + w_t`` with state dimension ``state_dim`` (6) and
``control_dim`` (2) controls. ``A = ρ G / ρ(G)`` for a Gaussian ``G`` (``ρ`` = ``spectral_radius``, default 1.05:
open-loop unstable, so the controller matters), ``B`` Gaussian with entries ``N(0, 1/state_dim)`` (generically
controllable, hence stabilisable). Costs ``Q = I``, ``R = control_cost · I``.

Expert: the infinite-horizon discrete-time LQR gain ``K = (R + BᵀPB)⁻¹ BᵀPA``, ``P`` the stabilising solution
of the discrete algebraic Riccati equation ``P = Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA``, found by iterating the
Riccati map from ``P = Q`` in float64 numpy (:func:`solve_dare`; no scipy). The expert acts ``u* = −K x``.

Contexts: states from the **expert's closed-loop state distribution**: episodes of ``horizon`` steps start at
``x_0 ~ N(0, x0_scale² I)`` and follow ``x_{t+1} = (A − BK) x_t + w_t``, ``w_t ~ N(0, noise² I)``; every visited
state ``x_0, …, x_{horizon−1}`` is a context. ``train`` and ``test`` (``n_train`` / ``n_test`` states, the last
episode cut short) come from independent random streams of ``data_seed``. These are the expert's states
only: no DAgger-style states of the learner are offered (the paper's online imitation mixes them in).

Framing (digest §12, framing (b)): observation = state ``x``; action = control ``u`` in ``Box(-B, B,
(control_dim,))`` (``B = action_bound``; the score never clips); ``target`` = the expert's action ``−Kx``; reward
``−‖u − u*‖²``. Metrics: ``mse`` (mean ``‖u − u*‖²``) and ``rel_mse`` (divided by the mean ``‖u*‖²``: 1 for
the zero controller).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split


def solve_dare(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray, tol: float = 1e-12,
               max_iter: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """``(P, K)``: the stabilising solution of the discrete algebraic Riccati equation and the LQR gain, by
    iterating the Riccati map ``P ← Q + AᵀPA − AᵀPB (R + BᵀPB)⁻¹ BᵀPA`` from ``P = Q`` (value iteration of the
    infinite-horizon LQR; converges for stabilisable ``(A, B)`` and ``Q ≻ 0``) until the relative change is
    below ``tol``. Raises ``ValueError`` if it does not converge."""
    p = q.copy()
    for _ in range(max_iter):
        bp = b.T @ p
        gain = np.linalg.solve(r + bp @ b, bp @ a)
        nxt = q + a.T @ p @ a - a.T @ p @ b @ gain
        nxt = 0.5 * (nxt + nxt.T)
        if not np.all(np.isfinite(nxt)):
            break
        if np.max(np.abs(nxt - p)) <= tol * max(1.0, float(np.max(np.abs(nxt)))):
            p = nxt
            bp = b.T @ p
            return p, np.linalg.solve(r + bp @ b, bp @ a)
        p = nxt
    raise ValueError("the Riccati iteration did not converge: (A, B) is not stabilisable")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"LQRImitationTask kwarg '{name}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"LQRImitationTask kwarg '{name}' must be >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, minimum: float, strict: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and (
        value > minimum if strict else value >= minimum)
    if not ok:
        raise ValueError(f"LQRImitationTask kwarg '{name}' must be a number {'>' if strict else '>='} {minimum}, "
                         f"got {value!r}")
    return float(value)


class LQRImitationTask(OneStepTask):
    """Imitate the LQR expert ``u* = −Kx`` on its own closed-loop states (see the module docstring)."""

    metric_names: ClassVar[tuple[str, ...]] = ("mse", "rel_mse")

    def __init__(
        self,
        state_dim: int = 6,
        control_dim: int = 2,
        spectral_radius: float = 1.05,
        control_cost: float = 0.1,
        horizon: int = 50,
        noise: float = 0.1,
        x0_scale: float = 1.0,
        n_train: int = 5_000,
        n_test: int = 2_000,
        data_seed: int = 0,
        action_bound: float = 10.0,
    ) -> None:
        self.state_dim = _check_int("state_dim", state_dim, 1)
        self.control_dim = _check_int("control_dim", control_dim, 1)
        self.spectral_radius = _check_float("spectral_radius", spectral_radius, 0.0)
        self.control_cost = _check_float("control_cost", control_cost, 0.0)
        self.horizon = _check_int("horizon", horizon, 1)
        self.noise = _check_float("noise", noise, 0.0, strict=False)
        self.x0_scale = _check_float("x0_scale", x0_scale, 0.0)
        self.n_train = _check_int("n_train", n_train, 1)
        self.n_test = _check_int("n_test", n_test, 2)
        self.data_seed = _check_int("data_seed", data_seed, 0)
        self.action_bound = _check_float("action_bound", action_bound, 0.0)

        rng = np.random.default_rng([self.data_seed, 0])
        n, k = self.state_dim, self.control_dim
        g = rng.standard_normal((n, n))
        self.A = self.spectral_radius * g / np.max(np.abs(np.linalg.eigvals(g)))
        self.B = rng.standard_normal((n, k)) / math.sqrt(n)
        self.Q = np.eye(n)
        self.R = self.control_cost * np.eye(k)
        self.P, self.K = solve_dare(self.A, self.B, self.Q, self.R)
        self.closed_loop = self.A - self.B @ self.K
        rho = float(np.max(np.abs(np.linalg.eigvals(self.closed_loop))))
        if not rho < 1.0:  # cannot happen for a converged stabilising solution; a guard for odd settings
            raise ValueError(f"the LQR gain does not stabilise the system (spectral radius {rho:.4f})")

        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-self.action_bound, self.action_bound, shape=(k,), dtype=np.float32)

    # ------------------------------------------------------------------------------ the expert
    def expert(self, x: torch.Tensor) -> torch.Tensor:
        """The expert's controls ``−Kx`` ``[N, control_dim]`` (float32)."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.state_dim)
        return (-x @ torch.as_tensor(self.K.T)).float()

    def closed_loop_states(self, n: int, stream: int) -> np.ndarray:
        """``n`` states of the expert's closed loop (episodes of ``horizon`` steps from ``N(0, x0_scale² I)``, process
        noise ``N(0, noise² I)``), from the random stream ``stream`` of ``data_seed``."""
        rng = np.random.default_rng([self.data_seed, stream])
        episodes = -(-n // self.horizon)
        x = self.x0_scale * rng.standard_normal((episodes, self.state_dim))
        states = np.empty((self.horizon, episodes, self.state_dim))
        for t in range(self.horizon):
            states[t] = x
            x = x @ self.closed_loop.T + self.noise * rng.standard_normal(x.shape)
        return states.transpose(1, 0, 2).reshape(-1, self.state_dim)[:n]

    # ------------------------------------------------------------------------- OneStepTask side
    def _split(self, split: Split) -> TensorDict:
        n, stream = (self.n_train, 1) if split == "train" else (self.n_test, 2)
        x = torch.as_tensor(self.closed_loop_states(n, stream), dtype=torch.float32)
        return TensorDict({"obs": x, "target": self.expert(x)}, batch_size=[n])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``−‖u − u*‖²`` ``[n]`` (digest §12, framing (b))."""
        u = torch.as_tensor(action, dtype=torch.float32).reshape(-1, self.control_dim)
        return -(u - batch["target"].reshape(-1, self.control_dim)).pow(2).sum(-1)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``mse`` = mean ``‖u − u*‖²``; ``rel_mse`` = ``mse`` / mean ``‖u*‖²`` (1 for ``u = 0``)."""
        u = torch.as_tensor(action, dtype=torch.float64).reshape(-1, self.control_dim)
        target = batch["target"].double().reshape(-1, self.control_dim)
        mse = float((u - target).pow(2).sum(-1).mean())
        scale = float(target.pow(2).sum(-1).mean())
        return {"mse": mse, "rel_mse": mse / scale if scale > 0 else float("nan")}
