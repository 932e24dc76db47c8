#!/usr/bin/env python
"""Overhead of `rl-energy sweep`'s Ray backend beside the local process pool: the same 8 short trials (sac and
ddpg on Pendulum-v1, 2 batch sizes x 2 seeds, 1,000 steps each, one torch thread per trial) run by each backend
into fresh sweep directories, wall time from the command's start to its end (Ray's local instance started and
stopped inside it). Both backends run the same subprocess per trial, so the difference is Ray's start-up and
scheduling.

    python scripts/bench_sweep.py             # ≈ 2 min on 2 cores
    python scripts/bench_sweep.py --steps 400 # shorter trials (the overhead weighs more)

The last line is Ray's wall time over the local pool's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rl_energy.errors import require_extra, run_script

SPEC = """agents: [sac, ddpg]
envs: [Pendulum-v1]
seeds: [0, 1]
set: {{train.total_steps: {steps}, train.learning_starts: 100, train.eval_every: {steps},
      train.checkpoint_every: {steps}, train.eval_episodes: 1, agent.hidden: [32, 32]}}
grid: {{train.batch_size: [32, 64]}}
"""


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rl_energy.cli", "sweep", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the sweep failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="environment steps per trial")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="local pool size (default: the cores)")
    args = parser.parse_args()
    if args.steps < 200:
        parser.error(f"--steps must be >= 200, got {args.steps}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    require_extra("ray", "scripts/bench_sweep.py")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(SPEC.format(steps=args.steps))
        local = timed([str(spec), "--out", f"{tmp}/local", "--jobs", str(args.jobs)])
        ray = timed([str(spec), "--out", f"{tmp}/ray", "--backend", "ray"])
    print(f"8 trials x {args.steps} steps on {os.cpu_count()} cores: local pool ({args.jobs} jobs) {local:.1f} s, "
          f"ray (local instance, 1 CPU per trial) {ray:.1f} s")
    print(f"ray/local sweep wall-time ratio: {ray / local:.2f}")


if __name__ == "__main__":
    run_script(main)
