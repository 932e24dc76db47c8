"""ConformerRelax: conformational energy minimisation as a short multi-step env (GOLF's own design; Tsypin et al.,
ICLR 2024, arXiv 2311.06295; digest ``one-step-tasks.md`` §16 "Env" and "Framing").

An episode starts from an off-minimum conformer of a molecule of the pool: an NCI molecule
(:func:`rl_energy.atoms.data.nci_smiles`), embedded by ETKDG and relaxed by MMFF94
(:func:`rl_energy.atoms.data.embed`), then perturbed (``perturbation="rattle"``: Gaussian displacements of
``rattle_std`` Å; ``"md"``: a snapshot of ``md_steps`` steps of Langevin MD under MMFF94 at ``md_temperature`` K;
``"none"``). Each step:

* observation: the padded structure of :func:`rl_energy.atoms.graph.pack` (``max_atoms`` rows of
  ``Z, x, y, z, free``, then the empty cell and periodic flags);
* action: a coordinate displacement ``[3·max_atoms]`` in Å (clipped to ``±max_displacement``; padding rows are
  ignored); after it, atoms closer than ``min_distance`` (0.7 Å) are pushed apart
  (:func:`rl_energy.atoms.golf.separate_close_atoms`);
* reward: ``E_sur(s_t) − E_sur(s_{t+1})``, the drop of the surrogate energy (MMFF94, kcal/mol);
* termination at the first negative reward (the surrogate flags a bad step); truncation at the horizon, the
  registry's ``max_episode_steps`` (100).

``info``: ``atoms`` (an ``ase.Atoms`` of the new state with ``info["smiles"]``, what the GOLF collection loop
sends to the genuine oracle), ``smiles``, ``energy`` (the surrogate energy, kcal/mol) and ``n_atoms``.
``reset(options={"atoms": atoms})`` starts from a given conformer (it needs ``info["smiles"]`` in RDKit's
``AddHs`` atom order) instead of drawing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from rl_energy.envs.tasks.base import is_int, is_number
from rl_energy.errors import ConfigError, require_extra

PERTURBATIONS = ("rattle", "md", "none")


def _bad(key: str, requirement: str, value: Any) -> ConfigError:
    return ConfigError(f"config key 'env_kwargs.{key}' must be {requirement}, got {value!r}")


def molecule_pool(n_molecules: int, data_seed: int = 0, min_heavy: int = 8, max_heavy: int = 11,
                  max_atoms: int = 40, skip: int = 0) -> list[str]:
    """``n_molecules`` NCI SMILES (after ``skip``) of ``min_heavy``–``max_heavy`` heavy atoms and at most
    ``max_atoms`` atoms with hydrogens, in the order of a permutation seeded by ``data_seed`` (the train and test
    pools of the GOLF experiment are disjoint slices of it)."""
    from rdkit import Chem

    from rl_energy.atoms.data import nci_smiles

    pool = nci_smiles(min_heavy, max_heavy)
    order = np.random.default_rng(data_seed).permutation(len(pool))
    out: list[str] = []
    seen = 0
    for i in order:
        smi = pool[i]
        if Chem.AddHs(Chem.MolFromSmiles(smi)).GetNumAtoms() > max_atoms:
            continue
        seen += 1
        if seen <= skip:
            continue
        out.append(smi)
        if len(out) == n_molecules:
            break
    return out


class ConformerRelaxEnv(gym.Env):
    """Conformer relaxation under a surrogate reward (module docstring).

    Keyword arguments (``env_kwargs``): ``smiles`` (a list; default: a pool of ``n_molecules`` NCI molecules from
    :func:`molecule_pool` with ``data_seed``, ``min_heavy``, ``max_heavy``), ``n_molecules`` (50), ``data_seed``
    (0), ``min_heavy`` (8), ``max_heavy`` (11), ``max_atoms`` (40), ``perturbation`` (``rattle``), ``rattle_std``
    (0.04 Å), ``md_temperature`` (600 K), ``md_steps`` (40), ``min_distance`` (0.7 Å), ``max_displacement``
    (1.0 Å), ``surrogate`` (``mmff`` | ``uff``).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, smiles: Sequence[str] | None = None, n_molecules: int = 50, data_seed: int = 0,
                 min_heavy: int = 8, max_heavy: int = 11, max_atoms: int = 40, perturbation: str = "rattle",
                 rattle_std: float = 0.04, md_temperature: float = 600.0, md_steps: int = 40,
                 min_distance: float = 0.7, max_displacement: float = 1.0, surrogate: str = "mmff") -> None:
        require_extra("atoms", "rl_energy/ConformerRelax-v0")
        if smiles is not None and (isinstance(smiles, str) or not len(smiles)
                                   or not all(isinstance(s, str) and s for s in smiles)):
            raise _bad("smiles", "a non-empty list of SMILES strings", smiles)
        for key, value, low, high in (("n_molecules", n_molecules, 1, 100_000), ("data_seed", data_seed, 0, 2**31),
                                      ("min_heavy", min_heavy, 1, 200), ("max_heavy", max_heavy, 1, 200),
                                      ("max_atoms", max_atoms, 2, 10_000), ("md_steps", md_steps, 1, 100_000)):
            if not (is_int(value) and low <= value <= high):
                raise _bad(key, f"an integer in [{low}, {high}]", value)
        if max_heavy < min_heavy:
            raise _bad("max_heavy", f">= min_heavy ({min_heavy})", max_heavy)
        if perturbation not in PERTURBATIONS:
            raise _bad("perturbation", f"one of {', '.join(PERTURBATIONS)}", perturbation)
        for key, value, low in (("rattle_std", rattle_std, 0.0), ("md_temperature", md_temperature, 0.0),
                                ("min_distance", min_distance, 0.0)):
            if not (is_number(value) and value >= low):
                raise _bad(key, f"a number >= {low:g}", value)
        if not (is_number(max_displacement) and 0 < max_displacement <= 100):
            raise _bad("max_displacement", "a number in (0, 100] Å", max_displacement)
        if surrogate not in ("mmff", "uff"):
            raise _bad("surrogate", "one of mmff, uff", surrogate)
        from rl_energy.atoms.graph import obs_dim
        from rl_energy.atoms.labellers import make_labeller

        self.max_atoms = int(max_atoms)
        self.smiles = list(smiles) if smiles is not None else molecule_pool(
            n_molecules, data_seed, min_heavy, max_heavy, max_atoms)
        if not self.smiles:
            raise _bad("n_molecules", "a count the NCI pool can fill (no molecule fits min/max_heavy, max_atoms)",
                       n_molecules)
        self.perturbation, self.rattle_std = perturbation, float(rattle_std)
        self.md_temperature, self.md_steps = float(md_temperature), int(md_steps)
        self.min_distance, self.max_displacement = float(min_distance), float(max_displacement)
        self.surrogate = make_labeller(surrogate)
        self._base: dict[str, Any] = {}
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim(self.max_atoms),), np.float32)
        self.action_space = gym.spaces.Box(-self.max_displacement, self.max_displacement, (3 * self.max_atoms,),
                                           np.float32)
        self.atoms: Any = None
        self.energy = 0.0

    # ---------------------------------------------------------------------------------- helpers
    def base_conformer(self, smiles: str) -> Any:
        """The MMFF-relaxed ETKDG conformer of ``smiles`` (embedded once per env, seed 0)."""
        if smiles not in self._base:
            from rl_energy.atoms.data import embed

            atoms = embed(smiles, seed=0)
            if atoms is None:
                raise ValueError(f"RDKit cannot embed or type {smiles!r}")
            if len(atoms) > self.max_atoms:
                raise ConfigError(f"config key 'env_kwargs.max_atoms' must be at least {len(atoms)} "
                                  f"(atoms of {smiles}), got {self.max_atoms}")
            self._base[smiles] = atoms
        return self._base[smiles]

    def perturbed(self, smiles: str, rng: np.random.Generator) -> Any:
        """An off-minimum conformer of ``smiles`` (module docstring)."""
        from rl_energy.atoms.data import langevin_md, rattle

        base = self.base_conformer(smiles)
        if self.perturbation == "rattle":
            out = rattle(base, self.rattle_std, rng)
        elif self.perturbation == "md":
            from rl_energy.atoms.labellers import as_calculator

            out = langevin_md(base, as_calculator(self.surrogate), self.md_temperature, self.md_steps,
                              self.md_steps, rng, timestep_fs=0.5)[-1]
            out.calc = None
        else:
            out = base.copy()
        out.info["smiles"] = smiles
        out.set_positions(self._separate(out.positions))
        return out

    def _separate(self, pos: np.ndarray) -> np.ndarray:
        from rl_energy.atoms.golf import separate_close_atoms

        return separate_close_atoms(pos, self.min_distance) if self.min_distance > 0 else np.array(pos)

    def surrogate_energy(self, atoms: Any) -> float:
        """The surrogate energy of ``atoms`` in kcal/mol."""
        from rl_energy.atoms.labellers import KCAL_PER_MOL

        return float(self.surrogate.energy_forces(atoms)[0]) / KCAL_PER_MOL

    def _obs(self) -> np.ndarray:
        from rl_energy.atoms.graph import pack

        return pack(self.atoms.numbers, self.atoms.positions, max_atoms=self.max_atoms)

    def _info(self) -> dict[str, Any]:
        return {"atoms": self.atoms.copy(), "smiles": self.atoms.info["smiles"], "energy": self.energy,
                "n_atoms": len(self.atoms)}

    # ------------------------------------------------------------------------------------- gym
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        given = (options or {}).get("atoms")
        if given is not None:
            if not given.info.get("smiles"):
                raise ValueError("reset(options={'atoms': ...}) needs atoms.info['smiles']")
            if len(given) > self.max_atoms:
                raise ValueError(f"a conformer of {len(given)} atoms does not fit max_atoms={self.max_atoms}")
            self.atoms = given.copy()
            self.atoms.calc = None
        else:
            smiles = self.smiles[int(self.np_random.integers(len(self.smiles)))]
            self.atoms = self.perturbed(smiles, self.np_random)
        self.energy = self.surrogate_energy(self.atoms)
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.atoms is None:
            raise RuntimeError("call reset() before step()")
        n = len(self.atoms)
        disp = np.asarray(action, dtype=np.float64).reshape(self.max_atoms, 3)[:n]
        disp = np.clip(np.nan_to_num(disp, nan=0.0), -self.max_displacement, self.max_displacement)
        self.atoms.set_positions(self._separate(self.atoms.positions + disp))
        before = self.energy
        self.energy = self.surrogate_energy(self.atoms)
        reward = before - self.energy
        terminated = bool(reward < 0)
        return self._obs(), float(reward), terminated, False, self._info()
