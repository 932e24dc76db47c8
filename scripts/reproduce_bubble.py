"""Reproduce the bubble position-control comparison (Klapcsik et al. 2023; ``papers/bubble-control.md``):
a trained DDPG policy against the linear-theory controller on one fixed set of start/target pairs.

    rl-energy train --agent ddpg --env rl_energy/BubblePosition-v0 --run-dir runs/bubble_ddpg
    python scripts/reproduce_bubble.py --run runs/bubble_ddpg

For every pair ``(x_0, x_T)`` (drawn once from ``U[0.05, 0.25]²`` with ``--pairs-seed``):

* **DDPG**: the run's last checkpoint, deterministic actions, the run's episode length;
* **linear theory** (:mod:`rl_energy.agents.bubble_linear`): the amplitude ratio that puts a stable
  linear equilibrium at ``x_T``, tried at each larger-amplitude level of ``--linear-amplitudes`` (bar)
  with a longer horizon (``--linear-steps`` actions) because it drifts at the drag-limited speed; its
  time-to-target on a pair is the best over the levels.

Printed: DDPG's success rate; time-to-target (ms) of both on the pairs both solve, the ratio
linear/DDPG beside the paper's claim ("up to 7 times faster"); the pairs whose targets lie below
``0.125 λ_0``, which the linear theory cannot reach. Plotted: ``x(t)`` and the amplitudes of a few
pairs for both controllers. The last line is DDPG's success rate, e.g.
``bubble DDPG success rate: 0.81``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import rl_energy  # noqa: F401  (registers rl_energy/BubblePosition-v0)
from rl_energy.agents.bubble_linear import LOWEST_REACHABLE, equilibrium_amplitudes
from rl_energy.envs.bubble import BubblePositionVectorEnv
from rl_energy.trainer import load_trained_agent

PAPER_CLAIM = "up to 7x faster than the linear theory (arXiv 2312.05674 abstract)"


def rollout(envs: gym.vector.VectorEnv, policy, x0: np.ndarray, xt: np.ndarray, max_steps: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Run ``policy(obs) -> amplitudes in bar`` from the given pairs until each episode ends.

    Returns success flags, steps to target (``-1`` if never), positions ``[steps+1, n]``, amplitudes
    ``[steps, n, 2]`` and the control-step length in ms."""
    base: BubblePositionVectorEnv = envs.unwrapped
    obs, info = envs.reset(options={"position": x0, "target": xt})
    n = len(x0)
    success, steps_to_target = np.zeros(n, bool), np.full(n, -1)
    active = np.ones(n, bool)
    positions, amplitudes = [info["position"].copy()], []
    for k in range(1, max_steps + 1):
        bar = policy(obs)
        obs, _, terminated, truncated, info = envs.step(bar)
        hit = active & info["success"]
        success |= hit
        steps_to_target[hit] = k
        active &= ~(terminated | truncated)
        positions.append(np.where(active | hit, info["position"], np.nan))
        amplitudes.append(np.where(active[:, None] | hit[:, None], bar, np.nan))
        if not active.any():
            break
    step_ms = base._ep.cycles / base.params.f1 * 1e3
    return success, steps_to_target, np.array(positions), np.array(amplitudes), step_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a DDPG run directory (rl-energy train ... --run-dir DIR)")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--pairs-seed", type=int, default=2023)
    parser.add_argument("--linear-amplitudes", default="0.1,0.2,0.3,0.5",
                        help="larger-component amplitudes (bar) tried for the linear controller")
    parser.add_argument("--linear-steps", type=int, default=1000, help="horizon of the linear controller")
    parser.add_argument("--plot", default="docs/img/bubble_ddpg_vs_linear.png")
    args = parser.parse_args()

    rng = np.random.default_rng(args.pairs_seed)
    x0, xt = rng.uniform(0.05, 0.25, args.pairs), rng.uniform(0.05, 0.25, args.pairs)

    agent, cfg, envs, step = load_trained_agent(args.run, torch.device("cpu"), args.pairs)
    episode_length = envs.unwrapped._ep.episode_length

    def ddpg(obs: np.ndarray) -> np.ndarray:
        unit = agent.act(torch.as_tensor(obs, dtype=torch.float32), deterministic=True).numpy()
        return (unit + 1.0) / 2.0  # the trainer's [-1, 1] actions -> bar

    agent.train(False)
    d_ok, d_steps, d_x, d_amp, step_ms = rollout(envs.unwrapped, ddpg, x0, xt, episode_length)
    envs.close()

    kwargs = {**cfg.env_kwargs, "episode_length": args.linear_steps}
    lin_envs = gym.make_vec("rl_energy/BubblePosition-v0", num_envs=args.pairs, **kwargs)
    l_steps, l_best, l_runs = np.full(args.pairs, -1), np.zeros(args.pairs), {}
    for amp in (float(a) for a in args.linear_amplitudes.split(",")):
        fixed = equilibrium_amplitudes(xt, amp)
        ok, steps, xs, amps, _ = rollout(lin_envs, lambda obs, fixed=fixed: fixed, x0, xt, args.linear_steps)
        better = ok & ((l_steps < 0) | (steps < l_steps))
        l_steps[better], l_best[better] = steps[better], amp
        l_runs[amp] = (xs, amps)
        print(f"linear theory at {amp:g} bar: {ok.mean():.0%} of pairs reached within {args.linear_steps} steps")
    lin_envs.close()

    reachable = xt >= LOWEST_REACHABLE
    both = d_ok & (l_steps > 0)
    print(f"DDPG ({args.run}, step {step}): {d_ok.mean():.0%} of {args.pairs} pairs reached within "
          f"{episode_length} steps of {step_ms:g} ms")
    print(f"linear theory (best of {args.linear_amplitudes} bar): {(l_steps > 0).mean():.0%} of pairs; "
          f"{(l_steps[reachable] > 0).mean():.0%} of the {reachable.sum()} with x_T >= 0.125")
    if both.any():
        t_d, t_l = d_steps[both] * step_ms, l_steps[both] * step_ms
        ratio = t_l / t_d
        print(f"pairs both solve: {both.sum()}; mean time to target DDPG {t_d.mean():.2f} ms, linear "
              f"{t_l.mean():.2f} ms; linear/DDPG ratio mean {ratio.mean():.1f}, max {ratio.max():.1f} "
              f"(paper: {PAPER_CLAIM})")
    else:
        print("no pair is solved by both controllers")
    low = np.flatnonzero(~reachable)
    print(f"targets below 0.125 λ0 (out of the linear theory's reach): {len(low)} pairs; DDPG reached "
          f"{d_ok[low].sum()} of them")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        far = np.flatnonzero(both)[np.argsort(-np.abs(x0 - xt)[both])]  # the longest moves both solve
        show = list(dict.fromkeys([*far[:2].tolist(), *low[d_ok[low]][:1].tolist()])) or list(range(min(3, args.pairs)))
        fig, axes = plt.subplots(2, len(show), figsize=(4.5 * len(show), 6), squeeze=False, sharex="col")
        for col, i in enumerate(show):
            t = np.arange(d_x.shape[0]) * step_ms
            axes[0, col].plot(t, d_x[:, i], label="DDPG")
            if l_steps[i] > 0:
                xs, amps = l_runs[l_best[i]]
                tl = np.arange(xs.shape[0]) * step_ms
                axes[0, col].plot(tl, xs[:, i], label=f"linear theory ({l_best[i]:g} bar)")
            axes[0, col].axhline(xt[i], color="k", lw=0.8, ls="--", label="target")
            axes[0, col].set_title(f"x0 = {x0[i]:.3f}, xT = {xt[i]:.3f} (λ0)")
            axes[0, col].set_ylabel("x / λ0")
            axes[1, col].step(t[1:], d_amp[:, i, 0], where="pre", label="DDPG P_A1 (25 kHz)")
            axes[1, col].step(t[1:], d_amp[:, i, 1], where="pre", label="DDPG P_A2 (50 kHz)")
            axes[1, col].set_ylabel("amplitude (bar)")
            axes[1, col].set_xlabel("time (ms)")
        axes[0, 0].legend(fontsize=8)
        axes[1, 0].legend(fontsize=8)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    print(f"bubble DDPG success rate: {d_ok.mean():.2f}")


if __name__ == "__main__":
    main()
