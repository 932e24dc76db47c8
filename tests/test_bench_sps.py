"""scripts/bench_sps.py: the pure helpers (UTD mapping, CPU accounting, idle wait, statistics), its flag checks and
one tiny run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.conftest import load_script, run_script

bench = load_script("bench_sps")


def _run(*args: str, timeout: float = 120):
    return run_script("bench_sps", *args, timeout=timeout)


@pytest.mark.parametrize(("num_envs", "utd", "expected"), [
    (1, 1.0, (1, 1)), (1, 0.25, (4, 1)), (4, 0.25, (1, 1)), (16, 1.0, (1, 16)), (16, 0.25, (1, 4)),
    (1, 0.2, (5, 1)), (2, 0.5, (1, 1)), (1, 2.0, (1, 2)),
])
def test_sb3_schedule(num_envs, utd, expected):
    assert bench.sb3_schedule(num_envs, utd) == expected


@pytest.mark.parametrize(("num_envs", "utd"), [(3, 0.5), (1, 0.4), (1, 1.5), (1, 0.0), (1, math.nan), (0, 1.0)])
def test_sb3_schedule_refuses_what_sb3_cannot_run(num_envs, utd):
    with pytest.raises(ValueError):
        bench.sb3_schedule(num_envs, utd)


def test_other_cpu_fraction():
    # snapshots are (busy seconds of the whole machine, this process's seconds)
    assert bench.other_cpu_fraction((100.0, 10.0), (102.0, 12.0), 2.0, 2) == 0.0  # only we were busy
    assert bench.other_cpu_fraction((100.0, 10.0), (104.0, 12.0), 2.0, 2) == pytest.approx(0.5)  # others: 1 core
    assert bench.other_cpu_fraction((100.0, 10.0), (101.0, 12.0), 2.0, 2) == 0.0  # tick noise: clamped at 0
    assert bench.other_cpu_fraction((100.0, 10.0), (110.0, 10.0), 2.0, 2) == 1.0  # clamped at 1
    assert bench.other_cpu_fraction((0.0, 0.0), (0.0, 0.0), 0.0, 2) == 0.0  # no time passed


def test_window_other_cpu_uses_the_timed_phase_only():
    # others busy one core of two over a 4 s phase; a missing snapshot gives None (reported as n/a)
    assert bench.window_other_cpu(((100.0, 10.0), 1.0, (112.0, 18.0), 5.0), 2) == pytest.approx(0.5)
    assert bench.window_other_cpu((None, 1.0, (112.0, 18.0), 5.0), 2) is None


def test_proc_parsers():
    stat = ("cpu  100 10 20 1000 50 3 4 5 7 0\ncpu0 50 5 10 500 25 1 2 2 3 0\ncpu1 50 5 10 500 25 2 2 3 4 0\n"
            "intr 1 2 3\nctxt 9\n")
    assert bench.parse_proc_stat(stat) == (100 + 10 + 20 + 3 + 4 + 5, 2)  # guest (7) is inside user already
    self_stat = "4242 (a (weird) name) S 1 2 3 0 -1 4194304 101 0 0 0 17 23 0 0 20 0 1 0 1844363 3133440 412"
    assert bench.parse_self_stat(self_stat) == 17 + 23
    with pytest.raises(ValueError):
        bench.parse_proc_stat("intr 1 2\n")


def test_cpu_snapshot_degrades_without_proc(tmp_path):
    assert bench.cpu_snapshot(str(tmp_path)) is None
    assert bench.machine_cpus(str(tmp_path)) >= 1
    if Path("/proc/stat").exists():
        busy, own = bench.cpu_snapshot()
        assert busy > 0 and own > 0


class FakeMachine:
    """A clock and /proc readings driven by a list of the others' share of 2 CPUs in each 0.5 s sample."""

    def __init__(self, shares: list[float]):
        self.t, self.busy, self.shares = 0.0, 0.0, list(shares)

    def clock(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        share = self.shares.pop(0) if self.shares else 0.0
        self.t += dt
        self.busy += share * dt * 2

    def snapshot(self):
        return self.busy, 0.0


def _wait(machine: FakeMachine, max_wait: float, **kw):
    return bench.wait_for_idle(0.05, max_wait, 2, snapshot=machine.snapshot, sleep=machine.sleep,
                               clock=machine.clock, **kw)


def test_wait_for_idle():
    idle = _wait(FakeMachine([]), 600)
    assert (idle.waited, idle.timed_out, idle.had_to_wait) == (2.0, False, False)  # 2 s of quiet samples
    calls = []
    busy_then_idle = _wait(FakeMachine([0.5, 0.5, 0.0, 0.5]), 600, on_busy=calls.append)
    assert busy_then_idle.had_to_wait and not busy_then_idle.timed_out
    assert busy_then_idle.waited == 4.0  # the quiet stretch restarts after the 4th sample
    assert calls == [pytest.approx(0.5)]  # reported once
    stuck = _wait(FakeMachine([1.0] * 100), 3)
    assert stuck.timed_out and stuck.had_to_wait and stuck.waited == 3.0
    assert _wait(FakeMachine([1.0]), 0).waited == 0.0  # --max-wait 0: no wait
    assert bench.wait_for_idle(0.05, 600, 2, snapshot=lambda: None).waited == 0.0  # no /proc: no wait
    assert _wait(FakeMachine([]), 1).waited == 1.0  # a max wait below the hold shortens the hold


def test_summaries():
    s = bench.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.lo, s.hi, s.q1, s.q3) == (3.0, 1.0, 5.0, 2.0, 4.0)
    one = bench.summarize([7.0])
    assert (one.median, one.lo, one.hi, one.q1, one.q3) == (7.0,) * 5
    assert bench.repeats_used([True, True])[0] == [0, 1]
    assert bench.repeats_used([True, False, True, True, True])[0] == [0, 2, 3, 4]
    used, note = bench.repeats_used([True, False, False, True])
    assert used == [0, 1, 2, 3] and "fewer than 3" in note


