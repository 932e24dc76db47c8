"""The speed limit of an agent on this machine: its matrix products and the env alone, beside ours and SB3.

An implementation of an agent cannot be faster than the matrix products it must compute plus the simulator it must
step. This script measures that floor, so that a throughput ratio (``scripts/bench_sps.py``) can be read against
what the machine allows:

1. **Capture.** Our agent trains as ``bench_sps.py`` runs it (same config, same ``--set`` overrides, its update
   compiled where the config says so). After the warm-up, one ``agent.update`` and one ``agent.act`` call run under
   the PyTorch profiler with their input shapes recorded; every matrix product they launch (``aten::mm``,
   ``addmm``, ``bmm``, ``baddbmm``, inside compiled graphs too) is kept, with its shapes. Their FLOP count is
   printed.
2. **Floor.** A loop that steps the same env (``gymnasium.make_vec``, ``--num-envs`` copies, random actions, the
   env's own autoreset) and, per vector step, replays the acting products once and the update products
   ``num_envs x utd`` times (a fractional UTD accumulates, as the trainer does), on preallocated contiguous
   operands with ``out=`` (no allocation). Nothing else runs: no elementwise op, no optimiser, no replay, no
   autograd. Its SPS is an upper bound for any implementation of the agent at this precision on this machine
   (contiguous operands are MKL's fastest case; transposed ones, as in a backward pass, are not faster).
3. **Alternation.** Floor, ours (``bench_sps.ours``) and SB3 (``bench_sps.sb3``) run in turn, ``--repeats``
   times, the order rotating each repeat, each after ``bench_sps``'s idle wait and with its contamination check.

The summary gives the median SPS of each side over the clean repeats, the ratios floor/SB3 and ours/SB3 (the
bar a throughput issue sets can be compared with the first: a bar above it is out of reach) and ours/floor, the
share of the machine's limit that ours reaches. The last line is ``floor/sb3-<ref> SPS ratio: X``.

    python scripts/bench_floor.py --env Ant-v4 --agent sac
    python scripts/bench_floor.py --env Ant-v4 --agent ebflow
    python scripts/bench_floor.py --env Pendulum-v1 --steps 100 --learning-starts 100 --repeats 1 --max-wait 0

All flags are ``bench_sps.py``'s (``--steps``, ``--learning-starts``, ``--repeats``, ``--num-envs``, ``--utd``,
``--max-other-cpu``, ``--max-wait``, ``--set``).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_energy.errors import run_script

_spec = importlib.util.spec_from_file_location("bench_sps", Path(__file__).with_name("bench_sps.py"))
assert _spec is not None and _spec.loader is not None
bench_sps = sys.modules.setdefault("bench_sps", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench_sps)

PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
"""The profiler's names of the matrix products that are kept (all four are leaves: none calls another)."""
CAPTURE_CALL = 5
"""Which call of ``update``/``act`` after the warm-up is profiled (past any compile and first-call work)."""
WARMUP_VECTOR_STEPS = 20
"""Untimed vector steps of the floor loop before its clock starts."""

Shape = tuple[int, ...]
Product = tuple[str, tuple[Shape, ...]]
"""``(name, operand shapes)`` as the profiler reports them: ``mm (a, b)``, ``addmm (bias, a, b)``, ``bmm (a, b)``,
``baddbmm (bias, a, b)``."""


# ---------------------------------------------------------------------------------------------------------------------
# the products: capture, count, replay
# ---------------------------------------------------------------------------------------------------------------------


def products_of(events: Sequence[Any]) -> list[Product]:
    """The matrix products among profiler events (``FunctionEvent``s with ``name`` and ``input_shapes``), in order."""
    found = []
    for e in events:
        if e.name in PRODUCTS:  # operands first; then beta and alpha (addmm, baddbmm) and ``out`` (compiled code)
            count = 3 if e.name in ("aten::addmm", "aten::baddbmm") else 2
            found.append((e.name, tuple(tuple(int(d) for d in s) for s in e.input_shapes[:count])))
    return found


def product_flops(products: Sequence[Product]) -> int:
    """Multiply-adds x 2 of the products (the bias adds are not counted)."""
    total = 0
    for _, shapes in products:
        a, b = shapes[-2], shapes[-1]
        batch = a[0] if len(a) == 3 else 1
        total += 2 * batch * a[-2] * a[-1] * b[-1]
    return total


