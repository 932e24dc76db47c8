"""Labelled atomistic datasets, built deterministically from a recipe and cached on disk.

* ``mini_oc20`` (§19): EMT slabs with adsorbates (:func:`rl_energy.atoms.data.mini_oc20`), labelled by EMT;
* ``molecules`` (§14–§16): NCI molecules (:func:`rl_energy.atoms.data.nci_smiles`), each embedded once and shaken
  into ``per_molecule`` configurations (half rattles of 0.02–0.1 Å, half Langevin MD snapshots under MMFF94 at
  ``temperature``), labelled by any labeller (GFN2-xTB by default).

:func:`build` returns :class:`~rl_energy.atoms.data.Frames`. It keeps every label in the label cache and the
finished dataset in ``$RL_ENERGY_CACHE/datasets/<recipe hash>.npz``, so a second run (or a second worker of a
reproduction script) loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from rl_energy.atoms import data
from rl_energy.atoms.labellers import LabelCache, as_calculator, cache_dir, label

DATASETS = ("mini_oc20", "molecules")


def molecule_frames(smiles: Sequence[str], per_molecule: int, seed: int, temperature: float = 500.0,
                    md_labeller: str = "mmff") -> tuple[list[Any], list[int], list[str]]:
    """Configurations of each molecule of ``smiles`` (module docstring): ``(atoms, group, smiles kept)``;
    molecules that RDKit cannot embed or type are skipped."""
    rng = np.random.default_rng(seed)
    calc = as_calculator(md_labeller)
    atoms_out: list[Any] = []
    groups: list[int] = []
    kept: list[str] = []
    for smi in smiles:
        base = data.embed(smi, seed=int(rng.integers(2**31)))
        if base is None:
            continue
        n_md = per_molecule // 2
        frames = [data.rattle(base, float(rng.uniform(0.02, 0.1)), rng) for _ in range(per_molecule - n_md)]
        if n_md:
            frames += data.langevin_md(base, calc, temperature, steps=10 * n_md, every=10, rng=rng, timestep_fs=0.5)
        for f in frames:
            f.info["smiles"] = smi
        atoms_out.extend(frames)
        groups.extend([len(kept)] * len(frames))
        kept.append(smi)
    return atoms_out, groups, kept


def _recipe_path(recipe: dict[str, Any]) -> Any:
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "datasets" / f"{recipe['name']}-{key}.npz"


def build(name: str, n: int, seed: int = 0, labeller: str | None = None, cache: bool = True,
          **options: Any) -> data.Frames:
    """The dataset ``name`` (:data:`DATASETS`) of ``n`` frames from ``seed``.

    Options: ``mini_oc20``: ``metals``, ``adsorbates`` (lists of symbols); ``molecules``: ``smiles`` (a list; default
    a seeded draw from NCI), ``per_molecule`` (10), ``temperature`` (500 K), ``min_heavy``/``max_heavy`` (8/14),
    ``elements``. ``labeller`` defaults to ``emt`` / ``xtb``. ``cache=False`` neither reads nor writes a cache.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    labeller = labeller or ("emt" if name == "mini_oc20" else "xtb")
    recipe = {"name": name, "n": int(n), "seed": int(seed), "labeller": labeller,
              **{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in sorted(options.items())}}
    path = _recipe_path(recipe)
    if cache and path.exists():
        return data.Frames.load(path)
    if name == "mini_oc20":
        atoms = data.mini_oc20(n, seed, metals=options.get("metals", data.METALS),
                               adsorbates=options.get("adsorbates", data.ADSORBATES))
        groups = [int(a.info.get("group", 0)) for a in atoms]
        smiles: list[str] = []
    else:
        per = int(options.get("per_molecule", 10))
        pool = options.get("smiles")
        if pool is None:
            pool = data.nci_smiles(int(options.get("min_heavy", 8)), int(options.get("max_heavy", 14)),
                                   options.get("elements", data.NCI_ELEMENTS))
            rng = np.random.default_rng(seed)
            pool = [pool[i] for i in rng.permutation(len(pool))]
        need = -(-n // per)
        atoms, groups, smiles = [], [], []
        start = 0
        while len(smiles) < need and start < len(pool):
            chunk = need - len(smiles)
            a, g, s = molecule_frames(pool[start:start + chunk], per, seed + start,
                                      float(options.get("temperature", 500.0)))
            atoms += a
            groups += [x + len(smiles) for x in g]
            smiles += s
            start += chunk
        atoms, groups = atoms[:n], groups[:n]
    store = LabelCache() if cache else None
    energy, forces = label(atoms, labeller, store)
    frames = data.Frames.from_atoms(atoms, energy, forces, groups, smiles)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        frames.save(tmp)
        tmp.replace(path)
    return frames
