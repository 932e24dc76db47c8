"""Hierarchical polynomials h = g∘p as a one-step regression bandit (Wang, Nichani & Lee, ICLR 2024,
"Learning hierarchical polynomials with three-layer networks", arXiv 2311.13774; digest
``papers/one-step-tasks.md`` §10).

Setting (paper §2, "hierarchical polynomials"): inputs ``x ~ N(0, I_d)``, a degree-``k`` feature

    p(x) = Σ_{i_1 < ... < i_k} s_{i_1...i_k} x_{i_1} ··· x_{i_k} / √C(d, k),   s ∈ {±1} random (from ``data_seed``),

which has ``E p = 0`` and ``E p² = 1`` exactly (monomials over distinct indices are orthonormal under
the Gaussian measure), and a degree-``q`` link ``g``; the target is ``h = g(p) / σ_g``. ``σ_g`` (when
``normalize=True``, the default) is the standard deviation of ``g(p)`` estimated once from 65,536 fixed
Monte Carlo draws of ``x`` (seeded by ``data_seed``; exactly 1 for ``g = linear``), so that ``h`` has unit
variance up to that estimate's error (about 1%).

Links (``g`` kwarg; ``He_2(z) = z² - 1`` is the second probabilists' Hermite polynomial):

* ``"he1_he2"``: ``g(z) = z + He_2(z)/√2`` (the digest's pilot; nonzero first Hermite coefficient, so
  the degree-``k`` projection of ``h`` is ``p`` itself and stage 1 of the layer-wise net can find it);
* ``"he2"``: ``g(z) = He_2(z)/√2``, the negative control (first Hermite coefficient 0: for odd ``k`` the
  degree-``k`` projection of ``h`` vanishes, so nothing in stage 1 points at ``p``);
* ``"linear"``: ``g(z) = z`` (``h = p``, a plain degree-``k`` regression).

Framing (digest §10, "Framing"): observation ``x``; action ``ŷ``; reward ``-(ŷ - h(x))²``; the label
``h(x)`` is in ``info["target"]`` (full information). The action space is ``Box(-B, B, (1,))`` with
``B = action_bound`` (default 6, i.e. six standard deviations of the unit-variance ``h``); it only serves
to rescale step agents acting in ``[-1, 1]`` (``P(|h| > 6)`` is about 0.3% for ``he1_he2``: the
quadratic link has a heavy right tail), and the score never clips.

Splits: ``train`` (``n_train`` points) and ``test`` (``n_test``), drawn from independent streams of
``data_seed``, so the test split does not depend on ``n_train`` (the reproduction compares sample sizes
on one test set). :meth:`HierPolyTask.p` exposes the latent feature for ``corr(feature, p)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split

LINKS: tuple[str, ...] = ("he1_he2", "he2", "linear")
MAX_MONOMIALS = 200_000
"""``C(d, k)`` limit (the monomial index table and the per-chunk products stay small)."""
MC_SAMPLES = 65_536
"""Monte Carlo draws behind the normalisation ``σ_g`` when it is not computed exactly."""
EXACT_PAIRS = 4_000_000
"""``σ_g`` is exact (:meth:`HierPolyTask.p_moments`) while ``C(d, k)² <=`` this."""


def link(name: str, z: torch.Tensor) -> torch.Tensor:
    """``g(z)`` for the link ``name`` (see the module docstring)."""
    if name == "he1_he2":
        return z + (z * z - 1.0) / math.sqrt(2.0)
    if name == "he2":
        return (z * z - 1.0) / math.sqrt(2.0)
    if name == "linear":
        return z
    raise ValueError(f"g must be one of {LINKS}, got {name!r}")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"HierPolyTask kwarg '{name}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"HierPolyTask kwarg '{name}' must be >= {minimum}, got {value!r}")
    return int(value)


class HierPolyTask(OneStepTask):
    """``h = g∘p`` regression with ``x ~ N(0, I_d)`` as a one-step, full-information bandit (see module)."""

    metric_names: ClassVar[tuple[str, ...]] = ("rel_mse", "corr", "mse")

    def __init__(
        self,
        d: int = 8,
        k: int = 3,
        g: str = "he1_he2",
        n_train: int = 8192,
        n_test: int = 4096,
        data_seed: int = 0,
        normalize: bool = True,
        action_bound: float = 6.0,
    ) -> None:
        self.d = _check_int("d", d, 1)
        self.k = _check_int("k", k, 1)
        if self.k > self.d:
            raise ValueError(f"HierPolyTask kwarg 'k' must be <= d = {self.d} (monomials over distinct indices), "
                             f"got {k!r}")
        if g not in LINKS:
            raise ValueError(f"HierPolyTask kwarg 'g' must be one of {LINKS}, got {g!r}")
        self.g = g
        self.n_train = _check_int("n_train", n_train, 1)
        self.n_test = _check_int("n_test", n_test, 2)
        self.data_seed = _check_int("data_seed", data_seed, 0)
        if not isinstance(normalize, bool):
            raise ValueError(f"HierPolyTask kwarg 'normalize' must be true or false, got {normalize!r}")
        if isinstance(action_bound, bool) or not isinstance(action_bound, (int, float)) or not (
            math.isfinite(action_bound) and action_bound > 0
        ):
            raise ValueError(f"HierPolyTask kwarg 'action_bound' must be a positive number, got {action_bound!r}")
        n_monomials = math.comb(self.d, self.k)
        if n_monomials > MAX_MONOMIALS:
            raise ValueError(f"HierPolyTask kwargs 'd' and 'k': C(d, k) = {n_monomials} monomials exceeds "
                             f"{MAX_MONOMIALS}; use a smaller d or k")

        # p's monomials (index table [M, k]) and random signs, from the data_seed's first stream
        self.monomials = torch.tensor(list(itertools.combinations(range(self.d), self.k)), dtype=torch.long)
        signs = np.random.default_rng([self.data_seed, 0]).choice([-1.0, 1.0], size=n_monomials)
        self.signs = torch.as_tensor(signs, dtype=torch.float32)
        self.scale = 1.0
        if normalize and g != "linear":
            self.scale = self.link_std()
        self.normalize = normalize

        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.d,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-float(action_bound), float(action_bound), shape=(1,), dtype=np.float32)

    # ------------------------------------------------------------------------------ the target
    def _gaussian(self, stream: int, n: int) -> torch.Tensor:
        rng = np.random.default_rng([self.data_seed, stream])
        return torch.as_tensor(rng.standard_normal((n, self.d)), dtype=torch.float32)

    def p(self, x: torch.Tensor) -> torch.Tensor:
        """The latent degree-``k`` feature ``p(x)`` ``[N]`` (unit variance under ``N(0, I_d)``)."""
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, self.d)
        m = self.monomials.shape[0]
        rows = max(1, (1 << 22) // (m * self.k))  # about 16 MB of products per chunk
        out = [
            (chunk[:, self.monomials].prod(-1) @ self.signs) for chunk in x.split(rows)
        ] if x.shape[0] else [x.new_zeros(0)]
        return torch.cat(out) / math.sqrt(m)

    def p_moments(self) -> tuple[float, float] | None:
        """Exact ``(E p³, E p⁴)`` under ``N(0, I_d)``, or ``None`` when ``C(d, k)² > EXACT_PAIRS``.

        ``p²`` is a sum over pairs of monomials ``s_T s_T' x^{1_T + 1_T'} / M`` with exponents in {0, 1, 2};
        writing ``x_i² = He_2(x_i) + 1`` expands it in the orthogonal Hermite basis ``He_α`` (``‖He_α‖² = α!``),
        so ``E p⁴ = Σ_α b_α² α!`` and ``E p³ = E[p · p²] = Σ_T (s_T/√M) b_{1_T}``.
        """
        m, d = self.monomials.shape[0], self.d
        if m * m > EXACT_PAIRS or d > 39:  # base-3 keys of the multi-indices must fit in int64
            return None
        ones = np.zeros((m, d), dtype=np.int8)
        np.put_along_axis(ones, self.monomials.numpy(), 1, axis=1)
        signs = self.signs.numpy().astype(np.float64)
        e = (ones[:, None, :] + ones[None, :, :]).reshape(m * m, d)
        coef = (signs[:, None] * signs[None, :]).reshape(-1) / m
        pow3 = 3 ** np.arange(d, dtype=np.int64)
        base_key = (e == 1).astype(np.int64) @ pow3  # the degree-one part of every term
        twos = np.argsort(e != 2, axis=1, kind="stable")[:, : self.k]  # positions with exponent 2 first
        n_twos = (e == 2).sum(1)
        keys, weights, n2 = [], [], []
        for mask in range(1 << self.k):  # each subset S of the squared indices: He_2 on S, the constant 1 off S
            bits = [j for j in range(self.k) if mask >> j & 1]
            ok = n_twos > (max(bits) if bits else -1)
            extra = sum((2 * pow3[twos[ok, j]] for j in bits), np.zeros(int(ok.sum()), dtype=np.int64))
            keys.append(base_key[ok] + extra)
            weights.append(coef[ok])
            n2.append(np.full(int(ok.sum()), len(bits)))
        key = np.concatenate(keys)
        uniq, inv = np.unique(key, return_inverse=True)
        b = np.bincount(inv, weights=np.concatenate(weights))
        n2_of = np.zeros(len(uniq), dtype=np.int64)
        n2_of[inv] = np.concatenate(n2)
        ep4 = float((b * b * 2.0**n2_of).sum())
        t_keys = ones.astype(np.int64) @ pow3
        pos = np.clip(np.searchsorted(uniq, t_keys), 0, len(uniq) - 1)
        b_t = np.where(uniq[pos] == t_keys, b[pos], 0.0)
        ep3 = float((signs / math.sqrt(m) * b_t).sum())
        return ep3, ep4

    def link_std(self) -> float:
        """Standard deviation of ``g(p)``: exact from :meth:`p_moments` (``E p = 0``, ``E p² = 1``, so
        ``Var He_2(p)/√2 = (E p⁴ - 1)/2`` and ``Var(p + He_2(p)/√2) = 1 + (E p⁴ - 1)/2 + √2 E p³``), else a
        Monte Carlo estimate from ``MC_SAMPLES`` fixed draws."""
        if self.g == "linear":
            return 1.0
        moments = self.p_moments()
        if moments is None:
            return float(link(self.g, self.p(self._gaussian(3, MC_SAMPLES)).double()).std())
        ep3, ep4 = moments
        var = (ep4 - 1.0) / 2.0 + (1.0 + math.sqrt(2.0) * ep3 if self.g == "he1_he2" else 0.0)
        return math.sqrt(var)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """The target ``h(x) = g(p(x)) / σ_g`` ``[N]``."""
        return (link(self.g, self.p(x).double()) / self.scale).float()

    def latent(self, split: Split) -> torch.Tensor:
        """``p`` on the whole ``split`` ``[N]``, in its fixed order (for ``corr(feature, p)``)."""
        return self.p(self._cached(split)["obs"])

    # ------------------------------------------------------------------------- OneStepTask side
    def _split(self, split: Split) -> TensorDict:
        n, stream = (self.n_train, 1) if split == "train" else (self.n_test, 2)
        x = self._gaussian(stream, n)
        return TensorDict({"obs": x, "target": self.h(x).unsqueeze(-1)}, batch_size=[n])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``-(ŷ - h(x))²`` ``[n]`` (digest §10, "Framing")."""
        y_hat = torch.as_tensor(action, dtype=torch.float32).reshape(-1)
        return -(y_hat - batch["target"].reshape(-1)).pow(2)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``rel_mse`` = MSE / Var(h) on the batch (1 for the best constant), ``corr`` = Pearson corr(ŷ, h),
        ``mse`` (digest §10, "Metric")."""
        y_hat = torch.as_tensor(action, dtype=torch.float64).reshape(-1)
        y = batch["target"].reshape(-1).double()
        mse = float((y_hat - y).pow(2).mean())
        var = float(y.var(unbiased=False))
        return {"rel_mse": mse / var if var > 0 else float("nan"), "corr": pearson(y_hat, y), "mse": mse}


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two vectors (0 when either is constant)."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0
