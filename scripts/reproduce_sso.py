#!/usr/bin/env python
"""SSO (Lavington, Vaswani, Babanezhad, Schmidt & Le Roux, ICML 2023, "Target-based surrogates for stochastic
optimization", arXiv 2302.02607; digest ``papers/one-step-tasks.md`` §12): training loss against the number of
expensive gradients for SSO with m ∈ {1, 5, 10, 20} inner steps, beside SGD and Adam at the same number of
expensive gradients.

Setting (digest §12, "CPU experiment"): the ``supervised`` agent with a linear model (``agent.hidden: []``),

* ``rl_energy/Classification-v0`` (scikit-learn's bundled ``breast_cancer``, and ``synthetic``:
  ``make_classification`` with n = 10k rows, d = 100) with the cross-entropy loss (multinomial logistic
  regression), batches of 125;
* ``rl_energy/LQRImitation-v0`` (behaviour cloning of an LQR expert on a 6-D linear system) with the squared
  error, batches of 100 expert states ("100 steps per outer update").

One expensive gradient = one batch's gradient of the loss with respect to the model's outputs (one update of
SGD or Adam; one outer step of SSO, which then takes m cheap inner steps on its surrogate by Armijo line search,
the official code's inner optimiser, first trial step 10 at every outer step).

Step sizes, honestly: every method gets the same budget, a grid of 8 values (factors of about 3) of its one
step-size knob (SGD and Adam: ``lr``; SSO: ``η``, separately for each m), each run for the full budget on two
tuning seeds; the value with the lowest mean final training loss (the whole train split) is kept, then rerun on
fresh seeds (0, 1, …) for the tables. The paper's claim (qualitative, curves only): SSO with m > 1 reaches a
lower loss per expensive gradient than m = 1 and than SGD. A second table holds η fixed (the value chosen for
m = 1) and varies only m.

    python scripts/reproduce_sso.py            # 200 expensive gradients, 5 seeds (about 9 min on 1 core)
    python scripts/reproduce_sso.py --quick    # 60 expensive gradients, 2 seeds (about 1.5 min)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rl_energy.agents.supervised import Supervised, SupervisedConfig
from rl_energy.envs.tasks.base import OneStepTask
from rl_energy.envs.tasks.classification import ClassificationTask
from rl_energy.envs.tasks.lqr_imitation import LQRImitationTask

M_VALUES = (1, 5, 10, 20)
TUNING_SEEDS = (100, 101)
GRIDS = {
    "classification": {"sgd": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                       "adam": (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                       "sso": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)},
    "lqr": {"sgd": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
            "adam": (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
            "sso": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)},
}
"""Eight values of each method's step-size knob (``lr``, or SSO's ``η``) per loss family."""
FLOOR = 1e-10
"""Losses below this are float32 round-off (the realisable LQR expert): their ratios mean nothing."""
PAPER_CLAIM = ("SSO with m > 1 reaches a lower training loss per expensive gradient than m = 1 (= SGD-like) "
               "and than SGD / Adam (paper §6 curves; qualitative, numbers not retrieved)")


def make_task(name: str) -> tuple[OneStepTask, str, int]:
    """The task, its loss family (grid key) and batch size."""
    if name == "lqr":
        return LQRImitationTask(n_train=5_000, n_test=2_000), "lqr", 100
    return ClassificationTask(dataset=name), "classification", 125


def optimum(task: OneStepTask, family: str) -> float:
    """The lowest training loss of the linear model: 0 for the realisable LQR expert, else full-batch L-BFGS."""
    if family == "lqr":
        return 0.0
    torch.manual_seed(0)
    agent = Supervised(task.observation_space, task.action_space, SupervisedConfig(hidden=[], optimizer="sgd"))
    train = task.contexts("train")
    opt = torch.optim.LBFGS(agent.net.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = agent.data_loss(agent.net(train["obs"]), train["target"])
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    with torch.no_grad():
        return float(agent.data_loss(agent.net(train["obs"]), train["target"]))


def method_config(method: str, value: float) -> dict:
    """Agent settings of ``method`` (sgd, adam or sso_m<m>) with its step-size knob at ``value``."""
    if method.startswith("sso_m"):
        return {"optimizer": "sso", "sso_m": int(method[5:]), "sso_eta": value, "sso_inner": "armijo",
                "sso_inner_lr": 10.0}
    return {"optimizer": method, "lr": value}


def run(task: OneStepTask, batch: int, method: str, value: float, seed: int, budget: int,
        marks: tuple[int, ...]) -> list[float]:
    """Training loss on the whole train split after each of ``marks`` expensive gradients (inf on divergence)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = SupervisedConfig(hidden=[], **method_config(method, value))
    cfg.validate()
    agent = Supervised(task.observation_space, task.action_space, cfg)
    train = task.contexts("train")
    agent.observe_train_split(train)
    out = []
    try:
        for t in range(1, budget + 1):
            agent.update(task.contexts("train", batch, rng))
            if t in marks:
                with torch.no_grad():
                    value_t = float(agent.data_loss(agent.net(train["obs"]), train["target"]))
                out.append(value_t if math.isfinite(value_t) else math.inf)
        assert agent.expensive_grads() == budget
    except (RuntimeError, ValueError):  # NonFiniteError (a diverged step size) is a RuntimeError
        out += [math.inf] * (len(marks) - len(out))
    return out


