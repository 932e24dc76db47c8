#!/usr/bin/env python
"""ESF docking (Jing, Jaakkola & Berger, ICLR 2024, arXiv 2312.04323; digest ``papers/one-step-tasks.md`` §4):
top-1 success (RMSD < 2 Å) and median RMSD of ESF, ESF-N, a classical Vina-like score and the grid oracle on
clean and perturbed ("predicted-structure") synthetic complexes, and the per-pose scoring time of the FFT, the
brute force and the Vina-like score, beside the paper's figures.

Setting (:mod:`rl_energy.docking` has the details):

* data: ``rl_energy/Docking-v0``, 500 training and 100 test synthetic complexes (seed 0); the perturbed split is
  the same 100 test complexes with every receptor atom within 8 Å of the ligand moved by Gaussian noise of RMS
  ``--perturb`` (1.0 Å). Training is on clean complexes only, as the paper trains on crystal structures.
* pose grid: 576 Super-Fibonacci rotations × 13³ translations (1 Å lattice, ±6 Å): 1,265,472 poses per complex.
* ESF: 3 channels per side of per-type radial coefficients (l = 0), 400 Adam updates (lr 0.03) of 8 complexes on
  the pose cross-entropy (full translation grid at the true rotation + 4 sampled grid rotations). ESF-N: the same
  with the training pose perturbed (rotation 0.2 rad, translation 0.7 Å RMS, the paper's values). Both act by the
  argmax of the FFT score grid ("T-search" in the paper's sense: FFT over translations, rotations enumerated).
* Vina-like: Vina's terms and weights (6 Å cutoff), no learning; "grid": the argmax of the same pose grid through
  0.5 Å energy maps; "grid + local opt.": the 8 best grid poses refined by 60 Adam steps on the direct pair
  energy, the lowest kept (Vina itself refines its search's poses).
* seeds: ``--seeds`` (2) training seeds of ESF and ESF-N (initialisation and batches); the data, the Vina-like
  baseline and the oracle do not depend on them. Figures are mean ± s.e. over seeds.

    python scripts/reproduce_docking.py                 # 10–20 min on 2 shared cores (two processes, one thread each)
    python scripts/reproduce_docking.py --quick         # a smoke run (≈ 20 s)
    python scripts/reproduce_docking.py --report R.json # reprint the tables of a saved --out file

The last line is ESF-N's top-1 success minus ESF's on the perturbed split.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_energy.errors import run_script

PAPER_SUCCESS = {"crystal": {"ESF": 0.700, "ESF-N": 0.721, "Vina": 0.793},
                 "predicted": {"ESF": 0.312, "ESF-N": 0.456, "Vina": 0.237}}
"""Fraction RMSD < 2 Å, T-search (digest §4: PDBBind crystal 333 complexes; ESMFold structures)."""
PAPER_MS_PER_POSE = {"ESF-T (FFT)": 0.00135, "ESF-R": 0.0082, "Vina": 3.35, "Gnina": 13.4}


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": 24, "n_test": 6, "updates": 15, "batch": 4, "n_rotations": 96, "refine_top": 2,
                "refine_steps": 20, "timing_complexes": 1}
    return {"n_train": 500, "n_test": 100, "updates": 400, "batch": 8, "n_rotations": 576, "refine_top": 8,
            "refine_steps": 60, "timing_complexes": 3}


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


def fmt(values: list[float], digits: int = 3) -> str:
    m, se = mean_se(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{m:.{digits}f}"


def tasks(cfg: dict[str, Any]) -> dict[str, Any]:
    from rl_energy.envs.tasks.docking import DockingTask

    return {"clean": DockingTask(n_train=cfg["n_train"], n_test=cfg["n_test"]),
            "perturbed": DockingTask(n_train=cfg["n_train"], n_test=cfg["n_test"], perturb=cfg["perturb"])}


# ================================================================================== the Vina-like baseline
def run_vina(cfg: dict[str, Any]) -> dict[str, Any]:
    """The Vina-like arms on both test splits (a worker process): per-complex RMSDs and timings."""
    torch.set_num_threads(1)
    from rl_energy import docking as D

    spec, grid = D.GridSpec(t_max=cfg["t_max"]), D.rotation_grid(cfg["n_rotations"])
    out: dict[str, Any] = {}
    for split, task in tasks(cfg).items():
        data = task.contexts("test")
        u = D.unpack(data["obs"], task.max_pocket)
        true_rot, true_t = D.pose_of_action(data["target"])
        grid_rmsd, refined_rmsd, seconds = [], [], []
        for i in range(len(data)):
            start = time.perf_counter()
            pocket = (u.pocket[i].float(), u.pocket_types[i], u.pocket_mask[i])
            ligand = (u.ligand[i].float(), u.ligand_types[i], u.ligand_mask[i])
            maps, half = D.vina_maps(*pocket, spec)
            scores = D.vina_grid_scores(maps, half, *ligand, grid.float(), spec)
            top = scores.flatten().topk(cfg["refine_top"]).indices
            rots, trans = grid[top // spec.n_translations], spec.translations()[top % spec.n_translations]
            p64 = (u.pocket[i], u.pocket_types[i], u.pocket_mask[i])
            l64 = (u.ligand[i], u.ligand_types[i], u.ligand_mask[i])
            r_ref, t_ref, energy = D.vina_refine(*p64, *l64, rots, trans, steps=cfg["refine_steps"])
            seconds.append(time.perf_counter() - start)
            best = int(energy.argmin())
            lig, mask = u.ligand[i][None], u.ligand_mask[i][None]
            grid_rmsd.append(float(D.pose_rmsd(lig, mask, rots[:1], trans[:1], true_rot[i:i + 1], true_t[i:i + 1])))
            refined_rmsd.append(float(D.pose_rmsd(lig, mask, r_ref[best:best + 1], t_ref[best:best + 1],
                                                  true_rot[i:i + 1], true_t[i:i + 1])))
        out[split] = {"Vina-like (grid)": grid_rmsd, "Vina-like (grid + local opt.)": refined_rmsd,
                      "seconds_per_complex": float(np.mean(seconds))}
    return out


# ================================================================================================== ESF
def train_arm(cfg: dict[str, Any], seed: int, noisy: bool, task: Any, cache: dict) -> tuple[Any, dict[str, float]]:
    from rl_energy.agents.esf import ESF, ESFConfig

    torch.manual_seed(seed)
    agent_cfg = ESFConfig(n_rotations=cfg["n_rotations"], noise_rot=0.2 if noisy else 0.0,
                          noise_trans=0.7 if noisy else 0.0)
    agent_cfg.validate()
    agent = ESF(task.observation_space, task.action_space, agent_cfg)
    agent.receptor_cache = cache  # receptor basis FFTs do not depend on the parameters: shared by every arm
    rng = np.random.default_rng(seed)
    start, losses = time.perf_counter(), []
    for _ in range(cfg["updates"]):
        losses.append(float(agent.update(task.contexts("train", cfg["batch"], rng))["loss"]))
    tail = max(1, len(losses) // 10)
    return agent, {"train_s": time.perf_counter() - start, "loss_first": float(np.mean(losses[:tail])),
                   "loss_last": float(np.mean(losses[-tail:]))}


@torch.no_grad()
def evaluate_esf(agents: list[Any], task: Any) -> tuple[list[list[float]], list[float], float]:
    """Per-agent RMSDs of the argmax pose on ``task``'s test split, the grid oracle's RMSDs, and the seconds per
    complex (all agents at once: the basis densities are shared)."""
    from rl_energy import docking as D

    data = task.contexts("test")
    u = D.unpack(data["obs"], task.max_pocket)
    true_rot, true_t = D.pose_of_action(data["target"])
    rotations, spec = agents[0].rotations, agents[0].spec
    grid64, trans = rotations.double(), spec.translations()
    rmsd: list[list[float]] = [[] for _ in agents]
    oracle, start = [], time.perf_counter()
    for i in range(len(data)):
        grids = D.score_grids([a.fields for a in agents], u.pocket[i].float(), u.pocket_types[i], u.pocket_mask[i],
                              u.ligand[i].float(), u.ligand_types[i], u.ligand_mask[i], rotations)
        lig, mask = u.ligand[i][None], u.ligand_mask[i][None]
        for k, scores in enumerate(grids):
            r, t = divmod(int(scores.argmax()), spec.n_translations)
            rmsd[k].append(float(D.pose_rmsd(lig, mask, grid64[r][None], trans[t][None], true_rot[i:i + 1],
                                             true_t[i:i + 1])))
        oracle.append(float(D.oracle_pose(u.ligand[i], u.ligand_mask[i], true_rot[i], true_t[i], grid64, spec)[2]))
    return rmsd, oracle, (time.perf_counter() - start) / len(data)


@torch.no_grad()
def timing(agent: Any, task: Any, n_complexes: int) -> dict[str, float]:
    """Milliseconds per pose: the FFT (whole grid of a complex, receptor rasterisation included), the brute force
    (direct sums over 4 rotations × every translation, ligand fields given), the Vina-like score by direct pair
    sums and by the map search; and the FFT vs brute-force check on one whole grid (max |ΔS| and the argmax)."""
    from rl_energy import docking as D

    data = task.contexts("test")
    u = D.unpack(data["obs"], task.max_pocket)
    fields, spec, rots = agent.fields, agent.spec, agent.rotations
    n_poses = len(rots) * spec.n_translations
    fft_ms, brute_ms, vina_ms, map_ms = [], [], [], []
    gen = torch.Generator().manual_seed(0)
    for i in range(n_complexes):
        p = (u.pocket[i].float(), u.pocket_types[i], u.pocket_mask[i])
        lg = (u.ligand[i].float(), u.ligand_types[i], u.ligand_mask[i])
        start = time.perf_counter()
        scores = fields.score_grid(*p, *lg, rots)
        fft_ms.append(1e3 * (time.perf_counter() - start) / n_poses)
        rec = fields.receptor_field(fields.receptor_basis(*p))
        posed = torch.einsum("rij,aj->rai", rots[:4], lg[0])
        lig = fields.ligand_field(fields.ligand_basis(posed, lg[1], lg[2]))
        start = time.perf_counter()
        D.brute_force_scores(rec, lig, spec)
        brute_ms.append(1e3 * (time.perf_counter() - start) / (4 * spec.n_translations))
        poses = torch.einsum("rij,aj->rai", D.random_rotations(256, gen, torch.float32), lg[0]) \
            + (torch.rand(256, 1, 3, generator=gen) - 0.5) * 8
        start = time.perf_counter()
        D.vina_pair_energy(*p, poses, lg[1], lg[2])
        vina_ms.append(1e3 * (time.perf_counter() - start) / 256)
        start = time.perf_counter()
        maps, half = D.vina_maps(*p, spec)
        D.vina_grid_scores(maps, half, *lg, rots, spec)
        map_ms.append(1e3 * (time.perf_counter() - start) / n_poses)
        if i == 0:  # the acceptance check: the brute force over the whole grid of one complex
            lig_all = torch.cat([fields.ligand_field(fields.ligand_basis(torch.einsum("rij,aj->rai", r, lg[0]),
                                                                         lg[1], lg[2])) for r in rots.split(48)])
            brute = torch.cat([D.brute_force_scores(rec, chunk, spec) for chunk in lig_all.split(96)])
            check = {"max_abs_diff": float((scores - brute).abs().max()), "max_abs_score": float(brute.abs().max()),
                     "same_argmax": int(scores.argmax()) == int(brute.argmax())}
    return {"fft_ms": float(np.mean(fft_ms)), "brute_ms": float(np.mean(brute_ms)),
            "vina_pairs_ms": float(np.mean(vina_ms)), "vina_maps_ms": float(np.mean(map_ms)), **check}


# ============================================================================================ the report
def report(res: dict[str, Any]) -> float:
    cfg, seeds = res["config"], res["seeds"]
    arms = ("ESF", "ESF-N")
    print(f"\ntop-1 success (RMSD < 2 Å) and median RMSD (Å) on {cfg['n_test']} test complexes; ESF arms mean ± s.e. "
          f"over {len(seeds)} seeds")
    head = f"{'method':32s}{'clean success':>18s}{'clean median':>16s}{'perturbed success':>20s}" \
           f"{'perturbed median':>18s}   paper crystal / ESMFold"
    print(head)

    def row(name: str, clean: list[list[float]], pert: list[list[float]], paper: str) -> None:
        def cells(runs: list[list[float]]) -> tuple[str, str]:
            succ = [float(np.mean(np.asarray(r) < 2.0)) for r in runs]
            med = [float(np.median(r)) for r in runs]
            return fmt(succ), fmt(med, 2)

        (cs, cm), (ps, pm) = cells(clean), cells(pert)
        print(f"{name:32s}{cs:>18s}{cm:>16s}{ps:>20s}{pm:>18s}   {paper}")

    row("grid oracle (floor)", [res["oracle"]], [res["oracle"]], "-")
    for arm in arms:
        row(f"{arm} (FFT, argmax)", [res["esf"][s][arm]["clean"] for s in seeds],
            [res["esf"][s][arm]["perturbed"] for s in seeds],
            f"{PAPER_SUCCESS['crystal'][arm]:.3f} / {PAPER_SUCCESS['predicted'][arm]:.3f}")
    for name in ("Vina-like (grid)", "Vina-like (grid + local opt.)"):
        row(name, [res["vina"]["clean"][name]], [res["vina"]["perturbed"][name]],
            f"{PAPER_SUCCESS['crystal']['Vina']:.3f} / {PAPER_SUCCESS['predicted']['Vina']:.3f} (Vina)")
    diffs = {split: [float(np.mean(np.asarray(res["esf"][s]["ESF-N"][split]) < 2)
                           - np.mean(np.asarray(res["esf"][s]["ESF"][split]) < 2)) for s in seeds]
             for split in ("clean", "perturbed")}
    print(f"\nESF-N − ESF success: clean {fmt(diffs['clean'])}, perturbed {fmt(diffs['perturbed'])} "
          f"(paper: +0.021 crystal, +0.144 ESMFold)")
    drop = {arm: [float(np.mean(np.asarray(res['esf'][s][arm]['clean']) < 2)
                        - np.mean(np.asarray(res['esf'][s][arm]['perturbed']) < 2)) for s in seeds] for arm in arms}
    vina_drop = {name: float(np.mean(np.asarray(res["vina"]["clean"][name]) < 2)
                             - np.mean(np.asarray(res["vina"]["perturbed"][name]) < 2))
                 for name in ("Vina-like (grid)", "Vina-like (grid + local opt.)")}
    print(f"success lost to the perturbation: ESF {fmt(drop['ESF'])}, ESF-N {fmt(drop['ESF-N'])}; Vina-like grid "
          f"{vina_drop['Vina-like (grid)']:.3f}, + local opt. {vina_drop['Vina-like (grid + local opt.)']:.3f}")
    train = [res["esf"][s][a]["train"] for s in seeds for a in arms]
    first, last = np.mean([t["loss_first"] for t in train]), np.mean([t["loss_last"] for t in train])
    print(f"training: {np.mean([t['train_s'] for t in train]):.0f} s per arm; pose cross-entropy "
          f"{first:.2f} (first 10%) -> {last:.2f} (last 10%)")

    tm = res["timing"]
    print(f"\nper-pose scoring time (ms, one thread; ours on {tm['n_poses']:,} poses per complex)")
    print(f"{'method':34s}{'ours':>12s}{'paper':>10s}")
    for name, ours, paper in (("ESF FFT (whole grid)", tm["fft_ms"], PAPER_MS_PER_POSE["ESF-T (FFT)"]),
                              ("ESF brute force (direct sums)", tm["brute_ms"], None),
                              ("Vina-like, direct pair sums", tm["vina_pairs_ms"], PAPER_MS_PER_POSE["Vina"]),
                              ("Vina-like, maps + grid search", tm["vina_maps_ms"], None)):
        print(f"{name:34s}{ours:12.2e}{(f'{paper:.5g}' if paper else '-'):>10s}")
    print(f"paper also: ESF-R {PAPER_MS_PER_POSE['ESF-R']} ms, Gnina {PAPER_MS_PER_POSE['Gnina']} ms per pose")
    print(f"FFT vs brute force on one whole grid: max |ΔS| {tm['max_abs_diff']:.2e} "
          f"(max |S| {tm['max_abs_score']:.2f}), "
          f"same argmax: {tm['same_argmax']}; brute/FFT per-pose time {tm['brute_ms'] / tm['fft_ms']:.1f}x, "
          f"Vina pairs/FFT {tm['vina_pairs_ms'] / tm['fft_ms']:.0f}x (paper Vina/ESF-T {3.35 / 0.00135:.0f}x)")
    print(f"\nwall time {res['wall_s']:.0f} s")
    return float(np.mean(diffs["perturbed"]))


def plot(res: dict[str, Any], path: Path) -> None:
    """The fraction of test complexes docked within each RMSD, per method, on the clean and perturbed splits (ESF
    arms pooled over seeds); the 2 Å line is the top-1 success of the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    grid = np.linspace(0.0, 8.0, 321)
    for ax, split in zip(axes, ("clean", "perturbed"), strict=True):
        curves = {"grid oracle": res["oracle"]}
        for arm in ("ESF", "ESF-N"):
            curves[arm] = np.concatenate([res["esf"][s][arm][split] for s in res["seeds"]])
        for name in ("Vina-like (grid)", "Vina-like (grid + local opt.)"):
            curves[name] = res["vina"][split][name]
        for name, rmsd in curves.items():
            rmsd = np.asarray(rmsd)
            ax.plot(grid, (rmsd[None, :] < grid[:, None]).mean(1), label=name, ls=":" if name == "grid oracle" else "-")
        ax.axvline(2.0, color="k", lw=0.6)
        ax.set(xlabel="RMSD (Å)", title=f"{split} pockets" + (f" ({res['config']['perturb']} Å RMS)"
                                                                if split == "perturbed" else ""))
    axes[0].set_ylabel("fraction of test complexes below")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny splits, few updates and rotations")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds of ESF and ESF-N (default 2)")
    parser.add_argument("--perturb", type=float, default=1.0, help="RMS displacement (Å) of the perturbed pockets")
    parser.add_argument("--updates", type=int, default=None, help="Adam updates per arm (default 400)")
    parser.add_argument("--n-test", type=int, default=None, help="test complexes per split (default 100)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes (default 2: the Vina-like baseline runs beside ESF; one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a saved results .json")
    parser.add_argument("--plot", type=Path, default=None, help="save the RMSD curves here (PNG)")
    args = parser.parse_args()
    if args.report is not None:
        if not args.report.is_file():
            parser.error(f"--report: no such file {args.report}")
        res = json.loads(args.report.read_text())
        res["esf"] = {int(k): v for k, v in res["esf"].items()}
        diff = report(res)
        if args.plot is not None:
            plot(res, args.plot)
        print(f"ESF-N − ESF top-1 success on the perturbed split: {diff:.3f}")
        return 0
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if not (math.isfinite(args.perturb) and 0 < args.perturb <= 5):
        parser.error(f"--perturb must be in (0, 5] Å, got {args.perturb}")
    if args.updates is not None and args.updates < 1:
        parser.error(f"--updates must be >= 1, got {args.updates}")
    if args.n_test is not None and args.n_test < 1:
        parser.error(f"--n-test must be >= 1, got {args.n_test}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    cfg = settings(args.quick) | {"perturb": args.perturb, "t_max": 6.0}
    if args.updates is not None:
        cfg["updates"] = args.updates
    if args.n_test is not None:
        cfg["n_test"] = args.n_test
    seeds = list(range(args.seeds if args.seeds is not None else 2))
    start = time.time()
    print(f"budget: {len(seeds)} seeds x (ESF, ESF-N) x {cfg['updates']} updates of {cfg['batch']} complexes "
          f"({cfg['n_train']} training complexes); {cfg['n_test']} test complexes x 2 splits (perturb "
          f"{cfg['perturb']} Å RMS); {cfg['n_rotations']} rotations; {args.workers} workers; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) if args.workers > 1 else _Inline() as pool:
        vina_future = pool.submit(run_vina, cfg)
        ts = tasks(cfg)
        cache: dict = {}
        esf: dict[int, dict[str, Any]] = {}
        agents = []
        for seed in seeds:
            esf[seed] = {}
            for arm, noisy in (("ESF", False), ("ESF-N", True)):
                agent, info = train_arm(cfg, seed, noisy, ts["clean"], cache)
                esf[seed][arm] = {"train": info}
                agents.append((seed, arm, agent))
                print(f"seed {seed} {arm}: trained in {info['train_s']:.0f} s, loss {info['loss_first']:.2f} -> "
                      f"{info['loss_last']:.2f}", flush=True)
        cache.clear()
        oracle: list[float] = []
        esf_seconds = {}
        for split, task in ts.items():
            rmsd, oracle, esf_seconds[split] = evaluate_esf([a for _, _, a in agents], task)
            for (seed, arm, _), r in zip(agents, rmsd, strict=True):
                esf[seed][arm][split] = r
            print(f"{split}: ESF arms evaluated ({esf_seconds[split]:.2f} s per complex for {len(agents)} models)",
                  flush=True)
        tm = timing(agents[0][2], ts["clean"], cfg["timing_complexes"])
        tm["n_poses"] = len(agents[0][2].rotations) * agents[0][2].spec.n_translations
        vina = vina_future.result()
    res = {"config": cfg, "seeds": seeds, "esf": esf, "oracle": oracle, "vina": vina, "timing": tm,
           "esf_eval_s_per_complex": esf_seconds, "wall_s": time.time() - start}
    diff = report(res)
    if args.plot is not None:
        plot(res, args.plot)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
        print(f"results: {args.out}")
    print(f"ESF-N − ESF top-1 success on the perturbed split: {diff:.3f}")
    return 0


class _Inline:
    """A stand-in for the process pool with ``--workers 1``: runs the submitted call at ``result()``."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn, *args):  # noqa: ANN001, ANN202
        class _Later:
            def result(self_inner):  # noqa: N805, ANN202
                return fn(*args)

        return _Later()


if __name__ == "__main__":
    raise SystemExit(run_script(main))
