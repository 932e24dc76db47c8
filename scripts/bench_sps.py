"""Training throughput (env transitions per second) of an rl-energy agent beside Stable-Baselines3.

**What is compared.** The reference is SB3's SAC (for ``--agent sac`` and the MaxEnt agents such as ``ebflow``),
SB3's DDPG (for ``--agent ddpg``) or SB3's DQN (for ``--agent pfpe``, a discrete-action env such as CartPole-v1,
with the PFPE paper's settings instead: 32x32 nets, batch 500, replay 2,500, one update per 5 env steps, a hard
target every 5 updates, ε = 0.05). On a goal env (``rl_energy/PointMaze-*``) SB3 gets its ``HerReplayBuffer``
(``future`` strategy, 4 sampled goals: 80% relabelled, as our ``goals.her_ratio=0.8``) and ``MultiInputPolicy``;
ours flattens the goal observation and replays through ``HERReplayBuffer``. Both run in this process, on the same
env with the same hyperparameters (batch 256, 256x256 nets, learning starts 1000, 1M-slot replay; SAC: lr 3e-4,
automatic entropy; DDPG: lr 1e-3, Gaussian noise 0.1), ``--num-envs`` copies of the env stepped in lockstep (our
gymnasium ``SyncVectorEnv``, SB3's ``DummyVecEnv`` from ``make_vec_env``) and ``--utd`` gradient steps per env
transition. ``--set KEY=VALUE`` (repeatable, as ``rl-energy train --set``) overrides our side only; the keys that
the flags own (``train.total_steps``, ``train.learning_starts``, ``train.num_envs``, ``train.utd``) are refused.
If our config sets ``train.torch_threads``, both sides run with that many threads.

**Third row: the official MEow update.** With ``--agent ebflow --meow-ref`` each repeat also times
``scripts/meow_reference.py``, a clean re-implementation of the official MEow training loop from the paper's
description (masked full-width couplings, the batch stacked twice for the two shift heads, a full target copy
averaged parameter by parameter, ``torch.optim.Adam`` with ``clip_grad_norm_``, eager PyTorch, SB3's replay buffer)
with our resolved EBFlow config (``--set`` applies to it too), one env at UTD 1. A test maps our weights onto it
and checks that its loss and gradients equal ours. Its line is ``meow-ref``; the summary adds its median and the
``ebflow/meow-ref`` ratio before the last line, which stays the SB3 ratio.

**Matmul precision.** Our matrix products run at ``train.matmul_precision``, whose default is ``fp32``, as SB3;
``bf16`` (bfloat16 inputs, float32 accumulation) and ``auto`` are opt-ins through ``--set``. Nothing here fixes the
precision: each repeat prints what ``trainer.cfg.resolved['matmul_precision']`` reports, and whether the update was
compiled.

**What is timed.** SPS is transitions (summed over envs) per second over the learning phase only: from just after
the first update to the last step (construction, the random warm-up, the first update with any one-off
``torch.compile``, and evaluation are excluded). Ours: from ``trainer.timing['first_update_end']`` to
``trainer.timing['loop_end']``, over ``trainer.step`` at the end minus ``trainer.step`` right after the first update
(read by wrapping the trainer's ``_collect`` until then; if a future trainer has no ``_collect``, the step is
approximated as ``learning_starts + num_envs``, one vector step past the warm-up). SB3: from the first rollout that
begins with ``num_timesteps > learning_starts`` (SB3 has trained once by then, so its first round of updates is
excluded as ours is) to the end of training, over the exact difference of ``num_timesteps`` at the two marks.

**UTD on SB3's schedule.** SB3 runs ``gradient_steps`` updates after every ``train_freq`` vector steps of
``num_envs`` transitions. With ``u = num_envs × utd`` updates per vector step: if ``u ≥ 1`` it must be a whole
number (``train_freq=1, gradient_steps=u``), else ``1/u`` must be a whole number (``train_freq=1/u,
gradient_steps=1``); anything else is refused. ``pfpe`` keeps its paper's schedule (1 env, utd 0.2, i.e. SB3's
``train_freq=5``, target every 25 env steps): ``--num-envs`` other than 1 or ``--utd`` other than 0.2 is refused.

**Idle wait.** Before each timed run (each side of each repeat) the script samples ``/proc/stat`` every 0.5 s and
waits until the CPU used by *other* processes (all busy jiffies, steal included, minus this process's own
``utime + stime`` from ``/proc/self/stat``, which covers all its threads) has stayed below ``--max-other-cpu``
(a fraction of the whole machine, default 0.05) for 2 s, at most ``--max-wait`` seconds (default 600; 0: no wait).
It prints one line when it had to wait. After a timeout it runs anyway; the contamination check marks the run.

**Contamination.** For each run the CPU seconds used by other processes during its timed phase (ours: from just
after the first update to the end of the run, the final one-episode evaluation included; SB3: from its clock's
start to the end of training) are divided by (wall time × CPUs); where the phase could not be marked, the whole call
of ``ours()``/``sb3()`` is used. Construction, the warm-up and any one-off ``torch.compile`` (whose worker processes
would count as "other") are outside the window. A run above ``--max-other-cpu`` is marked ``contaminated``, and so
is its repeat. Without ``/proc/stat`` (not Linux) it reports ``n/a``, never waits, and every repeat counts as clean.

**Alternation and statistics.** Repeats alternate the sides, and odd repeats swap which side goes first (ours, sb3
| sb3, ours | ...), to cancel drift (thermal, caches, a background job); repeat ``r`` uses seed ``r`` on both sides.
One line per repeat gives both SPS, the ratio and the contamination marks. The summary uses the clean repeats (all
repeats, saying so, if fewer than 3 are clean): per side the median, min–max and interquartile range of SPS; the
median and min–max of the per-repeat ratios; the number of contaminated repeats. The last line is
``<agent>/sb3-<ref> SPS ratio: X`` with X = median(our SPS) / median(SB3 SPS) over the repeats used.

    python scripts/bench_sps.py --env Ant-v4 --agent sac
    python scripts/bench_sps.py --env Ant-v4 --agent sac --set train.matmul_precision=bf16
    python scripts/bench_sps.py --env Ant-v4 --agent ebflow --meow-ref
    python scripts/bench_sps.py --env Hopper-v4 --num-envs 4 --utd 0.25
    python scripts/bench_sps.py --env CartPole-v1 --agent pfpe --steps 20000
    python scripts/bench_sps.py --env rl_energy/PointMaze-UMaze-v0 --agent ddpg
    python scripts/bench_sps.py --env Pendulum-v1 --steps 100 --learning-starts 100 --repeats 1 --max-wait 0
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")  # gymnasium's v4 notices among them

# torch, the trainer and SB3 are imported where they are used, so that a bad flag is reported at once
from rl_energy.config import parse_override, resolve_config  # noqa: E402
from rl_energy.errors import ConfigError, run_script  # noqa: E402
from rl_energy.registry import get_agent  # noqa: E402

PFPE_UTD = 0.2
"""pfpe's fixed schedule (the paper's CartPole settings): one update per 5 env steps."""
FLAG_KEYS = {"train.total_steps": "--steps", "train.learning_starts": "--learning-starts",
             "train.num_envs": "--num-envs", "train.utd": "--utd"}
"""Our config keys that the flags set (``--set`` may not override them)."""
IDLE_INTERVAL = 0.5
"""Seconds per ``/proc/stat`` sample while waiting for an idle machine."""
IDLE_HOLD = 2.0
"""Seconds the other processes must stay below ``--max-other-cpu`` before a run starts."""
MAX_REPEATS, MAX_NUM_ENVS, MAX_UTD = 1000, 1024, 1000.0
"""Upper bounds past which a flag is surely a typo."""

# ---------------------------------------------------------------------------------------------------------------------
# CPU accounting (pure parsers plus a reader of /proc)
# ---------------------------------------------------------------------------------------------------------------------

Snapshot = tuple[float, float]
"""``(busy_seconds_total, own_seconds)``: CPU seconds of the whole machine (all CPUs, all processes) and of this
process (all its threads) since boot / since it started."""


def parse_proc_stat(text: str) -> tuple[int, int]:
    """``(busy jiffies, number of CPUs)`` from the text of ``/proc/stat``. Busy = user + nice + system + irq +
    softirq + steal (guest time is already inside user; idle and iowait are not busy)."""
    busy, ncpu = None, 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            v = [int(x) for x in fields[1:]] + [0] * 8
            user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
            busy = user + nice + system + irq + softirq + steal
        elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
            ncpu += 1
    if busy is None:
        raise ValueError("no aggregate 'cpu' line in /proc/stat")
    return busy, max(ncpu, 1)


def parse_self_stat(text: str) -> int:
    """``utime + stime`` jiffies from the text of ``/proc/<pid>/stat`` (the process's threads together). The command
    name (field 2) may hold spaces and parentheses, so the fields are counted after its last ``)``."""
    rest = text[text.rindex(")") + 1:].split()  # rest[0] is field 3 (state): field k is rest[k - 3]
    return int(rest[14 - 3]) + int(rest[15 - 3])


def cpu_snapshot(proc: str = "/proc") -> Snapshot | None:
    """``(busy_seconds_total, own_seconds)`` read now from ``/proc``, or ``None`` where it cannot be read."""
    try:
        with open(f"{proc}/stat") as f:
            busy, _ = parse_proc_stat(f.read())
        with open(f"{proc}/self/stat") as f:
            own = parse_self_stat(f.read())
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return busy / tick, own / tick


def machine_cpus(proc: str = "/proc") -> int:
    """The CPUs that ``/proc/stat``'s aggregate line sums over (``os.cpu_count()`` without ``/proc``)."""
    try:
        with open(f"{proc}/stat") as f:
            return parse_proc_stat(f.read())[1]
    except (OSError, ValueError):
        return os.cpu_count() or 1


