"""Reproduce the GFlowNet comparisons of Pan et al. (2023, FL-DB) and torchgfn's HyperGrid figure.

Three experiments, each run through ``rl-energy train``'s own loop (:class:`TrajectoryTrainer`) with
the shipped configs, several seeds, in parallel processes:

1. **HyperGrid 4x8**, DB / TB / SubTB / FL-DB, 32k trajectories of batch 16: the L1 distance (summed
   over states, torchgfn's form) between the sampler's terminal distribution and ``R/Z``, both exact
   (dynamic programming) and empirical from 200k samples as torchgfn measures it. Reference: torchgfn's
   regression figure for TB, 0.25 (GFlowNet digest §7).
2. **Set generation, small** (|U| = 30, k = 20), the four objectives, steps of 16 trajectories, with
   the paper's metric (FL-GFN set code): after every update 16 on-policy probe trajectories are drawn,
   and the curve is the mean reward of the best 100 distinct sets among all probes so far
   (``agent.probe_samples=16``, column ``top_k_found``). The paper's claim: FL-DB beats DB at equal steps.
3. **Incomplete trajectories**: FL-DB and DB on the same task with every trajectory cut at a uniformly
   random length (``agent.truncate=1``). FL-DB should still learn; DB only sees the rare uncut ones.

    python scripts/reproduce_gflownet.py --jobs 2 --plot docs/img/gflownet_reproduction.png
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

OBJECTIVES = ("db", "tb", "subtb", "fldb")
TORCHGFN_TB_L1_4x8 = 0.25


def run_one(job: dict) -> dict:
    import torch

    from rl_energy.analysis.gflownet import empirical_distribution, l1_distance
    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import TrajectoryTrainer
    from rl_energy.trajectories import sample_trajectories

    torch.set_num_threads(1)
    overrides = [f"train.seed={job['seed']}", "train.torch_threads=1", *job["overrides"]]
    cfg = resolve_config(job["agent"], job["env"], get_agent(job["agent"]).config_cls, overrides=overrides)
    run_dir = Path(job["out"]) / job["name"] / f"seed{job['seed']}"
    start = time.perf_counter()
    trainer = TrajectoryTrainer(cfg, run_dir, verbose=False)
    final = trainer.train()
    result = {**job, "final": final, "seconds": time.perf_counter() - start}
    if job.get("empirical_l1"):
        dag, agent = trainer.dag, trainer.agent
        xs = [sample_trajectories(dag, agent.forward_logits, 20_000).terminal_states() for _ in range(10)]
        result["final"]["l1_empirical_200k"] = l1_distance(
            empirical_distribution(dag, torch.cat(xs)), dag.target_distribution())
    with open(run_dir / "progress.csv", newline="") as f:
        result["curve"] = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return result


def jobs_for(args: argparse.Namespace) -> list[dict]:
    jobs = []
    set_run = [f"train.total_steps={16 * args.set_steps}", "agent.probe_samples=16", "train.log_every=1600",
               "train.eval_every=16000"]
    for seed in range(args.seeds):
        for agent in OBJECTIVES:
            if "grid" in args.experiments:
                jobs.append({"name": f"hypergrid4x8_{agent}", "agent": agent, "env": "rl_energy/HyperGrid-v0",
                             "seed": seed, "empirical_l1": True,
                             "overrides": ["env_kwargs.ndim=4", "env_kwargs.height=8", "train.eval_every=1600",
                                           f"train.total_steps={args.grid_trajectories}"]})
            if "set" in args.experiments:
                jobs.append({"name": f"set_small_{agent}", "agent": agent, "env": "rl_energy/SetGeneration-v0",
                             "seed": seed, "overrides": set_run})
        for agent in ("fldb", "db") if "set" in args.experiments else ():
            jobs.append({"name": f"set_small_{agent}_truncated", "agent": agent, "env": "rl_energy/SetGeneration-v0",
                         "seed": seed, "overrides": [*set_run, "agent.truncate=1.0"]})
    for job in jobs:
        job["out"] = args.out
    return jobs


def summarize(results: list[dict], key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the ``[seeds, points]`` matrix of ``key`` at every evaluation of experiment ``name``."""
    runs = sorted((r for r in results if r["name"] == name), key=lambda r: r["seed"])
    rows = [[row for row in r["curve"] if key in row] for r in runs]
    steps = np.array([row["step"] for row in rows[0]])
    return steps, np.array([[row[key] for row in rs] for rs in rows])


def fmt(values: np.ndarray, spec: str = ".3f") -> str:
    return f"{values.mean():{spec}} ± {values.std():{spec}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (one thread each)")
    parser.add_argument("--grid-trajectories", type=int, default=32_000)
    parser.add_argument("--set-steps", type=int, default=10_000, help="updates of 16 trajectories on set generation")
    parser.add_argument("--experiments", default="grid,set", help="comma-separated: grid, set (set includes "
                        "the truncated-trajectory runs)")
    parser.add_argument("--out", default="runs/reproduce_gflownet")
    parser.add_argument("--plot", help="write the learning curves to this image")
    args = parser.parse_args()

    jobs = jobs_for(args)
    print(f"{len(jobs)} runs on {args.jobs} processes ...", flush=True)
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = []
        for r in pool.imap_unordered(run_one, jobs):
            results.append(r)
            print(f"  {r['name']} seed {r['seed']}: {r['seconds']:.0f} s", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results))

    if "grid" in args.experiments:
        tb_l1 = report_grid(results, args)
    if "set" in args.experiments:
        finals = report_set(results, args)
    if args.plot and "set" in args.experiments:
        plot(results, finals, args)
        print(f"plot: {args.plot}")
    if "grid" in args.experiments:
        print(f"hypergrid 4x8 TB L1 (summed, 200k samples; torchgfn {TORCHGFN_TB_L1_4x8}): {tb_l1.mean():.3f}")


