"""Offline atomistic data: structure generators and the labelled frame container (nothing downloads).

Digest ``one-step-tasks.md``, "Shared conventions" and §14–§16, §19 [derived]:

* :func:`mini_oc20`: "mini-OC20": fcc(111) 2×2×3 slabs of Cu/Pt/Au with the bottom layer fixed and one adsorbate
  (O/H/C/N) on a random site; frames from EMT relaxation trajectories, rattles and short Langevin MD at
  300–1000 K (EMT is both the dynamics and the label here, as DFT is for OC20);
* :func:`nci_smiles` / :func:`embed`: molecules from RDKit's bundled NCI ``first_5K.smi`` (neutral, single
  fragment, a heavy-atom range, a set of elements), embedded by ETKDG and relaxed by MMFF94;
* :func:`rattle` and :func:`langevin_md`: off-equilibrium configurations (thermal displacements, MD frames under a
  cheap calculator);
* :class:`Frames`: labelled structures as padded numpy arrays (``z``, ``pos``, ``cell``, ``pbc``, ``free``,
  ``energy``, ``forces``) with the padded one-step observation (:meth:`Frames.obs`) and label (:meth:`Frames.target`)
  of :mod:`rl_energy.atoms.graph`, saved and loaded as ``.npz``.

ASE and RDKit come with the ``atoms`` extra (``pip install 'rl-energy[atoms]'``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rl_energy.atoms.graph import action_dim, obs_dim
from rl_energy.errors import import_optional

PURPOSE = "atomistic data"
METALS = ("Cu", "Pt", "Au")
ADSORBATES = ("O", "H", "C", "N")
SITES = ("fcc", "hcp", "ontop", "bridge")
NCI_ELEMENTS = ("C", "H", "N", "O", "S", "F", "Cl")


def _ase() -> Any:
    return import_optional("ase", PURPOSE)


def _chem() -> Any:
    return import_optional("rdkit.Chem", PURPOSE)


# ------------------------------------------------------------------------------------------- frames
@dataclass
class Frames:
    """Labelled structures, padded to ``max_atoms`` (``z = 0`` pads). ``meta`` holds per-frame integers (the
    molecule of each frame, for splits by molecule) and ``smiles`` the molecules' SMILES when there are any."""

    z: np.ndarray  # [n, A] int
    pos: np.ndarray  # [n, A, 3]
    cell: np.ndarray  # [n, 3, 3]
    pbc: np.ndarray  # [n, 3] bool
    free: np.ndarray  # [n, A] bool
    energy: np.ndarray  # [n]
    forces: np.ndarray  # [n, A, 3]
    group: np.ndarray  # [n] int: the molecule / slab recipe a frame comes from
    smiles: list[str] = field(default_factory=list)  # by group, for molecules

    def __len__(self) -> int:
        return len(self.z)

    @property
    def max_atoms(self) -> int:
        return self.z.shape[1]

    @property
    def n_atoms(self) -> np.ndarray:
        return (self.z > 0).sum(1)

    def obs(self, max_atoms: int | None = None) -> np.ndarray:
        """Padded observations ``[n, obs_dim]`` float32 (:func:`rl_energy.atoms.graph.pack`, vectorised)."""
        a = self.max_atoms if max_atoms is None else max_atoms
        frames = self.padded_to(a)
        rows = np.concatenate([frames.z[..., None], frames.pos, frames.free[..., None]], axis=-1)
        tail = np.concatenate([frames.cell.reshape(len(self), 9), frames.pbc.astype(np.float32)], axis=-1)
        out = np.concatenate([rows.reshape(len(self), -1), tail], axis=-1).astype(np.float32)
        assert out.shape[1] == obs_dim(a)
        return out

    def target(self, max_atoms: int | None = None) -> np.ndarray:
        """Labels ``[n, 1 + 3·max_atoms]`` float32: the energy, then the forces (zeros on padding)."""
        a = self.max_atoms if max_atoms is None else max_atoms
        frames = self.padded_to(a)
        out = np.concatenate([frames.energy[:, None], frames.forces.reshape(len(self), -1)], axis=-1)
        assert out.shape[1] == action_dim(a)
        return out.astype(np.float32)

    def padded_to(self, max_atoms: int) -> Frames:
        """The same frames padded (or trimmed of empty columns) to ``max_atoms``."""
        if max_atoms == self.max_atoms:
            return self
        if int(self.n_atoms.max(initial=0)) > max_atoms:
            raise ValueError(f"frames of up to {int(self.n_atoms.max())} atoms do not fit max_atoms={max_atoms}")
        a = min(max_atoms, self.max_atoms)

        def pad(x: np.ndarray) -> np.ndarray:
            out = np.zeros((len(self), max_atoms, *x.shape[2:]), dtype=x.dtype)
            out[:, :a] = x[:, :a]
            return out

        return Frames(pad(self.z), pad(self.pos), self.cell, self.pbc, pad(self.free), self.energy, pad(self.forces),
                      self.group, list(self.smiles))

    def subset(self, index: Sequence[int] | np.ndarray) -> Frames:
        index = np.asarray(index, dtype=np.int64)
        return Frames(self.z[index], self.pos[index], self.cell[index], self.pbc[index], self.free[index],
                      self.energy[index], self.forces[index], self.group[index], list(self.smiles))

    def to_atoms(self, i: int) -> Any:
        """Frame ``i`` as an ``ase.Atoms`` (``info["smiles"]`` set for molecules)."""
        ase = _ase()
        n = int(self.n_atoms[i])
        atoms = ase.Atoms(numbers=self.z[i, :n], positions=self.pos[i, :n], cell=self.cell[i], pbc=self.pbc[i])
        if self.smiles:
            atoms.info["smiles"] = self.smiles[int(self.group[i])]
        if not self.free[i, :n].all():
            from ase.constraints import FixAtoms

            atoms.set_constraint(FixAtoms(mask=~self.free[i, :n]))
        return atoms

    @classmethod
    def from_atoms(cls, atoms_list: Sequence[Any], energy: np.ndarray, forces: Sequence[np.ndarray],
                   group: Sequence[int] | None = None, smiles: Sequence[str] = (),
                   max_atoms: int | None = None) -> Frames:
        """Frames of ``ase.Atoms`` and their labels (energy in eV, forces in eV/Å)."""
        n = len(atoms_list)
        a = max_atoms or max((len(at) for at in atoms_list), default=1)
        z = np.zeros((n, a), dtype=np.int64)
        pos = np.zeros((n, a, 3), dtype=np.float64)
        free = np.zeros((n, a), dtype=bool)
        frc = np.zeros((n, a, 3), dtype=np.float64)
        cell = np.zeros((n, 3, 3))
        pbc = np.zeros((n, 3), dtype=bool)
        for k, at in enumerate(atoms_list):
            m = len(at)
            if m > a:
                raise ValueError(f"a structure of {m} atoms does not fit max_atoms={a}")
            z[k, :m] = at.numbers
            pos[k, :m] = at.positions
            free[k, :m] = free_mask(at)
            frc[k, :m] = forces[k]
            cell[k] = at.cell.array
            pbc[k] = at.pbc
        grp = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
        return cls(z, pos, cell, pbc, free, np.asarray(energy, dtype=np.float64), frc, grp, list(smiles))

    @staticmethod
    def concat(parts: Iterable[Frames]) -> Frames:
        """Frames of several parts (padded to the widest; groups renumbered when the parts carry SMILES)."""
        parts = list(parts)
        a = max(p.max_atoms for p in parts)
        parts = [p.padded_to(a) for p in parts]
        smiles: list[str] = []
        groups = []
        for p in parts:
            groups.append(p.group + len(smiles))
            smiles.extend(p.smiles)
        return Frames(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                        ("z", "pos", "cell", "pbc", "free", "energy", "forces")), np.concatenate(groups), smiles)

    def save(self, path: str | os.PathLike) -> None:
        np.savez_compressed(path, z=self.z, pos=self.pos, cell=self.cell, pbc=self.pbc, free=self.free,
                            energy=self.energy, forces=self.forces, group=self.group,
                            smiles=np.asarray(self.smiles, dtype=str))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Frames:
        with np.load(path, allow_pickle=False) as d:
            return cls(d["z"], d["pos"], d["cell"], d["pbc"], d["free"], d["energy"], d["forces"], d["group"],
                       [str(s) for s in d["smiles"]])


