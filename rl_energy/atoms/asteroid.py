"""ASTEROID: data-cost-aware training of machine-learned force fields (digest ``one-step-tasks.md`` §15).

Bukharin, Liu, Wang, Zuo, Gao, Yan & Zhao, "ASTEROID: A Data-Efficient Framework for Machine Learning Force
Fields", ICML 2023 (arXiv 2306.03109). Few accurate labels (cost ≈ 100 each) and many cheap, biased ones (cost 1):

1. **Teacher**: a force field trained on the accurate set predicts ``F̂`` on the cheap configurations.
2. **Bias-aware pre-training** on the cheap labels (:func:`bias_weights`, :func:`pretrain_supervised`):
   ``w_i = exp(−e_i/γ)/Z`` with ``e_i`` = the mean ``|F̂_i − F_i^cheap|`` over atoms and axes, and
   ``L = (1−ρ)·MAE_E + ρ·mean_i w_i MAE_{F,i}`` (ρ = 0.999). The released code applies the weights only in its
   MAE path (its default RMSE path and example scripts run unweighted, digest caveat); here the weights are
   applied deliberately, through the ``weight`` key of :meth:`rl_energy.agents.mlff.MLFF.losses` with
   ``loss = "mae"`` (that method weights the energy term by ``w`` too; at ρ = 0.999 it hardly matters).
3. **Fine-tuning** on the accurate set.
4. **Unlabelled cheap configurations: sliced score matching** (:func:`score_matching_loss`). The configurations
   are Boltzmann samples at ``T``, whose score is ``s = F/(k_B T)``; with ``s_θ = F_θ/(k_B T)``, ``F_θ = −∇E_θ``
   the objective ``E[½‖s_θ‖² + vᵀ∇_r(vᵀ s_θ)]``, ``v ~ N(0, I)`` (Song et al., 2019) times ``(k_B T)²`` is
   ``E[½‖F_θ‖² + k_B T · vᵀ∇_r(vᵀF_θ)]`` (the digest's form; ``T`` = 500 K, ``k_B`` in eV/K since our units are eV
   and Å). ``F_θ`` is already a gradient of the model, so the divergence term is a third derivative in training
   (double backpropagation through :class:`rl_energy.atoms.models.AtomisticModel`).

:func:`run_molecule` runs the four arms of the digest's CPU experiment on one molecule: (i) accurate-only,
(ii) cheap pre-training (``w = 1``) → fine-tune, (iii) bias-weighted pre-training → fine-tune, (iv) sliced-SM
pre-training on the cheap configurations without labels → fine-tune; :func:`run_arm` runs one arm alone.

Normalisation (:func:`fit_reference`): every arm first fits the model's per-element reference energies and force
scale ``σ`` to the accurate labels (:meth:`MLFF.observe_train_split`); a supervised stage on the cheap labels
refits only the reference energies to the MMFF energies (whose offset has nothing to do with xTB's) and
fine-tuning refits them to the accurate energies again, keeping ``σ`` fixed so that a pre-trained model's forces
are not rescaled.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.agents.mlff import MLFF, MLFFConfig
from rl_energy.atoms.data import Frames
from rl_energy.atoms.graph import Structures, action_dim, obs_dim
from rl_energy.atoms.labellers import KCAL_PER_MOL
from rl_energy.atoms.models import AtomisticModel
from rl_energy.errors import ConfigError
from rl_energy.optim import adam

K_B = 8.617333262e-5
"""Boltzmann's constant in eV/K."""
ARMS = ("accurate", "pretrain", "weighted", "score")
"""(i) accurate-only, (ii) cheap pre-train (w = 1) → FT, (iii) bias-weighted → FT, (iv) sliced SM → FT."""
ARM_LABELS = {"accurate": "(i) accurate only", "pretrain": "(ii) cheap pre-train → FT",
              "weighted": "(iii) ASTEROID weighted → FT", "score": "(iv) sliced SM (unlabelled) → FT"}


