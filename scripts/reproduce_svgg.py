"""Reproduce the SVGG comparison (Castanet, Sigaud & Lamprier, ICML 2023; SVGG digest §1, §6-§7) on
``rl_energy/PointMaze-MultiRoom-v0`` with goal-conditioned DDPG + HER (``configs/ddpg/rl_energy__PointMaze.yaml``),
every run through ``rl-energy train``'s own loop (:func:`rl_energy.trainer.make_trainer`):

1. **Coverage**: SVGG against the naive curriculum (goals uniform over the maze's bounding box, walls
   included) and the oracle (goals uniform over the valid cells), ``--seeds`` seeds each. Success
   coverage (the mean success of the deterministic policy over 4 fixed goals in each free cell) is
   logged every ``--eval-every`` steps. The paper's claim: SVGG's coverage beats the baselines'.
2. **Recovery**: SVGG (and the naive curriculum) on the same maze, switched mid-run to
   ``multiroom_moved`` (one door moved, so the old route to the middle rooms is cut). The paper's
   claim: coverage drops, then recovers as the predictor relabels the changed region as
   intermediate and the particles move back.

Particles are snapshotted along the SVGG runs and drawn over the maze.

    python scripts/reproduce_svgg.py --jobs 2 --plot docs/img/svgg
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

ENV = "rl_energy/PointMaze-MultiRoom-v0"
ARMS = ("svgg", "uniform_box", "uniform_valid")


def run_one(job: dict) -> dict:
    import torch

    from rl_energy.checkpoint import load_checkpoint
    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import make_trainer

    torch.set_num_threads(1)
    overrides = [f"train.seed={job['seed']}", "train.torch_threads=1", f"curriculum.name={job['arm']}",
                 f"curriculum.seed={job['seed']}", *job["overrides"]]
    cfg = resolve_config("ddpg", ENV, get_agent("ddpg").config_cls, overrides=overrides)
    run_dir = Path(job["out"]) / job["name"] / f"seed{job['seed']}"
    start = time.perf_counter()
    make_trainer(cfg, run_dir, verbose=False).train()
    result = {**job, "seconds": time.perf_counter() - start}
    with open(run_dir / "progress.csv", newline="") as f:
        result["curve"] = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    state, _ = load_checkpoint(run_dir / "checkpoints", with_buffer=False)
    cur = state["extensions"].get("goals", {}).get("curriculum") or {}
    if "snapshots" in cur and len(cur["snapshot_steps"]):
        result["snapshots"] = {int(t): x.tolist() for t, x in zip(cur["snapshot_steps"], cur["snapshots"], strict=True)}
    return result


def jobs_for(args: argparse.Namespace) -> list[dict]:
    common = [f"train.total_steps={args.steps}", f"train.eval_every={args.eval_every}",
              f"curriculum.snapshot_every={args.steps // 6}"]
    jobs = []
    for seed in range(args.seeds):
        for arm in ARMS:
            jobs.append({"name": f"coverage_{arm}", "arm": arm, "seed": seed, "overrides": common})
    switch = args.recovery_steps // 2
    recovery = [f"train.total_steps={args.recovery_steps}", f"train.eval_every={args.eval_every}",
                f"curriculum.snapshot_every={args.recovery_steps // 6}", f"env_kwargs.switch_maze_at={switch}",
                "env_kwargs.switch_to=multiroom_moved"]
    for seed in range(args.recovery_seeds):
        for arm in ("svgg", "uniform_box"):
            jobs.append({"name": f"recovery_{arm}", "arm": arm, "seed": seed, "overrides": recovery,
                         "switch": switch})
    for job in jobs:
        job["out"] = args.out
    return jobs


def curves(results: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    runs = sorted((r for r in results if r["name"] == name), key=lambda r: r["seed"])
    rows = [[row for row in r["curve"] if "success_coverage" in row] for r in runs]
    n = min(len(x) for x in rows)
    return np.array([row["step"] for row in rows[0][:n]]), np.array([[row["success_coverage"] for row in x[:n]]
                                                                       for x in rows])


def plot(results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_energy.envs.point_maze import Maze

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, prefix in zip(axes, ("coverage", "recovery"), strict=True):
        for i, arm in enumerate(ARMS):
            if not any(r["name"] == f"{prefix}_{arm}" for r in results):
                continue
            steps, cov = curves(results, f"{prefix}_{arm}")
            ax.plot(steps, cov.mean(0), color=f"C{i}", label=f"{arm} ({len(cov)} seeds)")
            ax.fill_between(steps, cov.min(0), cov.max(0), color=f"C{i}", alpha=0.2)
        switch = next((r["switch"] for r in results if r["name"].startswith(prefix) and "switch" in r), None)
        if switch:
            ax.axvline(switch, color="k", ls=":", label="maze changed")
        ax.set(xlabel="env steps", ylabel="success coverage", ylim=(0, 1.02),
               title="MultiRoom: coverage" if prefix == "coverage" else "MultiRoom: recovery after a door moves")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "svgg_coverage.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for prefix in ("coverage", "recovery"):
        run = next((r for r in results if r["name"] == f"{prefix}_svgg" and r.get("snapshots")), None)
        if run is None:
            continue
        snaps = sorted((int(k), v) for k, v in run["snapshots"].items())  # JSON keys are strings
        fig, axes = plt.subplots(1, len(snaps), figsize=(2.6 * len(snaps), 2.8))
        for ax, (step, x) in zip(np.atleast_1d(axes), snaps, strict=True):
            switched = "switch" in run and step >= run["switch"]
            maze = Maze("multiroom_moved" if switched else "multiroom")
            for r, c in zip(*np.nonzero(~maze.free), strict=True):  # wall blocks, in goal coordinates
                ax.add_patch(plt.Rectangle((c - maze.start_col - 0.5, r - maze.start_row - 0.5), 1, 1, color="0.6"))
            ax.add_patch(plt.Rectangle(tuple(maze.low), *(maze.high - maze.low), fill=False, color="k"))
            x = np.array(x)
            ax.scatter(x[:, 0], x[:, 1], s=6, color="C0")
            ax.set(xlim=(maze.low[0] - 1, maze.high[0] + 1), ylim=(maze.high[1] + 1, maze.low[1] - 1),
                   title=f"step {step}", xticks=[], yticks=[])
        fig.suptitle(f"SVGG particles ({prefix} run, seed {run['seed']})")
        fig.tight_layout()
        paths.append(out / f"svgg_particles_{prefix}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def report(results: list[dict]) -> tuple[list[str], float | None]:
    lines = ["MultiRoom success coverage (mean ± std over seeds; 'best' = the best evaluation of each run)",
             f"{'curriculum':>14} {'final':>16} {'best':>16}"]
    finals = {}
    for arm in ARMS:
        if not any(r["name"] == f"coverage_{arm}" for r in results):
            continue
        _, cov = curves(results, f"coverage_{arm}")
        finals[arm] = cov[:, -1]
        lines.append(f"{arm:>14} {cov[:, -1].mean():>8.3f} ± {cov[:, -1].std():<5.3f} "
                     f"{cov.max(1).mean():>8.3f} ± {cov.max(1).std():<5.3f}")
    gap = None
    if "svgg" in finals and "uniform_box" in finals:
        gap = float(finals["svgg"].mean() - finals["uniform_box"].mean())
        lines.append(f"svgg - uniform_box (naive): {gap:+.3f}")
    if "svgg" in finals and "uniform_valid" in finals:
        lines.append(f"svgg - uniform_valid (oracle): {finals['svgg'].mean() - finals['uniform_valid'].mean():+.3f}")
    for arm in ("svgg", "uniform_box"):
        runs = [r for r in results if r["name"] == f"recovery_{arm}"]
        if not runs:
            continue
        steps, cov = curves(results, f"recovery_{arm}")
        switch = runs[0]["switch"]
        before = cov[:, steps <= switch][:, -1]
        after = cov[:, steps > switch]
        lines.append(f"recovery {arm}: coverage before the change {before.mean():.3f}, lowest after "
                     f"{after.min(1).mean():.3f}, final {cov[:, -1].mean():.3f} ({len(runs)} seeds)")
    return lines, gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recovery-seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--recovery-steps", type=int, default=80_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (one thread each)")
    parser.add_argument("--out", default="runs/reproduce_svgg")
    parser.add_argument("--plot", help="folder for the figures")
    parser.add_argument("--replot", action="store_true", help="only redraw the figures from OUT/results.json")
    args = parser.parse_args()
    if args.replot:
        results = json.loads((Path(args.out) / "results.json").read_text())
        print("\n".join(report(results)[0]))
        for path in plot(results, Path(args.plot or "docs/img/svgg")):
            print(f"wrote {path}")
        return

    jobs = jobs_for(args)
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    budget = time.perf_counter() - start
    print(f"{len(jobs)} runs in {budget / 60:.1f} min ({args.jobs} processes, "
          f"{sum(r['seconds'] for r in results) / 60:.1f} process-minutes)\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results))
    lines, gap = report(results)
    print("\n".join(lines))
    if args.plot:
        for path in plot(results, Path(args.plot)):
            print(f"wrote {path}")
    if gap is not None:
        print(f"svgg - uniform_box final success coverage: {gap:+.3f}")


if __name__ == "__main__":
    main()