def free_mask(atoms: Any) -> np.ndarray:
    """``True`` for the atoms no ``FixAtoms`` constraint holds."""
    free = np.ones(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if type(c).__name__ == "FixAtoms":
            free[c.get_indices()] = False
    return free


# ------------------------------------------------------------------------------- perturbations
def rattle(atoms: Any, std: float, rng: np.random.Generator) -> Any:
    """A copy of ``atoms`` with Gaussian displacements of ``std`` Å on its free atoms."""
    out = atoms.copy()
    step = rng.normal(0.0, std, size=(len(out), 3)) * free_mask(out)[:, None]
    out.set_positions(out.positions + step, apply_constraint=False)
    return out


def langevin_md(atoms: Any, calc: Any, temperature: float, steps: int, every: int, rng: np.random.Generator,
                timestep_fs: float = 1.0, friction: float = 0.02) -> list[Any]:
    """``steps // every`` snapshots of Langevin MD of ``atoms`` under ``calc`` at ``temperature`` K (every
    ``every`` steps of ``timestep_fs`` fs), started from Maxwell–Boltzmann velocities."""
    ase = _ase()
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    work = atoms.copy()
    work.calc = calc
    MaxwellBoltzmannDistribution(work, temperature_K=temperature, rng=rng)
    dyn = Langevin(work, timestep_fs * ase.units.fs, temperature_K=temperature, friction=friction, fixcm=False,
                   rng=np.random.RandomState(int(rng.integers(2**31))))
    frames = []
    for _ in range(steps // every):
        dyn.run(every)
        snap = work.copy()
        snap.info.update(atoms.info)
        frames.append(snap)
    return frames


# ------------------------------------------------------------------------------------ mini-OC20
def slab(metal: str, adsorbate: str, site: str, height: float = 1.5, vacuum: float = 6.0) -> Any:
    """A ``metal`` fcc(111) 2×2×3 slab, bottom layer fixed, with one ``adsorbate`` atom on ``site``."""
    _ase()
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    s = fcc111(metal, size=(2, 2, 3), vacuum=vacuum)
    add_adsorbate(s, adsorbate, height, site)
    s.set_constraint(FixAtoms(indices=[a.index for a in s if a.tag == 3]))
    return s


def relaxation_frames(atoms: Any, calc: Any, steps: int, fmax: float = 0.05) -> list[Any]:
    """The frames of a BFGS relaxation of ``atoms`` under ``calc`` (at most ``steps`` steps), start included."""
    _ase()
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = calc
    frames = [work.copy()]
    opt = BFGS(work, logfile=None)
    for _ in opt.irun(fmax=fmax, steps=steps):
        frames.append(work.copy())
    for f in frames:
        f.info.update(atoms.info)
    return frames


def mini_oc20(n: int, seed: int = 0, metals: Sequence[str] = METALS, adsorbates: Sequence[str] = ADSORBATES,
              temperatures: tuple[float, float] = (300.0, 1000.0), frames_per_run: int = 20,
              max_force: float = 20.0) -> list[Any]:
    """``n`` mini-OC20 structures (module docstring). Each recipe draws (metal, adsorbate, site, height
    1.5–2.2 Å), relaxes the slab under EMT (BFGS, ≤ 50 steps) and then yields ``frames_per_run`` frames of one
    kind, in turn: the relaxation trajectory from a 0.1 Å rattle (OC20's S2EF frames are relaxation frames),
    EMT Langevin MD at a temperature in ``temperatures``, or rattles of σ 0.02–0.1 Å around the relaxed slab.
    Frames with a force component above ``max_force`` eV/Å are dropped (a rare close contact)."""
    _ase()
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    calc = EMT()
    out: list[Any] = []
    recipe = 0
    while len(out) < n:
        metal, ads = str(rng.choice(metals)), str(rng.choice(adsorbates))
        base = slab(metal, ads, str(rng.choice(SITES)), height=float(rng.uniform(1.5, 2.2)))
        base.info["group"] = recipe
        base = relaxation_frames(base, calc, 50)[-1]
        kind = recipe % 3
        recipe += 1
        if kind == 0:
            frames = relaxation_frames(rattle(base, 0.1, rng), calc, 200)
            pick = np.linspace(0, len(frames) - 1, min(frames_per_run, len(frames))).round().astype(int)
            frames = [frames[i] for i in pick]
        elif kind == 1:
            temp = float(rng.uniform(*temperatures))
            frames = langevin_md(base, calc, temp, steps=5 * frames_per_run, every=5, rng=rng)
        else:
            frames = [rattle(base, float(rng.uniform(0.02, 0.1)), rng) for _ in range(frames_per_run)]
        for f in frames:
            f.calc = calc
            if np.abs(f.get_forces(apply_constraint=False)).max() <= max_force:
                f.calc = None
                out.append(f)
            if len(out) == n:
                break
    return out


# ------------------------------------------------------------------------------------ molecules
def nci_smiles(min_heavy: int = 8, max_heavy: int = 14, elements: Sequence[str] = NCI_ELEMENTS) -> list[str]:
    """SMILES of RDKit's NCI ``first_5K.smi`` that are neutral, one fragment, of ``min_heavy``–``max_heavy``
    heavy atoms over ``elements`` (with the defaults: 1,874 molecules, digest "Shared conventions")."""
    chem = _chem()
    from rdkit import RDConfig, RDLogger

    RDLogger.DisableLog("rdApp.*")
    path = os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")
    allowed = set(elements)
    out = []
    with open(path) as fh:
        for line in fh:
            smi = line.split()[0]
            mol = chem.MolFromSmiles(smi)
            if mol is None or "." in smi:
                continue
            atoms = mol.GetAtoms()
            if not min_heavy <= mol.GetNumHeavyAtoms() <= max_heavy:
                continue
            if any(a.GetFormalCharge() != 0 or a.GetNumRadicalElectrons() for a in atoms):
                continue
            if not {a.GetSymbol() for a in atoms} | {"H"} <= allowed | {"H"}:
                continue
            out.append(chem.MolToSmiles(mol))
    return out


def embed(smiles: str, seed: int = 0, optimize: bool = True) -> Any | None:
    """An ``ase.Atoms`` of ``smiles`` with hydrogens: an ETKDG conformer, MMFF94-relaxed when ``optimize``.
    ``info["smiles"]`` keeps the SMILES, and the atom order is RDKit's ``AddHs`` order (the MMFF labeller
    rebuilds the molecule from it). ``None`` when embedding or MMFF typing fails."""
    chem = _chem()
    from rdkit.Chem import AllChem

    mol = chem.AddHs(chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        return None
    if optimize:
        if not AllChem.MMFFHasAllMoleculeParams(mol):
            return None
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    ase = _ase()
    atoms = ase.Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions())
    atoms.info["smiles"] = smiles
    return atoms
