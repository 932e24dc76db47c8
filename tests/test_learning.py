"""Short learning smoke runs (the long checks live in scripts/bench_*.py)."""

import math

import pytest

from rl_energy.config import resolve_config
from rl_energy.registry import get_agent
from rl_energy.trainer import Trainer


def run(agent: str, env_id: str, tmp_path, *overrides: str):
    cfg = resolve_config(agent, env_id, get_agent(agent).config_cls, overrides=list(overrides))
    trainer = Trainer(cfg, tmp_path / agent, verbose=False)
    return trainer, trainer.train()


@pytest.mark.parametrize("agent", ["sac", "ddpg", "ebflow"])
def test_pendulum_return_goes_up(tmp_path, agent):
    # a random policy scores about -1200 on Pendulum-v1; every agent passes -700 within 5k steps
    trainer, result = run(agent, "Pendulum-v1", tmp_path, "train.total_steps=5000", "train.eval_every=5000",
                          "train.seed=0")
    assert result.mean > -700, result


@pytest.mark.parametrize("agent, env_id", [("sac", "Hopper-v4"), ("sac", "Ant-v4"), ("ebflow", "Ant-v4")])
def test_mujoco_smoke_runs_without_nan(tmp_path, agent, env_id):
    trainer, result = run(agent, env_id, tmp_path, "train.total_steps=400", "train.learning_starts=200",
                          "train.eval_episodes=1", "train.batch_size=64")
    assert trainer.updates == 200 and math.isfinite(result.mean)
