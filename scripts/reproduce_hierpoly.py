"""Reproduce Wang, Nichani & Lee (ICLR 2024), "Learning hierarchical polynomials with three-layer networks"
(digest ``papers/one-step-tasks.md`` §10): test relMSE and corr(stage-1 feature, p) against n/d³.

Arms, on the same data (``rl_energy/HierPoly-v0``, ``data_seed = seed``, a fixed 4,096-point test split):

* ``layerwise``: the paper's three-layer net trained layer-wise (``agents/layerwise.py``), through the
  ``contexts`` training loop (:func:`rl_energy.trainer.make_trainer`) with the shipped config;
* ``end_to_end``: a two-layer ReLU net of width 512 trained jointly by Adam (``agent.mode=end_to_end``),
  same loop, same number of updates;
* ``kernel``: kernel ridge regression (scikit-learn), kernel and α chosen on a held-out fifth of (at most
  2,048 of) the training points among RBF (γ = 1/(2d), 1/d) and polynomial (degree 6 = kq, γ = 1/d)
  kernels and α ∈ {0.01, 0.1, 1}; exact ``KernelRidge`` on at most ``KERNEL_EXACT_N`` = 8,192 training
  points (a random subset above that: d = 12 at n/d³ = 16, d = 16 at n/d³ ≥ 4 — a CPU-budget limit that
  the report states).

Controls (at ``--control-d``): ``g = he2`` (no linear term: the negative control, corr(feature, p) ≈ 0) and
``g = linear`` (h = p). Runs go to 2 worker processes with one PyTorch thread each.

    python scripts/reproduce_hierpoly.py                 # full run (d = 8, 12, 16; 3 seeds)
    python scripts/reproduce_hierpoly.py --quick         # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread per worker
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings)

ENV_ID = "rl_energy/HierPoly-v0"
KERNEL_EXACT_N = 8_192
KERNEL_SEARCH_N = 2_048
PAPER_CLAIM = (
    "Paper (abstract; ICLR 2024): for a large subclass of degree-k p, a 3-layer net trained by layer-wise GD\n"
    "  learns h = g(p) with O~(d^k) samples (stage 1 recovers p), so curves against n/d^3 collapse across d for\n"
    "  k = 3; kernel methods need Theta~(d^{kq}) = d^6 samples here and fail at n ~ d^3."
)
PILOT = {  # digest §10 "Pilot" [derived]: corr(feature, p) / relMSE against n/d^3
    12: {0.25: (0.29, 1.26), 1: (0.63, 0.76), 4: (0.85, 0.41), 16: (0.92, 0.19)},
    16: {0.25: (0.34, 0.91), 1: (0.66, 0.62), 4: (0.81, 0.42), 16: (0.93, 0.18)},
}


# ----------------------------------------------------------------------------------------- workers
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_agent(arm: str, g: str, d: int, ratio: float, seed: int, quick: bool) -> dict[str, Any]:
    """Train one arm through the ``contexts`` loop and score it on the test split."""
    import torch

    from rl_energy.agents.layerwise import LayerwiseConfig
    from rl_energy.config import resolve_config
    from rl_energy.envs.tasks.hierpoly import pearson
    from rl_energy.trainer import make_trainer

    t0 = time.time()
    n_train = max(1, round(ratio * d**3))
    stage1 = 200 if quick else LayerwiseConfig.stage1_updates
    batch = 1024
    overrides = [
        f"env_kwargs.d={d}", "env_kwargs.k=3", f"env_kwargs.g={g}", f"env_kwargs.n_train={n_train}",
        "env_kwargs.n_test=4096", f"env_kwargs.data_seed={seed}", f"agent.mode={arm}",
        f"agent.stage1_updates={stage1}", f"train.total_steps={batch * (stage1 + 1)}", f"train.batch_size={batch}",
        f"train.seed={seed}", "train.eval_every=0", f"train.log_every={batch * (stage1 + 1)}",
        "train.checkpoint_every=0", "train.device=cpu", "train.torch_threads=1",
    ]
    cfg = resolve_config("layerwise", ENV_ID, LayerwiseConfig, overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="hierpoly_") as tmp:
        trainer = make_trainer(cfg, Path(tmp) / "run", verbose=False)
        result = trainer.train()
        agent, task = trainer.agent, trainer.task
        test = task.contexts("test")
        feat_corr = float("nan")
        if arm == "layerwise":
            with torch.no_grad():
                feat_corr = pearson(agent.feature(test["obs"]), task.latent("test"))
    return {"arm": arm, "g": g, "d": d, "ratio": ratio, "seed": seed, "rel_mse": float(result["rel_mse"]),
            "corr": float(result["corr"]), "feat_corr": feat_corr, "seconds": time.time() - t0}


def run_kernel(g: str, d: int, ratio: float, seed: int, quick: bool) -> dict[str, Any]:
    """Kernel ridge regression (sklearn) with a small validation search (see the module docstring)."""
    from rl_energy.envs.tasks.hierpoly import HierPolyTask, pearson
    from rl_energy.errors import import_optional

    kr = import_optional("sklearn.kernel_ridge", "the kernel baseline")

    t0 = time.time()
    task = HierPolyTask(d=d, k=3, g=g, n_train=max(1, round(ratio * d**3)), n_test=4096, data_seed=seed)
    train, test = task.contexts("train"), task.contexts("test")
    x, y = train["obs"].double().numpy(), train["target"].double().numpy().reshape(-1)
    xt, yt = test["obs"].double().numpy(), test["target"].double().numpy().reshape(-1)
    rng = np.random.default_rng(seed)
    kernels = [("rbf", {"gamma": 0.5 / d}), ("rbf", {"gamma": 1.0 / d}),
               ("poly", {"degree": 6, "gamma": 1.0 / d, "coef0": 1.0})]
    alphas = [0.01, 0.1, 1.0]
    best, best_err = (kernels[0], alphas[-1]), math.inf
    if len(x) >= 10:
        idx = rng.permutation(len(x))[:KERNEL_SEARCH_N]
        n_val = max(2, len(idx) // 5)
        val, fit = idx[:n_val], idx[n_val:]
        for kernel in kernels:
            for alpha in alphas:
                model = kr.KernelRidge(alpha=alpha, kernel=kernel[0], **kernel[1]).fit(x[fit], y[fit])
                err = float(np.mean((model.predict(x[val]) - y[val]) ** 2))
                if err < best_err:
                    best, best_err = (kernel, alpha), err
    (name, params), alpha = best
    fit_idx = np.arange(len(x)) if len(x) <= KERNEL_EXACT_N else rng.permutation(len(x))[:KERNEL_EXACT_N]
    pred = kr.KernelRidge(alpha=alpha, kernel=name, **params).fit(x[fit_idx], y[fit_idx]).predict(xt)
    how = "all n" if len(fit_idx) == len(x) else f"subset {len(fit_idx)} of {len(x)}"
    rel = float(np.mean((pred - yt) ** 2) / np.var(yt))
    return {"arm": "kernel", "g": g, "d": d, "ratio": ratio, "seed": seed, "rel_mse": rel, "corr": pearson(
        pred, yt), "feat_corr": float("nan"), "seconds": time.time() - t0,
        "kernel": f"{name}{params.get('degree', '')} a={alpha} {how}"}


def run_job(job: tuple) -> dict[str, Any]:
    arm, g, d, ratio, seed, quick = job
    if arm == "kernel":
        return run_kernel(g, d, ratio, seed, quick)
    return run_agent(arm, g, d, ratio, seed, quick)


# ----------------------------------------------------------------------------------------- report
def summarise(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, tuple[float, float]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["g"], r["arm"], r["d"], r["ratio"])].append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {m: (float(np.mean([r[m] for r in rs])), float(np.std([r[m] for r in rs])))
                    for m in ("rel_mse", "corr", "feat_corr")}
        out[key]["n"] = len(rs)
    return out


def fmt(mean_std: tuple[float, float]) -> str:
    mean, std = mean_std
    return "  -  " if math.isnan(mean) else f"{mean:.2f}±{std:.2f}"


def print_tables(summary: dict, ds: list[int], ratios: list[float], control_d: int | None) -> None:
    head = "| g | arm | d | " + " | ".join(f"n/d³={r:g}" for r in ratios) + " |"
    sep = "|---|---|---|" + "---|" * len(ratios)
    print("\nTest relMSE (mean ± std over seeds; 1 = best constant):")
    print(head)
    print(sep)
    rows = sorted({(k[0], k[1], k[2]) for k in summary}, key=lambda t: (t[0] != "he1_he2", t[0], t[1], t[2]))
    for (g, arm, d) in rows:
        cells = [fmt(summary[(g, arm, d, r)]["rel_mse"]) if (g, arm, d, r) in summary else "" for r in ratios]
        print(f"| {g} | {arm} | {d} | " + " | ".join(cells) + " |")
    print("\ncorr(stage-1 feature, p) of the layer-wise net (mean ± std over seeds):")
    print(head)
    print(sep)
    for (g, d) in sorted({(k[0], k[2]) for k in summary if k[1] == "layerwise"}, key=lambda t: (t[0] != "he1_he2", t)):
        cells = [fmt(summary[(g, "layerwise", d, r)]["feat_corr"]) if (g, "layerwise", d, r) in summary else ""
                 for r in ratios]
        print(f"| {g} | layerwise | {d} | " + " | ".join(cells) + " |")


def verdict(summary: dict, ds: list[int], ratios: list[float], control_d: int | None) -> list[str]:
    lines = []
    main = "he1_he2"
    # 1. collapse of the layer-wise curves in n/d^3
    spreads = []
    for r in ratios:
        vals = [summary[(main, "layerwise", d, r)]["feat_corr"][0] for d in ds if (main, "layerwise", d, r) in summary]
        if len(vals) > 1:
            spreads.append(max(vals) - min(vals))
    if spreads:
        worst = max(spreads)
        lines.append(f"collapse in n/d^3 (layer-wise corr(feature, p), largest spread across d at one ratio): "
                     f"{worst:.2f} -> {'agrees (<= 0.15)' if worst <= 0.15 else 'does not collapse (> 0.15)'}")
    # 2. layer-wise vs kernel ridge and vs the 2-layer net, at the same n
    def wins_over(arm: str) -> tuple[int, int]:
        cells = [(summary.get((main, "layerwise", d, r)), summary.get((main, arm, d, r)))
                 for d in ds for r in ratios if r >= 4]
        cells = [(lw, other) for lw, other in cells if lw and other]
        return sum(lw["rel_mse"][0] < other["rel_mse"][0] for lw, other in cells), len(cells)

    wins, total = wins_over("kernel")
    if total:
        lines.append(f"layer-wise beats kernel ridge at n/d^3 >= 4: {wins}/{total} cells -> "
                     f"{'agrees' if wins == total else 'partly' if wins else 'disagrees'}")
    wins, total = wins_over("end_to_end")
    if total:
        lines.append(f"layer-wise beats the 2-layer end-to-end net at n/d^3 >= 4: {wins}/{total} cells")
    # 3. negative control
    if control_d is not None:
        ctrl = [summary[("he2", "layerwise", control_d, r)]["feat_corr"][0] for r in ratios
                if ("he2", "layerwise", control_d, r) in summary]
        if ctrl:
            top = max(abs(c) for c in ctrl)
            lines.append(f"negative control g = He_2 (d = {control_d}): max |corr(feature, p)| = {top:.2f} -> "
                         f"{'p not recovered, as predicted' if top < 0.3 else 'UNEXPECTED: p partly recovered'}")
    # 4. the digest's pilot numbers
    for d, row in PILOT.items():
        diffs = [(summary[(main, "layerwise", d, r)]["feat_corr"][0] - c, summary[(main, "layerwise", d, r)]
                  ["rel_mse"][0] - m) for r, (c, m) in row.items() if (main, "layerwise", d, r) in summary]
        if diffs:
            dc = max(abs(a) for a, _ in diffs)
            dm = max(abs(b) for _, b in diffs)
            ok = dc <= 0.1 and dm <= 0.15
            lines.append(f"pilot table d = {d}: largest |Δcorr| {dc:.2f}, |ΔrelMSE| {dm:.2f} -> "
                         f"{'agrees' if ok else 'differs'}")
    return lines


def plot(summary: dict, ds: list[int], ratios: list[float], control_d: int | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"layerwise": "-o", "end_to_end": "--s", "kernel": ":^"}
    colors = dict(zip(ds, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for arm, style in styles.items():
        for d in ds:
            pts = [(r, summary[("he1_he2", arm, d, r)]["rel_mse"]) for r in ratios if ("he1_he2", arm, d, r) in summary]
            if pts:
                axes[0].errorbar([p[0] for p in pts], [p[1][0] for p in pts], [p[1][1] for p in pts], fmt=style,
                                 color=colors[d], label=f"{arm} d={d}", ms=4, capsize=2)
    for d in ds:
        pts = [(r, summary[("he1_he2", "layerwise", d, r)]["feat_corr"]) for r in ratios
               if ("he1_he2", "layerwise", d, r) in summary]
        if pts:
            axes[1].errorbar([p[0] for p in pts], [p[1][0] for p in pts], [p[1][1] for p in pts], fmt="-o",
                             color=colors[d], label=f"g = z + He2/√2, d={d}", ms=4, capsize=2)
    for g, style in (("he2", ":x"), ("linear", "--d")):
        pts = [(r, summary[(g, "layerwise", control_d, r)]["feat_corr"]) for r in ratios
               if (g, "layerwise", control_d, r) in summary]
        if pts:
            axes[1].errorbar([p[0] for p in pts], [p[1][0] for p in pts], [p[1][1] for p in pts], fmt=style,
                             color="gray" if g == "he2" else "black", label=f"control g = {g}, d={control_d}",
                             ms=4, capsize=2)
    for d, row in PILOT.items():
        axes[1].plot(list(row), [c for c, _ in row.values()], "*", color=colors.get(d, "k"), alpha=0.5,
                     label=f"digest pilot d={d}")
    axes[0].set(xscale="log", xlabel="n / d³", ylabel="test relMSE", title="h = g∘p, g(z) = z + He₂(z)/√2")
    axes[0].axhline(1.0, color="k", lw=0.5)
    axes[1].set(xscale="log", xlabel="n / d³", ylabel="corr(stage-1 feature, p)", title="layer-wise stage 1")
    for ax in axes:
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"\nplot: {out}")


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 1.0, 4.0, 16.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--control-d", type=int, default=12, help="d of the g = he2 / linear controls (0: none)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 1 min): d = 6, n/d^3 = 1 and 8, one seed, short stage 1, He_2 control only")
    parser.add_argument("--no-kernel", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/img/hierpoly.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.d, args.ratios, args.seeds, args.control_d = [6], [1.0, 8.0], 1, 6
    control_d = args.control_d or None
    ds, ratios = sorted(args.d), sorted(args.ratios)
    t0 = time.time()

    jobs = []
    for seed in range(args.seeds):
        for d in ds:
            for r in ratios:
                jobs += [("layerwise", "he1_he2", d, r, seed, args.quick), ("end_to_end", "he1_he2", d, r, seed,
                                                                            args.quick)]
                if not args.no_kernel:
                    jobs.append(("kernel", "he1_he2", d, r, seed, args.quick))
        if control_d is not None:
            for g in ("he2",) if args.quick else ("he2", "linear"):
                for r in ratios:
                    jobs.append(("layerwise", g, control_d, r, seed, args.quick))
                    if not args.no_kernel:
                        jobs.append(("kernel", g, control_d, r, seed, args.quick))
    jobs.sort(key=lambda j: -(j[2] ** 3 * (4 if j[0] == "layerwise" else 1) + j[2] ** 3 * j[3] / 64))  # big first
    print(PAPER_CLAIM)
    print(f"\n{len(jobs)} runs on {args.jobs} worker processes (1 PyTorch thread each); d = {ds}, n/d^3 = {ratios}, "
          f"{args.seeds} seed(s){' [quick]' if args.quick else ''}")
    rows = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, initializer=_init_worker) as pool:
        for i, row in enumerate(pool.map(run_job, jobs), 1):
            rows.append(row)
            extra = f" [{row['kernel']}]" if "kernel" in row else ""
            print(f"  [{i:3d}/{len(jobs)}] {row['arm']:10s} g={row['g']:7s} d={row['d']:2d} n/d^3={row['ratio']:<5g} "
                  f"seed={row['seed']} relMSE {row['rel_mse']:.3f} corr(feature,p) {row['feat_corr']:.3f} "
                  f"({row['seconds']:.0f}s){extra}", flush=True)
    summary = summarise(rows)
    print_tables(summary, ds, ratios, control_d)
    print("\nDigest pilot [derived] (corr(feature, p) / relMSE of the layer-wise net):")
    print("| d | " + " | ".join(f"n/d³={r:g}" for r in PILOT[12]) + " |")
    for d, row in PILOT.items():
        print(f"| {d} | " + " | ".join(f"{c:.2f} / {m:.2f}" for c, m in row.values()) + " |")
    print("\n" + PAPER_CLAIM)
    print("\nDoes ours agree?")
    for line in verdict(summary, ds, ratios, control_d):
        print("  - " + line)
    plot(summary, ds, ratios, control_d, args.out)
    wall = time.time() - t0
    print(f"\nwall time: {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} CPUs, {args.jobs} workers")
    d_head = 12 if 12 in ds else ds[len(ds) // 2]
    r_head = 4.0 if 4.0 in ratios else ratios[-1]
    lw, kn = summary.get(("he1_he2", "layerwise", d_head, r_head)), summary.get(("he1_he2", "kernel", d_head, r_head))
    ratio = lw["rel_mse"][0] / kn["rel_mse"][0] if lw and kn else float("nan")
    print(f"hierpoly: layerwise/kernel relMSE ratio at n/d^3={r_head:g}, d={d_head}: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
