#!/usr/bin/env python
"""Explanation throughput: the trained SOInter interpreter against LIME and Kernel-SHAP on the same
structured-output black box (``rl_energy/StructuredInterpretation-v0``; digest ``papers/one-step-tasks.md`` §1).

One process: train SOInter through the ``contexts`` loop (``configs/sointer/default.yaml``, the task at
``--coupling``), then time, on the first ``--n`` test contexts,

* **SOInter**: one forward pass of the interpreter and the top-k (``agent.act(obs, deterministic=True)``), the
  batch at once (the amortised explainer the paper trains);
* **LIME** (``lime_tabular``, ``--lime-samples`` perturbations per context) and **Kernel-SHAP**
  (``--shap-samples`` coalitions, background = the masking value 0), one context at a time as they work,
  on the black box's target probability ``P(y_t = +1 | x)`` (the attributions of scripts/reproduce_sointer.py).

Each figure is explanations per second (median of ``--repeats`` repeats), with the TPR of the explanations
beside it. Threads: ``--threads`` (default 1, as the reproduction's workers).

    python scripts/bench_sointer.py

The last line is the SOInter / Kernel-SHAP ratio, e.g. ``sointer/kernel-shap explanations-per-second ratio: 1234.5``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_sointer import ENV_ID, lime_attributions, shap_attributions  # noqa: E402

from rl_energy.config import resolve_config  # noqa: E402
from rl_energy.registry import get_agent  # noqa: E402
from rl_energy.trainer import make_trainer  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coupling", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=50, help="test contexts explained")
    parser.add_argument("--lime-samples", type=int, default=1000)
    parser.add_argument("--shap-samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--n, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    over = [f"env_kwargs.coupling={args.coupling}", f"env_kwargs.data_seed={args.seed}", f"train.seed={args.seed}",
            "train.checkpoint_every=0", "train.compile=false"]
    cfg = resolve_config("sointer", ENV_ID, get_agent("sointer").config_cls, overrides=over)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, tmp, verbose=False)
        trainer.train()
    train_s = time.perf_counter() - start
    agent, task = trainer.agent, trainer.task
    test = task.contexts("test")[:args.n]
    obs = test["obs"]
    x = obs[:, :task.d].numpy().astype(np.float64)

    rows = []
    t, mask = timed(lambda: agent.act(obs, deterministic=True), max(args.repeats, 20))
    rows.append(("SOInter", t, float(task.true_positive_rate(mask).mean())))
    t, attr = timed(lambda: lime_attributions(task, x, args.lime_samples, args.seed), args.repeats)
    rows.append(("LIME", t, float(task.true_positive_rate(torch.as_tensor(np.abs(attr))).mean())))
    t, attr = timed(lambda: shap_attributions(task, x, args.shap_samples), args.repeats)
    rows.append(("Kernel-SHAP", t, float(task.true_positive_rate(torch.as_tensor(np.abs(attr))).mean())))

    print(f"SOInter explanation throughput: coupling {args.coupling:g}, d = {task.d}, L = {task.n_outputs}, "
          f"k = {task.k}, {args.n} test contexts, {args.threads} thread(s); SOInter trained in {train_s:.1f} s "
          f"({agent.num_updates} updates)")
    print(f"{'explainer':12} {'explanations/s':>15} {'s per batch':>12} {'tpr':>6}")
    for name, seconds, tpr in rows:
        print(f"{name:12} {args.n / seconds:>15,.1f} {seconds:>12.4f} {tpr:>6.3f}")
    rate = {name: args.n / seconds for name, seconds, _ in rows}
    print(f"sointer/lime explanations-per-second ratio: {rate['SOInter'] / rate['LIME']:.1f}")
    print(f"sointer/kernel-shap explanations-per-second ratio: {rate['SOInter'] / rate['Kernel-SHAP']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
