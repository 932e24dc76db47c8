"""Benchmark the goal curricula's per-episode cost and the point maze's step, beside references run in the same
process.

1. **MEGA's goal choice** (:class:`rl_energy.curricula.MEGA`): per reset, 100 candidates drawn from the achieved
   goals, their Q values, the cutoff and the lowest density under a Gaussian KDE (bandwidth 0.1, standardised)
   of 10k achieved goals, refitted at each env step that has a reset (32 envs reset together). Ours bins the
   KDE (:class:`rl_energy.curricula.BinnedKDE`); the reference is the MEGA code's estimator, scikit-learn's
   ``KernelDensity`` fitted on the same 10k goals and scoring the same candidates, once per reset step too.
2. **SVGG's step** (one SVGD step of 100 particles through the success predictor and the one-class SVM).
3. **The maze step**: the env's scalar motion (:meth:`Maze.move_one`) against the vectorised ``Maze.move`` on
   one point (what the env used before).

    python scripts/bench_curricula.py

The last line is the MEGA speed-up over scikit-learn's KDE.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def time_per_call(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resets", type=int, default=320, help="goal choices timed (32 per env step)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.resets < 32 or args.threads < 1:
        parser.error("--resets must be >= 32 and --threads >= 1")

    import torch
    from sklearn.neighbors import KernelDensity

    from rl_energy.curricula import MEGA, SVGG, CurriculumConfig
    from rl_energy.envs.point_maze import Maze, PointMazeEnv

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    maze = Maze("square_pbcs_1")
    cfg = CurriculumConfig(name="mega")
    mega = MEGA(cfg, PointMazeEnv("square_pbcs_1"))
    w = torch.nn.Linear(4, 1)

    def q_fn(start: np.ndarray, goals: np.ndarray) -> np.ndarray:  # a critic-sized stand-in: one linear map
        with torch.no_grad():
            return -torch.nn.functional.softplus(w(torch.as_tensor(np.concatenate(
                [np.broadcast_to(start, goals.shape), goals], 1)))).squeeze(-1).numpy()

    mega.bind_values(q_fn, 0.98, 30)
    for _ in range(3000):
        mega.record_episode(np.zeros(2), np.zeros(2), bool(rng.random() < 0.5), maze.sample_valid(31, rng))

    def ours() -> None:
        for i in range(args.resets):
            if i % 32 == 0:
                mega.on_step()
            mega.sample_goal(rng, np.zeros(2))

    kde = KernelDensity(kernel="gaussian", bandwidth=cfg.kde_bandwidth)

    def reference() -> None:
        for i in range(args.resets):
            candidates = mega.store[rng.integers(mega.count, size=cfg.mega_candidates)].astype(np.float64)
            q_fn(np.zeros(2, dtype=np.float32), candidates.astype(np.float32))
            if i % 32 == 0:
                sample = mega.store[rng.integers(mega.count, size=cfg.kde_samples)].astype(np.float64)
                mean, std = sample.mean(0), sample.std(0) + 1e-4
                kde.fit((sample - mean) / std)
            int(np.argmin(kde.score_samples((candidates - mean) / std)))

    t_ours = time_per_call(ours, 3) / args.resets
    t_ref = time_per_call(reference, 1) / args.resets
    print(f"MEGA goal choice: ours {t_ours * 1e3:.3f} ms/reset, sklearn KernelDensity {t_ref * 1e3:.2f} ms/reset")

    svgg = SVGG(CurriculumConfig(name="svgg", svm_gamma=0.5, predictor_epochs=5), PointMazeEnv("square_pbcs_1"))
    for _ in range(300):
        g = maze.sample_valid(1, rng)[0]
        svgg.record_episode(np.zeros(2), g, bool(np.linalg.norm(g) < 2), maze.sample_valid(31, rng))
    svgg.refit()
    t_svgd = time_per_call(lambda: svgg.particles.step(svgg.log_density), 200)
    t_refit = time_per_call(svgg.refit, 2)
    print(f"SVGG: SVGD step {t_svgd * 1e3:.2f} ms (every 20 env steps: {t_svgd / 20 * 1e6:.0f} µs per env step), "
          f"predictor + SVM refit {t_refit:.2f} s (every 4,000 env steps)")

    pos, act = np.array([0.1, 0.2]), np.array([0.5, -0.3])
    t_one = time_per_call(lambda: maze.move_one(pos[0], pos[1], act[0], act[1]), 20000)
    t_vec = time_per_call(lambda: maze.move(pos[None], act[None]), 20000)
    env = PointMazeEnv("square_pbcs_1")
    env.reset(seed=0)
    actions = rng.uniform(-0.95, 0.95, size=(20000, 2))
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    t_env = (time.perf_counter() - start) / len(actions)
    print(f"maze step: move_one {t_one * 1e6:.2f} µs, vectorised move on one point {t_vec * 1e6:.1f} µs "
          f"({t_vec / t_one:.0f}x); env.step {t_env * 1e6:.1f} µs ({1 / t_env:,.0f} steps/s)")
    print(f"mega/sklearn-kde goal choice speed-up: {t_ref / t_ours:.1f}")


if __name__ == "__main__":
    from rl_energy.errors import run_script

    run_script(main)