# ------------------------------------------------------------------------------------------ weights
def bias_weights(teacher_forces: np.ndarray | torch.Tensor, cheap_forces: np.ndarray | torch.Tensor,
                 mask: np.ndarray | torch.Tensor | None = None, gamma: float = 1.0) -> np.ndarray:
    """ASTEROID's bias-aware weights (§15, step 2): ``w_i ∝ exp(−e_i/γ)`` with ``e_i`` = the mean
    ``|F̂_i − F_i^cheap|`` over the (free, real) atoms and axes of frame ``i``.

    ``teacher_forces`` and ``cheap_forces`` are ``[n, A, 3]`` (padded), ``mask`` ``[n, A]`` the atoms that count
    (default all) and ``γ`` is in the forces' units. The normaliser ``Z`` makes the **mean weight 1** (not the sum),
    so that a weighted mean loss has the scale of an unweighted one; ``γ → ∞`` gives uniform weights.
    """
    f_hat = np.asarray(teacher_forces.detach().cpu() if torch.is_tensor(teacher_forces) else teacher_forces,
                       dtype=np.float64)
    f_cheap = np.asarray(cheap_forces.detach().cpu() if torch.is_tensor(cheap_forces) else cheap_forces,
                         dtype=np.float64)
    if f_hat.shape != f_cheap.shape or f_hat.ndim != 3 or f_hat.shape[-1] != 3:
        raise ValueError(f"teacher_forces and cheap_forces must both be [n, atoms, 3], got {f_hat.shape} and "
                         f"{f_cheap.shape}")
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma > 0):
        raise ValueError(f"gamma must be a positive number (or math.inf), got {gamma!r}")
    if mask is None:
        m = np.ones(f_hat.shape[:2], dtype=bool)
    else:
        m = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask, dtype=bool)
        if m.shape != f_hat.shape[:2]:
            raise ValueError(f"mask must be [n, atoms] = {list(f_hat.shape[:2])}, got {list(m.shape)}")
    counts = m.sum(1)
    if (counts == 0).any():
        raise ValueError(f"frames {np.flatnonzero(counts == 0)[:5].tolist()} have no atom in mask")
    err = (np.abs(f_hat - f_cheap).mean(-1) * m).sum(1) / counts
    if math.isinf(gamma):
        return np.ones(len(err))
    logits = -(err - err.min()) / gamma
    w = np.exp(logits)
    return w / w.mean()