def other_cpu_fraction(before: Snapshot, after: Snapshot, wall: float, ncpu: int) -> float:
    """The share of the machine (``wall`` seconds × ``ncpu`` CPUs) that processes other than this one used between
    the two snapshots, clamped to [0, 1] (the two counters are sampled separately and tick at 1/CLK_TCK s)."""
    others = (after[0] - before[0]) - (after[1] - before[1])
    return min(max(others / max(wall * ncpu, 1e-9), 0.0), 1.0)


Window = tuple[Snapshot | None, float, Snapshot | None, float]
"""``(snapshot, perf_counter)`` at the start and at the end of a timed phase."""


def window_other_cpu(window: Window, ncpu: int) -> float | None:
    """Other processes' share of the machine over a timed phase (``None`` where a snapshot is missing)."""
    before, t0, after, t1 = window
    return other_cpu_fraction(before, after, t1 - t0, ncpu) if before and after else None


@dataclass
class Wait:
    waited: float
    """Seconds spent waiting."""
    timed_out: bool = False
    had_to_wait: bool = False
    """Whether some sample found the others above the threshold (``on_busy`` was called)."""


def wait_for_idle(max_other: float, max_wait: float, ncpu: int, *, interval: float = IDLE_INTERVAL,
                  hold: float = IDLE_HOLD, snapshot: Callable[[], Snapshot | None] = cpu_snapshot,
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                  on_busy: Callable[[float], None] | None = None) -> Wait:
    """Sample every ``interval`` s until other processes have used at most ``max_other`` of the machine in each
    sample for ``hold`` s in a row, or ``max_wait`` s have passed (then ``timed_out``). ``on_busy(fraction)`` is
    called at the first sample above the threshold. No wait when ``max_wait`` is 0 or ``/proc/stat`` cannot be
    read; a ``max_wait`` shorter than ``hold`` shortens the hold to it."""
    if max_wait <= 0:
        return Wait(0.0)
    hold = min(hold, max_wait)
    start = clock()
    prev, prev_t = snapshot(), clock()
    if prev is None:
        return Wait(0.0)
    quiet_since: float | None = None
    busy = False
    while True:
        sleep(interval)
        now, now_t = snapshot(), clock()
        if now is None:
            return Wait(now_t - start, had_to_wait=busy)
        frac = other_cpu_fraction(prev, now, now_t - prev_t, ncpu)
        if frac > max_other:
            quiet_since = None
            if not busy and on_busy is not None:
                on_busy(frac)
            busy = True
        elif quiet_since is None:
            quiet_since = prev_t
        if quiet_since is not None and now_t - quiet_since >= hold - 1e-9:
            return Wait(now_t - start, had_to_wait=busy)
        if now_t - start >= max_wait:
            return Wait(now_t - start, timed_out=True, had_to_wait=busy)
        prev, prev_t = now, now_t


