"""The off-policy step loop: collect -> buffer -> agent.update -> evaluate -> log -> checkpoint.

Gymnasium 1.x autoreset (``NEXT_STEP`` mode): when an env's episode ends at step ``t`` the step
returns the true final observation; the next ``step`` call ignores its action and only resets. The
loop therefore

* stores the final observation as the transition's next observation, so a **truncated** transition
  bootstraps from it, while a **terminated** one does not (its ``terminated`` flag is set);
* marks the reset step invalid: it is never sampled, never counted as a step, and triggers no update.

``step`` counts real transitions summed over the vector envs. Optional extensions (goal envs:
:class:`rl_energy.goals.GoalExtension`) plug in through :mod:`rl_energy.trainer.hooks`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from rl_energy.agent import Agent, NonFiniteError
from rl_energy.buffers import ReplayBuffer
from rl_energy.checkpoint import load_checkpoint
from rl_energy.config import RunConfig
from rl_energy.errors import ConfigError
from rl_energy.trainer.base import EvalOptions, RunLoop
from rl_energy.trainer.evaluation import EvalResult, evaluate_policy, final_line
from rl_energy.trainer.factories import build_agent, make_env, make_vector_env, resolve_device
from rl_energy.trainer.hooks import StepExtension, step_extensions


def _extensions(cfg: RunConfig, training: bool) -> dict[str, StepExtension]:
    env = make_env(cfg.env_id, cfg.env_kwargs)
    try:
        return step_extensions(cfg, env.unwrapped, training)
    finally:
        env.close()


def _wrappers(extensions: dict[str, StepExtension], training: bool) -> list:
    return [w for ext in extensions.values() for w in (ext.wrappers() if training else ext.eval_wrappers())]


class Trainer(RunLoop, mode="steps"):
    """Owns the vector env, the buffer, evaluation, logging and checkpoints of one step run."""

    has_buffer: ClassVar[bool] = True

    def _build(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.extensions = _extensions(cfg, training=True)
        self.envs = make_vector_env(cfg.env_id, t.num_envs, cfg.env_kwargs, _wrappers(self.extensions, True))
        for ext in self.extensions.values():
            ext.bind(self.envs)
        self.eval_envs = make_vector_env(cfg.env_id, t.eval_episodes, cfg.env_kwargs,
                                         _wrappers(self.extensions, False))
        self.agent = build_agent(cfg, self.envs.single_observation_space, self.envs.single_action_space, self.device)
        for ext in self.extensions.values():
            ext.bind_agent(self.agent)
        self.action_dim = self.agent.action_dim
        obs_shape = self.envs.single_observation_space.shape
        buffers = [b for ext in self.extensions.values()
                   if (b := ext.make_buffer(t.buffer_size, t.num_envs, obs_shape, self.action_dim, self.device,
                                            t.seed)) is not None]
        self.buffer: ReplayBuffer = buffers[0] if buffers else ReplayBuffer(
            t.buffer_size, t.num_envs, obs_shape, self.action_dim, self.device, seed=t.seed)
        self.episodes = 0
        self.update_debt = 0.0
        self._recent_returns: list[float] = []
        self._recent_lengths: list[int] = []
        self.obs: np.ndarray | None = None
        self._ext_eval: dict[str, float] = {}

    def columns(self) -> tuple[str, ...]:
        return tuple(c for ext in self.extensions.values() for c in ext.columns) + self.agent.metric_names

    # ------------------------------------------------------------------------------------ seeding
    def _reset_envs(self) -> np.ndarray:
        n = self.cfg.train.num_envs
        # a resumed run re-seeds its envs differently so that it does not replay the first episodes
        base = self.cfg.train.seed + 1_000_003 * self.resumes
        obs, _ = self.envs.reset(seed=[base + i for i in range(n)])
        self.envs.action_space.seed(base)
        return obs

    # -------------------------------------------------------------------------------- checkpoints
    def _extra_state(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "update_debt": self.update_debt,
                "last_obs": torch.as_tensor(self.obs, dtype=torch.float32),
                "extensions": {name: ext.state_dict() for name, ext in self.extensions.items()}}

    def _buffer_state(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def _eval_state(self, result: EvalResult | None) -> Any:
        return None if result is None else [result.mean, result.std]

    def _eval_from_state(self, state: Any) -> EvalResult | None:
        return None if state is None else EvalResult(state[0], state[1], [])

    def _restore_extra(self, state: dict[str, Any], buffer_state: dict[str, Any] | None) -> None:
        if buffer_state is not None:
            self.buffer.load_state_dict(buffer_state)
        self.episodes, self.update_debt = state["episodes"], state["update_debt"]
        saved = state.get("extensions", {})
        if "curriculum" in state:  # checkpoints written before the goal extension had its own entry
            saved = {"goals": {"curriculum": state["curriculum"]}}
        for name, ext in self.extensions.items():
            ext.load_state_dict(saved.get(name, {}), self.step // self.cfg.train.num_envs)
        # the env is re-created: the last observation closes each env's stream in the buffer
        self.buffer.close_stream(state["last_obs"].numpy())

    # ---------------------------------------------------------------------------------------- loop
    def _close(self) -> None:
        self.envs.close()
        self.eval_envs.close()

    def _begin(self) -> None:
        n = self.cfg.train.num_envs
        self.obs = self._reset_envs()
        self._prev_done = np.zeros(n, dtype=bool)
        self._ep_return = np.zeros(n)
        self._ep_length = np.zeros(n, dtype=np.int64)

    def _collect(self) -> int:
        t, agent, buffer = self.cfg.train, self.agent, self.buffer
        n = t.num_envs
        if self.step < t.learning_starts and agent.discrete_actions:
            action = self.rng.integers(agent.n_actions, size=n)
        elif self.step < t.learning_starts:
            action = self.rng.uniform(-1.0, 1.0, size=(n, self.action_dim)).astype(np.float32)
        else:
            obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device)
            action = agent.act(obs_t).cpu().numpy()
            if not np.isfinite(action).all():
                raise NonFiniteError("action", "the policy produced NaN/inf")
        next_obs, reward, terminated, truncated, _ = self.envs.step(action)
        valid = ~self._prev_done
        if not (np.isfinite(next_obs).all() and np.isfinite(reward).all()):
            raise NonFiniteError("observation/reward", "the environment returned NaN/inf")
        buffer.add(self.obs, action, reward, terminated, valid)

        self._ep_return += np.where(valid, reward, 0.0)
        self._ep_length += valid
        done = (terminated | truncated) & valid
        if done.any():
            for i in np.flatnonzero(done):
                self._recent_returns.append(float(self._ep_return[i]))
                self._recent_lengths.append(int(self._ep_length[i]))
            self.episodes += int(done.sum())
            self._ep_return[done] = 0.0
            self._ep_length[done] = 0
        self._prev_done = terminated | truncated
        self.obs = next_obs
        new = int(valid.sum())
        prev_step, self.step = self.step, self.step + new

        learn = self.step - max(prev_step, t.learning_starts)  # transitions past learning_starts
        if learn > 0:
            first = "learn_start" not in self.timing
            if first:
                self.timing["learn_start"] = time.perf_counter()
                if self.cfg.resolved.get("compile") and self.verbose:
                    print("compiling the update (one-off, torch.compile)...", flush=True)
            self.update_debt += t.utd * learn
            while self.update_debt >= 1.0:
                self.last_metrics = agent.update(buffer.sample(t.batch_size))
                self.updates += 1
                self.update_debt -= 1.0
            if first:
                self._check_metrics(self.last_metrics)
                self.timing["first_update_end"] = time.perf_counter()
        return new

    def evaluate(self, final: bool = False) -> EvalResult:
        """Deterministic episodes (``train.eval_deterministic`` except at the end) and the extensions' figures."""
        t = self.cfg.train
        result = evaluate_policy(self.agent, self.eval_envs, t.eval_seed, True if final else t.eval_deterministic)
        self._ext_eval = {k: v for ext in self.extensions.values() for k, v in ext.eval_row(self.agent).items()}
        return result

    def _eval_row(self, result: EvalResult) -> dict[str, Any]:
        return {"eval_return_mean": result.mean, "eval_return_std": result.std, **self._ext_eval}

    def _row(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if self._recent_returns:
            row["episode_return"] = float(np.mean(self._recent_returns))
            row["episode_length"] = float(np.mean(self._recent_lengths))
            self._recent_returns.clear()
            self._recent_lengths.clear()
        for ext in self.extensions.values():
            row.update(ext.row())
        return row

    def _progress_info(self) -> str:
        return "" if self.last_eval is None else f"eval {self.last_eval.mean:.1f}"

    def final_line(self, result: EvalResult) -> str:
        return final_line(result)

    # ------------------------------------------------------------------------- finished runs
    @classmethod
    def load(cls, run_dir: str | Path, cfg: RunConfig, device: torch.device, num_envs: int = 1
             ) -> tuple[Agent, gym.vector.VectorEnv, int]:
        """The agent of a finished step run at its last checkpoint, with ``num_envs`` envs wrapped as it was
        trained; returns ``(agent, envs, step)``."""
        envs = make_vector_env(cfg.env_id, num_envs, cfg.env_kwargs, _wrappers(_extensions(cfg, False), False))
        agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space, device)
        state, _ = load_checkpoint(Path(run_dir) / "checkpoints", with_buffer=False)
        agent.load_checkpoint_state(state["agent"])
        return agent, envs, int(state["step"])

    @classmethod
    def evaluate_run(cls, run_dir: Path, cfg: RunConfig, opts: EvalOptions) -> str:
        agent, envs, step = cls.load(run_dir, cfg, resolve_device(opts.device), opts.episodes)
        seed = cfg.train.eval_seed if opts.seed is None else opts.seed
        torch.manual_seed(seed)
        prefix = ""
        if opts.video:
            from rl_energy.video import record_episodes

            record_episodes(agent, cfg, Path(opts.video), opts.episodes, seed, opts.deterministic)
            prefix = f"videos written to {opts.video}\n"
        result = evaluate_policy(agent, envs, seed, opts.deterministic)
        envs.close()
        return prefix + f"step {step}: " + final_line(result, opts.deterministic)

    @classmethod
    def evaluate_controller(cls, cfg: RunConfig, opts: EvalOptions) -> str:
        """``rl-energy evaluate --agent NAME --env ID``: an agent with nothing to train, as configured."""
        if opts.video:
            raise ConfigError("--video applies to evaluations of a run directory")
        seed = cfg.train.eval_seed if opts.seed is None else opts.seed
        envs = make_vector_env(cfg.env_id, opts.episodes, cfg.env_kwargs)
        agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space, resolve_device(opts.device))
        result = evaluate_policy(agent, envs, seed, opts.deterministic)
        envs.close()
        return final_line(result, opts.deterministic)


def load_trained_agent(run_dir: str | Path, device: torch.device, num_envs: int = 1
                       ) -> tuple[Agent, RunConfig, gym.vector.VectorEnv, int]:
    """The agent of a ``rl-energy train`` step run at its last checkpoint; ``(agent, config, envs, step)``."""
    from rl_energy.trainer.rundir import load_run_config

    cfg = load_run_config(run_dir)
    agent, envs, step = Trainer.load(run_dir, cfg, device, num_envs)
    return agent, cfg, envs, step
