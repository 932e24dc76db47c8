"""Matrix reasoning tasks of IRED (Du, Mao & Tenenbaum, ICML 2024, "Learning Iterative Reasoning through
Energy Diffusion", arXiv 2406.11179, §4.1 "continuous algorithmic reasoning"; digest
``papers/one-step-tasks.md`` §9) as one-step, full-information bandits.

Both tasks have a training distribution and a **harder** test distribution (the paper's "harder / OOD
variant" column), so that a model trained on the first can be scored on instances that need more
reasoning. ``test_split`` picks which one the fixed ``test`` split holds: ``"hard"`` (default) or
``"same"`` (in-distribution, from an independent stream of ``data_seed``); a reproduction builds the task
twice to report both.

:class:`MatrixInverseTask` (digest table, row "inverse"; the paper's 20 x 20 scaled down to ``n = 5``):

* train: ``A = 2BBᵀ + 0.5 I`` with ``B ~ U(-1, 1)^{n x n}``; hard: ``A = 2BBᵀ + 0.1 I`` (ill-conditioned: the
  smallest eigenvalue is at least the ridge, so it drops towards 0.1; median condition number 15 vs 54 at
  ``n = 5``, measured on 20,000 draws);
* observation: ``A`` flattened (``n²``); action: ``Y``, a guess of ``A⁻¹``, flattened (``n²``);
* reward (per sample, **label-free and verifiable**): ``-‖A·Y - I‖²_F / n²``; 0 exactly at ``Y = A⁻¹`` and
  negative elsewhere (``A`` is invertible);
* label ``A⁻¹`` in ``target``; metrics ``mse`` (mean squared entry error to ``A⁻¹``, the paper's metric) and
  ``residual`` (the mean of ``‖AY - I‖²_F / n²``, i.e. minus the mean reward).

The action space is ``Box(-b, b, (n²,))`` with ``b = 1 / min(ridge, hard_ridge)`` by default: every entry of
``A⁻¹`` is bounded by ``‖A⁻¹‖₂ = 1/λ_min(A) <= 1/ridge``, so the box holds every label of both splits (max
``|A⁻¹_ij|`` measured 1.98 on the train distribution and 9.82 on the hard one, 20,000 draws each).

:class:`MatrixCompletionTask` (digest table, row "low-rank completion"; the paper's 20 x 20 with rank 10
and ``UVᵀ/20`` scaled down to ``8 x 8``):

* ``R = UVᵀ / s + 0.1 ξ`` with ``U, V ~ N(0, 1)^{n x r}``, ``ξ ~ N(0, 1)^{n x n}``; rank ``r = 2`` by default
  (a rank-``r`` ``n x n`` matrix has ``2nr - r²`` degrees of freedom: 28 at rank 2, fewer than the 32 entries
  observed on average, so the hidden entries are determined up to the noise; rank 4 would have 48 and leave
  them undetermined); train ``s = scale`` (default 9, so that entries have about the paper's standard
  deviation, ``√r / s = 0.16`` against ``√10 / 20 = 0.16``), hard ``s = hard_scale`` (default 2.25: a four
  times larger low-rank part, the paper's ratio 20/5);
* each entry is observed with probability 1/2 (``mask ~ Bernoulli(1/2)``); observation: ``[R ⊙ mask, mask]``
  (``2n²``); action: the full matrix ``R̂`` (``n²``);
* reward: ``-mean((R̂ - R)²)`` over all entries — this **uses the label** (a completion has no label-free
  check); metrics ``mse`` (all entries) and ``mse_hidden`` (the masked-out entries only);
* the action box is ``±action_bound`` (default 8; max ``|R|`` measured 2.1 on 1.28M training-distribution
  entries and 7.2 on 1.28M hard ones).

Splits are fixed and deterministic: ``train`` from the stream ``[data_seed, 1]``, the hard test split from
``[data_seed, 2]``, the in-distribution test split from ``[data_seed, 3]``. The score never clips.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split

TEST_SPLITS = ("hard", "same")


def _check_int(task: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{task} kwarg '{name}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{task} kwarg '{name}' must be >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(task: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{task} kwarg '{name}' must be a positive number, got {value!r}")
    return float(value)


def _check_split(task: str, value: Any) -> str:
    if value not in TEST_SPLITS:
        raise ValueError(f"{task} kwarg 'test_split' must be one of {TEST_SPLITS}, got {value!r}")
    return str(value)


class MatrixInverseTask(OneStepTask):
    """Invert a symmetric positive definite matrix; label-free reward ``-‖AY - I‖²_F / n²`` (see the module)."""

    metric_names: ClassVar[tuple[str, ...]] = ("mse", "residual")

    def __init__(
        self,
        n: int = 5,
        n_train: int = 100_000,
        n_test: int = 2_000,
        ridge: float = 0.5,
        hard_ridge: float = 0.1,
        test_split: str = "hard",
        data_seed: int = 0,
        action_bound: float | None = None,
    ) -> None:
        name = "MatrixInverseTask"
        self.n = _check_int(name, "n", n, 1)
        self.n_train = _check_int(name, "n_train", n_train, 1)
        self.n_test = _check_int(name, "n_test", n_test, 2)
        self.ridge = _check_positive(name, "ridge", ridge)
        self.hard_ridge = _check_positive(name, "hard_ridge", hard_ridge)
        self.test_split = _check_split(name, test_split)
        self.data_seed = _check_int(name, "data_seed", data_seed, 0)
        if action_bound is None:
            action_bound = 1.0 / min(self.ridge, self.hard_ridge)
        self.action_bound = _check_positive(name, "action_bound", action_bound)
        d = self.n * self.n
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(d,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-self.action_bound, self.action_bound, shape=(d,), dtype=np.float32)

    def matrices(self, stream: int, count: int, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` matrices ``A = 2BBᵀ + ridge·I`` and their inverses (float64 solve), ``[count, n, n]`` each."""
        rng = np.random.default_rng([self.data_seed, stream])
        b = rng.uniform(-1.0, 1.0, size=(count, self.n, self.n))
        a = 2.0 * b @ b.transpose(0, 2, 1) + ridge * np.eye(self.n)
        inv = np.linalg.inv(a)
        inv = 0.5 * (inv + inv.transpose(0, 2, 1))  # exactly symmetric, like A
        return torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(inv, dtype=torch.float32)

    def _split(self, split: Split) -> TensorDict:
        if split == "train":
            a, inv = self.matrices(1, self.n_train, self.ridge)
        elif self.test_split == "hard":
            a, inv = self.matrices(2, self.n_test, self.hard_ridge)
        else:
            a, inv = self.matrices(3, self.n_test, self.ridge)
        count = a.shape[0]
        return TensorDict({"obs": a.reshape(count, -1), "target": inv.reshape(count, -1)}, batch_size=[count])

    def residual(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``‖A·Y - I‖²_F / n²`` per sample ``[N]`` (float64 products)."""
        n = self.n
        a = torch.as_tensor(obs).double().reshape(-1, n, n)
        y = torch.as_tensor(action).double().reshape(-1, n, n)
        eye = torch.eye(n, dtype=torch.float64, device=a.device)
        return (a @ y - eye).pow(2).sum((1, 2)) / (n * n)

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``-‖A·Y - I‖²_F / n²`` ``[n]`` (digest §9, "Framing": label-free, verifiable)."""
        return -self.residual(batch["obs"], action).float()

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``mse``: mean squared entry error to ``A⁻¹`` (the paper's metric); ``residual``: mean ``‖AY - I‖²/n²``."""
        y = torch.as_tensor(action, dtype=torch.float64).reshape(batch["target"].shape)
        mse = float((y - batch["target"].double()).pow(2).mean())
        return {"mse": mse, "residual": float(self.residual(batch["obs"], action).mean())}

    def condition_numbers(self, split: Split) -> torch.Tensor:
        """2-norm condition numbers of the split's matrices ``[N]``."""
        a = self._cached(split)["obs"].double().reshape(-1, self.n, self.n)
        return torch.linalg.cond(a)


class MatrixCompletionTask(OneStepTask):
    """Complete a noisy low-rank matrix from half of its entries; reward ``-MSE`` to the full matrix (uses the
    label; see the module)."""

    metric_names: ClassVar[tuple[str, ...]] = ("mse", "mse_hidden")

    def __init__(
        self,
        n: int = 8,
        rank: int = 2,
        scale: float = 9.0,
        hard_scale: float = 2.25,
        noise: float = 0.1,
        n_train: int = 100_000,
        n_test: int = 2_000,
        test_split: str = "hard",
        data_seed: int = 0,
        action_bound: float = 8.0,
    ) -> None:
        name = "MatrixCompletionTask"
        self.n = _check_int(name, "n", n, 1)
        self.rank = _check_int(name, "rank", rank, 1)
        self.scale = _check_positive(name, "scale", scale)
        self.hard_scale = _check_positive(name, "hard_scale", hard_scale)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"{name} kwarg 'noise' must be a number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.n_train = _check_int(name, "n_train", n_train, 1)
        self.n_test = _check_int(name, "n_test", n_test, 2)
        self.test_split = _check_split(name, test_split)
        self.data_seed = _check_int(name, "data_seed", data_seed, 0)
        self.action_bound = _check_positive(name, "action_bound", action_bound)
        d = self.n * self.n
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2 * d,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-self.action_bound, self.action_bound, shape=(d,), dtype=np.float32)

    def matrices(self, stream: int, count: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` matrices ``R = UVᵀ/scale + noise·ξ`` and masks (1 = observed), ``[count, n²]`` each."""
        rng = np.random.default_rng([self.data_seed, stream])
        n, r = self.n, self.rank
        u = rng.standard_normal((count, n, r))
        v = rng.standard_normal((count, n, r))
        full = u @ v.transpose(0, 2, 1) / scale + self.noise * rng.standard_normal((count, n, n))
        mask = (rng.random((count, n, n)) < 0.5).astype(np.float64)
        return (torch.as_tensor(full.reshape(count, -1), dtype=torch.float32),
                torch.as_tensor(mask.reshape(count, -1), dtype=torch.float32))

    def _split(self, split: Split) -> TensorDict:
        if split == "train":
            full, mask = self.matrices(1, self.n_train, self.scale)
        elif self.test_split == "hard":
            full, mask = self.matrices(2, self.n_test, self.hard_scale)
        else:
            full, mask = self.matrices(3, self.n_test, self.scale)
        obs = torch.cat([full * mask, mask], dim=1)
        return TensorDict({"obs": obs, "target": full}, batch_size=[full.shape[0]])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``-mean_ij (R̂_ij - R_ij)²`` ``[n]`` (uses the label ``R``)."""
        y = torch.as_tensor(action, dtype=torch.float32).reshape(batch["target"].shape)
        return -(y - batch["target"]).pow(2).mean(1)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``mse`` over all entries and ``mse_hidden`` over the unobserved ones."""
        y = torch.as_tensor(action, dtype=torch.float64).reshape(batch["target"].shape)
        err = (y - batch["target"].double()).pow(2)
        hidden = 1.0 - batch["obs"][:, self.n * self.n:].double()
        return {"mse": float(err.mean()), "mse_hidden": float((err * hidden).sum() / hidden.sum().clamp(min=1.0))}