# ---------------------------------------------------------------------------------------------------------------------
# schedule and statistics
# ---------------------------------------------------------------------------------------------------------------------


def sb3_schedule(num_envs: int, utd: float) -> tuple[int, int]:
    """``(train_freq, gradient_steps)`` giving SB3 ``utd`` gradient steps per transition with ``num_envs`` envs (SB3
    runs ``gradient_steps`` updates after every ``train_freq`` vector steps of ``num_envs`` transitions). Raises
    ``ValueError`` unless ``u = num_envs × utd`` or ``1/u`` is a whole number (to a relative 1e-6)."""
    if num_envs < 1 or not (utd > 0 and math.isfinite(utd)):
        raise ValueError(f"need num_envs >= 1 and a positive finite utd, got {num_envs} and {utd}")
    u = num_envs * utd
    if u >= 1 - 1e-6:
        if math.isclose(u, round(u), rel_tol=1e-6):
            return 1, round(u)
    elif math.isclose(1 / u, round(1 / u), rel_tol=1e-6):
        return round(1 / u), 1
    raise ValueError(f"SB3 runs gradient_steps updates every train_freq vector steps of num_envs transitions, so "
                     f"num_envs x utd ({num_envs} x {utd:g} = {u:g} updates per vector step) must be a whole number "
                     f"or 1 over a whole number")


