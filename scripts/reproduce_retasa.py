"""Reproduce ReTaSA's qualitative claims (Kim, Zhang, Zhao & Tian, ICLR 2024, arXiv 2401.16410; digest
``one-step-tasks.md`` §2) on the synthetic continuous target shift of ``rl_energy/TargetShiftRegression-v0``.

For each target label law (``gaussian`` N(1, 0.5²), ``bimodal``), input dimension d ∈ {1, 5} and source size
n ∈ {250, 500, 1000, 2000} (m = n unlabelled target inputs), ``--reps`` independent replications of

* four weights at the source labels: **unweighted** (ω ≡ 1), **KMM** (kernel mean matching on the inputs),
  **ReTaSA** (the Tikhonov-regularised KDE system, α cross-validated without target labels) and the
  **oracle** p_t(y)/p_s(y) (:mod:`rl_energy.analysis.target_shift`);
* their **weight error** ∫(ω̂ − ω)² p_s (mean over the source sample) and the **target-domain MSE** of
  weighted kernel ridge regression (Gaussian kernel, median-heuristic lengthscale, λ = 1e-4) on 2,000
  labelled target pairs;

then mean ± standard error over replications, the acceptance checks (ReTaSA between unweighted and oracle at
every n, for both figures; ReTaSA's weight error falling as n grows: the paper's consistency claim) beside
the paper's qualitative claim (its numbers were not retrieved), a log-log plot, and (unless ``--no-mlp``) the
weighted ``supervised`` MLP trained through rl-energy's ``contexts`` loop (``make_trainer``) at n = 1000.

    python scripts/reproduce_retasa.py                 # full run (659 s wall on a shared 2-core machine)
    python scripts/reproduce_retasa.py --quick         # smoke test, ~10 s
    python scripts/reproduce_retasa.py --plot docs/img/retasa.png

Workers: a spawn pool of ``--jobs`` processes, one BLAS/torch thread each. The last line is the headline,
the number last.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS, here and in every spawned worker

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ENV_ID = "rl_energy/TargetShiftRegression-v0"
ARMS = ("unweighted", "KMM", "ReTaSA", "oracle")
LAWS = ("gaussian", "bimodal")
DIMS = (1, 5)
NS = (250, 500, 1000, 2000)
N_TEST = 2000
LAM = 1e-4
PAPER_CLAIM = ("ReTaSA's weight estimate is consistent (its error falls as n grows) and weighted ERM with it "
               "corrects target shift (digest: it should sit between unweighted and oracle; no number retrieved)")


def replicate(job: tuple[str, int, int, int]) -> dict:
    """One replication: draw the data of ``(law, dim, n, rep)``, fit the four weights, score them."""
    from rl_energy.analysis.target_shift import kmm_weights, retasa_weights, weight_error, weighted_kernel_ridge
    from rl_energy.envs.tasks.target_shift import draw, true_weight

    law, dim, n, rep = job
    rng = np.random.default_rng([LAWS.index(law), dim, n, rep])
    xs, ys = draw(rng, n, "source", dim)
    xt, _ = draw(rng, n, law, dim)
    x_test, y_test = draw(rng, N_TEST, law, dim)
    omega = true_weight(ys, law)
    start = time.perf_counter()
    fit = retasa_weights(xs, ys, xt, seed=rep)
    t_retasa = time.perf_counter() - start
    start = time.perf_counter()
    kmm = kmm_weights(xs, xt)
    t_kmm = time.perf_counter() - start
    weights = {"unweighted": np.ones(n), "KMM": kmm, "ReTaSA": fit.omega, "oracle": omega}
    out = {"law": law, "dim": dim, "n": n, "rep": rep, "alpha": fit.alpha, "t_retasa": t_retasa, "t_kmm": t_kmm}
    for arm, w in weights.items():
        model = weighted_kernel_ridge(xs, ys, w, lam=LAM)
        out[f"werr_{arm}"] = weight_error(w, omega)
        out[f"mse_{arm}"] = float(np.mean((model.predict(x_test) - y_test) ** 2))
    return out


def train_mlp(job: tuple[str, int]) -> dict:
    """The ``supervised`` agent (configs/supervised/rl_energy__TargetShiftRegression-v0.yaml) with ``weights``
    through ``make_trainer``; final target-domain MSE."""
    import torch

    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import make_trainer

    torch.set_num_threads(1)
    weights, seed = job
    overrides = [f"env_kwargs.weights={weights}", f"env_kwargs.data_seed={seed}", f"train.seed={seed}",
                 "train.torch_threads=1"]
    cfg = resolve_config("supervised", ENV_ID, get_agent("supervised").config_cls, overrides=overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retasa_") as run_dir:
        final = make_trainer(cfg, run_dir, verbose=False).train()
    return {"weights": weights, "seed": seed, "mse": float(final["mse"]), "weight_error": float(final["weight_error"]),
            "seconds": time.perf_counter() - start}


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def summarise(rows: list[dict], ns: tuple[int, ...]) -> dict:
    """``{(law, dim): {n: {figure_arm: (mean, se)}}}`` and the mean chosen α."""
    table: dict = {}
    for law in LAWS:
        for dim in DIMS:
            for n in ns:
                sel = [r for r in rows if r["law"] == law and r["dim"] == dim and r["n"] == n]
                if not sel:
                    continue
                cell = {f"{fig}_{arm}": mean_se([r[f"{fig}_{arm}"] for r in sel]) for fig in ("werr", "mse")
                        for arm in ARMS}
                cell["werr_ReTaSA_median"] = float(np.median([r["werr_ReTaSA"] for r in sel]))
                cell["alpha"] = float(np.exp(np.mean(np.log([r["alpha"] for r in sel]))))
                cell["t_retasa"] = float(np.mean([r["t_retasa"] for r in sel]))
                cell["t_kmm"] = float(np.mean([r["t_kmm"] for r in sel]))
                table.setdefault((law, dim), {})[n] = cell
    return table


def print_table(table: dict, reps: int) -> None:
    print(f"\nMean ± s.e. over {reps} replications (m = n target inputs; target MSE on {N_TEST} labelled target "
          "pairs; weighted kernel ridge)")
    head = " | ".join(f"{a:>15s}" for a in ARMS)
    for (law, dim), cells in table.items():
        print(f"\n== target {law}, d = {dim} ==")
        print(f"{'n':>5s} {'figure':>12s} | {head} | α (geo-mean) | s ReTaSA / KMM")
        for n, cell in cells.items():
            for fig, name in (("werr", "weight err"), ("mse", "target MSE")):
                vals = " | ".join(f"{cell[f'{fig}_{a}'][0]:7.4f}±{cell[f'{fig}_{a}'][1]:.4f}" for a in ARMS)
                extra = "" if fig == "mse" else \
                    f" | {cell['alpha']:.3g} | {cell['t_retasa']:.2f} / {cell['t_kmm']:.2f}"
                print(f"{n:5d} {name:>12s} | {vals}{extra}")


def acceptance(table: dict) -> tuple[bool, list[str]]:
    """The checks: ReTaSA between unweighted and oracle at every n (weight error and target MSE), and ReTaSA's
    weight error falling with n (each doubling of n, and first to last)."""
    lines, ok_all = [], True
    for (law, dim), cells in table.items():
        ns = sorted(cells)
        werr = [cells[n]["werr_ReTaSA"][0] for n in ns]
        medians = [cells[n]["werr_ReTaSA_median"] for n in ns]
        between_w = all(cells[n]["werr_oracle"][0] <= cells[n]["werr_ReTaSA"][0] < cells[n]["werr_unweighted"][0]
                        for n in ns)
        mse_below = [cells[n]["mse_ReTaSA"][0] < cells[n]["mse_unweighted"][0] for n in ns]
        mse_above = [cells[n]["mse_ReTaSA"][0] >= cells[n]["mse_oracle"][0] for n in ns]
        falls = all(b < a for a, b in zip(werr, werr[1:], strict=False))
        slope = float(np.polyfit(np.log(ns), np.log(werr), 1)[0]) if len(ns) > 1 else float("nan")
        lines.append(f"{law:8s} d={dim}: weight error between oracle and unweighted at every n: {_yn(between_w)}; "
                     f"target MSE below unweighted at every n: {_yn(all(mse_below))} "
                     f"({sum(mse_below)}/{len(ns)}), above oracle: {_yn(all(mse_above))} ({sum(mse_above)}/{len(ns)}); "
                     f"weight error falls with n: {_yn(falls)} (means {' -> '.join(f'{v:.4f}' for v in werr)}, "
                     f"log-log slope {slope:.2f}; medians {' -> '.join(f'{v:.4f}' for v in medians)})")
        ok_all &= between_w and all(mse_below) and falls
    return ok_all, lines


def _yn(flag: bool) -> str:
    return "yes" if flag else "NO"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    settings = list(table)
    fig, axes = plt.subplots(2, len(settings), figsize=(3.6 * len(settings), 6.4), squeeze=False)
    colours = {"unweighted": "tab:gray", "KMM": "tab:orange", "ReTaSA": "tab:blue", "oracle": "tab:green"}
    for col, key in enumerate(settings):
        cells = table[key]
        ns = sorted(cells)
        for row, fig_name in enumerate(("werr", "mse")):
            ax = axes[row, col]
            for arm in ARMS:
                if fig_name == "werr" and arm == "oracle":
                    continue  # zero by definition
                m = np.array([cells[n][f"{fig_name}_{arm}"][0] for n in ns])
                s = np.array([cells[n][f"{fig_name}_{arm}"][1] for n in ns])
                ax.errorbar(ns, m, yerr=s, marker="o", ms=3, capsize=2, label=arm, color=colours[arm])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("n (= m)")
            ax.set_title(f"{key[0]}, d={key[1]}", fontsize=9)
            if col == 0:
                ax.set_ylabel("weight error ∫(ω̂−ω)² p_s" if fig_name == "werr" else "target MSE")
    axes[1, 0].legend(fontsize=7)
    fig.suptitle("ReTaSA under continuous target shift (mean ± s.e.)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=None, help="replications per setting (default 20; quick 3)")
    parser.add_argument("--ns", type=int, nargs="+", default=None, help="source sizes (default 250 500 1000 2000)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--quick", action="store_true", help="n in {150, 300, 600}, 3 replications, no MLP")
    parser.add_argument("--no-mlp", action="store_true", help="skip the supervised MLP through make_trainer")
    parser.add_argument("--mlp-seeds", type=int, default=3, help="seeds of the MLP comparison (default 3)")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce_retasa"), help="folder for the plot")
    parser.add_argument("--plot", type=Path, default=None, help="also write the plot to this PNG (e.g. docs/img)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 20)
    ns = tuple(args.ns) if args.ns else ((150, 300, 600) if args.quick else NS)
    if reps < 2 or args.jobs < 1 or any(n < 20 for n in ns):
        parser.error("--reps must be >= 2, --jobs >= 1 and every n >= 20")
    jobs = [(law, dim, n, rep) for law in LAWS for dim in DIMS for n in sorted(ns, reverse=True) for rep in range(reps)]
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        rows = list(pool.map(replicate, jobs))
        mlp_rows = [] if (args.quick or args.no_mlp) else list(pool.map(
            train_mlp, [(w, s) for w in ("none", "kmm", "retasa", "oracle") for s in range(args.mlp_seeds)]))
    elapsed = time.perf_counter() - start
    table = summarise(rows, tuple(sorted(ns)))
    print_table(table, reps)
    ok, lines = acceptance(table)
    print("\nAcceptance checks:")
    for line in lines:
        print("  " + line)
    print(f"  all: {_yn(ok)}")
    print(f"Paper (qualitative): {PAPER_CLAIM}.")
    if mlp_rows:
        print(f"\nWeighted ERM with the supervised MLP through make_trainer (target gaussian, d = 1, n = m = 1000, "
              f"config configs/supervised/rl_energy__TargetShiftRegression-v0.yaml, {args.mlp_seeds} data seeds):")
        for w in ("none", "kmm", "retasa", "oracle"):
            sel = [r for r in mlp_rows if r["weights"] == w]
            m, s = mean_se([r["mse"] for r in sel])
            we, _ = mean_se([r["weight_error"] for r in sel])
            sec = np.mean([r["seconds"] for r in sel])
            print(f"  weights={w:7s} target MSE {m:.4f} ± {s:.4f}  (weight error {we:.4f}; {sec:.1f} s per run)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "mlp": mlp_rows, "reps": reps, "ns": list(ns)}))
    print(f"per-replication results: {args.out / 'results.json'}")
    for path in {args.out / "retasa.png", *([args.plot] if args.plot else [])}:
        plot(table, path)
    print(f"wall time {elapsed:.0f} s with {args.jobs} workers")
    n_max = max(ns)
    ratio = np.mean([cells[n_max]["werr_ReTaSA"][0] / cells[n_max]["werr_unweighted"][0] for cells in table.values()])
    print(f"retasa: weight error ReTaSA/unweighted at n={n_max}, mean over {len(table)} settings: {ratio:.3f}")


if __name__ == "__main__":
    main()
