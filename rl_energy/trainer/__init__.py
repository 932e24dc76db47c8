"""Training loops, one per collection mode, and the one table that picks them.

:data:`LOOPS` maps an agent's ``collection`` (:attr:`rl_energy.agent.Agent.collection`) to its loop
class; :func:`loop_for` is the only place that reads it, and the CLI, ``evaluate`` and the scripts ask
it rather than branching on the mode. A step agent on a one-step task runs in the ``contexts`` loop
(as a contextual bandit). Each loop class builds its agent, trains, evaluates, loads a finished run
(``load``/``evaluate_run``) and writes its final line; what they share lives in
:class:`~rl_energy.trainer.base.RunLoop`.

* :mod:`~rl_energy.trainer.factories`: device, envs, step agents;
* :mod:`~rl_energy.trainer.evaluation`: episode evaluation and the final line of step runs;
* :mod:`~rl_energy.trainer.rundir`: run directories and the loader of saved configs;
* :mod:`~rl_energy.trainer.hooks`: the step loop's extension hooks (goal envs);
* :mod:`~rl_energy.trainer.steps`, :mod:`~rl_energy.trainer.trajectories`,
  :mod:`~rl_energy.trainer.contexts`, :mod:`~rl_energy.trainer.pairs` (offline preference pairs): the loops.

Loop modules are imported on first use, so a SAC run never imports the GFlowNet code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_energy.errors import ConfigError
from rl_energy.trainer.base import EvalOptions, RunLoop, TrainingError, TrainingInterrupted
from rl_energy.trainer.evaluation import EvalResult, evaluate_policy, final_line
from rl_energy.trainer.factories import build_agent, make_env, make_vector_env, resolve_device
from rl_energy.trainer.rundir import default_run_dir, load_run_config

if TYPE_CHECKING:
    from rl_energy.config import RunConfig

LOOPS: dict[str, str] = {
    "steps": "rl_energy.trainer.steps:Trainer",
    "trajectories": "rl_energy.trainer.trajectories:TrajectoryTrainer",
    "contexts": "rl_energy.trainer.contexts:ContextTrainer",
    "pairs": "rl_energy.trainer.pairs:PairTrainer",
}
"""``collection mode -> "module:LoopClass"``."""


def _is_task(env_id: str) -> bool:
    from rl_energy.registry import check_env_id, env_class

    check_env_id(env_id)
    cls = env_class(env_id)
    if cls is None or not cls.__module__.startswith("rl_energy."):
        return False
    from rl_energy.envs.tasks.base import OneStepTask

    return issubclass(cls, OneStepTask)


def collection_mode(agent_name: str, env_id: str) -> str:
    """The collection mode of ``agent_name`` on ``env_id``: the agent's own, except that step agents on a
    one-step task collect contexts."""
    from rl_energy.registry import get_agent

    mode = get_agent(agent_name).cls.collection
    if mode not in LOOPS:
        raise ConfigError(f"agent '{agent_name}' declares collection '{mode}'; loops exist for {', '.join(LOOPS)}")
    return "contexts" if mode == "steps" and _is_task(env_id) else mode


def loop_class(mode: str) -> type[RunLoop]:
    module, _, attr = LOOPS[mode].partition(":")
    return getattr(importlib.import_module(module), attr)


def loop_for(cfg: RunConfig) -> type[RunLoop]:
    """The loop class that runs ``cfg`` (the one lookup of :data:`LOOPS`)."""
    return loop_class(collection_mode(cfg.agent_name, cfg.env_id))


def make_trainer(cfg: RunConfig, run_dir: str | Path, resume: bool = False, verbose: bool = True) -> RunLoop:
    """The training loop for ``cfg``, ready to ``train()``."""
    return loop_for(cfg)(cfg, run_dir, resume, verbose)


def evaluate_run(run_dir: str | Path, opts: EvalOptions) -> str:
    """``rl-energy evaluate RUN_DIR``: the line its loop prints for the run's last checkpoint."""
    cfg = load_run_config(run_dir)
    return loop_for(cfg).evaluate_run(Path(run_dir), cfg, opts)


_LAZY = {
    "Trainer": "rl_energy.trainer.steps", "load_trained_agent": "rl_energy.trainer.steps",
    "TrajectoryTrainer": "rl_energy.trainer.trajectories", "load_trained_sampler": "rl_energy.trainer.trajectories",
    "ContextTrainer": "rl_energy.trainer.contexts",
    "PairTrainer": "rl_energy.trainer.pairs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rl_energy.trainer' has no attribute {name!r}")


__all__ = [
    "LOOPS", "EvalOptions", "EvalResult", "RunLoop", "TrainingError", "TrainingInterrupted", "build_agent",
    "collection_mode", "default_run_dir", "evaluate_policy", "evaluate_run", "final_line", "load_run_config",
    "loop_class", "loop_for", "make_env", "make_trainer", "make_vector_env", "resolve_device", *_LAZY,
]
