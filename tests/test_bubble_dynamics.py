"""Bubble physics kernel: matches scipy, rings at the natural frequency, drifts as Bjerknes theory says."""

import numpy as np
import pytest

from rl_energy.envs.bubble_dynamics import (
    COLLAPSE,
    NON_FINITE,
    OK,
    BubbleParams,
    _rhs,
    bjerknes_force_linear,
    drift_speed_linear,
    integrate,
)

PARAMS = BubbleParams()


def rest(x0: float, n: int = 1) -> np.ndarray:
    return np.tile(np.array([1.0, x0, 0.0, 0.0]), (n, 1))


@pytest.mark.parametrize("bar", [0.3, 1.0])
def test_kernel_matches_solve_ivp_dop853_over_ten_cycles(bar):
    from scipy.integrate import solve_ivp

    amp = bar * 1e5
    C, out = PARAMS.constants(), np.empty(4)

    def f(t, y):
        _rhs(t, y[0], y[1], y[2], y[3], amp, amp, C, out)
        return out.copy()

    ref = solve_ivp(f, (0, 10), rest(0.1)[0], method="DOP853", rtol=1e-11, atol=1e-13, t_eval=np.arange(1, 11))
    state, tau, step = rest(0.1), np.zeros(1), np.full(1, 1e-4)
    ours = []
    for cycle in range(1, 11):  # one control step per cycle: state, phase and step size carry over
        status, _ = integrate(state, tau, float(cycle), np.array([[amp, amp]]), step=step)
        assert status[0] == OK and tau[0] == cycle
        ours.append(state[0].copy())
    ours = np.array(ours)
    assert ours[:, 0].max() > 1.3  # strongly non-linear oscillation, not a trivial check
    np.testing.assert_allclose(ours[:, 0], ref.y[0], rtol=1e-6, atol=0)  # R
    np.testing.assert_allclose(ours[:, 1], ref.y[1], rtol=1e-6, atol=0)  # x


def test_small_radial_oscillation_rings_at_the_linear_natural_frequency():
    f0 = PARAMS.natural_frequency()
    assert abs(f0 - 54.9e3) < 0.1e3
    state, tau, step = np.array([[1.001, 0.1, 0.0, 0.0]]), np.zeros(1), np.full(1, 1e-4)
    times = np.linspace(0, 3, 3001)[1:]  # three 25 kHz cycles, no acoustic forcing
    eps = []
    for t in times:
        integrate(state, tau, t, np.zeros((1, 2)), step=step)
        eps.append(state[0, 0] - 1.0)
    eps = np.array(eps)
    crossings = times[1:][np.sign(eps[1:]) != np.sign(eps[:-1])]
    ring = PARAMS.f1 / (2 * np.mean(np.diff(crossings)))
    assert len(crossings) >= 10
    assert abs(ring - f0) / f0 < 0.02


def test_weak_25khz_field_drifts_the_bubble_to_the_antinode_at_the_linear_theory_speed():
    state, tau = rest(0.15), np.zeros(1)
    status, _ = integrate(state, tau, 2000.0, np.array([[0.2e5, 0.0]]))  # 80 ms at 0.2 bar
    assert status[0] == OK
    moved = state[0, 1] - 0.15
    predicted = drift_speed_linear(0.15, 0.2e5, 0.0) * 2000 / PARAMS.f1 / PARAMS.wavelength
    assert moved > 0.02 and state[0, 1] < 0.25  # towards the pressure antinode at 0.25 λ0
    assert abs(moved - predicted) / predicted < 0.15  # linear theory holds at low amplitude


def test_linear_bjerknes_force_points_to_the_antinodes():
    x = np.array([0.05, 0.1, 0.2, 0.24])
    assert np.all(bjerknes_force_linear(x, 1e4, 0.0) > 0)  # 25 kHz: towards 0.25
    f2 = bjerknes_force_linear(x, 0.0, 1e4)
    assert np.all(f2[:2] > 0) and np.all(f2[2:] < 0)  # 50 kHz: towards 0.125
    # the 50 kHz coefficient per Pa² is about 9.2x the 25 kHz one (digest §5)
    ratio = bjerknes_force_linear(1 / 16, 0.0, 1e4) / bjerknes_force_linear(1 / 8, 1e4, 0.0)
    assert 8.5 < ratio < 10


def test_fifty_cycle_displacements_match_the_digest_table_in_one_vectorised_call():
    # papers/bubble-control.md §5: (P_A1, P_A2) bar, x0 -> x after 50 cycles (LSODA, rtol 1e-8)
    cases = [((0.5, 0), 0.10, 0.109), ((0.5, 0), 0.20, 0.1985), ((1, 0), 0.10, 0.084), ((1, 0), 0.20, 0.220),
             ((0, 0.5), 0.10, -0.003), ((0, 0.5), 0.20, 0.265), ((0.5, 0.5), 0.10, 0.025)]
    state = np.array([[1.0, x0, 0.0, 0.0] for _, x0, _ in cases])
    status, steps = integrate(state, np.zeros(len(cases)), 50.0, np.array([a for a, _, _ in cases]) * 1e5)
    assert np.all(status == OK) and np.all(steps > 1000)
    np.testing.assert_allclose(state[:, 1], [x for _, _, x in cases], atol=1e-3)


def test_failures_are_reported_per_bubble():
    state = np.array([[1.0, 0.1, 0.0, 0.0], [np.nan, 0.1, 0.0, 0.0], [2e-3, 0.1, -50.0, 0.0]])
    status, _ = integrate(state, np.zeros(3), 1.0, np.zeros((3, 2)))
    assert status[0] == OK
    assert status[1] == NON_FINITE
    assert status[2] in (COLLAPSE, NON_FINITE)
    with pytest.raises(ValueError, match="finite"):
        integrate(rest(0.1), np.zeros(1), 1.0, np.array([[np.nan, 0.0]]))