# ---------------------------------------------------------------------------------- score matching
def _forces_with_graph(model: AtomisticModel, s: Structures) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, F)`` with ``F = −∇E`` differentiable in ``pos`` and the parameters (the model runs in train mode,
    whose autograd keeps the graph; SchNet has no dropout or batch norm, so train and eval agree)."""
    if not model.conservative:
        raise ValueError("score matching needs a conservative model (F = −∇E); got a direct-force model")
    pos = s.pos.detach().clone().requires_grad_(True)
    was = model.training
    model.train()
    try:
        with torch.enable_grad():
            _, forces = model(s.with_pos(pos))
    finally:
        model.train(was)
    return pos, forces


def sliced_divergence(model: AtomisticModel, s: Structures, v: torch.Tensor, create_graph: bool = False
                      ) -> torch.Tensor:
    """Per-structure ``vᵀ∇_r(vᵀF_θ)`` ``[B]`` for directions ``v`` ``[N, 3]`` (one per atom row): the sliced
    (Hutchinson) estimate of ``∇·F_θ`` whose mean over ``v ~ N(0, I)`` is the exact divergence."""
    if v.shape != s.pos.shape:
        raise ValueError(f"v must have the shape of the positions {list(s.pos.shape)}, got {list(v.shape)}")
    pos, forces = _forces_with_graph(model, s)
    v = v.to(forces) * s.free.to(forces).unsqueeze(-1)
    (grad,) = torch.autograd.grad((v * forces).sum(), pos, create_graph=create_graph)
    return s.sum_atoms((v * grad).sum(-1))


def exact_divergence(model: AtomisticModel, s: Structures) -> torch.Tensor:
    """Per-structure ``∇·F_θ = tr(∂F/∂r)`` over the free atoms ``[B]``, column by column with autograd (3N
    backward passes: for tests and small systems only)."""
    pos, forces = _forces_with_graph(model, s)
    diag = torch.zeros_like(pos)
    flat = forces.reshape(-1)
    for k in range(flat.numel()):
        (col,) = torch.autograd.grad(flat[k], pos, retain_graph=True)
        diag.view(-1)[k] = col.view(-1)[k]
    return s.sum_atoms((diag * s.free.to(diag).unsqueeze(-1)).sum(-1))


def score_matching_loss(model: AtomisticModel, s: Structures, temperature: float = 500.0, n_slices: int = 1,
                        generator: torch.Generator | None = None, per_structure: bool = False) -> torch.Tensor:
    """Sliced score matching of the Boltzmann density at ``temperature`` K (§15, step 4; Song et al., 2019):

        (k_B T)² · E_v[½‖s_θ‖² + vᵀ∇_r(vᵀs_θ)] = ½‖F_θ‖² + k_B T · E_v[vᵀ∇_r(vᵀF_θ)],  s_θ = F_θ/(k_B T),

    summed over the free atoms of each structure and divided by ``σ² · (free atoms in the batch)`` (σ = the
    model's force scale), averaged over ``n_slices`` Gaussian ``v``. Differentiable in the parameters (a third
    derivative of the energy). ``per_structure=True`` returns the ``[B]`` sums instead (eV²/Å², unnormalised).
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number of K, got {temperature!r}")
    if not (isinstance(n_slices, int) and n_slices >= 1):
        raise ValueError(f"n_slices must be an integer >= 1, got {n_slices!r}")
    kt = K_B * float(temperature)
    pos, forces = _forces_with_graph(model, s)
    free = s.free.to(forces).unsqueeze(-1)
    total = s.sum_atoms((0.5 * (forces * free).square()).sum(-1))
    for _ in range(n_slices):
        v = torch.randn(forces.shape, generator=generator, dtype=forces.dtype) * free
        (grad,) = torch.autograd.grad((v * forces).sum(), pos, create_graph=True, retain_graph=True)
        total = total + kt * s.sum_atoms((v * grad).sum(-1)) / n_slices
    if per_structure:
        return total
    return total.sum() / (model.scale.square() * free.sum().clamp_min(1))


# ------------------------------------------------------------------------------------------- training
@dataclass
class AsteroidConfig:
    """The settings of one run (defaults: the reproduce script's; digest §15 "CPU experiment")."""

    width: int = 32
    n_layers: int = 2
    n_rbf: int = 16
    cutoff: float = 5.0
    lr: float = 2e-3
    rho: float = 0.999
    """Force share of the supervised MAE loss (both pre-training and fine-tuning)."""
    gamma: float = KCAL_PER_MOL
    """Temperature of the bias weights in eV/Å: the paper's γ = 1 in its kcal/mol/Å force units."""
    temperature: float = 500.0
    """Of the cheap MD, and so of the score-matching Boltzmann density (K)."""
    pretrain_steps: int = 300
    finetune_steps: int = 200
    """Also the steps of accurate-only training (same optimiser, schedule and loss)."""
    score_steps: int = 300
    batch_size: int = 16
    n_slices: int = 1

    def validate(self) -> None:
        for key in ("width", "n_layers", "n_rbf", "pretrain_steps", "finetune_steps", "score_steps", "batch_size",
                    "n_slices"):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"AsteroidConfig.{key} must be an integer >= 1, got {value!r}")
        for key in ("cutoff", "lr", "gamma", "temperature"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"AsteroidConfig.{key} must be > 0, got {value!r}")
        if not 0 <= self.rho <= 1:
            raise ConfigError(f"AsteroidConfig.rho must be in [0, 1], got {self.rho!r}")