@dataclass
class Summary:
    median: float
    lo: float
    hi: float
    q1: float
    q3: float


def summarize(values: Sequence[float]) -> Summary:
    """Median, min, max and the quartiles (inclusive method; one value: all equal)."""
    v = sorted(values)
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return Summary(statistics.median(v), v[0], v[-1], q1, q3)


def repeats_used(clean: Sequence[bool], minimum: int = 3) -> tuple[list[int], str]:
    """The indices of the repeats to summarize (the clean ones, or all if fewer than ``minimum`` are clean) and a
    note saying which."""
    ok = [i for i, c in enumerate(clean) if c]
    if len(ok) == len(clean):
        return ok, f"all {len(clean)} repeats clean"
    if len(ok) >= minimum:
        return ok, f"the {len(ok)} clean repeats of {len(clean)}"
    return list(range(len(clean))), f"all {len(clean)} repeats: only {len(ok)} clean, fewer than {minimum}"


# ---------------------------------------------------------------------------------------------------------------------
# the two sides
# ---------------------------------------------------------------------------------------------------------------------


def reference_name(agent: str) -> str:
    return {"ddpg": "ddpg", "pfpe": "dqn"}.get(agent, "sac")


def our_overrides(agent: str, learning_starts: int, steps: int, seed: int, num_envs: int, utd: float,
                  extra: Sequence[str]) -> list[str]:
    total = learning_starts + steps
    overrides = [
        f"train.total_steps={total}", f"train.learning_starts={learning_starts}", f"train.num_envs={num_envs}",
        f"train.utd={utd!r}", "train.batch_size=256", "train.buffer_size=1000000", "train.eval_every=0",
        "train.eval_episodes=1", "train.checkpoint_every=0", f"train.log_every={total}", f"train.seed={seed}",
        "train.device=cpu",
    ]
    if agent == "sac":
        overrides += ["agent.hidden=[256,256]", "agent.actor_lr=3e-4", "agent.critic_lr=3e-4",
                      "agent.alpha_lr=3e-4", "agent.tau=0.005", "agent.gamma=0.99", "agent.autotune=true"]
    elif agent == "pfpe":  # DQN with the paper's CartPole settings (configs/pfpe/default.yaml); utd = PFPE_UTD
        overrides += ["train.batch_size=500", "train.buffer_size=2500", "agent.mode=control",
                      "agent.hidden=[32,32]", "agent.lr=1e-3", "agent.target_update=hard", "agent.target_period=5",
                      "agent.epsilon=0.05", "agent.gamma=0.99"]
    elif agent == "ddpg":
        overrides += ["agent.hidden=[256,256]", "agent.actor_lr=1e-3", "agent.critic_lr=1e-3",
                      "agent.tau=0.005", "agent.gamma=0.99", "agent.exploration_noise=0.1"]
    return overrides + list(extra)


