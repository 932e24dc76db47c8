"""The off-policy training loop: collect -> buffer -> agent.update -> evaluate -> log -> checkpoint.

Gymnasium 1.x autoreset (``NEXT_STEP`` mode): when an env's episode ends at step ``t`` the step
returns the true final observation; the next ``step`` call ignores its action and only resets. The
trainer therefore

* stores the final observation as the transition's next observation, so a **truncated** transition
  bootstraps from it, while a **terminated** one does not (its ``terminated`` flag is set);
* marks the reset step invalid: it is never sampled, never counted as a step, and triggers no update.

``step`` counts real transitions summed over the vector envs. Interrupts (SIGINT/SIGTERM) write a
checkpoint and stop cleanly; ``Trainer(..., resume=True)`` continues the same run.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl_energy.agent import Agent, NonFiniteError
from rl_energy.buffers import HERReplayBuffer, ReplayBuffer
from rl_energy.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from rl_energy.config import ConfigError, RunConfig
from rl_energy.curricula import Curriculum, make_curriculum
from rl_energy.goals import CurriculumGoals, FlattenGoal, GoalLayout, is_goal_space, success_coverage
from rl_energy.logger import Console, RunLogger
from rl_energy.nets import resolve_matmul_precision, set_matmul_precision
from rl_energy.registry import agent_specs, check_env_id, get_agent


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the checkpoint is written."""

    def __init__(self, step: int, signum: int, run_dir: Path) -> None:
        self.step, self.signum, self.run_dir = step, signum, run_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: stopped at step {step}; checkpoint written. "
            f"Resume with: rl-energy train --resume {run_dir}"
        )


class TrainingError(Exception):
    """A run stopped on a non-finite quantity; the last good state was checkpointed."""


@dataclass
class EvalResult:
    mean: float
    std: float
    returns: list[float]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is cuda but no CUDA device is available")
    return torch.device(name)


