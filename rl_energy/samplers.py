"""Monte Carlo on an energy ``E(x)``: the project's one home for MCMC, annealing and SMC.

Every sampler targets ``π(x) ∝ exp(-E(x))`` for a batched energy ``energy(x) -> [N]`` over states
``x`` of shape ``[N, *event]`` (any event shape), runs ``N`` independent chains or particles at once
and returns a :class:`SampleResult` (the samples plus diagnostics). The canonical algorithms, as in
the Hitchhiker's guide to EBMs (Carbone, arXiv 2406.13661, the MCMC section; digest
``papers/one-step-tasks.md`` §11):

* **ULA** (:func:`ula`), unadjusted Langevin: ``x ← x - h∇E(x) + √(2h) ξ`` (biased by ``O(h)``);
* **MALA** (:func:`mala`): the ULA proposal with a Metropolis–Hastings test using the Gaussian
  proposal densities ``q(y|x) = N(y; x - h∇E(x), 2h I)``, so ``π`` is exactly invariant;
* **HMC** (:func:`hmc`): ``L`` leapfrog steps on ``H = E(x) + |p|²/(2m)``, accepted with
  ``min(1, exp(-ΔH))``; one leapfrog step is MALA with ``h = ε²/(2m)``;
* **AIS** and **SMC** (:func:`ais`, :func:`smc`): particles drawn exactly from ``π₀ ∝ exp(-E₀)`` move
  along the geometric path ``E_β = (1-β)E₀ + βE₁`` with incremental log-weights
  ``-(β_k - β_{k-1})(E₁ - E₀)(x)`` and a MALA or HMC move invariant for ``π_{β_k}``; SMC also resamples
  (systematic, :func:`systematic_resample`) when the effective sample size falls below a fraction of
  ``N``. Both estimate ``log Z₁`` (Neal 2001; Del Moral, Doucet & Jasra 2006).

MALA and HMC can adapt their step size during a warm-up (``adapt_steps``) by dual averaging on the
chains' mean acceptance probability (Hoffman & Gelman 2014, Algorithm 5); the samples of the warm-up
are discarded from ``chain`` and from the reported acceptance rate.

Building blocks for other samplers (Jarzynski-weighted walkers in :mod:`rl_energy.agents.ebm`, the
Feynman–Kac SMC of energy diffusion): :func:`energy_and_grad`, :func:`mala_step`, :func:`hmc_step`,
:func:`energy_values`, :func:`effective_sample_size`, :func:`systematic_resample`, :func:`log_mean_exp`.

Errors: a non-finite energy or gradient raises :class:`SamplerError` naming the sampler and its step;
an invalid step size, number of steps or particle count raises :class:`~rl_energy.errors.ConfigError`
naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rl_energy.agent import NonFiniteError
from rl_energy.errors import ConfigError

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
"""``x [N, *event] -> E(x) [N]``: a batched energy (negative unnormalised log-density)."""


class SamplerError(NonFiniteError):
    """A sampler met a non-finite energy or gradient; the message names the sampler and the step."""

    def __init__(self, sampler: str, step: int, quantity: str, bad: int, total: int) -> None:
        super().__init__(quantity, f"sampler '{sampler}', step {step}: {bad} of {total} chains; "
                                   "a smaller step size or a bounded energy usually helps")
        self.sampler = sampler
        self.step = step


@dataclass
class SampleResult:
    """What a sampler returns; fields a method does not define are ``None``."""

    samples: torch.Tensor
    """Final states ``[N, *event]`` (equally weighted unless ``log_weights`` is set)."""
    acceptance: float | None = None
    """Mean Metropolis acceptance probability after the warm-up (MALA, HMC, the moves of AIS/SMC)."""
    step_size: float | None = None
    """The step size used after adaptation."""
    log_z: float | None = None
    """Estimate of ``log ∫ exp(-E₁)`` (AIS/SMC), given ``log Z₀`` of the initial distribution."""
    ess: float | None = None
    """Effective sample size of the final weights as a fraction of ``N`` (AIS/SMC)."""
    log_weights: torch.Tensor | None = None
    """Unnormalised final log-weights ``[N]`` (AIS; SMC returns resampled, equal weights)."""
    chain: torch.Tensor | None = None
    """With ``return_chain``: the states after each post-warm-up step, ``[steps, N, *event]``."""
    info: dict[str, Any] = field(default_factory=dict)
    """Further diagnostics (number of resampling events, ESS per temperature, ...)."""


# ------------------------------------------------------------------------------------------ checks
def _positive(sampler: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"sampler '{sampler}': '{key}' must be a positive finite number, got {value!r}")
    return float(value)


def _count(sampler: str, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"sampler '{sampler}': '{key}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _fraction(sampler: str, key: str, value: Any, low_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 < value < 1 if low_open else 0 <= value <= 1)
    if not ok:
        interval = "(0, 1)" if low_open else "[0, 1]"
        raise ConfigError(f"sampler '{sampler}': '{key}' must be in {interval}, got {value!r}")
    return float(value)


def _particles(sampler: str, x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or x0.dim() < 1 or x0.shape[0] < 1:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ConfigError(f"sampler '{sampler}': the initial states need at least one chain "
                          f"(shape [N, *event], N >= 1), got {shape}")
    if not torch.is_floating_point(x0):
        raise ConfigError(f"sampler '{sampler}': the initial states must be floating point, got {x0.dtype}")
    if not bool(torch.isfinite(x0).all()):
        raise ConfigError(f"sampler '{sampler}': the initial states hold NaN or inf")


def _sum_event(v: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first (``[N, *event] -> [N]``)."""
    return v.reshape(v.shape[0], -1).sum(1)


