"""Reproduce the GFlowNet comparisons of Pan et al. (2023, FL-DB) and torchgfn's HyperGrid figure.

Three experiments, each run through ``rl-energy train``'s own loop (:func:`rl_energy.trainer.make_trainer`) with
the shipped configs, several seeds, in parallel processes:

1. **HyperGrid 4x8**, DB / TB / SubTB / FL-DB, 32k trajectories of batch 16: the L1 distance (summed
   over states, torchgfn's form) between the sampler's terminal distribution and ``R/Z``, both exact
   (dynamic programming) and empirical from 200k samples as torchgfn measures it. Reference: torchgfn's
   regression figure for TB, 0.25 (GFlowNet digest §7).
2. **Set generation, small** (|U| = 30, k = 20), **medium** (80, 60) and **large** (100, 80;
   ``--set-sizes``) with the FL-GFN code's energies and per-objective exploration ε, steps of 16
   trajectories, with the paper's metric: after every
   update 16 on-policy probe trajectories are drawn, and the curve is the mean reward of the best 100
   distinct sets among all probes so far (``agent.probe_samples=16``, column ``top_k_found``). The
   paper's claim: FL-DB beats DB at equal steps. FL-DB runs in two forms: ``fldb`` (log F̃(x) = 0 at full
   sets, the paper's eq. 9: the sampler targets R/Z) and ``fldb_code`` (``agent.terminal_flow=learned``:
   log F̃(x) free, as in the FL-GFN set code). How sharp each final sampler is, is measured by its mean
   log R over 2048 samples beside the exact E_{R/Z}[log R].
3. **Incomplete trajectories** (small): FL-DB and DB with every trajectory cut at a uniformly random
   length (``agent.truncate=1``). FL-DB should still learn.

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
SET_ARMS = {"db": ("db", []), "tb": ("tb", []), "subtb": ("subtb", []), "fldb": ("fldb", []),
            "fldb_code": ("fldb", ["agent.terminal_flow=learned"])}
"""Set-generation arms: name -> (agent, overrides)."""
EPSILON = {"medium": {"db": 1.0, "tb": 0.0625, "subtb": 1.0, "fldb": 0.5},
           "large": {"db": 1.0, "tb": 0.0, "subtb": 1.0, "fldb": 0.5}}
"""The FL-GFN code's ε by size (its grid search; SubTB, absent there, as DB; small uses the shipped
configs' values)."""


def run_one(job: dict) -> dict:
    import torch

    from rl_energy.analysis.gflownet import empirical_distribution, l1_distance
    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import make_trainer
    from rl_energy.trajectories import sample_trajectories

    torch.set_num_threads(1)
    overrides = [f"train.seed={job['seed']}", "train.torch_threads=1", *job["overrides"]]
    cfg = resolve_config(job["agent"], job["env"], get_agent(job["agent"]).config_cls, overrides=overrides)
    run_dir = Path(job["out"]) / job["name"] / f"seed{job['seed']}"
    start = time.perf_counter()
    trainer = make_trainer(cfg, run_dir, verbose=False)
    final = trainer.train()
    result = {**job, "final": final, "seconds": time.perf_counter() - start}
    if hasattr(trainer.dag, "target_mean_log_reward"):
        result["final"]["target_mean_log_reward"] = trainer.dag.target_mean_log_reward()
    if job.get("empirical_l1"):
        dag, agent = trainer.dag, trainer.agent
        xs = [sample_trajectories(dag, agent.forward_logits, 20_000).terminal_states() for _ in range(10)]
        result["final"]["l1_empirical_200k"] = l1_distance(
            empirical_distribution(dag, torch.cat(xs)), dag.target_distribution())
    with open(run_dir / "progress.csv", newline="") as f:
        result["curve"] = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return result


def set_steps(args: argparse.Namespace, size: str) -> int:
    return args.set_steps if size == "small" else args.medium_steps


def jobs_for(args: argparse.Namespace) -> list[dict]:
    jobs = []
    sizes = [s for s in args.set_sizes.split(",") if s] if "set" in args.experiments else []
    for seed in range(args.seeds):
        for agent in OBJECTIVES if "grid" in args.experiments else ():
            jobs.append({"name": f"hypergrid4x8_{agent}", "agent": agent, "env": "rl_energy/HyperGrid-v0",
                         "seed": seed, "empirical_l1": True,
                         "overrides": ["env_kwargs.ndim=4", "env_kwargs.height=8", "train.eval_every=1600",
                                       f"train.total_steps={args.grid_trajectories}"]})
        for size in sizes:
            run = [f"train.total_steps={16 * set_steps(args, size)}", "agent.probe_samples=16",
                   f"train.log_every={16 * max(1, set_steps(args, size) // 100)}", "train.eval_every=0"]
            if size != "small":
                run.append(f"env_kwargs.size={size}")
            for arm, (agent, extra) in SET_ARMS.items():
                eps = [f"agent.epsilon={EPSILON[size][agent]}"] if size != "small" else []
                jobs.append({"name": f"set_{size}_{arm}", "agent": agent, "env": "rl_energy/SetGeneration-v0",
                             "seed": seed, "overrides": [*run, *eps, *extra]})
            if size == "small":
                for agent in ("fldb", "db"):
                    jobs.append({"name": f"set_small_{agent}_truncated", "agent": agent,
                                 "env": "rl_energy/SetGeneration-v0", "seed": seed,
                                 "overrides": [*run, "agent.truncate=1.0"]})
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
    parser.add_argument("--set-steps", type=int, default=10_000, help="updates of 16 trajectories, small set task")
    parser.add_argument("--medium-steps", type=int, default=4_000,
                        help="updates of 16 trajectories, medium and large")
    parser.add_argument("--set-sizes", default="small,medium", help="comma-separated: small, medium, large")
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
    if args.plot:
        plot(results, finals if "set" in args.experiments else {}, args)
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


