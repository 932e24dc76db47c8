#!/usr/bin/env python
"""Scoring throughput of the docking core (rl_energy/docking.py; ESF, arXiv 2312.04323, digest §4): poses scored
per second, in one process and one thread, by

* the ESF **FFT** over the whole pose grid of a complex (576 rotations × 13³ translations; receptor rasterisation
  and its FFT included);
* the **brute force** of the same score (direct sums over the ligand window, 48 rotations × every translation;
  the fields given, so it is the correlation alone that is compared);
* the **Vina-like** score by direct pair sums over 256 random poses, and by its map search over the whole grid
  (0.5 Å maps built per complex, trilinear reads);

plus the environment's reward (``rl_energy/Docking-v0``'s batched ``score``, −RMSD) in actions per second.

    python scripts/bench_docking.py            # ≈ 15 s on one core
    python scripts/bench_docking.py --quick    # one complex, 96 rotations

The last line is the FFT's per-pose speed over the brute force's.
"""

from __future__ import annotations

import argparse
import os
import time

from rl_energy.errors import run_script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--complexes", type=int, default=None, help="complexes timed (default 3; --quick 1)")
    parser.add_argument("--rotations", type=int, default=None, help="rotations of the grid (default 576; --quick 96)")
    args = parser.parse_args(argv)
    complexes = args.complexes if args.complexes is not None else (1 if args.quick else 3)
    rotations = args.rotations if args.rotations is not None else (96 if args.quick else 576)
    if complexes < 1:
        parser.error(f"--complexes must be >= 1, got {complexes}")
    if rotations < 48:
        parser.error(f"--rotations must be >= 48 (one brute-force chunk), got {rotations}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from rl_energy import docking as D
    from rl_energy.envs.tasks.docking import DockingTask

    task = DockingTask(n_train=1, n_test=complexes)
    data = task.contexts("test")
    u = D.unpack(data["obs"], task.max_pocket)
    spec = D.GridSpec(t_max=task.t_max)
    fields = D.ScalarFields(spec, channels=3, seed=0)
    rots = D.rotation_grid(rotations, torch.float32)
    n_poses = rotations * spec.n_translations
    gen = torch.Generator().manual_seed(0)
    totals = {"fft": 0.0, "brute": 0.0, "vina_pairs": 0.0, "vina_maps": 0.0}
    counts = {"fft": 0, "brute": 0, "vina_pairs": 0, "vina_maps": 0}
    with torch.no_grad():
        for i in range(complexes):
            p = (u.pocket[i].float(), u.pocket_types[i], u.pocket_mask[i])
            lg = (u.ligand[i].float(), u.ligand_types[i], u.ligand_mask[i])
            start = time.perf_counter()
            fields.score_grid(*p, *lg, rots)
            totals["fft"] += time.perf_counter() - start
            counts["fft"] += n_poses
            rec = fields.receptor_field(fields.receptor_basis(*p))
            lig = fields.ligand_field(fields.ligand_basis(torch.einsum("rij,aj->rai", rots[:48], lg[0]), lg[1], lg[2]))
            start = time.perf_counter()
            D.brute_force_scores(rec, lig, spec)
            totals["brute"] += time.perf_counter() - start
            counts["brute"] += 48 * spec.n_translations
            poses = torch.einsum("rij,aj->rai", D.random_rotations(256, gen, torch.float32), lg[0]) \
                + (torch.rand(256, 1, 3, generator=gen) - 0.5) * 8
            start = time.perf_counter()
            D.vina_pair_energy(*p, poses, lg[1], lg[2])
            totals["vina_pairs"] += time.perf_counter() - start
            counts["vina_pairs"] += 256
            start = time.perf_counter()
            maps, half = D.vina_maps(*p, spec)
            D.vina_grid_scores(maps, half, *lg, rots, spec)
            totals["vina_maps"] += time.perf_counter() - start
            counts["vina_maps"] += n_poses
            print(f"complex {i}: {int(p[2].sum())} pocket atoms, {int(lg[2].sum())} ligand atoms", flush=True)
    rate = {k: counts[k] / totals[k] for k in totals}
    actions = torch.as_tensor(task.action_space.sample())[None].repeat(4096, 1)
    batch = task.contexts("test", 4096, __import__("numpy").random.default_rng(0))
    start = time.perf_counter()
    task.score(batch, actions)
    env_rate = 4096 / (time.perf_counter() - start)
    print(f"\nposes scored per second (one thread; grid of {rotations} rotations x {spec.n_translations} translations, "
          f"{spec.N}³ FFT at {spec.spacing} Å, C = 3):")
    for name, label in (("fft", "ESF FFT (whole grid)"), ("brute", "ESF brute force (direct sums)"),
                        ("vina_pairs", "Vina-like, direct pair sums"), ("vina_maps", "Vina-like, maps + grid search")):
        print(f"  {label:32s} {rate[name]:14,.0f} poses/s   {1e3 / rate[name]:.2e} ms/pose")
    print(f"  env reward (-RMSD, batched)      {env_rate:14,.0f} actions/s")
    print("paper (per pose): ESF-T 0.00135 ms, ESF-R 0.0082 ms, Vina 3.35 ms, Gnina 13.4 ms")
    print(f"\ndocking FFT/brute-force per-pose speed ratio: {rate['fft'] / rate['brute']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
