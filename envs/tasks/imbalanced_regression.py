"""Highly imbalanced tabular regression: the synthetic setting of CISIR's CPU experiment.

Moukpe, Chan & Zhang (2025), "CISIR: correlation-aware importance sampling for imbalanced regression"
(arXiv 2509.16339); digest ``one-step-tasks.md`` §5, "CPU experiment" [derived].

Data (built once from ``data_seed``, deterministic):

* ``x ~ U[-√3, √3]^dim`` (unit variance per coordinate; ``dim = 10``). The digest leaves the input law
  open; bounded inputs keep a single extreme draw from dominating the label scale, which it does with
  Gaussian inputs (one train label then holds 70% of the label variance);
* ``z = w·x + 0.3 tanh(x₁x₂) + noise·ε``, ``w`` a random unit vector, ``ε ~ N(0, 1)``;
* ``y = sign(z)(exp(κ|z|) − 1)``, then standardised with the train split's mean and standard deviation
  (the *normalised label*: the task's units; actions are predictions in these units). Test draws whose
  label lies outside the train labels' range are redrawn (about 1 in 5,000 with the defaults): on this
  heavy tail a single extrapolated test label otherwise dominates the rare-label MAE.

**Imbalance.** :attr:`ImbalancedRegressionTask.imbalance_ratio` is the ratio of the largest to the smallest
non-empty bin count of a histogram of the normalised train labels with ``n_bins`` (default 20) bins of
equal width spanning their range; the digest asks for a ratio above 1000. With the defaults (κ = 2.5) it is
about 2·10⁴ and 6% of the labels are *rare* (``|y| ≥ rare_threshold = 0.5``, the digest's SARCOS rule).

**One step.** Observation ``x`` (float32 ``[dim]``), action the prediction ``ŷ`` (``[1]``), reward the
per-sample ``−(ŷ − y)²`` (unweighted: CISIR's importance weights are the learner's business, not the
task's) and ``info["target"] = [y]``. The Pearson correlation is batch-level, so it is a metric
(:meth:`ImbalancedRegressionTask.metrics`), never a reward (ARCHITECTURE.md, "One-step tasks").

**Sampling** (a ``contexts`` option, digest §5 "Stratified sampling"): ``sampling="uniform"`` draws train
contexts with replacement; ``sampling="stratified"`` sorts the train split by label, cuts it into ``n``
groups of (nearly) equal size and draws one context per group, so every batch of ``n`` spans the whole
label range.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split, is_number

SAMPLING_MODES = ("uniform", "stratified")


def imbalance_ratio(labels: np.ndarray, n_bins: int) -> float:
    """Largest over smallest non-empty bin count of ``n_bins`` equal-width bins spanning ``labels``."""
    counts, _ = np.histogram(np.asarray(labels, dtype=np.float64), bins=n_bins)
    counts = counts[counts > 0]
    return float(counts.max() / counts.min())


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two 1-D tensors (0.0 when either is constant or has fewer than two entries)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if a.numel() < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denom) if float(denom) > 0 else 0.0


class ImbalancedRegressionTask(OneStepTask):
    """CISIR's synthetic imbalanced regression (digest §5) as a one-step, full-information task.

    Keyword arguments (``env_kwargs``): ``data_seed`` (0), ``n_train`` (20,000), ``n_test`` (5,000),
    ``dim`` (10), ``kappa`` (2.5, the exponent κ), ``noise`` (0.05, std of the noise on ``z``),
    ``rare_threshold`` (0.5 on the normalised label), ``n_bins`` (20, for :attr:`imbalance_ratio`),
    ``sampling`` (``"uniform"`` or ``"stratified"``). A bad value raises ``ValueError`` naming the kwarg.
    """

    metric_names: ClassVar[tuple[str, ...]] = ("mae", "pcc", "mae_rare", "pcc_rare", "aore", "aorc", "rare_fraction")
    full_information: ClassVar[bool] = True

    def __init__(
        self,
        data_seed: int = 0,
        n_train: int = 20_000,
        n_test: int = 5_000,
        dim: int = 10,
        kappa: float = 2.5,
        noise: float = 0.05,
        rare_threshold: float = 0.5,
        n_bins: int = 20,
        sampling: str = "uniform",
    ) -> None:
        super().__init__()
        checks: list[tuple[str, Any, bool, str]] = [
            ("data_seed", data_seed, isinstance(data_seed, (int, np.integer)) and data_seed >= 0, "an integer >= 0"),
            ("n_train", n_train, isinstance(n_train, (int, np.integer)) and n_train >= 2, "an integer >= 2"),
            ("n_test", n_test, isinstance(n_test, (int, np.integer)) and n_test >= 2, "an integer >= 2"),
            ("dim", dim, isinstance(dim, (int, np.integer)) and dim >= 2, "an integer >= 2"),
            ("kappa", kappa, is_number(kappa) and 0 < kappa <= 10, "in (0, 10]"),
            ("noise", noise, is_number(noise) and noise >= 0, ">= 0"),
            ("rare_threshold", rare_threshold, is_number(rare_threshold) and rare_threshold > 0, "> 0"),
            ("n_bins", n_bins, isinstance(n_bins, (int, np.integer)) and n_bins >= 2, "an integer >= 2"),
            ("sampling", sampling, sampling in SAMPLING_MODES, f"one of {', '.join(SAMPLING_MODES)}"),
        ]
        for name, value, ok, requirement in checks:
            if not ok:
                raise ValueError(f"ImbalancedRegressionTask kwarg '{name}' must be {requirement}, got {value!r}")
        self.data_seed, self.n_train, self.n_test, self.dim = int(data_seed), int(n_train), int(n_test), int(dim)
        self.kappa, self.noise = float(kappa), float(noise)
        self.rare_threshold, self.n_bins, self.sampling = float(rare_threshold), int(n_bins), sampling

        self._data = self._generate()
        train_y = self._data["train"]["target"].reshape(-1)
        self._train_order = torch.argsort(train_y).numpy()  # for stratified batches
        self.imbalance_ratio = imbalance_ratio(train_y.numpy(), self.n_bins)
        """Max over min non-empty bin count of the normalised train labels (``n_bins`` equal-width bins)."""
        self.rare_fraction = float((train_y.abs() >= self.rare_threshold).float().mean())
        """Fraction of train labels with ``|y| >= rare_threshold``."""
        bound = 1.05 * max(float(d["target"].abs().max()) for d in self._data.values())
        self.observation_space = gym.spaces.Box(-np.sqrt(3.0), np.sqrt(3.0), shape=(self.dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-bound, bound, shape=(1,), dtype=np.float32)

    # ------------------------------------------------------------------------------------- data
    def _generate(self) -> dict[str, TensorDict]:
        """Both splits: ``x ~ U[-√3, √3]^dim``, ``z = w·x + 0.3 tanh(x₁x₂) + noise·ε``,
        ``y = sign(z)(e^{κ|z|} − 1)``, standardised with the train statistics (digest §5); test draws whose
        label falls outside the train labels' range are redrawn."""
        seeds = np.random.SeedSequence(self.data_seed).spawn(3)
        w = np.random.default_rng(seeds[0]).standard_normal(self.dim)
        w /= np.linalg.norm(w)
        a = np.sqrt(3.0)

        def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
            x = rng.uniform(-a, a, size=(n, self.dim))
            z = x @ w + 0.3 * np.tanh(x[:, 0] * x[:, 1]) + self.noise * rng.standard_normal(n)
            return x, np.sign(z) * np.expm1(self.kappa * np.abs(z))

        raw = {"train": draw(np.random.default_rng(seeds[1]), self.n_train)}
        # The test split keeps the labels inside the train labels' range (about 1 draw in 5,000 is redrawn):
        # a test label past the largest train label is an extrapolation whose error, on this heavy tail,
        # alone moves the rare-label MAE by more than the methods differ.
        lo, hi = raw["train"][1].min(), raw["train"][1].max()
        rng, xs, ys, kept = np.random.default_rng(seeds[2]), [], [], 0
        while kept < self.n_test:
            x, y = draw(rng, self.n_test)
            inside = (y >= lo) & (y <= hi)
            xs.append(x[inside])
            ys.append(y[inside])
            kept += int(inside.sum())
        raw["test"] = (np.concatenate(xs)[: self.n_test], np.concatenate(ys)[: self.n_test])
        mean, std = raw["train"][1].mean(), raw["train"][1].std()
        self.label_mean, self.label_std = float(mean), float(std)
        out = {}
        for split, (x, y) in raw.items():
            y_n = (y - mean) / std
            out[split] = TensorDict(
                {"obs": torch.as_tensor(x, dtype=torch.float32),
                 "target": torch.as_tensor(y_n, dtype=torch.float32).reshape(-1, 1)},
                batch_size=[len(y_n)],
            )
        return out

    def _split(self, split: Split) -> TensorDict:
        return self._data[split]

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform with replacement, or stratified (digest §5): the train split sorted by label is cut
        into ``n`` contiguous groups whose sizes differ by at most one, and one index is drawn
        uniformly from each group (the batch comes out in increasing label order)."""
        if self.sampling == "uniform":
            return super().sample_indices(n, rng)
        size = self.split_size("train")
        if n > size:
            raise ValueError(f"a stratified batch of {n} needs at most {size} train contexts (one per group)")
        bounds = (np.arange(n + 1) * size) // n
        starts, widths = bounds[:-1], np.diff(bounds)
        pos = starts + np.minimum((rng.random(n) * widths).astype(np.int64), widths - 1)
        return self._train_order[pos]

    # ----------------------------------------------------------------------------------- scoring
    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``−(ŷ − y)²`` (unweighted; the importance weighting belongs to the learner)."""
        pred = torch.as_tensor(action, dtype=torch.float32).reshape(-1)
        return -(pred - batch["target"].reshape(-1)).square()

    def rare_mask(self, target: torch.Tensor) -> torch.Tensor:
        """``|y| >= rare_threshold`` on the normalised label (digest §5: rare = |y| ≥ 0.5)."""
        return target.reshape(-1).abs() >= self.rare_threshold

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """MAE and Pearson correlation, overall and on the rare labels (MAE⁺, PCC⁺), and their averages
        ``aore = (mae + mae_rare)/2``, ``aorc = (pcc + pcc_rare)/2`` (the notebook's AORE/AORC as the
        digest reads them [derived]); ``rare_fraction`` of the batch. Rare figures of a batch without
        rare labels are NaN."""
        pred = torch.as_tensor(action, dtype=torch.float32).reshape(-1).cpu()
        y = batch["target"].reshape(-1).cpu()
        rare = self.rare_mask(y)
        mae = float((pred - y).abs().mean())
        pcc = pearson(pred, y)
        if bool(rare.any()):
            mae_rare = float((pred[rare] - y[rare]).abs().mean())
            pcc_rare = pearson(pred[rare], y[rare])
        else:
            mae_rare = pcc_rare = float("nan")
        return {"mae": mae, "pcc": pcc, "mae_rare": mae_rare, "pcc_rare": pcc_rare,
                "aore": 0.5 * (mae + mae_rare), "aorc": 0.5 * (pcc + pcc_rare),
                "rare_fraction": float(rare.float().mean())}
