"""Machine-learned force fields on the S2EF one-step task (digest ``one-step-tasks.md`` §19 "Framing", §14, §15).

A full-information ``contexts`` agent (``uses_labels = True``): the observation is a padded structure
(:mod:`rl_energy.atoms.graph`), the action the model's ``(E, F)``, and each update takes one Adam step on

    L(θ) = λ_E · mean_b ℓ((Ê_b − E_b) / (σ n_b)) + λ_F · mean_{free atoms, axes} ℓ((F̂ − F) / σ)

with ``σ`` the model's force scale (the RMS training force component), ``n_b`` the atoms of structure ``b``,
``λ_E`` = ``energy_weight``, ``λ_F`` = ``force_weight`` and ``ℓ`` = ``loss``: ``mse`` (squares), ``mae``
(absolute values) or ``l2mae`` (OC20's force loss: the per-atom Euclidean norm of the force error; the energy term
then takes absolute values). A batch with a ``weight`` key (``[n]``) weights the structures (ASTEROID's
bias-aware weights, §15). Before training, :meth:`MLFF.observe_train_split` fits the per-element reference
energies and ``σ`` to the training labels (:meth:`rl_energy.atoms.models.AtomisticModel.fit_normalisation`).

``agent.model`` picks the network of the zoo (:mod:`rl_energy.atoms.models`): ``schnet`` (invariant), ``e3nn``
(equivariant, NequIP-style) or ``scn`` (mini-SCN, direct forces; :mod:`rl_energy.atoms.scn`). Conservative models
predict ``F = −∇E``, so their actions need a gradient even at evaluation (``act`` runs them under
``torch.enable_grad`` in eval mode).

Logged: ``loss``, ``energy_loss``, ``force_loss`` (the two terms before weighting) and ``lr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import torch
from tensordict import TensorDict

from rl_energy.agent import Agent, assert_finite
from rl_energy.atoms.graph import Structures, max_atoms_of, unpack
from rl_energy.atoms.models import MODELS, AtomisticModel, build_model, n_parameters
from rl_energy.atoms.scn import MESSAGES, READOUTS
from rl_energy.errors import require
from rl_energy.optim import adam, cosine_factor

LOSSES = ("mse", "mae", "l2mae")
CHUNK = 256
"""Structures per chunk when acting on a whole split."""


@dataclass
class MLFFConfig:
    """Defaults: a 3-layer SchNet trained by Adam on 32 structures a batch (configs/mlff/: per-task settings)."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 64_000, "batch_size": 32, "eval_every": 16_000, "log_every": 1_600, "checkpoint_every": 0,
    }
    """``train`` keys in contexts: 2,000 updates of 32 structures."""

    model: str = "schnet"
    """``schnet`` | ``e3nn`` | ``scn``."""
    cutoff: float = 5.0
    """Radius of the neighbour graph (Å)."""
    n_layers: int = 3
    n_rbf: int = 16
    width: int = 64
    """SchNet: feature width."""
    channels: int = 16
    """e3nn: channels per degree; mini-SCN: spherical channels."""
    l_max: int = 2
    """e3nn and mini-SCN: the largest spherical-harmonic degree."""
    m_max: int = 1
    """mini-SCN: the largest order |m| kept in the edge frame (SCN's default 1)."""
    hidden: int = 32
    """mini-SCN: width of the edge messages and MLPs."""
    message: str = "scn"
    """mini-SCN: ``scn`` (dense edge-frame layers, SCN) | ``so2`` (roll-equivariant, eSCN form)."""
    grid_phi: int = 16
    """mini-SCN: azimuthal points of the edge-frame sphere grid."""
    readout: str = "grid"
    """mini-SCN: ``grid`` (SCN's sphere-grid MLP readout) | ``linear`` (exactly equivariant special case)."""
    lr: float = 1e-3
    lr_decay_updates: int = 0
    """Cosine decay of the step size to ``lr / 100`` over this many updates (0: constant)."""
    energy_weight: float = 0.1
    force_weight: float = 1.0
    loss: str = "mse"
    """``mse`` | ``mae`` | ``l2mae`` (module docstring)."""
    grad_clip: float = 10.0
    """Global gradient-norm clip (0: none)."""

    def validate(self) -> None:
        require(self, "model", self.model in MODELS, f"one of {', '.join(MODELS)}")
        require(self, "message", self.message in MESSAGES, f"one of {', '.join(MESSAGES)}")
        require(self, "loss", self.loss in LOSSES, f"one of {', '.join(LOSSES)}")
        require(self, "readout", self.readout in READOUTS, f"one of {', '.join(READOUTS)}")
        require(self, "cutoff", math.isfinite(self.cutoff) and 0.5 <= self.cutoff <= 20, "in [0.5, 20] Å")
        for key, low, high in (("n_layers", 1, 32), ("n_rbf", 2, 256), ("width", 2, 4096), ("channels", 1, 1024),
                               ("hidden", 1, 4096), ("grid_phi", 1, 512), ("l_max", 1, 8)):
            value = getattr(self, key)
            require(self, key, isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                    f"an integer in [{low}, {high}]")
        require(self, "m_max", isinstance(self.m_max, int) and 0 <= self.m_max <= self.l_max,
                "an integer in [0, l_max]")
        require(self, "grid_phi", self.grid_phi > 2 * self.m_max, "> 2·m_max (the grid must resolve the kept orders)")
        require(self, "lr", math.isfinite(self.lr) and self.lr > 0, "> 0")
        require(self, "lr_decay_updates", isinstance(self.lr_decay_updates, int) and self.lr_decay_updates >= 0,
                "an integer >= 0")
        for key in ("energy_weight", "force_weight", "grad_clip"):
            value = getattr(self, key)
            require(self, key, math.isfinite(value) and value >= 0, ">= 0")
        require(self, "force_weight", self.energy_weight + self.force_weight > 0, "> 0 when energy_weight is 0")

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`rl_energy.atoms.models.build_model` for ``model``."""
        if self.model == "schnet":
            return {"width": self.width, "n_layers": self.n_layers, "n_rbf": self.n_rbf, "cutoff": self.cutoff}
        if self.model == "e3nn":
            return {"channels": self.channels, "l_max": self.l_max, "n_layers": self.n_layers, "n_rbf": self.n_rbf,
                    "cutoff": self.cutoff}
        return {"channels": self.channels, "l_max": self.l_max, "m_max": self.m_max, "n_layers": self.n_layers,
                "hidden": self.hidden, "n_rbf": self.n_rbf, "cutoff": self.cutoff, "message": self.message,
                "grid_phi": self.grid_phi, "readout": self.readout}


class MLFF(Agent):
    """A machine-learned force field (SchNet, e3nn or mini-SCN) fitted to S2EF labels (module docstring)."""

    Config = MLFFConfig
    collection = "contexts"
    uses_labels = True
    metric_names = ("loss", "energy_loss", "force_loss", "lr")

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, config: MLFFConfig,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(observation_space, action_space, config, device)
        self.max_atoms = max_atoms_of(self.obs_dim)
        if self.action_dim != 1 + 3 * self.max_atoms:
            raise TypeError(f"MLFF needs an (E, F) action of 1 + 3·{self.max_atoms} numbers, got {self.action_dim} "
                            "(use an S2EF-style task)")
        self.model: AtomisticModel = build_model(config.model, **config.model_kwargs())
        self.to(self.device)
        self.optimizers = {"model": adam(list(self.model.parameters()), config.lr)}

    @property
    def n_parameters(self) -> int:
        return n_parameters(self.model)

    # -------------------------------------------------------------------------------- data
    def structures(self, obs: torch.Tensor) -> Structures:
        return unpack(obs.to(self.device).reshape(-1, self.obs_dim).float())

    def observe_train_split(self, data: TensorDict) -> None:
        """Fit the reference energies and the force scale to the training labels (see the module docstring)."""
        obs = data["obs"].reshape(len(data), -1)
        rows = obs[:, : 5 * self.max_atoms].reshape(len(obs), self.max_atoms, 5)
        target = data["target"].reshape(len(obs), -1)
        self.model.fit_normalisation(rows[..., 0].round().long().cpu(), target[:, 0].cpu(),
                                     target[:, 1:].reshape(len(obs), self.max_atoms, 3).cpu(), rows[..., 4].cpu() > 0.5)

    def predict(self, s: Structures) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E [B], F [B, max_atoms, 3])`` of the model on ``s``."""
        energy, forces = self.model(s)
        return energy, s.scatter_atoms(forces)

    # ------------------------------------------------------------------------------ acting
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The predicted ``(E, F)`` in eV and eV/Å (padding rows zero); deterministic either way."""
        obs = obs.to(self.device).reshape(-1, self.obs_dim)
        was = self.model.training
        self.model.eval()
        out = []
        for chunk in obs.split(CHUNK):
            energy, forces = self.predict(self.structures(chunk))
            out.append(torch.cat([energy.detach().unsqueeze(-1), forces.detach().reshape(len(chunk), -1)], -1))
        self.model.train(was)
        return torch.cat(out) if out else obs.new_zeros(0, self.action_dim)

    # ---------------------------------------------------------------------------- training
    def losses(self, batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        """The energy and force terms of the loss (module docstring) on a labelled ``batch``, weighted by its
        ``weight`` key when present."""
        c = self.config
        s = self.structures(batch["obs"])
        target = batch["target"].to(self.device).reshape(s.n_graphs, -1).float()
        energy, forces = self.model(s)
        sigma = self.model.scale
        n_atoms = s.n_atoms.to(energy)
        de = (energy - target[:, 0]) / (sigma * n_atoms)
        df = (forces - s.gather_atoms(target[:, 1:].reshape(s.n_graphs, self.max_atoms, 3))) / sigma
        if c.loss == "mse":
            e_each, f_atom = de.square(), df.square().mean(-1)
        elif c.loss == "mae":
            e_each, f_atom = de.abs(), df.abs().mean(-1)
        else:
            e_each, f_atom = de.abs(), df.norm(dim=-1)
        free = s.free.to(f_atom)
        weight = batch["weight"].to(energy).reshape(-1) if "weight" in batch.keys() else torch.ones_like(energy)
        f_graph = s.sum_atoms(f_atom * free) / s.sum_atoms(free).clamp_min(1)
        norm = weight.sum().clamp_min(1e-12)
        return (weight * e_each).sum() / norm, (weight * f_graph).sum() / norm

    def current_lr(self) -> float:
        c = self.config
        if not c.lr_decay_updates:
            return c.lr
        return c.lr * cosine_factor(self.num_updates, c.lr_decay_updates, floor=0.01)

    def step(self, loss: torch.Tensor) -> float:
        """One clipped Adam step on ``loss`` at the scheduled step size; returns it."""
        assert_finite("loss", loss)
        opt = self.optimizers["model"]
        lr = self.current_lr()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        opt.step()
        self.num_updates += 1
        return lr

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        c = self.config
        self.model.train()
        e_loss, f_loss = self.losses(batch)
        loss = c.energy_weight * e_loss + c.force_weight * f_loss
        lr = self.step(loss)
        return {"loss": loss.detach(), "energy_loss": e_loss.detach(), "force_loss": f_loss.detach(),
                "lr": torch.tensor(lr)}
