"""Interrupt a real `rl-energy train` process with SIGTERM, then resume it."""

import csv
import signal
import subprocess
import sys
import time

import torch

from rl_energy.checkpoint import load_checkpoint

ARGS = [
    "--agent", "sac", "--env", "Pendulum-v1", "--seed", "3", "--total-steps", "3000",
    "--set", "agent.hidden=[32,32]", "--set", "train.learning_starts=200", "--set", "train.log_every=100",
    "--set", "train.eval_every=1000", "--set", "train.eval_episodes=2", "--set", "train.checkpoint_every=500",
    "--set", "train.batch_size=64",
]


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rl_energy.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def steps(run_dir):
    with open(run_dir / "progress.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_sigterm_then_resume_continues_the_same_run(tmp_path):
    run = tmp_path / "run"
    proc = cli(*ARGS, "--run-dir", str(run))
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is well under way (past a periodic checkpoint)
        if (run / "progress.csv").is_file() and max(steps(run) or [0]) >= 1200:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Resume with: rl-energy train --resume" in err

    state, buffer_state = load_checkpoint(run / "checkpoints")
    stopped = state["step"]
    assert 1200 <= stopped < 3000
    assert steps(run)[-1] <= stopped + 100  # rows up to the interrupt
    saved_obs = buffer_state["storage"]["obs"].clone()

    proc = cli("--resume", str(run), "--total-steps", "3500")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("final eval return:")

    logged = steps(run)
    assert logged == list(range(100, 3501, 100))  # no duplicated and no missing step rows
    final, final_buffer = load_checkpoint(run / "checkpoints")
    assert final["step"] == 3500 and final["updates"] > state["updates"]
    assert final["resumes"] == 1
    # the buffer content from before the interrupt is still there, followed by new data
    torch.testing.assert_close(final_buffer["storage"]["obs"][: saved_obs.shape[0]], saved_obs)
    assert final_buffer["storage"]["obs"].shape[0] > saved_obs.shape[0]


def test_new_run_refuses_to_overwrite_an_existing_one(tmp_path):
    run = tmp_path / "run"
    short = [a if a != "3000" else "250" for a in ARGS]
    proc = cli(*short, "--run-dir", str(run), "--quiet")
    assert proc.wait(timeout=120) == 0
    proc = cli(*short, "--run-dir", str(run))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--resume" in err
