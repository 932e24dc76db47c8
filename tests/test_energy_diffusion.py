"""rl_energy.diffusion: closed-form mixtures, the Feynman–Kac weight, SMC composition, distillation, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rl_energy.diffusion import (
    GaussianMixture,
    GridDensity,
    LevelModel,
    SlicedW2,
    VPSchedule,
    _stable_target,
    analytic_model,
    analytic_teacher,
    distil_energy,
    energy_smc,
    fk_log_weight,
    mmd2,
    mode_tv,
    product_model,
    reverse_diffusion,
    sliced_w2,
    tempered_model,
    train_denoiser,
)
from rl_energy.errors import ConfigError
from rl_energy.samplers import SamplerError

torch.set_num_threads(1)


def full_cov_mixture() -> GaussianMixture:
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]], [[0.1, 0.0], [0.0, 0.6]]])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]), covs)


def ring(n: int = 4, radius: float = 2.5, std: float = 0.3) -> GaussianMixture:
    ang = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    return GaussianMixture.isotropic(torch.ones(n), torch.stack([radius * ang.cos(), radius * ang.sin()], 1), std)


def band() -> GaussianMixture:
    xs = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    return GaussianMixture(torch.ones(3), torch.stack([xs, 0.8 * torch.ones(3)], 1),
                           torch.diag(torch.tensor([1.0, 0.3], dtype=torch.float64)).expand(3, 2, 2))


# ------------------------------------------------------------------------------------------ mixtures
def test_noised_mixture_score_matches_autograd_and_finite_differences() -> None:
    mix = full_cov_mixture().noised(0.7)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(mix.log_prob(xr).sum(), xr)
    score = mix.score(x)
    torch.testing.assert_close(score, auto, rtol=1e-9, atol=1e-9)
    h = 1e-5
    fd = torch.stack([(mix.log_prob(x + h * e) - mix.log_prob(x - h * e)) / (2 * h) for e in torch.eye(2,
                      dtype=torch.float64)], 1)
    torch.testing.assert_close(score, fd, rtol=1e-6, atol=1e-6)


def test_batched_noised_score_and_analytic_teacher_match_per_level_scores() -> None:
    mix, schedule = full_cov_mixture(), VPSchedule(n_steps=30)
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 2
    t = torch.randint(1, 31, (40,), generator=gen)
    expected = torch.stack([mix.noised(float(schedule.alpha_bars[int(ti)])).score(xi[None])[0]
                            for xi, ti in zip(x, t, strict=True)])
    torch.testing.assert_close(analytic_teacher(mix, schedule)(x, t), expected, rtol=1e-9, atol=1e-9)


def test_noised_mixture_is_the_law_of_the_noised_samples() -> None:
    """Moments of √ᾱ x + √(1-ᾱ) ε over exact samples match the closed-form noised components."""
    mix, ab = full_cov_mixture(), 0.4
    gen = torch.Generator().manual_seed(1)
    x = mix.sample(200_000, gen).double()
    y = math.sqrt(ab) * x + math.sqrt(1 - ab) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    noised = mix.noised(ab)
    w, mu, cov = noised.weights, noised.means, noised.covs
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    torch.testing.assert_close(y.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(y.T @ y / y.shape[0], second, atol=0.02, rtol=0)
    assert float((noised.covs - mix.covs).abs().max()) > 0.1  # the noising really changed the covariances


def test_product_of_mixtures_matches_grid_normalisation() -> None:
    a, b = full_cov_mixture(), band()
    prod = a.product(b)
    grid = GridDensity(lambda z: a.log_prob(z) + b.log_prob(z), half_width=7.0, n_cells=400)
    # log ∫ p q by quadrature against the closed form, and the normalised density pointwise
    assert grid.log_z == pytest.approx(a.log_normaliser_of_product(b), abs=1e-4)
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = a.log_prob(z) + b.log_prob(z) - a.log_normaliser_of_product(b)
    torch.testing.assert_close(prod.log_prob(z), expected, rtol=1e-9, atol=1e-9)
    assert prod.weights.shape == (9,)


def test_grid_density_of_a_tempered_gaussian() -> None:
    """p^β of N(m, s²I) is N(m, s²/β I) with ∫p^β = (2πs²)^{(1-β)} β^{-1} in 2-D."""
    s, beta = 0.8, 3.0
    gauss = GaussianMixture.isotropic([1.0], [[0.5, -1.0]], s)
    grid = GridDensity(lambda z: beta * gauss.log_prob(z), half_width=5.0, n_cells=300)
    assert grid.log_z == pytest.approx((1 - beta) * math.log(2 * math.pi * s * s) - math.log(beta), abs=1e-4)
    x = grid.sample(50_000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x.var(0), torch.full((2,), s * s / beta), atol=0.01, rtol=0)
    assert grid.masses(gauss.assign, 1).item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- metrics
def test_metrics_see_a_shift_and_a_wrong_mode_balance() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1500, 2, generator=gen)
    shift = torch.tensor([0.6, 0.0])
    # SW2 of a pure shift a is |a|/√2 (the mean of (θᵀa)² over directions in 2-D is |a|²/2)
    assert sliced_w2(x + shift, x, 512, gen) == pytest.approx(0.6 / math.sqrt(2), rel=0.1)
    assert SlicedW2(x, 64, gen)(x) == pytest.approx(0.0, abs=1e-12)
    y = torch.randn(1500, 2, generator=gen)
    assert mmd2(x, y) < 5e-3 < 0.05 < mmd2(x + shift, y)
    mix = ring()
    samples = mix.sample(4000, gen)
    assert mode_tv(samples, mix.assign, torch.full((4,), 0.25)) < 0.03
    assert mode_tv(samples, mix.assign, torch.tensor([0.7, 0.1, 0.1, 0.1])) > 0.4


# ----------------------------------------------------------------------------------- Feynman–Kac weight
def gaussian_levels(m: torch.Tensor, s2: float, schedule: VPSchedule, t: int) -> tuple[torch.Tensor, float]:
    ab = float(schedule.alpha_bars[t])
    return math.sqrt(ab) * m, ab * s2 + 1 - ab


def test_fk_weight_vanishes_for_the_exact_reverse_kernel() -> None:
    """With the exact normalised energies of a Gaussian diffusion and the exact posterior q(x_{t-1}|x_t)
    ∝ γ_{t-1}(x_{t-1}) L(x_t|x_{t-1}), the incremental weight is exactly 1 (log-weight 0)."""
    schedule, m, s2 = VPSchedule(), torch.tensor([1.0, -0.5], dtype=torch.float64), 0.2
    gen = torch.Generator().manual_seed(5)
    for t in (2, 10, 60):
        mp, vp = gaussian_levels(m, s2, schedule, t - 1)
        mt, vt = gaussian_levels(m, s2, schedule, t)
        a, b = float(schedule.alphas[t]), float(schedule.betas[t])

        def energy(x: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
            return 0.5 * ((x - mean) ** 2).sum(1) / var + math.log(2 * math.pi * var)

        x_t = mt + math.sqrt(vt) * torch.randn(64, 2, generator=gen, dtype=torch.float64)
        prec = 1 / vp + a / b
        post_mean = (mp / vp + math.sqrt(a) * x_t / b) / prec
        x_prev = post_mean + torch.randn(64, 2, generator=gen, dtype=torch.float64) / math.sqrt(prec)
        log_w = fk_log_weight(energy(x_prev, mp, vp), energy(x_t, mt, vt), x_prev, x_t, a, b, post_mean, 1 / prec)
        assert float(log_w.abs().max()) < 1e-9
        # a wrong proposal (the DDPM step) gives particle-dependent weights: the check can fail
        ddpm_mean = (x_t + b * (mt - x_t) / vt) / math.sqrt(a)
        log_w = fk_log_weight(energy(x_prev, mp, vp), energy(x_t, mt, vt), x_prev, x_t, a, b, ddpm_mean, b)
        assert float(log_w.std()) > 1e-4


# --------------------------------------------------------------------------------------------- SMC
def test_smc_with_exact_energies_corrects_score_only_composition() -> None:
    schedule = VPSchedule()
    a, b = ring(), band()
    prod = a.product(b, min_weight=1e-8)
    gen = torch.Generator().manual_seed(6)
    ref = prod.sample(8000, gen)
    masses = GridDensity(lambda z: a.log_prob(z) + b.log_prob(z), n_cells=300).masses(prod.assign, len(prod.weights))
    model = product_model([analytic_model(a, schedule), analytic_model(b, schedule)])
    naive = reverse_diffusion(model, schedule, 1000, generator=gen)
    out = energy_smc(model, schedule, 1000, proposal="cooled", generator=gen)
    sw2 = SlicedW2(ref, 128, torch.Generator().manual_seed(0))
    assert sw2(out.samples) < 0.6 * sw2(naive)
    assert mode_tv(out.samples, prod.assign, masses) < 0.5 * mode_tv(naive, prod.assign, masses)
    assert 0.3 < out.ess <= 1.0
    assert len(out.info["ess_per_level"]) == schedule.n_steps - 1


def test_reverse_diffusion_with_the_exact_score_samples_a_gaussian() -> None:
    schedule = VPSchedule()
    gauss = GaussianMixture.isotropic([1.0], [[1.0, -1.0]], 0.5)
    x = reverse_diffusion(analytic_model(gauss, schedule), schedule, 4000, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((2,), 0.25 + float(schedule.betas[1])), atol=0.03, rtol=0)


def test_tempered_smc_hits_the_tempered_gaussian() -> None:
    """p^β of a Gaussian: SMC with exact energies returns variance s²/β (score scaling alone does not)."""
    schedule, beta = VPSchedule(), 4.0
    gauss = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 1.0)
    model = tempered_model(analytic_model(gauss, schedule), beta)
    gen = torch.Generator().manual_seed(8)
    out = energy_smc(model, schedule, 4000, proposal="ddpm", generator=gen)
    assert float(out.samples.var(0).mean()) == pytest.approx(1 / beta, rel=0.1)
    naive = reverse_diffusion(model, schedule, 4000, generator=gen)
    assert float(naive.var(0).mean()) < 0.8 / beta  # the naive scaled score over-concentrates (≈ 1/(2β-1))


def test_weighting_can_stop_above_the_lowest_level() -> None:
    schedule = VPSchedule(n_steps=20)
    model = analytic_model(GaussianMixture.isotropic([1.0], [[0.5, 0.5]], 0.5), schedule)
    out = energy_smc(model, schedule, 256, last_weighted_level=5, generator=torch.Generator().manual_seed(11))
    assert len(out.info["ess_per_level"]) == 20 - 5
    assert out.samples.shape == (256, 2) and bool(torch.isfinite(out.samples).all())
    with pytest.raises(ConfigError, match="last_weighted_level"):
        energy_smc(model, schedule, 8, last_weighted_level=20)


def test_stable_target_is_the_noise_when_the_data_is_one_point() -> None:
    """With every training point equal, the posterior mean of x_0 is that point: the target is exactly ε."""
    schedule = VPSchedule(n_steps=20)
    gen = torch.Generator().manual_seed(12)
    data = torch.tensor([[1.0, -2.0]]).repeat(50, 1)
    t = torch.randint(1, 21, (64,), generator=gen)
    x0 = data[:64].repeat(2, 1)[:64]
    xt, eps = schedule.noise(x0, t, gen)
    target = _stable_target(xt, t, x0, data, 32, schedule, gen)
    torch.testing.assert_close(target, eps, atol=1e-4, rtol=0)


def test_non_finite_energy_raises_a_sampler_error_naming_the_level() -> None:
    schedule = VPSchedule(n_steps=20)

    def energy(x: torch.Tensor, t: int) -> torch.Tensor:
        e = 0.5 * (x * x).sum(1)
        return e * float("nan") if t == 7 else e

    model = LevelModel(score=lambda x, t: -x, energy=energy)
    with pytest.raises(SamplerError, match="energy_smc.*step 7"):
        energy_smc(model, schedule, 16)
    bad_score = LevelModel(score=lambda x, t: x * float("inf"), energy=energy)
    with pytest.raises(SamplerError, match="reverse_diffusion"):
        reverse_diffusion(bad_score, schedule, 16)


# ------------------------------------------------------------------------------------ learning
def test_distilled_energy_gradient_matches_the_analytic_score() -> None:
    schedule = VPSchedule(n_steps=20)
    mix = GaussianMixture.isotropic([0.6, 0.4], [[-1.0, 0.0], [1.0, 0.5]], 0.5)
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    data = mix.sample(4000, gen)

    levels = {t: mix.noised(float(schedule.alpha_bars[t])) for t in range(1, schedule.n_steps + 1)}

    def teacher(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for lv in t.unique().tolist():
            sel = t == lv
            out[sel] = levels[lv].score(x[sel])
        return out

    def error(net: torch.nn.Module) -> float:
        errs = []
        for t in (1, 5, 12, 20):
            noised = levels[t]
            x = noised.sample(1000, gen)
            errs.append(float(((net.grad(x, t) + noised.score(x)) ** 2).sum(1).mean() / (noised.score(x) ** 2)
                              .sum(1).mean()))
        return max(errs)

    untrained = distil_energy(teacher, data, schedule, steps=1, hidden=(64, 64), generator=gen)
    net = distil_energy(teacher, data, schedule, steps=400, batch_size=256, lr=3e-3, hidden=(64, 64), generator=gen)
    assert error(net) < 0.05 < error(untrained)


def test_denoising_score_matching_learns_the_noise() -> None:
    schedule = VPSchedule(n_steps=20)
    mix = GaussianMixture.isotropic([1.0], [[2.0, -1.0]], 0.5)
    gen = torch.Generator().manual_seed(10)
    torch.manual_seed(10)
    net = train_denoiser(mix.sample(4000, gen), schedule, steps=300, batch_size=256, hidden=(64, 64), generator=gen)
    t = 10
    noised = mix.noised(float(schedule.alpha_bars[t]))
    x = noised.sample(2000, gen)
    rel = float(((net.score(x, t) - noised.score(x)) ** 2).sum(1).mean() / (noised.score(x) ** 2).sum(1).mean())
    assert rel < 0.05


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m, s: energy_smc(m, s, 0), "n_particles"),
        (lambda m, s: energy_smc(m, s, -3), "n_particles"),
        (lambda m, s: reverse_diffusion(m, s, 2.5), "n_particles"),
        (lambda m, s: energy_smc(m, s, 8, resample_threshold=1.5), "resample_threshold"),
        (lambda m, s: energy_smc(m, s, 8, n_mala=-1), "n_mala"),
        (lambda m, s: energy_smc(m, s, 8, proposal="euler"), "proposal"),
        (lambda m, s: energy_smc(m, s, 8, init_std=float("nan")), "init_std"),
        (lambda m, s: tempered_model(m, 0.0), "beta"),
        (lambda m, s: tempered_model(m, -2.0), "beta"),
        (lambda m, s: tempered_model(m, float("nan")), "beta"),
        (lambda m, s: VPSchedule(n_steps=1), "n_steps"),
        (lambda m, s: VPSchedule(n_steps=0), "n_steps"),
        (lambda m, s: VPSchedule(beta_min=0.0), "beta_min"),
        (lambda m, s: s.level(0), "'t'"),
        (lambda m, s: train_denoiser(torch.tensor([[0.0, float("nan")]]), s, steps=1), "data"),
        (lambda m, s: train_denoiser(torch.zeros(4, 2), s, steps=0), "steps"),
        (lambda m, s: distil_energy(lambda x, t: -x, torch.zeros(4, 2), s, steps=1, weighting="x"), "weighting"),
        (lambda m, s: distil_energy(lambda x, t: -x, torch.zeros(4, 2), s, steps=1, level_sampling="x"),
         "level_sampling"),
        (lambda m, s: train_denoiser(torch.zeros(4, 2), s, steps=1, reference_size=-1), "reference_size"),
        (lambda m, s: GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 0.0), "stds"),
        (lambda m, s: GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None]), "covs"),
        (lambda m, s: GaussianMixture(torch.ones(1), torch.tensor([[0.0, float("nan")]]), torch.eye(2)[None]),
         "means"),
        (lambda m, s: energy_smc(LevelModel(score=lambda x, t: -x), s, 8), "energy"),
    ],
)
def test_bad_arguments_raise_config_errors_naming_them(call, name: str) -> None:
    schedule = VPSchedule(n_steps=10)
    model = analytic_model(GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 1.0), schedule)
    with pytest.raises(ConfigError, match=name):
        call(model, schedule)