def tune(task: OneStepTask, family: str, batch: int, method: str, budget: int) -> tuple[float, dict[float, float]]:
    """The grid value with the lowest mean final training loss over the tuning seeds, and every value's."""
    grid = GRIDS[family]["sso" if method.startswith("sso") else method]
    finals = {v: float(np.mean([run(task, batch, method, v, s, budget, (budget,))[0] for s in TUNING_SEEDS]))
              for v in grid}
    return min(finals, key=lambda v: finals[v]), finals


def fmt(values: list[float]) -> str:
    arr = np.asarray(values)
    if not np.all(np.isfinite(arr)):
        return "diverged"
    return f"{arr.mean():.4g} ± {arr.std(ddof=1) if len(arr) > 1 else 0.0:.2g}"


def study(name: str, budget: int, seeds: tuple[int, ...], out: Path | None) -> dict:
    """Tune, rerun and print one task's tables; returns the marks and each method's mean loss at them."""
    t0 = time.time()
    task, family, batch = make_task(name)
    marks = tuple(sorted({max(1, budget // 8), budget // 4, budget // 2, budget}))
    methods = ["sgd", "adam", *(f"sso_m{m}" for m in M_VALUES)]
    chosen, grids = {}, {}
    for method in methods:
        chosen[method], grids[method] = tune(task, family, batch, method, budget)
    curves = {m: np.array([run(task, batch, m, chosen[m], s, budget, marks) for s in seeds]) for m in methods}
    # fixed η: the value chosen for m = 1, for every m
    eta1 = chosen["sso_m1"]
    fixed = {m: np.array([run(task, batch, f"sso_m{m}", eta1, s, budget, marks) for s in seeds]) for m in M_VALUES}
    n_train = task.split_size("train")
    best = optimum(task, family)
    print(f"\n## {name}: linear model, {'cross-entropy' if family == 'classification' else 'squared error'}, "
          f"batch {batch}, {n_train} train rows, {budget} expensive gradients, seeds {list(seeds)} "
          f"(tuned on {list(TUNING_SEEDS)}); {time.time() - t0:.0f} s")
    print(f"lowest training loss of the model (full batch{', L-BFGS' if family == 'classification' else ''}): "
          f"{best:.4g}")
    print("\nstep-size grid (mean final train loss on the tuning seeds; * = chosen):")
    for method in methods:
        knob = "eta" if method.startswith("sso") else "lr"
        cells = "  ".join(f"{knob}={v:g}{'*' if v == chosen[method] else ''}: "
                          f"{'div' if not math.isfinite(f) else f'{f:.4g}'}" for v, f in grids[method].items())
        print(f"  {method:8s} {cells}")
    header = " | ".join(f"after {k}" for k in marks)
    print("\ntrain loss vs expensive gradients (mean ± sd over seeds), tuned step sizes:")
    print(f"| method | knob | {header} |")
    print("|---|---|" + "---|" * len(marks))
    for method in methods:
        knob = f"η={chosen[method]:g}" if method.startswith("sso") else f"lr={chosen[method]:g}"
        cells = " | ".join(fmt(list(curves[method][:, i])) for i in range(len(marks)))
        print(f"| {method} | {knob} | {cells} |")
    print(f"\nfixed η = {eta1:g} (m = 1's choice), only m varies:\n| m | {header} |")
    print("|---|" + "---|" * len(marks))
    for m in M_VALUES:
        print(f"| {m} | " + " | ".join(fmt(list(fixed[m][:, i])) for i in range(len(marks))) + " |")
    if out is not None:
        plot(name, marks, curves, chosen, out)
    sys.stdout.flush()
    return {"marks": marks, **{m: curves[m].mean(0) for m in methods},
            **{f"fixed_m{m}": fixed[m].mean(0) for m in M_VALUES}}


def plot(name: str, marks: tuple[int, ...], curves: dict[str, np.ndarray], chosen: dict[str, float],
         out: Path) -> None:
    """Loss vs expensive gradients (mean over seeds), one line per method, saved as ``out/sso_<name>.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, arr in curves.items():
        if np.all(np.isfinite(arr)):
            ax.plot(marks, arr.mean(0), marker="o", label=f"{method} ({chosen[method]:g})")
    ax.set_xlabel("expensive gradients")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.set_title(f"SSO on {name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"sso_{name}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 expensive gradients, 2 seeds, breast_cancer and lqr")
    parser.add_argument("--budget", type=int, default=None, help="expensive gradients per run (default 200)")
    parser.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default 5)")
    parser.add_argument("--tasks", nargs="+", default=None,
                        choices=("breast_cancer", "synthetic", "digits", "wine", "lqr"),
                        help="default: breast_cancer synthetic lqr")
    parser.add_argument("--out", type=Path, default=None, help="folder for the plots (optional)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = args.budget or (60 if args.quick else 200)
    if budget < 8:
        parser.error("--budget must be >= 8")
    seeds = tuple(range(args.seeds or (2 if args.quick else 5)))
    tasks = args.tasks or (["breast_cancer", "lqr"] if args.quick else ["breast_cancer", "synthetic", "lqr"])
    t0 = time.time()
    print(f"SSO reproduction: m in {list(M_VALUES)} vs SGD / Adam; paper's claim: {PAPER_CLAIM}")
    finals = {name: study(name, budget, seeds, args.out) for name in tasks}
    print("\n## summary: mean train loss relative to SSO m = 1 (tuned η each) at each mark; < 1: better than m = 1"
          f" (\"floor\": both below {FLOOR:g}, float32 round-off)")
    for name, f in finals.items():
        marks = f["marks"]
        print(f"\n{name}\n| method | " + " | ".join(f"after {k}" for k in marks) + " |\n|---|" + "---|" * len(marks))
        rows = [*(f"sso_m{m}" for m in M_VALUES[1:]), "sgd", "adam", *(f"fixed_m{m}" for m in M_VALUES[1:])]
        for row in rows:
            ref = f["fixed_m1" if row.startswith("fixed") else "sso_m1"]
            cells = ["floor" if max(a, b) < FLOOR else f"{a / b:.3g}" for a, b in zip(f[row], ref, strict=True)]
            print(f"| {row.replace('fixed_m', 'fixed-η m')} | " + " | ".join(cells) + " |")
    print(f"total runtime {time.time() - t0:.0f} s")
    head = tasks[0]
    ratio = finals[head]["sso_m20"][-1] / finals[head]["sso_m1"][-1]
    print(f"SSO m=20 / m=1 train loss after {budget} expensive grads ({head}): {ratio:.3f}")


if __name__ == "__main__":
    main()