@contextmanager
def env_kwargs_errors(env_id: str) -> Iterator[None]:
    """Turn an env constructor's rejection of its arguments into a :class:`ConfigError` naming ``env_kwargs``."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'env_kwargs' of '{env_id}': {exc}") from None


def make_vector_env(env_id: str, num_envs: int, env_kwargs: dict | None = None,
                    curriculum: Curriculum | None = None) -> gym.vector.VectorEnv:
    """A vector env in ``NEXT_STEP`` autoreset mode with Box actions rescaled to [-1, 1] (Discrete ones
    are left as they are): the env's own vector implementation where an rl_energy env registers one
    (``vector_entry_point``, e.g. the bubble env's single kernel call for all sub-envs), else a
    synchronous one (Gymnasium's own vector classes, such as CartPole's, take one reset seed and are
    not used). Goal envs get :class:`~rl_energy.goals.FlattenGoal` and, with a ``curriculum``,
    :class:`~rl_energy.goals.CurriculumGoals` on every sub-env."""
    check_env_id(env_id)
    with env_kwargs_errors(env_id):
        gym.make(env_id, **(env_kwargs or {})).close()  # one env first: a clear error for bad env_kwargs
    if env_id.startswith("rl_energy/") and gym.spec(env_id).vector_entry_point is not None:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **(env_kwargs or {}))
        mode = envs.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            envs.close()
            raise ConfigError(f"environment '{env_id}': its vector env autoresets in {mode} mode, not NEXT_STEP")
    else:
        envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
            **(env_kwargs or {}),
        )
    if is_goal_space(envs.single_observation_space):
        # goal envs: dict observations flattened for goal-agnostic agents, goals from the curriculum
        envs.close()
        wrappers = [FlattenGoal] if curriculum is None else [lambda e: CurriculumGoals(e, curriculum), FlattenGoal]
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", wrappers=wrappers,
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}, **(env_kwargs or {}))
        if curriculum is not None:
            curriculum.bind(envs.envs[0].unwrapped)
    elif curriculum is not None:
        envs.close()
        raise ConfigError(f"curriculum '{curriculum.name}' needs a goal env (dict observations with "
                          f"observation/achieved_goal/desired_goal); '{env_id}' is not one")
    space = envs.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return envs  # index actions (agents with ``discrete_actions``); build_agent checks the match
    if not isinstance(space, gym.spaces.Box):
        envs.close()
        raise ConfigError(f"environment '{env_id}' has a {type(space).__name__} action space; "
                          "rl-energy's step-collecting agents need a Box or a Discrete one")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        envs.close()
        raise ConfigError(f"environment '{env_id}' has unbounded actions; cannot rescale them to [-1, 1]")
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        envs = gym.wrappers.vector.RescaleAction(envs, min_action=-1.0, max_action=1.0)
    return envs


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / cfg.agent_name / cfg.env_id.replace("/", "__") / f"{cfg.train.seed}-{stamp}"


def build_agent(cfg: RunConfig, observation_space: gym.Space, action_space: gym.Space, device: torch.device) -> Agent:
    spec = get_agent(cfg.agent_name)
    obs_space = observation_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(f"environment '{cfg.env_id}' has a {type(obs_space).__name__} observation space; "
                          f"agent '{cfg.agent_name}' needs a Box one")
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if discrete != spec.cls.discrete_actions:
        kind = "Discrete" if spec.cls.discrete_actions else "continuous (Box)"
        fitting = [name for name, s in agent_specs().items()
                   if s.cls.collection == "steps" and s.cls.trainable and s.cls.discrete_actions == discrete]
        raise ConfigError(f"agent '{cfg.agent_name}' needs {kind} actions; environment '{cfg.env_id}' has "
                          f"{action_space}. Agents for it: {', '.join(fitting)}")
    if not discrete:
        action_space = gym.spaces.Box(-1.0, 1.0, shape=action_space.shape, dtype=np.float32)
    agent = spec.cls(obs_space, action_space, cfg.agent, device)
    set_matmul_precision(agent, resolve_matmul_precision(cfg.train.matmul_precision, device))
    if not any(getattr(m, "bf16", False) for m in agent.modules()):
        cfg.train.matmul_precision = "fp32"  # every network keeps float32 (e.g. PFPE's): say what runs
    if cfg.train.compile:
        cfg.train.compile = agent.compile_update()  # config.yaml, the header and the timings say what ran
    return agent


def load_trained_agent(run_dir: str | Path, device: torch.device, num_envs: int = 1
                       ) -> tuple[Agent, RunConfig, gym.vector.VectorEnv, int]:
    """The agent of a ``rl-energy train`` run at its last checkpoint, with ``num_envs`` envs as it was
    trained on; returns ``(agent, config, envs, step)``."""
    from rl_energy.config import load_yaml_file, run_config_from_dict

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    if not has_checkpoint(run_dir / "checkpoints"):
        raise ConfigError(f"{run_dir} has no checkpoint to evaluate")
    saved = load_yaml_file(run_dir / "config.yaml")
    cfg = run_config_from_dict(saved, get_agent(saved["agent_name"]).config_cls)
    envs = make_vector_env(cfg.env_id, num_envs, cfg.env_kwargs)
    agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space, device)
    state, _ = load_checkpoint(run_dir / "checkpoints", with_buffer=False)
    agent.load_checkpoint_state(state["agent"])
    return agent, cfg, envs, int(state["step"])


def evaluate_policy(agent: Agent, envs: gym.vector.VectorEnv, seed: int, deterministic: bool = True) -> EvalResult:
    """One episode in each of ``envs.num_envs`` envs, reset with seeds ``seed, seed+1, ...``."""
    n = envs.num_envs
    obs, _ = envs.reset(seed=[seed + i for i in range(n)])
    returns = np.zeros(n)
    active = np.ones(n, dtype=bool)
    was_training = agent.training
    agent.train(False)
    try:
        while active.any():
            action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device), deterministic)
            obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
            returns[active] += reward[active]
            active &= ~(terminated | truncated)
    finally:
        agent.train(was_training)
    return EvalResult(float(returns.mean()), float(returns.std()), returns.tolist())


class RunLoop:
    """What every training loop shares: the run directory, device, seeding, RNG state in checkpoints,
    and SIGINT/SIGTERM handling (the loop checks ``self._signal``, checkpoints and stops)."""

    def _open(self, cfg: RunConfig, run_dir: str | Path, resume: bool, verbose: bool) -> None:
        self.cfg = cfg
        t = cfg.train
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.verbose = verbose
        if resume and not has_checkpoint(self.ckpt_dir):
            raise ConfigError(f"--resume {self.run_dir}: no checkpoint found in {self.ckpt_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.device = resolve_device(t.device)
        t.matmul_precision = resolve_matmul_precision(t.matmul_precision, self.device)  # config.yaml says what ran
        self._seed_everything(t.seed)
        self._signal: int | None = None
        # loop state shared by every loop (all of it goes into the checkpoint)
        self.step = 0
        self.updates = 0
        self.wall_time = 0.0
        self.resumes = 0
        self.last_log_step = 0
        self.last_eval_step = -1
        self.last_ckpt_step = 0
        self.last_metrics: dict[str, torch.Tensor] = {}

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def _rng_state(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state, "python": random.getstate()}

    def _restore_rng(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.rng.bit_generator.state = state["numpy"]
        random.setstate(state["python"])

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self._signal = signum

    def train(self) -> Any:
        """Run until ``train.total_steps`` under a progress display with signals caught, close the logs
        (and ``_close``), and return the final evaluation (an :class:`EvalResult` for :class:`Trainer`,
        the metrics dict for :class:`TrajectoryTrainer`)."""
        console = Console(self.cfg.train.total_steps, self.step, enabled=self.verbose)
        try:
            with self._signals_caught():
                return self._train(console)
        finally:
            console.close()
            self.logger.close()
            self._close()

    def _train(self, console: Console) -> Any:
        raise NotImplementedError

    def _stop_if_signalled(self, start_time: float) -> None:
        """After SIGINT/SIGTERM: checkpoint and raise :class:`TrainingInterrupted`."""
        if self._signal is not None:
            self.wall_time = time.perf_counter() - start_time
            self.save()
            raise TrainingInterrupted(self.step, self._signal, self.run_dir)

    def save(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release what the loop owns besides its logs (envs)."""

    @contextmanager
    def _signals_caught(self) -> Iterator[None]:
        """SIGINT/SIGTERM set ``self._signal`` instead of killing the process (main thread only)."""
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not in the main thread
                pass
        try:
            yield
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)


