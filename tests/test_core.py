"""The core's contracts: the loop table, lazy imports, optional extras, settings never silently ignored,
the ``resolved`` block of config.yaml, and every shipped YAML."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rl_energy.config import ConfigError, available_configs, resolve_config
from rl_energy.registry import AGENTS, get_agent
from rl_energy.trainer import LOOPS, collection_mode, loop_for, make_trainer
from tests.conftest import quick_config

GFLOWNET_MODULES = ("rl_energy.agents.gflownet", "rl_energy.envs.dag", "rl_energy.trajectories",
                    "rl_energy.analysis.gflownet", "rl_energy.trainer.trajectories")
HEAVY = ("numba", "sklearn")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or m in GFLOWNET_MODULES]


def test_cli_import_pulls_no_optional_or_gflownet_module():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import rl_energy.cli"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "rl_energy.cli" in imported and not _heavy(imported), _heavy(imported)


def test_a_sac_run_imports_no_numba_sklearn_or_gflownet_module(tmp_path):
    proc = _run(f"""
        import sys
        from rl_energy.cli import main
        rc = main(["train", "--agent", "sac", "--env", "Pendulum-v1", "--total-steps", "60", "--quiet",
                   "--run-dir", r"{tmp_path / 'run'}", "--set", "train.learning_starts=20",
                   "--set", "train.batch_size=8", "--set", "agent.hidden=[8]", "--set", "train.eval_episodes=1"])
        print("RC", rc)
        print("MODULES", ",".join(sorted(sys.modules)))
    """)
    assert "RC 0" in proc.stdout, proc.stderr
    modules = proc.stdout.split("MODULES ")[1].strip().split(",")
    assert "rl_energy.agents.sac" in modules and "rl_energy.trainer.steps" in modules
    assert not _heavy(modules), _heavy(modules)


def test_a_missing_extra_breaks_only_what_needs_it(tmp_path):
    proc = _run(f"""
        import sys
        sys.modules["numba"] = None  # as if numba were not installed
        from rl_energy.cli import main
        print("BUBBLE", main(["train", "--agent", "ddpg", "--env", "rl_energy/BubblePosition-v0"]))
        print("LINEAR", main(["evaluate", "--agent", "bubble_linear", "--env", "rl_energy/BubblePosition-v0"]))
        print("SAC", main(["train", "--agent", "sac", "--env", "Pendulum-v1", "--total-steps", "40", "--quiet",
                           "--run-dir", r"{tmp_path / 'run'}", "--set", "train.learning_starts=20",
                           "--set", "train.batch_size=8", "--set", "agent.hidden=[8]",
                           "--set", "train.eval_episodes=1"]))
        print("LIST", main(["list"]))
    """)
    out, err = proc.stdout, proc.stderr
    assert "BUBBLE 2" in out and "LINEAR 2" in out and "SAC 0" in out and "LIST 0" in out, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "Traceback" not in err, err
    for line in lines:
        assert "'numba'" in line and "pip install 'rl-energy[bubble]'" in line, line
    assert "bubble_linear" in out and "rl-energy[bubble]" in out.split("bubble_linear", 1)[1].splitlines()[0]


def test_mega_without_scipy_fails_at_the_start_in_one_line_naming_the_extra(tmp_path):
    proc = _run(f"""
        import sys
        sys.modules["scipy"] = None  # as if scipy were not installed
        sys.modules["scipy.ndimage"] = None
        from rl_energy.cli import main
        print("MEGA", main(["train", "--agent", "ddpg", "--env", "rl_energy/PointMaze-Snake-v0", "--curriculum",
                            "mega", "--run-dir", r"{tmp_path / 'mega'}", "--quiet"]))
    """)
    assert "MEGA 2" in proc.stdout, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "MEGA's density model" in lines[0] and "pip install 'rl-energy[sklearn]'" in lines[0], lines[0]


def test_without_the_atoms_extra_its_commands_fail_in_one_line_naming_it():
    proc = _run("""
        import runpy, sys
        for name in ("ase", "rdkit", "tblite", "e3nn"):
            sys.modules[name] = None  # as if the chemistry packages were not installed
        from rl_energy.cli import main
        print("S2EF", main(["train", "--agent", "mlff", "--env", "rl_energy/S2EF-v0"]))
        print("RELAX", main(["train", "--agent", "mlff", "--env", "rl_energy/ConformerRelax-v0"]))
        print("LIST", main(["list"]))
        for script in ("reproduce_scn", "reproduce_asteroid", "reproduce_mlff_shift", "reproduce_golf", "bench_atoms"):
            sys.argv = [script, "--quick"]
            try:
                runpy.run_path(rf"SCRIPTS/{script}.py", run_name="__main__")
            except SystemExit as exc:
                print(script.upper(), exc.code)
    """.replace("SCRIPTS", str(Path(__file__).resolve().parents[1] / "scripts")))
    out, err = proc.stdout, proc.stderr
    for tag in ("S2EF 2", "RELAX 2", "LIST 0", "REPRODUCE_SCN 2", "REPRODUCE_ASTEROID 2", "REPRODUCE_MLFF_SHIFT 2",
                "REPRODUCE_GOLF 2", "BENCH_ATOMS 2"):
        assert tag in out, (tag, out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 7 and "Traceback" not in err, err
    assert all("pip install 'rl-energy[atoms]'" in line for line in lines), lines


def test_the_loop_table_picks_each_mode_once():
    assert set(LOOPS) == {"steps", "trajectories", "contexts", "pairs"}
    assert collection_mode("sac", "Pendulum-v1") == "steps"
    assert collection_mode("tb", "rl_energy/HyperGrid-v0") == "trajectories"
    assert collection_mode("layerwise", "rl_energy/HierPoly-v0") == "contexts"
    assert collection_mode("ebflow", "rl_energy/HierPoly-v0") == "contexts"  # step agents as contextual bandits
    assert collection_mode("radpo", "rl_energy/SentimentPreference-v0") == "pairs"
    for name in AGENTS:
        assert get_agent(name).cls.collection in LOOPS


@pytest.mark.parametrize(("agent", "env_id", "override", "key"), [
    ("tb", "rl_energy/HyperGrid-v0", "train.num_envs=4", "train.num_envs"),
    ("fldb", "rl_energy/HyperGrid-v0", "train.matmul_precision=bf16", "train.matmul_precision"),
    ("sac", "rl_energy/HierPoly-v0", "train.learning_starts=10", "train.learning_starts"),
    ("layerwise", "rl_energy/HierPoly-v0", "train.buffer_size=100", "train.buffer_size"),
    ("sac", "Pendulum-v1", "goals.her_ratio=0.5", "goals.her_ratio"),
    ("sac", "Pendulum-v1", "curriculum.name=svgg", "curriculum.name"),
])
def test_a_setting_the_loop_would_ignore_is_an_error_naming_the_key(tmp_path, agent, env_id, override, key):
    cfg = resolve_config(agent, env_id, get_agent(agent).config_cls, overrides=[override])
    with pytest.raises(ConfigError, match=f"'{key}'"):
        make_trainer(cfg, tmp_path / "run", verbose=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_an_undeclared_metric_is_an_error(tmp_path, monkeypatch):
    from rl_energy.agents.sac import SAC

    update = SAC.update
    monkeypatch.setattr(SAC, "update", lambda self, batch: {**update(self, batch), "surprise": 0.0})
    trainer = make_trainer(quick_config(total_steps=80), tmp_path / "run", verbose=False)
    with pytest.raises(TypeError, match="surprise"):
        trainer.train()


def test_config_yaml_keeps_settings_and_puts_run_facts_in_their_own_block(tmp_path):
    cfg = quick_config(total_steps=60, matmul_precision="auto")
    make_trainer(cfg, tmp_path / "run", verbose=False).train()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["matmul_precision"] == "auto" and saved["train"]["compile"] is False
    assert saved["resolved"]["loop"] == "steps" and saved["resolved"]["device"] == "cpu"
    assert saved["resolved"]["matmul_precision"] in ("fp32", "bf16") and saved["resolved"]["compile"] is False
    assert set(saved) >= {"train", "agent", "env_kwargs", "goals", "curriculum"}


@pytest.mark.parametrize("agent", ["sac", "ebflow"])
def test_a_fresh_run_multiplies_in_float32_by_default(tmp_path, agent):
    """bf16 matmuls are an explicit opt-in (``train.matmul_precision=bf16``): a fresh run with the shipped configs
    says fp32 in its config.yaml, as set and as resolved."""
    env = "Pendulum-v1"
    cfg = resolve_config(agent, env, get_agent(agent).config_cls, overrides=[
        "train.total_steps=40", "train.learning_starts=20", "train.batch_size=8", "train.eval_every=0",
        "train.eval_episodes=1", "train.checkpoint_every=0", "train.compile=false"])
    make_trainer(cfg, tmp_path / "run", verbose=False).train()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["matmul_precision"] == "fp32" and saved["resolved"]["matmul_precision"] == "fp32"


def test_old_config_yaml_with_goal_keys_under_train_still_loads(tmp_path):
    from rl_energy.config import run_config_from_dict

    old = quick_config().to_dict()
    old["train"].update(her_ratio=0.5, coverage_goals_per_cell=2)
    for section in ("goals", "resolved"):
        old.pop(section, None)
    cfg = run_config_from_dict(old, get_agent("sac").config_cls)
    assert cfg.goals.her_ratio == 0.5 and cfg.goals.coverage_goals_per_cell == 2
    with pytest.raises(ConfigError, match="'train.her_ratio' is now 'goals.her_ratio'"):
        quick_config(her_ratio=0.5)


def _shipped() -> list[tuple[str, str]]:
    pairs = []
    for agent, envs in sorted(available_configs().items()):
        for env in envs:
            pairs.append((agent, env.replace("-*", "-Open-v0") if env.endswith("-*") else env))
    return pairs


@pytest.mark.parametrize(("agent", "env_id"), _shipped())
def test_every_shipped_yaml_resolves_and_its_loop_accepts_it(agent, env_id):
    cfg = resolve_config(agent, env_id, get_agent(agent).config_cls)
    loop_for(cfg).check_train_keys(cfg)


def test_every_default_yaml_resolves():
    for agent in AGENTS:
        env = {"steps": "Pendulum-v1", "trajectories": "rl_energy/HyperGrid-v0",
               "contexts": "rl_energy/HierPoly-v0", "pairs": "rl_energy/SentimentPreference-v0"}[
            get_agent(agent).cls.collection]
        if get_agent(agent).cls.discrete_actions:
            env = "CartPole-v1"
        if agent == "bubble_linear":
            env = "rl_energy/BubblePosition-v0"
        cfg = resolve_config(agent, env, get_agent(agent).config_cls)
        loop_for(cfg).check_train_keys(cfg)
