"""Interpreting a structured-output black box as a contextual bandit (SOInter: Seyyedsalehi, Soleymani
Baghshah & Rabiee, ICLR 2024, "Interpretation of structured output black boxes", arXiv 2202.09914; digest
``papers/one-step-tasks.md`` §1, "CPU experiment").

The black box ``sb`` (digest §1, "CPU experiment"): ``L`` coupled binary outputs ``y ∈ {−1, +1}^L`` of ``d``
Gaussian features ``x ~ N(0, I_d)``, the exact MAP of a pairwise CRF::

    score(x, y) = Σ_ℓ θ_ℓ(x) y_ℓ + coupling · Σ_{(ℓ,u) ∈ G} J_ℓu y_ℓ y_u,    θ_ℓ(x) = w_ℓ · x_{S_ℓ},
    sb(x) = argmax_y score(x, y)          (all 2^L configurations enumerated at once, no loop per sample)

with disjoint feature blocks ``S_ℓ = {ℓ p, …, ℓ p + p − 1}`` (``p = features_per_output``; the features past
``L p`` drive no output), unit-norm ``w_ℓ`` and signs ``J_ℓu = ±1`` drawn from ``data_seed``. The coupling graph
``G`` is a star joining the target output ``t`` to its ``n_coupled`` successors ``U = {t+1, …}`` (mod ``L``)
plus a chain through the remaining outputs (structure that does not reach ``t``). The ground-truth relevant
set of ``t`` is ``R = S_t ∪ ⋃_{u ∈ U} S_u`` when ``coupling > 0`` and ``S_t`` when ``coupling = 0``
(:meth:`StructuredInterpretationTask.relevant`): through the couplings the features of ``u`` move ``y_t``.

Framing (digest §1, "Framing"), a genuine bandit (``full_information = False``):

* observation ``[x, sb(x)]`` of size ``d + L``: the features, then the black box's outputs on ``x`` with the
  **target output first** (``obs[d]`` is ``sb_t(x)``, then the others in the order ``t+1, …, t−1`` mod ``L``),
  so an interpreter can pre-train an energy over all outputs without extra queries;
* action: a feature mask in ``[0, 1]^d``; the task keeps its ``k`` largest entries (a k-hot mask maps to itself,
  ties go to the lower index), so step agents acting in a Box get a valid k-subset too;
* reward: fidelity ``1[sb_t(x ⊙ m + mask_value (1 − m)) = sb_t(x)]``: masked features are replaced by
  ``mask_value`` (default 0, the features' mean).

Metrics: ``tpr`` (true-positive rate, ``|selected ∩ R| / |R|``, averaged over contexts; with ``k = |R|`` it is
also the precision), ``post_hoc_accuracy`` (mean fidelity) and ``median_rank`` (median over contexts and
relevant features of a relevant feature's rank in the action's ordering, 1 = first; only informative for
graded actions, e.g. attributions: a k-hot mask ranks its k picks by index).

Every split carries a task-private column ``k`` (``[N, 1]``, the subset size) that reward-only interpreters read
in ``observe_train_split``; the score itself reads only ``obs`` and ``action``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split, is_int, is_number
from rl_energy.errors import ConfigError

MAX_OUTPUTS = 10
"""``L`` limit: the MAP enumerates ``2^L`` configurations for every context."""
CHUNK = 16_384


class StructuredInterpretationTask(OneStepTask):
    """Feature selection for one output of a coupled structured-output black box (see the module docstring)."""

    metric_names: ClassVar[tuple[str, ...]] = ("tpr", "post_hoc_accuracy", "median_rank")
    full_information: ClassVar[bool] = False

    def __init__(self, n_features: int = 20, n_outputs: int = 5, features_per_output: int = 3, n_coupled: int = 2,
                 coupling: float = 1.0, target: int = 0, k: int | None = None, mask_value: float = 0.0,
                 n_train: int = 2000, n_test: int = 1000, data_seed: int = 0) -> None:
        super().__init__()
        checks: list[tuple[str, Any, bool, str]] = [
            ("n_features", n_features, is_int(n_features) and 2 <= n_features <= 10_000, "an integer in [2, 10000]"),
            ("n_outputs", n_outputs, is_int(n_outputs) and 2 <= n_outputs <= MAX_OUTPUTS,
             f"an integer in [2, {MAX_OUTPUTS}]"),
            ("features_per_output", features_per_output, is_int(features_per_output) and features_per_output >= 1,
             "an integer >= 1"),
            ("n_coupled", n_coupled, is_int(n_coupled) and n_coupled >= 0, "an integer >= 0"),
            ("coupling", coupling, is_number(coupling) and 0 <= coupling <= 1e3, "a number in [0, 1000]"),
            ("target", target, is_int(target) and target >= 0, "an integer >= 0"),
            ("k", k, k is None or (is_int(k) and k >= 1), "null or an integer >= 1"),
            ("mask_value", mask_value, is_number(mask_value), "a finite number"),
            ("n_train", n_train, is_int(n_train) and n_train >= 1, "an integer >= 1"),
            ("n_test", n_test, is_int(n_test) and n_test >= 2, "an integer >= 2"),
            ("data_seed", data_seed, is_int(data_seed) and data_seed >= 0, "an integer >= 0"),
        ]
        for name, value, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"StructuredInterpretationTask kwarg '{name}' must be {requirement}, got {value!r}")
        d, n_out, p = int(n_features), int(n_outputs), int(features_per_output)
        if n_out * p > d:
            raise ConfigError(f"StructuredInterpretationTask kwarg 'features_per_output' must satisfy n_outputs x "
                              f"features_per_output <= n_features = {d}, got {p} (x {n_out})")
        if target >= n_out:
            raise ConfigError(f"StructuredInterpretationTask kwarg 'target' must be < n_outputs = {n_out}, "
                              f"got {target!r}")
        if n_coupled > n_out - 1:
            raise ConfigError(f"StructuredInterpretationTask kwarg 'n_coupled' must be <= n_outputs - 1 = "
                              f"{n_out - 1}, got {n_coupled!r}")
        self.d, self.n_outputs, self.p, self.n_coupled = d, n_out, p, int(n_coupled)
        self.coupling, self.target, self.mask_value = float(coupling), int(target), float(mask_value)
        self.n_train, self.n_test, self.data_seed = int(n_train), int(n_test), int(data_seed)
        self.k = int(k) if k is not None else p * (1 + self.n_coupled)
        if self.k > d:
            raise ConfigError(f"StructuredInterpretationTask kwarg 'k' must be <= n_features = {d}, got {self.k}")

        rng = np.random.default_rng([self.data_seed, 0])
        w = rng.standard_normal((n_out, p))
        self.w = torch.as_tensor(w / np.linalg.norm(w, axis=1, keepdims=True), dtype=torch.float32)
        self.blocks = torch.arange(n_out * p).reshape(n_out, p)  # S_ℓ
        self.order = [(self.target + j) % n_out for j in range(n_out)]
        """Output order of the observation: the target first, then t+1, t+2, … (mod L)."""
        self.coupled = self.order[1:1 + self.n_coupled]
        rest = self.order[1 + self.n_coupled:]
        edges = [(self.target, u) for u in self.coupled] + list(itertools.pairwise(rest))
        self.edges = edges
        signs = rng.choice([-1.0, 1.0], size=len(edges))
        j_mat = torch.zeros(n_out, n_out)
        for (a, b), s in zip(edges, signs, strict=True):
            j_mat[a, b] = j_mat[b, a] = float(s)
        self.J = j_mat
        """Coupling signs ``J_ℓu`` (symmetric, zero diagonal); the pairwise term is ``coupling · Σ_{ℓ<u} J y y``."""
        self.configs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n_out)), dtype=torch.float32)
        """All ``2^L`` output configurations ``[C, L]``."""
        self._pair = 0.5 * self.coupling * ((self.configs @ self.J) * self.configs).sum(1)  # [C]

        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(d + n_out,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(d,), dtype=np.float32)

    # ------------------------------------------------------------------------------ the black box
    def unary(self, x: torch.Tensor) -> torch.Tensor:
        """``θ_ℓ(x) = w_ℓ · x_{S_ℓ}`` ``[N, L]``."""
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, self.d)
        return (x[:, self.blocks] * self.w).sum(-1)

    def config_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``score(x, y)`` of every configuration ``[N, 2^L]``."""
        return self.unary(x) @ self.configs.T + self._pair

    def black_box(self, x: torch.Tensor) -> torch.Tensor:
        """``sb(x)``: the exact MAP ``[N, L]`` in ``{−1, +1}``, by enumeration (in the outputs' own order)."""
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, self.d)
        out = [self.configs[self.config_scores(c).argmax(1)] for c in x.split(CHUNK)]
        return torch.cat(out) if out else x.new_zeros(0, self.n_outputs)

    def target_probability(self, x: torch.Tensor) -> torch.Tensor:
        """``P(y_t = +1 | x)`` ``[N]`` under the black box's Gibbs distribution ``∝ exp(score(x, y))``: the
        smooth target-output probability that LIME and Kernel-SHAP attribute."""
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, self.d)
        plus = self.configs[:, self.target] > 0
        out = [torch.softmax(self.config_scores(c).double(), 1)[:, plus].sum(1).float() for c in x.split(CHUNK)]
        return torch.cat(out) if out else x.new_zeros(0)

    def masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x ⊙ m + mask_value (1 − m)``."""
        return x * mask + self.mask_value * (1.0 - mask)

    def relevant(self) -> torch.Tensor:
        """The ground-truth relevant set of the target as a 0/1 vector ``[d]``: ``S_t ∪ S_u`` over the coupled
        outputs ``u`` (``S_t`` alone when ``coupling = 0``)."""
        rel = torch.zeros(self.d)
        outputs = [self.target] + (self.coupled if self.coupling > 0 else [])
        rel[self.blocks[outputs].reshape(-1)] = 1.0
        return rel

    # --------------------------------------------------------------------------- the bandit side
    def select(self, action: torch.Tensor) -> torch.Tensor:
        """The k-hot mask ``[n, d]`` of an action's ``k`` largest entries (ties: the lower index)."""
        a = torch.as_tensor(action, dtype=torch.float32).reshape(-1, self.d)
        idx = torch.argsort(-a, dim=1, stable=True)[:, :self.k]
        return torch.zeros_like(a).scatter_(1, idx, 1.0)

    def _split(self, split: Split) -> TensorDict:
        n, stream = (self.n_train, 1) if split == "train" else (self.n_test, 2)
        rng = np.random.default_rng([self.data_seed, stream])
        x = torch.as_tensor(rng.standard_normal((n, self.d)), dtype=torch.float32)
        y = self.black_box(x)[:, self.order]
        return TensorDict({"obs": torch.cat([x, y], 1), "k": torch.full((n, 1), float(self.k))}, batch_size=[n])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Fidelity ``1[sb_t(x ⊙ m) = sb_t(x)]`` ``[n]`` of the k-subset the action selects (digest §1, "Framing")."""
        obs = batch["obs"].reshape(-1, self.d + self.n_outputs)
        x, y_t = obs[:, :self.d], obs[:, self.d]
        masked_t = self.black_box(self.masked(x, self.select(action)))[:, self.target]
        return (masked_t == y_t).float()

    def true_positive_rate(self, action: torch.Tensor) -> torch.Tensor:
        """``|selected ∩ R| / |R|`` per context ``[n]``."""
        rel = self.relevant()
        return (self.select(action) * rel).sum(1) / rel.sum()

    def median_rank(self, action: torch.Tensor) -> float:
        """Median rank (1 = largest entry) of the relevant features in the actions' orderings."""
        a = torch.as_tensor(action, dtype=torch.float32).reshape(-1, self.d)
        ranks = torch.argsort(torch.argsort(-a, dim=1, stable=True), dim=1) + 1
        return float(ranks[:, self.relevant() > 0].float().median()) if len(a) else math.nan

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``tpr``, ``post_hoc_accuracy`` (mean fidelity) and ``median_rank`` (digest §1, "Metric")."""
        return {"tpr": float(self.true_positive_rate(action).mean()),
                "post_hoc_accuracy": float(self.score(batch, action).mean()),
                "median_rank": self.median_rank(action)}
