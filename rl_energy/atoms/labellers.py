"""Energy and force labellers behind one interface, with an on-disk label cache.

Digest ``one-step-tasks.md``, "Shared conventions" (offline labellers) [derived]:

* ``emt``: ASE's effective-medium theory (metals plus H/C/N/O; the mini-OC20 oracle, §19);
* ``mmff`` / ``uff``: RDKit's MMFF94 / UFF force fields (the cheap oracle of ASTEROID §15, the prior of the MLFF
  test-time training §14, GOLF's surrogate §16). They need the molecule's bonds, so a structure carries its SMILES
  in ``atoms.info["smiles"]`` with atoms in RDKit's ``AddHs`` order (:func:`rl_energy.atoms.data.embed`);
* ``xtb``: GFN2-xTB through ``tblite`` (the accurate / genuine oracle, ≈5 ms per 15-atom single point).

Every labeller returns the energy in eV and the forces in eV/Å (``F = −∂E/∂r``). :func:`label` runs a labeller
over structures and keeps each result in a :class:`LabelCache` (SQLite; keyed by the labeller, the atomic numbers,
the positions rounded to 1e-6 Å, the cell and the periodic flags), so repeated datasets and reruns of a script do
not pay the oracle twice. The cache lives in ``$RL_ENERGY_CACHE`` (default ``~/.cache/rl_energy``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rl_energy.errors import ConfigError, import_optional

KCAL_PER_MOL = 0.0433641043
"""eV per kcal/mol."""
HARTREE = 27.211386245988
"""eV per Hartree."""
BOHR = 0.529177210903
"""Å per Bohr."""
PURPOSE = "atomistic labels"


class Labeller(Protocol):
    """``energy_forces(atoms) -> (E [eV], F [n, 3] eV/Å)`` of one ``ase.Atoms``; ``name`` keys the cache."""

    name: str

    def energy_forces(self, atoms: Any) -> tuple[float, np.ndarray]: ...


class EMTLabeller:
    """ASE's EMT (Cu, Pt, Au, Ni, Pd, Ag, Al and H, C, N, O)."""

    name = "emt"

    def __init__(self) -> None:
        import_optional("ase", PURPOSE)
        from ase.calculators.emt import EMT

        self._calc = EMT()

    def energy_forces(self, atoms: Any) -> tuple[float, np.ndarray]:
        work = atoms.copy()
        work.set_constraint()
        work.calc = self._calc
        return float(work.get_potential_energy()), np.asarray(work.get_forces(apply_constraint=False))


class ForceFieldLabeller:
    """RDKit's MMFF94 (``variant="mmff"``) or UFF (``variant="uff"``) on the molecule of ``atoms.info["smiles"]``."""

    def __init__(self, variant: str = "mmff") -> None:
        if variant not in ("mmff", "uff"):
            raise ValueError(f"variant must be 'mmff' or 'uff', got {variant!r}")
        self.name = variant
        self._chem = import_optional("rdkit.Chem", PURPOSE)
        self._templates: dict[str, Any] = {}

    def _field(self, atoms: Any) -> Any:
        from rdkit.Chem import AllChem
        from rdkit.Geometry import Point3D

        smiles = atoms.info.get("smiles")
        if not smiles:
            raise ValueError(f"the {self.name} labeller needs the molecule's SMILES in atoms.info['smiles']")
        if smiles not in self._templates:
            mol = self._chem.AddHs(self._chem.MolFromSmiles(smiles))
            mol.AddConformer(self._chem.Conformer(mol.GetNumAtoms()), assignId=True)  # positions set below
            props = AllChem.MMFFGetMoleculeProperties(mol) if self.name == "mmff" else None
            if self.name == "mmff" and props is None:
                raise ValueError(f"MMFF94 has no parameters for {smiles}")
            self._templates[smiles] = (mol, props)
        mol, props = self._templates[smiles]
        if mol.GetNumAtoms() != len(atoms) or any(
                a.GetAtomicNum() != int(z) for a, z in zip(mol.GetAtoms(), atoms.numbers, strict=True)):
            raise ValueError(f"atoms do not follow RDKit's AddHs order of {smiles}")
        conf = mol.GetConformer()
        for k, p in enumerate(atoms.positions):
            conf.SetAtomPosition(k, Point3D(*map(float, p)))
        if self.name == "mmff":
            return AllChem.MMFFGetMoleculeForceField(mol, props, nonBondedThresh=100.0,
                                                     ignoreInterfragInteractions=False)
        return AllChem.UFFGetMoleculeForceField(mol, vdwThresh=100.0, ignoreInterfragInteractions=False)

    def energy_forces(self, atoms: Any) -> tuple[float, np.ndarray]:
        ff = self._field(atoms)
        pos = atoms.positions.reshape(-1).tolist()
        energy = ff.CalcEnergy(pos) * KCAL_PER_MOL
        grad = np.asarray(ff.CalcGrad(pos)).reshape(-1, 3) * KCAL_PER_MOL
        return float(energy), -grad


