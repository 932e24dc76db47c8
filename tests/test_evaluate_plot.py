"""`rl-energy evaluate` and `rl-energy plot` on real (short) runs."""

import csv

import torch

from rl_energy.cli import main
from rl_energy.trainer import Trainer, build_agent, evaluate_policy, make_vector_env
from tests.conftest import quick_config


def test_evaluate_reports_the_checkpoint_return(tmp_path, capsys):
    """The probe env pays the action, so the return tells the trained policy from any other."""
    cfg = quick_config(total_steps=120)
    cfg.env_kwargs = {"action_reward": True}
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    trainer.train()
    envs = make_vector_env(cfg.env_id, 3, cfg.env_kwargs)
    expected = evaluate_policy(trainer.agent, envs, cfg.train.eval_seed).mean
    torch.manual_seed(123)
    fresh = build_agent(cfg, envs.single_observation_space, envs.single_action_space, torch.device("cpu"))
    untrained = evaluate_policy(fresh, envs, cfg.train.eval_seed).mean
    assert abs(expected - untrained) > 0.05, (expected, untrained)  # a load that did nothing would show
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(f"step 120: final eval return: {expected:.2f} ± 0.00 (3 episodes, deterministic)"), out


def test_evaluate_without_checkpoint_is_a_user_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("agent_name: sac\nenv_id: Pendulum-v1\n")
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_plot_writes_a_png_with_mean_and_spread(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        cfg = quick_config(total_steps=150, seed=seed, eval_every=50)
        Trainer(cfg, tmp_path / f"s{seed}", verbose=False).train()
        runs.append(str(tmp_path / f"s{seed}"))
        with open(tmp_path / f"s{seed}" / "progress.csv", newline="") as f:
            assert [r["eval_return_mean"] != "" for r in csv.DictReader(f)] == [True, True, True]
    out = tmp_path / "curves.png"
    assert main(["plot", *runs, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert main(["plot", runs[0], "--out", str(out), "--column", "nope"]) == 2


def test_bench_learning_resumes_an_interrupted_run_with_resume_alone(tmp_path, monkeypatch):
    """A run with checkpoints is continued with ``--resume`` and nothing the CLI would refuse."""
    import importlib.util
    import subprocess
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_learning", Path(__file__).resolve().parent.parent / "scripts" / "bench_learning.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: calls.append(cmd))
    fresh, interrupted = tmp_path / "sac_s0", tmp_path / "sac_s1"
    fresh.mkdir()
    (interrupted / "checkpoints").mkdir(parents=True)
    bench.run_one("sac", "Pendulum-v1", 0, 1000, fresh, 1, ["agent.tau=0.01"])
    bench.run_one("sac", "Pendulum-v1", 1, 1000, interrupted, 1, ["agent.tau=0.01"])
    new, resumed = calls
    assert "--run-dir" in new and "--seed" in new and "agent.tau=0.01" in new
    assert resumed[resumed.index("--resume") + 1] == str(interrupted)
    assert not {"--agent", "--env", "--seed", "--set", "--run-dir"} & set(resumed)
