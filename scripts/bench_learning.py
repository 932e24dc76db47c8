"""Learning curves of several agents over several seeds on one env: CSV tables plus a plot.

Each (agent, seed) is an ordinary ``rl-energy train`` run in ``OUT/<agent>_s<seed>`` with the agent's
shipped config for the env and ``--total-steps STEPS``, so every run is logged, checkpointed and can
be resumed: re-running the same command skips finished runs and resumes interrupted ones. ``--jobs``
runs that many trainings at once, each with ``train.torch_threads = cores / jobs``.

Outputs in ``OUT``:

* ``returns.csv``: agent, seed, step, eval_return (the periodic deterministic evaluations);
* ``summary.csv``: agent, step, mean over seeds and the 95% percentile-bootstrap CI of that mean (rliable's
  stratified bootstrap, :func:`rl_energy.plotting.bootstrap_ci`; the ``bench`` extra);
* ``curves.png``: the means with their CI bands.

The last line gives the first agent's mean final return, e.g.
``ebflow mean eval return at 100000 steps: 385.2``.

    python scripts/bench_learning.py --env Hopper-v4 --steps 100000 --seeds 3 --agents ebflow,sac
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rl_energy.plotting import aggregate, bootstrap_ci, plot_runs, read_curve


def run_one(
    agent: str, env: str, seed: int, steps: int, run_dir: Path, threads: int, extra: list[str]
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rl_energy.cli", "train", "--total-steps", str(steps), "--quiet"]
    if (run_dir / "checkpoints").exists():  # resume as configured (config.yaml holds seed, threads, overrides)
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += ["--agent", agent, "--env", env, "--seed", str(seed), "--run-dir", str(run_dir),
                "--set", f"train.torch_threads={threads}"]
        for item in extra:
            cmd += ["--set", item]
    with (run_dir.parent / f"{run_dir.name}.log").open("a") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def finished(run_dir: Path, steps: int) -> bool:
    if not (run_dir / "progress.csv").is_file():
        return False
    done, _ = read_curve(run_dir)
    return len(done) > 0 and done[-1] >= steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v4")
    p.add_argument("--agents", default="ebflow,sac", help="comma-separated agent names")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    p.add_argument("--out", default=None, help="output folder (default runs/bench_learning/<env>)")
    p.add_argument("--set", dest="extra", action="append", default=[], help="override for every run")
    args = p.parse_args()
    agents = [a for a in args.agents.split(",") if a]
    out = Path(args.out or f"runs/bench_learning/{args.env.replace('/', '__')}")
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))

    todo = [(a, s) for a in agents for s in range(args.seeds)]
    pending = [(a, s) for a, s in todo if not finished(out / f"{a}_s{s}", args.steps)]
    running: list[tuple[str, int, subprocess.Popen, float]] = []
    print(f"{args.env}: {len(todo)} runs ({len(todo) - len(pending)} already finished), {args.jobs} at a time, "
          f"{threads} thread(s) each; logs in {out}", flush=True)
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            a, s = pending.pop(0)
            running.append((a, s, run_one(a, args.env, s, args.steps, out / f"{a}_s{s}", threads, args.extra),
                            time.perf_counter()))
        time.sleep(2.0)
        for item in list(running):
            a, s, proc, start = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                if proc.returncode != 0:
                    failed.append(f"{a}_s{s}")
                print(f"  {a} seed {s}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        sys.exit(f"runs failed: {', '.join(failed)} (see their .log files in {out})")

    with (out / "returns.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "seed", "step", "eval_return"])
        for a, s in todo:
            for step, ret in zip(*read_curve(out / f"{a}_s{s}"), strict=True):
                w.writerow([a, s, int(step), f"{ret:.2f}"])
    finals = {}
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "step", "mean", "ci95_low", "ci95_high", "seeds"])
        for a in agents:
            grid, ys = aggregate([read_curve(out / f"{a}_s{s}") for s in range(args.seeds)])
            lo, hi = bootstrap_ci(ys)
            for i, step in enumerate(grid):
                w.writerow([a, int(step), f"{ys[:, i].mean():.2f}", f"{lo[i]:.2f}", f"{hi[i]:.2f}", len(ys)])
            finals[a] = (int(grid[-1]), ys[:, -1], lo[-1], hi[-1])
    plot_runs([out / f"{a}_s{s}" for a, s in todo], out / "curves.png", band="ci95")
    print(f"{'agent':8s} {'step':>8s} {'mean':>9s} {'95% CI':>20s}  per seed")
    for a, (step, vals, lo, hi) in finals.items():
        print(f"{a:8s} {step:8d} {vals.mean():9.1f} {f'[{lo:.1f}, {hi:.1f}]':>20s}  "
              + ", ".join(f"{v:.1f}" for v in vals))
    print(f"wrote {out / 'returns.csv'}, {out / 'summary.csv'}, {out / 'curves.png'}")
    first = agents[0]
    print(f"{first} mean eval return at {finals[first][0]} steps: {float(np.mean(finals[first][1])):.1f}")


if __name__ == "__main__":
    main()
