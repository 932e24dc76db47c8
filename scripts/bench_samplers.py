"""Samples per second of our HMC and MALA beside pyro's HMC, on a 2-D Gaussian mixture, in one process.

The target is ``π(x) ∝ exp(-E(x))`` with ``E(x) = -log Σ_k w_k N(x; μ_k, σ_k² I)``: two components,
``w = (0.3, 0.7)``, ``μ = (-1.5, 0), (1.5, 1)``, ``σ = (0.7, 1)``. Both sides run the same algorithm at the
same settings, without adaptation and with unit mass (``rl_energy.samplers``, digest
``papers/one-step-tasks.md`` §11):

* **HMC**: ``--leapfrog`` leapfrog steps of size ``--hmc-step`` on ``H = E(x) + |p|²/2``, then a
  Metropolis test. Ours: :func:`rl_energy.samplers.hmc`. Reference: ``pyro.infer.mcmc.HMC`` on a
  ``potential_fn`` (``adapt_step_size=False``, ``adapt_mass_matrix=False``, ``num_steps = --leapfrog``)
  run by ``pyro.infer.mcmc.api.MCMC`` (one chain, ``disable_progbar=True``).
* **MALA**: pyro's HMC with ``num_steps=1`` and step ``ε`` is exactly MALA with ``h = ε²/2``: the proposal
  is ``x - (ε²/2)∇E(x) + ε ξ`` and ``exp(-ΔH)`` is the MALA Metropolis–Hastings ratio. Ours:
  :func:`rl_energy.samplers.mala` with ``step_size = ε²/2`` (``ε = --mala-step``).

Samples/s = chains × post-warm-up transitions / wall seconds of those transitions (collecting the chain
included on both sides: ours with ``return_chain=True``, pyro's ``MCMC`` keeps every sample). Pyro's clock
starts in ``MCMC``'s hook after its last warm-up transition and stops when ``MCMC.run`` returns; ours
times a second call that starts from the warm-up's final states. Ours runs with one chain (the same work
as pyro's single chain) and with ``--chains`` chains at once (``x0`` of shape ``[N, 2]``: the design point
of batched samplers). Each repeat runs the three in turn (the order reversed on odd repeats) for each
sampler; the median over ``--repeats`` is reported.

The distribution check: every run's mean and variance of ``x₀`` against the exact values of the mixture,
with standard errors from independent pieces (the chains' own means for the batched run; 10 batch means
per chain for the single chains, pooled over the repeats), and the acceptance (mean Metropolis acceptance
probability after warm-up, on both sides), so the runs compared are the same algorithm at the same
acceptance.

    python scripts/bench_samplers.py                # 5 repeats of 1,000 transitions, ~4 min
    python scripts/bench_samplers.py --quick        # 3 repeats of 300, about 1 min

The last line is ``hmc ours(<chains> chains)/pyro samples/s ratio: X``; the 1-chain ratios and MALA's
come on the lines before it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from rl_energy.errors import MissingExtraError, import_optional
from rl_energy.samplers import hmc, mala

WEIGHTS = (0.3, 0.7)
MEANS = ((-1.5, 0.0), (1.5, 1.0))
STDS = (0.7, 1.0)
BATCHES = 10
"""Batches per chain for the batch-means standard errors."""


_MU = torch.tensor(MEANS)
_HALF_PRECISION = 0.5 / torch.tensor(STDS) ** 2
_BIAS = torch.tensor(WEIGHTS).log() - 2 * torch.tensor(STDS).log()


def mixture_energy(x: torch.Tensor) -> torch.Tensor:
    """``E(x) = -log Σ_k w_k N(x; μ_k, σ_k² I)`` (up to the constant ``log 2π``) for ``x [..., 2] -> [...]``
    (float32; the same function on both sides)."""
    sq = ((x.unsqueeze(-2) - _MU) ** 2).sum(-1)  # [..., K]
    return -torch.logsumexp(_BIAS - sq * _HALF_PRECISION, -1)


def exact_moments() -> tuple[float, float]:
    """Mean and variance of the mixture's ``x₀`` coordinate."""
    m1 = sum(w * mu[0] for w, mu in zip(WEIGHTS, MEANS, strict=True))
    m2 = sum(w * (s * s + mu[0] ** 2) for w, mu, s in zip(WEIGHTS, MEANS, STDS, strict=True))
    return m1, m2 - m1 * m1


@dataclass
class Run:
    """One timed run: throughput, the ``x₀`` chain ``[steps, chains]`` and the acceptance."""

    samples_per_s: float
    x0: torch.Tensor
    acceptance: float


