"""The GFlowNet loop (agents with ``collection = "trajectories"``): sample ``train.batch_size``
trajectories -> (truncate) -> ``agent.update`` -> evaluate -> log -> checkpoint.

``step`` counts sampled trajectories, so ``train.total_steps``, ``log_every``, ``eval_every`` and
``checkpoint_every`` are in trajectories; the replay-buffer and env-vector keys do not apply (setting
them is an error). Each evaluation (:func:`rl_energy.analysis.gflownet.sampler_metrics`) logs the exact
L1 and JSD to ``R/Z`` on enumerable envs, the log-partition error, and the top-k reward of
``agent.eval_samples`` on-policy samples; ``modes_found`` counts the distinct modes among all training
samples so far, and with ``agent.probe_samples > 0`` ``top_k_found`` is the FL-DB paper's set metric:
the mean reward of the best ``top_k`` distinct objects among all on-policy probe samples drawn after
each update.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rl_energy.agent import Agent
from rl_energy.checkpoint import load_agent_state
from rl_energy.config import RunConfig
from rl_energy.errors import ConfigError
from rl_energy.registry import get_agent
from rl_energy.trainer.base import EvalOptions, RunLoop
from rl_energy.trainer.factories import make_env, resolve_device

GFLOWNET_TRAIN_KEYS = frozenset({"total_steps", "seed", "batch_size", "eval_every", "eval_seed", "log_every",
                                 "checkpoint_every", "device", "torch_threads"})


def _dag(cfg: RunConfig, device: torch.device) -> Any:
    """The GFlowNet DAG of the run's env (a ConfigError naming the GFlowNet envs if it has none)."""
    from rl_energy.envs import gflownet_env_ids
    from rl_energy.envs.dag import DAGEnv

    env = make_env(cfg.env_id, cfg.env_kwargs)
    dag = getattr(env.unwrapped, "dag", None)
    env.close()
    if not isinstance(dag, DAGEnv):
        raise ConfigError(f"agent '{cfg.agent_name}' samples trajectories through a GFlowNet environment; "
                          f"'{cfg.env_id}' is not one. GFlowNet environments: {', '.join(gflownet_env_ids())}")
    return dag.to(device)


def _build_sampler(cfg: RunConfig, device: torch.device) -> Agent:
    dag = _dag(cfg, device)
    agent = get_agent(cfg.agent_name).cls(dag, cfg.agent, device)
    cfg.resolved.update(matmul_precision="fp32", compile=False)  # GFlowNet networks keep float32
    return agent


class TrajectoryTrainer(RunLoop, mode="trajectories", step_unit="trajectory", train_keys=GFLOWNET_TRAIN_KEYS):
    """GFlowNet training: trajectories through the env's DAG (see the module docstring)."""

    def _build(self) -> None:
        self.agent = _build_sampler(self.cfg, self.device)
        self.dag = self.agent.dag
        self.last_eval: dict[str, float] = {}
        self.modes_seen: set[int] = set()
        self.probe_log_rewards: dict[int, float] = {}
        """Distinct objects of the probe samples (state index -> log R)."""
        self._track_modes = self.dag.is_mode(self.dag.initial_states(1)) is not None

    def columns(self) -> tuple[str, ...]:
        from rl_energy.analysis.gflownet import EVAL_COLUMNS

        return self.agent.metric_names + EVAL_COLUMNS

    def _extra_state(self) -> dict[str, Any]:
        return {"modes_seen": sorted(self.modes_seen),
                "probes": [list(self.probe_log_rewards), list(self.probe_log_rewards.values())]}

    def _restore_extra(self, state: dict[str, Any], buffer_state: dict[str, Any] | None) -> None:
        self.modes_seen = set(state["modes_seen"])
        self.probe_log_rewards = dict(zip(*state["probes"], strict=True))

    def _probe(self, n: int) -> None:
        from rl_energy.trajectories import sample_trajectories

        x = sample_trajectories(self.dag, self.agent.forward_logits, n).terminal_states()
        self.probe_log_rewards.update(zip(self.dag.state_keys(x), self.dag.log_reward(x).tolist(),
                                          strict=True))

    def top_k_found(self) -> float:
        """Mean ``R`` of the best ``agent.top_k`` distinct probe samples so far."""
        log_r = torch.tensor(list(self.probe_log_rewards.values()), dtype=torch.float64)
        return float(log_r.topk(min(self.agent.config.top_k, len(log_r))).values.exp().mean())

    def evaluate(self, final: bool = False) -> dict[str, float]:
        from rl_energy.analysis.gflownet import sampler_metrics

        out = sampler_metrics(self.agent, self.dag, self.agent.config.eval_samples, self.agent.config.top_k)
        out.update(self._row())
        return out

    def _collect(self) -> int:
        from rl_energy.trajectories import sample_trajectories, truncate_trajectories

        t, c, agent, dag = self.cfg.train, self.agent.config, self.agent, self.dag
        trajs = sample_trajectories(dag, agent.forward_logits, t.batch_size, c.epsilon)
        if self._track_modes:
            x = trajs.terminal_states()
            self.modes_seen.update(dag.state_index(x[dag.is_mode(x)]).tolist())
        self.last_metrics = self._check_metrics(agent.update(truncate_trajectories(trajs, c.truncate)))
        if c.probe_samples:
            self._probe(c.probe_samples)
        self.step += t.batch_size
        self.updates += 1
        return t.batch_size

    def _row(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if self._track_modes:
            row["modes_found"] = float(len(self.modes_seen))
        if self.probe_log_rewards:
            row["top_k_found"] = self.top_k_found()
        return row

    def _progress_info(self) -> str:
        return f"L1 {self.last_eval['l1']:.3f}" if "l1" in (self.last_eval or {}) else ""

    def final_line(self, result: dict[str, float]) -> str:
        from rl_energy.analysis.gflownet import format_metrics

        return "final: " + format_metrics(result)

    # ------------------------------------------------------------------------- finished runs
    @classmethod
    def load(cls, run_dir: str | Path, cfg: RunConfig, device: torch.device) -> tuple[Agent, int]:
        """The sampler of a finished run at its last checkpoint and the trajectories it trained on; its DAG
        env is ``agent.dag``."""
        agent = _build_sampler(cfg, device)
        return agent, load_agent_state(agent, run_dir)

    @classmethod
    def evaluate_run(cls, run_dir: Path, cfg: RunConfig, opts: EvalOptions) -> str:
        """The sampler metrics from ``episodes`` x 100 samples."""
        from rl_energy.analysis.gflownet import format_metrics, sampler_metrics

        if opts.video:
            raise ConfigError("--video needs an environment with frames; GFlowNet runs have none")
        agent, step = cls.load(run_dir, cfg, resolve_device(opts.device))
        torch.manual_seed(cfg.train.eval_seed if opts.seed is None else opts.seed)
        n = 100 * opts.episodes
        metrics = sampler_metrics(agent, agent.dag, n, agent.config.top_k)
        return f"trajectory {step}: {format_metrics(metrics)} ({n} samples; L1 and JSD exact)"


def load_trained_sampler(run_dir: str | Path, device: torch.device) -> tuple[Agent, RunConfig, int]:
    """The GFlowNet agent of a ``rl-energy train`` run at its last checkpoint; ``(agent, config, trajectories)``."""
    from rl_energy.trainer.rundir import load_run_config

    cfg = load_run_config(run_dir)
    agent, step = TrajectoryTrainer.load(run_dir, cfg, device)
    return agent, cfg, step
