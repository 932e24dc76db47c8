"""Radio reconstruction of inclined showers (rl_energy/radio.py, RadioShower-v0): the forward models against
independent computations, exact recovery on noiseless events, the energy calibration, and the task's χ² reward."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_energy import radio

pytest.importorskip("scipy")
SITE = radio.Site()


def test_the_array_is_a_331_antenna_hexagonal_grid_one_km_apart():
    ant = SITE.antennas()
    assert ant.shape == (331, 3) and np.all(ant[:, 2] == 1086.0)
    d = np.linalg.norm(ant[:, None, :2] - ant[None, :, :2], axis=-1) + np.eye(len(ant)) * 1e9
    np.testing.assert_allclose(d.min(1), 1000.0, rtol=1e-12)  # every antenna's nearest neighbour is 1 km away
    centre = int(np.argmin(np.linalg.norm(ant[:, :2], axis=1)))
    assert np.allclose(ant[centre, :2], 0.0) and np.sum(np.isclose(d[centre], 1000.0)) == 6


def test_directions_round_trip_and_small_angles_are_exact():
    rng = np.random.default_rng(0)
    th, ph = rng.uniform(0.1, 1.55, 50), rng.uniform(-3.1, 3.1, 50)
    k = radio.propagation(th, ph)
    np.testing.assert_allclose(np.linalg.norm(k, axis=1), 1.0, rtol=1e-14)
    assert np.all(k[:, 2] < 0)  # downgoing
    th2, ph2 = radio.direction_angles(k)
    np.testing.assert_allclose(th2, th, atol=1e-12)
    np.testing.assert_allclose(ph2, ph, atol=1e-12)
    eps = math.radians(1e-4)  # 1e-4 degrees
    np.testing.assert_allclose(radio.angle_between(k, radio.propagation(th + eps, ph)), 1e-4, rtol=1e-6)


def test_n_eff_is_the_path_average_of_the_exponential_index():
    a, b = np.array([0.0, 0.0, 1000.0]), np.array([0.0, 0.0, 15000.0])  # a vertical path: curvature plays no part
    k = SITE.k_r
    exact = 1 + 1e-6 * SITE.n_s * (math.exp(k * 15000.0) - math.exp(k * 1000.0)) / (k * 14000.0)
    assert radio.n_eff(a, b, SITE) == pytest.approx(exact, abs=1e-13)
    # a horizontal chord dips below neither end, and curved heights rise away from the origin
    assert radio.height(np.array([50_000.0, 0.0, 0.0])) == pytest.approx(50_000.0 ** 2 / (2 * radio.R_EARTH), rel=1e-3)


def test_xmax_point_sits_at_the_requested_slant_depth():
    from scipy.integrate import quad

    core = np.array([1000.0, -2000.0, SITE.altitude])
    for theta_deg in (62.0, 75.0, 87.0):
        k = radio.propagation(math.radians(theta_deg), 0.7)
        x_s = radio.xmax_point(core, k, 750.0, SITE)
        dist = np.linalg.norm(x_s - core)
        def rho(s: float, k: np.ndarray = k) -> float:
            return float(radio.air_density(radio.height(core - s * k)))

        depth = sum(quad(rho, lo, hi, limit=200)[0] for lo, hi in ((dist, dist * 3), (dist * 3, 3e6))) * 0.1
        assert depth == pytest.approx(750.0, rel=2e-3)
    with pytest.raises(ValueError, match="below the ground"):
        radio.xmax_point(core, radio.propagation(0.1, 0.0), 5000.0, SITE)


def test_adf_is_a_over_l_on_the_cherenkov_cone_across_the_geomagnetic_plane():
    """At ω = ω_c and cos η = 0 the Lorentzian and the asymmetry are both 1: f = A/l (digest §17's ADF)."""
    k = radio.propagation(math.radians(78.0), 0.4)
    x_s = radio.xmax_point(np.array([0.0, 0.0, SITE.altitude]), k, 750.0, SITE)
    w_c = float(radio.cherenkov_angle(x_s, k, SITE))
    _, _, e2 = radio.geomagnetic_frame(k, SITE)
    ant = x_s + 40_000.0 * (math.cos(w_c) * k + math.sin(w_c) * e2)
    for d_omega in (0.5, 1.0, 2.0):
        f = radio.adf_shape(ant[None], x_s, k, np.float64(d_omega), SITE)[0]
        assert f == pytest.approx(1.0 / 40_000.0, rel=1e-9)
    # twice the Cherenkov angle falls off by the Lorentzian
    ant2 = x_s + 40_000.0 * (math.cos(2 * w_c) * k + math.sin(2 * w_c) * e2)
    ratio = (math.tan(2 * w_c) / math.tan(w_c)) ** 2 - 1
    assert radio.adf_shape(ant2[None], x_s, k, np.float64(1.0), SITE)[0] * 40_000.0 == \
        pytest.approx(1 / (1 + 4 * ratio ** 2), rel=1e-9)


def test_noiseless_showers_are_recovered_to_a_hundredth_of_a_degree():
    """The acceptance: the chain plane → spherical → ADF on exact events gets the direction to < 0.01° (events
    with at least 8 antennas; 5–7-antenna events can be degenerate for the four ADF parameters)."""
    showers = radio.simulate(40, 3, noise=False)
    keep = np.flatnonzero(showers.mask.sum(1) >= 8)[:12]
    for i in keep:
        ev = showers.event(i)
        rec = radio.reconstruct(ev["pos"], ev["t"], ev["amp"], SITE)
        assert np.linalg.norm(rec["spherical"]["x_s"] - showers.x_s[i]) < 1.0  # metres, at 15–200 km
        err = radio.angle_between(radio.propagation(rec["adf"]["theta"], rec["adf"]["phi"]),
                                  radio.propagation(showers.theta[i], showers.phi[i]))
        assert err < 0.01
        assert rec["adf"]["delta_omega"] == pytest.approx(showers.delta_omega[i], rel=1e-4)


def test_each_stage_of_the_chain_sharpens_the_direction_on_noisy_showers():
    showers = radio.simulate(40, 4)
    errs = {"plane": [], "spherical": [], "adf": []}
    for i in range(len(showers)):
        ev = showers.event(i)
        rec = radio.reconstruct(ev["pos"], ev["t"], ev["amp"], SITE)
        k = radio.propagation(showers.theta[i], showers.phi[i])
        for stage in errs:
            errs[stage].append(float(radio.angle_between(radio.propagation(rec[stage]["theta"], rec[stage]["phi"]), k)))
    med = {s: np.median(e) for s, e in errs.items()}
    assert med["adf"] < med["spherical"] < med["plane"]
    assert med["adf"] < 0.3


def test_energy_calibration_inverts_the_amplitude_law_and_ignores_outliers():
    rng = np.random.default_rng(1)
    e = 10 ** rng.uniform(17.5, 19.0, 400)
    sin_a, rho = rng.uniform(0.3, 1.0, 400), rng.uniform(0.05, 0.7, 400)
    amp = radio.amplitude_law(e, sin_a, rho)
    bad = rng.random(400) < 0.05
    amp_obs = np.where(bad, amp * 10.0, amp)
    cal = radio.EnergyCalibration.fit(amp_obs, sin_a, rho, e)
    np.testing.assert_allclose(cal.energy(amp[~bad], sin_a[~bad], rho[~bad]), e[~bad], rtol=1e-8)
    assert np.isnan(cal.energy(np.array([-1.0]), np.array([0.5]), np.array([0.3])))[0]


def test_the_task_reward_is_minus_the_reduced_chi2_and_peaks_at_the_truth():
    task = gym.make("rl_energy/RadioShower-v0", n_train=16, n_test=24, noise=False).unwrapped
    batch = task.contexts("test")
    truth = batch["target"].clone()
    assert task.score(batch, truth).abs().max() < 1e-4  # exact events: χ² = 0 at the true parameters
    for col, step in ((0, math.radians(0.05)), (1, math.radians(0.05)), (2, 0.05), (3, 0.2), (5, 0.05), (6, 0.2)):
        a = truth.clone()
        a[:, col] += step
        assert torch.all(task.score(batch, a) < task.score(batch, truth))
    m = task.metrics(batch, truth)
    assert m["angle_68"] < 1e-3 and m["energy_resolution"] < 1e-5
    noisy = gym.make("rl_energy/RadioShower-v0", n_train=16, n_test=200).unwrapped
    r = -noisy.score(noisy.contexts("test"), noisy.contexts("test")["target"])
    assert 1.5 < float(r.mean()) < 3.5  # two measurements per antenna, each χ² ≈ 1 at the truth


@pytest.mark.parametrize(("kwargs", "key"), [({"n_train": 0}, "n_train"), ({"n_test": "many"}, "n_test"),
                                             ({"noise": "yes"}, "noise"), ({"seed": -1}, "seed")])
def test_bad_task_kwargs_are_named(kwargs, key):
    with pytest.raises(ValueError, match=key):
        gym.make("rl_energy/RadioShower-v0", **kwargs)


@pytest.mark.parametrize("flag", [["--test", "0"], ["--calib", "-3"], ["--workers", "two"], ["--seed", "-1"]])
def test_the_reproduction_script_rejects_bad_flags_in_one_line(flag):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_radio.py"
    proc = subprocess.run([sys.executable, str(script), *flag], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert flag[0] in proc.stderr.splitlines()[-1]