def make_agent(frames: Frames, cfg: AsteroidConfig, seed: int) -> MLFF:
    """A fresh conservative SchNet :class:`MLFF` for structures of ``frames.max_atoms`` atoms (MAE loss)."""
    torch.manual_seed(seed)
    a = frames.max_atoms
    box = gym.spaces.Box(-np.inf, np.inf, (obs_dim(a),), np.float32)
    act = gym.spaces.Box(-np.inf, np.inf, (action_dim(a),), np.float32)
    return MLFF(box, act, MLFFConfig(model="schnet", width=cfg.width, n_layers=cfg.n_layers, n_rbf=cfg.n_rbf,
                                     cutoff=cfg.cutoff, lr=cfg.lr, loss="mae", energy_weight=1 - cfg.rho,
                                     force_weight=cfg.rho))


def batch_of(frames: Frames, weight: np.ndarray | None = None) -> TensorDict:
    """The TensorDict ``{"obs", "target"(, "weight")}`` of ``frames`` that :class:`MLFF` trains on."""
    data = {"obs": torch.as_tensor(frames.obs()), "target": torch.as_tensor(frames.target())}
    if weight is not None:
        if len(weight) != len(frames):
            raise ValueError(f"weight has {len(weight)} entries for {len(frames)} frames")
        data["weight"] = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    return TensorDict(data, batch_size=[len(frames)])


def fit_reference(agent: MLFF, frames: Frames) -> None:
    """Refit the per-element reference energies to ``frames``'s energies, keeping the force scale ``σ``."""
    scale = agent.model.scale.clone()
    agent.observe_train_split(batch_of(frames))
    agent.model.scale.copy_(scale)


def _new_stage(agent: MLFF, steps: int) -> None:
    """A fresh Adam and a cosine schedule over ``steps`` updates for the next training stage."""
    agent.optimizers["model"] = adam(list(agent.model.parameters()), agent.config.lr)
    agent.config.lr_decay_updates = steps
    agent.num_updates = 0


def train_supervised(agent: MLFF, frames: Frames, steps: int, batch_size: int, rng: np.random.Generator,
                     weight: np.ndarray | None = None) -> float:
    """``steps`` MAE updates ``(1−ρ)·MAE_E + ρ·mean_i w_i MAE_{F,i}`` on minibatches of ``frames`` (the energy
    and force weights of the agent's config are ``1−ρ`` and ``ρ``); returns the last loss."""
    data = batch_of(frames, weight)
    _new_stage(agent, steps)
    loss = float("nan")
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(len(frames), size=min(batch_size, len(frames)), replace=False))
        loss = float(agent.update(data[idx])["loss"])
    return loss


def train_score_matching(agent: MLFF, frames: Frames, steps: int, batch_size: int, rng: np.random.Generator,
                         temperature: float, n_slices: int = 1) -> float:
    """``steps`` updates of :func:`score_matching_loss` on the configurations of ``frames`` (labels unused)."""
    obs = torch.as_tensor(frames.obs())
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    _new_stage(agent, steps)
    agent.model.train()
    loss = float("nan")
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(len(frames), size=min(batch_size, len(frames)), replace=False))
        value = score_matching_loss(agent.model, agent.structures(obs[idx]), temperature, n_slices, gen)
        agent.step(value)
        loss = float(value.detach())
    return loss


def predicted_forces(agent: MLFF, frames: Frames) -> np.ndarray:
    """The model's forces ``[n, A, 3]`` (eV/Å) on ``frames``."""
    out = agent.act(torch.as_tensor(frames.obs())).numpy()
    return out[:, 1:].reshape(len(frames), frames.max_atoms, 3)


def force_mae(agent: MLFF, frames: Frames) -> float:
    """Mean ``|F̂ − F|`` over the real, free atoms and axes of ``frames``, in kcal/mol/Å."""
    err = np.abs(predicted_forces(agent, frames) - frames.forces).mean(-1)
    mask = frames.free & (frames.z > 0)
    return float(err[mask].mean() / KCAL_PER_MOL)


def teacher_weights(teacher: MLFF, cheap: Frames, gamma: float) -> np.ndarray:
    """Bias weights of the cheap frames from the teacher's predictions (:func:`bias_weights`)."""
    return bias_weights(predicted_forces(teacher, cheap), cheap.forces, cheap.free & (cheap.z > 0), gamma)


