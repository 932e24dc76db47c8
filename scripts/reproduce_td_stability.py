"""Reproduce the target-network experiments of Fellows, Smith & Whiteson (ICML 2023), "Why target
networks stabilise temporal difference methods" (TD digest §4-§5), with rl-energy's PFPE agent trained
by ``rl-energy train``'s own loop (:func:`rl_energy.trainer.make_trainer`) and the shipped configs:

1. **Baird's counterexample** (``configs/pfpe/rl_energy__Baird-v0.yaml``): off-policy evaluation with
   linear state values, sampled SGD updates (one behaviour-policy transition per step, α = 0.01,
   γ = 0.99, 50k steps) for target periods k ∈ {1, 10, 100, 500, 1000}, 5 seeds. Each seed is classed by
   its value error ``‖Xw − v_π‖_D`` at the end over the start (diverged > 100, converged < 0.1, else
   undecided), beside the expected-update analysis (``ρ(M_k)``, :mod:`rl_energy.analysis.td_stability`)
   and the paper's finding: TD (k = 1) diverges, k = 5 and 10 diverge more slowly, k ≥ 500 converges.
2. **DQN on CartPole-v1** (``configs/pfpe/default.yaml``: the paper's MLP 2 x 32, batch 500, replay
   2,500, ε 0.05, 5 env steps per update) with a hard target every k ∈ {1, 5, 50} updates and the
   momentum target (k = 5, μ from ``--momentum``), 5 seeds, 50k env steps: final and late evaluation
   returns. The paper's claim: the momentum target is the more stable one.

    python scripts/reproduce_td_stability.py --jobs 2 --plot docs/img/td_stability.png
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

BAIRD_KS = (1, 10, 100, 500, 1000)
BAIRD_PAPER = {1: "diverges (loss to ~1e195)", 10: "diverges, more slowly", 100: "(not reported)",
               500: "converges", 1000: "converges"}


def run_one(job: dict) -> dict:
    import torch

    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import TrainingError, make_trainer

    torch.set_num_threads(1)
    overrides = [f"train.seed={job['seed']}", "train.torch_threads=1", *job["overrides"]]
    cfg = resolve_config("pfpe", job["env"], get_agent("pfpe").config_cls, overrides=overrides)
    run_dir = Path(job["out"]) / job["name"] / f"seed{job['seed']}"
    start = time.perf_counter()
    trainer = make_trainer(cfg, run_dir, verbose=False)
    result = {**job, "error": None}
    try:
        final = trainer.train()
        result["final_return"] = final.mean
    except TrainingError as exc:  # a diverging TD run may overflow even in float64
        result["error"] = str(exc)
    result["seconds"] = time.perf_counter() - start
    result["weights"] = [p.detach().double().flatten().tolist() for p in trainer.agent.q.parameters()]
    with open(run_dir / "progress.csv", newline="") as f:
        result["curve"] = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return result


def jobs_for(args: argparse.Namespace) -> list[dict]:
    jobs = []
    for seed in range(args.seeds):
        if "baird" in args.experiments:
            for k in BAIRD_KS:
                jobs.append({"name": f"baird_k{k}", "env": "rl_energy/Baird-v0", "seed": seed, "k": k,
                             "overrides": [f"agent.target_period={k}", f"train.total_steps={args.baird_steps}"]})
        if "cartpole" in args.experiments:
            variants = [(f"cartpole_k{k}", [f"agent.target_period={k}"]) for k in (1, 5, 50)]
            variants.append(("cartpole_k5_momentum", ["agent.target_period=5", "agent.target_update=momentum",
                                                      f"agent.momentum={args.momentum}"]))
            for name, extra in variants:
                jobs.append({"name": name, "env": "CartPole-v1", "seed": seed,
                             "overrides": [*extra, f"train.total_steps={args.cartpole_steps}"]})
    for job in jobs:
        job["out"] = args.out
    return jobs


def baird_table(results: list[dict], steps: int) -> tuple[list[str], int | None]:
    from rl_energy.analysis import td_stability as td
    from rl_energy.envs.baird import INIT_WEIGHTS, BairdEnv

    mdp = BairdEnv().linear_mdp()
    mats = td.td_matrices(mdp)
    w0 = np.array(INIT_WEIGHTS)
    start = float(td.value_error(mdp, w0))
    lines = [
        f"Baird, sampled PFPE through the trainer: alpha 0.01, {steps} steps; value error ratio "
        f"||Xw - v||_D end/start per seed (diverged > {td.DIVERGED:g}, converged < {td.CONVERGED:g})",
        f"smallest k with rho(M_k) < 1 (expected updates): {td.smallest_stable_k(mats, 0.01)}",
        f"{'k':>5} {'rho(M_k)':>9} {'expected':>10} {'sampled: seeds':>28} {'median ratio':>13}  paper",
    ]
    all_converged = None
    for k in BAIRD_KS:
        runs = [r for r in results if r["name"] == f"baird_k{k}"]
        if not runs:
            continue
        ratios = [float(td.value_error(mdp, np.array(r["weights"][0]))) / start if r["error"] is None
                  else float("inf") for r in runs]
        outcomes = [td.outcome(x) for x in ratios]
        summary = ", ".join(f"{outcomes.count(o)} {o}" for o in ("diverged", "converged", "undecided")
                            if outcomes.count(o))
        _, w = td.expected_pfpe(mats, 0.01, k, w0, steps)
        expected = td.outcome(float(td.value_error(mdp, w[-1])) / start)
        lines.append(f"{k:>5} {td.pfpe_radius(mats, 0.01, k):>9.5f} {expected:>10} {summary:>28} "
                     f"{np.median(ratios):>13.3g}  {BAIRD_PAPER[k]}")
        if all_converged is None and outcomes.count("converged") == len(outcomes):
            all_converged = k
    return lines, all_converged


def cartpole_table(results: list[dict]) -> list[str]:
    lines = ["DQN on CartPole-v1 (return, mean ± std over seeds; 'late' = mean of the last 5 evaluations, "
             "'min late' = the worst of them)",
             f"{'setting':>24} {'final':>16} {'late':>16} {'min late':>16}"]
    for name in ("cartpole_k1", "cartpole_k5", "cartpole_k50", "cartpole_k5_momentum"):
        runs = [r for r in results if r["name"] == name]
        if not runs:
            continue
        final = np.array([r.get("final_return", np.nan) for r in runs])
        evals = [[row["eval_return_mean"] for row in r["curve"] if "eval_return_mean" in row][-5:] for r in runs]
        late = np.array([np.mean(e) for e in evals])
        worst = np.array([np.min(e) for e in evals])
        lines.append(f"{name.removeprefix('cartpole_'):>24} {final.mean():>8.1f} ± {final.std():<5.1f} "
                     f"{late.mean():>8.1f} ± {late.std():<5.1f} {worst.mean():>8.1f} ± {worst.std():<5.1f}")
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, k in enumerate(BAIRD_KS):
        runs = [r for r in results if r["name"] == f"baird_k{k}"]
        if not runs:
            continue
        n = min(len(r["curve"]) for r in runs)
        steps = [row["step"] for row in runs[0]["curve"][:n]]
        norms = np.array([[row.get("weight_norm", np.nan) for row in r["curve"][:n]] for r in runs])
        axes[0].plot(steps, np.nanmedian(norms, 0), color=f"C{i}", label=f"k = {k}")
        axes[0].fill_between(steps, np.nanmin(norms, 0), np.nanmax(norms, 0), color=f"C{i}", alpha=0.2)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="updates", ylabel="||w||", title="Baird, sampled PFPE (median, min-max over seeds)")
    axes[0].legend()
    for i, name in enumerate(("cartpole_k1", "cartpole_k5", "cartpole_k50", "cartpole_k5_momentum")):
        runs = [r for r in results if r["name"] == name]
        if not runs:
            continue
        rows = [[row for row in r["curve"] if "eval_return_mean" in row] for r in runs]
        n = min(len(x) for x in rows)
        steps = [row["step"] for row in rows[0][:n]]
        vals = np.array([[row["eval_return_mean"] for row in x[:n]] for x in rows])
        axes[1].plot(steps, vals.mean(0), color=f"C{i}", label=name.removeprefix("cartpole_"))
        axes[1].fill_between(steps, vals.min(0), vals.max(0), color=f"C{i}", alpha=0.15)
    axes[1].set(xlabel="env steps", ylabel="eval return", title="DQN, CartPole-v1 (mean, min-max over seeds)")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (one thread each)")
    parser.add_argument("--baird-steps", type=int, default=50_000)
    parser.add_argument("--cartpole-steps", type=int, default=50_000)
    parser.add_argument("--momentum", type=float, default=0.01, help="the paper's momentum (TD digest §5)")
    parser.add_argument("--experiments", default="baird,cartpole", help="comma-separated: baird, cartpole")
    parser.add_argument("--out", default="runs/reproduce_td_stability")
    parser.add_argument("--plot", help="write the curves to this image")
    args = parser.parse_args()

    jobs = jobs_for(args)
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s ({args.jobs} processes)\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results))
    all_converged = None
    if "baird" in args.experiments:
        lines, all_converged = baird_table(results, args.baird_steps)
        print("\n".join(lines) + "\n")
    if "cartpole" in args.experiments:
        print("\n".join(cartpole_table(results)) + "\n")
    if args.plot:
        plot(results, Path(args.plot))
        print(f"wrote {args.plot}")
    if "baird" in args.experiments:
        print(f"Baird sampled PFPE: smallest k where every seed converged: {all_converged}")


if __name__ == "__main__":
    main()
