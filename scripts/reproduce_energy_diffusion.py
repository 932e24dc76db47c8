"""Reproduce Thornton et al. (AISTATS 2025), "Composition and control with distilled energy diffusion models and
sequential Monte Carlo" (arXiv 2502.12786; digest ``papers/one-step-tasks.md`` §7) on 2-D mixtures.

Per seed, two diffusion models (VP, T = 100 levels, β_t linear in [0.01, 0.2], so σ_1 = 0.1; see
:mod:`rl_energy.diffusion`) are trained from 20,000 samples each: a **ring** (8 isotropic Gaussians on a circle of
radius 3, standard deviations alternating 0.25 / 0.45) and a **band** (5 Gaussians along the line y = 1,
covariance diag(1, 0.25)). Each model has

* a score teacher: ε-prediction MLP (3×128 SiLU + sinusoidal embedding of σ_t), denoising score matching with
  stable-target-field targets (2,048 reference points; plain DSM targets left the teacher's low-noise scores 3-6×
  less accurate), 3,000 Adam steps;
* an energy ``E_θ(x, t) = ½‖x‖² + h_θ(x, t)`` (same network, scalar output) distilled from that teacher with the
  paper's loss ``E_t λ(t) ‖∇E_θ + s_teacher‖²`` (levels drawn ∝ 1/σ_t), 3,000 steps;
* for comparison, an energy distilled in the same way from the *analytic* noised-mixture score (the digest's
  CPU-experiment teacher), which separates distillation error from teacher error.

Targets, exact: a model with σ_min = σ_1 represents its lowest level ``p_1 = p * N(0, σ_1²)``, so the targets
compose those: the **product** ring₁ × band₁ (a closed-form Gaussian mixture) and the **low-temperature** ring₁^β,
β ∈ {2, 4} (grid quadrature, 500² cells on [-6, 6]²). Arms:

* ``exact``: an independent exact sample of the same size (the metrics' noise floor);
* ``score-only ddpm`` / ``score-only cooled``: reverse diffusion driven by the teachers' summed (product) or
  β-scaled (tempering) score, without weights: the naive composition. ``ddpm`` is the standard step (noise β_t);
  ``cooled`` the step of the diffusion at temperature 1/κ (noise β_t/κ, κ = 2 factors or β);
* ``score-only exact ddpm`` / ``cooled``: the same with the exact noised-mixture scores (the bias of score-only
  composition itself, without learning error);
* ``SMC distilled cooled``: the paper's method, Feynman–Kac SMC over the levels with the distilled energies as
  potentials (targets exp(-E¹_t - E²_t) or exp(-βE_t)), proposal = the teachers' cooled reverse step, ESS
  threshold 0.5; ``t>=5``: weights only down to level 5 (σ_5 ≈ 0.26, about the narrow modes' width), then plain
  reverse steps;
* ``SMC analytic-distilled cooled`` (and ``t>=5``): the same with the energies distilled from the analytic score
  (proposal: the exact scores);
* ``SMC exact cooled`` (and ``t>=5``): the oracle, SMC with the exact per-model energies -log p^k_t.

Metrics against an exact reference sample of 20,000 points: sliced W2 (torch, 256 fixed random directions),
unbiased MMD² (Gaussian kernels, bandwidths 0.25–2; reference subsample of 2,000), total variation of the mode
masses (each point goes to its most responsible component; true masses by grid quadrature), and for SMC the ESS
of the final weights (fraction of N). Runs go to 2 worker processes with one PyTorch thread each.

    python scripts/reproduce_energy_diffusion.py            # 3 seeds, N = 2000 particles (about 18 min)
    python scripts/reproduce_energy_diffusion.py --quick    # about 1 min smoke run (1 seed, 200 steps, N = 400)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread per worker
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402  (after the thread settings)

from rl_energy.diffusion import VPSchedule  # noqa: E402

PAPER_CLAIM = ("paper claim: SMC with distilled energies corrects the bias of score-only composition "
               "(qualitative; no table retrieved)")
TARGETS = ("product", "beta2", "beta4")
ARMS = ("exact", "score-only ddpm", "score-only cooled", "score-only exact ddpm", "score-only exact cooled",
        "SMC distilled cooled",
        "SMC distilled cooled t>=5", "SMC analytic-distilled cooled", "SMC analytic-distilled cooled t>=5",
        "SMC exact cooled", "SMC exact cooled t>=5")
METRICS = ("sw2", "mmd2", "mode_tv", "ess")
N_DATA, N_REF, N_MMD_REF, HIDDEN, GRID = 20_000, 20_000, 2_000, (128, 128, 128), 500
STF_REFERENCE = 2048  # stable-target-field reference points of the teacher's DSM targets
DIAG_LEVELS = (1, 5, 12)  # levels at which the distilled energies are compared with the exact ones
SCHEDULE = {"n_steps": 100, "beta_min": 0.01, "beta_max": 0.2}  # σ_1 = 0.1, ᾱ_T ≈ 3e-5


# ------------------------------------------------------------------------------------------ problem
def mixtures() -> dict[str, Any]:
    from rl_energy.diffusion import GaussianMixture

    ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    ring = GaussianMixture.isotropic(torch.ones(8), torch.stack([3 * ang.cos(), 3 * ang.sin()], 1),
                                     torch.tensor([0.25, 0.45] * 4))
    xs = torch.linspace(-4, 4, 5, dtype=torch.float64)
    band = GaussianMixture(torch.ones(5), torch.stack([xs, torch.ones_like(xs)], 1),
                           torch.diag(torch.tensor([1.0, 0.25], dtype=torch.float64)).expand(5, 2, 2))
    return {"ring": ring, "band": band}


def _init_worker() -> None:
    torch.set_num_threads(1)


def train_job(job: tuple[str, int, int]) -> dict[str, Any]:
    """Train the teacher on samples of one mixture, then distil its energy."""
    from rl_energy.diffusion import VPSchedule, analytic_teacher, distil_energy, train_denoiser

    name, seed, steps = job
    t0 = time.time()
    torch.manual_seed(1000 * seed + (name == "band"))
    gen = torch.Generator().manual_seed(1000 * seed + 7 + (name == "band"))
    schedule = VPSchedule(**SCHEDULE)
    mixture = mixtures()[name]
    data = mixture.sample(N_DATA, gen)
    teacher = train_denoiser(data, schedule, steps=steps, hidden=HIDDEN, reference_size=STF_REFERENCE, generator=gen)
    t1 = time.time()
    energy = distil_energy(teacher.score, data, schedule, steps=steps, hidden=HIDDEN, generator=gen)
    t2 = time.time()
    energy_a = distil_energy(analytic_teacher(mixture, schedule), data, schedule, steps=steps, hidden=HIDDEN,
                             generator=gen)
    t3 = time.time()
    errors = {f"{kind}_t{t}": energy_error(net, mixture, schedule, t, gen)
              for kind, net in (("trained", energy), ("analytic", energy_a)) for t in DIAG_LEVELS}
    return {"name": name, "seed": seed, "teacher": teacher.state_dict(), "energy": energy.state_dict(),
            "energy_analytic": energy_a.state_dict(), "teacher_s": t1 - t0, "distil_s": t2 - t1,
            "distil_analytic_s": t3 - t2, "errors": errors}


def energy_error(net: Any, mixture: Any, schedule: Any, t: int, gen: torch.Generator) -> tuple[float, float]:
    """Error of a distilled energy at level ``t`` against ``-log p_t`` (exact), on 8,000 points of ``p_t``: the sd
    over components of the mean error per component ("mode offsets", what sets the composed mode weights) and the
    mean within-component sd (a per-level constant is free and drops out of both)."""
    noised = mixture.noised(float(schedule.alpha_bars[t]))
    x = noised.sample(8000, gen)
    with torch.no_grad():
        err = (net(x, t) + noised.log_prob(x)).double()
    comp = noised.assign(x)
    present = [k for k in range(len(noised.weights)) if int((comp == k).sum()) > 20]
    offsets = torch.stack([err[comp == k].mean() for k in present])
    within = torch.stack([err[comp == k].std() for k in present])
    return float(offsets.std()), float(within.mean())


def eval_job(job: tuple[str, int, int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """All arms on one target for one seed."""
    from rl_energy.diffusion import (
        DenoiserNet,
        EnergyNet,
        GridDensity,
        LevelModel,
        SlicedW2,
        VPSchedule,
        analytic_model,
        energy_smc,
        learned_model,
        mmd2,
        mode_tv,
        product_model,
        reverse_diffusion,
        tempered_model,
    )

    target, seed, n, nets = job
    schedule = VPSchedule(**SCHEDULE)
    mix = mixtures()
    learned, from_exact, exact = {}, {}, {}
    for name in ("ring", "band"):
        teacher, energy, energy_a = DenoiserNet(schedule, 2, HIDDEN), EnergyNet(schedule, 2, HIDDEN), EnergyNet(
            schedule, 2, HIDDEN)
        teacher.load_state_dict(nets[name]["teacher"])
        energy.load_state_dict(nets[name]["energy"])
        energy_a.load_state_dict(nets[name]["energy_analytic"])
        learned[name] = learned_model(energy.eval(), teacher.eval())
        exact[name] = analytic_model(mix[name], schedule)
        # distilled from the analytic teacher; the proposal uses that teacher's (exact) score
        from_exact[name] = LevelModel(score=exact[name].score, energy=learned_model(energy_a.eval()).energy)
    gen = torch.Generator().manual_seed(10_000 + seed)
    # what a model with σ_min = σ_1 represents is its lowest level p_1 = p * N(0, σ_1²): targets compose those
    low = {k: m.noised(float(schedule.alpha_bars[1])) for k, m in mix.items()}
    if target == "product":
        prod = low["ring"].product(low["band"], min_weight=1e-6)
        grid = GridDensity(lambda z: low["ring"].log_prob(z) + low["band"].log_prob(z), n_cells=GRID)
        assign, n_modes = prod.assign, prod.weights.shape[0]
        ref, floor = prod.sample(N_REF, gen), prod.sample(n, gen)
        m_learned = product_model([learned["ring"], learned["band"]])
        m_from_exact = product_model([from_exact["ring"], from_exact["band"]])
        m_exact = product_model([exact["ring"], exact["band"]])
    else:
        beta = float(target.removeprefix("beta"))
        grid = GridDensity(lambda z: beta * low["ring"].log_prob(z), n_cells=GRID)
        assign, n_modes = low["ring"].assign, 8
        ref, floor = grid.sample(N_REF, gen), grid.sample(n, gen)
        m_learned = tempered_model(learned["ring"], beta)
        m_from_exact = tempered_model(from_exact["ring"], beta)
        m_exact = tempered_model(exact["ring"], beta)
    masses = grid.masses(assign, n_modes)
    sw2 = SlicedW2(ref, 256, torch.Generator().manual_seed(123))
    rows = []

    def record(arm: str, x: torch.Tensor, ess: float, seconds: float) -> None:
        rows.append({"target": target, "seed": seed, "arm": arm, "seconds": seconds, "ess": ess,
                     "sw2": sw2(x),
                     "mmd2": mmd2(ref[:N_MMD_REF], x), "mode_tv": mode_tv(x, assign, masses)})

    record("exact", floor, float("nan"), 0.0)
    runs = [("score-only ddpm", m_learned, "ddpm", 0), ("score-only cooled", m_learned, "cooled", 0),
            ("score-only exact ddpm", m_exact, "ddpm", 0), ("score-only exact cooled", m_exact, "cooled", 0),
            ("SMC distilled cooled", m_learned, "cooled", 1),
            ("SMC distilled cooled t>=5", m_learned, "cooled", 5),
            ("SMC analytic-distilled cooled", m_from_exact, "cooled", 1),
            ("SMC analytic-distilled cooled t>=5", m_from_exact, "cooled", 5),
            ("SMC exact cooled", m_exact, "cooled", 1), ("SMC exact cooled t>=5", m_exact, "cooled", 5)]
    with torch.no_grad():
        for arm, model, proposal, last in runs:
            t0 = time.time()
            if last:
                out = energy_smc(model, schedule, n, proposal=proposal, last_weighted_level=last, generator=gen)
                record(arm, out.samples, float(out.ess), time.time() - t0)
            else:
                x = reverse_diffusion(model, schedule, n, proposal=proposal, generator=gen)
                record(arm, x, float("nan"), time.time() - t0)
    return rows


# ------------------------------------------------------------------------------------------ report
def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["arm"])].append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {}
        for m in METRICS + ("seconds",):
            v = torch.tensor([r[m] for r in rs], dtype=torch.float64)
            out[key][m] = (float(v.mean()), float(v.std()) if len(rs) > 1 else 0.0)
    return out


def fmt(ms: tuple[float, float], digits: int = 3) -> str:
    mean, sd = ms
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def print_table(summary: dict, targets: list[str], n_seeds: int, n: int) -> None:
    print(f"\nMean ± sd over {n_seeds} seed(s); N = {n} particles; lower is better except ESS.")
    print("| target | arm | sliced W2 | MMD² ×1e3 | mode TV | final ESS/N |")
    print("|---|---|---|---|---|---|")
    for t in targets:
        for arm in ARMS:
            s = summary.get((t, arm))
            if s is None:
                continue
            mmd = (s["mmd2"][0] * 1e3, s["mmd2"][1] * 1e3)
            print(f"| {t} | {arm} | {fmt(s['sw2'])} | {fmt(mmd, 2)} | {fmt(s['mode_tv'])} | {fmt(s['ess'], 2)} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=3000, help="Adam steps of the teacher and of distillation")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 200 train steps, 400 particles")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.particles, args.train_steps = 1, 400, 200
    for key in ("seeds", "particles", "train_steps", "jobs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    t0 = time.time()
    print(PAPER_CLAIM)
    print(f"\n{args.seeds} seed(s), {args.train_steps} train steps, N = {args.particles}, {args.jobs} worker "
          f"processes (1 thread each){' [quick]' if args.quick else ''}")
    ctx = get_context("spawn")
    nets: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, initializer=_init_worker) as pool:
        train_jobs = [(name, seed, args.train_steps) for seed in range(args.seeds) for name in ("ring", "band")]
        for r in pool.map(train_job, train_jobs):
            nets[r["seed"]][r["name"]] = r
            print(f"  trained {r['name']:4s} seed {r['seed']}: teacher {r['teacher_s']:.0f}s, distillation "
                  f"{r['distil_s']:.0f}s, distillation from the analytic score {r['distil_analytic_s']:.0f}s",
                  flush=True)
        eval_jobs = [(t, seed, args.particles, nets[seed]) for seed in range(args.seeds) for t in TARGETS]
        for rs in pool.map(eval_job, eval_jobs):
            rows += rs
            r0 = {r["arm"]: r for r in rs}
            print(f"  evaluated {rs[0]['target']:7s} seed {rs[0]['seed']}: SW2 score-only "
                  f"{r0['score-only ddpm']['sw2']:.3f}, SMC distilled {r0['SMC distilled cooled']['sw2']:.3f}, "
                  f"SMC exact {r0['SMC exact cooled']['sw2']:.3f}, floor {r0['exact']['sw2']:.3f}", flush=True)
    summary = summarise(rows)
    print_table(summary, list(TARGETS), args.seeds, args.particles)
    print("\nDistilled energies against the exact -log p_t (nats; mean ± sd over seeds): sd over components of the"
          " per-component mean error (mode offsets) | mean within-component sd")
    print("| model | teacher | " + " | ".join(f"level {t} (σ={float(VPSchedule(**SCHEDULE).sigmas[t]):.2f})"
                                         for t in DIAG_LEVELS) + " |")
    print("|---|---|" + "---|" * len(DIAG_LEVELS))
    for name in ("ring", "band"):
        for kind in ("trained", "analytic"):
            cells = []
            for t in DIAG_LEVELS:
                v = torch.tensor([nets[seed][name]["errors"][f"{kind}_t{t}"] for seed in range(args.seeds)])
                sd = v.std(0) if args.seeds > 1 else torch.zeros(2)
                cells.append(f"{v[:, 0].mean():.2f} ± {sd[0]:.2f} \\| {v[:, 1].mean():.2f} ± {sd[1]:.2f}")
            print(f"| {name} | {kind} | " + " | ".join(cells) + " |")

    print("\n" + PAPER_CLAIM)
    print("Ours: each SMC arm against the better score-only arm (ddpm or cooled step) driven by the same scores:\n"
          "trained teachers for 'distilled', exact scores for 'analytic-distilled' and 'exact' (SW2 / MMD² / mode TV;"
          " 'agrees' = lower mean on all three):")
    ratios = {}
    for t in TARGETS:
        naive = {}
        for kind, arms in (("trained", ("score-only ddpm", "score-only cooled")),
                           ("exact", ("score-only exact ddpm", "score-only exact cooled"))):
            naive[kind] = {m: min(summary[(t, a)][m][0] for a in arms) for m in ("sw2", "mmd2", "mode_tv")}
        print(f"  {t}: score-only (trained teachers) {naive['trained']['sw2']:.3f} / {naive['trained']['mmd2']:.4f}"
              f" / {naive['trained']['mode_tv']:.3f}; score-only (exact scores) {naive['exact']['sw2']:.3f} / "
              f"{naive['exact']['mmd2']:.4f} / {naive['exact']['mode_tv']:.3f}")
        for arm in ("SMC distilled cooled", "SMC distilled cooled t>=5", "SMC analytic-distilled cooled",
                    "SMC analytic-distilled cooled t>=5", "SMC exact cooled"):
            smc, base = summary[(t, arm)], naive["trained" if arm.startswith("SMC distilled") else "exact"]
            closer = [m for m in ("sw2", "mmd2", "mode_tv") if smc[m][0] < base[m]]
            verdict = "agrees" if len(closer) == 3 else f"partly ({', '.join(closer)})" if closer else "disagrees"
            print(f"    {arm:36s} {smc['sw2'][0]:.3f} / {smc['mmd2'][0]:.4f} / {smc['mode_tv'][0]:.3f} -> {verdict}")
        ratios[t] = naive["trained"]["sw2"] / summary[(t, "SMC distilled cooled")]["sw2"][0]
    wall = time.time() - t0
    print(f"\nwall time: {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} CPUs, {args.jobs} workers")
    for t in ("beta2", "beta4"):
        print(f"energy-diffusion SW2 ratio (score-only / SMC), {t}: {ratios[t]:.2f}")
    print(f"energy-diffusion SW2 ratio (score-only / SMC), product: {ratios['product']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