def _check_frames(cheap: Frames, accurate: Frames, test: Frames) -> None:
    for name, f in (("cheap", cheap), ("accurate", accurate), ("test", test)):
        if not isinstance(f, Frames) or len(f) == 0:
            raise ValueError(f"{name} must be a non-empty Frames, got {type(f).__name__}"
                             f"{' of 0 frames' if isinstance(f, Frames) else ''}")
    if not (cheap.max_atoms == accurate.max_atoms == test.max_atoms):
        raise ValueError("cheap, accurate and test frames must share max_atoms (pad them with Frames.padded_to), got "
                         f"{cheap.max_atoms}, {accurate.max_atoms}, {test.max_atoms}")


def run_molecule(cheap: Frames, accurate: Frames | dict[int, Frames], test: Frames, cfg: AsteroidConfig, seed: int,
                 arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    """The arms of §15 on one molecule: ``{arm: test force MAE (kcal/mol/Å)}`` plus diagnostics (``weights`` =
    min/max of ``w``, ``weight_ess`` = its effective sample size fraction, ``<arm>_cheap_mae`` = the pre-trained
    model's force MAE against the cheap labels). Arm (i)'s model is the teacher of arm (iii).

    ``accurate`` may be ``{budget: frames}`` (several accurate-label budgets, best nested): then the result is
    ``{budget: {...}}`` and the budget-independent pre-training of arms (ii) and (iv) runs once, its force scale
    fitted to the smallest budget, and is fine-tuned on each budget in turn.
    The cheap frames' labels are used by (ii) and (iii), their configurations only by (iv)."""
    cfg.validate()
    sets = accurate if isinstance(accurate, dict) else {0: accurate}
    if not sets:
        raise ValueError("accurate must hold at least one budget of frames")
    for frames in sets.values():
        _check_frames(cheap, frames, test)
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"unknown arm(s) {bad}; valid: {', '.join(ARMS)}")
    budgets = sorted(sets)
    out: dict[int, dict[str, Any]] = {b: {} for b in budgets}

    def fresh(frames: Frames) -> MLFF:
        agent = make_agent(frames, cfg, seed)
        agent.observe_train_split(batch_of(frames))
        return agent

    def finetune(agent: MLFF, frames: Frames, rng: np.random.Generator) -> float:
        fit_reference(agent, frames)
        train_supervised(agent, frames, cfg.finetune_steps, cfg.batch_size, rng)
        return force_mae(agent, test)

    def rng_of(*keys: int) -> np.random.Generator:
        return np.random.default_rng([seed, *keys])

    for b in budgets:
        if "accurate" in arms or "weighted" in arms:
            teacher = fresh(sets[b])
            train_supervised(teacher, sets[b], cfg.finetune_steps, cfg.batch_size, rng_of(0, b))
            out[b]["accurate"] = force_mae(teacher, test)
        if "weighted" in arms:
            weight = teacher_weights(teacher, cheap, cfg.gamma)
            out[b]["weights"] = (float(weight.min()), float(weight.max()))
            out[b]["weight_ess"] = float(weight.sum() ** 2 / (len(weight) * (weight**2).sum()))
            agent, rng = fresh(sets[b]), rng_of(2, b)
            fit_reference(agent, cheap)
            train_supervised(agent, cheap, cfg.pretrain_steps, cfg.batch_size, rng, weight)
            out[b]["weighted_cheap_mae"] = _cheap_mae(agent, cheap)
            out[b]["weighted"] = finetune(agent, sets[b], rng)
    for arm, offset in (("pretrain", 1), ("score", 3)):
        if arm not in arms:
            continue
        agent, rng = fresh(sets[budgets[0]]), rng_of(offset)
        if arm == "pretrain":
            fit_reference(agent, cheap)
            train_supervised(agent, cheap, cfg.pretrain_steps, cfg.batch_size, rng)
        else:
            train_score_matching(agent, cheap, cfg.score_steps, cfg.batch_size, rng, cfg.temperature, cfg.n_slices)
        cheap_mae = _cheap_mae(agent, cheap)
        for b in budgets:
            out[b][f"{arm}_cheap_mae"] = cheap_mae
            out[b][arm] = finetune(copy.deepcopy(agent), sets[b], rng_of(offset, b))
    for b in budgets:
        out[b]["config"] = asdict(cfg)
    return out if isinstance(accurate, dict) else out[0]


