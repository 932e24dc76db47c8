"""Classification of scikit-learn's bundled data sets as a one-step, full-information bandit (the supervised
task of the SSO experiments: Lavington et al., ICML 2023, "Target-based surrogates for stochastic
optimization", arXiv 2302.02607; digest ``papers/one-step-tasks.md`` §12, framing (a)).

Data (``dataset`` kwarg; nothing is downloaded: scikit-learn's bundled ``load_*`` files and its generator):

* ``digits``: 1,797 8x8 digit images, 64 features, 10 classes (``sklearn.datasets.load_digits``);
* ``breast_cancer``: 569 tumours, 30 features, 2 classes (``load_breast_cancer``);
* ``wine``: 178 wines, 13 features, 3 classes (``load_wine``);
* ``synthetic``: ``make_classification(n_samples, n_features, n_informative = n_features // 5,
  n_redundant = n_features // 10, n_classes, flip_y = 0.01, class_sep = 1, random_state = data_seed)``
  (the digest's ``n = 10k, d = 100`` stand-in for the paper's libsvm sets, which download at run time).

Splits: one permutation of all rows, drawn from ``data_seed``, puts the first ``n_test`` rows in the
``test`` split and the next ``n_train`` rows in ``train``, so the two are disjoint and the test split does
not depend on ``n_train`` (a subset of ``n_train`` labelled rows, e.g. 300 digits, keeps the same test set).
``n_test`` defaults to a quarter of the rows (rounded), ``n_train`` to all the others. Features are
standardised with the mean and standard deviation of the ``train`` rows (constant features: scale 1).

Framing (digest §12, "(a) a one-step supervised task"): observation = standardised features; action = the
class logits ``Box(-B, B, (n_classes,))`` (``B = action_bound`` only rescales step agents acting in
``[-1, 1]``; the score never clips); ``target`` = the class index as float32 ``[1]`` (full information);
reward = ``log softmax(logits)[label]``, minus the cross-entropy. Metrics: ``accuracy`` (argmax of the
logits) and ``nll`` (mean cross-entropy).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split
from rl_energy.errors import import_optional

DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "wine", "synthetic")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"ClassificationTask kwarg '{name}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"ClassificationTask kwarg '{name}' must be >= {minimum}, got {value!r}")
    return int(value)


def load_arrays(dataset: str, n_samples: int, n_features: int, n_classes: int,
                data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[N, d]`` (float64) and integer labels ``[N]`` of ``dataset`` (see the module docstring)."""
    datasets = import_optional("sklearn.datasets", "rl_energy/Classification-v0")
    if dataset == "synthetic":
        x, y = datasets.make_classification(
            n_samples=n_samples, n_features=n_features, n_informative=max(2, n_features // 5),
            n_redundant=n_features // 10, n_classes=n_classes, flip_y=0.01, class_sep=1.0, random_state=data_seed)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
              "wine": datasets.load_wine}[dataset]
    data = loader()
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.int64)


class ClassificationTask(OneStepTask):
    """Class logits for standardised features; reward = −cross-entropy (see the module docstring)."""

    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "nll")

    def __init__(
        self,
        dataset: str = "digits",
        n_train: int | None = None,
        n_test: int | None = None,
        data_seed: int = 0,
        n_samples: int = 10_000,
        n_features: int = 100,
        n_classes: int = 2,
        action_bound: float = 20.0,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"ClassificationTask kwarg 'dataset' must be one of {DATASETS}, got {dataset!r}")
        self.dataset = dataset
        self.data_seed = _check_int("data_seed", data_seed, 0)
        # make_classification's settings (synthetic only)
        n_samples = _check_int("n_samples", n_samples, 4)
        n_features = _check_int("n_features", n_features, 2)
        n_classes = _check_int("n_classes", n_classes, 2)
        if dataset == "synthetic" and n_classes * 2 > 2 ** max(2, n_features // 5):
            raise ValueError(f"ClassificationTask kwarg 'n_classes' = {n_classes} is too many for n_features = "
                             f"{n_features} (make_classification needs n_classes * 2 <= 2**n_informative)")
        if isinstance(action_bound, bool) or not isinstance(action_bound, (int, float)) or not (
            math.isfinite(action_bound) and action_bound > 0
        ):
            raise ValueError(f"ClassificationTask kwarg 'action_bound' must be a positive number, got {action_bound!r}")
        x, y = load_arrays(dataset, n_samples, n_features, n_classes, self.data_seed)
        total = len(y)
        self.n_test = _check_int("n_test", n_test, 1, allow_none=True) or round(total / 4)
        if self.n_test >= total:
            raise ValueError(f"ClassificationTask kwarg 'n_test' must be < {total} (the rows of {dataset!r}), "
                             f"got {n_test!r}")
        self.n_train = _check_int("n_train", n_train, 1, allow_none=True) or total - self.n_test
        if self.n_train + self.n_test > total:
            raise ValueError(f"ClassificationTask kwarg 'n_train' must be <= {total - self.n_test} ({dataset!r} has "
                             f"{total} rows, {self.n_test} of them in the test split), got {n_train!r}")
        perm = np.random.default_rng([self.data_seed, 0]).permutation(total)
        self.test_index = perm[: self.n_test]
        self.train_index = perm[self.n_test: self.n_test + self.n_train]
        train_x = x[self.train_index]
        self.mean = train_x.mean(0)
        std = train_x.std(0)
        self.std = np.where(std > 0, std, 1.0)
        self._x = ((x - self.mean) / self.std).astype(np.float32)
        self._y = y
        self.n_classes = int(y.max()) + 1
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(x.shape[1],), dtype=np.float32)
        self.action_space = gym.spaces.Box(-float(action_bound), float(action_bound), shape=(self.n_classes,),
                                           dtype=np.float32)

    # ------------------------------------------------------------------------- OneStepTask side
    def _split(self, split: Split) -> TensorDict:
        idx = self.train_index if split == "train" else self.test_index
        obs = torch.as_tensor(self._x[idx])
        target = torch.as_tensor(self._y[idx], dtype=torch.float32).unsqueeze(-1)
        return TensorDict({"obs": obs, "target": target}, batch_size=[len(idx)])

    def _log_probs(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        logits = torch.as_tensor(action, dtype=torch.float32).reshape(-1, self.n_classes)
        labels = batch["target"].reshape(-1).long()
        return torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """Per-sample reward ``log softmax(logits)[label]`` ``[n]`` = −cross-entropy (digest §12, framing (a))."""
        return self._log_probs(batch, action)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        """``accuracy`` (argmax of the logits) and ``nll`` (mean cross-entropy) on the batch."""
        logits = torch.as_tensor(action, dtype=torch.float32).reshape(-1, self.n_classes)
        labels = batch["target"].reshape(-1).long()
        return {"accuracy": float((logits.argmax(-1) == labels).double().mean()),
                "nll": float(-self._log_probs(batch, logits).double().mean())}