@pytest.mark.parametrize(("args", "flag"), [
    (["--repeats", "0"], "--repeats"),
    (["--num-envs", "-1"], "--num-envs"),
    (["--utd", "nan"], "--utd"),
    (["--utd", "0"], "--utd"),
    (["--utd", "-1"], "--utd"),
    (["--num-envs", "3", "--utd", "0.5"], "--utd"),
    (["--set", "foo"], "--set"),
    (["--set", "train.utd=2"], "--set"),
    (["--max-other-cpu", "2"], "--max-other-cpu"),
    (["--max-wait", "-1"], "--max-wait"),
    (["--steps", "1"], "--steps"),
    (["--num-envs", "8", "--steps", "8"], "--steps"),
    (["--learning-starts", "0"], "--learning-starts"),
    (["--steps", "x"], "--steps"),
    (["--agent", "pfpe", "--num-envs", "2"], "--num-envs"),
    (["--agent", "pfpe", "--utd", "1"], "--utd"),
    (["--agent", "sac", "--meow-ref"], "--meow-ref"),
    (["--agent", "ebflow", "--meow-ref", "--num-envs", "2"], "--num-envs"),
    (["--agent", "ebflow", "--meow-ref", "--utd", "0.5"], "--utd"),
])
def test_bad_flags(args, flag):
    out = _run(*args)
    assert out.returncode == 2, out.stderr
    assert flag in out.stderr.strip().splitlines()[-1]
    assert out.stdout == ""


def test_unknown_agent_and_key():
    out = _run("--agent", "nope", "--env", "Pendulum-v1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown agent 'nope'") and "sac" in lines[0]
    out = _run("--agent", "sac", "--env", "Pendulum-v1", "--set", "train.no_such_key=1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no_such_key" in lines[0]


def test_smoke_run():
    # vector envs and a UTD below 1 on both sides; one thread each (the test machine may be shared)
    out = _run("--env", "Pendulum-v1", "--agent", "sac", "--steps", "20", "--learning-starts", "10", "--repeats", "1",
               "--max-wait", "0", "--num-envs", "2", "--utd", "0.5", "--set", "train.torch_threads=1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("torch ") and "2 envs" in lines[0] and "UTD 0.5" in lines[0]
    assert any(re.match(r"repeat 0 \(ours first\): sac \(fp32 matmuls", line) for line in lines)  # the default
    assert any(line.startswith("contaminated repeats:") for line in lines)
    assert re.fullmatch(r"sac/sb3-sac SPS ratio: \d+\.\d\d", lines[-1])


def test_smoke_run_with_the_meow_reference():
    # the third row: ebflow (not compiled, to keep it short), SB3's SAC and the MEow reference, alternating
    out = _run("--env", "Pendulum-v1", "--agent", "ebflow", "--meow-ref", "--steps", "20", "--learning-starts", "10",
               "--repeats", "2", "--max-wait", "0", "--set", "train.compile=false", "--set", "train.torch_threads=1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert any(re.match(r"repeat 0 \(ours first\): ebflow .* \| sb3-sac .* \| meow-ref [\d.]+ SPS", line)
               for line in lines)
    assert any(line.startswith("repeat 1 (meow first)") for line in lines)
    assert any(line.startswith("meow-ref: median ") for line in lines)
    assert re.fullmatch(r"ebflow/meow-ref SPS ratio: \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"ebflow/sb3-sac SPS ratio: \d+\.\d\d", lines[-1])
