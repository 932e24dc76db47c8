"""`rl-energy sweep`: spec validation, trial expansion, and a 2 x 2 x 2 sweep on Pendulum-v1 through the local
pool and through Ray (same run directories, same progress rows), killed midway and resumed without duplicated
steps, with a failing trial reported while the others complete."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_energy import sweep
from rl_energy.cli import main
from rl_energy.errors import ConfigError

TINY = ("set: {train.total_steps: 200, train.learning_starts: 50, train.eval_every: 100, train.checkpoint_every: 100,"
        " train.eval_episodes: 1, agent.hidden: [8]}\n")
SPEC = "agents: [sac, ddpg]\nenvs: [Pendulum-v1]\nseeds: [0, 1]\n" + TINY + "grid: {train.batch_size: [16, 32]}\n"


def _spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(run_dir: Path) -> list[dict[str, str]]:
    """progress.csv without the timing columns (they differ from run to run)."""
    with (run_dir / "progress.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in ("sps", "wall_time")} for row in csv.DictReader(f)]


@pytest.mark.parametrize(("text", "key"), [
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: 2\nbogus: 1\n", "bogus"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\n", "seeds"),
    ("agents: [nope]\nenvs: [Pendulum-v1]\nseeds: 1\n", "agents"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: [0, 0]\n", "seeds"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: -2\n", "seeds"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: 1\nset: {train.seed: 3}\n", "train.seed"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: 1\ngrid: {agent.lr: []}\n", "grid.agent.lr"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: 1\nrandom: {samples: 2, space: {agent.lr: {loguniform: [0, 1]}}}\n",
     "random.space.agent.lr"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: 1\nrandom: {samples: 0, space: {agent.lr: {uniform: [0, 1]}}}\n",
     "random.samples"),
    ("agents: [sac]\nenvs: [Pendulum-v1]\nseeds: 1\nset: {agent.lr: 0.1}\ngrid: {agent.lr: [0.1, 0.2]}\n",
     "agent.lr"),
])
def test_a_bad_spec_is_an_error_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        sweep.load_spec(_spec(tmp_path, text))


def test_unknown_env_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="Pendulum-v1"):
        sweep.load_spec(_spec(tmp_path, "agents: [sac]\nenvs: [Pendulum-v9]\nseeds: 1\n"))


def test_trials_are_the_product_of_the_axes_with_stable_names(tmp_path):
    text = ("agents: [sac, ddpg]\nenvs: [Pendulum-v1]\nseeds: 3\nset: {train.total_steps: 100}\n"
            "grid: {agent.tau: [0.01, 0.02]}\n"
            "random: {samples: 2, seed: 4, space: {agent.lr: {loguniform: [0.0001, 0.01]}, "
            "agent.hidden: {choice: [[8], [16, 16]]}}}\n")
    spec = sweep.load_spec(_spec(tmp_path, text))
    trials = spec.trials()
    assert len(trials) == 2 * 1 * (2 * 2) * 3
    assert len({t.name for t in trials}) == len(trials)
    assert [t.name for t in trials] == [t.name for t in sweep.load_spec(_spec(tmp_path, text, "b.yaml")).trials()]
    for t in trials:
        s = dict(t.settings)
        assert s["train.total_steps"] == 100 and 1e-4 <= s["agent.lr"] <= 1e-2 and s["agent.hidden"] in ([8], [16, 16])
        assert "total_steps" not in t.name  # fixed settings do not name the directory
    cmd = trials[0].command(Path("/x"), resume=False)
    assert cmd[cmd.index("--seed") + 1] == "0" and "train.total_steps=100" in cmd


def _sweep(spec: Path, out: Path, *extra: str) -> int:
    return main(["sweep", str(spec), "--out", str(out), *extra])


def test_local_sweep_runs_every_trial_a_rerun_skips_them_and_ray_gives_the_same_runs(tmp_path, capsys):
    spec = _spec(tmp_path, SPEC)
    out = tmp_path / "local"
    assert _sweep(spec, out, "--jobs", "2") == 0
    dirs = sorted(p.name for p in (out / "trials").iterdir())
    assert len(dirs) == 8
    for d in dirs:
        assert json.loads((out / "trials" / d / sweep.STATUS_FILE).read_text())["status"] == "done"
        assert [r["step"] for r in _rows(out / "trials" / d)] == ["100", "200"]
    assert _sweep(spec, out, "--jobs", "2") == 0
    assert "0 run, 8 already done" in capsys.readouterr().out
    # the same seeds give the same rows (one torch thread per trial), here through Ray when it is installed
    try:
        import ray  # noqa: F401
    except ImportError:
        again = tmp_path / "again"
        assert _sweep(_spec(tmp_path, SPEC.replace("agents: [sac, ddpg]", "agents: [sac]")
                            .replace("seeds: [0, 1]", "seeds: [1]"), "one.yaml"), again, "--jobs", "2") == 0
        for d in (p.name for p in (again / "trials").iterdir()):
            assert _rows(again / "trials" / d) == _rows(out / "trials" / d)
        pytest.skip("ray is not installed (the `ray` extra): the Ray backend was not compared")
    assert _sweep(spec, tmp_path / "ray", "--backend", "ray") == 0
    assert sorted(p.name for p in (tmp_path / "ray" / "trials").iterdir()) == dirs
    for d in dirs:
        assert _rows(tmp_path / "ray" / "trials" / d) == _rows(out / "trials" / d)


def test_a_killed_sweep_resumes_without_duplicated_steps(tmp_path):
    spec = _spec(tmp_path, SPEC.replace("train.total_steps: 200", "train.total_steps: 600")
                 .replace("agents: [sac, ddpg]", "agents: [ddpg]"))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rl_energy.cli", "sweep", str(spec), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a checkpoint of a trial still running
        if any((d / "checkpoints").exists() and not (d / sweep.STATUS_FILE).exists()
               for d in (out / "trials").glob("*")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    first = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, first
    assert "interrupted" in first
    assert _sweep(spec, out, "--jobs", "2") == 0
    for d in (out / "trials").iterdir():
        steps = [r["step"] for r in _rows(d)]
        assert steps == [str(s) for s in range(100, 601, 100)], (d.name, steps)
        assert json.loads((d / sweep.STATUS_FILE).read_text())["status"] == "done"


def test_a_failing_trial_is_reported_and_the_others_complete(tmp_path, capsys):
    spec = _spec(tmp_path, SPEC.replace("grid: {train.batch_size: [16, 32]}", "grid: {train.batch_size: [16, -4]}")
                 .replace("agents: [sac, ddpg]", "agents: [ddpg]"))
    out = tmp_path / "fail"
    assert _sweep(spec, out, "--jobs", "2") == 1
    captured = capsys.readouterr()
    assert "2 run, 0 already done, 2 failed" in captured.out
    assert captured.err.count("failed: ") == 2 and "train.batch_size" in captured.err  # the log's last line
    statuses = {d.name: json.loads((d / sweep.STATUS_FILE).read_text())["status"] for d in (out / "trials").iterdir()}
    assert sorted(statuses.values()) == ["done"] * 2 + ["failed"] * 2
    assert all(("=-4" in n) == (s == "failed") for n, s in statuses.items())


def test_ray_backend_without_ray_is_one_line_naming_the_extra(tmp_path):
    spec = _spec(tmp_path, SPEC)
    code = ("import sys; sys.modules['ray'] = None\nfrom rl_energy.cli import main\n"
            f"sys.exit(main(['sweep', r'{spec}', '--out', r'{tmp_path / 'o'}', '--backend', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "rl-energy[ray]" in proc.stderr
