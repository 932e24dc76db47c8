"""Regression under continuous target shift: the synthetic setting of ReTaSA's CPU experiment.

Kim, Zhang, Zhao & Tian (ICLR 2024), "ReTaSA: a nonparametric functional estimation approach for addressing
continuous target shift" (arXiv 2401.16410); digest ``one-step-tasks.md`` §2, "CPU experiment" [derived].

Data (built once from ``data_seed``, deterministic; :func:`draw`):

* source labels ``y ~ N(0, 1)``; target labels ``y ~ N(1, 0.5²)`` (``target="gaussian"``) or the two-bump law
  ``0.5 N(−1, 0.4²) + 0.5 N(1.2, 0.4²)`` (``target="bimodal"``, ours: the digest leaves the bimodal law open);
* inputs ``x | y ~ N(g(y), 0.3² I_d)`` in both domains (the shift is in the labels only), ``d = dim ∈ {1, 5}``,
  with the fixed nonlinear ``g`` of :func:`link`: ``g₁(y) = y + 0.4 sin(2y)`` (monotone, so ``p(x|y)`` is
  complete and ω identifiable), then ``tanh(y)``, ``y²/2``, ``cos(y)``, ``sin(2y)/2`` for ``d = 5``.

Splits: **train** = the ``n_source`` labelled source pairs (``obs``, ``target``) plus ``weight``, the importance
weight of kwarg ``weights`` at each source pair, computed once at construction from the source sample and the
task's own ``n_target`` *unlabelled* target inputs (:meth:`TargetShiftRegressionTask.target_inputs`) by
:mod:`rl_energy.analysis.target_shift`: ``none`` (ones), ``oracle`` (the true ``p_t(y)/p_s(y)``), ``retasa``
(ReTaSA, α cross-validated without target labels) or ``kmm`` (kernel mean matching). Learners that read
``weight`` (``agents/supervised.py``) do importance-weighted ERM. **test** = ``n_test`` labelled target-domain
pairs, for evaluation only.

**One step.** Observation ``x`` (float32 ``[dim]``), action the prediction ``ŷ`` (``[1]``), reward ``−(ŷ − y)²``,
``info["target"] = [y]`` (full information on the source: this is offline supervised learning under shift,
not a bandit). Metrics: ``mse`` of the batch and ``weight_error`` ``∫(ω̂ − ω)² p_s`` of the chosen weights
(estimated on the source sample; a constant of the task).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.analysis.target_shift import kmm_weights, oracle_weights, retasa_weights, weight_error
from rl_energy.envs.tasks.base import OneStepTask, Split, is_int

TARGET_LAWS = ("gaussian", "bimodal")
WEIGHT_KINDS = ("none", "oracle", "retasa", "kmm")
DIMS = (1, 5)
NOISE = 0.3
"""The standard deviation of ``x | y`` around ``g(y)`` per coordinate (digest §2)."""
BIMODAL = ((0.5, -1.0, 0.4), (0.5, 1.2, 0.4))
"""``(weight, mean, sd)`` of the bimodal target label law's components."""