def ours(kind: str, chains: int, steps: int, warmup: int, eps: float, leapfrog: int, seed: int) -> Run:
    """Our batched sampler: a warm-up call, then ``steps`` timed transitions of ``chains`` chains."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(chains, 2, generator=gen)
    if kind == "hmc":
        def run(x0: torch.Tensor, n: int, keep: bool):
            return hmc(mixture_energy, x0, eps, n, n_leapfrog=leapfrog, generator=gen, return_chain=keep)
    else:
        def run(x0: torch.Tensor, n: int, keep: bool):
            return mala(mixture_energy, x0, eps * eps / 2, n, generator=gen, return_chain=keep)
    x = run(x, warmup, False).samples
    start = time.perf_counter()
    out = run(x, steps, True)
    seconds = time.perf_counter() - start
    assert out.chain is not None and out.acceptance is not None
    return Run(chains * steps / seconds, out.chain[..., 0], out.acceptance)


def reference(kind: str, steps: int, warmup: int, eps: float, leapfrog: int, seed: int) -> Run:
    """pyro's HMC (``num_steps=1`` for MALA) through ``MCMC``, one chain, no adaptation."""
    pyro = import_optional("pyro", "scripts/bench_samplers.py's reference")
    from pyro.infer.mcmc import HMC
    from pyro.infer.mcmc.api import MCMC

    pyro.set_rng_seed(seed)
    n_leapfrog = leapfrog if kind == "hmc" else 1
    kernel = HMC(potential_fn=lambda p: mixture_energy(p["x"]), step_size=eps, num_steps=n_leapfrog,
                 adapt_step_size=False, adapt_mass_matrix=False)
    clock: dict[str, float] = {}

    def hook(k: HMC, params: dict, stage: str, i: int) -> None:
        if stage == "Warmup" and i == warmup - 1:
            # pyro derives num_steps from trajectory_length / step_size: check it is the algorithm we asked for
            if k.num_steps != n_leapfrog or k.step_size != eps:
                raise RuntimeError(f"pyro's HMC runs {k.num_steps} leapfrog steps of {k.step_size}, "
                                   f"not {n_leapfrog} of {eps}")
            clock["start"] = time.perf_counter()
        elif stage == "Sample" and i == steps - 1:
            # pyro's running mean of the acceptance probability since the warm-up (printed with 3 decimals)
            clock["acceptance"] = float(k.logging()["acc. prob"])

    x0 = torch.randn(2, generator=torch.Generator().manual_seed(seed))
    mcmc = MCMC(kernel, num_samples=steps, warmup_steps=warmup, initial_params={"x": x0}, disable_progbar=True,
                hook_fn=hook)
    mcmc.run()
    seconds = time.perf_counter() - clock["start"]
    chain = mcmc.get_samples()["x"]  # [steps, 2]
    return Run(steps / seconds, chain[:, :1], clock["acceptance"])


def moments(x0: torch.Tensor) -> tuple[float, float, float, float]:
    """Mean and variance of ``x0 [steps, chains]`` with standard errors from independent pieces: each
    chain's own mean when there are many chains, else ``BATCHES`` batch means per chain."""
    x = x0.double()
    n_batches = 1 if x.shape[1] >= 30 else BATCHES
    steps = x.shape[0] // n_batches * n_batches
    mean = float(x.mean())
    batches = x[:steps].reshape(n_batches, -1, x.shape[1])  # [B, steps/B, chains]
    m = batches.mean(1).flatten()
    v = ((batches - mean) ** 2).mean(1).flatten()
    n = m.numel()
    return mean, float(m.std()) / math.sqrt(n), float(((x - mean) ** 2).mean()), float(v.std()) / math.sqrt(n)