def replayer(products: Sequence[Product]) -> Callable[[], None]:
    """A function that runs ``products`` once, on preallocated contiguous float32 operands (one per shape, so that
    they stay in cache: a best case), each result written with ``out=`` into one buffer per shape."""
    import torch

    tensors: dict[Shape, torch.Tensor] = {}
    outputs: dict[Shape, torch.Tensor] = {}

    def operand(shape: Shape) -> torch.Tensor:  # one tensor per shape: operands stay in cache, as a best case
        if shape not in tensors:
            tensors[shape] = torch.randn(shape)
        return tensors[shape]

    calls: list[Callable[[], Any]] = []
    for name, shapes in products:
        a_shape, b_shape = shapes[-2], shapes[-1]
        a, b = operand(a_shape), operand(b_shape)
        out = outputs.setdefault((*a_shape[:-1], b_shape[-1]), torch.empty(*a_shape[:-1], b_shape[-1]))
        if name == "aten::mm":
            calls.append(lambda a=a, b=b, out=out: torch.mm(a, b, out=out))
        elif name == "aten::bmm":
            calls.append(lambda a=a, b=b, out=out: torch.bmm(a, b, out=out))
        elif name == "aten::addmm":
            bias = operand(shapes[0])
            calls.append(lambda bias=bias, a=a, b=b, out=out: torch.addmm(bias, a, b, out=out))
        else:
            bias = operand(shapes[0])
            calls.append(lambda bias=bias, a=a, b=b, out=out: torch.baddbmm(bias, a, b, out=out))

    def run() -> None:
        for call in calls:
            call()

    run.operands, run.outputs = tensors, outputs  # type: ignore[attr-defined]  # for the tests
    return run


@dataclass
class Captured:
    update: list[Product]
    act: list[Product]
    act_rows: int
    """The batch size of the profiled ``act`` call (``num_envs``)."""