def our_config(agent: str, env_id: str, learning_starts: int, steps: int, seed: int, num_envs: int, utd: float,
               extra: Sequence[str]) -> Any:
    overrides = our_overrides(agent, learning_starts, steps, seed, num_envs, utd, extra)
    return resolve_config(agent, env_id, get_agent(agent).config_cls, overrides=overrides)


def _mark_first_update(trainer: Any) -> dict[str, Any]:
    """Wrap ``trainer._collect`` until the vector step that ends with the first update, and record ``trainer.step``
    then (``marks['step']``) with a CPU snapshot (``marks['window']``); the wrapper removes itself, so the timed
    phase runs the trainer's own method."""
    marks: dict[str, Any] = {}
    collect = getattr(trainer, "_collect", None)
    if collect is None or not hasattr(trainer, "timing"):
        return marks

    def wrapped() -> int:
        new = collect()
        if "first_update_end" in trainer.timing:
            marks["step"] = trainer.step
            marks["window"] = (cpu_snapshot(), time.perf_counter())  # the timed phase starts here
            del trainer._collect
        return new

    trainer._collect = wrapped
    return marks


def ours(agent: str, env_id: str, learning_starts: int, steps: int, seed: int, num_envs: int, utd: float,
         extra: Sequence[str]) -> tuple[float, str, Window | None]:
    """Our SPS, how it ran (the ``resolved`` block: matmul precision, whether the update compiled) and the CPU
    snapshots of the timed phase (from the first update to the end of the run, the final 1-episode evaluation
    included)."""
    from rl_energy.trainer import make_trainer

    cfg = our_config(agent, env_id, learning_starts, steps, seed, num_envs, utd, extra)
    with tempfile.TemporaryDirectory() as d:
        trainer = make_trainer(cfg, Path(d), verbose=False)
        marks = _mark_first_update(trainer)
        trainer.train()
        end = (cpu_snapshot(), time.perf_counter())
    timing = trainer.timing
    # transitions after the first update's vector step (approximated as one vector step past the warm-up if the
    # trainer could not be wrapped); the first update and any one-off torch.compile are left out of the clock
    first = marks.get("step", learning_starts + num_envs)
    sps = (trainer.step - first) / (timing["loop_end"] - timing["first_update_end"])
    setup = timing["first_update_end"] - timing["learn_start"]
    how = f"{trainer.cfg.resolved['matmul_precision']} matmuls"
    how += f", compiled, first update {setup:.1f} s" if trainer.cfg.resolved.get("compile") else ", not compiled"
    return sps, how, (*marks["window"], *end) if "window" in marks else None


