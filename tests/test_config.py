import pytest
import yaml

from rl_energy.agents.sac import SACConfig
from rl_energy.config import ConfigError, parse_override, resolve_config


def test_per_env_config_overrides_default_and_set_overrides_both():
    cfg = resolve_config("sac", "Pendulum-v1", SACConfig)
    assert cfg.train.learning_starts == 1000  # configs/sac/Pendulum-v1.yaml
    assert cfg.agent.actor_lr == pytest.approx(1e-3)
    assert cfg.agent.hidden == [256, 256]  # configs/sac/default.yaml
    cfg = resolve_config("sac", "Pendulum-v1", SACConfig, overrides=["agent.actor_lr=3e-4", "train.seed=7"])
    assert cfg.agent.actor_lr == pytest.approx(3e-4)  # '3e-4' is a YAML string; still a float
    assert cfg.train.seed == 7


def test_config_file_layer(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"train": {"batch_size": 64}, "agent": {"tau": 0.01}}))
    cfg = resolve_config("sac", "Hopper-v4", SACConfig, config_file=f)
    assert cfg.train.batch_size == 64 and cfg.agent.tau == pytest.approx(0.01)


@pytest.mark.parametrize(
    "override, key",
    [
        ("agent.alhpa=0.1", "agent.alhpa"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("agent.autotune=maybe", "agent.autotune"),
        ("agent.hidden=7", "agent.hidden"),
        ("agent.gamma=1.5", "agent.gamma"),
        ("train.total_steps=0", "train.total_steps"),
        ("train.matmul_precision=fp16", "train.matmul_precision"),
        ("optim.lr=1", "optim"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config("sac", "Hopper-v4", SACConfig, overrides=[override])


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  totl_steps: 5\n")
    with pytest.raises(ConfigError, match="train.totl_steps"):
        resolve_config("sac", "Hopper-v4", SACConfig, config_file=f)


def test_parse_override_needs_a_section():
    assert parse_override("train.seed=3") == (["train", "seed"], 3)
    with pytest.raises(ConfigError):
        parse_override("seed=3")
    with pytest.raises(ConfigError):
        parse_override("train.seed")
