#!/usr/bin/env python
"""Throughput of the atomistic core (rl_energy/atoms/): labellers in structures per second (EMT on mini-OC20
slabs; MMFF94, UFF and GFN2-xTB on NCI molecules), the batched periodic radius graph beside ASE's
``neighbor_list`` on the same slabs (the reference, in the same process), and the S2EF models' training
throughput (structures per second through forward + force + backward, batches of 16 slabs, one thread).

    python scripts/bench_atoms.py            # ≈ 1.5 min on one core
    python scripts/bench_atoms.py --quick    # fewer repeats

The last line is the radius graph's speed over ASE's.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from rl_energy.errors import require_extra, run_script


def _rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    require_extra("atoms", "scripts/bench_atoms.py")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from ase.neighborlist import neighbor_list

    from rl_energy.atoms import data, graph
    from rl_energy.atoms.labellers import make_labeller
    from rl_energy.atoms.models import build_model, n_parameters

    reps = 1 if args.quick else 3
    slabs = data.mini_oc20(64 if args.quick else 200, seed=0, frames_per_run=5)
    rng = np.random.default_rng(0)
    smiles = data.nci_smiles()
    mols = [data.embed(smiles[i], seed=0) for i in rng.choice(len(smiles), 8 if args.quick else 40, replace=False)]
    # five rattled frames of each molecule, as the datasets label them (a force field is typed once per molecule)
    mols = [data.rattle(m, 0.05, rng) for m in mols if m is not None for _ in range(5)]
    n_atoms = np.mean([len(m) for m in mols])
    print(f"labellers (structures/s, one thread; slabs of {len(slabs[0])} atoms, molecules of {n_atoms:.1f} atoms "
          "on average):")
    for name, items in (("emt", slabs), ("mmff", mols), ("uff", mols), ("xtb", mols)):
        # a fresh labeller each repeat, so MMFF/UFF pay their typing once per molecule in every repeat
        rate = max(_rate(make_labeller(name).energy_forces, items) for _ in range(reps if name != "xtb" else 1))
        print(f"  {name:<5} {rate:9.1f} structures/s", flush=True)

    cutoff = 6.0
    obs = torch.tensor(np.stack([graph.pack(a.numbers, a.positions, a.cell.array, a.pbc, data.free_mask(a), 16)
                                 for a in slabs]))
    structures = graph.unpack(obs)
    ours = max(len(slabs) / _timed(lambda: graph.radius_graph(structures, cutoff)) for _ in range(reps + 1))
    ase_rate = max(_rate(lambda a: neighbor_list("ijS", a, cutoff), slabs) for _ in range(reps))
    print(f"\nradius graph at {cutoff} Å on {len(slabs)} periodic slabs: ours (one batched call) {ours:,.0f} "
          f"structures/s, ASE neighbor_list {ase_rate:,.0f} structures/s")

    print("\nS2EF training throughput (batches of 16 slabs, 4.5 Å, forward + forces + backward):")
    batch = graph.unpack(obs[:16])
    for kind, kw in (("schnet", {"width": 128}), ("e3nn", {"channels": 24}),
                     ("scn", {"l_max": 2, "m_max": 1, "hidden": 32}), ("scn", {"l_max": 4, "m_max": 1, "hidden": 32}),
                     ("scn", {"l_max": 2, "m_max": 1, "channels": 32, "hidden": 48, "message": "so2"}),
                     ("scn", {"l_max": 4, "m_max": 1, "hidden": 32, "message": "so2"})):
        extra = {"grid_phi": 8} if kind == "scn" else {}  # as scripts/reproduce_scn.py trains them
        model = build_model(kind, cutoff=4.5, **extra, **kw).train()

        def step(model=model) -> None:
            energy, forces = model(batch)
            (energy.square().mean() + forces.square().mean()).backward()

        step()
        rate = max(16 / _timed(step) for _ in range(reps + 1))
        label = kind + ("-so2" if kw.get("message") == "so2" else "") + (f" l={kw['l_max']}" if "l_max" in kw else "")
        print(f"  {label:<14} {n_parameters(model):>8,d} params {rate:8.1f} structures/s", flush=True)
    print(f"\nradius_graph/ase-neighbor_list speed ratio: {ours / ase_rate:.2f}")
    return 0


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    raise SystemExit(run_script(main))
