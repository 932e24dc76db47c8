"""Rigid protein–ligand docking as a one-step task (ESF, Jing, Jaakkola & Berger, ICLR 2024, arXiv 2312.04323;
digest ``papers/one-step-tasks.md`` §4, "Framing").

One step: the observation is a synthetic complex (:mod:`rl_energy.docking`): ``max_pocket`` receptor rows then
``max_ligand`` = 15 ligand rows (ligand frame, centred at its centroid), each ``(x, y, z, type, mask)``, flattened
(float32). The receptor frame's origin is the pocket centre (the true ligand centroid plus a uniform ±2.5 Å offset
per axis). The action is a pose ``(t_x, t_y, t_z, ω_x, ω_y, ω_z)``: the ligand centroid in the receptor frame (Å,
within ``±t_max``) and a rotation vector (rad, within ``±π`` per axis); the ligand's atoms go to ``R(ω) l_i + t``.
The reward is ``−RMSD`` (Å) between the ligand under the action's pose and under the true pose. Full information:
``info["target"]`` is the true pose in the same layout (the ESF agents clone it, as the paper trains on crystal
poses).

Splits: ``n_train`` training complexes and a fixed test split of ``n_test``, both from ``seed``. ``perturb``
(RMS Å, default 0) turns the test split into the **"predicted-structure" split**: the same complexes with every
receptor atom within 8 Å of the ligand displaced by isotropic Gaussian noise of that RMS (training stays clean,
as the paper trains on crystal structures and tests on ESMFold ones).

Metrics: ``rmsd_median`` (Å) and ``success_2A`` (fraction with RMSD < 2 Å, the paper's top-1 success).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy import docking
from rl_energy.envs.tasks.base import OneStepTask, Split, is_int, is_number
from rl_energy.errors import ConfigError


class DockingTask(OneStepTask):
    """Synthetic receptor–ligand complexes; action = a rigid pose, reward = −RMSD (module docstring).

    Keyword arguments (``env_kwargs``): ``n_train`` (500), ``n_test`` (100), ``seed`` (0), ``perturb`` (0.0: the
    RMS displacement, Å, of the test pockets), ``max_pocket`` (640 receptor rows) and ``t_max`` (6.0 Å, the
    translation bound of the action).
    """

    metric_names: ClassVar[tuple[str, ...]] = ("rmsd_median", "success_2A")
    full_information: ClassVar[bool] = True

    def __init__(self, n_train: int = 500, n_test: int = 100, seed: int = 0, perturb: float = 0.0,
                 max_pocket: int = docking.DEFAULT_MAX_POCKET, t_max: float = 6.0) -> None:
        def bad(key: str, requirement: str, value: Any) -> ConfigError:
            return ConfigError(f"config key 'env_kwargs.{key}' must be {requirement}, got {value!r}")

        for key, value in (("n_train", n_train), ("n_test", n_test)):
            if not (is_int(value) and 1 <= value <= 100_000):
                raise bad(key, "an integer in [1, 100000]", value)
        if not (is_int(seed) and seed >= 0):
            raise bad("seed", "an integer >= 0", seed)
        if not (is_number(perturb) and 0 <= perturb <= 5):
            raise bad("perturb", "a number in [0, 5] (Å)", perturb)
        if not (is_int(max_pocket) and 16 <= max_pocket <= 5_000):
            raise bad("max_pocket", "an integer in [16, 5000]", max_pocket)
        if not (is_number(t_max) and docking.POCKET_OFFSET + 0.5 <= t_max <= 12):
            raise bad("t_max", f"a number in [{docking.POCKET_OFFSET + 0.5}, 12] (Å; the pocket centre is within "
                                f"{docking.POCKET_OFFSET} Å of the ligand per axis)", t_max)
        self.n_train, self.n_test, self.seed = int(n_train), int(n_test), int(seed)
        self.perturb, self.max_pocket, self.t_max = float(perturb), int(max_pocket), float(t_max)
        self.max_ligand = docking.DEFAULT_MAX_LIGAND
        dim = docking.obs_dim(self.max_pocket, self.max_ligand)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        high = np.array([self.t_max] * 3 + [np.pi] * 3, np.float32)
        self.action_space = gym.spaces.Box(-high, high, (6,), np.float32)

    # --------------------------------------------------------------------------------------- data
    def complexes(self, split: Split) -> list[docking.Complex]:
        """The complexes of ``split`` (the test split's pockets perturbed when ``perturb > 0``)."""
        if split == "train":
            return docking.make_split(self.n_train, self.seed, 0)
        return docking.make_split(self.n_test, self.seed, 1, self.perturb)

    def _split(self, split: Split) -> TensorDict:
        cs = self.complexes(split)
        largest = max(len(c.pocket) for c in cs)
        if largest > self.max_pocket:
            raise ConfigError(f"config key 'env_kwargs.max_pocket' must be at least {largest} (the largest pocket of "
                              f"the {split} split), got {self.max_pocket}")
        obs = torch.as_tensor(np.stack([docking.pack(c, self.max_pocket, self.max_ligand) for c in cs]))
        rot = torch.as_tensor(np.stack([c.rotation for c in cs]))
        rotvec = docking.matrix_to_rotvec(rot)
        target = torch.cat([torch.as_tensor(np.stack([c.translation for c in cs])), rotvec], -1).float()
        return TensorDict({"obs": obs, "target": target}, batch_size=[len(cs)])

    # ------------------------------------------------------------------------------------ scoring
    def rmsd(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """RMSD (Å) ``[n]`` between the ligand under ``action`` and under the true pose (float64)."""
        u = docking.unpack(batch["obs"].reshape(len(batch), -1), self.max_pocket)
        rot_a, t_a = docking.pose_of_action(action)
        rot_b, t_b = docking.pose_of_action(batch["target"])
        return docking.pose_rmsd(u.ligand, u.ligand_mask, rot_a, t_a.to(rot_a), rot_b, t_b.to(rot_b))

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        return -self.rmsd(batch, action).float()

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, float]:
        r = self.rmsd(batch, action)
        return {"rmsd_median": float(r.median()), "success_2A": float((r < 2.0).double().mean())}
