"""Speed of the bubble env's physics: control steps per second of ``rl_energy/BubblePosition-v0``.

Three figures, measured in one process, each the median of ``--repeats`` alternating repeats:

* **single env**: ``env.step`` of one :class:`~rl_energy.envs.bubble.BubblePositionEnv` (random
  amplitudes, autoreset);
* **vector env**: ``gym.make_vec(..., num_envs=64)``, one kernel call for all sub-envs; its aggregate
  rate (sub-env steps per second) should scale with the cores;
* **reference**: the same control steps integrated by ``scipy.integrate.solve_ivp`` (RK45, the same
  tolerances, state and acoustic phase carried over), with the right-hand side compiled by numba (so
  the reference pays only for scipy's stepping, not for a Python right-hand side).

    python scripts/bench_bubble.py                   # paper's current setting: 10 cycles per action
    python scripts/bench_bubble.py --cycles 50       # older setting

The last line is the single env's speed-up over the reference, e.g.
``bubble single-env/solve_ivp speed-up: 31.2``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

import rl_energy  # noqa: F401  (registers rl_energy/BubblePosition-v0)
from rl_energy.envs.bubble import PA_PER_BAR, BubblePositionEnv
from rl_energy.envs.bubble_dynamics import BubbleParams, _rhs


def single_env_rate(env: BubblePositionEnv, actions: np.ndarray) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for a in actions:
        *_, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def vector_env_rate(envs: gym.vector.VectorEnv, actions: np.ndarray) -> float:
    envs.reset(seed=0)
    start = time.perf_counter()
    for a in actions:
        envs.step(a)  # NEXT_STEP autoreset: finished sub-envs reset at their next step
    return actions.shape[0] * actions.shape[1] / (time.perf_counter() - start)


def reference_rate(actions: np.ndarray, cycles: float, rtol: float, atol: float) -> float:
    from scipy.integrate import solve_ivp

    C, out = BubbleParams().constants(), np.empty(4)
    state, tau = np.array([1.0, 0.15, 0.0, 0.0]), 0.0
    start = time.perf_counter()
    for a in actions:
        p1, p2 = (np.clip(a, 0, 1) * PA_PER_BAR).tolist()

        def f(t: float, y: np.ndarray, p1: float = p1, p2: float = p2) -> np.ndarray:
            _rhs(t, y[0], y[1], y[2], y[3], p1, p2, C, out)
            return out.copy()

        sol = solve_ivp(f, (tau, tau + cycles), state, method="RK45", rtol=rtol, atol=atol)
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        state, tau = sol.y[:, -1], tau + cycles
    return len(actions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=float, default=10, help="acoustic cycles per control step")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=256, help="single-env control steps per repeat")
    parser.add_argument("--vector-steps", type=int, default=24, help="vector-env steps per repeat")
    parser.add_argument("--reference-steps", type=int, default=12, help="solve_ivp control steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    env = BubblePositionEnv(cycles_per_action=args.cycles)
    envs = gym.make_vec("rl_energy/BubblePosition-v0", num_envs=args.num_envs, cycles_per_action=args.cycles)
    single_env_rate(env, rng.uniform(0, 1, (4, 2)))  # compile / load the kernel once
    results: dict[str, list[float]] = {"single": [], "vector": [], "reference": []}
    for r in range(args.repeats):
        results["single"].append(single_env_rate(env, rng.uniform(0, 1, (args.steps, 2))))
        results["vector"].append(vector_env_rate(envs, rng.uniform(0, 1, (args.vector_steps, args.num_envs, 2))))
        results["reference"].append(reference_rate(rng.uniform(0, 1, (args.reference_steps, 2)), args.cycles,
                                                   1e-9, 1e-9))
        print(f"repeat {r}: single env {results['single'][-1]:.1f} steps/s | {args.num_envs}-env vector "
              f"{results['vector'][-1]:.1f} steps/s | solve_ivp (RK45) {results['reference'][-1]:.2f} steps/s",
              flush=True)
    envs.close()
    single, vector, reference = (statistics.median(results[k]) for k in ("single", "vector", "reference"))
    print(f"median ({args.cycles:g} cycles per step, rtol = atol = 1e-9): single env {single:.1f} steps/s | "
          f"{args.num_envs}-env vector {vector:.1f} steps/s ({vector / single:.2f}x single) | "
          f"solve_ivp {reference:.2f} steps/s")
    print(f"bubble single-env/solve_ivp speed-up: {single / reference:.1f}")


if __name__ == "__main__":
    main()
