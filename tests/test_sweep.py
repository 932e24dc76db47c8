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


def _fake_sweep(root: Path, finals: dict[tuple[str, int], float]) -> None:
    """A sweep directory as `rl-energy sweep` leaves it (status files and progress.csv), with chosen final scores."""
    for (agent, seed), final in finals.items():
        d = root / "trials" / f"{agent}__Pendulum-v1__seed{seed}"
        d.mkdir(parents=True)
        (d / sweep.STATUS_FILE).write_text(json.dumps({"status": "done", "agent": agent, "env": "Pendulum-v1",
                                                       "seed": seed, "settings": {}}))
        (d / "progress.csv").write_text(f"step,eval_return_mean\n100,{final - 50}\n200,\n300,{final}\n")
    failed = root / "trials" / "sac__Pendulum-v1__seed99"
    failed.mkdir()
    (failed / sweep.STATUS_FILE).write_text(json.dumps({"status": "failed", "agent": "sac", "env": "Pendulum-v1",
                                                        "seed": 99}))


def test_report_equals_rliable_called_directly(tmp_path):
    pytest.importorskip("rliable.library")
    import numpy as np
    from rliable import library as rly
    from rliable import metrics

    from rl_energy import report

    rng = np.random.default_rng(0)
    finals = {(a, s): float(rng.normal(-300 if a == "sac" else -600, 80)) for a in ("sac", "ddpg") for s in range(6)}
    _fake_sweep(tmp_path / "sw", finals)
    assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "rep"), "--reps", "500"]) == 0
    scores = {a: np.array([finals[(a, s)] for s in range(6)])[:, None] for a in ("ddpg", "sac")}
    assert {k: v.tolist() for k, v in report.score_dicts(report.collect(tmp_path / "sw"))["Pendulum-v1"].items()} \
        == {k: v.tolist() for k, v in scores.items()}  # the failed trial is left out, the last logged value kept
    np.random.seed(0)  # rliable's stratified resampler draws from NumPy's global generator
    points, cis = rly.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]), reps=500)
    ours = report.interval_estimates(scores, reps=500, seed=0)
    for a in scores:
        assert ours[a]["mean"] == pytest.approx((points[a][0], cis[a][0, 0], cis[a][1, 0]))
        assert ours[a]["iqm"] == pytest.approx((points[a][1], cis[a][0, 1], cis[a][1, 1]))
    text = (tmp_path / "rep" / "report.md").read_text()
    m = ours["sac"]["iqm"]
    assert f"{m[0]:.4g} [{m[1]:.4g}, {m[2]:.4g}]" in text and "sac > ddpg" in text
    poi = report.improvement(scores, reps=500, seed=0)
    assert poi["sac > ddpg"][0] > 0.9  # sac's scores are far higher
    for name in ("profile_Pendulum-v1.png", "curves_Pendulum-v1.png"):
        assert (tmp_path / "rep" / name).is_file()


def test_report_of_a_directory_that_is_no_sweep_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_bootstrap_band_is_rliables_and_narrows_with_more_seeds():
    pytest.importorskip("rliable.library")
    import numpy as np

    from rl_energy.plotting import bootstrap_ci

    rng = np.random.default_rng(1)
    few, many = rng.normal(size=(5, 4)), rng.normal(size=(80, 4))
    a, b = bootstrap_ci(few, resamples=1000), bootstrap_ci(few, resamples=1000)
    np.testing.assert_array_equal(a, b)  # seeded
    assert np.all(a[0] < few.mean(0)) and np.all(few.mean(0) < a[1])
    assert np.all(np.diff(bootstrap_ci(many, resamples=1000), axis=0) < np.diff(a, axis=0))


def test_reproduce_lists_24_papers_each_with_a_script_and_the_docs_carry_the_same_table(capsys):
    from rl_energy import reproductions as rep

    assert len(rep.REPRODUCTIONS) == 24 and len({r.name for r in rep.REPRODUCTIONS}) == 24
    root = Path(__file__).resolve().parents[1]
    for r in rep.REPRODUCTIONS:
        assert (root / "scripts" / r.script).is_file(), r.script
        assert r.status in rep.STATUSES
    assert rep.summary_markdown() in (root / "docs" / "reproductions.md").read_text()
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(r.name in out for r in rep.REPRODUCTIONS)
    assert main(["reproduce", "nope"]) == 2 and "valid: meow, bubble" in capsys.readouterr().err
    # a script runs with the arguments after --, and its exit status is the command's
    assert main(["reproduce", "radio", "--", "--test", "0"]) == 2
