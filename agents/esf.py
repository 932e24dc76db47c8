"""Equivariant Scalar Fields (ESF) docking (Jing, Jaakkola & Berger, ICLR 2024, arXiv 2312.04323; digest
``papers/one-step-tasks.md`` §4) on ``rl_energy/Docking-v0``, and its noise-trained variant ESF-N.

A full-information ``contexts`` agent (``uses_labels = True``). Its policy is a **discrete energy-based policy
over the pose grid with an exact partition function**: for a complex, :class:`rl_energy.docking.ScalarFields`
scores every pose ``(R, t)`` of ``n_rotations`` Super-Fibonacci rotations × the lattice translations within the
task's ``±t_max`` by FFT cross-correlation of the receptor and ligand scalar fields (paper Eq. 2–4), and

    π(R, t | complex) = exp(S(R, t)/τ) / Σ_{R', t'} exp(S(R', t')/τ).

* ``act``: the argmax pose (deterministic) or a sample of ``π`` (stochastic), as the task's action
  ``(t, rotation vector)``.
* ``update``: one Adam step on the cross-entropy of ``π`` at the true pose (paper §3.3), averaged over the batch:
  :func:`rl_energy.docking.pose_cross_entropy` with the full translation grid at the true rotation (the ligand
  rasterised with the true translation's sub-lattice offset, so the true pose is scored exactly) plus
  ``rot_samples`` rotations drawn uniformly from the grid, weighted ``n_rotations / rot_samples`` in the partition
  function (an unbiased estimate of its other rotations; the exact sum would cost ``n_rotations`` FFTs per
  channel and complex per step). ``rot_samples: 0`` is the translational objective alone.
* **ESF-N** (``noise_rot`` > 0 or ``noise_trans`` > 0; the paper's 0.2 rad and 0.7 Å): each update replaces the
  true pose by a perturbed one (:func:`rl_energy.docking.perturb_pose`), which trains a smoother score.

The receptor's basis densities do not depend on the parameters: their FFTs are cached per complex (keyed by the
observation's bytes, up to ``cache_size`` complexes), so an update costs ``(rot_samples + 1)`` ligand
rasterisations and ``C`` FFTs each, plus their backward pass.

Logged: ``loss`` (the batch's cross-entropy before the step) and ``true_rank_frac`` (the fraction of the true
rotation's translations that outscore the true pose: 0 when the true pose is the best translation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy import docking
from rl_energy.agent import Agent, assert_finite
from rl_energy.errors import require
from rl_energy.optim import adam


@dataclass
class ESFConfig:
    """Defaults: 3 channels per side, 576 rotations, 1 Å lattice, Adam 0.03 (configs/esf/)."""

    TRAIN_DEFAULTS: ClassVar[dict] = {"total_steps": 3_200, "batch_size": 8, "eval_every": 1_600, "log_every": 160,
                                      "checkpoint_every": 0}
    """``train`` keys in contexts: 400 updates of 8 complexes."""

    channels: int = 3
    """Scalar-field channels ``C`` per side."""
    n_rotations: int = 576
    """Rotations of the Super-Fibonacci grid searched when acting."""
    spacing: float = 1.0
    """Lattice spacing of the fields and translations (Å)."""
    rot_samples: int = 4
    """Grid rotations sampled per complex and update for the partition function (0: translations only)."""
    tau: float = 1.0
    """Temperature of the pose policy (acting and cross-entropy)."""
    lr: float = 0.03
    init_scale: float = 0.3
    """Standard deviation of the initial coefficients."""
    noise_rot: float = 0.0
    """ESF-N: RMS angle (rad) of the training pose's rotation noise (the paper's 0.2)."""
    noise_trans: float = 0.0
    """ESF-N: RMS norm (Å) of the training pose's translation noise (the paper's 0.7)."""
    chunk: int = 48
    """Rotations per FFT batch when acting."""
    cache_size: int = 2_000
    """Receptor spectra kept (≈ 1.5 MB each at the default grid)."""

    def validate(self) -> None:
        for key, low, high in (("channels", 1, 64), ("n_rotations", 1, 100_000), ("rot_samples", 0, 100_000),
                               ("chunk", 1, 100_000), ("cache_size", 0, 1_000_000)):
            value = getattr(self, key)
            require(self, key, isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                    f"an integer in [{low}, {high}]")
        require(self, "rot_samples", self.rot_samples <= self.n_rotations, "at most n_rotations")
        require(self, "spacing", math.isfinite(self.spacing) and 0.25 <= self.spacing <= 3.0, "in [0.25, 3] Å")
        for key in ("tau", "lr", "init_scale"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value > 0, "> 0")
        for key in ("noise_rot", "noise_trans"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value >= 0, ">= 0")


class ESF(Agent):
    """Equivariant scalar fields scored by FFT over the pose grid, trained by cross-entropy at the true pose."""

    Config = ESFConfig
    collection = "contexts"
    uses_labels = True
    metric_names = ("loss", "true_rank_frac")

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, config: ESFConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(observation_space, action_space, config, device)
        if self.action_dim != 6:
            raise TypeError(f"ESF needs a pose action (translation, rotation vector) of 6 numbers, got "
                            f"{self.action_dim} (use rl_energy/Docking-v0)")
        self.max_pocket = docking.max_pocket_of(self.obs_dim)
        t_max = float(np.asarray(action_space.high)[0])
        self.spec = docking.GridSpec(spacing=config.spacing, t_max=t_max)
        seed = int(torch.randint(0, 2**31 - 1, ()))  # the run's seed (the trainer seeds torch)
        self.fields = docking.ScalarFields(self.spec, config.channels, config.init_scale, seed)
        self.register_buffer("rotations", docking.rotation_grid(config.n_rotations, torch.float32))
        self.to(self.device)
        self.optimizers = {"fields": adam(list(self.fields.parameters()), config.lr)}
        self.receptor_cache: dict[bytes, torch.Tensor] = {}
        """Receptor basis FFTs by observation bytes (independent of the parameters: agents of one spec may share it)."""

    # ----------------------------------------------------------------------------- receptors
    def receptor_basis_hat(self, obs_row: torch.Tensor, u: docking.Unpacked, i: int) -> torch.Tensor:
        """FFT of complex ``i``'s receptor basis densities ``[N_TYPES, K_P, N, N, N//2+1]`` (cached)."""
        key = obs_row.detach().cpu().numpy().tobytes()
        hit = self.receptor_cache.get(key)
        if hit is not None:
            return hit
        basis = self.fields.receptor_basis(u.pocket[i].float(), u.pocket_types[i], u.pocket_mask[i])
        hat = torch.fft.rfftn(basis, dim=(-3, -2, -1))
        if len(self.receptor_cache) < self.config.cache_size:
            self.receptor_cache[key] = hat
        return hat

    def receptor_hat(self, basis_hat: torch.Tensor) -> torch.Tensor:
        """``P̂_c`` ``[C, N, N, N//2+1]``: the FFT is linear, so it is the coefficients times the basis FFTs."""
        coeff = self.fields.rec_coeff.to(basis_hat.real.dtype)
        return torch.einsum("tkc,tkxyz->cxyz", coeff.to(basis_hat.dtype), basis_hat)

    # ------------------------------------------------------------------------------- acting
    def score_grid(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """``S(R, t)`` ``[n_rotations, n_translations]`` of each complex of ``obs`` (no gradient)."""
        obs = obs.to(self.device).reshape(-1, self.obs_dim)
        u = docking.unpack(obs, self.max_pocket)
        out = []
        with torch.no_grad():
            for i in range(len(obs)):
                hat = self.receptor_hat(self.receptor_basis_hat(obs[i], u, i))
                out.append(self.fields.score_grid(u.pocket[i].float(), u.pocket_types[i], u.pocket_mask[i],
                                                  u.ligand[i].float(), u.ligand_types[i], u.ligand_mask[i],
                                                  self.rotations, self.config.chunk, receptor_hat=hat))
        return out

    def poses_to_actions(self, rot_idx: torch.Tensor, trans_idx: torch.Tensor) -> torch.Tensor:
        """Grid indices -> actions ``[B, 6]`` (translation, rotation vector)."""
        t = self.spec.translations(torch.float32).to(self.device)[trans_idx]
        return torch.cat([t, docking.matrix_to_rotvec(self.rotations[rot_idx].double()).float()], -1)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The argmax pose of the grid (deterministic) or a sample of ``softmax(S/τ)`` over the whole grid."""
        n_trans = self.spec.n_translations
        flat = []
        for scores in self.score_grid(obs):
            if deterministic:
                flat.append(int(scores.argmax()))
            else:
                p = torch.softmax(scores.flatten().double() / self.config.tau, 0)
                flat.append(int(torch.multinomial(p, 1)))
        idx = torch.tensor(flat, device=self.device)
        return self.poses_to_actions(idx // n_trans, idx % n_trans)

    # ----------------------------------------------------------------------------- training
    def loss(self, batch: TensorDict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean pose cross-entropy of the batch and the mean fraction of true-rotation translations outscoring the
        true pose (module docstring)."""
        c = self.config
        obs = batch["obs"].to(self.device).reshape(len(batch), -1)
        target = batch["target"].to(self.device).reshape(len(batch), 6).double()
        u = docking.unpack(obs, self.max_pocket)
        rot, trans = docking.rotvec_to_matrix(target[:, 3:]), target[:, :3]
        if c.noise_rot > 0 or c.noise_trans > 0:
            rot, trans = docking.perturb_pose(rot, trans, c.noise_rot, c.noise_trans, generator)
        lattice = torch.round(trans / self.spec.spacing).clamp(-self.spec.T, self.spec.T) * self.spec.spacing
        offset = trans - lattice  # the true pose's sub-lattice offset, carried by the ligand window
        label = self.spec.translation_index(trans)
        losses, ranks = [], []
        for i in range(len(obs)):
            sampled = torch.randperm(c.n_rotations, generator=generator)[: c.rot_samples].to(self.device)
            rots = torch.cat([rot[i][None].float(), self.rotations[sampled]])
            posed = torch.einsum("rij,aj->rai", rots, u.ligand[i].float()) + offset[i].float()
            lig = self.fields.ligand_field(self.fields.ligand_basis(posed, u.ligand_types[i], u.ligand_mask[i]))
            hat = self.receptor_hat(self.receptor_basis_hat(obs[i], u, i))
            scores = docking.fft_scores(hat, lig, self.spec)
            rest = scores[1:][None] if c.rot_samples else None
            losses.append(docking.pose_cross_entropy(scores[:1], label[i:i + 1], rest, c.n_rotations, c.tau))
            ranks.append((scores[0] > scores[0, label[i]]).float().mean())
        return torch.cat(losses).mean(), torch.stack(ranks).mean()

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        loss, rank = self.loss(batch)
        assert_finite("loss", loss)
        opt = self.optimizers["fields"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.num_updates += 1
        return {"loss": loss.detach(), "true_rank_frac": rank.detach()}