class XTBLabeller:
    """GFN2-xTB single points through ``tblite`` (neutral, closed shell unless the electron count is odd)."""

    name = "xtb"

    def __init__(self, method: str = "GFN2-xTB", accuracy: float = 1.0) -> None:
        self._interface = import_optional("tblite.interface", PURPOSE)
        self.method = method
        self.accuracy = accuracy
        if method != "GFN2-xTB":
            self.name = f"xtb-{method}"

    def energy_forces(self, atoms: Any) -> tuple[float, np.ndarray]:
        numbers = np.asarray(atoms.numbers)
        unpaired = int(numbers.sum()) % 2
        calc = self._interface.Calculator(self.method, numbers, np.asarray(atoms.positions) / BOHR, uhf=unpaired)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        res = calc.singlepoint()
        return float(res.get("energy")) * HARTREE, -np.asarray(res.get("gradient")) * HARTREE / BOHR


LABELLERS = {"emt": EMTLabeller, "mmff": lambda: ForceFieldLabeller("mmff"), "uff": lambda: ForceFieldLabeller("uff"),
             "xtb": XTBLabeller}
"""Labellers by name (:func:`make_labeller`)."""


def make_labeller(name: str) -> Labeller:
    """The labeller called ``name`` (one of :data:`LABELLERS`)."""
    if name not in LABELLERS:
        raise ConfigError(f"unknown labeller {name!r}; valid: {', '.join(LABELLERS)}")
    return LABELLERS[name]()


# ---------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    return Path(os.environ.get("RL_ENERGY_CACHE", Path.home() / ".cache" / "rl_energy"))


class LabelCache:
    """An SQLite table ``key -> (energy, forces)`` (see the module docstring). ``path=None``: no caching."""

    def __init__(self, path: str | os.PathLike | None = "default") -> None:
        self.path = None if path is None else Path(cache_dir() / "labels.sqlite" if path == "default" else path)
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0

    def _conn(self) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS labels (key TEXT PRIMARY KEY, energy REAL, forces BLOB)")
        return self._db

    @staticmethod
    def key(name: str, atoms: Any) -> str:
        h = hashlib.sha256(name.encode())
        h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
        h.update(np.round(np.asarray(atoms.positions, dtype=np.float64), 6).tobytes())
        h.update(np.round(np.asarray(atoms.cell.array, dtype=np.float64), 6).tobytes())
        h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
        h.update(str(atoms.info.get("smiles", "")).encode())
        return h.hexdigest()

    def get(self, key: str, n_atoms: int) -> tuple[float, np.ndarray] | None:
        db = self._conn()
        if db is None:
            return None
        row = db.execute("SELECT energy, forces FROM labels WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return float(row[0]), np.frombuffer(row[1], dtype=np.float64).reshape(n_atoms, 3).copy()

    def put(self, items: Sequence[tuple[str, float, np.ndarray]]) -> None:
        db = self._conn()
        if db is None or not items:
            return
        db.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)",
                       [(k, e, np.ascontiguousarray(f, dtype=np.float64).tobytes()) for k, e, f in items])
        db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def label(atoms_list: Sequence[Any], labeller: Labeller | str, cache: LabelCache | None = None
          ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies ``[n]`` (eV) and forces (``[n_i, 3]`` eV/Å) of ``atoms_list``, from ``cache`` where it has them."""
    lab = make_labeller(labeller) if isinstance(labeller, str) else labeller
    energies = np.zeros(len(atoms_list))
    forces: list[np.ndarray] = []
    fresh: list[tuple[str, float, np.ndarray]] = []
    for k, atoms in enumerate(atoms_list):
        key = LabelCache.key(lab.name, atoms) if cache is not None else ""
        hit = cache.get(key, len(atoms)) if cache is not None else None
        if hit is None:
            hit = lab.energy_forces(atoms)
            if not (np.isfinite(hit[0]) and np.isfinite(hit[1]).all()):
                raise ValueError(f"the {lab.name} labeller returned a non-finite label for structure {k}")
            if cache is not None:
                cache.misses += 1
                fresh.append((key, hit[0], hit[1]))
                if len(fresh) >= 256:
                    cache.put(fresh)
                    fresh = []
        elif cache is not None:
            cache.hits += 1
        energies[k] = hit[0]
        forces.append(hit[1])
    if cache is not None:
        cache.put(fresh)
    return energies, forces


def as_calculator(labeller: Labeller | str) -> Any:
    """An ASE calculator running ``labeller`` (for MD or optimisation under MMFF, UFF or GFN2-xTB)."""
    import_optional("ase", PURPOSE)
    from ase.calculators.calculator import Calculator, all_changes

    lab = make_labeller(labeller) if isinstance(labeller, str) else labeller

    class LabellerCalculator(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms: Any = None, properties: Any = ("energy",),
                      system_changes: Any = all_changes) -> None:
            super().calculate(atoms, properties, system_changes)
            energy, forces = lab.energy_forces(self.atoms)
            self.results = {"energy": energy, "forces": forces}

    return LabellerCalculator()
