"""S2EF: structure to energy and forces, the one-step task of the atomistic papers (digest ``one-step-tasks.md``
§19 "Framing", shared with §14 and §15).

One step: the observation is a structure in the padded layout of :mod:`rl_energy.atoms.graph` (``max_atoms``
rows of ``(Z, x, y, z, free)``, then the cell and the periodic flags), the action is the model's ``(E, F)`` (the
energy in eV, then ``max_atoms`` force rows in eV/Å; padding rows are ignored) and the reward is

    r = −(λ_E |Ê − E| + λ_F · mean_{free atoms, axes} |F̂ − F|)

with ``λ_E`` = ``energy_weight`` and ``λ_F`` = ``force_weight``. Full information: ``info["target"]`` holds the
oracle's ``(E, F)`` (the MLFF agents train on it).

Data (:func:`rl_energy.atoms.datasets.build`, cached on disk):

* ``dataset="mini_oc20"``: EMT Cu/Pt/Au(111) slabs with an O/H/C/N adsorbate, bottom layer fixed (forces on fixed
  atoms are not scored, as in OC20); the test split is drawn from other slab recipes (``data_seed + 1``);
* ``dataset="molecules"``: NCI molecules, rattled and MD-shaken, labelled by ``labeller`` (GFN2-xTB); the test
  split holds other molecules.

Metrics: ``energy_mae`` (eV), ``energy_mae_per_atom`` (eV/atom), ``force_mae`` (eV/Å, free atoms), ``force_cos``
(mean cosine between predicted and true per-atom forces) and ``efwt`` (OC20's energy-and-forces-within-threshold:
% of structures with |ΔE| < 0.02 eV and every free atom's max |ΔF| component < 0.03 eV/Å).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.envs.tasks.base import OneStepTask, Split, is_int, is_number
from rl_energy.errors import ConfigError, require_extra

DEFAULT_MAX_ATOMS = {"mini_oc20": 16, "molecules": 40}
LABELLER_NAMES = ("emt", "mmff", "uff", "xtb")


def _frames_to_split(frames: Any, max_atoms: int) -> TensorDict:
    obs = torch.as_tensor(frames.obs(max_atoms))
    target = torch.as_tensor(frames.target(max_atoms))
    free = torch.as_tensor(frames.padded_to(max_atoms).free & (frames.padded_to(max_atoms).z > 0))
    return TensorDict({"obs": obs, "target": target, "free": free.float(),
                       "group": torch.as_tensor(frames.group)}, batch_size=[len(frames)])


class S2EFTask(OneStepTask):
    """Structure → (energy, forces) as a full-information one-step task (module docstring).

    Keyword arguments (``env_kwargs``): ``dataset`` (``mini_oc20`` | ``molecules``), ``n_train`` (2,000),
    ``n_test`` (500), ``data_seed`` (0), ``labeller`` (``emt`` for slabs, ``xtb`` for molecules), ``max_atoms``
    (16 / 40), ``energy_weight`` (1.0), ``force_weight`` (1.0) and ``cache`` (True: the on-disk label and
    dataset caches).
    """

    metric_names: ClassVar[tuple[str, ...]] = ("energy_mae", "energy_mae_per_atom", "force_mae", "force_cos", "efwt")
    full_information: ClassVar[bool] = True

    def __init__(self, dataset: str = "mini_oc20", n_train: int = 2000, n_test: int = 500, data_seed: int = 0,
                 labeller: str | None = None, max_atoms: int | None = None, energy_weight: float = 1.0,
                 force_weight: float = 1.0, cache: bool = True) -> None:
        require_extra("atoms", "rl_energy/S2EF-v0")
        def bad(key: str, requirement: str, value: Any) -> ConfigError:
            return ConfigError(f"config key 'env_kwargs.{key}' must be {requirement}, got {value!r}")

        if dataset not in DEFAULT_MAX_ATOMS:
            raise bad("dataset", f"one of {', '.join(DEFAULT_MAX_ATOMS)}", dataset)
        for key, value in (("n_train", n_train), ("n_test", n_test)):
            if not (is_int(value) and 1 <= value <= 1_000_000):
                raise bad(key, "an integer in [1, 1000000]", value)
        if not (is_int(data_seed) and data_seed >= 0):
            raise bad("data_seed", "an integer >= 0", data_seed)
        if labeller is not None and labeller not in LABELLER_NAMES:
            raise bad("labeller", f"one of {', '.join(LABELLER_NAMES)}", labeller)
        if dataset == "mini_oc20" and labeller not in (None, "emt"):
            raise bad("labeller", "emt for dataset mini_oc20 (the force fields need molecules)", labeller)
        if max_atoms is not None and not (is_int(max_atoms) and 1 <= max_atoms <= 10_000):
            raise bad("max_atoms", "an integer in [1, 10000]", max_atoms)
        for key, value in (("energy_weight", energy_weight), ("force_weight", force_weight)):
            if not (is_number(value) and value >= 0):
                raise bad(key, "a number >= 0", value)
        if not isinstance(cache, bool):
            raise bad("cache", "true or false", cache)
        self.dataset, self.n_train, self.n_test, self.data_seed = dataset, n_train, n_test, data_seed
        self.labeller = labeller
        self.max_atoms = max_atoms or DEFAULT_MAX_ATOMS[dataset]
        self.energy_weight, self.force_weight, self.cache = float(energy_weight), float(force_weight), cache
        from rl_energy.atoms.graph import action_dim, obs_dim

        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim(self.max_atoms),), np.float32)
        self.action_space = gym.spaces.Box(-1e4, 1e4, (action_dim(self.max_atoms),), np.float32)

    # --------------------------------------------------------------------------------------- data
    def frames(self, split: Split) -> Any:
        """The :class:`~rl_energy.atoms.data.Frames` of ``split`` (train and test come from disjoint recipes)."""
        from rl_energy.atoms import datasets

        n = self.n_train if split == "train" else self.n_test
        seed = self.data_seed if split == "train" else self.data_seed + 1_000_003
        frames = datasets.build(self.dataset, n, seed, self.labeller, cache=self.cache)
        if int(frames.n_atoms.max()) > self.max_atoms:
            raise ConfigError(f"config key 'env_kwargs.max_atoms' must be at least {int(frames.n_atoms.max())} "
                              f"(the largest structure of the {split} split), got {self.max_atoms}")
        return frames

    def _split(self, split: Split) -> TensorDict:
        return _frames_to_split(self.frames(split), self.max_atoms)

    # ------------------------------------------------------------------------------------ scoring
    def _errors(self, batch: TensorDict, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = batch["target"].to(action.device, torch.float32)
        action = action.reshape(len(target), -1).float()
        free = batch["free"].to(action.device) if "free" in batch.keys() else \
            (batch["obs"][:, : 5 * self.max_atoms].reshape(len(target), self.max_atoms, 5)[..., 4] > 0.5).float()
        de = (action[:, 0] - target[:, 0]).abs()
        df = (action[:, 1:] - target[:, 1:]).reshape(len(target), self.max_atoms, 3)
        return de, df, free

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        de, df, free = self._errors(batch, action)
        force_mae = (df.abs().sum(-1) * free).sum(-1) / (3 * free.sum(-1)).clamp_min(1)
        return -(self.energy_weight * de + self.force_weight * force_mae)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        de, df, free = self._errors(batch, action)
        n_atoms = (batch["obs"][:, : 5 * self.max_atoms].reshape(len(de), self.max_atoms, 5)[..., 0] > 0).sum(-1)
        mask = free > 0
        pred = action.reshape(len(de), -1)[:, 1:].reshape(len(de), self.max_atoms, 3).float()
        true = batch["target"][:, 1:].reshape(len(de), self.max_atoms, 3).to(pred)
        cos = torch.nn.functional.cosine_similarity(pred[mask], true[mask], dim=-1)
        worst = torch.where(mask.unsqueeze(-1), df.abs(), torch.zeros_like(df)).amax(dim=(1, 2))
        return {"energy_mae": float(de.mean()), "energy_mae_per_atom": float((de / n_atoms.clamp_min(1)).mean()),
                "force_mae": float(df.abs()[mask].mean()), "force_cos": float(cos.mean()),
                "efwt": float(100.0 * ((de < 0.02) & (worst < 0.03)).float().mean())}