# --------------------------------------------------------------------------------- building blocks
def energy_and_grad(energy: EnergyFn, x: torch.Tensor, sampler: str = "sampler",
                    step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``E(x) [N]`` and ``∇ₓE(x) [N, *event]`` (detached), checked finite.

    Only ``x`` is differentiated: parameters inside ``energy`` get no ``.grad``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = energy(x)
        if e.shape != x.shape[:1]:
            raise ValueError(f"sampler '{sampler}': the energy must return one value per chain, shape "
                             f"{tuple(x.shape[:1])}, got {tuple(e.shape)}")
        (g,) = torch.autograd.grad(e.sum(), x)
    e, g = e.detach(), g.detach()
    bad_e = ~torch.isfinite(e)
    if bool(bad_e.any()):
        raise SamplerError(sampler, step, "energy", int(bad_e.sum()), e.shape[0])
    bad_g = ~torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
    if bool(bad_g.any()):
        raise SamplerError(sampler, step, "energy gradient", int(bad_g.sum()), e.shape[0])
    return e, g


def energy_values(energy: EnergyFn, x: torch.Tensor, sampler: str = "sampler", step: int = 0) -> torch.Tensor:
    """``E(x) [N]`` without a gradient, checked finite."""
    with torch.no_grad():
        e = energy(x)
    bad = ~torch.isfinite(e)
    if bool(bad.any()):
        raise SamplerError(sampler, step, "energy", int(bad.sum()), e.shape[0])
    return e


def _select(accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(accept.reshape(-1, *([1] * (new.dim() - 1))), new, old)


def mala_step(energy: EnergyFn, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor, step_size: float,
              generator: torch.Generator | None = None, sampler: str = "mala", step: int = 0,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MALA transition from ``x`` (with its energy ``e`` and gradient ``g``).

    Returns the new ``(x, e, g)`` and the per-chain acceptance probability ``[N]``.
    """
    h = step_size
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x - h * g + math.sqrt(2 * h) * noise
    e_y, g_y = energy_and_grad(energy, y, sampler, step)
    # log q(y|x) = -|noise|²/2 + c,  log q(x|y) = -|x - y + h ∇E(y)|²/(4h) + c
    back = x - y + h * g_y
    log_alpha = e - e_y - _sum_event(back * back) / (4 * h) + 0.5 * _sum_event(noise * noise)
    accept_prob = log_alpha.clamp(max=0.0).exp()
    u = torch.rand(e.shape, generator=generator, device=x.device, dtype=x.dtype)
    accept = u < accept_prob
    return _select(accept, y, x), torch.where(accept, e_y, e), _select(accept, g_y, g), accept_prob


def hmc_step(energy: EnergyFn, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor, step_size: float,
             n_leapfrog: int, mass: float = 1.0, generator: torch.Generator | None = None,
             sampler: str = "hmc", step: int = 0,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One HMC transition: ``n_leapfrog`` leapfrog steps of size ``step_size`` on
    ``H = E(x) + |p|²/(2m)``, then a Metropolis test. Returns ``(x, e, g, accept_prob)``."""
    eps = step_size
    p = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * math.sqrt(mass)
    h0 = e + _sum_event(p * p) / (2 * mass)
    y, e_y, g_y = x, e, g
    p = p - 0.5 * eps * g_y
    for i in range(n_leapfrog):
        y = y + eps * p / mass
        e_y, g_y = energy_and_grad(energy, y, sampler, step)
        p = p - (eps if i < n_leapfrog - 1 else 0.5 * eps) * g_y
    h1 = e_y + _sum_event(p * p) / (2 * mass)
    accept_prob = (h0 - h1).clamp(max=0.0).exp()
    u = torch.rand(e.shape, generator=generator, device=x.device, dtype=x.dtype)
    accept = u < accept_prob
    return _select(accept, y, x), torch.where(accept, e_y, e), _select(accept, g_y, g), accept_prob


class DualAveraging:
    """Step-size adaptation towards a target acceptance probability (Hoffman & Gelman 2014, Alg. 5)."""

    def __init__(self, step_size: float, target: float, gamma: float = 0.05, t0: float = 10.0,
                 kappa: float = 0.75) -> None:
        self.mu = math.log(10 * step_size)
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.t = 0
        self.h_bar = 0.0
        self.log_step = math.log(step_size)
        self.log_step_avg = 0.0

    def update(self, accept_prob: float) -> float:
        """Feed one mean acceptance probability; returns the next step size to try."""
        self.t += 1
        w = 1.0 / (self.t + self.t0)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - accept_prob)
        self.log_step = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        eta = self.t ** (-self.kappa)
        self.log_step_avg = eta * self.log_step + (1 - eta) * self.log_step_avg
        return math.exp(self.log_step)

    @property
    def final(self) -> float:
        """The averaged step size to use after the warm-up."""
        return math.exp(self.log_step_avg)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish's ESS ``(Σw)²/Σw²`` of unnormalised log-weights ``[N]`` (a number in ``[1, N]``)."""
    w = torch.softmax(log_w, 0)
    return 1.0 / (w * w).sum()


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """``log((1/N) Σ exp(log_w))``, stably."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def systematic_resample(log_w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices ``[N]`` of systematic resampling: one uniform ``u``, points ``(i + u)/N`` through the CDF of
    the normalised weights (lowest variance of the standard schemes; Douc, Cappé & Moulines 2005)."""
    n = log_w.shape[0]
    w = torch.softmax(log_w.double(), 0)
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    u = torch.rand((), generator=generator, device=log_w.device, dtype=torch.float64)
    points = (torch.arange(n, device=log_w.device, dtype=torch.float64) + u) / n
    return torch.searchsorted(cdf, points).clamp(max=n - 1)


# ------------------------------------------------------------------------------------------ chains
def _run_chain(name: str, kernel: Callable[..., tuple], energy: EnergyFn, x0: torch.Tensor, step_size: float,
               n_steps: int, adapt_steps: int, target_accept: float, return_chain: bool,
               generator: torch.Generator | None) -> SampleResult:
    x = x0.detach().clone()
    e, g = energy_and_grad(energy, x, name, 0)
    adapt = DualAveraging(step_size, target_accept) if adapt_steps else None
    h = step_size
    accepted = torch.zeros((), dtype=torch.float64, device=x.device)
    kept = []
    for t in range(adapt_steps + n_steps):
        x, e, g, acc = kernel(energy, x, e, g, h, generator=generator, step=t + 1)
        if adapt is not None and t < adapt_steps:
            h = adapt.update(float(acc.mean()))
            if t == adapt_steps - 1:
                h = adapt.final
            continue
        accepted += acc.mean()
        if return_chain:
            kept.append(x.clone())
    return SampleResult(samples=x, acceptance=float(accepted) / max(n_steps, 1), step_size=h,
                        chain=torch.stack(kept) if return_chain and kept else None)


def ula(energy: EnergyFn, x0: torch.Tensor, step_size: float, n_steps: int,
        generator: torch.Generator | None = None, return_chain: bool = False) -> SampleResult:
    """Unadjusted Langevin: ``x ← x - h∇E(x) + √(2h) ξ`` for ``n_steps`` steps (no correction: the
    stationary law is ``π`` only as ``h → 0``)."""
    _positive("ula", "step_size", step_size)
    _count("ula", "n_steps", n_steps)
    _particles("ula", x0)
    x = x0.detach().clone()
    kept = []
    for t in range(n_steps):
        _, g = energy_and_grad(energy, x, "ula", t)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x - step_size * g + math.sqrt(2 * step_size) * noise
        if return_chain:
            kept.append(x.clone())
    energy_and_grad(energy, x, "ula", n_steps)  # the final states are checked too
    return SampleResult(samples=x, step_size=float(step_size), chain=torch.stack(kept) if return_chain else None)


def mala(energy: EnergyFn, x0: torch.Tensor, step_size: float, n_steps: int, adapt_steps: int = 0,
         target_accept: float = 0.574, generator: torch.Generator | None = None,
         return_chain: bool = False) -> SampleResult:
    """Metropolis-adjusted Langevin for ``n_steps`` steps after ``adapt_steps`` of step-size adaptation
    (target 0.574, the optimal MALA acceptance of Roberts & Rosenthal 1998)."""
    _positive("mala", "step_size", step_size)
    _count("mala", "n_steps", n_steps)
    _count("mala", "adapt_steps", adapt_steps, 0)
    _fraction("mala", "target_accept", target_accept)
    _particles("mala", x0)
    return _run_chain("mala", mala_step, energy, x0, float(step_size), n_steps, adapt_steps, target_accept,
                      return_chain, generator)


def hmc(energy: EnergyFn, x0: torch.Tensor, step_size: float, n_steps: int, n_leapfrog: int = 10,
        mass: float = 1.0, adapt_steps: int = 0, target_accept: float = 0.65,
        generator: torch.Generator | None = None, return_chain: bool = False) -> SampleResult:
    """Hamiltonian Monte Carlo: ``n_steps`` transitions of ``n_leapfrog`` leapfrog steps (scalar mass
    ``mass``) after ``adapt_steps`` of dual-averaging adaptation (target 0.65, Beskos et al. 2013)."""
    _positive("hmc", "step_size", step_size)
    _count("hmc", "n_steps", n_steps)
    _count("hmc", "n_leapfrog", n_leapfrog)
    _positive("hmc", "mass", mass)
    _count("hmc", "adapt_steps", adapt_steps, 0)
    _fraction("hmc", "target_accept", target_accept)
    _particles("hmc", x0)

    def kernel(energy: EnergyFn, x: torch.Tensor, e: torch.Tensor, g: torch.Tensor, h: float,
               generator: torch.Generator | None, step: int) -> tuple:
        return hmc_step(energy, x, e, g, h, n_leapfrog, mass, generator, "hmc", step)

    return _run_chain("hmc", kernel, energy, x0, float(step_size), n_steps, adapt_steps, target_accept,
                      return_chain, generator)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {"ula": ula, "mala": mala, "hmc": hmc}
"""MCMC samplers a config may name (``agent.sampler: mala``)."""


# ------------------------------------------------------------------------------- annealing and SMC
def geometric_betas(n_temps: int, power: float = 4.0) -> torch.Tensor:
    """``n_temps + 1`` inverse temperatures from 0 to 1, ``β_k = (k/K)^power`` (dense near 0, where the
    path ``(1-β)E₀ + βE₁`` changes fastest for a broad ``π₀``)."""
    return torch.linspace(0.0, 1.0, n_temps + 1, dtype=torch.float64) ** power


def _anneal(name: str, energy: EnergyFn, init_energy: EnergyFn, x0: torch.Tensor, n_temps: int,
            resample_threshold: float, kernel: str, step_size: float, n_mcmc: int, n_leapfrog: int,
            init_log_z: float, betas: Sequence[float] | torch.Tensor | None, target_accept: float,
            generator: torch.Generator | None) -> SampleResult:
    _particles(name, x0)
    _count(name, "n_temps", n_temps)
    _positive(name, "step_size", step_size)
    _count(name, "n_mcmc", n_mcmc, 0)
    _count(name, "n_leapfrog", n_leapfrog)
    _fraction(name, "target_accept", target_accept)
    if kernel not in ("mala", "hmc"):
        raise ConfigError(f"sampler '{name}': 'kernel' must be 'mala' or 'hmc', got {kernel!r}")
    if not (isinstance(init_log_z, (int, float)) and math.isfinite(init_log_z)):
        raise ConfigError(f"sampler '{name}': 'init_log_z' must be a finite number, got {init_log_z!r}")
    if betas is None:
        beta = geometric_betas(n_temps)
    else:
        beta = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if beta.numel() < 2 or beta[0] != 0 or beta[-1] != 1 or bool((beta[1:] <= beta[:-1]).any()):
            raise ConfigError(f"sampler '{name}': 'betas' must increase strictly from 0 to 1")
    n = x0.shape[0]
    x = x0.detach().clone()

    def path(b: float) -> EnergyFn:
        return lambda z: (1.0 - b) * init_energy(z) + b * energy(z)

    log_w = torch.zeros(n, dtype=torch.float64, device=x.device)
    log_z = float(init_log_z)
    h = float(step_size)
    e0 = energy_values(init_energy, x, name, 0)
    e1 = energy_values(energy, x, name, 0)
    ess_trace, acc_trace, resamples = [], [], 0
    for k in range(1, beta.numel()):
        b_prev, b = float(beta[k - 1]), float(beta[k])
        log_w = log_w - (b - b_prev) * (e1 - e0).double()
        ess = float(effective_sample_size(log_w)) / n
        ess_trace.append(ess)
        if resample_threshold > 0 and ess < resample_threshold and k < beta.numel() - 1:
            log_z += float(log_mean_exp(log_w))
            x = x[systematic_resample(log_w, generator)]
            log_w = torch.zeros_like(log_w)
            resamples += 1
        if n_mcmc:
            target = path(b)
            e, g = energy_and_grad(target, x, name, k)
            accs = []
            for _ in range(n_mcmc):
                if kernel == "mala":
                    x, e, g, acc = mala_step(target, x, e, g, h, generator, name, k)
                else:
                    x, e, g, acc = hmc_step(target, x, e, g, h, n_leapfrog, 1.0, generator, name, k)
                accs.append(float(acc.mean()))
            a = sum(accs) / len(accs)
            acc_trace.append(a)
            h *= math.exp(0.5 * (a - target_accept))  # population-based adaptation between temperatures
            e0 = energy_values(init_energy, x, name, k)
            e1 = energy_values(energy, x, name, k)
    log_z += float(log_mean_exp(log_w))
    info = {"ess_per_temperature": ess_trace, "acceptance_per_temperature": acc_trace, "resamples": resamples}
    return SampleResult(samples=x, acceptance=sum(acc_trace) / len(acc_trace) if acc_trace else None,
                        step_size=h, log_z=log_z, ess=float(effective_sample_size(log_w)) / n,
                        log_weights=log_w, info=info)


def ais(energy: EnergyFn, init_energy: EnergyFn, x0: torch.Tensor, n_temps: int = 100, step_size: float = 0.1,
        n_mcmc: int = 1, kernel: str = "mala", n_leapfrog: int = 5, init_log_z: float = 0.0,
        betas: Sequence[float] | torch.Tensor | None = None, target_accept: float = 0.65,
        generator: torch.Generator | None = None) -> SampleResult:
    """Annealed importance sampling from ``x0 ~ exp(-E₀)/Z₀`` (``init_energy``, ``log Z₀ = init_log_z``) to
    ``exp(-E₁)`` (Neal 2001): weighted particles (``log_weights``) and the estimate ``log_z`` of ``log Z₁``."""
    return _anneal("ais", energy, init_energy, x0, n_temps, 0.0, kernel, step_size, n_mcmc, n_leapfrog,
                   init_log_z, betas, target_accept, generator)


def smc(energy: EnergyFn, init_energy: EnergyFn, x0: torch.Tensor, n_temps: int = 100, step_size: float = 0.1,
        n_mcmc: int = 1, kernel: str = "mala", n_leapfrog: int = 5, init_log_z: float = 0.0,
        resample_threshold: float = 0.5, betas: Sequence[float] | torch.Tensor | None = None,
        target_accept: float = 0.65, generator: torch.Generator | None = None) -> SampleResult:
    """Sequential Monte Carlo sampler (Del Moral, Doucet & Jasra 2006): AIS plus systematic resampling
    whenever the ESS falls below ``resample_threshold · N``, and a final resampling, so the returned
    samples are equally weighted. ``log_z`` estimates ``log Z₁``; ``ess`` is that of the final weights."""
    _fraction("smc", "resample_threshold", resample_threshold, low_open=False)
    out = _anneal("smc", energy, init_energy, x0, n_temps, resample_threshold, kernel, step_size, n_mcmc,
                  n_leapfrog, init_log_z, betas, target_accept, generator)
    assert out.log_weights is not None
    out.samples = out.samples[systematic_resample(out.log_weights, generator)]
    out.log_weights = None
    return out
