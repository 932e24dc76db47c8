"""The ``pairs`` loop: offline preference learning on an env that serves preference pairs
(``rl_energy/SentimentPreference-v0``). Per update it draws ``train.batch_size`` train pairs (reshuffled
epochs) and calls ``agent.update``; each evaluation reports the held-out pair figures of
:meth:`PreferenceAgent.evaluate_pairs` and the mean env score (VADER) of continuations the policy samples
for the first 200 test prompts (``eval_return_mean``), with the policy's KL to the reference along them.
``step`` counts pairs.

The env contract: ``env.unwrapped.reference_model()`` (a module whose state the agent loads with
``agent.load_reference``), ``env.unwrapped.preference_pairs(split)`` (TensorDict of ``prompt``,
``chosen``, ``rejected`` and masks) and ``env.unwrapped.score(continuations)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_energy.checkpoint import load_agent_state
from rl_energy.config import RunConfig
from rl_energy.errors import ConfigError
from rl_energy.trainer.base import EvalOptions, RunLoop
from rl_energy.trainer.factories import build_agent, make_env, resolve_device

PAIR_TRAIN_KEYS = frozenset({"total_steps", "seed", "batch_size", "eval_every", "log_every", "checkpoint_every",
                             "device", "torch_threads"})
N_GENERATE = 200


class PairRun:
    """A preference env with its agent (reference loaded) and its test pairs."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.env = make_env(cfg.env_id, cfg.env_kwargs)
        self.data = self.env.unwrapped
        if not callable(getattr(self.data, "preference_pairs", None)):
            self.env.close()
            raise ConfigError(f"agent '{cfg.agent_name}' learns from preference pairs; '{cfg.env_id}' serves none")
        self.agent = build_agent(cfg, self.data.observation_space, self.data.action_space, device)
        self.agent.load_reference(self.data.reference_model())
        self.train_pairs = self.data.preference_pairs("train")
        self.test_pairs = self.data.preference_pairs("test")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        from rl_energy.lm import generate

        out = {f"eval_{k}": v for k, v in self.agent.evaluate_pairs(self.test_pairs).items()}
        prompts = self.test_pairs["prompt"][:N_GENERATE]
        y = generate(self.agent.policy, prompts, self.data.response_len, generator=torch.Generator().manual_seed(0))
        score = self.data.score(y)
        out.update(eval_return_mean=float(score.mean()), eval_return_std=float(score.std(correction=0)),
                   eval_sample_kl=float(self.agent.sample_kl(prompts, y).mean()))
        return out


class PairTrainer(RunLoop, mode="pairs", step_unit="pair", train_keys=PAIR_TRAIN_KEYS):
    """Offline preference learning (see the module docstring)."""

    EVAL_COLUMNS = ("eval_return_mean", "eval_reward_acc", "eval_margin_acc", "eval_seqkl_w", "eval_seqkl_l",
                    "eval_sample_kl")
    """Held-out figures (``eval_`` + the names of :meth:`PreferenceAgent.evaluate_pairs`, which the training
    metrics also use)."""

    def _build(self) -> None:
        self.run = PairRun(self.cfg, self.device)
        self.agent = self.run.agent
        self._order = self.rng.permutation(len(self.run.train_pairs))
        self._pos = 0

    def columns(self) -> tuple[str, ...]:
        return self.agent.metric_names + self.EVAL_COLUMNS

    def _close(self) -> None:
        self.run.env.close()

    def _collect(self) -> int:
        n = self.cfg.train.batch_size
        if self._pos + n > len(self._order):
            self._order, self._pos = self.rng.permutation(len(self.run.train_pairs)), 0
        idx = torch.as_tensor(np.asarray(self._order[self._pos:self._pos + n]))
        self._pos += n
        metrics = self.agent.update(self.run.train_pairs[idx].to(self.device))
        return self._count_update(metrics, n)

    def evaluate(self, final: bool = False) -> dict[str, float]:
        return self.run.evaluate()

    def _eval_row(self, result: Any) -> dict[str, Any]:
        return {k: v for k, v in dict(result).items() if k in self.EVAL_COLUMNS}

    def _progress_info(self) -> str:
        return f"reward_acc {self.last_eval['eval_reward_acc']:.3g}" if self.last_eval else ""

    def final_line(self, result: dict[str, float]) -> str:
        return ("final test: " + " | ".join(f"{k} {result[k]:.4g}" for k in self.EVAL_COLUMNS if k in result)
                + f" ({len(self.run.test_pairs)} test pairs, {min(N_GENERATE, len(self.run.test_pairs))} sampled "
                  "continuations)")

    @classmethod
    def load(cls, run_dir: str | Path, cfg: RunConfig, device: torch.device) -> tuple[PairRun, int]:
        run = PairRun(cfg, device)
        return run, load_agent_state(run.agent, run_dir)

    @classmethod
    def evaluate_run(cls, run_dir: Path, cfg: RunConfig, opts: EvalOptions) -> str:
        if opts.video:
            raise ConfigError("--video needs an environment with frames; preference envs have none")
        run, step = cls.load(run_dir, cfg, resolve_device(opts.device))
        try:
            result = run.evaluate()
            return f"pair {step}: test " + " | ".join(f"{k} {result[k]:.4g}" for k in cls.EVAL_COLUMNS)
        finally:
            run.env.close()
