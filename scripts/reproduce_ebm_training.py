"""The mode-weight test of EBM training (Hitchhiker's guide to EBMs, Carbone, arXiv 2406.13661; Carbone,
Hua, Coste & Vanden-Eijnden, NeurIPS 2023, "Efficient training of EBMs using Jarzynski equality"; digest
``papers/one-step-tasks.md`` §11).

Target: ``rl_energy/EnergyMixture-v0``, a 2-D Gaussian mixture with weights (0.2, 0.8), σ = 0.5, modes
8σ apart (the task's defaults). Three parts:

1. **Sampling test** on the true energy ``E = -log p`` (``rl_energy.samplers``): ULA, MALA and HMC chains
   started uniformly in the box, against annealed SMC from a wide Gaussian. Local chains keep the
   fractions they started with in each basin; SMC's weights put the mass where it belongs.
2. **Training test**: an EBM (``agents/ebm.py``, MLP 2x128 SiLU) trained through the ``contexts`` loop by
   CD-k, PCD, DSM, NCE and Jarzynski-weighted CD, same data, same number of updates, several seeds.
   Mode weights of the learned ``exp(-U_θ)`` read by quadrature on a 200 x 200 grid (``ŵ₁`` and the
   error ``|ŵ₁ - 0.2|``), the grid KL from the target, and ``ŵ₁`` of the model's own samples (annealed SMC).
3. **EBFlow as an amortised sampler**: ``rl-energy train --agent ebflow --env rl_energy/EnergyMixture-v0``
   (the shipped config, α = 1, so the MaxEnt optimum is the target itself); mode weights of its samples.

    python scripts/reproduce_ebm_training.py            # full run (3 seeds; about 15 min on 2 cores)
    python scripts/reproduce_ebm_training.py --quick    # smoke run (< 2 min)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread per worker
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings)

ENV_ID = "rl_energy/EnergyMixture-v0"
LOSSES = ("cd", "pcd", "dsm", "nce", "jarzynski")
TRUE_W1 = 0.2
PAPER_CLAIM = (
    "Claim (Carbone et al. NeurIPS 2023, abstract; the review's §11 discussion): CD/PCD and score matching\n"
    "  mis-weight well-separated modes; Jarzynski-weighted walkers (and SMC) recover the weights.\n"
    "  Qualitative: the digest retrieved no table, so the comparison is 'same direction', not a number."
)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def sampling_test(seed: int, quick: bool) -> list[dict[str, Any]]:
    """ULA/MALA/HMC from uniform starts vs annealed SMC, all on the true energy."""
    import torch

    from rl_energy.envs.tasks.energy_mixture import EnergyMixtureTask
    from rl_energy.samplers import hmc, mala, smc, ula

    task = EnergyMixtureTask()
    gen = torch.Generator().manual_seed(seed)
    n, steps = (1024, 200) if quick else (4096, 2000)
    x0 = (2 * torch.rand(n, 2, generator=gen) - 1) * task.bound
    rows = []
    t0 = time.time()
    runs = {
        "ula": lambda: ula(task.energy, x0, 0.02, steps, generator=gen),
        "mala": lambda: mala(task.energy, x0, 0.05, steps, generator=gen),
        "hmc": lambda: hmc(task.energy, x0, 0.15, steps // 5, n_leapfrog=5, generator=gen),
    }
    for name, run in runs.items():
        out = run()
        rows.append({"sampler": name, "seed": seed, "w1": float(task.sample_mode_weights(out.samples)[0]),
                     "acceptance": out.acceptance, "seconds": time.time() - t0})
        t0 = time.time()
    s = task.bound
    out = smc(task.energy, lambda x: (x * x).sum(1) / (2 * s * s), s * torch.randn(n, 2, generator=gen),
              n_temps=100, step_size=0.05, n_mcmc=2, init_log_z=math.log(2 * math.pi * s * s), generator=gen)
    rows.append({"sampler": "smc", "seed": seed, "w1": float(task.sample_mode_weights(out.samples)[0]),
                 "acceptance": out.acceptance, "log_z": out.log_z, "seconds": time.time() - t0})
    return rows


def train_ebm(loss: str, seed: int, quick: bool) -> dict[str, Any]:
    """One EBM through the ``contexts`` loop; its mode weights by grid quadrature and by its own samples."""
    from rl_energy.agents.ebm import EBMConfig
    from rl_energy.config import resolve_config
    from rl_energy.trainer import make_trainer

    t0 = time.time()
    updates, batch = (300, 256) if quick else (2000, 256)
    overrides = [f"agent.loss={loss}", f"train.total_steps={updates * batch}", f"train.batch_size={batch}",
                 f"train.seed={seed}", "train.eval_every=0", f"train.log_every={updates * batch}",
                 "train.checkpoint_every=0", "train.device=cpu", "train.torch_threads=1"]
    cfg = resolve_config("ebm", ENV_ID, EBMConfig, overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="ebm_") as tmp:
        trainer = make_trainer(cfg, Path(tmp) / "run", verbose=False)
        result = trainer.train()
        agent, task = trainer.agent, trainer.task
        w = task.grid_mode_weights(agent.energy)
        kl = task.grid_kl(agent.energy)
    return {"loss": loss, "seed": seed, "grid_w1": float(w[0]), "grid_err": abs(float(w[0]) - TRUE_W1),
            "grid_kl": kl, "sample_w1": float(result["w1"]), "mmd": float(result["mmd"]),
            "seconds": time.time() - t0}


def train_ebflow(seed: int, quick: bool) -> dict[str, Any]:
    """EBFlow with the shipped config (α = 1) as an amortised sampler of the target."""
    from rl_energy.agents.ebflow import EBFlowConfig
    from rl_energy.config import resolve_config
    from rl_energy.trainer import make_trainer

    t0 = time.time()
    overrides = [f"train.seed={seed}", "train.eval_every=0", "train.checkpoint_every=0", "train.device=cpu",
                 "train.torch_threads=1", "train.compile=false"]
    if quick:
        overrides += ["train.total_steps=32000", "train.log_every=32000"]
    cfg = resolve_config("ebflow", ENV_ID, EBFlowConfig, overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="ebflow_") as tmp:
        trainer = make_trainer(cfg, Path(tmp) / "run", verbose=False)
        result = trainer.train()
    return {"loss": "ebflow", "seed": seed, "grid_w1": float("nan"), "grid_err": float("nan"),
            "grid_kl": float("nan"), "sample_w1": float(result["w1"]), "mmd": float(result["mmd"]),
            "seconds": time.time() - t0}


def run_job(job: tuple) -> Any:
    kind, *args = job
    return {"sampling": sampling_test, "ebm": train_ebm, "ebflow": train_ebflow}[kind](*args)


def mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if np.isnan(v).all():
        return "-"
    return f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2, one thread each)")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    seeds = list(range(1 if args.quick else args.seeds))
    t0 = time.time()
    jobs = [("ebflow", s, args.quick) for s in seeds] + [("ebm", loss, s, args.quick) for loss in LOSSES
                                                        for s in seeds] + [("sampling", s, args.quick) for s in seeds]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        results = list(pool.map(run_job, jobs))
    sampling = [r for res in results if isinstance(res, list) for r in res]
    trained = [r for r in results if isinstance(r, dict)]

    print(f"\nTarget: 2-D mixture, weights (0.2, 0.8), sigma 0.5, modes 8 sigma apart; seeds {seeds}\n")
    print("1. Sampling the true energy (w1 = fraction of samples at the 0.2 mode):")
    print(f"  {'sampler':<8} {'w1':>16} {'acceptance':>16}")
    for name in ("ula", "mala", "hmc", "smc"):
        rows = [r for r in sampling if r["sampler"] == name]
        acc = [r["acceptance"] for r in rows if r["acceptance"] is not None]
        print(f"  {name:<8} {mean_sd([r['w1'] for r in rows]):>16} {mean_sd(acc) if acc else '-':>16}")
    print(f"  truth    {TRUE_W1:>16.3f}")
    print("\n2./3. Training (grid: quadrature of exp(-U) on 200x200; sample: w1 of the model's own samples):")
    print(f"  {'method':<10} {'grid w1':>16} {'|w1 - 0.2|':>16} {'grid KL':>16} {'sample w1':>16} {'MMD²':>16}")
    for name in (*LOSSES, "ebflow"):
        rows = [r for r in trained if r["loss"] == name]
        print(f"  {name:<10} {mean_sd([r['grid_w1'] for r in rows]):>16} {mean_sd([r['grid_err'] for r in rows]):>16} "
              f"{mean_sd([r['grid_kl'] for r in rows]):>16} {mean_sd([r['sample_w1'] for r in rows]):>16} "
              f"{mean_sd([r['mmd'] for r in rows]):>16}")
    print(f"  truth      {TRUE_W1:>16.3f}")
    print(f"\n{PAPER_CLAIM}")
    err = {name: float(np.mean([r["grid_err"] for r in trained if r["loss"] == name])) for name in LOSSES}
    others = {k: v for k, v in err.items() if k != "jarzynski"}
    worst = max(("cd", "pcd", "dsm"), key=lambda k: err[k])
    beaten = sum(err["jarzynski"] < err[k] for k in ("cd", "pcd", "dsm"))
    print(f"Ours: Jarzynski |w1 - 0.2| = {err['jarzynski']:.3f} beats {beaten} of CD/PCD/DSM "
          f"(worst: {worst} {err[worst]:.3f}); best other method: {min(others, key=others.get)} "
          f"{min(others.values()):.3f}.")
    print(f"Total time: {time.time() - t0:.0f} s")
    print(f"ebm-training jarzynski mode-weight error |w1 - 0.2|: {err['jarzynski']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
