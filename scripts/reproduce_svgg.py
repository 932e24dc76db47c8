"""Reproduce the SVGG comparison (Castanet, Sigaud & Lamprier, ICML 2023; SVGG digest §1-§6) as the authors'
code sets it up: SVGG against its baselines MEGA and RANDOM in the paper's thin-wall point mazes, and the
recovery after a maze change.

Every run is an ordinary ``rl-energy train --agent ddpg`` run (goal-conditioned DDPG + HER,
``configs/ddpg/rl_energy__PointMaze.yaml``) in ``OUT/trials/<name>``, brought to its end by
:func:`rl_energy.sweep.run_local`: re-running the script skips finished runs and resumes interrupted ones from
their last checkpoint, so the reproduction can be run in parts (``--only``, or Ctrl-C and run again).

1. **Coverage** (the paper's claim: SVGG's success coverage ≥ MEGA's and RANDOM's at equal steps): SVGG,
   MEGA and RANDOM, ``--seeds`` seeds each, ``--steps`` env steps on ``square_pbcs_1`` and ``snake``. Success
   coverage = the deterministic policy's success over 10 fixed goals in each cell (digest §5), every
   ``--eval-every`` steps. References (1 seed): goals uniform over the bounding box and over the valid cells
   (in these mazes every cell is reachable, so the two nearly coincide; the paper does not compare to them).
2. **Recovery** (the paper's claim: after a maze change, SVGG recovers faster than MEGA): the SVGG and MEGA
   runs on ``square_pbcs_1`` go on for ``--recovery-steps`` more steps in ``square_pbcs_1_changed`` (a passage
   closes, another opens; the route to the maze's second half reverses). Their coverage before the change
   is the coverage experiment's.

The budget against the paper's: 1M env steps per run (paper 5M), 32 envs, one DDPG update of batch 256
per 32 env steps (paper: one update of batch 2000 per env step), 2 x 256 ReLU nets (paper 3 x 512
LayerNorm/GELU); as in the paper's agent, TD targets clamped to [-50, 0] and successful transitions
terminal (the maze config). SVGG, MEGA and RANDOM keep the paper's settings (digest §2, the issue's
facts), with the SVM's γ at the code's 0.5.

    python scripts/reproduce_svgg.py --jobs 2 --plot docs/img/svgg
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

ARMS = ("svgg", "mega", "random")
REFERENCES = ("uniform_box", "uniform_valid")
MAZES = {"square_pbcs_1": "rl_energy/PointMaze-SquarePBCS1-v0", "snake": "rl_energy/PointMaze-Snake-v0"}
RECOVERY_MAZE, CHANGED = "square_pbcs_1", "square_pbcs_1_changed"
RECOVERY_ARMS = ("svgg", "mega")
NUM_ENVS = 32
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Student-t 97.5 % quantiles by degrees of freedom (95 % CIs of a mean over a few seeds)."""


def common_settings(args: argparse.Namespace) -> dict:
    return {
        "train.num_envs": NUM_ENVS, "train.utd": 1 / NUM_ENVS, "train.batch_size": 256,
        "train.learning_starts": 5000, "train.buffer_size": 1_000_000, "train.eval_every": args.eval_every,
        "train.eval_episodes": 10, "train.log_every": 20_000, "train.checkpoint_every": 100_000,
        "train.torch_threads": 1, "agent.hidden": [256, 256], "goals.coverage_goals_per_cell": 10,
        "curriculum.svm_gamma": 0.5, "curriculum.snapshot_every": 250_000,
    }


