"""Run directories: where a new run goes, and the one loader of a finished (or interrupted) run's config."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rl_energy.checkpoint import has_checkpoint
from rl_energy.config import RunConfig, load_yaml_file, run_config_from_dict
from rl_energy.errors import ConfigError
from rl_energy.registry import get_agent


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / cfg.agent_name / cfg.env_id.replace("/", "__") / f"{cfg.train.seed}-{stamp}"


def load_run_config(run_dir: str | Path, need_checkpoint: bool = True, what: str = "") -> RunConfig:
    """The :class:`RunConfig` saved in ``run_dir/config.yaml`` (a :class:`ConfigError` if it is not a run
    directory, or, with ``need_checkpoint``, has no checkpoint). ``what`` prefixes the messages."""
    run_dir = Path(run_dir)
    prefix = f"{what} " if what else ""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{prefix}{run_dir}: not a run directory (no config.yaml)")
    if need_checkpoint and not has_checkpoint(run_dir / "checkpoints"):
        raise ConfigError(f"{prefix}{run_dir} has no checkpoint to evaluate")
    saved = load_yaml_file(run_dir / "config.yaml")
    for key in ("agent_name", "env_id"):
        if not isinstance(saved.get(key), str):
            raise ConfigError(f"{prefix}{run_dir}/config.yaml has no '{key}'")
    return run_config_from_dict(saved, get_agent(saved["agent_name"]).config_cls)