SIZE_LABEL = {"small": "|U| = 30, k = 20", "medium": "|U| = 80, k = 60", "large": "|U| = 100, k = 80"}


def compare(finals: dict, a: str, b: str) -> tuple[float, float, float]:
    """Share of logged steps where ``a``'s seed-mean curve is above ``b``'s, the ratio of areas under the
    curves, and the ratio of final values."""
    ca, cb = finals[a][1].mean(0), finals[b][1].mean(0)
    return float((ca > cb).mean()), float(ca.mean() / cb.mean()), float(ca[-1] / cb[-1])


def report_set(results: list[dict], args: argparse.Namespace) -> dict:
    finals = {}
    for size in [s for s in args.set_sizes.split(",") if s]:
        steps_total = set_steps(args, size)
        print(f"\nSet generation, {size} ({SIZE_LABEL[size]}), FL-GFN energies, {steps_total} steps of 16 "
              "trajectories: mean reward of the top-100 distinct sets among all on-policy probes so far")
        marks = [steps_total // 10, steps_total // 4, steps_total // 2, steps_total]
        print(f"{'objective':18s}" + "".join(f"{f'step {m}':>22s}" for m in marks)
              + f"{'mean log R (exact)':>24s}{'|log Z error|':>16s}")
        names = [f"set_{size}_{a}" for a in SET_ARMS]
        names += [f"set_{size}_{a}_truncated" for a in ("fldb", "db") if size == "small"]
        for name in names:
            steps, topk = summarize(results, "top_k_found", name)
            cols = [topk[:, int(np.argmin(np.abs(steps - 16 * m)))] for m in marks]
            runs = [r["final"] for r in results if r["name"] == name]
            lz = np.array([f["log_z_error"] for f in runs])
            mlr = np.array([f["mean_log_reward"] for f in runs])
            exact = runs[0]["target_mean_log_reward"]
            print(f"{name[len(f'set_{size}_'):]:18s}" + "".join(f"{fmt(c, '.4g'):>22s}" for c in cols)
                  + f"{fmt(mlr, '.2f') + f' ({exact:.2f})':>24s}{fmt(lz):>16s}")
            finals[name] = (steps, topk)
        for arm, label in (("fldb_code", "FL-DB, FL-GFN code form (free terminal flow)"),
                           ("fldb", "FL-DB, exact form (log F~(x) = 0)")):
            ahead, auc, last = compare(finals, f"set_{size}_{arm}", f"set_{size}_db")
            print(f"{label} vs DB, {size}: above at {100 * ahead:.0f}% of the logged steps; area under the "
                  f"curve x{auc:.2f}; final x{last:.3f}")
        if size == "small":
            tr, tr_db = finals["set_small_fldb_truncated"][1], finals["set_small_db_truncated"][1]
            print(f"FL-DB on truncated trajectories: top-100 reward {fmt(tr[:, 0], '.3g')} at the first log -> "
                  f"{fmt(tr[:, -1], '.3g')} at the end (DB truncated: {fmt(tr_db[:, -1], '.3g')})")
    return finals


def plot(results: list[dict], finals: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({name.split("_")[1] for name in finals}, key=list(SIZE_LABEL).index)
    panels = (["grid"] if "grid" in args.experiments else []) + sizes + (["truncated"] if "small" in sizes else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "grid":
            for agent in OBJECTIVES:
                steps, l1 = summarize(results, "l1", f"hypergrid4x8_{agent}")
                ax.plot(steps, l1.mean(0), label=agent)
                ax.fill_between(steps, l1.min(0), l1.max(0), alpha=0.2)
            ax.axhline(TORCHGFN_TB_L1_4x8, color="k", ls="--", lw=0.8, label="torchgfn TB reference")
            ax.set(title="HyperGrid 4x8: exact L1 to R/Z (summed)", xlabel="trajectories", yscale="log")
            ax.legend(fontsize=8)
            continue
        if panel == "truncated":
            names, title = ["set_small_fldb_truncated", "set_small_db_truncated", "set_small_fldb"], \
                "Set generation, small: truncated trajectories"
        else:
            names, title = [f"set_{panel}_{a}" for a in SET_ARMS], f"Set generation, {panel} ({SIZE_LABEL[panel]})"
        for name in names:
            steps, topk = finals[name]
            ax.plot(steps / 16, topk.mean(0), label=name.split("_", 2)[2])
            ax.fill_between(steps / 16, topk.min(0), topk.max(0), alpha=0.2)
        ax.set(title=title, xlabel="training steps (16 trajectories each)", ylabel="mean reward of the top-100 found")
        ax.legend(fontsize=8)
    fig.suptitle(f"rl-energy GFlowNets, {args.seeds} seeds (mean, min-max band)")
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
