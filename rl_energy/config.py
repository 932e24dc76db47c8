"""Typed run configuration: dataclasses filled from YAML files, then ``--set`` overrides.

Resolution order (later wins):

1. the dataclass defaults (``TrainConfig``, the agent's config, and the agent config's
   ``TRAIN_DEFAULTS`` for ``train`` keys where an agent family differs, e.g. GFlowNets count trajectories),
2. ``configs/<agent>/default.yaml`` (shipped with the package),
3. ``configs/<agent>/<EnvId>.yaml`` (the paper's per-environment settings, if present), or else the
   env family's ``configs/<agent>/<prefix>.yaml`` (the id up to its first ``-``: ``rl_energy__PointMaze.yaml``),
4. ``--config FILE``,
5. ``--set section.key=value`` (values parsed as YAML scalars).

Every file is read with ``yaml.safe_load``. An unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the key (``agent.lr``), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rl_energy.errors import ConfigError, require

__all__ = ["ConfigError", "RunConfig", "TrainConfig", "require", "resolve_config", "run_config_from_dict"]


@dataclass
class TrainConfig:
    """Settings of the training loop shared by every off-policy agent."""

    total_steps: int = 1_000_000
    """Environment transitions to collect (summed over the vector envs)."""
    seed: int = 0
    num_envs: int = 1
    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_starts: int = 5_000
    """Uniform random actions (and no updates) until this many transitions are collected."""
    utd: float = 1.0
    """Update-to-data ratio: gradient steps per collected transition."""
    eval_every: int = 10_000
    """Evaluate every this many steps (0 disables periodic evaluation; a final one always runs)."""
    eval_episodes: int = 10
    eval_deterministic: bool = True
    eval_seed: int = 10_000
    """Evaluation episode i is reset with seed ``eval_seed + i`` at every evaluation (MEow protocol)."""
    log_every: int = 1_000
    checkpoint_every: int = 25_000
    """Write ``checkpoints/`` every this many steps (0: only at the end and on SIGINT/SIGTERM)."""
    device: str = "auto"
    matmul_precision: str = "fp32"
    """Precision of the network matrix products: ``fp32`` (the default: float32 throughout, as
    Stable-Baselines3 and the papers), ``bf16`` (an explicit opt-in: bfloat16 inputs, float32 accumulation
    and float32 everywhere else) or ``auto`` (bf16 where the hardware multiplies bfloat16 natively, as CPUs
    with AVX512-BF16 or AMX do, else fp32). See :mod:`rl_energy.nets`."""
    torch_threads: int = 0
    """``torch.set_num_threads`` value; 0 keeps PyTorch's default."""
    compile: bool = False
    """Compile the agent's loss (forward and backward) with ``torch.compile`` where the agent supports it
    (:meth:`rl_energy.agent.Agent.compile_update`; set back to false for agents without one). A one-off
    cost of a few seconds at the first update (4–10 s for EBFlow on 2 cores); if compilation fails
    (e.g. no C++ compiler) the run warns once and continues uncompiled."""

    def validate(self) -> None:
        positive = ["total_steps", "num_envs", "buffer_size", "batch_size", "eval_episodes", "log_every"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'train.{key}' must be > 0, got {getattr(self, key)}")
        for key in ["learning_starts", "eval_every", "checkpoint_every", "torch_threads"]:
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'train.{key}' must be >= 0, got {getattr(self, key)}")
        if not (self.utd > 0 and math.isfinite(self.utd)):
            raise ConfigError(f"config key 'train.utd' must be a positive number, got {self.utd}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"config key 'train.device' must be cpu, cuda or auto, got {self.device!r}")
        if self.matmul_precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(
                f"config key 'train.matmul_precision' must be auto, fp32 or bf16, got {self.matmul_precision!r}"
            )
        if self.buffer_size < 2 * self.num_envs:
            raise ConfigError("config key 'train.buffer_size' must hold at least two steps of every env")


EXTENSION_SECTIONS: dict[str, str] = {
    "goals": "rl_energy.goals:GoalConfig",
    "curriculum": "rl_energy.curricula:CurriculumConfig",
}
"""Config sections of the loop extensions (``section -> "module:Dataclass"``), imported when a config is built."""

MOVED_KEYS: dict[str, str] = {
    "train.her_ratio": "goals.her_ratio",
    "train.coverage_goals_per_cell": "goals.coverage_goals_per_cell",
}
"""Keys that moved to another section: saved configs are migrated, user configs get a hint."""


def _section_defaults() -> dict[str, Any]:
    out = {}
    for name, path in EXTENSION_SECTIONS.items():
        module, _, attr = path.partition(":")
        out[name] = getattr(importlib.import_module(module), attr)()
    return out


@dataclass
class RunConfig:
    """A fully resolved run: which agent on which env, with which settings.

    ``config.yaml`` holds every section (``train``, ``agent``, ``env_kwargs`` and the extensions' own,
    :data:`EXTENSION_SECTIONS`, reachable as attributes: ``cfg.goals``, ``cfg.curriculum``) and, in
    its own ``resolved`` block, the facts the run settled at start (device, matmul precision, whether
    the update compiled, which loop ran); ``resolved`` is never read back as configuration.
    """

    agent_name: str
    env_id: str
    train: TrainConfig = field(default_factory=TrainConfig)
    agent: Any = None
    """The agent's own config dataclass (e.g. :class:`rl_energy.agents.sac.SACConfig`)."""
    env_kwargs: dict = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=_section_defaults)
    """The extensions' config sections by name (see :data:`EXTENSION_SECTIONS`)."""
    resolved: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    """The config as the agent's defaults alone make it (:func:`resolve_config`; not saved): a loop
    compares against it to reject settings it would ignore (:func:`changed_keys`)."""

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute or config section {name!r}")

    def to_dict(self) -> dict:
        out = {
            "agent_name": self.agent_name,
            "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs),
            "train": dataclasses.asdict(self.train),
            "agent": dataclasses.asdict(self.agent) if self.agent is not None else {},
        }
        out.update({name: dataclasses.asdict(section) for name, section in self.sections.items()})
        if self.resolved:
            out["resolved"] = dict(self.resolved)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def changed_keys(cfg: RunConfig, section: str) -> list[str]:
    """``section.key`` names whose value differs from the agent's defaults (``[]`` without a snapshot)."""
    if cfg.defaults is None or section not in cfg.defaults:
        return []
    now = cfg.to_dict()[section]
    return [f"{section}.{k}" for k, v in now.items() if cfg.defaults[section].get(k) != v]


def validate_actor_critic(obj: Any, positive: tuple[str, ...]) -> None:
    """Checks shared by the actor-critic agent configs: γ, τ, learning rates, widths, update period."""
    require(obj, "gamma", 0 <= obj.gamma <= 1, "in [0, 1]")
    require(obj, "tau", 0 < obj.tau <= 1, "in (0, 1]")
    for key in positive:
        require(obj, key, getattr(obj, key) > 0, "> 0")
    require(obj, "hidden", bool(obj.hidden) and min(obj.hidden) >= 1, "a list of positive widths")
    require(obj, "actor_update_every", obj.actor_update_every >= 1, ">= 1")


# --------------------------------------------------------------------------------------------------
# Coercion of YAML values to the annotated field types
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise :class:`ConfigError` naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e6 in YAML is a float
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    return value


def update_dataclass(obj: Any, values: dict, prefix: str) -> None:
    """Set fields of dataclass ``obj`` from ``values``; unknown keys and bad types name the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}.{key}"
        if key not in names:
            if full in MOVED_KEYS:
                raise ConfigError(f"config key '{full}' is now '{MOVED_KEYS[full]}'")
            valid = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{full}'; valid keys in '{prefix}': {valid}")
        setattr(obj, key, _coerce(value, hints[key], full))


def _apply(cfg: RunConfig, data: dict, source: str) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    for key, value in data.items():
        if key == "train":
            update_dataclass(cfg.train, value, "train")
        elif key == "agent":
            update_dataclass(cfg.agent, value, "agent")
        elif key in cfg.sections:
            update_dataclass(cfg.sections[key], value, key)
        elif key == "env_kwargs":
            if not isinstance(value, dict):
                raise ConfigError(f"config key 'env_kwargs' must be a mapping ({source})")
            cfg.env_kwargs.update(value)
        elif key in ("agent_name", "env_id", "resolved"):
            continue  # informational in saved configs: the CLI decides these, a run resolves its facts anew
        else:
            valid = ", ".join(sorted(["agent", "env_kwargs", "train", *cfg.sections]))
            raise ConfigError(f"unknown config key '{key}' in {source}; valid top-level keys: {valid}")


def config_file_name(env_id: str) -> str:
    """File name of the per-env config: ``rl_energy/Bubble-v0`` -> ``rl_energy__Bubble-v0.yaml``."""
    return env_id.replace("/", "__") + ".yaml"


def config_family_file_name(env_id: str) -> str:
    """The env family's config, used when no per-env one exists: ``rl_energy/PointMaze-UMaze-v0`` ->
    ``rl_energy__PointMaze.yaml``."""
    return env_id.replace("/", "__").split("-")[0] + ".yaml"


def packaged_config(agent_name: str, name: str) -> dict | None:
    """Read ``configs/<agent_name>/<name>`` from the installed package, or ``None`` if absent."""
    ref = resources.files("rl_energy.configs").joinpath(agent_name, name)
    if not ref.is_file():
        return None
    return yaml.safe_load(ref.read_text()) or {}


def available_configs() -> dict[str, list[str]]:
    """Map each agent name to the env ids (or families, ``rl_energy/PointMaze-*``) with a shipped config."""
    out: dict[str, list[str]] = {}
    root = resources.files("rl_energy.configs")
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith("_"):
            names = [f.name[: -len(".yaml")].replace("__", "/") for f in entry.iterdir()
                     if f.name.endswith(".yaml") and f.name != "default.yaml"]
            envs = sorted(n if "-" in n else f"{n}-*" for n in names)  # family files: rl_energy/PointMaze-*
            out[entry.name] = envs
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value as a YAML scalar) into (path, value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"--set key {key!r} must name a section, e.g. train.seed=1 or agent.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return path, value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_yaml_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse config file {p}: {exc}") from None


def resolve_config(
    agent_name: str,
    env_id: str,
    agent_config_cls: type,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Build the :class:`RunConfig` for ``agent_name`` on ``env_id`` (see module docstring)."""
    cfg = RunConfig(agent_name=agent_name, env_id=env_id, agent=agent_config_cls())
    family_defaults = {"train": getattr(agent_config_cls, "TRAIN_DEFAULTS", {})}
    _apply(cfg, family_defaults, f"{agent_config_cls.__name__}.TRAIN_DEFAULTS")
    _apply(cfg, packaged_config(agent_name, "default.yaml"), f"configs/{agent_name}/default.yaml")
    defaults = copy.deepcopy(cfg.to_dict())
    env_file = config_file_name(env_id)
    family_file = config_family_file_name(env_id)
    if packaged_config(agent_name, env_file) is None and packaged_config(agent_name, family_file) is not None:
        env_file = family_file  # one file for a family of envs, e.g. rl_energy__PointMaze.yaml
    _apply(cfg, packaged_config(agent_name, env_file), f"configs/{agent_name}/{env_file}")
    if config_file is not None:
        _apply(cfg, load_yaml_file(config_file), str(config_file))
    for text in overrides or []:
        path, value = parse_override(text)
        _apply(cfg, _nest(path, value), f"--set {text}")
    validate(cfg)
    cfg.defaults = defaults
    return cfg


def validate(cfg: RunConfig) -> None:
    cfg.train.validate()
    for section in cfg.sections.values():
        section.validate()
    check = getattr(cfg.agent, "validate", None)
    if check is not None:
        check()


def run_config_from_dict(data: dict, agent_config_cls: type) -> RunConfig:
    """Rebuild a saved ``config.yaml`` (used by ``--resume`` and ``evaluate``)."""
    cfg = RunConfig(agent_name=data["agent_name"], env_id=data["env_id"], agent=agent_config_cls())
    data = copy.deepcopy(data)
    for old, new in MOVED_KEYS.items():  # configs saved before a key moved
        (old_sec, old_key), (new_sec, new_key) = old.split("."), new.split(".")
        if old_key in (data.get(old_sec) or {}):
            data.setdefault(new_sec, {}).setdefault(new_key, data[old_sec].pop(old_key))
    _apply(cfg, data, "config.yaml")
    validate(cfg)
    return cfg