def trials_for(args: argparse.Namespace) -> list:
    """Every run: the compared arms seed-major (a partial reproduction has every arm at its first seeds), then
    the references."""
    from rl_energy.sweep import Trial

    base = common_settings(args)
    switch = args.steps // NUM_ENVS + 1  # each env's step count: the change comes right after --steps
    out = []
    plan = [(seed, arm) for seed in range(args.seeds) for arm in ARMS]
    plan += [(seed, arm) for seed in range(args.reference_seeds) for arm in REFERENCES]
    for seed, arms in itertools.groupby(plan, key=lambda p: p[0]):
        arms = [a for _, a in arms]
        for maze, env_id in MAZES.items():
            for arm in arms:
                settings = {**base, "curriculum.name": arm, "curriculum.seed": seed, "train.total_steps": args.steps}
                if maze == RECOVERY_MAZE and arm in RECOVERY_ARMS and args.recovery_steps:
                    settings.update({"train.total_steps": args.steps + args.recovery_steps,
                                     "env_kwargs.switch_maze_at": switch, "env_kwargs.switch_to": CHANGED})
                out.append(Trial("ddpg", env_id, seed, tuple(sorted(settings.items())), ("curriculum.name",)))
    return [t for t in out if not args.only or any(part in t.name for part in args.only)]


def read_run(run_dir: Path) -> dict:
    """The coverage curve of one run and, from its last checkpoint, the curriculum's snapshots."""
    rows = []
    if (run_dir / "progress.csv").exists():
        with open(run_dir / "progress.csv", newline="") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    curve = [(int(r["step"]), r["success_coverage"]) for r in rows if "success_coverage" in r]
    result = {"curve": curve, "snapshots": {}}
    try:
        from rl_energy.checkpoint import load_checkpoint

        state, _ = load_checkpoint(run_dir / "checkpoints", with_buffer=False)
    except (FileNotFoundError, OSError, ValueError):
        return result
    cur = state["extensions"].get("goals", {}).get("curriculum") or {}
    if len(cur.get("snapshot_steps", [])):
        result["snapshots"] = {int(t): np.asarray(x).tolist()
                               for t, x in zip(cur["snapshot_steps"], cur["snapshots"], strict=True)}
    return result


def collect(args: argparse.Namespace, trials: list) -> dict:
    from rl_energy.sweep import read_status, trial_dir

    out: dict = {}
    for t in trials:
        arm = dict(t.settings)["curriculum.name"]
        maze = next(m for m, e in MAZES.items() if e == t.env_id)
        run_dir = trial_dir(Path(args.out), t)
        run = read_run(run_dir)
        status = read_status(run_dir)
        if status.get("status") == "done":
            run["minutes"] = status["seconds"] / 60
            run["steps"] = dict(t.settings)["train.total_steps"]
        if run["curve"]:
            out.setdefault(maze, {}).setdefault(arm, {})[t.seed] = run
    return out


def runtime_lines(results: dict) -> list[str]:
    """Wall-clock per finished run (the last invocation that finished it; two runs share the 2 cores)."""
    lines = ["Wall-clock per run (min; mean over finished seeds, two runs at a time on the 2-core machine):"]
    for maze, arms in results.items():
        parts = []
        for arm, runs in arms.items():
            done = [r for r in runs.values() if "minutes" in r]
            if done:
                parts.append(f"{arm} {np.mean([r['minutes'] for r in done]):.1f} "
                             f"({done[0]['steps'] / 1e6:g}M steps)")
        lines.append(f"  {maze}: " + ", ".join(parts))
    return lines


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (nan for one value)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v)))


def coverage_at(run: dict, step: int) -> float | None:
    """Coverage at the last evaluation at or before ``step``."""
    before = [c for s, c in run["curve"] if s <= step]
    return before[-1] if before else None