def report_grid(results: list[dict], args: argparse.Namespace) -> np.ndarray:
    print(f"HyperGrid 4x8, {args.grid_trajectories} trajectories (batch 16), {args.seeds} seeds: "
          "L1 summed over the 4096 states")
    print(f"{'objective':10s} {'exact L1':>16s} {'L1, 200k samples':>18s} {'|log Z error|':>16s} "
          f"{'modes':>8s}  reference")
    tb_l1 = None
    for agent in OBJECTIVES:
        runs = [r["final"] for r in results if r["name"] == f"hypergrid4x8_{agent}"]
        exact = np.array([f["l1"] for f in runs])
        emp = np.array([f["l1_empirical_200k"] for f in runs])
        lz = np.array([f["log_z_error"] for f in runs])
        modes = np.array([f["modes_found"] for f in runs])
        ref = f"torchgfn TB {TORCHGFN_TB_L1_4x8} (200k samples)" if agent == "tb" else ""
        print(f"{agent:10s} {fmt(exact):>16s} {fmt(emp):>18s} {fmt(lz):>16s} {fmt(modes, '.1f'):>8s}  {ref}")
        if agent == "tb":
            tb_l1 = emp
    return tb_l1


def report_set(results: list[dict], args: argparse.Namespace) -> dict:
    print(f"\nSet generation, small (|U| = 30, k = 20), {args.set_steps} steps of 16 trajectories: "
          "mean reward of the top-100 distinct sets among all on-policy probes so far (16 per step)")
    marks = [args.set_steps // 10, args.set_steps // 4, args.set_steps // 2, args.set_steps]
    print(f"{'objective':18s}" + "".join(f"{f'step {m}':>20s}" for m in marks) + f"{'|log Z error|':>18s}")
    finals = {}
    for name in [f"set_small_{a}" for a in OBJECTIVES] + ["set_small_fldb_truncated", "set_small_db_truncated"]:
        steps, topk = summarize(results, "top_k_found", name)
        cols = [topk[:, int(np.argmin(np.abs(steps - 16 * m)))] for m in marks]
        lz = np.array([r["final"]["log_z_error"] for r in results if r["name"] == name])
        print(f"{name[len('set_small_'):]:18s}" + "".join(f"{fmt(c, '.1f'):>20s}" for c in cols) + f"{fmt(lz):>18s}")
        finals[name] = (steps, topk)

    fl, db = finals["set_small_fldb"][1], finals["set_small_db"][1]
    ahead = float((fl.mean(0) > db.mean(0)).mean())
    print(f"\nFL-DB above DB (seed means) at {100 * ahead:.0f}% of the logged steps; "
          f"area under the top-100 curve FL-DB/DB: {fl.mean() / db.mean():.2f} (paper: FL-DB converges faster)")
    tr, tr_db = finals["set_small_fldb_truncated"][1], finals["set_small_db_truncated"][1]
    print(f"FL-DB on truncated trajectories: top-100 reward {fmt(tr[:, 0], '.1f')} at the first evaluation -> "
          f"{fmt(tr[:, -1], '.1f')} at the end (DB truncated: {fmt(tr_db[:, -1], '.1f')})")
    return finals


def plot(results: list[dict], finals: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if "grid" in args.experiments:
        for agent in OBJECTIVES:
            steps, l1 = summarize(results, "l1", f"hypergrid4x8_{agent}")
            axes[0].plot(steps, l1.mean(0), label=agent)
            axes[0].fill_between(steps, l1.min(0), l1.max(0), alpha=0.2)
        axes[0].axhline(TORCHGFN_TB_L1_4x8, color="k", ls="--", lw=0.8, label="torchgfn TB reference")
        axes[0].set(title="HyperGrid 4x8: exact L1 to R/Z (summed)", xlabel="trajectories", yscale="log")
    for ax, names in ((axes[1], [f"set_small_{a}" for a in OBJECTIVES]),
                      (axes[2], ["set_small_fldb_truncated", "set_small_db_truncated", "set_small_fldb"])):
        for name in names:
            steps, topk = finals[name]
            ax.plot(steps / 16, topk.mean(0), label=name[len("set_small_"):])
            ax.fill_between(steps / 16, topk.min(0), topk.max(0), alpha=0.2)
        ax.set(xlabel="training steps (16 trajectories each)", ylabel="mean reward of the top-100 sets found")
    axes[1].set_title("Set generation (|U|=30, k=20)")
    axes[2].set_title("Incomplete (truncated) trajectories")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"rl-energy GFlowNets, {args.seeds} seeds (mean, min-max band)")
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