class Trainer(RunLoop):
    """Owns the vector env, the buffer, evaluation, logging and checkpoints of one run."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, verbose: bool = True) -> None:
        self._open(cfg, run_dir, resume, verbose)
        t = cfg.train
        self.curriculum = make_curriculum(cfg.curriculum)
        self.envs = make_vector_env(cfg.env_id, t.num_envs, cfg.env_kwargs, self.curriculum)
        self.eval_envs = make_vector_env(cfg.env_id, t.eval_episodes, cfg.env_kwargs)
        self.agent = build_agent(cfg, self.envs.single_observation_space, self.envs.single_action_space, self.device)
        self.action_dim = self.agent.action_dim
        obs_shape = self.envs.single_observation_space.shape
        base = self.envs.unwrapped  # below the vector RescaleAction wrapper
        goal_env = base.envs[0].unwrapped if isinstance(base, gym.vector.SyncVectorEnv) else None
        self.goal_env = goal_env if goal_env is not None and is_goal_space(goal_env.observation_space) else None
        """The first training env (unwrapped) if this is a goal env: HER, coverage and curricula use it."""
        if self.goal_env is not None and t.her_ratio > 0:
            self.buffer: ReplayBuffer = HERReplayBuffer(
                t.buffer_size, t.num_envs, obs_shape, self.action_dim, GoalLayout.of(self.goal_env.observation_space),
                lambda achieved, desired: self.goal_env.compute_reward(achieved, desired, None), t.her_ratio,
                self.device, seed=t.seed)
        else:
            self.buffer = ReplayBuffer(t.buffer_size, t.num_envs, obs_shape, self.action_dim, self.device, seed=t.seed)
        self.last_coverage: float | None = None

        self.episodes = 0
        self.update_debt = 0.0
        self.last_eval: EvalResult | None = None
        self._recent_returns: list[float] = []
        self._recent_lengths: list[int] = []
        self.timing: dict[str, float] = {}
        """perf_counter stamps: ``learn_start`` (before the first update), ``first_update_end`` (after it;
        it includes any ``torch.compile``) and ``loop_end`` (before the final eval)."""

        self.obs: np.ndarray | None = None
        resume_step = None
        if resume:
            self._restore()
            resume_step = self.step
        cfg.save(self.run_dir / "config.yaml")
        goal_columns = (("success_coverage",) if self.goal_env is not None else ()) + (
            ("goal_success",) if self.curriculum is not None else ())
        self.logger = RunLogger(self.run_dir, goal_columns + self.agent.metric_names, resume_step=resume_step)

    # ------------------------------------------------------------------------------------ seeding
    def _reset_envs(self) -> np.ndarray:
        n = self.cfg.train.num_envs
        # a resumed run re-seeds its envs differently so that it does not replay the first episodes
        base = self.cfg.train.seed + 1_000_003 * self.resumes
        obs, _ = self.envs.reset(seed=[base + i for i in range(n)])
        self.envs.action_space.seed(base)
        return obs

    # -------------------------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "episodes": self.episodes,
            "updates": self.updates,
            "update_debt": self.update_debt,
            "wall_time": self.wall_time,
            "resumes": self.resumes,
            "last_log_step": self.last_log_step,
            "last_eval_step": self.last_eval_step,
            "last_eval": None if self.last_eval is None else [self.last_eval.mean, self.last_eval.std],
            "last_obs": torch.as_tensor(self.obs, dtype=torch.float32),
            "agent": self.agent.checkpoint_state(),
            "rng": self._rng_state(),
            "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
        }

    def save(self) -> None:
        save_checkpoint(self.ckpt_dir, self._state(), self.buffer.state_dict())
        self.last_ckpt_step = self.step

    def _restore(self) -> None:
        state, buffer_state = load_checkpoint(self.ckpt_dir)
        self.agent.load_checkpoint_state(state["agent"])
        if buffer_state is not None:
            self.buffer.load_state_dict(buffer_state)
        for key in ("step", "episodes", "updates", "update_debt", "wall_time", "last_log_step", "last_eval_step"):
            setattr(self, key, state[key])
        self.resumes = state["resumes"] + 1
        self.last_ckpt_step = self.step
        if state["last_eval"] is not None:
            self.last_eval = EvalResult(state["last_eval"][0], state["last_eval"][1], [])
        self._restore_rng(state["rng"])
        if self.curriculum is not None and state.get("curriculum") is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        base = self.envs.unwrapped
        for env in getattr(base, "envs", []):  # envs that keep a schedule (a maze switch) are told how far
            if hasattr(env.unwrapped, "set_elapsed_steps"):
                env.unwrapped.set_elapsed_steps(self.step // self.cfg.train.num_envs)
        # the env is re-created: the last observation closes each env's stream in the buffer
        self.buffer.close_stream(state["last_obs"].numpy())

    # ---------------------------------------------------------------------------------------- loop
    def _close(self) -> None:
        self.envs.close()
        self.eval_envs.close()

    def _train(self, console: Console) -> EvalResult:
        t = self.cfg.train
        n = t.num_envs
        self.obs = self._reset_envs()
        prev_done = np.zeros(n, dtype=bool)
        ep_return = np.zeros(n)
        ep_length = np.zeros(n, dtype=np.int64)
        start_time = time.perf_counter() - self.wall_time
        last_row_time, last_row_step = time.perf_counter(), self.step
        agent, buffer = self.agent, self.buffer

        while self.step < t.total_steps:
            self._stop_if_signalled(start_time)
            try:
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
                valid = ~prev_done
                if not (np.isfinite(next_obs).all() and np.isfinite(reward).all()):
                    raise NonFiniteError("observation/reward", "the environment returned NaN/inf")
                buffer.add(self.obs, action, reward, terminated, valid)

                ep_return += np.where(valid, reward, 0.0)
                ep_length += valid
                done = (terminated | truncated) & valid
                if done.any():
                    for i in np.flatnonzero(done):
                        self._recent_returns.append(float(ep_return[i]))
                        self._recent_lengths.append(int(ep_length[i]))
                    self.episodes += int(done.sum())
                    ep_return[done] = 0.0
                    ep_length[done] = 0
                prev_done = terminated | truncated
                self.obs = next_obs
                new = int(valid.sum())
                prev_step, self.step = self.step, self.step + new

                learn = self.step - max(prev_step, t.learning_starts)  # transitions past learning_starts
                if learn > 0:
                    first = "learn_start" not in self.timing
                    if first:
                        self.timing["learn_start"] = time.perf_counter()
                        if t.compile and self.verbose:
                            print("compiling the update (one-off, torch.compile)...", flush=True)
                    self.update_debt += t.utd * learn
                    while self.update_debt >= 1.0:
                        self.last_metrics = agent.update(buffer.sample(t.batch_size))
                        self.updates += 1
                        self.update_debt -= 1.0
                    if first:
                        self.timing["first_update_end"] = time.perf_counter()
            except NonFiniteError as exc:
                self.wall_time = time.perf_counter() - start_time
                self.save()
                detail = f" ({exc.detail})" if exc.detail else ""
                raise TrainingError(
                    f"stopped at step {self.step}: non-finite {exc.quantity}{detail}. "
                    f"The last good state is checkpointed in {self.ckpt_dir}."
                ) from None

            if not new:
                continue
            final = self.step >= t.total_steps
            due_eval = final or (
                t.eval_every > 0 and self.step // t.eval_every > max(self.last_eval_step, 0) // t.eval_every
            )
            due_log = final or self.step // t.log_every > self.last_log_step // t.log_every
            if final:
                self.timing["loop_end"] = time.perf_counter()
            if due_log or due_eval:
                # SPS is training throughput: the clock for the next row restarts after the evaluation
                now = time.perf_counter()
                sps = (self.step - last_row_step) / max(now - last_row_time, 1e-9)
                if due_eval:  # the final evaluation is always deterministic
                    deterministic = True if final else t.eval_deterministic
                    self.last_eval = evaluate_policy(agent, self.eval_envs, t.eval_seed, deterministic)
                    self.last_coverage = self._coverage()
                    self.last_eval_step = self.step
                last_row_time, last_row_step = time.perf_counter(), self.step
                row = self._row(sps, last_row_time - start_time, with_eval=bool(due_eval))
                self.logger.log(row)
                console.row(row)
                self.last_log_step = self.step
            if self.step % 100 < n or due_log:
                info = "" if self.last_eval is None else f"eval {self.last_eval.mean:.1f}"
                console.advance(self.step, info)
            if t.checkpoint_every and self.step // t.checkpoint_every > self.last_ckpt_step // t.checkpoint_every:
                self.wall_time = time.perf_counter() - start_time
                self.save()

        self.timing.setdefault("loop_end", time.perf_counter())
        if self.last_eval is None or not self.last_eval.returns:  # resumed at or past total_steps
            self.last_eval = evaluate_policy(agent, self.eval_envs, t.eval_seed, deterministic=True)
        self.wall_time = time.perf_counter() - start_time
        self.save()
        return self.last_eval

    def _coverage(self) -> float | None:
        """Success coverage (SVGG digest §5) on the training env's current maze, or None."""
        env, per_cell = self.goal_env, self.cfg.train.coverage_goals_per_cell
        if env is None or per_cell == 0 or not hasattr(env, "maze"):
            return None
        goals = env.maze.coverage_goals(per_cell, seed=self.cfg.train.eval_seed)
        length = self.envs.unwrapped.envs[0].spec.max_episode_steps or 50
        return float(success_coverage(self.agent, env, goals, length, seed=self.cfg.train.eval_seed).mean())

    @staticmethod
    def final_line(result: EvalResult) -> str:
        return final_line(result)

    def _row(self, sps: float, wall: float, with_eval: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"step": self.step, "sps": sps, "wall_time": wall}
        if self._recent_returns:
            row["episode_return"] = float(np.mean(self._recent_returns))
            row["episode_length"] = float(np.mean(self._recent_lengths))
            self._recent_returns.clear()
            self._recent_lengths.clear()
        if with_eval and self.last_eval is not None:
            row["eval_return_mean"] = self.last_eval.mean
            row["eval_return_std"] = self.last_eval.std
            if self.last_coverage is not None:
                row["success_coverage"] = self.last_coverage
        if self.curriculum is not None:
            row.update(self.curriculum.metrics())
        for key, value in self.last_metrics.items():
            row[key] = float(value)
        return row


