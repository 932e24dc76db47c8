"""GOLF: gradual optimization learning for conformational energy minimization (Tsypin et al., ICLR 2024,
arXiv 2311.06295; digest ``one-step-tasks.md`` §16).

The pieces of the method on top of the atomistic core (:mod:`rl_energy.atoms`, :class:`agents.mlff.MLFF`):

* **The policy** (§16 "Core", "External optimizer"): a neural network potential (NNP, the conservative
  :class:`~rl_energy.atoms.models.SchNet`) and an external **L-BFGS** optimiser on the NNP energy; one env step
  runs ``n_iter`` (5) L-BFGS iterations at step size ``lr`` (1) and the action is the resulting displacement.
  :class:`BatchLBFGS` is L-BFGS (two-loop recursion, Nocedal & Wright Alg. 7.4) run independently for every
  structure of a padded batch, with a per-structure curvature history that persists over an episode; its first
  iteration scales the step as ``torch.optim.LBFGS`` does (``lr · min(1, 1/‖g‖₁)``) and every step is capped at
  ``max_step`` Å per atom (ASE's ``maxstep`` convention) so that one bad curvature pair cannot throw atoms away.
* **The env** (:mod:`rl_energy.envs.conformer_relax`, ``rl_energy/ConformerRelax-v0``): reward = the drop of the
  surrogate energy (MMFF94), terminate at the first negative reward; :func:`separate_close_atoms` is its 0.7 Å rule.
* **The collection loop** (:func:`golf_train`): the policy runs in ``n_envs`` envs on training molecules; a
  conformation the surrogate flags, i.e. the state ``s_{t+1}`` reached by a step whose surrogate energy went
  *up* (reward < 0, the NNP optimiser made a bad step, which also ends the episode), and the last state of an
  episode cut at the horizon, is labelled by the **genuine oracle** (GFN2-xTB here, DFT in the paper) and goes
  to the buffer; the NNP trains on ``D₀ ∪ buffer`` with ``0.01·MSE_E + 0.99·MSE_F`` by Adam
  (:meth:`agents.mlff.MLFF.update` with ``energy_weight=0.01, force_weight=0.99``), interleaved with collection,
  until the budget of genuine-oracle calls is spent.
* **The metrics** (§16 "Metrics", :func:`optimization_metrics`), scored by the genuine oracle against its minima
  (:func:`oracle_minima`, cached on disk).

Energies inside the env and the metrics are in kcal/mol; the NNP works in eV and Å like the rest of the core.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from rl_energy.atoms.data import Frames
from rl_energy.atoms.graph import pack, unpack
from rl_energy.atoms.labellers import KCAL_PER_MOL, LabelCache, Labeller, as_calculator, cache_dir, make_labeller
from rl_energy.atoms.models import AtomisticModel

MIN_DISTANCE = 0.7
"""Å: atoms closer than this are pushed apart after every action (§16 "Env")."""


# ------------------------------------------------------------------------------------ geometry
def separate_close_atoms(pos: np.ndarray, min_distance: float = MIN_DISTANCE, sweeps: int = 20) -> np.ndarray:
    """A copy of ``pos`` ``[n, 3]`` in which every pair closer than ``min_distance`` Å has been pushed apart
    symmetrically along its axis to exactly ``min_distance`` (repeated ``sweeps`` times, since a push can bring
    another pair too close). Coincident atoms are split along a fixed axis."""
    out = np.array(pos, dtype=np.float64, copy=True)
    n = len(out)
    if n < 2:
        return out
    iu, ju = np.triu_indices(n, 1)
    for _ in range(sweeps):
        diff = out[ju] - out[iu]
        dist = np.linalg.norm(diff, axis=-1)
        close = dist < min_distance - 1e-9
        if not close.any():
            break
        for i, j, d, v in zip(iu[close], ju[close], dist[close], diff[close], strict=True):
            axis = v / d if d > 1e-12 else np.array([1.0, 0.0, 0.0])
            shift = 0.5 * (min_distance - d) * axis
            out[i] -= shift
            out[j] += shift
    return out


def min_pair_distance(pos: np.ndarray) -> float:
    """The smallest interatomic distance of ``pos`` ``[n, 3]`` (``inf`` for fewer than two atoms)."""
    if len(pos) < 2:
        return math.inf
    diff = pos[:, None] - pos[None]
    dist = np.linalg.norm(diff, axis=-1)
    return float(dist[np.triu_indices(len(pos), 1)].min())


# ------------------------------------------------------------------------------------- L-BFGS
class BatchLBFGS:
    """L-BFGS minimisation of a batch of independent functions of ``[B, D]`` variables (module docstring).

    :meth:`step` takes the current points and gradients and returns the next points; the curvature pairs
    ``s = x_{k+1} − x_k``, ``y = g_{k+1} − g_k`` of each row are kept (``history`` of them) until :meth:`reset`
    clears that row (a new episode). A pair with ``s·y ≤ 1e-10`` is skipped, as in ``torch.optim.LBFGS``.
    ``mask`` ``[B, D]`` (optional) zeroes the directions of padded coordinates; ``max_step`` caps the largest
    per-atom displacement of a step (coordinates grouped in threes; ``None``: no cap).
    """

    def __init__(self, batch: int, dim: int, history: int = 10, lr: float = 1.0, max_step: float | None = 0.2,
                 dtype: torch.dtype = torch.float64) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.max_step, self.history = float(lr), max_step, int(history)
        self.s = torch.zeros(history, batch, dim, dtype=dtype)
        self.y = torch.zeros(history, batch, dim, dtype=dtype)
        self.valid = torch.zeros(history, batch, dtype=torch.bool)
        self.prev_x: torch.Tensor | None = None
        self.prev_g: torch.Tensor | None = None
        self.has_prev = torch.zeros(batch, dtype=torch.bool)

    def reset(self, rows: torch.Tensor | np.ndarray | Sequence[int] | None = None) -> None:
        """Forget the history of ``rows`` (all when ``None``)."""
        if rows is None:
            self.valid.zero_()
            self.has_prev.zero_()
            return
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.valid[:, rows] = False
        self.has_prev[rows] = False

    def _remember(self, x: torch.Tensor, g: torch.Tensor) -> None:
        if self.prev_x is None:
            return
        s, y = x - self.prev_x, g - self.prev_g
        sy = (s * y).sum(-1)
        ok = self.has_prev & (sy > 1e-10)
        self.s = torch.roll(self.s, 1, 0)
        self.y = torch.roll(self.y, 1, 0)
        self.valid = torch.roll(self.valid, 1, 0)
        self.s[0], self.y[0], self.valid[0] = s, y, ok

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """``−H g`` by the two-loop recursion over each row's valid pairs (newest first in the history)."""
        q = g.clone()
        valid = self.valid.to(g)
        rho = valid / (self.s * self.y).sum(-1).where(self.valid, torch.ones(()).to(g))
        alpha = torch.zeros_like(valid)
        for i in range(self.history):
            alpha[i] = rho[i] * (self.s[i] * q).sum(-1)
            q = q - alpha[i, :, None] * self.y[i]
        # H0 = γ I with γ = s·y / y·y of the newest valid pair; rows without one: torch's first-step scale.
        gamma = g.new_zeros(len(g))
        found = torch.zeros(len(g), dtype=torch.bool)
        for i in range(self.history):
            take = self.valid[i] & ~found
            yy = (self.y[i] * self.y[i]).sum(-1).clamp_min(1e-300)
            gamma = torch.where(take, (self.s[i] * self.y[i]).sum(-1) / yy, gamma)
            found |= take
        first = torch.clamp(1.0 / g.abs().sum(-1).clamp_min(1e-300), max=1.0)
        gamma = torch.where(found, gamma, first)
        r = gamma[:, None] * q
        for i in reversed(range(self.history)):
            beta = rho[i] * (self.y[i] * r).sum(-1)
            r = r + self.s[i] * (alpha[i] - beta)[:, None]
        return -r

    def step(self, x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The next points ``x + lr · d`` of ``x`` ``[B, D]`` with gradients ``g`` (module docstring)."""
        x, g = x.to(self.s), g.to(self.s)
        if mask is not None:
            g = g * mask.to(g)
        self._remember(x, g)
        d = self.direction(g)
        if mask is not None:
            d = d * mask.to(d)
        step = self.lr * d
        if self.max_step is not None and step.shape[-1] % 3 == 0:
            per_atom = step.reshape(len(step), -1, 3).norm(dim=-1).amax(-1)
            step = step * torch.clamp(self.max_step / per_atom.clamp_min(1e-300), max=1.0)[:, None]
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        self.prev_x, self.prev_g = x.clone(), g.clone()
        self.has_prev[:] = True
        return x + step


# ------------------------------------------------------------------------------------- policy
class NNPOptimizerPolicy:
    """GOLF's policy: ``n_iter`` L-BFGS iterations on the NNP energy from the observed structures; the action is
    the displacement ``x_after − x_before`` ``[B, 3·max_atoms]`` (zeros on padding). Each of the ``batch`` slots
    keeps its L-BFGS history until :meth:`reset` (call it at every episode start)."""

    def __init__(self, model: AtomisticModel, batch: int, max_atoms: int, n_iter: int = 5, lr: float = 1.0,
                 history: int = 10, max_step: float | None = 0.2) -> None:
        self.model, self.n_iter, self.max_atoms = model, int(n_iter), int(max_atoms)
        self.opt = BatchLBFGS(batch, 3 * max_atoms, history=history, lr=lr, max_step=max_step)
        self.nnp_calls = 0

    def reset(self, rows: Sequence[int] | np.ndarray | None = None) -> None:
        self.opt.reset(rows)

    def energy_grad(self, obs: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NNP energy ``[B]`` (eV) and gradient ``[B, 3·max_atoms]`` (eV/Å) at padded positions ``pos``."""
        s = unpack(obs)
        s = s.with_pos(s.gather_atoms(pos.reshape(len(obs), self.max_atoms, 3).float()))
        was = self.model.training
        self.model.eval()
        energy, forces = self.model(s)
        self.model.train(was)
        self.nnp_calls += 1
        return energy.detach().double(), -s.scatter_atoms(forces.detach()).reshape(len(obs), -1).double()

    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Displacements ``[B, 3·max_atoms]`` float32 for padded observations ``obs`` ``[B, obs_dim]``."""
        obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(-1, 5 * self.max_atoms + 12)
        rows = obs[:, : 5 * self.max_atoms].reshape(len(obs), self.max_atoms, 5)
        mask = (rows[..., 0] > 0).unsqueeze(-1).expand(-1, -1, 3).reshape(len(obs), -1).double()
        x0 = rows[..., 1:4].reshape(len(obs), -1).double()
        x = x0.clone()
        for _ in range(self.n_iter):
            _, g = self.energy_grad(obs, x)
            x = self.opt.step(x, g, mask)
        return ((x - x0) * mask).float().numpy()


def relax_with_policy(model: AtomisticModel, atoms_list: Sequence[Any], steps: int, max_atoms: int,
                      n_iter: int = 5, lr: float = 1.0, max_step: float | None = 0.2,
                      min_distance: float = MIN_DISTANCE) -> list[Any]:
    """The conformations reached by the policy after ``steps`` env steps from each of ``atoms_list`` (batched;
    evaluation runs the full horizon, with the env's 0.7 Å rule but no surrogate, as the NNP alone relaxes)."""
    policy = NNPOptimizerPolicy(model, len(atoms_list), max_atoms, n_iter=n_iter, lr=lr, max_step=max_step)
    current = [a.copy() for a in atoms_list]
    for _ in range(steps):
        obs = np.stack([pack(a.numbers, a.positions, max_atoms=max_atoms) for a in current])
        disp = policy.act(obs).reshape(len(current), max_atoms, 3)
        for k, a in enumerate(current):
            pos = a.positions + disp[k, : len(a)]
            if not np.isfinite(pos).all():
                continue
            a.set_positions(separate_close_atoms(pos, min_distance))
    for a, src in zip(current, atoms_list, strict=True):
        a.info.update(src.info)
    return current


# ------------------------------------------------------------------------------------ metrics
def optimization_metrics(e0: np.ndarray, e_final: np.ndarray, e_opt: np.ndarray,
                         success_threshold: float = 1.0) -> dict[str, float]:
    """GOLF's optimisation metrics (§16 "Metrics") of energies in kcal/mol, per conformation ``[n]``:

    * ``pct`` = mean of ``100 (E₀ − E_T) / (E₀ − E_opt)`` and ``pct_std``;
    * ``pct_div`` = % diverged: ``E_T`` not finite or above ``E₀``;
    * ``e_res`` = mean of ``E_T − E_opt`` (kcal/mol);
    * ``pct_success`` = % with ``E_T − E_opt < success_threshold`` (1 kcal/mol) among all conformations.

    ``pct`` and ``e_res`` average the conformations that did not diverge (a diverged optimisation is counted by
    ``pct_div`` and is never a success), so one blown-up run does not swamp the mean.
    """
    e0, e_final, e_opt = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (e0, e_final, e_opt))
    if not len(e0) == len(e_final) == len(e_opt) or len(e0) == 0:
        raise ValueError("e0, e_final and e_opt need the same non-zero length")
    finite = np.isfinite(e_final)
    diverged = ~finite | (np.where(finite, e_final, 0.0) > e0)
    ok = ~diverged
    gap = e0 - e_opt
    pct = 100.0 * (e0 - e_final) / np.where(np.abs(gap) > 1e-12, gap, np.nan)
    res = e_final - e_opt
    return {"pct": float(np.nanmean(pct[ok])) if ok.any() else math.nan,
            "pct_std": float(np.nanstd(pct[ok])) if ok.any() else math.nan,
            "pct_div": float(100.0 * diverged.mean()),
            "e_res": float(res[ok].mean()) if ok.any() else math.nan,
            "pct_success": float(100.0 * (ok & (res < success_threshold)).mean())}


def oracle_minima(atoms_list: Sequence[Any], oracle: str = "xtb", fmax: float = 0.02, steps: int = 300,
                  cache: bool = True) -> tuple[np.ndarray, list[Any]]:
    """Energies (eV) and structures of the ``oracle``'s local minima from each of ``atoms_list`` (ASE BFGS under
    :func:`~rl_energy.atoms.labellers.as_calculator`, ``fmax`` eV/Å, ≤ ``steps`` steps). Cached on disk in
    ``$RL_ENERGY_CACHE/golf_minima.sqlite`` (a :class:`LabelCache` keyed by the start; the optimised positions
    are stored in its force column), so the test minima are computed once."""
    from ase.optimize import BFGS

    store = LabelCache(cache_dir() / "golf_minima.sqlite") if cache else None
    tag = f"{oracle}-bfgs-fmax{fmax:g}-steps{steps}"
    energies = np.zeros(len(atoms_list))
    out = []
    fresh = []
    for k, atoms in enumerate(atoms_list):
        key = LabelCache.key(tag, atoms)
        hit = store.get(key, len(atoms)) if store is not None else None
        if hit is None:
            work = atoms.copy()
            work.calc = as_calculator(oracle)
            BFGS(work, logfile=None).run(fmax=fmax, steps=steps)
            hit = (float(work.get_potential_energy()), work.positions.copy())
            fresh.append((key, hit[0], hit[1]))
        energies[k] = hit[0]
        opt = atoms.copy()
        opt.set_positions(hit[1])
        out.append(opt)
    if store is not None:
        store.put(fresh)
        store.close()
    return energies, out


def oracle_trajectory(atoms: Any, oracle: Labeller, steps: int, fmax: float = 0.02) -> tuple[list[Any], list[float],
                                                                                             list[np.ndarray]]:
    """The frames of an ASE BFGS optimisation of ``atoms`` under ``oracle`` with the oracle's labels (one genuine
    call per frame, the start included): the conformations of the traj-N arm (§16 "CPU experiment")."""
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = as_calculator(oracle)
    frames, energies, forces = [], [], []

    def record() -> None:
        frame = work.copy()
        frame.info.update(atoms.info)
        frames.append(frame)
        energies.append(float(work.get_potential_energy()))
        forces.append(np.asarray(work.get_forces()).copy())

    opt = BFGS(work, logfile=None)
    record()
    for _ in opt.irun(fmax=fmax, steps=steps):
        if len(frames) > steps:
            break
        if opt.nsteps > 0:
            record()
    return frames, energies, forces


# --------------------------------------------------------------------------------- training
class CountingLabeller:
    """A labeller that counts its calls (the genuine-oracle budget, counted exactly)."""

    def __init__(self, inner: Labeller) -> None:
        self.inner, self.name, self.calls = inner, inner.name, 0

    def energy_forces(self, atoms: Any) -> tuple[float, np.ndarray]:
        self.calls += 1
        return self.inner.energy_forces(atoms)


@dataclass
class LabelledPool:
    """Padded ``obs``/``target`` rows (MLFF's batch layout) of ``D₀`` plus the growing buffer."""

    max_atoms: int
    obs: list[np.ndarray] = field(default_factory=list)
    target: list[np.ndarray] = field(default_factory=list)
    _stack: tuple[np.ndarray, np.ndarray] | None = None

    def add_frames(self, frames: Frames) -> None:
        if len(frames):
            self.obs.append(frames.obs(self.max_atoms))
            self.target.append(frames.target(self.max_atoms))
            self._stack = None

    def add(self, atoms: Any, energy: float, forces: np.ndarray) -> None:
        self.add_frames(Frames.from_atoms([atoms], np.array([energy]), [forces], max_atoms=self.max_atoms))

    def __len__(self) -> int:
        return sum(len(o) for o in self.obs)

    def batch(self, n: int, rng: np.random.Generator) -> TensorDict:
        if self._stack is None:
            self._stack = (np.concatenate(self.obs), np.concatenate(self.target))
        idx = rng.integers(len(self._stack[0]), size=n)
        return TensorDict({"obs": torch.as_tensor(self._stack[0][idx]),
                           "target": torch.as_tensor(self._stack[1][idx])}, batch_size=[n])


def train_steps(agent: Any, pool: LabelledPool, updates: int, batch_size: int, rng: np.random.Generator) -> float:
    """``updates`` Adam steps of ``agent`` (:class:`agents.mlff.MLFF`) on batches drawn uniformly from ``pool``;
    returns the last loss."""
    loss = math.nan
    for _ in range(updates):
        loss = float(agent.update(pool.batch(batch_size, rng))["loss"])
    return loss


@dataclass
class GOLFStats:
    """What a collection run spent and found."""

    oracle_calls: int = 0
    env_steps: int = 0
    episodes: int = 0
    flagged_negative: int = 0
    flagged_horizon: int = 0
    updates: int = 0
    seconds: float = 0.0


def golf_train(agent: Any, envs: Sequence[Any], pool: LabelledPool, budget: int, oracle: Labeller,
               updates_per_step: int, batch_size: int, rng: np.random.Generator, total_updates: int | None = None,
               n_iter: int = 5, lr: float = 1.0, max_step: float | None = 0.2, max_env_steps: int = 100_000,
               on_label: Callable[[Any, float, np.ndarray], None] | None = None) -> GOLFStats:
    """GOLF's gradual collection loop (module docstring) until ``budget`` genuine-oracle calls are spent.

    ``envs``: ConformerRelax envs (``gym.make("rl_energy/ConformerRelax-v0", ...)``, so the horizon truncates);
    ``pool``: ``D₀`` (the buffer's labels are appended to it); after every vectorised env step the agent takes
    ``updates_per_step`` updates (never more than ``total_updates`` in all, if given); once the budget is spent it
    continues to ``total_updates``, so an arm's update count does not depend on how long collection took. The
    oracle is called once per flagged conformation and never otherwise, so ``stats.oracle_calls`` is the budget.
    """
    t0 = time.perf_counter()
    stats = GOLFStats()
    max_atoms = pool.max_atoms
    policy = NNPOptimizerPolicy(agent.model, len(envs), max_atoms, n_iter=n_iter, lr=lr, max_step=max_step)
    obs = np.stack([env.reset(seed=int(rng.integers(2**31)))[0] for env in envs])
    while stats.oracle_calls < budget and stats.env_steps < max_env_steps:
        actions = policy.act(obs)
        for k, env in enumerate(envs):
            nxt, reward, terminated, truncated, info = env.step(actions[k])
            stats.env_steps += 1
            flag = (reward < 0) or (truncated and not terminated)
            if flag and stats.oracle_calls < budget:
                atoms = info["atoms"]
                energy, forces = oracle.energy_forces(atoms)
                stats.oracle_calls += 1
                if reward < 0:
                    stats.flagged_negative += 1
                else:
                    stats.flagged_horizon += 1
                if np.isfinite(energy) and np.isfinite(forces).all():
                    pool.add(atoms, energy, forces)
                    if on_label is not None:
                        on_label(atoms, energy, forces)
            if terminated or truncated:
                stats.episodes += 1
                nxt, _ = env.reset()
                policy.reset([k])
            obs[k] = nxt
        todo = updates_per_step if total_updates is None else min(updates_per_step, total_updates - stats.updates)
        if todo > 0:
            train_steps(agent, pool, todo, batch_size, rng)
            stats.updates += todo
    if total_updates is not None and stats.updates < total_updates:
        train_steps(agent, pool, total_updates - stats.updates, batch_size, rng)
        stats.updates = total_updates
    stats.seconds = time.perf_counter() - t0
    return stats


def evaluate(model: AtomisticModel, starts: Sequence[Any], e0: np.ndarray, e_opt: np.ndarray, steps: int,
             max_atoms: int, oracle: Labeller | str = "xtb", cache: LabelCache | None = None,
             **policy_kwargs: Any) -> dict[str, float]:
    """:func:`optimization_metrics` of the policy after ``steps`` env steps from ``starts``, with ``E₀``, ``E_T``
    and ``E_opt`` in eV converted to kcal/mol; ``E_T`` from the genuine ``oracle`` (a non-finite label or one
    that fails counts as diverged)."""
    from rl_energy.atoms.labellers import label

    lab = make_labeller(oracle) if isinstance(oracle, str) else oracle
    final = relax_with_policy(model, starts, steps, max_atoms, **policy_kwargs)
    e_final = np.full(len(final), np.nan)
    for k, a in enumerate(final):
        if not np.isfinite(a.positions).all():
            continue
        try:
            e_final[k] = label([a], lab, cache)[0][0]
        except Exception:  # noqa: BLE001 - an oracle failure on a blown-up geometry is a divergence
            e_final[k] = np.nan
    return optimization_metrics(np.asarray(e0) / KCAL_PER_MOL, e_final / KCAL_PER_MOL,
                                np.asarray(e_opt) / KCAL_PER_MOL)