def _cheap_mae(agent: MLFF, cheap: Frames, n: int = 200) -> float:
    """Force MAE (kcal/mol/Å) against the cheap labels on the first ``n`` cheap frames (a pre-training check)."""
    return force_mae(agent, cheap.subset(np.arange(min(n, len(cheap)))))


def run_arm(arm: str, cheap: Frames, accurate: Frames, test: Frames, cfg: AsteroidConfig | None = None,
            seed: int = 0) -> float:
    """The test force MAE (kcal/mol/Å) of one arm of §15 (:data:`ARMS`); ``weighted`` trains its teacher too."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")
    arms = ("accurate", "weighted") if arm == "weighted" else (arm,)
    return float(run_molecule(cheap, accurate, test, replace(cfg or AsteroidConfig()), seed, arms)[arm])


# ---------------------------------------------------------------------------------------------- data
MOLECULES = {"ethanol": "CCO", "malonaldehyde": "O=CC=CO", "aspirin": "CC(=O)Oc1ccccc1C(=O)O"}
"""The digest's three MD17 molecules from SMILES; malonaldehyde in its enol form (MD17's, with the O–H···O bond)."""


def md_frames(smiles: str, md: str, label_with: str, n: int, seed: int, temperature: float = 500.0,
              every: int = 10, timestep_fs: float = 0.5, max_atoms: int | None = None) -> Frames:
    """``n`` frames of Langevin MD of ``smiles`` at ``temperature`` K under the ``md`` labeller's forces (one
    frame every ``every`` steps of ``timestep_fs`` fs, from an ETKDG + MMFF conformer of ``seed``), labelled by
    ``label_with`` through the :class:`~rl_energy.atoms.labellers.LabelCache`. The whole set is cached as ``.npz``
    under the label cache's directory, so reruns pay neither the MD nor the labels."""
    import hashlib
    import json

    from rl_energy.atoms.data import embed, langevin_md
    from rl_energy.atoms.labellers import LabelCache, as_calculator, cache_dir, label

    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    recipe = {"smiles": smiles, "md": md, "label": label_with, "n": n, "seed": seed, "T": temperature,
              "every": every, "dt": timestep_fs}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "asteroid" / f"md-{key}.npz"
    if path.exists():
        frames = Frames.load(path)
    else:
        base = embed(smiles, seed=seed)
        if base is None:
            raise ValueError(f"RDKit cannot embed or MMFF-type {smiles!r}")
        rng = np.random.default_rng(seed)
        atoms = langevin_md(base, as_calculator(md), temperature, steps=n * every, every=every, rng=rng,
                            timestep_fs=timestep_fs)
        cache = LabelCache()
        energy, forces = label(atoms, label_with, cache)
        cache.close()
        frames = Frames.from_atoms(atoms, energy, forces, smiles=[smiles])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{seed}.tmp.npz")
        frames.save(tmp)
        tmp.replace(path)
    return frames if max_atoms is None else frames.padded_to(max_atoms)


def molecule_data(smiles: str, n_cheap: int, n_pool: int, n_test: int, seed: int = 0,
                  temperature: float = 500.0) -> dict[str, Frames]:
    """The §15 data of one molecule: ``cheap`` = ``n_cheap`` MMFF-labelled frames of MMFF MD; ``pool`` =
    ``n_pool`` xTB-labelled frames of xTB MD (the accurate training budgets are drawn from it); ``test`` =
    ``n_test`` xTB-labelled frames of an independent xTB MD run. Three different starting conformers."""
    return {"cheap": md_frames(smiles, "mmff", "mmff", n_cheap, 3 * seed, temperature),
            "pool": md_frames(smiles, "xtb", "xtb", n_pool, 3 * seed + 1, temperature),
            "test": md_frames(smiles, "xtb", "xtb", n_test, 3 * seed + 2, temperature)}