def _norm_logpdf(y: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return -0.5 * ((y - mean) / sd) ** 2 - np.log(sd * np.sqrt(2.0 * np.pi))


def source_logpdf(y: np.ndarray) -> np.ndarray:
    """``log p_s(y)``, the standard normal."""
    return _norm_logpdf(np.asarray(y, dtype=np.float64), 0.0, 1.0)


def target_logpdf(y: np.ndarray, law: str) -> np.ndarray:
    """``log p_t(y)`` of the target label law ``law`` (``gaussian``: N(1, 0.5²); ``bimodal``: :data:`BIMODAL`)."""
    y = np.asarray(y, dtype=np.float64)
    if law == "gaussian":
        return _norm_logpdf(y, 1.0, 0.5)
    if law == "bimodal":
        parts = np.stack([np.log(w) + _norm_logpdf(y, mu, sd) for w, mu, sd in BIMODAL])
        top = parts.max(axis=0)
        return top + np.log(np.exp(parts - top).sum(axis=0))
    raise ValueError(f"law must be one of {', '.join(TARGET_LAWS)}, got {law!r}")


def true_weight(y: np.ndarray, law: str) -> np.ndarray:
    """The oracle ``ω(y) = p_t(y)/p_s(y)`` of target law ``law``."""
    return oracle_weights(y, source_logpdf, lambda v: target_logpdf(v, law))


def link(y: np.ndarray, dim: int) -> np.ndarray:
    """The nonlinear mean ``g(y)`` ``[N, dim]`` of ``x | y`` (module docstring); ``dim`` in 1..5."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    cols = [y + 0.4 * np.sin(2.0 * y), np.tanh(y), 0.5 * y**2, np.cos(y), 0.5 * np.sin(2.0 * y)]
    if not 1 <= dim <= len(cols):
        raise ValueError(f"dim must be in 1..{len(cols)}, got {dim!r}")
    return np.stack(cols[:dim], axis=1)


def draw_labels(rng: np.random.Generator, n: int, law: str) -> np.ndarray:
    """``n`` labels of ``law``: ``source`` (N(0, 1)), ``gaussian`` or ``bimodal``."""
    if law == "source":
        return rng.standard_normal(n)
    if law == "gaussian":
        return 1.0 + 0.5 * rng.standard_normal(n)
    if law == "bimodal":
        comp = rng.choice(len(BIMODAL), size=n, p=[w for w, _, _ in BIMODAL])
        mu = np.array([c[1] for c in BIMODAL])[comp]
        sd = np.array([c[2] for c in BIMODAL])[comp]
        return mu + sd * rng.standard_normal(n)
    raise ValueError(f"law must be 'source' or one of {', '.join(TARGET_LAWS)}, got {law!r}")


def draw(rng: np.random.Generator, n: int, law: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs ``(x [n, dim], y [n])`` with ``y ~ law`` and ``x | y ~ N(g(y), 0.3² I)``."""
    y = draw_labels(rng, n, law)
    return link(y, dim) + NOISE * rng.standard_normal((n, dim)), y


def importance_weights(kind: str, x_source: np.ndarray, y_source: np.ndarray, x_target: np.ndarray,
                       law: str, seed: int = 0) -> np.ndarray:
    """The weights ``[n]`` of ``kind`` (:data:`WEIGHT_KINDS`) at the source pairs; only ``oracle`` uses ``law``, and
    no kind uses target labels."""
    if kind == "none":
        return np.ones(len(y_source))
    if kind == "oracle":
        return true_weight(y_source, law)
    if kind == "retasa":
        return retasa_weights(x_source, y_source, x_target, seed=seed).omega
    if kind == "kmm":
        return kmm_weights(x_source, x_target)
    raise ValueError(f"kind must be one of {', '.join(WEIGHT_KINDS)}, got {kind!r}")


class TargetShiftRegressionTask(OneStepTask):
    """ReTaSA's synthetic continuous target shift (digest §2) as a one-step, full-information task.

    Keyword arguments (``env_kwargs``): ``data_seed`` (0), ``n_source`` (1,000 labelled source pairs: the train
    split), ``n_target`` (1,000 unlabelled target inputs), ``n_test`` (2,000 labelled target pairs), ``dim``
    (1 or 5), ``target`` (``"gaussian"`` or ``"bimodal"``), ``weights`` (``"none"``, ``"oracle"``, ``"retasa"``,
    ``"kmm"``). A bad value raises ``ValueError`` naming the kwarg.
    """

    metric_names: ClassVar[tuple[str, ...]] = ("mse", "weight_error")
    full_information: ClassVar[bool] = True

    def __init__(
        self,
        data_seed: int = 0,
        n_source: int = 1000,
        n_target: int = 1000,
        n_test: int = 2000,
        dim: int = 1,
        target: str = "gaussian",
        weights: str = "retasa",
    ) -> None:
        super().__init__()

        def count(v: Any, low: int) -> bool:
            return is_int(v) and v >= low

        checks: list[tuple[str, Any, bool, str]] = [
            ("data_seed", data_seed, count(data_seed, 0), "an integer >= 0"),
            ("n_source", n_source, count(n_source, 10), "an integer >= 10"),
            ("n_target", n_target, count(n_target, 10), "an integer >= 10"),
            ("n_test", n_test, count(n_test, 2), "an integer >= 2"),
            ("dim", dim, count(dim, 0) and dim in DIMS, f"one of {', '.join(map(str, DIMS))}"),
            ("target", target, target in TARGET_LAWS, f"one of {', '.join(TARGET_LAWS)}"),
            ("weights", weights, weights in WEIGHT_KINDS, f"one of {', '.join(WEIGHT_KINDS)}"),
        ]
        for name, value, ok, requirement in checks:
            if not ok:
                raise ValueError(f"TargetShiftRegressionTask kwarg '{name}' must be {requirement}, got {value!r}")
        self.data_seed, self.n_source, self.n_target, self.n_test = int(data_seed), int(n_source), int(n_target), \
            int(n_test)
        self.dim, self.target, self.weights = int(dim), target, weights

        seeds = np.random.SeedSequence(self.data_seed).spawn(3)
        xs, ys = draw(np.random.default_rng(seeds[0]), self.n_source, "source", self.dim)
        xt, _ = draw(np.random.default_rng(seeds[1]), self.n_target, self.target, self.dim)  # labels discarded
        x_test, y_test = draw(np.random.default_rng(seeds[2]), self.n_test, self.target, self.dim)
        self._x_target = xt
        self._weight = importance_weights(weights, xs, ys, xt, self.target, seed=self.data_seed)
        self.oracle = true_weight(ys, self.target)
        """The true weights ``ω(y_i)`` at the source labels."""
        self.weight_error = weight_error(self._weight, self.oracle)
        """``∫(ω̂ − ω)² p_s`` of the chosen weights, estimated on the source sample."""

        def split(x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> TensorDict:
            data = {"obs": torch.as_tensor(x, dtype=torch.float32),
                    "target": torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)}
            data.update({k: torch.as_tensor(v, dtype=torch.float32) for k, v in extra.items()})
            return TensorDict(data, batch_size=[len(y)])

        self._data = {"train": split(xs, ys, weight=self._weight), "test": split(x_test, y_test)}
        x_bound = float(np.ceil(1.05 * max(np.abs(xs).max(), np.abs(xt).max(), np.abs(x_test).max())))
        y_bound = float(np.ceil(1.05 * max(np.abs(ys).max(), np.abs(y_test).max())))
        self.observation_space = gym.spaces.Box(-x_bound, x_bound, shape=(self.dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-y_bound, y_bound, shape=(1,), dtype=np.float32)

    # ------------------------------------------------------------------------------------- data
    def _split(self, split: Split) -> TensorDict:
        return self._data[split]

    def target_inputs(self) -> np.ndarray:
        """The unlabelled target inputs ``[n_target, dim]`` the weights were computed from (a copy)."""
        return self._x_target.copy()

    def oracle_weight(self, y: np.ndarray) -> np.ndarray:
        """The true importance weight ``ω(y) = p_t(y)/p_s(y)`` of this task's target law."""
        return true_weight(y, self.target)

    # ----------------------------------------------------------------------------------- scoring
    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``−(ŷ − y)²``."""
        pred = torch.as_tensor(action, dtype=torch.float32).reshape(-1)
        return -(pred - batch["target"].reshape(-1)).square()

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``mse`` of the batch's predictions and the task's ``weight_error`` (a constant, see the class)."""
        return {"mse": float(-self.score(batch, action).mean()), "weight_error": self.weight_error}
