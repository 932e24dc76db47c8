import subprocess
import sys

from rl_energy.cli import main


def test_unknown_agent_exits_2_and_lists_agents(capsys):
    assert main(["train", "--agent", "sacc", "--env", "Pendulum-v1"]) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'sacc'" in err and "sac" in err and "ddpg" in err and "Traceback" not in err


def test_unknown_env_exits_2_and_lists_envs(capsys):
    assert main(["train", "--agent", "sac", "--env", "Pendulm-v1"]) == 2
    err = capsys.readouterr().err
    assert "unknown environment 'Pendulm-v1'" in err and "Ant-v4" in err and "Pendulum-v1" in err


def test_bad_set_names_the_key(capsys):
    assert main(["train", "--agent", "sac", "--env", "Pendulum-v1", "--set", "agent.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "agent.lr" in err and "actor_lr" in err


def test_console_script_user_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "rl_energy.cli", "train", "--agent", "nope", "--env", "Pendulum-v1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "valid agents" in proc.stderr.lower()


def test_list_shows_agents_envs_and_shipped_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    agents, rest = out.split("rl-energy environments", 1)
    envs, configs = rest.split("Shipped configs", 1)
    assert {line.split()[0] for line in agents.splitlines()[1:] if line.strip()} >= {"sac", "ddpg", "ebflow", "tb"}
    assert "rl_energy/HierPoly-v0" in envs and "rl_energy/BubblePosition-v0" in envs
    shipped = {line.split()[0]: line for line in configs.splitlines()[1:] if line.strip()}
    assert "Ant-v4" in shipped["ebflow"] and "rl_energy/PointMaze-*" in shipped["sac"]
    assert "rl_energy/SetGeneration-v0" in shipped["tb"] and "Ant-v4" not in shipped["tb"]


def test_resume_of_missing_run_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
