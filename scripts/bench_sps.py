"""Training throughput (env steps per second) of an rl-energy agent beside Stable-Baselines3.

The reference is SB3's SAC (for ``--agent sac`` and the MaxEnt agents), SB3's DDPG (for
``--agent ddpg``) or SB3's DQN (for ``--agent pfpe``, a discrete-action env such as CartPole-v1, with the
PFPE paper's settings instead: 32x32 nets, batch 500, replay 2,500, one update per 5 env steps, a hard
target every 5 updates, ε = 0.05). On a goal env (``rl_energy/PointMaze-*``) SB3 gets its
``HerReplayBuffer`` (``future`` strategy, 4 sampled goals: 80% relabelled, as our ``goals.her_ratio=0.8``)
and ``MultiInputPolicy``; ours flattens the goal observation and replays through ``HERReplayBuffer``.
Both run in this process on the same env with the same hyperparameters (batch 256,
256x256 nets, one gradient step per env step, learning starts 1000, 1M-slot replay; SAC: lr 3e-4,
automatic entropy; DDPG: lr 1e-3, Gaussian noise 0.1), alternating ours/SB3, ``--repeats`` times.
Our matrix products run at ``train.matmul_precision`` (``auto``: bfloat16 inputs with float32
accumulation on CPUs that multiply bfloat16 natively; pass ``--set train.matmul_precision=fp32`` for
float32 throughout, as SB3). SPS is measured over the learning phase only (first update to last
step), so construction, the random warm-up and evaluation are excluded for both. The median over
repeats is reported; the last line is ``<agent>/sb3-<ref> SPS ratio: X``.

    python scripts/bench_sps.py --env Ant-v4 --agent sac
    python scripts/bench_sps.py --env CartPole-v1 --agent pfpe --steps 20000
    python scripts/bench_sps.py --env rl_energy/PointMaze-UMaze-v0 --agent ddpg
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

from rl_energy.config import resolve_config  # noqa: E402
from rl_energy.registry import get_agent  # noqa: E402
from rl_energy.trainer import make_trainer  # noqa: E402


def ours(agent: str, env_id: str, learning_starts: int, steps: int, seed: int, extra: list[str]) -> tuple[float, str]:
    """Our SPS and how it ran (the ``resolved`` block: matmul precision, whether the update compiled)."""
    overrides = [
        f"train.total_steps={learning_starts + steps}", f"train.learning_starts={learning_starts}",
        "train.batch_size=256", "train.buffer_size=1000000", "train.eval_every=0", "train.eval_episodes=1",
        "train.checkpoint_every=0", f"train.log_every={learning_starts + steps}", f"train.seed={seed}",
        "train.device=cpu", *extra,
    ]
    if agent == "sac":
        overrides += ["agent.hidden=[256,256]", "agent.actor_lr=3e-4", "agent.critic_lr=3e-4",
                      "agent.alpha_lr=3e-4", "agent.tau=0.005", "agent.gamma=0.99", "agent.autotune=true"]
    elif agent == "pfpe":  # DQN with the paper's CartPole settings (configs/pfpe/default.yaml)
        overrides += ["train.batch_size=500", "train.buffer_size=2500", "train.utd=0.2", "agent.mode=control",
                      "agent.hidden=[32,32]", "agent.lr=1e-3", "agent.target_update=hard", "agent.target_period=5",
                      "agent.epsilon=0.05", "agent.gamma=0.99"]
    elif agent == "ddpg":
        overrides += ["agent.hidden=[256,256]", "agent.actor_lr=1e-3", "agent.critic_lr=1e-3",
                      "agent.tau=0.005", "agent.gamma=0.99", "agent.exploration_noise=0.1"]
    cfg = resolve_config(agent, env_id, get_agent(agent).config_cls, overrides=overrides)
    with tempfile.TemporaryDirectory() as d:
        trainer = make_trainer(cfg, Path(d), verbose=False)
        trainer.train()
    timing = trainer.timing
    # the first step's update (and any one-off torch.compile) is left out of the clock
    sps = (steps - 1) / (timing["loop_end"] - timing["first_update_end"])
    setup = timing["first_update_end"] - timing["learn_start"]
    how = f"{trainer.cfg.resolved['matmul_precision']} matmuls"
    if trainer.cfg.resolved["compile"]:
        how += f", compiled, first update {setup:.1f} s"
    return sps, how


def reference_name(agent: str) -> str:
    return {"ddpg": "ddpg", "pfpe": "dqn"}.get(agent, "sac")


def sb3(ref: str, env_id: str, learning_starts: int, steps: int, seed: int) -> float:
    import numpy as np
    from stable_baselines3 import DDPG, DQN, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import NormalActionNoise

    class Clock(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == learning_starts + 1:
                self.start = time.perf_counter()  # SB3 trains after the step that passes learning_starts
            return True

        def _on_training_end(self) -> None:
            self.end = time.perf_counter()

    env = gym.make(env_id)
    common = dict(buffer_size=1_000_000, learning_starts=learning_starts, batch_size=256, tau=0.005, gamma=0.99,
                  train_freq=1, gradient_steps=1, policy_kwargs={"net_arch": [256, 256]}, device="cpu", seed=seed,
                  verbose=0)
    policy = "MlpPolicy"
    if isinstance(env.observation_space, gym.spaces.Dict):  # a goal env: SB3's HER, future strategy, k = 4
        from stable_baselines3 import HerReplayBuffer

        policy = "MultiInputPolicy"
        common.update(replay_buffer_class=HerReplayBuffer,
                      replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"})
    if ref == "dqn":  # 5 env steps per update; SB3 counts the target period in env steps: k = 5 updates
        model = DQN("MlpPolicy", env, learning_rate=1e-3, buffer_size=2500, learning_starts=learning_starts,
                    batch_size=500, tau=1.0, gamma=0.99, train_freq=5, gradient_steps=1, target_update_interval=25,
                    exploration_initial_eps=0.05, exploration_final_eps=0.05,
                    policy_kwargs={"net_arch": [32, 32]}, device="cpu", seed=seed, verbose=0)
    elif ref == "sac":
        model = SAC(policy, env, learning_rate=3e-4, ent_coef="auto", **common)
    else:
        dim = env.action_space.shape[0]
        # SB3 adds noise in the env's action units; ours is in [-1, 1] units: scale it to match
        sigma = 0.1 * (env.action_space.high - env.action_space.low) / 2
        model = DDPG(policy, env, learning_rate=1e-3, action_noise=NormalActionNoise(np.zeros(dim), sigma),
                     **common)
    clock = Clock()
    model.learn(learning_starts + steps, callback=clock)
    env.close()
    return (steps - 1) / (clock.end - clock.start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Ant-v4")
    p.add_argument("--agent", default="sac")
    p.add_argument("--steps", type=int, default=2000, help="learning-phase steps timed per run")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for our agent")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, env {args.env}, "
          f"{args.steps} timed steps after {args.learning_starts} random ones", flush=True)
    ref = reference_name(args.agent)
    mine, theirs = [], []
    for r in range(args.repeats):
        sps, precision = ours(args.agent, args.env, args.learning_starts, args.steps, r, args.extra)
        mine.append(sps)
        theirs.append(sb3(ref, args.env, args.learning_starts, args.steps, r))
        print(f"repeat {r}: {args.agent} ({precision}) {mine[-1]:.1f} SPS | "
              f"sb3-{ref} (fp32) {theirs[-1]:.1f} SPS", flush=True)
    m, t = statistics.median(mine), statistics.median(theirs)
    print(f"median: {args.agent} {m:.1f} SPS | sb3-{ref} {t:.1f} SPS")
    print(f"{args.agent}/sb3-{ref} SPS ratio: {m / t:.2f}")


if __name__ == "__main__":
    main()