class TrajectoryTrainer(RunLoop):
    """GFlowNet training (agents with ``collection = "trajectories"``): sample ``train.batch_size``
    trajectories -> (truncate) -> ``agent.update`` -> evaluate -> log -> checkpoint.

    ``step`` counts sampled trajectories, so ``train.total_steps``, ``log_every``, ``eval_every`` and
    ``checkpoint_every`` are in trajectories; the replay-buffer keys (``buffer_size``,
    ``learning_starts``, ``utd``, ``num_envs``, ``eval_episodes``) do not apply. Each evaluation
    (:func:`rl_energy.analysis.gflownet.sampler_metrics`) logs the exact L1 and JSD to ``R/Z`` on
    enumerable envs, the log-partition error, and the top-k reward of ``agent.eval_samples`` on-policy
    samples; ``modes_found`` counts the distinct modes among all training samples so far, and with
    ``agent.probe_samples > 0`` ``top_k_found`` is the FL-DB paper's set metric: the mean reward of the
    best ``top_k`` distinct objects among all on-policy probe samples drawn after each update.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, verbose: bool = True) -> None:
        from rl_energy.analysis.gflownet import EVAL_COLUMNS
        from rl_energy.envs.dag import DAGEnv

        cfg.train.matmul_precision = "fp32"  # GFlowNet networks keep float32 (see agents/gflownet.py)
        self._open(cfg, run_dir, resume, verbose)
        check_env_id(cfg.env_id)
        with env_kwargs_errors(cfg.env_id):
            env = gym.make(cfg.env_id, **cfg.env_kwargs)
        dag = getattr(env.unwrapped, "dag", None)
        env.close()
        if not isinstance(dag, DAGEnv):
            from rl_energy.envs import GFLOWNET_ENV_IDS

            raise ConfigError(f"agent '{cfg.agent_name}' samples trajectories through a GFlowNet environment; "
                              f"'{cfg.env_id}' is not one. GFlowNet environments: {', '.join(GFLOWNET_ENV_IDS)}")
        self.dag = dag.to(self.device)
        self.agent: Agent = get_agent(cfg.agent_name).cls(self.dag, cfg.agent, self.device)
        self.last_eval: dict[str, float] = {}
        self.modes_seen: set[int] = set()
        self.probe_log_rewards: dict[int, float] = {}
        """Distinct objects of the probe samples (state index -> log R)."""
        self._track_modes = self.dag.is_mode(self.dag.initial_states(1)) is not None
        resume_step = None
        if resume:
            self._restore()
            resume_step = self.step
        cfg.save(self.run_dir / "config.yaml")
        self.logger = RunLogger(self.run_dir, self.agent.metric_names + EVAL_COLUMNS, resume_step=resume_step)

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step, "updates": self.updates, "wall_time": self.wall_time, "resumes": self.resumes,
            "last_log_step": self.last_log_step, "last_eval_step": self.last_eval_step,
            "last_eval": dict(self.last_eval), "modes_seen": sorted(self.modes_seen),
            "probes": [list(self.probe_log_rewards), list(self.probe_log_rewards.values())],
            "agent": self.agent.checkpoint_state(), "rng": self._rng_state(),
        }

    def save(self) -> None:
        save_checkpoint(self.ckpt_dir, self._state(), None)
        self.last_ckpt_step = self.step

    def _restore(self) -> None:
        state, _ = load_checkpoint(self.ckpt_dir, with_buffer=False)
        self.agent.load_checkpoint_state(state["agent"])
        for key in ("step", "updates", "wall_time", "last_log_step", "last_eval_step", "last_eval"):
            setattr(self, key, state[key])
        self.modes_seen = set(state["modes_seen"])
        self.probe_log_rewards = dict(zip(*state["probes"], strict=True))
        self.resumes = state["resumes"] + 1
        self.last_ckpt_step = self.step
        self._restore_rng(state["rng"])

    def _probe(self, n: int) -> None:
        from rl_energy.trajectories import sample_trajectories

        x = sample_trajectories(self.dag, self.agent.forward_logits, n).terminal_states()
        self.probe_log_rewards.update(zip(self.dag.state_keys(x), self.dag.log_reward(x).tolist(),
                                          strict=True))

    def top_k_found(self) -> float:
        """Mean ``R`` of the best ``agent.top_k`` distinct probe samples so far."""
        log_r = torch.tensor(list(self.probe_log_rewards.values()), dtype=torch.float64)
        return float(log_r.topk(min(self.agent.config.top_k, len(log_r))).values.exp().mean())

    def evaluate(self) -> dict[str, float]:
        from rl_energy.analysis.gflownet import sampler_metrics

        out = sampler_metrics(self.agent, self.dag, self.agent.config.eval_samples, self.agent.config.top_k)
        if self._track_modes:
            out["modes_found"] = float(len(self.modes_seen))
        if self.probe_log_rewards:
            out["top_k_found"] = self.top_k_found()
        return out

    def _train(self, console: Console) -> dict[str, float]:
        from rl_energy.trajectories import sample_trajectories, truncate_trajectories

        t, c = self.cfg.train, self.agent.config
        agent, dag = self.agent, self.dag
        start_time = time.perf_counter() - self.wall_time
        last_row_time, last_row_step = time.perf_counter(), self.step
        while self.step < t.total_steps:
            self._stop_if_signalled(start_time)
            try:
                trajs = sample_trajectories(dag, agent.forward_logits, t.batch_size, c.epsilon)
                if self._track_modes:
                    x = trajs.terminal_states()
                    self.modes_seen.update(dag.state_index(x[dag.is_mode(x)]).tolist())
                self.last_metrics = agent.update(truncate_trajectories(trajs, c.truncate))
                if c.probe_samples:
                    self._probe(c.probe_samples)
            except NonFiniteError as exc:
                self.wall_time = time.perf_counter() - start_time
                self.save()
                raise TrainingError(f"stopped at trajectory {self.step}: non-finite {exc.quantity}. "
                                    f"The last good state is checkpointed in {self.ckpt_dir}.") from None
            self.step += t.batch_size
            self.updates += 1
            final = self.step >= t.total_steps
            due_eval = final or (
                t.eval_every > 0 and self.step // t.eval_every > max(self.last_eval_step, 0) // t.eval_every
            )
            if final or due_eval or self.step // t.log_every > self.last_log_step // t.log_every:
                now = time.perf_counter()
                sps = (self.step - last_row_step) / max(now - last_row_time, 1e-9)  # trajectories per second
                row: dict[str, Any] = {"step": self.step, "sps": sps, "wall_time": now - start_time}
                row.update({k: float(v) for k, v in self.last_metrics.items()})
                if self._track_modes:
                    row["modes_found"] = float(len(self.modes_seen))
                if self.probe_log_rewards:
                    row["top_k_found"] = self.top_k_found()
                if due_eval:
                    self.last_eval = self.evaluate()
                    self.last_eval_step = self.step
                    row.update(self.last_eval)
                last_row_time, last_row_step = time.perf_counter(), self.step
                self.logger.log(row)
                console.row(row)
                self.last_log_step = self.step
            console.advance(self.step, f"L1 {self.last_eval['l1']:.3f}" if "l1" in self.last_eval else "")
            if t.checkpoint_every and self.step // t.checkpoint_every > self.last_ckpt_step // t.checkpoint_every:
                self.wall_time = time.perf_counter() - start_time
                self.save()
        if not self.last_eval or self.last_eval_step != self.step:  # resumed at or past total_steps
            self.last_eval = self.evaluate()
            self.last_eval_step = self.step
        self.wall_time = time.perf_counter() - start_time
        self.save()
        return self.last_eval

    @staticmethod
    def final_line(result: dict[str, float]) -> str:
        from rl_energy.analysis.gflownet import format_metrics

        return "final: " + format_metrics(result)


def load_trained_sampler(run_dir: str | Path, device: torch.device) -> tuple[Agent, RunConfig, int]:
    """The GFlowNet agent of a ``rl-energy train`` run at its last checkpoint; returns
    ``(agent, config, trajectories trained on)``. The agent's DAG env is ``agent.dag``."""
    from rl_energy.config import load_yaml_file, run_config_from_dict

    run_dir = Path(run_dir)
    saved = load_yaml_file(run_dir / "config.yaml")
    cfg = run_config_from_dict(saved, get_agent(saved["agent_name"]).config_cls)
    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    dag = env.unwrapped.dag.to(device)
    env.close()
    agent = get_agent(cfg.agent_name).cls(dag, cfg.agent, device)
    state, _ = load_checkpoint(run_dir / "checkpoints", with_buffer=False)
    agent.load_checkpoint_state(state["agent"])
    return agent, cfg, int(state["step"])


def make_trainer(cfg: RunConfig, run_dir: str | Path, resume: bool = False,
                 verbose: bool = True) -> Trainer | TrajectoryTrainer:
    """The training loop the agent collects its data with (``Agent.collection``)."""
    if get_agent(cfg.agent_name).cls.collection == "trajectories":
        return TrajectoryTrainer(cfg, run_dir, resume, verbose)
    return Trainer(cfg, run_dir, resume, verbose)


def final_line(result: EvalResult, deterministic: bool = True) -> str:
    kind = "deterministic" if deterministic else "stochastic"
    return f"final eval return: {result.mean:.2f} ± {result.std:.2f} ({len(result.returns)} episodes, {kind})"


__all__ = [
    "EvalResult",
    "Trainer",
    "TrajectoryTrainer",
    "TrainingError",
    "TrainingInterrupted",
    "default_run_dir",
    "evaluate_policy",
    "final_line",
    "load_trained_agent",
    "load_trained_sampler",
    "make_trainer",
    "make_vector_env",
]
