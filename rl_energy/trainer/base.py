"""What every training loop shares (:class:`RunLoop`): the run directory and its ``config.yaml``,
device and seeding, the eval/log/checkpoint timing, SIGINT/SIGTERM, NaN → checkpoint → error, the final
evaluation, and the counters and RNG states every checkpoint holds.

A loop subclass builds its env and agent in :meth:`RunLoop._build`, collects and learns in
:meth:`RunLoop._collect` (returning how many new steps it took), evaluates in :meth:`RunLoop.evaluate`,
and adds its own columns, checkpoint entries and final line through the small hooks below. It
declares the ``train`` keys it uses (:attr:`RunLoop.train_keys`): a run that changes any other from
the agent's defaults is refused with an error naming the key.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rl_energy.agent import Agent, NonFiniteError
from rl_energy.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from rl_energy.config import RunConfig, TrainConfig, changed_keys
from rl_energy.errors import ConfigError
from rl_energy.logger import Console, RunLogger
from rl_energy.trainer.factories import resolve_device


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
class EvalOptions:
    """``rl-energy evaluate RUN_DIR`` options, as each loop's :meth:`RunLoop.evaluate_run` reads them."""

    episodes: int = 10
    seed: int | None = None
    deterministic: bool = True
    video: str | None = None
    device: str = "cpu"


ALL_TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


