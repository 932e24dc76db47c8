"""The ``contexts`` loop: one-step tasks (:class:`rl_energy.envs.tasks.OneStepTask`) trained batch by batch.

Per update it draws ``train.batch_size`` training contexts (the task's sampling, e.g. stratified) and

* gives a **full-information** agent (``uses_labels = True``) the batch with its labels (``obs``,
  ``target``);
* lets a **reward-only** agent act, has the task score the actions and hands over ``obs``, ``action``,
  ``reward``. Step agents (SAC, EBFlow, DDPG) also get ``next_obs = obs`` and ``terminated = True``:
  they run unchanged as maximum-entropy contextual bandits (γ drops out, episodes have one step),
  acting in ``[-1, 1]`` rescaled to the task's bounded action space.

``step`` counts contexts drawn, so ``total_steps``, ``eval_every``, ``log_every`` and
``checkpoint_every`` are in contexts. Each evaluation scores deterministic actions (sampled ones on
``sampling`` tasks, whose figures are about the action distribution) on the task's whole fixed test
split and logs the mean score (``eval_return_mean``) and the task's batch-level metrics.
The agent sees the whole train split once before training (:meth:`Agent.observe_train_split`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict

from rl_energy.agent import Agent, NonFiniteError
from rl_energy.checkpoint import load_agent_state
from rl_energy.config import RunConfig
from rl_energy.errors import ConfigError
from rl_energy.trainer.base import EvalOptions, RunLoop
from rl_energy.trainer.factories import build_agent, make_env, resolve_device

CONTEXT_TRAIN_KEYS = frozenset({"total_steps", "seed", "batch_size", "eval_every", "log_every", "checkpoint_every",
                                "device", "torch_threads", "matmul_precision", "compile"})


class TaskRun:
    """A one-step task with an agent built for it: acting in the task's units and scoring on its test split."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        from rl_energy.envs import task_env_ids
        from rl_energy.envs.tasks.base import OneStepTask

        self.env = make_env(cfg.env_id, cfg.env_kwargs)
        task = self.env.unwrapped
        if not isinstance(task, OneStepTask):
            self.env.close()
            raise ConfigError(f"agent '{cfg.agent_name}' trains on one-step tasks; '{cfg.env_id}' is not one. "
                              f"One-step tasks: {', '.join(task_env_ids())}")
        self.task: OneStepTask = task
        self.agent: Agent = build_agent(cfg, task.observation_space, task.action_space, device)
        self.device = device
        self.uses_labels = self.agent.collection == "contexts" and self.agent.uses_labels
        if self.uses_labels and not task.full_information:
            raise ConfigError(f"agent '{cfg.agent_name}' learns from labels; task '{cfg.env_id}' gives rewards only")
        self.rescaled = self.agent.collection == "steps"
        """Step agents act in [-1, 1]; the task's actions are its own (bounded) Box."""
        low = torch.as_tensor(task.action_space.low, dtype=torch.float32, device=device)
        high = torch.as_tensor(task.action_space.high, dtype=torch.float32, device=device)
        self._low, self._half = low, (high - low) / 2
        self.test = task.contexts("test").to(device)

    def to_task(self, action: torch.Tensor) -> torch.Tensor:
        """An agent's action in the task's units."""
        return self._low + (action + 1.0) * self._half if self.rescaled else action

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic (on ``sampling`` tasks: sampled) actions on the whole test split: mean and spread of
        the score, and the task's metrics."""
        was_training = self.agent.training
        self.agent.train(False)
        try:
            action = self.to_task(self.agent.act(self.test["obs"], deterministic=not self.task.sampling))
        finally:
            self.agent.train(was_training)
        reward = self.task.score(self.test, action)
        out = {"eval_return_mean": float(reward.mean()), "eval_return_std": float(reward.std(correction=0))}
        out.update({k: float(v) for k, v in self.task.metrics(self.test, action).items()})
        return out

    def describe(self, result: dict[str, float]) -> str:
        figures = " | ".join(f"{k} {result[k]:.4g}" for k in ("eval_return_mean", *self.task.metric_names)
                             if k in result)
        how = "sampled" if self.task.sampling else "deterministic"
        return f"{figures} ({self.task.split_size('test')} test contexts, {how})"


class ContextTrainer(RunLoop, mode="contexts", step_unit="context", train_keys=CONTEXT_TRAIN_KEYS):
    """Training on a one-step task (see the module docstring)."""

    def _build(self) -> None:
        self.run = TaskRun(self.cfg, self.device)
        self.task, self.agent = self.run.task, self.run.agent
        self.agent.observe_train_split(self.task.contexts("train").to(self.device))
        self.last_eval: dict[str, float] = {}

    def columns(self) -> tuple[str, ...]:
        return self.agent.metric_names + self.task.metric_names

    def _close(self) -> None:
        self.run.env.close()

    def _collect(self) -> int:
        n = self.cfg.train.batch_size
        batch = self.task.contexts("train", n, self.rng).to(self.device)
        if self.run.uses_labels:
            metrics = self.agent.update(batch)
        else:
            with torch.no_grad():
                action = self.agent.act(batch["obs"]).float().reshape(n, -1)
            if not bool(torch.isfinite(action).all()):
                raise NonFiniteError("action", "the policy produced NaN/inf")
            reward = self.task.score(batch, self.run.to_task(action).reshape(n, *self.task.action_space.shape))
            if not bool(torch.isfinite(reward).all()):
                raise NonFiniteError("reward", "the task scored NaN/inf")
            step = TensorDict({"obs": batch["obs"], "action": action, "reward": reward.float(),
                               "next_obs": batch["obs"], "terminated": torch.ones(n, dtype=torch.bool,
                                                                                  device=self.device)},
                              batch_size=[n])
            metrics = self.agent.update(step)
        return self._count_update(metrics, n)

    def evaluate(self, final: bool = False) -> dict[str, float]:
        return self.run.evaluate()

    def _progress_info(self) -> str:
        names = [m for m in self.task.metric_names if m in (self.last_eval or {})]
        return f"{names[0]} {self.last_eval[names[0]]:.3g}" if names else ""

    def final_line(self, result: dict[str, float]) -> str:
        return "final test: " + self.run.describe(result)

    # ------------------------------------------------------------------------- finished runs
    @classmethod
    def load(cls, run_dir: str | Path, cfg: RunConfig, device: torch.device) -> tuple[TaskRun, int]:
        """The task and agent of a finished run at its last checkpoint, and the contexts it trained on."""
        run = TaskRun(cfg, device)
        return run, load_agent_state(run.agent, run_dir)

    @classmethod
    def evaluate_run(cls, run_dir: Path, cfg: RunConfig, opts: EvalOptions) -> str:
        """The test-split figures of the run's last checkpoint (the split is fixed: ``--episodes`` and
        ``--seed`` do not apply; ``sampling`` tasks always sample)."""
        if opts.video:
            raise ConfigError("--video needs an environment with frames; one-step tasks have none")
        run, step = cls.load(run_dir, cfg, resolve_device(opts.device))
        try:
            if not opts.deterministic and not run.task.sampling:
                raise ConfigError("this one-step task is evaluated with deterministic actions; drop --stochastic")
            return f"context {step}: test " + run.describe(run.evaluate())
        finally:
            run.env.close()
