"""rl_energy.samplers: invariance of known targets, acceptance behaviour, log-normaliser estimates, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rl_energy.errors import ConfigError
from rl_energy.samplers import (
    SamplerError,
    ais,
    effective_sample_size,
    hmc,
    mala,
    smc,
    systematic_resample,
    ula,
)

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]])
PREC = torch.linalg.inv(COV)
N = 4000


def gauss_energy(x: torch.Tensor) -> torch.Tensor:
    d = x - MEAN
    return 0.5 * ((d @ PREC) * d).sum(1)


def gauss_samples(n: int, gen: torch.Generator) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=gen) @ torch.linalg.cholesky(COV).T


def assert_gaussian_moments(x: torch.Tensor, slack: float = 1.0) -> None:
    """Mean within 4 standard errors, covariance entries within 4 standard errors (×slack)."""
    n = x.shape[0]
    se_mean = (COV.diagonal() / n).sqrt()
    assert ((x.mean(0) - MEAN).abs() < 4 * se_mean * slack).all(), x.mean(0)
    cov = torch.cov(x.T)
    se_cov = ((COV**2 + torch.outer(COV.diagonal(), COV.diagonal())) / n).sqrt()
    assert ((cov - COV).abs() < 4 * se_cov * slack).all(), cov


@pytest.mark.parametrize("sampler", ["mala", "hmc"])
def test_exact_samplers_leave_a_gaussian_invariant(sampler: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = gauss_samples(N, gen)
    if sampler == "mala":
        out = mala(gauss_energy, x0, step_size=0.2, n_steps=30, generator=gen)
    else:
        out = hmc(gauss_energy, x0, step_size=0.3, n_leapfrog=5, n_steps=10, generator=gen)
    assert 0.3 < out.acceptance < 1.0
    assert (out.samples - x0).abs().mean() > 0.3  # the chains moved
    assert_gaussian_moments(out.samples)


def test_ula_bias_shrinks_with_the_step_size() -> None:
    gen = torch.Generator().manual_seed(1)
    x0 = gauss_samples(N, gen)
    small = ula(gauss_energy, x0, step_size=0.005, n_steps=200, generator=gen).samples
    assert_gaussian_moments(small, slack=1.5)
    # a big step inflates the variance by the known factor 1/(1 - hλ/2) along each precision eigenvalue λ
    h = 0.15
    big = ula(gauss_energy, x0, step_size=h, n_steps=200, generator=gen).samples
    lam = torch.linalg.eigvalsh(PREC)
    predicted = float((1 / (lam * (1 - h * lam / 2))).sum())
    assert predicted > 1.15 * float(COV.trace())
    assert float(torch.cov(big.T).trace()) == pytest.approx(predicted, rel=0.06)


def test_an_adversarial_kernel_fails_the_invariance_check() -> None:
    """The moment check can fail: a biased energy (wrong precision) moves the chains away from the target."""
    gen = torch.Generator().manual_seed(2)
    x0 = gauss_samples(N, gen)
    wrong = mala(lambda x: 1.3 * gauss_energy(x), x0, step_size=0.2, n_steps=60, generator=gen).samples
    with pytest.raises(AssertionError):
        assert_gaussian_moments(wrong)


MIX_MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
MIX_W = torch.tensor([0.2, 0.8])
MIX_SIGMA = 0.7


def mix_energy(x: torch.Tensor) -> torch.Tensor:
    """``-log Σ_k w_k exp(-|x - μ_k|²/(2σ²))``: normaliser ``Z = 2πσ²`` (the weights sum to one)."""
    d2 = ((x[:, None, :] - MIX_MEANS) ** 2).sum(-1)
    return -torch.logsumexp(MIX_W.log() - d2 / (2 * MIX_SIGMA**2), 1)


def mix_samples(n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(MIX_W, n, replacement=True, generator=gen)
    return MIX_MEANS[k] + MIX_SIGMA * torch.randn(n, 2, generator=gen)


@pytest.mark.parametrize("sampler", ["mala", "hmc"])
def test_exact_samplers_leave_a_mixture_invariant(sampler: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x0 = mix_samples(N, gen)
    if sampler == "mala":
        x = mala(mix_energy, x0, step_size=0.15, n_steps=30, generator=gen).samples
    else:
        x = hmc(mix_energy, x0, step_size=0.3, n_leapfrog=5, n_steps=10, generator=gen).samples
    right = (x[:, 0] > 0).float().mean()
    assert abs(float(right) - 0.8) < 4 * math.sqrt(0.16 / N)
    for k, sign in ((0, -1), (1, 1)):
        part = x[(x[:, 0] > 0) == (sign > 0)]
        se = MIX_SIGMA / math.sqrt(part.shape[0])
        assert ((part.mean(0) - MIX_MEANS[k]).abs() < 4 * se).all()
        assert abs(float(part.std(0).mean()) - MIX_SIGMA) < 0.05


def std_normal_energy(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum(1)


def test_mala_and_hmc_acceptance_follow_theory_on_a_gaussian() -> None:
    """High acceptance at small steps, falling monotonically as the step grows (d = 10; HMC at a fixed
    trajectory length εL ≈ 1.5, as the leapfrog energy error of a Gaussian oscillates with L at fixed ε)."""
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(2000, 10, generator=gen)
    mala_acc = [mala(std_normal_energy, x0, h, 20, generator=gen).acceptance for h in (0.01, 0.1, 0.5, 1.2)]
    hmc_acc = [hmc(std_normal_energy, x0, eps, 10, n_leapfrog=max(1, round(1.5 / eps)), generator=gen).acceptance
               for eps in (0.05, 0.3, 0.9, 1.5)]
    assert mala_acc[0] > 0.99 and hmc_acc[0] > 0.99
    assert all(a > b for a, b in zip(mala_acc, mala_acc[1:], strict=False)), mala_acc
    assert all(a > b for a, b in zip(hmc_acc, hmc_acc[1:], strict=False)), hmc_acc
    assert mala_acc[-1] < 0.5 and hmc_acc[-1] < 0.7


def test_dual_averaging_reaches_the_target_acceptance() -> None:
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(1000, 10, generator=gen)
    out = mala(std_normal_energy, x0, step_size=2.0, n_steps=100, adapt_steps=200, generator=gen)
    assert abs(out.acceptance - 0.574) < 0.06, out.acceptance
    # HMC on an anisotropic Gaussian (on an isotropic one the leapfrog error is periodic in ε, and the
    # acceptance is not monotone in the step size, which dual averaging assumes)
    scale = torch.linspace(0.5, 1.5, 10)
    out = hmc(lambda x: 0.5 * ((x / scale) ** 2).sum(1), x0 * scale, step_size=0.01, n_steps=50, n_leapfrog=3,
              adapt_steps=200, generator=gen)
    assert abs(out.acceptance - 0.65) < 0.1, out.acceptance


def test_smc_log_normaliser_of_a_gaussian_mixture() -> None:
    """SMC from N(0, 4² I) estimates log Z = log(2πσ²) of the mixture within 0.05; its samples carry the weights."""
    gen = torch.Generator().manual_seed(6)
    s0 = 4.0
    x0 = s0 * torch.randn(4096, 2, generator=gen)
    log_z0 = math.log(2 * math.pi * s0**2)
    out = smc(mix_energy, lambda x: 0.5 * (x * x).sum(1) / s0**2, x0, n_temps=30, step_size=0.3, n_mcmc=2,
              init_log_z=log_z0, generator=gen)
    exact = math.log(2 * math.pi * MIX_SIGMA**2)
    assert abs(out.log_z - exact) < 0.05, (out.log_z, exact)
    assert out.info["resamples"] > 0
    assert abs(float((out.samples[:, 0] > 0).float().mean()) - 0.8) < 0.04
    # AIS (no resampling) gives a valid, if noisier, estimate and weighted particles
    out = ais(mix_energy, lambda x: 0.5 * (x * x).sum(1) / s0**2, x0, n_temps=100, step_size=0.3,
              init_log_z=log_z0, generator=gen)
    assert abs(out.log_z - exact) < 0.15
    w = torch.softmax(out.log_weights, 0)
    assert abs(float((w * (out.samples[:, 0] > 0)).sum()) - 0.8) < 0.06


def test_systematic_resampling_counts_and_ess() -> None:
    """Each particle is copied floor(N w_i) or ceil(N w_i) times, and N w_i times on average (unbiased)."""
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(10, generator=gen) ** 3
    w = w / w.sum()
    counts = torch.zeros(10)
    for _ in range(2000):
        c = torch.bincount(systematic_resample(w.log(), gen), minlength=10).float()
        assert ((c >= (10 * w).floor() - 1e-6) & (c <= (10 * w).ceil() + 1e-6)).all(), (c, 10 * w)
        counts += c
    assert torch.allclose(counts / 2000, 10 * w, atol=0.05)
    assert float(effective_sample_size(torch.zeros(10))) == pytest.approx(10.0)
    assert float(effective_sample_size(torch.tensor([0.0, -1e9, -1e9]))) == pytest.approx(1.0)


def test_non_finite_energy_names_sampler_and_step() -> None:
    def bad(x: torch.Tensor) -> torch.Tensor:
        e = std_normal_energy(x)
        return torch.where(x[:, 0] > 2.5, torch.full_like(e, float("nan")), e)

    x0 = torch.zeros(256, 2)
    for name, fn in (("mala", lambda: mala(bad, x0, 0.5, 200)), ("hmc", lambda: hmc(bad, x0, 0.5, 200)),
                     ("ula", lambda: ula(bad, x0, 0.5, 200))):
        with pytest.raises(SamplerError, match=rf"sampler '{name}', step \d+"):
            fn()


@pytest.mark.parametrize("value", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_invalid_step_sizes_are_config_errors(value: object) -> None:
    x0 = torch.zeros(8, 2)
    with pytest.raises(ConfigError, match="'step_size'"):
        mala(std_normal_energy, x0, value, 5)
    with pytest.raises(ConfigError, match="'step_size'"):
        smc(std_normal_energy, std_normal_energy, x0, step_size=value)


def test_invalid_counts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="'n_steps'"):
        hmc(std_normal_energy, torch.zeros(8, 2), 0.1, 0)
    with pytest.raises(ConfigError, match="'n_leapfrog'"):
        hmc(std_normal_energy, torch.zeros(8, 2), 0.1, 5, n_leapfrog=-1)
    with pytest.raises(ConfigError, match="at least one chain"):
        mala(std_normal_energy, torch.zeros(0, 2), 0.1, 5)
    with pytest.raises(ConfigError, match="'n_temps'"):
        ais(std_normal_energy, std_normal_energy, torch.zeros(8, 2), n_temps=0)
    with pytest.raises(ConfigError, match="'resample_threshold'"):
        smc(std_normal_energy, std_normal_energy, torch.zeros(8, 2), resample_threshold=1.5)