def capture(agent_name: str, env_id: str, learning_starts: int, num_envs: int, utd: float,
            extra: Sequence[str]) -> Captured:
    """Train our agent (``bench_sps``'s config) just long enough to profile its ``CAPTURE_CALL``-th update and act
    after the warm-up, and return their matrix products."""
    from torch.profiler import ProfilerActivity, profile

    from rl_energy.trainer import make_trainer

    updates_needed = CAPTURE_CALL + 1
    steps = max(2 * num_envs, int(updates_needed / max(num_envs * utd, 1e-9) * num_envs) + 2 * num_envs)
    cfg = bench_sps.our_config(agent_name, env_id, learning_starts, steps, 0, num_envs, utd, extra)
    got: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        trainer = make_trainer(cfg, Path(d), verbose=False)
        agent = trainer.agent
        counts = {"update": 0, "act": 0}

        def wrap(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                if kind == "act" and counts["update"] == 0:  # the warm-up acts randomly or before any update
                    return fn(*args, **kwargs)
                counts[kind] += 1
                if counts[kind] != CAPTURE_CALL or kind in got:
                    return fn(*args, **kwargs)
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    result = fn(*args, **kwargs)
                got[kind] = products_of(prof.events())
                if kind == "act":
                    got["act_rows"] = int(args[0].shape[0]) if args else num_envs
                return result

            return wrapped

        agent.update = wrap("update", agent.update)
        agent.act = wrap("act", agent.act)
        trainer.train()
    if "update" not in got:
        raise RuntimeError(f"the capture run made fewer than {CAPTURE_CALL} updates: raise --utd")
    if "act" not in got:  # an agent that never acts through act() after updates began (should not happen)
        got["act"], got["act_rows"] = [], num_envs
    return Captured(got["update"], got["act"], got["act_rows"])


def floor_sps(env_id: str, captured: Captured, steps: int, seed: int, num_envs: int, utd: float
              ) -> tuple[float, bench_sps.Window]:
    """SPS of the env stepped with random actions plus the replayed products (see the module docstring), and the CPU
    snapshots of its timed phase."""
    import gymnasium as gym

    update, act = replayer(captured.update), replayer(captured.act)
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    per_step = num_envs * utd
    credit = 0.0

    def vector_step() -> None:
        nonlocal credit
        act()
        env.step(env.action_space.sample())
        credit += per_step
        while credit >= 1.0 - 1e-9:
            update()
            credit -= 1.0

    for _ in range(WARMUP_VECTOR_STEPS):
        vector_step()
    vector_steps = max(1, -(-steps // num_envs))
    snap, t0 = bench_sps.cpu_snapshot(), time.perf_counter()
    for _ in range(vector_steps):
        vector_step()
    t1 = time.perf_counter()
    window = (snap, t0, bench_sps.cpu_snapshot(), t1)
    env.close()
    return vector_steps * num_envs / (t1 - t0), window


# ---------------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------------

SIDES = ("floor", "ours", "sb3")


def main(argv: Sequence[str] | None = None) -> int:
    a = bench_sps.parse_args(argv)
    bench_sps.get_agent(a.agent)  # an unknown name: a ConfigError listing the valid ones
    cfg = bench_sps.our_config(a.agent, a.env, a.learning_starts, a.steps, 0, a.num_envs, a.utd, a.extra)

    import gymnasium
    import torch

    gymnasium.logger.min_level = gymnasium.logger.ERROR
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    ncpu = bench_sps.machine_cpus()
    watch = bench_sps.cpu_snapshot() is not None
    ref = bench_sps.reference_name(a.agent)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, env {a.env}, agent {a.agent}, {a.steps} "
          f"timed steps, {a.num_envs} envs, UTD {a.utd:g}, {a.repeats} repeats", flush=True)

    cap = capture(a.agent, a.env, a.learning_starts, a.num_envs, a.utd, a.extra)
    print(f"captured: {len(cap.update)} products per update ({product_flops(cap.update) / 1e6:.1f} MFLOP), "
          f"{len(cap.act)} per act of {cap.act_rows} rows ({product_flops(cap.act) / 1e6:.2f} MFLOP)", flush=True)

    def timed(side: str, seed: int) -> bench_sps.Run:
        w = bench_sps.wait_for_idle(a.max_other_cpu, a.max_wait, ncpu) if watch else bench_sps.Wait(0.0)
        before, t0 = bench_sps.cpu_snapshot(), time.perf_counter()
        window: bench_sps.Window | None
        how = "fp32"
        if side == "floor":
            sps, window = floor_sps(a.env, cap, a.steps, seed, a.num_envs, a.utd)
        elif side == "ours":
            sps, how, window = bench_sps.ours(a.agent, a.env, a.learning_starts, a.steps, seed, a.num_envs, a.utd,
                                              a.extra)
        else:
            sps, window = bench_sps.sb3(ref, a.env, a.learning_starts, a.steps, seed, a.num_envs, a.utd)
        if window is None:
            window = (before, t0, bench_sps.cpu_snapshot(), time.perf_counter())
        other = bench_sps.window_other_cpu(window, ncpu)
        return bench_sps.Run(sps, other, other is not None and other > a.max_other_cpu, w.timed_out, how)

    runs: dict[str, list[bench_sps.Run]] = {s: [] for s in SIDES}
    for r in range(a.repeats):
        order = SIDES[r % 3:] + SIDES[:r % 3]
        this = {side: timed(side, r) for side in order}
        for side in SIDES:
            runs[side].append(this[side])
        marks = {s: " CONTAMINATED" if this[s].contaminated else "" for s in SIDES}
        print(f"repeat {r} ({order[0]} first): floor {this['floor'].sps:.1f}{marks['floor']} | {a.agent} "
              f"({this['ours'].how}) {this['ours'].sps:.1f}{marks['ours']} | sb3-{ref} {this['sb3'].sps:.1f}"
              f"{marks['sb3']} SPS", flush=True)

    clean = [not any(runs[s][i].contaminated for s in SIDES) for i in range(a.repeats)]
    used, note = bench_sps.repeats_used(clean)
    print(f"summary over {note}" + ("" if watch else " (contamination unknown: no /proc/stat)"))
    med = {}
    for side in SIDES:
        s = bench_sps.summarize([runs[side][i].sps for i in used])
        med[side] = statistics.median(runs[side][i].sps for i in used)
        print(f"{side}: median {s.median:.1f} SPS, min-max {s.lo:.1f}-{s.hi:.1f}")
    print(f"{a.agent}/sb3-{ref} SPS ratio: {med['ours'] / med['sb3']:.2f}; {a.agent}/floor: "
          f"{med['ours'] / med['floor']:.2f} (the share of the machine's limit that ours reaches)")
    print(f"floor/sb3-{ref} SPS ratio: {med['floor'] / med['sb3']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