def report(results: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    lines, headline = [], {}
    steps = args.steps
    lines.append(f"Success coverage at {steps:,} env steps (mean ± 95% t-CI over seeds; per seed in brackets)")
    lines.append(f"{'maze':>14} {'curriculum':>14} {'coverage':>18}  seeds")
    for maze, arms in results.items():
        for arm in ARMS + REFERENCES:
            runs = arms.get(arm, {})
            vals = [v for r in runs.values() if (v := coverage_at(r, steps)) is not None
                    and r["curve"][-1][0] >= steps]
            if not vals:
                continue
            m, h = mean_ci(vals)
            ci = "" if math.isnan(h) else f" ± {h:.3f}"
            lines.append(f"{maze:>14} {arm:>14} {m:>8.3f}{ci:<10}  [{', '.join(f'{v:.3f}' for v in vals)}]")
            headline[(maze, arm)] = vals
    for maze in results:
        for other in ("mega", "random"):
            a, b = headline.get((maze, "svgg")), headline.get((maze, other))
            if a and b:
                lines.append(f"{maze}: svgg - {other} = {np.mean(a) - np.mean(b):+.3f}")
    rec = results.get(RECOVERY_MAZE, {})
    for arm in RECOVERY_ARMS:
        runs = [r for r in rec.get(arm, {}).values() if r["curve"][-1][0] > steps]
        if not runs:
            continue
        before = [coverage_at(r, steps) for r in runs]
        after = [[c for s, c in r["curve"] if s > steps] for r in runs]
        lowest = [min(a) for a in after]
        final = [a[-1] for a in after]
        back = [next((s - steps for s, c in r["curve"] if s > steps and c >= 0.9 * b), None)
                for r, b in zip(runs, before, strict=True)]
        auc = [float(np.mean(a)) for a in after]
        lines.append(f"recovery {arm} ({len(runs)} seeds): before {np.mean(before):.3f}, lowest after "
                     f"{np.mean(lowest):.3f}, mean after the change {np.mean(auc):.3f}, final {np.mean(final):.3f}, "
                     f"steps to 90% of before: {', '.join('never' if b is None else f'{b:,}' for b in back)}")
        headline[("recovery", arm)] = auc
    return lines, headline


def calibration(run_dir: Path, maze_name: str, seeds: int = 4) -> dict:
    """SVGG's success predictor against the trained policy at the run's last checkpoint: ``D(s0, g)`` over the
    coverage goals (10 per cell) beside the deterministic policy's success rate there (``seeds`` starts per
    goal), in bins of ``D``; and ``D`` and the realised success at the final particles. (The predictor learns
    the exploring policy's success on its own goals; the deterministic policy is the evaluated one.)"""
    import torch

    from rl_energy.checkpoint import load_checkpoint
    from rl_energy.curricula import SuccessPredictor
    from rl_energy.envs.point_maze import PointMazeEnv
    from rl_energy.goals import success_coverage
    from rl_energy.trainer.steps import load_trained_agent

    agent, cfg, envs, step = load_trained_agent(run_dir, torch.device("cpu"))
    envs.close()
    state, _ = load_checkpoint(run_dir / "checkpoints", with_buffer=False)
    cur = state["extensions"]["goals"]["curriculum"]
    d = int(cur["start_dim"])
    predictor = SuccessPredictor(d + 2, cfg.curriculum.predictor_hidden)
    predictor.load_state_dict(cur["predictor"])
    start = cur["history"].numpy()[:, :d].mean(0)
    env = PointMazeEnv(maze_name)
    goals = env.maze.coverage_goals(10, seed=cfg.train.eval_seed)
    particles = cur["particles"].numpy().astype(np.float64)

    def predicted(g: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.concatenate([np.broadcast_to(start, (len(g), d)), g], 1), dtype=torch.float32)
            return predictor(x).numpy()

    def success(g: np.ndarray) -> np.ndarray:
        return np.mean([success_coverage(agent, env, g, 30, seed) for seed in range(seeds)], 0)

    pred, real = predicted(goals), success(goals)
    bins = []
    for lo, hi in ((0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.01)):
        m = (pred >= lo) & (pred < hi)
        if m.any():
            bins.append((lo, min(hi, 1.0), int(m.sum()), float(pred[m].mean()), float(real[m].mean())))
    valid = env.maze.is_valid(particles)
    d_particles = predicted(particles)
    return {"particles_intermediate": float(np.mean((d_particles > 0.2) & (d_particles < 0.8))), "step": step,
            "brier": float(np.mean((pred - real) ** 2)), "bins": bins,
            "intermediate_goals": float(np.mean((real > 0) & (real < 1))),
            "particles_valid": float(valid.mean()), "particles_D": float(d_particles.mean()),
            "particles_success": float(success(particles[valid]).mean()) if valid.any() else float("nan")}


def calibration_lines(args: argparse.Namespace, trials: list) -> list[str]:
    from rl_energy.sweep import read_status, trial_dir

    lines = []
    for t in trials:
        settings = dict(t.settings)
        run_dir = trial_dir(Path(args.out), t)
        if settings["curriculum.name"] != "svgg" or read_status(run_dir).get("status") != "done":
            continue
        maze = next(m for m, e in MAZES.items() if e == t.env_id)
        if "env_kwargs.switch_to" in settings:
            maze = settings["env_kwargs.switch_to"]
        c = calibration(run_dir, maze)
        lines.append(f"SVGG predictor at step {c['step']:,} on {maze} (seed {t.seed}): Brier {c['brier']:.3f}; "
                     f"goals the policy reaches sometimes but not always {c['intermediate_goals']:.2f}; "
                     f"particles in the maze {c['particles_valid']:.2f}, mean D there {c['particles_D']:.2f} "
                     f"({c['particles_intermediate']:.2f} with 0.2 < D < 0.8), realised success there "
                     f"{c['particles_success']:.2f}")
        lines.append("    D bin: goals, mean D, realised success | " + " | ".join(
            f"[{lo:.1f},{hi:.1f}): {n}, {p:.2f}, {r:.2f}" for lo, hi, n, p, r in c["bins"]))
    return lines


def plot(results: dict, args: argparse.Namespace, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_energy.envs.point_maze import Maze

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (maze, arms) in zip(axes[0], results.items(), strict=True):
        for i, arm in enumerate(ARMS + REFERENCES):
            runs = list(arms.get(arm, {}).values())
            if not runs:
                continue
            n = min(len(r["curve"]) for r in runs)
            x = np.array([s for s, _ in runs[0]["curve"][:n]])
            y = np.array([[c for _, c in r["curve"][:n]] for r in runs])
            ls = "--" if arm in REFERENCES else "-"
            ax.plot(x, y.mean(0), ls=ls, color=f"C{i}", label=f"{arm} ({len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=f"C{i}", alpha=0.15)
        if maze == RECOVERY_MAZE and args.recovery_steps:
            ax.axvline(args.steps, color="k", ls=":", label=f"maze changed to {CHANGED}")
        ax.set(xlabel="env steps", ylabel="success coverage", ylim=(0, 1.02), title=maze)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "svgg_coverage.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for arm in ("svgg", "mega"):
        run = next((r for r in results.get(RECOVERY_MAZE, {}).get(arm, {}).values() if r["snapshots"]), None)
        if run is None:
            continue
        snaps = sorted(run["snapshots"].items())
        fig, axes = plt.subplots(1, len(snaps), figsize=(2.7 * len(snaps), 2.9), squeeze=False)
        for ax, (step, x) in zip(axes[0], snaps, strict=True):
            maze = Maze(CHANGED if step > args.steps else RECOVERY_MAZE)
            draw_walls(ax, maze)
            x = np.array(x)
            ax.scatter(x[:, 0], x[:, 1], s=6, color="C0" if arm == "svgg" else "C1")
            ax.set(xlim=(maze.low[0] - 0.6, maze.high[0] + 0.6), ylim=(maze.high[1] + 0.6, maze.low[1] - 0.6),
                   title=f"step {step:,}", xticks=[], yticks=[])
        what = "particles" if arm == "svgg" else "last 100 chosen goals"
        fig.suptitle(f"{arm.upper()} {what} on {RECOVERY_MAZE} (changed after {args.steps:,} steps)")
        fig.tight_layout()
        paths.append(out / f"svgg_goals_{arm}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def draw_walls(ax, maze) -> None:  # noqa: ANN001
    """The maze's walls (thin walls and block edges) in goal coordinates."""
    oc, orow = maze.start_col, maze.start_row
    for r, c in zip(*np.nonzero(maze.wall_x), strict=True):
        ax.plot([c - oc - 0.5] * 2, [r - orow - 0.5, r - orow + 0.5], color="k", lw=1.5)
    for r, c in zip(*np.nonzero(maze.wall_y), strict=True):
        ax.plot([c - oc - 0.5, c - oc + 0.5], [r - orow - 0.5] * 2, color="k", lw=1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference-seeds", type=int, default=1, help="seeds of the uniform references")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--recovery-steps", type=int, default=500_000, help="0: no recovery runs")
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--only", nargs="*", default=[], help="run only the runs whose name holds one of these")
    parser.add_argument("--out", default="runs/reproduce_svgg")
    parser.add_argument("--plot", help="folder for the figures")
    parser.add_argument("--report-only", action="store_true", help="only read the runs done so far")
    parser.add_argument("--calibration", action="store_true",
                        help="also check SVGG's success predictor against the trained policies (finished runs)")
    args = parser.parse_args()
    for key in ("seeds", "steps", "eval_every", "jobs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    for key in ("reference_seeds", "recovery_steps"):
        if getattr(args, key) < 0:
            parser.error(f"--{key.replace('_', '-')} must be >= 0")
    if args.steps % (NUM_ENVS * args.eval_every // math.gcd(NUM_ENVS, args.eval_every)):
        parser.error(f"--steps must be a multiple of {NUM_ENVS} and of --eval-every (an evaluation at the change)")

    from rl_energy.sweep import run_local

    trials = trials_for(args)
    out = Path(args.out)
    if not args.report_only:
        print(f"{len(trials)} runs in {out}/trials ({args.jobs} at a time; finished ones are skipped)", flush=True)
        start = time.time()

        def say(outcome) -> None:  # noqa: ANN001
            print(f"  {outcome.status:>11} {outcome.trial.name} ({outcome.seconds / 60:.1f} min)", flush=True)
            if outcome.status == "failed":
                print(outcome.log_tail, flush=True)

        outcomes = run_local(trials, out, jobs=args.jobs, report=say)
        ran = [o for o in outcomes if o.status == "done"]
        print(f"wall {(time.time() - start) / 60:.1f} min; {len(ran)} runs ran now, "
              f"{sum(o.seconds for o in ran) / 60:.1f} process-minutes, "
              f"{np.mean([o.seconds for o in ran]) / 60 if ran else math.nan:.1f} min per run\n", flush=True)
    results = collect(args, trials_for(argparse.Namespace(**{**vars(args), "only": []})))
    lines, headline = report(results, args)
    lines += runtime_lines(results)
    if args.calibration:
        lines += calibration_lines(args, trials_for(argparse.Namespace(**{**vars(args), "only": []})))
    print("\n".join(lines))
    (out / "results.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({m: {a: {str(s): r for s, r in runs.items()}
                                                      for a, runs in arms.items()} for m, arms in results.items()}))
    if args.plot:
        for path in plot(results, args, Path(args.plot)):
            print(f"wrote {path}")
    gaps = [np.mean(headline[(m, "svgg")]) - max(np.mean(headline[(m, o)]) for o in ("mega", "random"))
            for m in MAZES if all((m, a) in headline for a in ARMS)]
    if gaps:
        print(f"svgg - best baseline (MEGA, RANDOM) success coverage, worst maze: {min(gaps):+.3f}")


if __name__ == "__main__":
    from rl_energy.errors import run_script

    run_script(main)
