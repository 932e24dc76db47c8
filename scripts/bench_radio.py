#!/usr/bin/env python
"""Throughput of ``rl_energy/RadioShower-v0`` and the radio reconstruction chain (rl_energy/radio.py): events
simulated per second, the task's χ² reward scored in one batched call beside the same events stepped one at a
time through the Gymnasium API (the reference, in the same process), and the reconstruction chain's events per
second (plane, spherical, ADF and joint fits by ``scipy.optimize.least_squares``), one process.

    python scripts/bench_radio.py            # ≈ 1 min on one core
    python scripts/bench_radio.py --quick    # fewer events

The last line is the batched reward's speed over the step loop's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rl_energy.errors import require_extra, run_script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events scored (and simulated)")
    parser.add_argument("--fits", type=int, default=100, help="events reconstructed")
    parser.add_argument("--quick", action="store_true", help="500 events, 20 fits")
    args = parser.parse_args()
    for name in ("events", "fits"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.events, args.fits = 500, 20
    require_extra("sklearn", "scripts/bench_radio.py (scipy.optimize)")
    import gymnasium as gym

    from rl_energy import radio

    torch.set_num_threads(1)
    start = time.perf_counter()
    task = gym.make("rl_energy/RadioShower-v0", n_train=args.events, n_test=1).unwrapped
    batch = task.contexts("train")
    sim_rate = args.events / (time.perf_counter() - start)
    print(f"simulated events (trigger selection included): {sim_rate:,.0f} events/s")

    rng = np.random.default_rng(0)
    actions = batch["target"] + torch.as_tensor(rng.normal(0, 0.01, batch["target"].shape), dtype=torch.float32)
    start = time.perf_counter()
    rewards = task.score(batch, actions)
    batched = args.events / (time.perf_counter() - start)

    # the reference: the same events and actions through reset/step, one at a time
    env = gym.make("rl_energy/RadioShower-v0", n_train=args.events, n_test=1).unwrapped
    env.contexts("train")  # the split is built once, outside the timing
    step_rewards = np.empty(args.events)
    start = time.perf_counter()
    for i in range(args.events):
        env._context = batch[i:i + 1]
        step_rewards[i] = env.step(actions[i].numpy())[1]
    looped = args.events / (time.perf_counter() - start)
    np.testing.assert_allclose(step_rewards, rewards.numpy(), rtol=1e-5, atol=1e-5)
    print(f"χ² reward on {args.events} events: batched {batched:,.0f} events/s, gym step loop {looped:,.0f} events/s "
          "(identical rewards)")

    showers = radio.simulate(args.fits, 7)
    start = time.perf_counter()
    for i in range(args.fits):
        ev = showers.event(i)
        radio.reconstruct(ev["pos"], ev["t"], ev["amp"])
    fit_rate = args.fits / (time.perf_counter() - start)
    print(f"reconstruction chain (plane → spherical → ADF → joint) on {args.fits} noisy events "
          f"(median {np.median(showers.mask.sum(1)):.0f} antennas): {fit_rate:.1f} events/s")
    print(f"\nradio batched-reward/gym-step-loop speed ratio: {batched / looped:.1f}")


if __name__ == "__main__":
    run_script(main)