def sb3(ref: str, env_id: str, learning_starts: int, steps: int, seed: int, num_envs: int, utd: float
        ) -> tuple[float, Window]:
    """SB3's SPS on ``num_envs`` envs (``DummyVecEnv``) at ``utd`` gradient steps per transition, and the CPU
    snapshots of its timed phase."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import DDPG, DQN, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    train_freq, gradient_steps = sb3_schedule(num_envs, utd)

    class Clock(BaseCallback):
        """Marks the start of the first rollout after SB3's first training round, and the end of training."""

        start: float | None = None
        start_steps = 0
        end = 0.0
        end_steps = 0

        def _on_rollout_start(self) -> None:
            # SB3 trains after a rollout that ends past learning_starts: the next rollout starts after that update
            if self.start is None and self.model.num_timesteps > learning_starts:
                self.snap_start = cpu_snapshot()
                self.start, self.start_steps = time.perf_counter(), self.model.num_timesteps

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.end, self.end_steps = time.perf_counter(), self.model.num_timesteps
            self.snap_end = cpu_snapshot()

    env = make_vec_env(env_id, n_envs=num_envs, seed=seed)
    common = dict(buffer_size=1_000_000, learning_starts=learning_starts, batch_size=256, tau=0.005, gamma=0.99,
                  train_freq=train_freq, gradient_steps=gradient_steps, policy_kwargs={"net_arch": [256, 256]},
                  device="cpu", seed=seed, verbose=0)
    policy = "MlpPolicy"
    if isinstance(env.observation_space, gym.spaces.Dict):  # a goal env: SB3's HER, future strategy, k = 4
        from stable_baselines3 import HerReplayBuffer

        policy = "MultiInputPolicy"
        common.update(replay_buffer_class=HerReplayBuffer,
                      replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"})
    if ref == "dqn":  # 1 env, 5 env steps per update; SB3 counts the target period in env steps: k = 5 updates
        model = DQN("MlpPolicy", env, learning_rate=1e-3, buffer_size=2500, learning_starts=learning_starts,
                    batch_size=500, tau=1.0, gamma=0.99, train_freq=train_freq, gradient_steps=gradient_steps,
                    target_update_interval=5 * train_freq, exploration_initial_eps=0.05, exploration_final_eps=0.05,
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
    if clock.start is None:
        raise RuntimeError("SB3 never started a rollout after its first update: raise --steps")
    sps = (clock.end_steps - clock.start_steps) / (clock.end - clock.start)
    return sps, (clock.snap_start, clock.start, clock.snap_end, clock.end)


def meow(env_id: str, learning_starts: int, steps: int, seed: int, extra: Sequence[str]) -> tuple[float, Window]:
    """The MEow reference's SPS (``scripts/meow_reference.py``, our resolved EBFlow config) and the CPU snapshots
    of its timed phase."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import meow_reference

    cfg = our_config("ebflow", env_id, learning_starts, steps, seed, 1, 1.0, extra)
    return meow_reference.train_sps(env_id, cfg, learning_starts, steps, seed, snapshot=cpu_snapshot)


# ---------------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    sps: float
    other: float | None
    """Other processes' share of the machine during the call (``None``: unknown)."""
    contaminated: bool
    timed_out: bool
    how: str = "fp32"


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Ant-v4")
    p.add_argument("--agent", default="sac", help="our agent (sac, ebflow, ddpg, pfpe, ...)")
    p.add_argument("--steps", type=int, default=2000,
                   help="learning-phase transitions (summed over envs) per run, after --learning-starts")
    p.add_argument("--learning-starts", type=int, default=1000, help="random warm-up transitions")
    p.add_argument("--repeats", type=int, default=5, help="runs of each side, alternating")
    p.add_argument("--num-envs", type=int, default=1, help="envs stepped in lockstep on each side")
    p.add_argument("--utd", type=float, default=None,
                   help=f"gradient steps per env transition (default 1; pfpe: {PFPE_UTD}, fixed)")
    p.add_argument("--max-other-cpu", type=float, default=0.05,
                   help="the share of the machine that other processes may use (idle wait, contamination)")
    p.add_argument("--max-wait", type=float, default=600.0,
                   help="seconds to wait for an idle machine before each run (0: do not wait)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="override our agent's config, e.g. --set train.matmul_precision=bf16 (repeatable)")
    p.add_argument("--meow-ref", action="store_true",
                   help="with --agent ebflow: time the official MEow update (scripts/meow_reference.py) as a third row")
    a = p.parse_args(argv)
    if not 1 <= a.repeats <= MAX_REPEATS:
        p.error(f"--repeats must be between 1 and {MAX_REPEATS}, got {a.repeats}")
    if not 1 <= a.num_envs <= MAX_NUM_ENVS:
        p.error(f"--num-envs must be between 1 and {MAX_NUM_ENVS}, got {a.num_envs}")
    if a.utd is not None and not (0 < a.utd <= MAX_UTD):  # also refuses nan and inf
        p.error(f"--utd must be a positive finite number of at most {MAX_UTD:g}, got {a.utd}")
    if not 0 <= a.max_other_cpu <= 1:
        p.error(f"--max-other-cpu must be a fraction of the machine in [0, 1], got {a.max_other_cpu}")
    if not (0 <= a.max_wait < math.inf):
        p.error(f"--max-wait must be a finite number of seconds >= 0, got {a.max_wait}")
    if a.learning_starts < max(1, a.num_envs):
        p.error(f"--learning-starts must be at least 1 and at least --num-envs ({a.num_envs}), so that the replay "
                f"is not empty at the first update, got {a.learning_starts}")
    for item in a.extra:
        try:
            path, _ = parse_override(item)
        except ConfigError as exc:
            p.error(str(exc))
        key = ".".join(path)
        if key in FLAG_KEYS:
            p.error(f"--set {key} is set by {FLAG_KEYS[key]}: use that flag")
    if a.meow_ref and a.agent != "ebflow":
        p.error(f"--meow-ref times the official MEow update beside --agent ebflow, got --agent {a.agent}")
    if a.meow_ref and a.num_envs != 1:
        p.error(f"--meow-ref runs the reference's own schedule (one env, UTD 1), got --num-envs {a.num_envs}")
    if a.meow_ref and a.utd is not None and a.utd != 1.0:
        p.error(f"--meow-ref runs the reference's own schedule (one env, UTD 1), got --utd {a.utd:g}")
    if a.agent == "pfpe":
        if a.num_envs != 1:
            p.error(f"--num-envs must be 1 for pfpe (its DQN reference keeps the paper's one-env schedule), "
                    f"got {a.num_envs}")
        if a.utd is not None and not math.isclose(a.utd, PFPE_UTD):
            p.error(f"--utd is fixed at {PFPE_UTD} for pfpe (the paper's one update per 5 env steps), got {a.utd}")
        a.utd = PFPE_UTD
    elif a.utd is None:
        a.utd = 1.0
    try:
        a.train_freq, a.gradient_steps = sb3_schedule(a.num_envs, a.utd)
    except ValueError as exc:
        p.error(f"--utd {a.utd:g} with --num-envs {a.num_envs}: {exc}")
    # SB3 is timed from the rollout after its first update: at least one more rollout must follow it
    if a.steps < 2 or a.steps <= a.num_envs * a.train_freq:
        p.error(f"--steps must be at least 2 and exceed --num-envs x SB3's train_freq ({a.num_envs} x "
                f"{a.train_freq}), got {a.steps}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    get_agent(a.agent)  # an unknown name: a ConfigError listing the valid ones
    # a bad or unknown --set key/value is reported now, before any timing
    cfg = our_config(a.agent, a.env, a.learning_starts, a.steps, 0, a.num_envs, a.utd, a.extra)

    import gymnasium
    import torch

    gymnasium.logger.min_level = gymnasium.logger.ERROR  # the v4 envs' deprecation notice at every env built
    if cfg.train.torch_threads:  # our trainer would set it globally: give SB3 the same
        torch.set_num_threads(cfg.train.torch_threads)
    ncpu = machine_cpus()
    watch = cpu_snapshot() is not None
    ref = reference_name(a.agent)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, env {a.env}, agent {a.agent}, "
          f"{a.steps} timed steps after {a.learning_starts} learning starts, {a.num_envs} envs, UTD {a.utd:g}, "
          f"{a.repeats} repeats", flush=True)
    print(f"sb3-{ref}: train_freq {a.train_freq}, gradient_steps {a.gradient_steps}; "
          + (f"others may use {_pct(a.max_other_cpu)} of {ncpu} CPUs, wait up to {a.max_wait:g} s"
             if watch else "no /proc/stat: contamination n/a, no idle wait"), flush=True)

    def timed(side: str, seed: int) -> Run:
        def busy(fraction: float) -> None:  # the first half of the one line a wait prints
            print(f"repeat {seed}, {side}: others use {_pct(fraction)} of the machine, waiting for an idle "
                  f"machine...", end="", flush=True)

        w = wait_for_idle(a.max_other_cpu, a.max_wait, ncpu, on_busy=busy) if watch else Wait(0.0)
        if w.had_to_wait:
            print(f" gave up after {w.waited:.1f} s, running anyway" if w.timed_out else f" waited {w.waited:.1f} s",
                  flush=True)
        before, t0 = cpu_snapshot(), time.perf_counter()
        how = "fp32"
        if side == "ours":
            sps, how, window = ours(a.agent, a.env, a.learning_starts, a.steps, seed, a.num_envs, a.utd, a.extra)
        elif side == "meow":
            sps, window = meow(a.env, a.learning_starts, a.steps, seed, a.extra)
        else:
            sps, window = sb3(ref, a.env, a.learning_starts, a.steps, seed, a.num_envs, a.utd)
        if window is None:  # no timed-phase marks: the whole call (construction and warm-up included)
            window = (before, t0, cpu_snapshot(), time.perf_counter())
        other = window_other_cpu(window, ncpu)
        return Run(sps, other, other is not None and other > a.max_other_cpu, w.timed_out, how)

    def describe(run: Run) -> str:
        marks = " CONTAMINATED" if run.contaminated else ""
        marks += " (idle wait timed out)" if run.timed_out else ""
        return f"{run.sps:.1f} SPS, others {_pct(run.other)}{marks}"

    mine: list[Run] = []
    theirs: list[Run] = []
    official: list[Run] = []
    sides = ("ours", "sb3", "meow") if a.meow_ref else ("ours", "sb3")
    for r in range(a.repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        runs = {side: timed(side, r) for side in order}
        mine.append(runs["ours"])
        theirs.append(runs["sb3"])
        line = (f"repeat {r} ({order[0]} first): {a.agent} ({runs['ours'].how}) {describe(runs['ours'])} | "
                f"sb3-{ref} (fp32) {describe(runs['sb3'])} | ratio {runs['ours'].sps / runs['sb3'].sps:.2f}")
        if a.meow_ref:
            official.append(runs["meow"])
            line += f" | meow-ref {describe(runs['meow'])} | ratio {runs['ours'].sps / runs['meow'].sps:.2f}"
        print(line, flush=True)

    clean = [not (m.contaminated or t.contaminated or (a.meow_ref and official[i].contaminated))
             for i, (m, t) in enumerate(zip(mine, theirs, strict=True))]
    used, note = repeats_used(clean)
    print(f"summary over {note}" + ("" if watch else " (contamination unknown: no /proc/stat)"))
    rows = [(a.agent, mine), (f"sb3-{ref}", theirs)] + ([("meow-ref", official)] if a.meow_ref else [])
    for name, runs in rows:
        s = summarize([runs[i].sps for i in used])
        print(f"{name}: median {s.median:.1f} SPS, min-max {s.lo:.1f}-{s.hi:.1f}, IQR {s.q1:.1f}-{s.q3:.1f}")
    ratios = summarize([mine[i].sps / theirs[i].sps for i in used])
    print(f"per-repeat ratio: median {ratios.median:.2f}, min-max {ratios.lo:.2f}-{ratios.hi:.2f}")
    print(f"contaminated repeats: {clean.count(False)} of {a.repeats} (others above {_pct(a.max_other_cpu)} of the "
          f"machine during a run)")
    if a.meow_ref:
        official_ratio = statistics.median(mine[i].sps for i in used) / statistics.median(official[i].sps for i in used)
        print(f"{a.agent}/meow-ref SPS ratio: {official_ratio:.2f}")
    ratio = statistics.median(mine[i].sps for i in used) / statistics.median(theirs[i].sps for i in used)
    print(f"{a.agent}/sb3-{ref} SPS ratio: {ratio:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