class RunLoop:
    """Base of the training loops (one per collection mode, :data:`rl_energy.trainer.LOOPS`)."""

    mode: ClassVar[str]
    """The collection mode this loop serves."""
    train_keys: ClassVar[frozenset[str]] = ALL_TRAIN_KEYS
    """``train`` keys the loop reads; changing any other from the agent's defaults is an error."""
    step_unit: ClassVar[str] = "step"
    has_buffer: ClassVar[bool] = False

    agent: Agent
    logger: RunLogger

    def __init_subclass__(cls, mode: str = "", step_unit: str = "step", train_keys: frozenset[str] = ALL_TRAIN_KEYS,
                          **kwargs: Any) -> None:
        """A loop declares itself in its class statement: ``class Trainer(RunLoop, mode="steps")``."""
        super().__init_subclass__(**kwargs)
        cls.mode, cls.step_unit, cls.train_keys = mode, step_unit, train_keys

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, verbose: bool = True) -> None:
        self.cfg = cfg
        t = cfg.train
        self.check_train_keys(cfg)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.verbose = verbose
        if resume and not has_checkpoint(self.ckpt_dir):
            raise ConfigError(f"--resume {self.run_dir}: no checkpoint found in {self.ckpt_dir}")
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.device = resolve_device(t.device)
        cfg.resolved = {"loop": self.mode, "device": str(self.device)}
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
        self.last_eval: Any = None
        self.last_metrics: dict[str, torch.Tensor] = {}
        self.timing: dict[str, float] = {}
        """perf_counter stamps: ``learn_start`` (before the first update), ``first_update_end`` (after it;
        it includes any ``torch.compile``) and ``loop_end`` (before the final evaluation)."""
        self._evaluated_now = False
        self._build()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_step = None
        if resume:
            self._restore()
            resume_step = self.step
        cfg.save(self.run_dir / "config.yaml")
        self.logger = RunLogger(self.run_dir, self.columns(), resume_step=resume_step)

    @classmethod
    def check_train_keys(cls, cfg: RunConfig) -> None:
        """A :class:`ConfigError` naming the first ``train`` key that ``cfg`` changes from the agent's
        defaults although this loop does not use it."""
        ignored = [k for k in changed_keys(cfg, "train") if k.split(".", 1)[1] not in cls.train_keys]
        if ignored:
            raise ConfigError(f"config key '{ignored[0]}' does not apply to {cls.mode} runs "
                              f"(agent '{cfg.agent_name}' on '{cfg.env_id}'); leave it at its default")

    # ------------------------------------------------------------------------------ subclass hooks
    def _build(self) -> None:
        """Build envs, agent and buffers (``self.agent``); record facts in ``self.cfg.resolved``."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Called once before the loop (e.g. reset the envs)."""

    def _collect(self) -> int:
        """Collect data and update; return the number of new steps (NonFiniteError on NaN/inf)."""
        raise NotImplementedError

    def evaluate(self, final: bool = False) -> Any:
        raise NotImplementedError

    def columns(self) -> tuple[str, ...]:
        """``progress.csv`` columns besides the base ones (the agent's metrics and the loop's own)."""
        return self.agent.metric_names

    def _row(self) -> dict[str, Any]:
        """Loop-specific columns of every row."""
        return {}

    def _eval_row(self, result: Any) -> dict[str, Any]:
        """The columns of an evaluation result."""
        return dict(result)

    def _progress_info(self) -> str:
        return ""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, state: dict[str, Any], buffer_state: dict[str, Any] | None) -> None:
        pass

    def _buffer_state(self) -> dict[str, Any] | None:
        return None

    def _eval_state(self, result: Any) -> Any:
        return None if result is None else dict(result)

    def _eval_from_state(self, state: Any) -> Any:
        """The last evaluation as saved in a checkpoint (a metrics dict unless a loop overrides it)."""
        return dict(state or {})

    def final_line(self, result: Any) -> str:
        raise NotImplementedError

    def _close(self) -> None:
        """Release what the loop owns besides its logs (envs)."""

    # ------------------------------------------------------------------------------ seeding, state
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

    _COUNTERS = ("step", "updates", "wall_time", "last_log_step", "last_eval_step")

    def _state(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self._COUNTERS}
        state.update(resumes=self.resumes, last_eval=self._eval_state(self.last_eval),
                     agent=self.agent.checkpoint_state(), rng=self._rng_state())
        state.update(self._extra_state())
        return state

    def save(self) -> None:
        save_checkpoint(self.ckpt_dir, self._state(), self._buffer_state())
        self.last_ckpt_step = self.step

    def _restore(self) -> None:
        state, buffer_state = load_checkpoint(self.ckpt_dir, with_buffer=self.has_buffer)
        self.agent.load_checkpoint_state(state["agent"])
        for key in self._COUNTERS:
            setattr(self, key, state[key])
        self.resumes = state["resumes"] + 1
        self.last_ckpt_step = self.step
        self.last_eval = self._eval_from_state(state["last_eval"])
        self._restore_rng(state["rng"])
        self._restore_extra(state, buffer_state)

    # ----------------------------------------------------------------------------------- the loop
    def train(self) -> Any:
        """Run until ``train.total_steps`` under a progress display with signals caught, close the logs
        and envs, and return the final evaluation."""
        console = Console(self.cfg.train.total_steps, self.step, enabled=self.verbose)
        try:
            with self._signals_caught():
                return self._train(console)
        finally:
            console.close()
            self.logger.close()
            self._close()

    def _train(self, console: Console) -> Any:
        t = self.cfg.train
        self._begin()
        start = time.perf_counter() - self.wall_time
        row_time, row_step = time.perf_counter(), self.step
        while self.step < t.total_steps:
            self._stop_if_signalled(start)
            prev = self.step
            try:
                new = self._collect()
            except NonFiniteError as exc:
                self.wall_time = time.perf_counter() - start
                self.save()
                detail = f" ({exc.detail})" if exc.detail else ""
                raise TrainingError(f"stopped at {self.step_unit} {self.step}: non-finite {exc.quantity}{detail}. "
                                    f"The last good state is checkpointed in {self.ckpt_dir}.") from None
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
                row: dict[str, Any] = {"step": self.step, "sps": (self.step - row_step) / max(now - row_time, 1e-9),
                                       "wall_time": now - start}
                row.update(self._row())
                row.update({k: float(v) for k, v in self.last_metrics.items()})
                if due_eval:
                    self._evaluate_now(final)
                    row.update(self._eval_row(self.last_eval))
                row_time, row_step = time.perf_counter(), self.step
                self.logger.log(row)
                console.row(row)
                self.last_log_step = self.step
            if self.step // 100 > prev // 100 or due_log:
                console.advance(self.step, self._progress_info())
            if t.checkpoint_every and self.step // t.checkpoint_every > self.last_ckpt_step // t.checkpoint_every:
                self.wall_time = time.perf_counter() - start
                self.save()
        self.timing.setdefault("loop_end", time.perf_counter())
        if not self._evaluated_now:  # resumed at or past total_steps
            self._evaluate_now(final=True)
        self.wall_time = time.perf_counter() - start
        self.save()
        return self.last_eval

    def _evaluate_now(self, final: bool) -> None:
        self.last_eval = self.evaluate(final)
        self.last_eval_step = self.step
        self._evaluated_now = final

    def _count_update(self, metrics: dict[str, Any], n: int) -> int:
        """Book one agent update of ``n`` steps (contexts, pairs): keep its metrics (checked on the first update)
        and advance the counters; returns ``n``."""
        self.last_metrics = self._check_metrics(metrics) if self.updates == 0 else metrics
        self.step += n
        self.updates += 1
        return n

    def _check_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """An agent's update metrics, refused if it returns a name it did not declare in ``metric_names``."""
        undeclared = set(metrics) - set(self.agent.metric_names)
        if undeclared:
            raise TypeError(f"agent '{self.cfg.agent_name}' returned metrics {sorted(undeclared)} not declared "
                            f"in its metric_names {self.agent.metric_names}")
        return metrics

    def _stop_if_signalled(self, start_time: float) -> None:
        """After SIGINT/SIGTERM: checkpoint and raise :class:`TrainingInterrupted`."""
        if self._signal is not None:
            self.wall_time = time.perf_counter() - start_time
            self.save()
            raise TrainingInterrupted(self.step, self._signal, self.run_dir)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self._signal = signum

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

    # ------------------------------------------------------------------------- finished runs
    @classmethod
    def evaluate_run(cls, run_dir: Path, cfg: RunConfig, opts: EvalOptions) -> str:
        """``rl-energy evaluate RUN_DIR``: evaluate the run's last checkpoint and return the line to print."""
        raise NotImplementedError

    @classmethod
    def evaluate_controller(cls, cfg: RunConfig, opts: EvalOptions) -> str:
        """``rl-energy evaluate --agent NAME --env ID``: an agent with nothing to train, as configured."""
        raise ConfigError(f"agent '{cfg.agent_name}' on '{cfg.env_id}' ({cls.mode} loop) has no evaluation "
                          "without a run directory")