def machine_line() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    pyro = import_optional("pyro", "scripts/bench_samplers.py's reference")
    load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} cores{load}; torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, pyro-ppl {pyro.__version__}, Python {platform.python_version()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 5; --quick: 3)")
    p.add_argument("--chains", type=int, default=1024, help="chains of our batched run")
    p.add_argument("--steps", type=int, default=None,
                   help="timed transitions per chain after warm-up (default 1000; --quick: 300)")
    p.add_argument("--warmup", type=int, default=None, help="untimed transitions first (default 300; --quick: 200)")
    p.add_argument("--leapfrog", type=int, default=10, help="HMC leapfrog steps per transition")
    p.add_argument("--hmc-step", type=float, default=0.3, help="HMC leapfrog step size ε")
    p.add_argument("--mala-step", type=float, default=0.8, help="MALA as 1-step HMC of step ε (ours: h = ε²/2)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (fewer repeats and steps)")
    args = p.parse_args()
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    steps = args.steps if args.steps is not None else (300 if args.quick else 1000)
    warmup = args.warmup if args.warmup is not None else (200 if args.quick else 300)
    for name, value in (("--repeats", repeats), ("--chains", args.chains), ("--steps", steps),
                        ("--warmup", warmup), ("--leapfrog", args.leapfrog)):
        if value < 1 or (name == "--steps" and value < BATCHES):
            p.error(f"{name} must be >= {BATCHES if name == '--steps' else 1}, got {value}")
    for name, value in (("--hmc-step", args.hmc_step), ("--mala-step", args.mala_step)):
        if not (math.isfinite(value) and value > 0):
            p.error(f"{name} must be a positive number, got {value}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0 (0: PyTorch's default), got {args.threads}")
    try:
        import_optional("pyro", "scripts/bench_samplers.py's reference")
    except MissingExtraError as exc:
        raise SystemExit(f"error: {exc}") from None
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"2-D Gaussian mixture; {steps} timed transitions per chain after {warmup} warm-up, {repeats} repeats; "
          f"HMC ε = {args.hmc_step:g}, {args.leapfrog} leapfrog steps; MALA ε = {args.mala_step:g} "
          f"(h = {args.mala_step ** 2 / 2:g}); no adaptation, unit mass", flush=True)

    n = args.chains
    sides = ("ours1", "oursN", "pyro")
    label = {"ours1": "ours (1 chain)", "oursN": f"ours ({n} chains)", "pyro": "pyro (1 chain)"}
    runs: dict[tuple[str, str], list[Run]] = {}
    for r in range(repeats):
        for kind in ("hmc", "mala"):
            eps = args.hmc_step if kind == "hmc" else args.mala_step
            for side in (sides if r % 2 == 0 else sides[::-1]):
                seed = 1000 * r + sides.index(side)
                if side == "pyro":
                    run = reference(kind, steps, warmup, eps, args.leapfrog, seed)
                else:
                    run = ours(kind, 1 if side == "ours1" else n, steps, warmup, eps, args.leapfrog, seed)
                runs.setdefault((kind, side), []).append(run)
            print(f"repeat {r} {kind}: " + " | ".join(
                f"{label[s]} {runs[kind, s][-1].samples_per_s:,.0f}" for s in sides) + " samples/s", flush=True)

    mean0, var0 = exact_moments()
    print(f"\nexact x0: mean {mean0:.3f}, var {var0:.3f}; estimates pool all repeats, "
          "± standard error (chain or batch means)")
    print("| sampler | run | samples/s (median) | per repeat | acceptance | x0 mean | x0 var |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for kind in ("hmc", "mala"):
        for side in sides:
            rs = runs[kind, side]
            med = statistics.median(r.samples_per_s for r in rs)
            per = ", ".join(f"{r.samples_per_s:,.0f}" for r in rs)
            acc = statistics.mean(r.acceptance for r in rs)
            m, m_se, v, v_se = moments(torch.cat([r.x0 for r in rs], 1))  # each repeat's chains pooled
            worst = max(worst, abs(m - mean0) / m_se, abs(v - var0) / v_se)
            print(f"| {kind} | {label[side]} | {med:,.0f} | {per} | {acc:.3f} | {m:.3f} ± {m_se:.3f} | "
                  f"{v:.3f} ± {v_se:.3f} |")
    accs = {k: [statistics.mean(r.acceptance for r in runs[k, s]) for s in sides] for k in ("hmc", "mala")}
    print(f"same distribution: largest |estimate - exact| / standard error {worst:.2f} "
          f"({'within' if worst < 4 else 'OUTSIDE'} 4 standard errors); acceptance spread "
          + ", ".join(f"{k} {max(a) - min(a):.3f}" for k, a in accs.items()))
    med = {key: statistics.median(r.samples_per_s for r in rs) for key, rs in runs.items()}
    print(f"hmc ours(1 chain)/pyro samples/s ratio: {med['hmc', 'ours1'] / med['hmc', 'pyro']:.2f}")
    print(f"mala ours(1 chain)/pyro samples/s ratio: {med['mala', 'ours1'] / med['mala', 'pyro']:.2f}")
    print(f"mala ours({n} chains)/pyro samples/s ratio: {med['mala', 'oursN'] / med['mala', 'pyro']:.1f}")
    print(f"hmc ours({n} chains)/pyro samples/s ratio: {med['hmc', 'oursN'] / med['hmc', 'pyro']:.1f}")


if __name__ == "__main__":
    main()
